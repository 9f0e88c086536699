//! `etch`: the etch server binary.
//!
//! The etcd-compatible server is not built yet. Today the binary offers the operator
//! command `etch check DATA_FILE`, which verifies every page and invariant of a data file.

use std::path::Path;
use std::process::ExitCode;

use etch_engine::btree::{Db, Options};

const USAGE: &str = "usage: etch check DATA_FILE   verify every page of an etch data file
       etch --version

The etcd-compatible server is not implemented yet.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--version"] => {
            println!("etch {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["check", path] => check(Path::new(path)),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn check(path: &Path) -> ExitCode {
    if !path.is_file() {
        eprintln!("etch check: {} is not a file", path.display());
        return ExitCode::from(1);
    }
    let db = match Db::open(path, Options::default()) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("etch check: cannot open {}: {e}", path.display());
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
            eprintln!("etch check: {}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}
