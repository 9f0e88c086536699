//! Client TLS with etcd's flags: an https client URL served with --cert-file/--key-file,
//! client certificates required by --client-cert-auth, and plain HTTP on
//! --listen-metrics-urls. Certificates come from the openssl command; the client is the
//! real etcdctl (etcd 3.5.1).

mod common;

use std::path::Path;
use std::process::Command;

use common::{etcd_bin_dir, free_port};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it.
fn make_certs(dir: &Path) {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("writing ext.cnf");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=etch-test-ca",
        ],
    );
    for who in ["server", "client"] {
        let (key, csr, crt) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.crt"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={who}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
    }
}

/// etch on https://127.0.0.1:`port` with `make_certs`' server certificate, requiring
/// client certificates signed by its CA.
fn start_with_client_certs(dir: &Path, port: u16, extra: &[&str]) -> common::Etch {
    let file = |f: &str| dir.join(f).to_str().expect("utf-8").to_string();
    let (cert, key, ca) = (file("server.crt"), file("server.key"), file("ca.crt"));
    let mut flags = vec![
        "--cert-file",
        &cert,
        "--key-file",
        &key,
        "--trusted-ca-file",
        &ca,
        "--client-cert-auth",
    ];
    flags.extend_from_slice(extra);
    common::Etch::start_at(
        &dir.join("data"),
        port,
        &format!("https://127.0.0.1:{port}"),
        &flags,
    )
}

fn etcdctl(dir: &Path, endpoint: &str, with_cert: bool, args: &[&str]) -> (bool, String) {
    let mut c = Command::new(etcd_bin_dir().join("etcdctl"));
    c.current_dir(dir)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args([
            "--cacert",
            "ca.crt",
            "--command-timeout=3s",
            "--dial-timeout=3s",
        ]);
    if with_cert {
        c.args(["--cert", "client.crt", "--key", "client.key"]);
    }
    let out = c.args(args).output().expect("running etcdctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn https_with_client_certificates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    make_certs(dir);
    let port = free_port();
    let metrics_port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let mut etch = start_with_client_certs(dir, port, &["--listen-metrics-urls", &metrics_url]);
    let (ok, out) = etcdctl(dir, &url, true, &["put", "k", "over-tls"]);
    assert!(ok, "{out}");
    let (ok, out) = etcdctl(dir, &url, true, &["get", "k", "--print-value-only"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "over-tls");
    // Without a client certificate the handshake is refused.
    let (ok, out) = etcdctl(dir, &url, false, &["get", "k"]);
    assert!(!ok, "a client without a certificate was served: {out}");
    // Plain HTTP on the metrics URL.
    let health = http_get(metrics_port, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.contains(r#"{"health":"true","reason":""}"#),
        "{health}"
    );
    let metrics = http_get(metrics_port, "/metrics");
    assert!(
        metrics.contains("\netcd_server_has_leader 1\n"),
        "{metrics}"
    );
    assert_eq!(etch.stop(), Some(0), "{}", etch.log_text());
}

#[test]
fn https_without_certificates_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_etch"))
        .arg("--data-dir")
        .arg(tmp.path().join("d"))
        .args(["--listen-client-urls", "https://127.0.0.1:2"])
        .output()
        .expect("run etch");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cert-file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With --client-cert-auth and auth enabled, a client certificate's common name is the
/// user (here "client", a user without a password), as etcd does; a token, when given,
/// names the user instead.
#[test]
fn the_certificates_common_name_is_the_user() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    make_certs(dir);
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut etch = start_with_client_certs(dir, port, &["--bcrypt-cost=4"]);
    for step in [
        &["user", "add", "root", "--new-user-password=rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "client", "--no-password"],
        &["role", "add", "kv"],
        &["role", "grant-permission", "kv", "readwrite", "k"],
        &["user", "grant-role", "client", "kv"],
        &["auth", "enable"],
    ] {
        let (ok, out) = etcdctl(dir, &url, true, step);
        assert!(ok, "{step:?}: {out}");
    }
    let (ok, out) = etcdctl(dir, &url, true, &["put", "k", "by-cn"]);
    assert!(ok, "the certificate's user may write k: {out}");
    let (ok, out) = etcdctl(dir, &url, true, &["put", "other", "x"]);
    assert!(
        !ok && out.contains("etcdserver: permission denied"),
        "{out}"
    );
    let (ok, out) = etcdctl(dir, &url, true, &["user", "list"]);
    assert!(
        !ok && out.contains("etcdserver: permission denied"),
        "{out}"
    );
    let (ok, out) = etcdctl(dir, &url, true, &["--user", "root:rootpw", "user", "list"]);
    assert!(
        ok && out.contains("client") && out.contains("root"),
        "{out}"
    );
    assert_eq!(etch.stop(), Some(0), "{}", etch.log_text());
}
