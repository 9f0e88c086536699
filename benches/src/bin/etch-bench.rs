//! `etch-bench`: load generator for any etcd v3 endpoint (etch or etcd 3.5), like etcd's
//! `tools/benchmark`. Each subcommand prints one JSON object on stdout; see
//! `etch_benches::load` and benches/README.md.

use etch_benches::load::{self, Args, Common};

const USAGE: &str = "\
usage: etch-bench COMMAND [--flag value]...

common flags: --endpoints http://127.0.0.1:2379[,…]  --max-seconds 300  --seed 1

commands:
  put            --clients 1 --conns 1 --total 10000 --key-size 32 --val-size 256
                 --key-space 100000 [--sequential-keys true] [--prefix put/]
  range          --clients 1 --conns 1 --total 50000 --keys 10000 --consistency l|s
  txn-put        --clients 1 --conns 1 --total 10000 --keys-per-client 8
  watch-latency  --watchers 1000 --streams 10 --conns 1 --puts 100 --put-rate 20
  list           --objects 100000 --val-size 2048 --page 500 --lists 5 --consistency l|s
  kube-mix       --clients 16 --conns 4 --seconds 30 --objects-per-client 200 --watches 3
  ready          [--since-ns EPOCH_NS] --timeout 120   (first successful linearizable get)
";

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = argv.split_first() else {
        eprint!("{USAGE}");
        std::process::exit(2);
    };
    if matches!(cmd.as_str(), "-h" | "--help" | "help") {
        print!("{USAGE}");
        return;
    }
    let result = Args::parse(rest).and_then(|mut a| {
        let common = Common::from_args(&mut a)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            match cmd.as_str() {
                "put" => load::kv::put(&common, &mut a).await,
                "range" => load::kv::range(&common, &mut a).await,
                "txn-put" => load::kv::txn_put(&common, &mut a).await,
                "watch-latency" => load::watch::watch_latency(&common, &mut a).await,
                "list" => load::list::list(&common, &mut a).await,
                "kube-mix" => load::kube::kube_mix(&common, &mut a).await,
                "ready" => load::ready(&common, &mut a).await,
                other => Err(format!("unknown command '{other}'\n{USAGE}").into()),
            }
        })
    });
    match result {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("etch-bench {cmd}: {e}");
            std::process::exit(1);
        }
    }
}
