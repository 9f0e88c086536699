//! `list`: kube-apiserver's paginated LIST of a whole resource.
//!
//! `--objects` objects of `--val-size` bytes are written under `/registry/listbench/`
//! once (skipped when the prefix already holds that many), then `--lists` full LISTs
//! are timed. A LIST reads pages of `--page` keys: the first at the newest revision
//! (linearizable unless `--consistency s`), each next one from the last key + `\0` at
//! the first page's revision, as kube-apiserver's `continue` token does.

use std::time::Instant;

use etcd_client::{GetOptions, KvClient};

use super::{Args, Common, Json, Recorder, Result, Summary, ensure_keys, prefix_end};

const PREFIX: &str = "/registry/listbench/";

/// What one full LIST returned.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub objects: u64,
    pub pages: u64,
    /// Key plus value bytes.
    pub bytes: u64,
    /// The revision every page was read at.
    pub revision: i64,
}

/// Lists every key under `prefix` in pages of `page`, pinned to the first page's
/// revision; stops after `max_pages` pages or at `deadline`.
pub async fn paginated_list(
    kv: &mut KvClient,
    prefix: &[u8],
    page: i64,
    serializable: bool,
    max_pages: u64,
    deadline: Instant,
) -> Result<Listed> {
    let end = prefix_end(prefix);
    let mut start = prefix.to_vec();
    let mut out = Listed::default();
    while out.pages < max_pages && Instant::now() < deadline {
        let mut o = GetOptions::new().with_range(end.clone()).with_limit(page);
        if out.revision > 0 {
            o = o.with_revision(out.revision);
        }
        if serializable {
            o = o.with_serializable();
        }
        let r = kv.get(start.clone(), Some(o)).await?;
        if out.revision == 0 {
            out.revision = r.header().map_or(0, |h| h.revision());
        }
        out.pages += 1;
        for kv in r.kvs() {
            out.objects += 1;
            out.bytes += (kv.key().len() + kv.value().len()) as u64;
        }
        let Some(last) = r.kvs().last() else { break };
        if !r.more() {
            break;
        }
        start = last.key().to_vec();
        start.push(0);
    }
    Ok(out)
}

pub async fn list(c: &Common, a: &mut Args) -> Result<String> {
    let objects: u64 = a.get("objects", 100_000)?;
    let val_size: usize = a.get("val-size", 2048)?;
    let key_size: usize = a.get("key-size", 40)?;
    let page: i64 = a.get("page", 500)?;
    let lists: u64 = a.get("lists", 5)?;
    let consistency: String = a.get("consistency", "l".to_string())?;
    a.finish()?;
    let serializable = match consistency.as_str() {
        "l" => false,
        "s" => true,
        other => return Err(format!("--consistency {other}: want l or s").into()),
    };
    let load_seconds = ensure_keys(c, PREFIX, objects, key_size, val_size).await?;
    let load_rate = if load_seconds > 0.0 {
        objects as f64 / load_seconds
    } else {
        0.0
    };
    let client = c.connect(1).await?.remove(0);
    let mut kv = client.kv_client().max_decoding_message_size(256 << 20);
    let started = Instant::now();
    let deadline = started + c.max;
    let mut rec = Recorder::default();
    let mut last = Listed::default();
    let max_pages = objects / page.max(1) as u64 + 2;
    for _ in 0..lists {
        if Instant::now() >= deadline {
            break;
        }
        let t0 = Instant::now();
        match paginated_list(
            &mut kv,
            PREFIX.as_bytes(),
            page,
            serializable,
            max_pages,
            deadline,
        )
        .await
        {
            Ok(l) if l.objects >= objects => {
                rec.ok(t0);
                last = l;
            }
            Ok(l) => rec.err(format!("listed {} objects, want {objects}", l.objects)),
            Err(e) => rec.err(e),
        }
    }
    let sum = Summary::of(rec, started.elapsed());
    let mut j = Json::new();
    j.str("workload", "list");
    j.str("consistency", &consistency);
    j.num("objects", last.objects as f64);
    j.num("pages", last.pages as f64);
    j.num("bytes", last.bytes as f64);
    j.num("val_size", val_size as f64);
    j.num("page", page as f64);
    j.num("load_seconds", load_seconds);
    j.num("load_puts_per_s", load_rate);
    j.num("seconds_per_list", sum.p50_ms / 1000.0);
    j.num(
        "mb_per_s",
        if sum.p50_ms > 0.0 {
            last.bytes as f64 / 1e6 / (sum.p50_ms / 1000.0)
        } else {
            0.0
        },
    );
    sum.write(&mut j);
    Ok(j.finish())
}
