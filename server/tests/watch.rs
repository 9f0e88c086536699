//! etcd's Watch service through the etcd-client crate (and a raw gRPC stream where the
//! crate hides a field): ranges, history replay, prev_kv, filters, ids, cancel,
//! compaction, progress, fragments, many and slow watchers, resuming after a restart.
//!
//! Scenarios marked `both!` run first on real etcd 3.5.1 and then on a fresh etch, with
//! the same assertions: the expectations are etcd's own answers. The rest exercise what
//! only etch can be made to do here (SIGKILL mid-stream) or where etch follows a newer
//! etcd than 3.5.1 (said where it happens).

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::raw::{RawWatch, WatchCreateRequest};
use common::{client, current_rev, start_etch};
use etcd_client::{
    Client, Event, EventType, KeyValue, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse,
    WatchStream,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// How long any one expected response may take (a loaded 2-core machine).
const WAIT: Duration = Duration::from_secs(15);

/// (key, value, create_revision, mod_revision, version, lease)
type Kv = (String, String, i64, i64, i64, i64);

/// An event: 'P' or 'D', the kv, and the prev_kv when sent.
type Ev = (char, Kv, Option<Kv>);

fn kv(k: &KeyValue) -> Kv {
    (
        String::from_utf8_lossy(k.key()).into_owned(),
        String::from_utf8_lossy(k.value()).into_owned(),
        k.create_revision(),
        k.mod_revision(),
        k.version(),
        k.lease(),
    )
}

fn ev(e: &Event) -> Ev {
    let t = match e.event_type() {
        EventType::Put => 'P',
        EventType::Delete => 'D',
    };
    (
        t,
        kv(e.kv().expect("an event has a kv")),
        e.prev_kv().map(kv),
    )
}

/// A put event: key, value, create, mod, version.
fn put_ev(k: &str, v: &str, create: i64, modified: i64, version: i64) -> Ev {
    (
        'P',
        (k.into(), v.into(), create, modified, version, 0),
        None,
    )
}

/// A delete event as etcd sends it: only the key and the deletion's revision.
fn del_ev(k: &str, modified: i64) -> Ev {
    ('D', (k.into(), String::new(), 0, modified, 0, 0), None)
}

fn with_prev(mut e: Ev, prev: Kv) -> Ev {
    e.2 = Some(prev);
    e
}

fn rev_of(e: &Ev) -> i64 {
    e.1.3
}

/// The next response; panics after `WAIT` or at the end of the stream.
async fn recv(s: &mut WatchStream) -> WatchResponse {
    match tokio::time::timeout(WAIT, s.message()).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => panic!("watch stream ended"),
        Ok(Err(e)) => panic!("watch stream failed: {e}"),
        Err(_) => panic!("no watch response within {WAIT:?}"),
    }
}

/// Asserts nothing arrives on the stream for `ms` milliseconds.
async fn quiet(s: &mut WatchStream, ms: u64, what: &str) {
    if let Ok(r) = tokio::time::timeout(Duration::from_millis(ms), s.message()).await {
        panic!("{what}: expected no response, got {r:?}");
    }
}

/// Expects the `created` answer for watch `id`.
async fn created(s: &mut WatchStream, id: i64) {
    let r = recv(s).await;
    assert!(
        r.created() && !r.canceled() && r.events().is_empty(),
        "expected created for {id}, got {r:?}"
    );
    assert_eq!(r.watch_id(), id, "{r:?}");
}

/// Opens a stream with one watcher and waits for it to be created (id 0).
async fn open(c: &mut Client, key: &str, opts: WatchOptions) -> WatchStream {
    let mut s = c.watch(key, Some(opts)).await.expect("watch");
    created(&mut s, 0).await;
    s
}

/// Events per watch id, read until every id in `want` has that many; each response is
/// checked to hold whole revisions only (`seen_revs`: a revision is never split or sent
/// twice).
async fn gather(s: &mut WatchStream, want: &BTreeMap<i64, usize>) -> BTreeMap<i64, Vec<Ev>> {
    gather_within(s, want, WAIT).await
}

async fn gather_within(
    s: &mut WatchStream,
    want: &BTreeMap<i64, usize>,
    within: Duration,
) -> BTreeMap<i64, Vec<Ev>> {
    let mut got: BTreeMap<i64, Vec<Ev>> = want.keys().map(|id| (*id, Vec::new())).collect();
    let mut seen_revs: HashMap<i64, Vec<i64>> = HashMap::new();
    let deadline = Instant::now() + within;
    while want.iter().any(|(id, n)| got[id].len() < *n) {
        assert!(Instant::now() < deadline, "gathering {want:?}: got {got:?}");
        let r = recv(s).await;
        let id = r.watch_id();
        assert!(
            !r.created() && !r.canceled(),
            "unexpected {r:?} while gathering"
        );
        let evs: Vec<Ev> = r.events().iter().map(ev).collect();
        let revs = seen_revs.entry(id).or_default();
        let mut in_this = Vec::new();
        for e in &evs {
            if !in_this.contains(&rev_of(e)) {
                assert!(
                    !revs.contains(&rev_of(e)),
                    "revision {} of watcher {id} came in two responses",
                    rev_of(e)
                );
                in_this.push(rev_of(e));
            }
        }
        revs.extend(in_this);
        got.get_mut(&id)
            .unwrap_or_else(|| panic!("events for unexpected watcher {id}: {r:?}"))
            .extend(evs);
    }
    got
}

async fn put(c: &mut Client, k: &str, v: &str) -> i64 {
    c.put(k, v, None)
        .await
        .unwrap_or_else(|e| panic!("put {k}: {e}"))
        .header()
        .expect("header")
        .revision()
}

// ---------------------------------------------------------------------------------------
// Scenarios on both servers
// ---------------------------------------------------------------------------------------

/// One key, a range, a prefix, from a key, every key: each watcher on one stream sees
/// exactly its events.
async fn ranges(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    let mut s = open(&mut c, "r/b", WatchOptions::new()).await;
    s.watch("r/b", Some(WatchOptions::new().with_range("r/d")))
        .await
        .expect("watch");
    created(&mut s, 1).await;
    s.watch("r/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    created(&mut s, 2).await;
    s.watch("r/c", Some(WatchOptions::new().with_from_key()))
        .await
        .expect("watch");
    created(&mut s, 3).await;
    s.watch("", Some(WatchOptions::new().with_all_keys()))
        .await
        .expect("watch");
    created(&mut s, 4).await;
    for k in ["r/a", "r/b", "r/c", "r/d", "s/x"] {
        put(&mut c, k, "v").await;
    }
    c.delete("r/b", None).await.expect("delete");
    let a = put_ev("r/a", "v", r0 + 1, r0 + 1, 1);
    let b = put_ev("r/b", "v", r0 + 2, r0 + 2, 1);
    let cc = put_ev("r/c", "v", r0 + 3, r0 + 3, 1);
    let d = put_ev("r/d", "v", r0 + 4, r0 + 4, 1);
    let x = put_ev("s/x", "v", r0 + 5, r0 + 5, 1);
    let bd = del_ev("r/b", r0 + 6);
    let want: BTreeMap<i64, Vec<Ev>> = BTreeMap::from([
        (0, vec![b.clone(), bd.clone()]),
        (1, vec![b.clone(), cc.clone(), bd.clone()]),
        (
            2,
            vec![a.clone(), b.clone(), cc.clone(), d.clone(), bd.clone()],
        ),
        (3, vec![cc.clone(), d.clone(), x.clone()]),
        (4, vec![a, b, cc, d, x, bd]),
    ]);
    let counts = want.iter().map(|(id, v)| (*id, v.len())).collect();
    assert_eq!(gather(&mut s, &counts).await, want, "{who}");
    quiet(&mut s, 300, who).await;
}
both!(create_with_key_range_prefix_from_key_all, ranges);

/// start_revision in the past replays history in order, whole revisions per response;
/// 0 means from now; in the future it waits.
async fn history(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    put(&mut c, "h/a", "1").await;
    put(&mut c, "h/b", "1").await;
    c.txn(Txn::new().and_then(vec![
        TxnOp::put("h/c", "1", None),
        TxnOp::put("h/d", "1", None),
        TxnOp::delete("h/a", None),
    ]))
    .await
    .expect("txn");
    put(&mut c, "h/a", "2").await;
    c.delete("h/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");
    let all = vec![
        put_ev("h/a", "1", r0 + 1, r0 + 1, 1),
        put_ev("h/b", "1", r0 + 2, r0 + 2, 1),
        put_ev("h/c", "1", r0 + 3, r0 + 3, 1),
        put_ev("h/d", "1", r0 + 3, r0 + 3, 1),
        del_ev("h/a", r0 + 3),
        put_ev("h/a", "2", r0 + 4, r0 + 4, 1),
        del_ev("h/a", r0 + 5),
        del_ev("h/b", r0 + 5),
        del_ev("h/c", r0 + 5),
        del_ev("h/d", r0 + 5),
    ];
    for start in [r0 + 1, r0 + 3, r0 + 5] {
        let mut s = open(
            &mut c,
            "h/",
            WatchOptions::new().with_prefix().with_start_revision(start),
        )
        .await;
        let want: Vec<Ev> = all.iter().filter(|e| rev_of(e) >= start).cloned().collect();
        let got = gather(&mut s, &BTreeMap::from([(0, want.len())])).await;
        assert_eq!(got[&0], want, "{who}: from {start}");
        quiet(&mut s, 200, who).await;
    }

    // From now (0): nothing old.
    let mut now = open(&mut c, "h/", WatchOptions::new().with_prefix()).await;
    quiet(&mut now, 200, who).await;
    // A negative start revision is below any compaction: etcd cancels the watcher as
    // compacted, with its initial compact revision -1 when nothing was ever compacted.
    let mut neg = open(
        &mut c,
        "h/",
        WatchOptions::new().with_prefix().with_start_revision(-3),
    )
    .await;
    let r = recv(&mut neg).await;
    assert_eq!(
        (
            r.watch_id(),
            r.canceled(),
            r.compact_revision(),
            r.events().len()
        ),
        (0, true, -1, 0),
        "{who}: {r:?}"
    );
    assert_eq!(r.header().expect("header").revision(), 0, "{who}");
    // In the future: waits for its revision.
    let mut fut = open(
        &mut c,
        "h/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(r0 + 8),
    )
    .await;
    put(&mut c, "h/x", "1").await;
    put(&mut c, "h/y", "1").await;
    quiet(&mut fut, 300, who).await;
    put(&mut c, "h/z", "1").await;
    let x = put_ev("h/x", "1", r0 + 6, r0 + 6, 1);
    let y = put_ev("h/y", "1", r0 + 7, r0 + 7, 1);
    let z = put_ev("h/z", "1", r0 + 8, r0 + 8, 1);
    let one = BTreeMap::from([(0, 3)]);
    assert_eq!(
        gather(&mut now, &one).await[&0],
        vec![x, y, z.clone()],
        "{who}"
    );
    quiet(&mut neg, 200, who).await;
    assert_eq!(
        gather(&mut fut, &BTreeMap::from([(0, 1)])).await[&0],
        vec![z],
        "{who}"
    );
}
both!(start_revision_past_now_future, history);

/// prev_kv on updates and deletes; NOPUT and NODELETE filters.
async fn prev_kv_and_filters(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    put(&mut c, "p/k", "1").await;
    let mut s = open(&mut c, "p/k", WatchOptions::new().with_prev_key()).await;
    s.watch(
        "p/",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_filters([WatchFilterType::NoPut]),
        ),
    )
    .await
    .expect("watch");
    created(&mut s, 1).await;
    s.watch(
        "p/",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_filters([WatchFilterType::NoDelete]),
        ),
    )
    .await
    .expect("watch");
    created(&mut s, 2).await;
    s.watch("p/k", None).await.expect("watch");
    created(&mut s, 3).await;
    // Both filters: nothing at all.
    s.watch(
        "p/",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_filters([WatchFilterType::NoPut, WatchFilterType::NoDelete]),
        ),
    )
    .await
    .expect("watch");
    created(&mut s, 4).await;

    put(&mut c, "p/k", "2").await; // r0+2
    c.delete("p/k", None).await.expect("delete"); // r0+3
    put(&mut c, "p/n", "1").await; // r0+4
    put(&mut c, "p/k", "3").await; // r0+5: a new incarnation, no prev
    let k1 = ("p/k".to_string(), "1".to_string(), r0 + 1, r0 + 1, 1, 0);
    let k2 = ("p/k".to_string(), "2".to_string(), r0 + 1, r0 + 2, 2, 0);
    let upd = put_ev("p/k", "2", r0 + 1, r0 + 2, 2);
    let del = del_ev("p/k", r0 + 3);
    let n = put_ev("p/n", "1", r0 + 4, r0 + 4, 1);
    let again = put_ev("p/k", "3", r0 + 5, r0 + 5, 1);
    let want = BTreeMap::from([
        (
            0,
            vec![
                with_prev(upd.clone(), k1),
                with_prev(del.clone(), k2),
                again.clone(),
            ],
        ),
        (1, vec![del.clone()]),
        (2, vec![upd.clone(), n, again.clone()]),
        (3, vec![upd, del, again]),
        (4, vec![]),
    ]);
    let counts = want.iter().map(|(id, v)| (*id, v.len())).collect();
    assert_eq!(gather(&mut s, &counts).await, want, "{who}");
    quiet(&mut s, 300, who).await;
}
both!(prev_kv_and_filters_noput_nodelete, prev_kv_and_filters);

/// Client-chosen ids, automatic ids around them, duplicates, an empty range, cancel.
async fn ids_and_cancel(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    let mut s = c
        .watch("i/a", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .expect("watch");
    created(&mut s, 7).await;
    s.watch("i/b", None).await.expect("watch");
    created(&mut s, 0).await;
    // A duplicate id: created and canceled at once, with id -1 and etcd's reason.
    s.watch("i/c", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .expect("watch");
    let r = recv(&mut s).await;
    assert_eq!(
        (r.watch_id(), r.created(), r.canceled(), r.cancel_reason()),
        (
            -1,
            true,
            true,
            "mvcc: duplicate watch ID provided on the WatchStream"
        ),
        "{who}: {r:?}"
    );
    assert_eq!(r.header().expect("header").revision(), r0, "{who}");
    s.watch("i/c", None).await.expect("watch");
    created(&mut s, 1).await;
    s.watch("i/c", Some(WatchOptions::new().with_watch_id(2)))
        .await
        .expect("watch");
    created(&mut s, 2).await;
    // Automatic ids skip the ones in use.
    s.watch("i/c", None).await.expect("watch");
    created(&mut s, 3).await;
    // key > range_end: an empty range.
    s.watch("i/z", Some(WatchOptions::new().with_range("i/a")))
        .await
        .expect("watch");
    let r = recv(&mut s).await;
    assert_eq!(
        (r.watch_id(), r.created(), r.canceled(), r.cancel_reason()),
        (-1, true, true, "mvcc: watcher range is empty"),
        "{who}: {r:?}"
    );
    s.watch("i/a", Some(WatchOptions::new().with_watch_id(100)))
        .await
        .expect("watch");
    created(&mut s, 100).await;

    s.cancel(7).await.expect("cancel");
    let r = recv(&mut s).await;
    assert_eq!(
        (r.watch_id(), r.created(), r.canceled(), r.events().len()),
        (7, false, true, 0),
        "{who}: {r:?}"
    );
    assert_eq!(r.cancel_reason(), "", "{who}");
    // Canceling an unknown id answers nothing.
    s.cancel(12345).await.expect("cancel");
    quiet(&mut s, 500, who).await;
    // The canceled watcher hears nothing more; its twin on the same key does.
    put(&mut c, "i/a", "1").await;
    let got = gather(&mut s, &BTreeMap::from([(100, 1)])).await;
    assert_eq!(
        got[&100],
        vec![put_ev("i/a", "1", r0 + 1, r0 + 1, 1)],
        "{who}"
    );
    quiet(&mut s, 300, who).await;
    // The id of a canceled watcher can be chosen again.
    s.watch("i/b", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .expect("watch");
    created(&mut s, 7).await;
}
both!(watch_ids_duplicates_and_cancel, ids_and_cancel);

/// A start revision below the compaction: created, then canceled with compact_revision.
async fn compacted(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    for i in 0..6 {
        put(&mut c, &format!("c/{i}"), "v").await;
    }
    c.compact(r0 + 4, None).await.expect("compact");
    let mut s = c
        .watch(
            "c/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(r0 + 2),
            ),
        )
        .await
        .expect("watch");
    created(&mut s, 0).await;
    let r = recv(&mut s).await;
    assert_eq!(
        (
            r.watch_id(),
            r.created(),
            r.canceled(),
            r.compact_revision(),
            r.events().len()
        ),
        (0, false, true, r0 + 4, 0),
        "{who}: {r:?}"
    );
    // etcd sends this one with header revision 0.
    assert_eq!(r.header().expect("header").revision(), 0, "{who}");
    quiet(&mut s, 300, who).await;
    // From the compaction revision itself, and above it, history is there.
    for (start, first) in [(r0 + 4, 3), (r0 + 5, 4)] {
        let mut s = open(
            &mut c,
            "c/",
            WatchOptions::new().with_prefix().with_start_revision(start),
        )
        .await;
        let want: Vec<Ev> = (first..6)
            .map(|i| put_ev(&format!("c/{i}"), "v", r0 + 1 + i, r0 + 1 + i, 1))
            .collect();
        let got = gather(&mut s, &BTreeMap::from([(0, want.len())])).await;
        assert_eq!(got[&0], want, "{who}: from {start}");
    }
}
both!(compacted_start_revision_cancels, compacted);

/// A watcher that stopped at some revision resumes after a compaction below it: nothing
/// lost, nothing twice.
async fn resume_after_compaction(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    let mut s = open(&mut c, "rc/", WatchOptions::new().with_prefix()).await;
    for i in 0..10 {
        put(&mut c, &format!("rc/{i}"), "v").await;
    }
    let mut seen: Vec<Ev> = Vec::new();
    while seen.last().is_none_or(|e| rev_of(e) < r0 + 5) {
        let r = recv(&mut s).await;
        seen.extend(r.events().iter().map(ev));
    }
    drop(s);
    for i in 10..15 {
        put(&mut c, &format!("rc/{i}"), "v").await;
    }
    let last = rev_of(seen.last().expect("events"));
    c.compact(last, None).await.expect("compact");
    let mut s = open(
        &mut c,
        "rc/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(last + 1),
    )
    .await;
    let rest = (r0 + 15 - last) as usize;
    seen.extend(gather(&mut s, &BTreeMap::from([(0, rest)])).await[&0].clone());
    let want: Vec<Ev> = (0..15)
        .map(|i| put_ev(&format!("rc/{i}"), "v", r0 + 1 + i, r0 + 1 + i, 1))
        .collect();
    assert_eq!(seen, want, "{who}");
    quiet(&mut s, 300, who).await;
}
both!(
    resume_after_compaction_loses_nothing,
    resume_after_compaction
);

/// Many streams, each with several watchers, all read at once.
async fn many_streams(ep: String, who: &str) {
    const STREAMS: usize = 12;
    const KEYS: i64 = 30;
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let mut s = open(&mut c, "m/", WatchOptions::new().with_prefix()).await;
        s.watch("m/k03", None).await.expect("watch");
        created(&mut s, 1).await;
        s.watch("m/k00", Some(WatchOptions::new().with_range("m/k10")))
            .await
            .expect("watch");
        created(&mut s, 2).await;
        s.watch("m/k20", Some(WatchOptions::new().with_from_key()))
            .await
            .expect("watch");
        created(&mut s, 3).await;
        streams.push(s);
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let counts = BTreeMap::from([(0, 30), (1, 1), (2, 10), (3, 10)]);
                gather(&mut s, &counts).await
            })
        })
        .collect();
    for i in 0..KEYS {
        put(&mut c, &format!("m/k{i:02}"), "v").await;
    }
    let e = |i: i64| put_ev(&format!("m/k{i:02}"), "v", r0 + 1 + i, r0 + 1 + i, 1);
    let want = BTreeMap::from([
        (0, (0..30).map(e).collect::<Vec<_>>()),
        (1, vec![e(3)]),
        (2, (0..10).map(e).collect()),
        (3, (20..30).map(e).collect()),
    ]);
    for r in readers {
        assert_eq!(r.await.expect("reader"), want, "{who}");
    }
}
both!(many_streams_many_watchers, many_streams);

/// With a 1 s progress interval, an idle watcher that asked for progress hears the
/// revision it is synced to; one that did not ask hears nothing.
async fn progress_notify(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    let mut s = open(
        &mut c,
        "pn/",
        WatchOptions::new().with_prefix().with_progress_notify(),
    )
    .await;
    s.watch("pn/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    created(&mut s, 1).await;
    let r = recv(&mut s).await;
    assert_eq!(
        (r.watch_id(), r.created(), r.canceled(), r.events().len()),
        (0, false, false, 0),
        "{who}: {r:?}"
    );
    assert_eq!(r.header().expect("header").revision(), r0, "{who}");
    put(&mut c, "pn/a", "1").await;
    // The event, then (the watcher idle again) a notification at the new revision.
    let mut events = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "{who}: no progress after the put"
        );
        let r = recv(&mut s).await;
        if r.events().is_empty() {
            assert_eq!(r.watch_id(), 0, "{who}: {r:?}");
            if r.header().expect("header").revision() == r0 + 1 {
                break;
            }
            // A notification sent before the put reached the stream.
            assert_eq!(r.header().expect("header").revision(), r0, "{who}");
            continue;
        }
        events.push((r.watch_id(), r.events().iter().map(ev).collect::<Vec<_>>()));
    }
    let e = vec![put_ev("pn/a", "1", r0 + 1, r0 + 1, 1)];
    events.sort();
    assert_eq!(events, vec![(0, e.clone()), (1, e)], "{who}");
}
both!(
    progress_notify_with_short_interval,
    progress_notify,
    &["--experimental-watch-progress-notify-interval=1s"]
);

/// RequestProgress on a stream whose watchers are synced: one response with watch_id -1
/// and the current revision.
async fn request_progress(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    let mut s = open(&mut c, "rp/", WatchOptions::new().with_prefix()).await;
    put(&mut c, "rp/a", "1").await;
    let got = gather(&mut s, &BTreeMap::from([(0, 1)])).await;
    assert_eq!(
        got[&0],
        vec![put_ev("rp/a", "1", r0 + 1, r0 + 1, 1)],
        "{who}"
    );
    s.request_progress().await.expect("request progress");
    let r = recv(&mut s).await;
    assert_eq!(
        (r.watch_id(), r.created(), r.canceled(), r.events().len()),
        (-1, false, false, 0),
        "{who}: {r:?}"
    );
    assert_eq!(r.header().expect("header").revision(), r0 + 1, "{who}");
    quiet(&mut s, 300, who).await;
}
both!(
    request_progress_answers_watch_id_minus_one,
    request_progress
);

/// A revision larger than --max-request-bytes reaches a watcher that allows fragments in
/// several responses, all but the last marked `fragment`; reassembled, they are the
/// revision. A watcher that does not allow fragments gets it whole.
async fn fragments(ep: String, who: &str) {
    const BIG: usize = 600 * 1024;
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    let val = |b: u8| String::from_utf8(vec![b; BIG]).expect("ascii");
    put(&mut c, "fr/a", &val(b'a')).await;
    put(&mut c, "fr/b", &val(b'b')).await;
    let create = |start: i64, prev_kv: bool, fragment: bool| WatchCreateRequest {
        key: b"fr/".to_vec(),
        range_end: b"fr0".to_vec(),
        start_revision: start,
        prev_kv,
        fragment,
        ..Default::default()
    };
    let mut live = RawWatch::open(&ep, create(0, true, true)).await;
    assert!(live.next(WAIT).await.created, "{who}");
    let mut whole = RawWatch::open(&ep, create(0, true, false)).await;
    assert!(whole.next(WAIT).await.created, "{who}");
    // One revision of 2 × (600 KiB value + 600 KiB prev value).
    c.txn(Txn::new().and_then(vec![
        TxnOp::put("fr/a", val(b'c'), None),
        TxnOp::put("fr/b", val(b'd'), None),
    ]))
    .await
    .expect("txn");
    // History of 4 × 600 KiB, replayed in one response unless fragmented.
    let mut past = RawWatch::open(&ep, create(r0 + 1, false, true)).await;
    assert!(past.next(WAIT).await.created, "{who}");

    /// (events per response, fragment flags, every event as (key, first byte, len, mod))
    async fn read_all(
        w: &mut RawWatch,
        n: usize,
    ) -> (
        Vec<usize>,
        Vec<bool>,
        Vec<(String, u8, usize, i64, Option<u8>)>,
    ) {
        let (mut sizes, mut flags, mut evs) = (Vec::new(), Vec::new(), Vec::new());
        while evs.len() < n {
            let r = w.next(WAIT).await;
            assert!(!r.created && !r.canceled, "{r:?}");
            sizes.push(r.events.len());
            flags.push(r.fragment);
            for e in r.events {
                let kv = e.kv.expect("kv");
                evs.push((
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.value[0],
                    kv.value.len(),
                    kv.mod_revision,
                    e.prev_kv.map(|p| p.value[0]),
                ));
            }
        }
        (sizes, flags, evs)
    }
    let txn_events = vec![
        ("fr/a".to_string(), b'c', BIG, r0 + 3, Some(b'a')),
        ("fr/b".to_string(), b'd', BIG, r0 + 3, Some(b'b')),
    ];
    let (sizes, flags, evs) = read_all(&mut live, 2).await;
    assert_eq!(evs, txn_events, "{who}");
    assert_eq!((sizes, flags), (vec![1, 1], vec![true, false]), "{who}");
    let (sizes, flags, evs) = read_all(&mut whole, 2).await;
    assert_eq!(evs, txn_events, "{who}");
    assert_eq!((sizes, flags), (vec![2], vec![false]), "{who}");
    let (sizes, flags, evs) = read_all(&mut past, 4).await;
    assert_eq!(
        evs,
        vec![
            ("fr/a".to_string(), b'a', BIG, r0 + 1, None),
            ("fr/b".to_string(), b'b', BIG, r0 + 2, None),
            ("fr/a".to_string(), b'c', BIG, r0 + 3, None),
            ("fr/b".to_string(), b'd', BIG, r0 + 3, None),
        ],
        "{who}"
    );
    // etcd's limit for a response is --max-request-bytes plus gRPC's 512 KiB headroom:
    // three 600 KiB events fit under 2 MiB, four do not.
    assert_eq!((sizes, flags), (vec![3, 1], vec![true, false]), "{who}");
}
both!(fragmented_large_revisions, fragments);

// ---------------------------------------------------------------------------------------
// etch only
// ---------------------------------------------------------------------------------------

/// etch answers RequestProgress as etcd ≥ 3.5.13 does: only once every watcher on the
/// stream is synced, and not at all on a stream with no watchers. (etcd 3.5.1 answers at
/// once, with the current revision, even with no watchers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_progress_without_watchers_answers_nothing() {
    let f = start_etch(&[]);
    let mut c = client(&f.etch.endpoint()).await;
    let mut s = open(&mut c, "np/", WatchOptions::new().with_prefix()).await;
    s.cancel(0).await.expect("cancel");
    assert!(recv(&mut s).await.canceled());
    s.request_progress().await.expect("request progress");
    quiet(&mut s, 1000, "etch").await;
}

/// RequestProgress right after creating a watcher that replays a long history: the -1
/// response comes only once the watcher has caught up (etcd ≥ 3.5.13), so every event up
/// to its revision was delivered before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_progress_waits_for_catch_up() {
    const PUTS: i64 = 2000;
    const WRITERS: i64 = 4;
    let f = start_etch(&[]);
    let ep = f.etch.endpoint();
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut c = client(&ep).await;
        writers.push(tokio::spawn(async move {
            for i in (w..PUTS).step_by(WRITERS as usize) {
                put(&mut c, &format!("pc/{i:05}"), "v").await;
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let mut s = c
        .watch(
            "pc/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(r0 + 1),
            ),
        )
        .await
        .expect("watch");
    s.request_progress().await.expect("request progress");
    let mut events = 0;
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        assert!(Instant::now() < deadline, "{events} events, no progress");
        let r = recv(&mut s).await;
        if r.created() {
            continue;
        }
        if r.watch_id() == -1 {
            assert_eq!(r.header().expect("header").revision(), r0 + PUTS);
            break;
        }
        events += r.events().len() as i64;
    }
    assert_eq!(events, PUTS, "every event before the progress response");
    quiet(&mut s, 300, "etch").await;
}

/// A stream nobody reads while 5000 puts happen holds back no one, and later delivers
/// every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_catches_up() {
    const WRITERS: usize = 8;
    const PUTS: usize = 5000;
    let f = start_etch(&[]);
    let ep = f.etch.endpoint();
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    let mut slow = open(&mut c, "sl/", WatchOptions::new().with_prefix()).await;
    let mut fast = open(&mut c, "sl/", WatchOptions::new().with_prefix()).await;
    let fast_reader = tokio::spawn(async move {
        gather_within(
            &mut fast,
            &BTreeMap::from([(0, PUTS)]),
            Duration::from_secs(25),
        )
        .await
        .remove(&0)
        .expect("events")
    });
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut c = client(&ep).await;
        writers.push(tokio::spawn(async move {
            for i in (w..PUTS).step_by(WRITERS) {
                put(&mut c, &format!("sl/{i:05}"), &i.to_string()).await;
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let fast_events = fast_reader.await.expect("fast reader");
    eprintln!(
        "{PUTS} puts and the fast watcher done in {:?}",
        started.elapsed()
    );
    let check = |evs: &[Ev], what: &str| {
        assert_eq!(evs.len(), PUTS, "{what}");
        for (i, e) in evs.iter().enumerate() {
            assert_eq!(
                rev_of(e),
                r0 + 1 + i as i64,
                "{what}: event {i} out of order"
            );
            assert_eq!(e.0, 'P');
            let (k, v) = (&e.1.0, &e.1.1);
            assert_eq!(k, &format!("sl/{:05}", v.parse::<usize>().expect("value")));
        }
    };
    check(&fast_events, "fast watcher");
    let mut slow_events = Vec::with_capacity(PUTS);
    let deadline = Instant::now() + Duration::from_secs(20);
    while slow_events.len() < PUTS {
        assert!(
            Instant::now() < deadline,
            "slow watcher: {} events",
            slow_events.len()
        );
        let r = recv(&mut slow).await;
        slow_events.extend(r.events().iter().map(ev));
    }
    check(&slow_events, "slow watcher");
    quiet(&mut slow, 300, "slow watcher").await;
}

/// A watcher that saw part of the history re-watches after SIGKILL and restart from its
/// last revision + 1: every acknowledged write arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_sigkill_restart() {
    let mut f = start_etch(&[]);
    let ep = f.etch.endpoint();
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    let mut s = open(&mut c, "rs/", WatchOptions::new().with_prefix()).await;
    for i in 0..100 {
        put(&mut c, &format!("rs/{i:03}"), "v").await;
    }
    let mut seen: Vec<Ev> = Vec::new();
    while seen.last().is_none_or(|e| rev_of(e) < r0 + 50) {
        let r = recv(&mut s).await;
        seen.extend(r.events().iter().map(ev));
    }
    for i in 100..150 {
        put(&mut c, &format!("rs/{i:03}"), "v").await;
    }
    f.etch.kill();
    drop(s);
    f.etch.restart();
    let mut c = client(&ep).await;
    assert_eq!(
        current_rev(&mut c).await,
        r0 + 150,
        "acknowledged writes survive"
    );
    let last = rev_of(seen.last().expect("events"));
    let mut s = open(
        &mut c,
        "rs/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(last + 1),
    )
    .await;
    put(&mut c, "rs/150", "v").await;
    let rest = (r0 + 151 - last) as usize;
    seen.extend(gather(&mut s, &BTreeMap::from([(0, rest)])).await[&0].clone());
    let want: Vec<Ev> = (0..151)
        .map(|i| put_ev(&format!("rs/{i:03}"), "v", r0 + 1 + i, r0 + 1 + i, 1))
        .collect();
    assert_eq!(seen, want);
    quiet(&mut s, 300, "etch").await;
}
