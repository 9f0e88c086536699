//! `etch`: an etcd-compatible server, a thin binary over the `etch_server` library.
//!
//! `etch [etcd flags]` serves etcd's v3 gRPC API from a data dir;
//! `etch check PATH` verifies a data file (or a data dir's data file);
//! `etch snapshot restore FILE --data-dir DIR` builds a data dir from a snapshot.

use std::path::Path;
use std::process::ExitCode;

use etch_engine::btree::{Db, Options};
use etch_server::{ETCD_VERSION, config, data_dir};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("snapshot") {
        return snapshot_command(&args[1..]);
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

/// `etch snapshot restore SNAPSHOT_FILE --data-dir DIR`
fn snapshot_command(args: &[String]) -> ExitCode {
    const USAGE: &str = "usage: etch snapshot restore SNAPSHOT_FILE --data-dir DIR";
    let mut file = None;
    let mut dir = None;
    let mut it = args.iter();
    if it.next().map(String::as_str) != Some("restore") {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    while let Some(a) = it.next() {
        if let Some(v) = a
            .strip_prefix("--data-dir=")
            .or_else(|| a.strip_prefix("-data-dir="))
        {
            dir = Some(v.to_string());
        } else if a == "--data-dir" || a == "-data-dir" {
            dir = it.next().cloned();
        } else if file.is_none() && !a.starts_with('-') {
            file = Some(a.clone());
        } else {
            eprintln!("etch snapshot restore: unexpected argument {a:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let (Some(file), Some(dir)) = (file, dir) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match data_dir::restore(Path::new(&file), Path::new(&dir)) {
        Ok(()) => {
            println!("restored snapshot {file} into {dir}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("etch snapshot restore: {e}");
            ExitCode::from(1)
        }
    }
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
