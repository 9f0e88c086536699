//! `etch`: an etcd-compatible server, a thin binary over the `etch_server` library.
//!
//! `etch [etcd flags]` serves etcd's v3 gRPC API from a data dir;
//! `etch check PATH` verifies a data file (or a data dir's data file);
//! `etch snapshot restore FILE --data-dir DIR` builds a data dir from a snapshot (etcd's
//! or etch's); `etch snapshot status FILE` describes one; `etch migrate
//! --from-etcd-data-dir SRC --data-dir DIR` turns a stopped etcd member's data into etch's.

use std::path::Path;
use std::process::ExitCode;

use etch_engine::btree::{Db, Options};
use etch_server::{ETCD_VERSION, backup, config, data_dir};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("snapshot") {
        return snapshot_command(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("migrate") {
        return migrate_command(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("check") {
        return match args.as_slice() {
            [_, path] => check(Path::new(path)),
            _ => {
                eprintln!("usage: etch check DATA_FILE|DATA_DIR");
                ExitCode::from(2)
            }
        };
    }
    let cmd = match config::parse(&args, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("etch: {e}");
            eprintln!("Try 'etch --help' for more information.");
            return ExitCode::from(1);
        }
    };
    let cfg = match cmd {
        config::Command::Version => {
            println!("etch Version: {}", env!("CARGO_PKG_VERSION"));
            println!("etcd API Version: {ETCD_VERSION}");
            return ExitCode::SUCCESS;
        }
        config::Command::Help => {
            print!("{}", config::USAGE);
            return ExitCode::SUCCESS;
        }
        config::Command::Serve(cfg) => *cfg,
    };
    tracing_subscriber::fmt()
        .with_max_level(cfg.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("etch-grpc")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etch: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(etch_server::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("etch: {e}");
            ExitCode::from(1)
        }
    }
}

const SNAPSHOT_USAGE: &str = "usage:
  etch snapshot restore SNAPSHOT_FILE --data-dir DIR [--skip-hash-check]
      [--bump-revision N --mark-compacted]
      [--name NAME --initial-cluster NAME=URL,... --initial-cluster-token TOKEN
       --initial-advertise-peer-urls URL,...]
  etch snapshot status SNAPSHOT_FILE [-w table|simple|json]";

/// (name, value) of each flag given, in order.
type Flags = Vec<(String, String)>;

/// Flags of `etch snapshot …`: `--flag value`, `--flag=value` or a lone boolean flag;
/// one or two leading dashes, as etcd's tools take them.
fn snapshot_flags(args: &[String], booleans: &[&str]) -> Result<(Vec<String>, Flags), String> {
    let mut positional = Vec::new();
    let mut flags = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(body) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            positional.push(a.clone());
            continue;
        };
        if let Some((k, v)) = body.split_once('=') {
            flags.push((k.to_string(), v.to_string()));
        } else if booleans.contains(&body) {
            flags.push((body.to_string(), "true".to_string()));
        } else {
            let v = it
                .next()
                .ok_or_else(|| format!("flag needs an argument: -{body}"))?;
            flags.push((body.to_string(), v.clone()));
        }
    }
    Ok((positional, flags))
}

/// `etch snapshot restore|status …`
fn snapshot_command(args: &[String]) -> ExitCode {
    let sub = args.first().map(String::as_str);
    let parsed = snapshot_flags(
        args.get(1..).unwrap_or(&[]),
        &["skip-hash-check", "mark-compacted"],
    );
    let (positional, flags) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("etch snapshot: {e}\n{SNAPSHOT_USAGE}");
            return ExitCode::from(2);
        }
    };
    let [file] = positional.as_slice() else {
        eprintln!("{SNAPSHOT_USAGE}");
        return ExitCode::from(2);
    };
    let r = match sub {
        Some("restore") => snapshot_restore(file, &flags),
        Some("status") => snapshot_status(file, &flags),
        _ => {
            eprintln!("{SNAPSHOT_USAGE}");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etch snapshot {}: {e}", sub.unwrap_or_default());
            ExitCode::from(1)
        }
    }
}

fn snapshot_restore(file: &str, flags: &[(String, String)]) -> Result<(), String> {
    let mut opts = backup::RestoreOptions::default();
    let mut dir = None;
    let mut name = None;
    let mut initial_cluster = None;
    let mut token = None;
    let mut peer_urls = None;
    for (k, v) in flags {
        let truthy = || v == "true" || v == "1";
        match k.as_str() {
            "data-dir" => dir = Some(v.clone()),
            "skip-hash-check" => opts.skip_hash_check = truthy(),
            "mark-compacted" => opts.mark_compacted = truthy(),
            "bump-revision" => {
                opts.bump_revision = v
                    .parse()
                    .map_err(|_| format!("invalid value {v:?} for --bump-revision"))?;
            }
            "name" => name = Some(v.clone()),
            "initial-cluster" => initial_cluster = Some(v.clone()),
            "initial-cluster-token" => token = Some(v.clone()),
            "initial-advertise-peer-urls" => peer_urls = Some(v.clone()),
            other => return Err(format!("unknown flag: --{other}\n{SNAPSHOT_USAGE}")),
        }
    }
    let dir = dir.ok_or_else(|| format!("--data-dir is required\n{SNAPSHOT_USAGE}"))?;
    opts.cluster = cluster_flags(name, initial_cluster, token, peer_urls)?;
    let done = backup::restore(Path::new(file), Path::new(&dir), &opts)?;
    println!(
        "restored snapshot {file} into {dir}: revision {}, compacted at {}, {} key versions, {} leases",
        done.revision, done.compact_revision, done.versions, done.leases
    );
    Ok(())
}

/// The cluster a restore or migration starts, if any of its flags is given; as etcdutl,
/// the unset ones take etcd's defaults.
fn cluster_flags(
    name: Option<String>,
    initial_cluster: Option<String>,
    token: Option<String>,
    peer_urls: Option<String>,
) -> Result<Option<backup::ClusterFlags>, String> {
    if name.is_none() && initial_cluster.is_none() && token.is_none() && peer_urls.is_none() {
        return Ok(None);
    }
    let name = name.unwrap_or_else(|| "default".into());
    let peer_urls: Vec<String> = peer_urls
        .unwrap_or_else(|| "http://localhost:2380".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let ic = initial_cluster.unwrap_or_else(|| format!("{name}={}", peer_urls.join(",")));
    Ok(Some(backup::ClusterFlags {
        initial_cluster: config::parse_initial_cluster(&ic, &name, &peer_urls)?,
        token: token.unwrap_or_else(|| "etcd-cluster".into()),
        peer_urls,
    }))
}

const MIGRATE_USAGE: &str = "usage:
  etch migrate --from-etcd-data-dir ETCD_DATA_DIR --data-dir DIR
      [--name NAME --initial-cluster NAME=URL,... --initial-cluster-token TOKEN
       --initial-advertise-peer-urls URL,...]";

/// `etch migrate …`: a stopped etcd member's data dir into a new etch data dir.
fn migrate_command(args: &[String]) -> ExitCode {
    let r = (|| -> Result<(), String> {
        let (positional, flags) =
            snapshot_flags(args, &[]).map_err(|e| format!("{e}\n{MIGRATE_USAGE}"))?;
        if !positional.is_empty() {
            return Err(format!(
                "unexpected argument {:?}\n{MIGRATE_USAGE}",
                positional[0]
            ));
        }
        let (mut from, mut dir) = (None, None);
        let (mut name, mut ic, mut token, mut peers) = (None, None, None, None);
        for (k, v) in flags {
            match k.as_str() {
                "from-etcd-data-dir" => from = Some(v),
                "data-dir" => dir = Some(v),
                "name" => name = Some(v),
                "initial-cluster" => ic = Some(v),
                "initial-cluster-token" => token = Some(v),
                "initial-advertise-peer-urls" => peers = Some(v),
                other => return Err(format!("unknown flag: --{other}\n{MIGRATE_USAGE}")),
            }
        }
        let (Some(from), Some(dir)) = (from, dir) else {
            return Err(MIGRATE_USAGE.into());
        };
        let opts = etch_server::migrate::MigrateOptions {
            cluster: cluster_flags(name, ic, token, peers)?,
            quiet: false,
        };
        let done = etch_server::migrate::migrate(Path::new(&from), Path::new(&dir), &opts)?;
        println!(
            "migrated {from} into {dir}: revision {}, compacted at {}, {} key versions, {} leases; \
             {} WAL entries applied above the database's consistent index {}",
            done.restored.revision,
            done.restored.compact_revision,
            done.restored.versions,
            done.restored.leases,
            done.wal_entries,
            done.consistent_index
        );
        Ok(())
    })();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etch migrate: {e}");
            ExitCode::from(1)
        }
    }
}

fn snapshot_status(file: &str, flags: &[(String, String)]) -> Result<(), String> {
    let mut format = "table".to_string();
    for (k, v) in flags {
        match k.as_str() {
            "w" | "write-out" => format = v.clone(),
            other => return Err(format!("unknown flag: --{other}\n{SNAPSHOT_USAGE}")),
        }
    }
    let st = backup::status(Path::new(file), true)?;
    print!("{}", backup::format_status(&st, &format)?);
    Ok(())
}

fn check(path: &Path) -> ExitCode {
    let file = if path.is_dir() {
        data_dir::db_file(path)
    } else {
        path.to_path_buf()
    };
    if !file.is_file() {
        eprintln!("etch check: {} is not a file", path.display());
        return ExitCode::from(1);
    }
    let db = match Db::open(&file, Options::default()) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("etch check: cannot open {}: {e}", file.display());
            return ExitCode::from(1);
        }
    };
    match db.check() {
        Ok(r) => {
            println!(
                "ok: {} pages ({} tree, {} overflow, {} free)",
                r.high_water_pages, r.node_pages, r.overflow_pages, r.free_pages
            );
            for (name, len) in &r.trees {
                println!("  tree {:?}: {len} entries", String::from_utf8_lossy(name));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("etch check: {}: {e}", file.display());
            ExitCode::from(1)
        }
    }
}
