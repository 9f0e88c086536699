//! etcd's JSON gateway: the same POSTs to etcd 3.5.1 and to etch give the same JSON
//! (the header's ids aside), errors included.

#[macro_use]
mod common;

use common::*;
use serde_json::{Value, json};

fn port_of(ep: &str) -> u16 {
    ep.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

fn post(ep: &str, path: &str, body: Value) -> (u16, Value) {
    let (code, text) = http_post(port_of(ep), path, &body.to_string());
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text:?}"));
    (code, v)
}

/// The answer without the ids and terms that differ between two servers.
fn without_header(mut v: Value) -> Value {
    if let Some(h) = v.get_mut("header").and_then(Value::as_object_mut) {
        h.remove("cluster_id");
        h.remove("member_id");
        h.remove("raft_term");
    }
    v
}

async fn gateway(ep: String, who: &str) {
    let _ = client(&ep).await;
    let (code, put) = post(&ep, "/v3/kv/put", json!({"key": "Zm9v", "value": "YmFy"}));
    assert_eq!(code, 200, "{who}: {put}");
    assert_eq!(
        without_header(put),
        json!({"header": {"revision": "2"}}),
        "{who}"
    );
    let (_, r) = post(&ep, "/v3/kv/range", json!({"key": "Zm9v"}));
    assert_eq!(
        without_header(r),
        json!({
            "header": {"revision": "2"},
            "kvs": [{"key": "Zm9v", "create_revision": "2", "mod_revision": "2",
                     "version": "1", "value": "YmFy"}],
            "count": "1"
        }),
        "{who}"
    );
    let (_, r) = post(
        &ep,
        "/v3/kv/range",
        json!({"key": "AA==", "range_end": "AA==", "keys_only": true, "count_only": false}),
    );
    assert_eq!(r["kvs"][0].get("value"), None, "{who}: keys only: {r}");
    let (_, t) = post(
        &ep,
        "/v3/kv/txn",
        json!({
            "compare": [{"key": "Zm9v", "target": "VALUE", "result": "EQUAL", "value": "YmFy"}],
            "success": [{"request_put": {"key": "Zm9v", "value": "YmF6"}}],
            "failure": [{"request_range": {"key": "Zm9v"}}]
        }),
    );
    assert_eq!(
        without_header(t),
        json!({"header": {"revision": "3"}, "succeeded": true,
               "responses": [{"response_put": {"header": {"revision": "3"}}}]}),
        "{who}"
    );
    let (_, l) = post(&ep, "/v3/lease/grant", json!({"TTL": "60", "ID": "4660"}));
    assert_eq!(
        without_header(l),
        json!({"header": {"revision": "3"}, "ID": "4660", "TTL": "60"}),
        "{who}"
    );
    let (_, ttl) = post(&ep, "/v3/lease/timetolive", json!({"ID": "4660"}));
    assert_eq!(ttl["grantedTTL"], json!("60"), "{who}: {ttl}");
    let (_, d) = post(
        &ep,
        "/v3/kv/deleterange",
        json!({"key": "Zm9v", "prev_kv": true}),
    );
    assert_eq!(d["deleted"], json!("1"), "{who}: {d}");
    assert_eq!(d["prev_kvs"][0]["value"], json!("YmF6"), "{who}: {d}");
    let (_, m) = post(&ep, "/v3/cluster/member/list", json!({}));
    assert_eq!(m["members"].as_array().map(Vec::len), Some(1), "{who}: {m}");
    // Errors: grpc-gateway's body and HTTP status.
    let (code, e) = post(&ep, "/v3/kv/range", json!({"key": ""}));
    assert_eq!(
        (code, e),
        (
            400,
            json!({"error": "etcdserver: key is not provided", "code": 3,
                   "message": "etcdserver: key is not provided"})
        ),
        "{who}"
    );
    let (code, e) = post(&ep, "/v3/lease/revoke", json!({"ID": "99"}));
    assert_eq!(code, 404, "{who}: {e}");
    assert_eq!(e["code"], json!(5), "{who}");
    let (code, e) = post(
        &ep,
        "/v3/kv/range",
        json!({"key": "Zm9v", "revision": "99"}),
    );
    assert_eq!(code, 400, "{who}: {e}");
    assert_eq!(
        e["message"],
        json!("etcdserver: mvcc: required revision is a future revision")
    );
}
both!(the_json_gateway_answers_as_etcds, gateway);

/// Reads the streamed answer of `POST path` until it holds `until`, or 10 s pass.
fn read_stream_until(port: u16, path: &str, body: &str, marks: &[&str]) -> Vec<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .expect("timeout");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut text = String::new();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    for mark in marks {
        while !text.contains(mark) {
            assert!(
                std::time::Instant::now() < deadline,
                "{path}: no {mark:?} in {text:?}"
            );
            match s.read(&mut buf) {
                Ok(0) => panic!("{path}: the stream ended before {mark:?}: {text:?}"),
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => {}
            }
        }
        seen.push(text.clone());
    }
    seen
}

async fn gateway_streams(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let port = port_of(&ep);
    // A watch: created, then the put's event, on the same open stream.
    let reader = tokio::task::spawn_blocking(move || {
        read_stream_until(
            port,
            "/v3/watch",
            r#"{"create_request": {"key": "d2s="}}"#,
            &[r#""created":true"#, r#""events""#],
        )
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    c.put("wk", "v", None).await.expect("put");
    let got = reader.await.expect("reader");
    assert!(
        got[0].contains(r#"{"result":{"header":"#),
        "{who}: {:?}",
        got[0]
    );
    let ev = &got[1][got[0].len()..];
    assert!(
        ev.contains(r#""kv":{"key":"d2s=","create_revision":"2","mod_revision":"2","version":"1","value":"dg=="}"#),
        "{who}: {ev:?}"
    );
    // A keep-alive answers each request of the body.
    let l = c
        .lease_grant(60, Some(etcd_client::LeaseGrantOptions::new().with_id(77)))
        .await
        .expect("grant");
    assert_eq!(l.id(), 77);
    let got = tokio::task::spawn_blocking(move || {
        read_stream_until(
            port,
            "/v3/lease/keepalive",
            r#"{"ID": "77"}"#,
            &[r#""TTL":"60""#],
        )
    })
    .await
    .expect("reader");
    assert!(got[0].contains(r#""ID":"77""#), "{who}: {:?}", got[0]);
}
both!(the_json_gateway_streams_as_etcds, gateway_streams);
