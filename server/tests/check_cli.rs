//! `etch check DATA_FILE` against real data files: a healthy one, a corrupted one, and bad
//! arguments.

use std::process::Command;

use etch_engine::btree::{Db, Options};

fn etch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_etch"))
}

#[test]
fn check_reports_a_healthy_file_and_names_a_corrupt_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data.etch");
    {
        let db = Db::open(&path, Options::default()).expect("open");
        let mut w = db.begin_write().expect("begin");
        let t = w.open_tree(b"items").expect("tree");
        for i in 0..2000u32 {
            w.put(t, format!("key-{i:05}").as_bytes(), &[7u8; 100])
                .expect("put");
        }
        w.commit().expect("commit");
        db.close().expect("close");
    }
    let out = etch().arg("check").arg(&path).output().expect("run etch");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert!(stdout.contains("tree \"items\": 2000 entries"), "{stdout}");

    // Flip a byte inside page 5.
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[5 * 4096 + 100] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");
    let out = etch().arg("check").arg(&path).output().expect("run etch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("corrupt page 5"), "{stderr}");
}

#[test]
fn bad_arguments_exit_nonzero_with_usage() {
    // Unknown server flags are refused as etcd refuses them: exit 1 and the flag named.
    let out = etch().arg("--no-such-flag").output().expect("run etch");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("flag provided but not defined: -no-such-flag")
    );
    let out = etch().arg("check").output().expect("run etch");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: etch check"));
    let out = etch()
        .args(["check", "/nonexistent/file"])
        .output()
        .expect("run etch");
    assert_eq!(out.status.code(), Some(1));
    let out = etch().arg("--version").output().expect("run etch");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("etch "));
}
