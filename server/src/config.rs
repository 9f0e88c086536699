//! etcd's command-line flags and `ETCD_*` environment variables, with etcd's names and
//! defaults, so an etcd unit file or kubeadm manifest starts etch unchanged.
//!
//! Syntax is Go's `flag` package: `-name value`, `--name value`, `-name=value`; booleans
//! take no value or `=true|false`. A flag not given falls back to `ETCD_NAME` (upper case,
//! dashes as underscores), then to the default.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
    Int,
    Duration,
}

/// What etch does with a flag it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Support {
    /// Honoured.
    Yes,
    /// Accepted; etch has nothing to configure with it (a logging format, a Go runtime
    /// knob).
    Ignored,
    /// Accepted at its default; any other value is refused at start, because serving
    /// without it would be wrong (TLS, for one).
    NotYet,
}

struct Flag {
    name: &'static str,
    kind: Kind,
    default: &'static str,
    support: Support,
}

const fn f(name: &'static str, kind: Kind, default: &'static str, support: Support) -> Flag {
    Flag {
        name,
        kind,
        default,
        support,
    }
}

use Kind::{Bool, Duration as Dur, Int, Str};
use Support::{Ignored, NotYet, Yes};

/// etcd 3.5's server flags (the ones operators set), with their defaults.
const FLAGS: &[Flag] = &[
    f("name", Str, "default", Yes),
    f("data-dir", Str, "", Yes),
    f("wal-dir", Str, "", Yes),
    f("listen-client-urls", Str, "http://localhost:2379", Yes),
    f("advertise-client-urls", Str, "http://localhost:2379", Yes),
    f("listen-peer-urls", Str, "http://localhost:2380", Yes),
    f(
        "initial-advertise-peer-urls",
        Str,
        "http://localhost:2380",
        Yes,
    ),
    f("initial-cluster", Str, "", Yes),
    f("initial-cluster-state", Str, "new", Yes),
    f("initial-cluster-token", Str, "etcd-cluster", Yes),
    f("quota-backend-bytes", Int, "0", Yes),
    f("max-txn-ops", Int, "128", Yes),
    f("max-request-bytes", Int, "1572864", Yes),
    f("heartbeat-interval", Int, "100", Yes),
    f("election-timeout", Int, "1000", Yes),
    f("snapshot-count", Int, "100000", Yes),
    f("experimental-snapshot-catchup-entries", Int, "5000", Yes),
    f("auto-compaction-mode", Str, "periodic", Yes),
    f("auto-compaction-retention", Str, "0", Yes),
    f("log-level", Str, "info", Yes),
    f("logger", Str, "zap", Ignored),
    f("log-outputs", Str, "default", Ignored),
    f("listen-metrics-urls", Str, "", Yes),
    f("listen-client-http-urls", Str, "", NotYet),
    f("cert-file", Str, "", Yes),
    f("key-file", Str, "", Yes),
    f("trusted-ca-file", Str, "", Yes),
    f("client-cert-auth", Bool, "false", Yes),
    f("auto-tls", Bool, "false", NotYet),
    f("peer-cert-file", Str, "", Ignored),
    f("peer-key-file", Str, "", Ignored),
    f("peer-trusted-ca-file", Str, "", Ignored),
    f("peer-client-cert-auth", Bool, "false", Ignored),
    f("peer-auto-tls", Bool, "false", Ignored),
    f("cipher-suites", Str, "", NotYet),
    f("tls-min-version", Str, "TLS1.2", Ignored),
    f("max-snapshots", Int, "5", Ignored),
    f("max-wals", Int, "5", Ignored),
    f("max-concurrent-streams", Int, "4294967295", Ignored),
    f("grpc-keepalive-min-time", Dur, "5s", Ignored),
    f("grpc-keepalive-interval", Dur, "2h", Ignored),
    f("grpc-keepalive-timeout", Dur, "20s", Ignored),
    f("enable-pprof", Bool, "false", Ignored),
    f("enable-v2", Bool, "false", Ignored),
    f("strict-reconfig-check", Bool, "true", Ignored),
    f("pre-vote", Bool, "true", Ignored),
    f("metrics", Str, "basic", Ignored),
    f("auth-token", Str, "simple", Yes),
    f("auth-token-ttl", Int, "300", Yes),
    f("bcrypt-cost", Int, "10", Yes),
    f("socket-reuse-address", Bool, "false", Ignored),
    f("socket-reuse-port", Bool, "false", Ignored),
    f("force-new-cluster", Bool, "false", NotYet),
    f("discovery", Str, "", NotYet),
    f("discovery-srv", Str, "", NotYet),
    f("unsafe-no-fsync", Bool, "false", NotYet),
    f("backend-batch-interval", Dur, "0s", Ignored),
    f("backend-batch-limit", Int, "0", Ignored),
    f("experimental-initial-corrupt-check", Bool, "false", Ignored),
    f("experimental-corrupt-check-time", Dur, "0s", Ignored),
    f(
        "experimental-compact-hash-check-enabled",
        Bool,
        "false",
        Ignored,
    ),
    f(
        "experimental-watch-progress-notify-interval",
        Dur,
        "10m",
        Yes,
    ),
    f(
        "experimental-enable-lease-checkpoint",
        Bool,
        "false",
        Ignored,
    ),
    f("experimental-compaction-batch-limit", Int, "1000", Ignored),
    f("experimental-warning-apply-duration", Dur, "100ms", Ignored),
    f(
        "experimental-enable-distributed-tracing",
        Bool,
        "false",
        Ignored,
    ),
];

/// The server's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub wal_dir: PathBuf,
    pub listen_client: Vec<Listen>,
    /// `--listen-metrics-urls`: plain HTTP with /metrics and the health endpoints.
    pub listen_metrics: Vec<SocketAddr>,
    pub tls: Option<Tls>,
    pub advertise_client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    /// `--listen-peer-urls`: where the peer service listens (a multi-member cluster only).
    pub listen_peer: Vec<Listen>,
    /// `--initial-cluster`, as (name, peer URLs) in the order given; this member alone if
    /// the flag is empty.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_token: String,
    pub initial_cluster_state: String,
    pub quota_backend_bytes: u64,
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
    pub heartbeat: Duration,
    pub election_ticks: usize,
    pub auto_compaction: AutoCompaction,
    pub log_level: tracing::Level,
    pub watch_progress_notify_interval: Duration,
    /// `--snapshot-count`: applied entries between two compactions of the Raft log.
    pub snapshot_count: u64,
    /// `--experimental-snapshot-catchup-entries`: entries kept below the applied index for
    /// slow followers.
    pub snapshot_catchup_entries: u64,
    /// `--auth-token`: `simple` or `jwt,pub-key=…,priv-key=…,sign-method=…,ttl=…`.
    pub auth_token: String,
    /// `--auth-token-ttl`: seconds a simple token lives after its last use.
    pub auth_token_ttl: u64,
    /// `--bcrypt-cost` of password hashes.
    pub bcrypt_cost: u32,
}

/// A client listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    /// An https URL: served with `--cert-file`/`--key-file`.
    pub tls: bool,
}

/// Client TLS: `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trusted_ca: Option<PathBuf>,
    /// Clients must present a certificate signed by the trusted CA.
    pub client_cert_auth: bool,
}

/// `--auto-compaction-mode` and `--auto-compaction-retention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep this much history by time.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    Serve(Box<Config>),
    Version,
    Help,
}

/// Default quota when `--quota-backend-bytes` is 0 (etcd's 2 GiB).
const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Command, String> {
    let mut given: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        let Some(body) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            return Err(format!("'{a}' is not a valid flag"));
        };
        if body.is_empty() || body.starts_with('-') {
            return Err(format!("bad flag syntax: {a}"));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        match name {
            "version" => return Ok(Command::Version),
            "h" | "help" => return Ok(Command::Help),
            _ => {}
        }
        let Some(flag) = FLAGS.iter().find(|f| f.name == name) else {
            return Err(format!("flag provided but not defined: -{name}"));
        };
        let value = match (flag.kind, inline) {
            (_, Some(v)) => v,
            (Kind::Bool, None) => "true".to_string(),
            (_, None) => {
                let Some(v) = args.get(i) else {
                    return Err(format!("flag needs an argument: -{name}"));
                };
                i += 1;
                v.clone()
            }
        };
        given.insert(flag.name, value);
    }
    let mut values: BTreeMap<&'static str, String> = BTreeMap::new();
    for fl in FLAGS {
        let env_name = format!("ETCD_{}", fl.name.to_uppercase().replace('-', "_"));
        let v = match (given.remove(fl.name), env(&env_name)) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "conflicting environment variable \"{env_name}\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)"
                ));
            }
            (Some(v), None) | (None, Some(v)) => v,
            (None, None) => fl.default.to_string(),
        };
        check_kind(fl, &v)?;
        if v != fl.default {
            match fl.support {
                Support::Yes => {}
                Support::Ignored => {
                    tracing::warn!("--{}={v}: accepted and ignored by etch", fl.name)
                }
                Support::NotYet => {
                    return Err(format!(
                        "--{} is not supported by etch yet; refusing to start rather than run without it",
                        fl.name
                    ));
                }
            }
        }
        values.insert(fl.name, v);
    }
    build(&values).map(|c| Command::Serve(Box::new(c)))
}

fn check_kind(fl: &Flag, v: &str) -> Result<(), String> {
    let ok = match fl.kind {
        Kind::Str => true,
        Kind::Bool => matches!(
            v,
            "true" | "false" | "1" | "0" | "t" | "f" | "TRUE" | "FALSE"
        ),
        Kind::Int => v.parse::<i64>().is_ok() || v.parse::<u64>().is_ok(),
        Kind::Duration => parse_go_duration(v).is_some(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("invalid value \"{v}\" for flag -{}", fl.name))
    }
}

fn int(values: &BTreeMap<&'static str, String>, name: &str) -> i64 {
    values[name].parse().expect("checked by check_kind")
}

fn build(v: &BTreeMap<&'static str, String>) -> Result<Config, String> {
    let name = v["name"].clone();
    let data_dir = if v["data-dir"].is_empty() {
        PathBuf::from(format!("{name}.etch"))
    } else {
        PathBuf::from(&v["data-dir"])
    };
    let wal_dir = if v["wal-dir"].is_empty() {
        data_dir.join("member").join("wal")
    } else {
        PathBuf::from(&v["wal-dir"])
    };
    let listen_client = v["listen-client-urls"]
        .split(',')
        .map(|u| resolve_url(u.trim(), "listen-client-urls"))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = match (v["cert-file"].as_str(), v["key-file"].as_str()) {
        ("", "") => None,
        ("", _) | (_, "") => {
            return Err("--cert-file and --key-file must be given together".into());
        }
        (cert, key) => Some(Tls {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
            trusted_ca: (!v["trusted-ca-file"].is_empty())
                .then(|| PathBuf::from(&v["trusted-ca-file"])),
            client_cert_auth: matches!(v["client-cert-auth"].as_str(), "true" | "1" | "t" | "TRUE"),
        }),
    };
    if tls.is_none() && listen_client.iter().any(|l| l.tls) {
        return Err(
            "--listen-client-urls has an https URL but --cert-file and --key-file are not set"
                .into(),
        );
    }
    if let Some(t) = &tls
        && t.client_cert_auth
        && t.trusted_ca.is_none()
    {
        return Err("--client-cert-auth needs --trusted-ca-file".into());
    }
    let listen_metrics = if v["listen-metrics-urls"].is_empty() {
        Vec::new()
    } else {
        v["listen-metrics-urls"]
            .split(',')
            .map(|u| {
                let l = resolve_url(u.trim(), "listen-metrics-urls")?;
                if l.tls {
                    return Err(format!(
                        "--listen-metrics-urls: https metrics URLs are not supported by etch yet (\"{u}\")"
                    ));
                }
                Ok(l.addr)
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let heartbeat = int(v, "heartbeat-interval");
    let election = int(v, "election-timeout");
    if heartbeat <= 0 || election <= 0 {
        return Err("--heartbeat-interval and --election-timeout must be positive".into());
    }
    if election < 5 * heartbeat {
        return Err(format!(
            "--election-timeout[{election}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat}ms]"
        ));
    }
    if election > 50000 {
        return Err(format!(
            "--election-timeout[{election}ms] is too long, and should be set less than 50 seconds"
        ));
    }
    let max_txn_ops = int(v, "max-txn-ops");
    if max_txn_ops <= 0 {
        return Err(format!("--max-txn-ops must be positive, got {max_txn_ops}"));
    }
    let max_request_bytes = int(v, "max-request-bytes");
    if max_request_bytes <= 0 {
        return Err(format!(
            "--max-request-bytes must be positive, got {max_request_bytes}"
        ));
    }
    let quota = int(v, "quota-backend-bytes");
    let quota_backend_bytes = match quota {
        q if q < 0 => {
            return Err(format!(
                "--quota-backend-bytes must not be negative, got {q}"
            ));
        }
        0 => DEFAULT_QUOTA_BYTES,
        q => q as u64,
    };
    let initial_cluster_state = v["initial-cluster-state"].clone();
    if initial_cluster_state != "new" && initial_cluster_state != "existing" {
        return Err(format!(
            "invalid value \"{initial_cluster_state}\" for flag -initial-cluster-state: valid values are \"new\" or \"existing\""
        ));
    }
    let peer_urls: Vec<String> = v["initial-advertise-peer-urls"]
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    for u in &peer_urls {
        split_url(u).map_err(|e| format!("--initial-advertise-peer-urls: {e}"))?;
    }
    let initial_cluster = if v["initial-cluster"].is_empty() {
        vec![(name.clone(), peer_urls.clone())]
    } else {
        parse_initial_cluster(&v["initial-cluster"], &name, &peer_urls)?
    };
    let listen_peer = v["listen-peer-urls"]
        .split(',')
        .map(|u| resolve_url(u.trim(), "listen-peer-urls"))
        .collect::<Result<Vec<_>, _>>()?;
    if initial_cluster.len() > 1 && listen_peer.iter().any(|l| l.tls) {
        return Err("--listen-peer-urls: https peer URLs (peer TLS) are not supported yet".into());
    }
    let snapshot_count = int(v, "snapshot-count");
    let snapshot_catchup_entries = int(v, "experimental-snapshot-catchup-entries");
    if snapshot_count <= 0 || snapshot_catchup_entries <= 0 {
        return Err(
            "--snapshot-count and --experimental-snapshot-catchup-entries must be positive".into(),
        );
    }
    let log_level = match v["log-level"].as_str() {
        "debug" => tracing::Level::DEBUG,
        "info" => tracing::Level::INFO,
        "warn" => tracing::Level::WARN,
        "error" | "dpanic" | "panic" | "fatal" => tracing::Level::ERROR,
        other => {
            return Err(format!(
                "unknown --log-level \"{other}\" (debug, info, warn, error, dpanic, panic, fatal)"
            ));
        }
    };
    Ok(Config {
        name,
        data_dir,
        wal_dir,
        listen_client,
        listen_metrics,
        tls,
        advertise_client_urls: v["advertise-client-urls"]
            .split(',')
            .map(|s| s.trim().to_string())
            .collect(),
        peer_urls,
        listen_peer,
        initial_cluster,
        initial_cluster_token: v["initial-cluster-token"].clone(),
        initial_cluster_state,
        quota_backend_bytes,
        max_txn_ops: max_txn_ops as usize,
        max_request_bytes: max_request_bytes as usize,
        heartbeat: Duration::from_millis(heartbeat as u64),
        election_ticks: (election / heartbeat) as usize,
        auto_compaction: auto_compaction(
            &v["auto-compaction-mode"],
            &v["auto-compaction-retention"],
        )?,
        log_level,
        watch_progress_notify_interval: parse_go_duration(
            &v["experimental-watch-progress-notify-interval"],
        )
        .filter(|d| !d.is_zero())
        .ok_or("--experimental-watch-progress-notify-interval must be a positive duration")?,
        snapshot_count: snapshot_count as u64,
        snapshot_catchup_entries: snapshot_catchup_entries as u64,
        auth_token: v["auth-token"].clone(),
        auth_token_ttl: int(v, "auth-token-ttl").max(0) as u64,
        bcrypt_cost: bcrypt_cost(int(v, "bcrypt-cost")),
    })
}

/// etcd's `--bcrypt-cost`: outside bcrypt's 4..=31 it warns and uses the default, 10.
fn bcrypt_cost(c: i64) -> u32 {
    if (4..=31).contains(&c) {
        c as u32
    } else {
        tracing::warn!("--bcrypt-cost {c} is outside 4..31; using 10");
        10
    }
}

/// `--initial-cluster` as `name=url,name=url,…` (a name may repeat, once per URL): the
/// members in the order first named. This member's name must be there, with exactly its
/// `--initial-advertise-peer-urls`.
pub fn parse_initial_cluster(
    ic: &str,
    name: &str,
    peer_urls: &[String],
) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for part in ic.split(',') {
        let Some((n, u)) = part.split_once('=') else {
            return Err(format!("--initial-cluster: \"{part}\" is not name=url"));
        };
        let (n, u) = (n.trim(), u.trim());
        split_url(u).map_err(|e| format!("--initial-cluster: {e}"))?;
        match members.iter_mut().find(|(m, _)| m == n) {
            Some((_, urls)) => urls.push(u.to_string()),
            None => members.push((n.to_string(), vec![u.to_string()])),
        }
    }
    let Some((_, mine)) = members.iter().find(|(m, _)| m == name) else {
        return Err(format!(
            "couldn't find local name \"{name}\" in the initial cluster configuration"
        ));
    };
    let mut a = mine.clone();
    a.sort();
    let mut b = peer_urls.to_vec();
    b.sort();
    if a != b {
        return Err(format!(
            "--initial-cluster has {name}={mine:?} but missing from --initial-advertise-peer-urls={peer_urls:?}"
        ));
    }
    let mut all: Vec<&String> = members.iter().flat_map(|(_, u)| u).collect();
    all.sort();
    if all.windows(2).any(|w| w[0] == w[1]) {
        return Err("--initial-cluster names one peer URL twice".into());
    }
    Ok(members)
}

fn auto_compaction(mode: &str, retention: &str) -> Result<AutoCompaction, String> {
    match mode {
        "periodic" => {
            // A bare number is hours, as etcd reads it.
            let d = match retention.parse::<u64>() {
                Ok(h) => Duration::from_secs(h * 3600),
                Err(_) => parse_go_duration(retention).ok_or_else(|| {
                    format!("invalid --auto-compaction-retention \"{retention}\"")
                })?,
            };
            Ok(if d.is_zero() {
                AutoCompaction::Off
            } else {
                AutoCompaction::Periodic(d)
            })
        }
        "revision" => {
            let n: i64 = retention.parse().map_err(|_| {
                format!("invalid --auto-compaction-retention \"{retention}\" for revision mode")
            })?;
            Ok(if n <= 0 {
                AutoCompaction::Off
            } else {
                AutoCompaction::Revision(n)
            })
        }
        other => Err(format!(
            "unknown auto-compaction-mode \"{other}\" (periodic or revision)"
        )),
    }
}

/// Go's duration syntax: a sequence of numbers with units ns, us, ms, s, m, h.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total))
}

/// Splits `scheme://host:port` into (scheme, host, port).
pub fn split_url(u: &str) -> Result<(&str, &str, u16), String> {
    let (scheme, rest) = u
        .split_once("://")
        .ok_or_else(|| format!("URL \"{u}\" has no scheme"))?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("URL scheme must be http or https: \"{u}\""));
    }
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("URL address does not have the form \"host:port\": {u}"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("URL \"{u}\" has a bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((scheme, host, port))
}

fn resolve_url(u: &str, flag: &str) -> Result<Listen, String> {
    let (scheme, host, port) = split_url(u).map_err(|e| format!("--{flag}: {e}"))?;
    // "localhost" means the IPv4 loopback, as a default etcd serves it.
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("--{flag}: cannot resolve \"{u}\": {e}"))?
        .collect();
    match addrs.first() {
        Some(a) => Ok(Listen {
            addr: *a,
            tls: scheme == "https",
        }),
        None => Err(format!("--{flag}: \"{u}\" resolves to no address")),
    }
}

pub const USAGE: &str = "Usage:

  etch [flags]
    Start an etcd-compatible server (etcd's flags and ETCD_* variables).
  etch check DATA_FILE
    Verify every page and invariant of a data file.
  etch --version
    Print the version.

Common flags (etcd's names and defaults):
  --name 'default'
  --data-dir '${name}.etch'
  --wal-dir ''
  --listen-client-urls 'http://localhost:2379'
  --advertise-client-urls 'http://localhost:2379'
  --initial-advertise-peer-urls 'http://localhost:2380'
  --initial-cluster-token 'etcd-cluster'
  --quota-backend-bytes 0 (2 GiB)
  --max-txn-ops 128
  --max-request-bytes 1572864
  --heartbeat-interval 100
  --election-timeout 1000
  --auto-compaction-mode 'periodic'
  --auto-compaction-retention '0'
  --log-level 'info'
";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse(&args, &|_| None)
    }

    fn serve(args: &[&str]) -> Config {
        match p(args) {
            Ok(Command::Serve(c)) => *c,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = serve(&[]);
        assert_eq!(c.data_dir, PathBuf::from("default.etch"));
        assert_eq!(
            c.listen_client,
            vec![Listen {
                addr: "127.0.0.1:2379".parse().unwrap(),
                tls: false
            }]
        );
        assert_eq!(c.tls, None);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.max_request_bytes, 1572864);
        assert_eq!(c.election_ticks, 10);
        assert_eq!(c.auto_compaction, AutoCompaction::Off);
    }

    #[test]
    fn go_flag_syntax() {
        let c = serve(&[
            "--name=n1",
            "-data-dir",
            "/tmp/x",
            "--max-txn-ops",
            "7",
            "--experimental-initial-corrupt-check",
            "--auto-compaction-retention=1h",
        ]);
        assert_eq!(c.name, "n1");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.max_txn_ops, 7);
        assert_eq!(
            c.auto_compaction,
            AutoCompaction::Periodic(Duration::from_secs(3600))
        );
    }

    #[test]
    fn errors() {
        assert!(p(&["--nope"]).unwrap_err().contains("not defined"));
        assert!(
            p(&["--max-txn-ops", "x"])
                .unwrap_err()
                .contains("invalid value")
        );
        assert!(
            p(&["--max-txn-ops"])
                .unwrap_err()
                .contains("needs an argument")
        );
        assert!(p(&["stray"]).unwrap_err().contains("not a valid flag"));
        assert!(
            p(&["--election-timeout=100"])
                .unwrap_err()
                .contains("5 times")
        );
        assert!(p(&["--cert-file=/x"]).unwrap_err().contains("together"));
        assert!(
            p(&["--listen-client-urls=https://127.0.0.1:2379"])
                .unwrap_err()
                .contains("--cert-file")
        );
        assert!(p(&["--auto-tls"]).unwrap_err().contains("not supported"));
        assert!(matches!(p(&["--version"]), Ok(Command::Version)));
    }

    #[test]
    fn env_and_conflicts() {
        let env = |k: &str| (k == "ETCD_NAME").then(|| "fromenv".to_string());
        let c = match parse(&[], &env) {
            Ok(Command::Serve(c)) => c,
            other => panic!("{other:?}"),
        };
        assert_eq!(c.name, "fromenv");
        let args = vec!["--name=x".to_string()];
        assert!(parse(&args, &env).unwrap_err().contains("shadowed"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("5"), None);
    }
}
