//! The HTTP endpoints on the client URL (/health, /livez, /readyz, /version, /metrics),
//! read with a tiny HTTP/1.1 client over std::net::TcpStream.
//!
//! Scenarios marked `both!` run first on real etcd 3.5.1 and then on a fresh etch with
//! the same assertions; /livez, /readyz and the version numbers are newer than 3.5.1 or
//! differ by design, so they are checked on etch only.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{client, http_get, start_etch};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client};

fn port_of(ep: &str) -> u16 {
    ep.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

/// `http_get` off the async threads.
async fn get(ep: &str, path: &str) -> (u16, String) {
    let port = port_of(ep);
    let path = path.to_string();
    tokio::task::spawn_blocking(move || http_get(port, &path))
        .await
        .expect("http task")
}

async fn nospace(c: &mut Client, action: AlarmAction) {
    let me = c
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id();
    let mut opts = AlarmOptions::new();
    opts.with_member(me);
    c.alarm(action, AlarmType::Nospace, Some(opts))
        .await
        .expect("alarm");
}

async fn health(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let ok = (200, r#"{"health":"true","reason":""}"#.to_string());
    assert_eq!(get(&ep, "/health").await, ok, "{who}");
    assert_eq!(get(&ep, "/health?serializable=true").await, ok, "{who}");
    nospace(&mut c, AlarmAction::Activate).await;
    assert_eq!(
        get(&ep, "/health").await,
        (
            503,
            "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n".to_string()
        ),
        "{who}"
    );
    assert_eq!(get(&ep, "/health?exclude=NOSPACE").await, ok, "{who}");
    nospace(&mut c, AlarmAction::Deactivate).await;
    assert_eq!(get(&ep, "/health").await, ok, "{who}");
}
both!(health_and_the_nospace_alarm, health);

/// The Prometheus text page: `name{labels} value` lines by name and label set.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad metrics line {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(name.to_string(), v);
    }
    out
}

fn metric(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    *m.get(name)
        .unwrap_or_else(|| panic!("no metric {name} in {:?}", m.keys().collect::<Vec<_>>()))
}

/// The handled-call counter of one method and code, whatever order the labels are in.
fn handled(m: &BTreeMap<String, f64>, method: &str, code: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.starts_with("grpc_server_handled_total{")
                && k.contains(&format!("grpc_method=\"{method}\""))
                && k.contains(&format!("grpc_code=\"{code}\""))
                && k.contains("grpc_service=\"etcdserverpb.KV\"")
                && k.contains("grpc_type=\"unary\"")
        })
        .map(|(_, v)| *v)
        .sum()
}

async fn metrics(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let (code, text) = get(&ep, "/metrics").await;
    assert_eq!(code, 200, "{who}");
    let before = parse_metrics(&text);
    assert_eq!(metric(&before, "etcd_server_has_leader"), 1.0, "{who}");
    assert_eq!(metric(&before, "etcd_server_is_leader"), 1.0, "{who}");
    assert!(
        metric(&before, "etcd_mvcc_db_total_size_in_bytes") > 0.0,
        "{who}"
    );
    for i in 0..5 {
        c.put(format!("mt/{i}"), "v", None).await.expect("put");
    }
    // Counters are updated as calls finish: allow the last one a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let m = parse_metrics(&get(&ep, "/metrics").await.1);
        if handled(&m, "Put", "OK") >= handled(&before, "Put", "OK") + 5.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "{who}: Put calls not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        metric(&after, "etcd_disk_wal_fsync_duration_seconds_count")
            > metric(&before, "etcd_disk_wal_fsync_duration_seconds_count"),
        "{who}: puts sync the WAL"
    );
    assert!(
        metric(
            &after,
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}"
        ) == metric(&after, "etcd_disk_wal_fsync_duration_seconds_count"),
        "{who}"
    );
    assert!(
        metric(&after, "etcd_mvcc_db_total_size_in_bytes") > 0.0,
        "{who}"
    );
    assert!(
        metric(&after, "etcd_debugging_mvcc_current_revision")
            >= metric(&before, "etcd_debugging_mvcc_current_revision") + 5.0,
        "{who}"
    );
}
both!(metrics_page, metrics);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_readyz_version_and_unknown_paths() {
    let f = start_etch(&[]);
    let ep = f.etch.endpoint();
    let mut c = client(&ep).await;
    assert_eq!(get(&ep, "/livez").await, (200, "ok".to_string()));
    assert_eq!(get(&ep, "/readyz").await, (200, "ok".to_string()));
    let (code, body) = get(&ep, "/readyz?verbose").await;
    assert_eq!(code, 200);
    assert!(body.contains("[+]linearizable_read ok"), "{body}");
    // NOSPACE does not make a member unready (it still serves reads).
    nospace(&mut c, AlarmAction::Activate).await;
    assert_eq!(get(&ep, "/readyz").await, (200, "ok".to_string()));
    nospace(&mut c, AlarmAction::Deactivate).await;

    let (code, body) = get(&ep, "/version").await;
    assert_eq!(code, 200);
    let field = |name: &str| -> String {
        let pat = format!("\"{name}\":\"");
        let start = body
            .find(&pat)
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            + pat.len();
        body[start..]
            .split('"')
            .next()
            .expect("a value")
            .to_string()
    };
    for name in ["etcdserver", "etcdcluster"] {
        let v: Vec<u32> = field(name)
            .split('.')
            .map(|p| p.parse().expect("a number"))
            .collect();
        assert!(v.as_slice() >= [3, 6, 0].as_slice(), "{name}: {body}");
    }
    assert_eq!(
        get(&ep, "/no-such-path").await,
        (404, "404 page not found\n".to_string())
    );
}
