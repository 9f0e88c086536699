//! Load generator for any etcd v3 endpoint (etch or etcd), like etcd's `tools/benchmark`.
//!
//! The `etch-bench` binary parses its command line with [`Args`] and runs one workload
//! from [`kv`], [`watch`], [`list`] or [`kube`]; each prints one JSON object on stdout.
//! Every loop is bounded twice: by an operation count and by `--max-seconds`.
//!
//! Latencies are recorded per operation in microseconds ([`Recorder`]) and summarised as
//! nearest-rank percentiles ([`Summary`]).

pub mod kube;
pub mod kv;
pub mod list;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};

/// A load tool error: bad flags or a failed setup step (not a failed measured request,
/// which is counted in [`Recorder::errors`]).
pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// `--name value` and `--name=value` flags; every flag must be read once, so a typo is
/// an error rather than a silently ignored setting.
#[derive(Debug, Default)]
pub struct Args {
    given: BTreeMap<String, String>,
    read: std::collections::BTreeSet<String>,
}

impl Args {
    pub fn parse(args: &[String]) -> Result<Args> {
        let mut given = BTreeMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(body) = a.strip_prefix("--") else {
                return Err(format!("expected a --flag, got '{a}'").into());
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    let v = it.next().ok_or_else(|| format!("--{body} needs a value"))?;
                    (body.to_string(), v.clone())
                }
            };
            if given.insert(name.clone(), value).is_some() {
                return Err(format!("--{name} given twice").into());
            }
        }
        Ok(Args {
            given,
            read: Default::default(),
        })
    }

    /// The flag's value, or `default` when absent.
    pub fn get<T: FromStr>(&mut self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.read.insert(name.to_string());
        match self.given.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("--{name} {v}: {e}").into()),
        }
    }

    /// Fails on any flag that no workload read.
    pub fn finish(&self) -> Result<()> {
        let unknown: Vec<_> = self
            .given
            .keys()
            .filter(|k| !self.read.contains(*k))
            .map(|k| format!("--{k}"))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!("unknown flags: {}", unknown.join(" ")).into())
        }
    }
}

/// Flags every workload takes.
#[derive(Debug, Clone)]
pub struct Common {
    pub endpoints: Vec<String>,
    /// Hard bound on the measured phase of a workload.
    pub max: Duration,
    pub seed: u64,
}

impl Common {
    pub fn from_args(a: &mut Args) -> Result<Common> {
        let endpoints: String = a.get("endpoints", "http://127.0.0.1:2379".to_string())?;
        Ok(Common {
            endpoints: endpoints.split(',').map(str::to_string).collect(),
            max: Duration::from_secs_f64(a.get("max-seconds", 300.0)?),
            seed: a.get("seed", 1)?,
        })
    }

    /// `conns` clients, each its own HTTP/2 connection.
    pub async fn connect(&self, conns: usize) -> Result<Vec<Client>> {
        let mut out = Vec::with_capacity(conns);
        for _ in 0..conns.max(1) {
            let opts = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(60));
            out.push(Client::connect(&self.endpoints, Some(opts)).await?);
        }
        Ok(out)
    }
}

/// SplitMix64: a small, fast, seedable generator (quality is ample for picking keys).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        self.next_u64() % n
    }
}

/// `prefix` followed by `i` zero-padded so the key is `size` bytes (longer if the prefix
/// and the digits do not fit).
pub fn key(prefix: &str, i: u64, size: usize) -> Vec<u8> {
    let width = size.saturating_sub(prefix.len());
    format!("{prefix}{i:0width$}").into_bytes()
}

/// A value of `size` printable pseudo-random bytes (incompressible enough that neither
/// server gains from it).
pub fn value(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..size).map(|_| b'a' + (rng.below(26) as u8)).collect()
}

/// Smallest key greater than every key starting with `prefix` (etcd's prefix range end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One task's measurements.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    pub lat_us: Vec<u32>,
    pub errors: u64,
    /// First error message seen, to say what went wrong.
    pub first_error: Option<String>,
}

impl Recorder {
    pub fn ok(&mut self, started: Instant) {
        self.push(started.elapsed());
    }

    pub fn push(&mut self, d: Duration) {
        self.lat_us.push(d.as_micros().min(u32::MAX as u128) as u32);
    }

    pub fn err(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        self.lat_us.extend(other.lat_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Operation count, rate and latency percentiles of a merged [`Recorder`].
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub ops: u64,
    pub seconds: f64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Summary {
    pub fn of(mut r: Recorder, elapsed: Duration) -> Summary {
        r.lat_us.sort_unstable();
        let n = r.lat_us.len();
        let pct = |q: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            // Nearest rank: the smallest value with at least q of the samples at or below.
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            f64::from(r.lat_us[rank - 1]) / 1000.0
        };
        let seconds = elapsed.as_secs_f64();
        Summary {
            ops: n as u64,
            seconds,
            throughput: if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            },
            p50_ms: pct(0.50),
            p90_ms: pct(0.90),
            p99_ms: pct(0.99),
            max_ms: pct(1.0),
            errors: r.errors,
            first_error: r.first_error,
        }
    }

    /// The summary's fields, into an open JSON object.
    pub fn write(&self, j: &mut Json) {
        j.num("ops", self.ops as f64);
        j.num("seconds", self.seconds);
        j.num("throughput", self.throughput);
        j.num("p50_ms", self.p50_ms);
        j.num("p90_ms", self.p90_ms);
        j.num("p99_ms", self.p99_ms);
        j.num("max_ms", self.max_ms);
        j.num("errors", self.errors as f64);
        if let Some(e) = &self.first_error {
            j.str("first_error", e);
        }
    }
}

/// A flat JSON object written by hand (no serde, to keep the build small).
#[derive(Debug, Default)]
pub struct Json {
    out: String,
}

impl Json {
    pub fn new() -> Json {
        Json::default()
    }

    fn sep(&mut self, name: &str) {
        self.out.push(if self.out.is_empty() { '{' } else { ',' });
        let _ = write!(self.out, "\"{}\":", escape(name));
    }

    pub fn num(&mut self, name: &str, v: f64) {
        self.sep(name);
        if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
            let _ = write!(self.out, "{}", v as i64);
        } else if v.is_finite() {
            let _ = write!(self.out, "{v:.4}");
        } else {
            self.out.push_str("null");
        }
    }

    pub fn str(&mut self, name: &str, v: &str) {
        self.sep(name);
        let _ = write!(self.out, "\"{}\"", escape(v));
    }

    /// A nested object.
    pub fn obj(&mut self, name: &str, v: Json) {
        self.sep(name);
        self.out.push_str(&v.finish());
    }

    pub fn finish(mut self) -> String {
        if self.out.is_empty() {
            self.out.push('{');
        }
        self.out.push('}');
        self.out
    }
}

fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

/// Writes `keys` keys (`prefix` + index, `key_size` bytes, values of `val_size`) with
/// `tasks` concurrent writers, unless the prefix already holds at least that many.
/// Returns the seconds spent writing (0 when nothing was written).
pub async fn ensure_keys(
    c: &Common,
    prefix: &str,
    keys: u64,
    key_size: usize,
    val_size: usize,
) -> Result<f64> {
    let clients = c.connect(4).await?;
    let mut kv = clients[0].kv_client();
    let have = kv
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .count() as u64;
    if have >= keys {
        return Ok(0.0);
    }
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let val = value(val_size, c.seed);
    let mut tasks = Vec::new();
    for t in 0..64 {
        let mut kv = clients[t % clients.len()].kv_client();
        let next = next.clone();
        let val = val.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= keys {
                    return Ok::<(), etcd_client::Error>(());
                }
                kv.put(key(&prefix, i, key_size), val.clone(), None).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Waits until a linearizable get (with `--put true`, a put: the first acknowledged
/// write, for failover) succeeds, retrying with fresh connections every few
/// milliseconds; prints the time since `--since-ns` (Unix epoch nanoseconds, taken when
/// the server process was started or the leader killed) or since this command started.
pub async fn ready(c: &Common, a: &mut Args) -> Result<String> {
    let since_ns: u128 = a.get("since-ns", 0)?;
    let timeout = Duration::from_secs_f64(a.get("timeout", 120.0)?);
    let put: bool = a.get("put", false)?;
    // One attempt's limit: a request sent to a member that lost its leader waits this
    // long at most before the next attempt.
    let attempt = Duration::from_secs_f64(a.get("attempt-seconds", 5.0)?);
    a.finish()?;
    let started = Instant::now();
    let epoch_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    };
    let base_ns = if since_ns > 0 { since_ns } else { epoch_ns() };
    let mut attempts = 0u64;
    let mut last_err = String::new();
    while started.elapsed() < timeout {
        attempts += 1;
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(attempt);
        match Client::connect(&c.endpoints, Some(opts)).await {
            Ok(mut client) => match if put {
                client.put("etch-bench/ready", "1", None).await.map(|_| ())
            } else {
                client.get("etch-bench/ready", None).await.map(|_| ())
            } {
                Ok(()) => {
                    let ms = epoch_ns().saturating_sub(base_ns) as f64 / 1e6;
                    let mut j = Json::new();
                    j.str("workload", "ready");
                    j.num("ready_ms", ms);
                    j.num("attempts", attempts as f64);
                    return Ok(j.finish());
                }
                Err(e) => last_err = e.to_string(),
            },
            Err(e) => last_err = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!("not ready within {timeout:?}: {last_err}").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size() {
        assert_eq!(key("k/", 42, 8), b"k/000042".to_vec());
        assert_eq!(key("/registry/pods/", 7, 4), b"/registry/pods/7".to_vec());
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let r = Recorder {
            lat_us: (1..=100).map(|i| i * 1000).collect(),
            ..Default::default()
        };
        let s = Summary::of(r, Duration::from_secs(1));
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(s.throughput, 100.0);
    }

    #[test]
    fn args_refuse_unknown_flags() {
        let v: Vec<String> = ["--clients", "4", "--total=10", "--typo", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut a = Args::parse(&v).unwrap();
        assert_eq!(a.get("clients", 1usize).unwrap(), 4);
        assert_eq!(a.get("total", 1u64).unwrap(), 10);
        assert!(a.finish().is_err());
    }

    #[test]
    fn json_is_flat_and_escaped() {
        let mut j = Json::new();
        j.num("a", 1.0);
        j.num("b", 0.5);
        j.str("c", "x\"y");
        assert_eq!(j.finish(), r#"{"a":1,"b":0.5000,"c":"x\"y"}"#);
    }
}
