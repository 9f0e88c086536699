//! `watch-latency`: event delivery latency to many watchers of one prefix.
//!
//! `--watchers` watchers of the prefix `watchlat/` are spread over `--streams` gRPC watch
//! streams (etcd's benchmark puts many watchers on one stream too) on `--conns`
//! connections. Once every watcher is created, one writer puts `--puts` times at
//! `--put-rate` puts per second. Each event's latency is its arrival time minus the
//! put's acknowledgement time (0 if it arrived before the ack), reported as the main
//! percentiles; `from_send_*` is measured from the moment the put was sent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use etcd_client::WatchOptions;
use tokio::sync::mpsc;

use super::{Args, Common, Json, Recorder, Result, Summary, value};

const PREFIX: &str = "watchlat/";

/// Arrival (revision, time) of every event one stream saw.
type Arrivals = Vec<(i64, Instant)>;

pub async fn watch_latency(c: &Common, a: &mut Args) -> Result<String> {
    let watchers: usize = a.get("watchers", 1000usize)?.max(1);
    let streams: usize = a.get("streams", 10usize)?.clamp(1, watchers);
    let conns: usize = a.get("conns", 1usize)?.max(1);
    let puts: u64 = a.get("puts", 100)?;
    let rate: f64 = a.get("put-rate", 20.0)?;
    let val_size: usize = a.get("val-size", 256)?;
    a.finish()?;
    let clients = c.connect(conns).await?;
    let deadline = Instant::now() + c.max;
    // A stream gives up when no event arrives for this long after the puts should be over.
    let idle = Duration::from_secs_f64((3.0 / rate.max(0.001)).max(10.0));

    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(streams);
    let mut tasks = Vec::new();
    for s in 0..streams {
        let n = watchers / streams + usize::from(s < watchers % streams);
        let mut wc = clients[s % clients.len()].watch_client();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let opts = || Some(WatchOptions::new().with_prefix());
            let mut stream = wc.watch(PREFIX, opts()).await?;
            for _ in 1..n {
                stream.watch(PREFIX, opts()).await?;
            }
            let mut created = 0;
            while created < n {
                match tokio::time::timeout_at(deadline.into(), stream.message()).await {
                    Ok(Ok(Some(r))) if r.created() => created += 1,
                    Ok(Ok(Some(r))) if r.canceled() => {
                        return Err(format!("watch canceled: {}", r.cancel_reason()).into());
                    }
                    Ok(Ok(Some(_))) => {}
                    Ok(Ok(None)) => return Err("watch stream ended before creation".into()),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => return Err(format!("{created} of {n} watchers created").into()),
                }
            }
            let _ = ready.send(()).await;
            let want = n * puts as usize;
            let mut got: Arrivals = Vec::with_capacity(want);
            while got.len() < want {
                let until = deadline.min(Instant::now() + idle);
                match tokio::time::timeout_at(until.into(), stream.message()).await {
                    Ok(Ok(Some(r))) => {
                        let now = Instant::now();
                        for ev in r.events() {
                            if let Some(kv) = ev.kv() {
                                got.push((kv.mod_revision(), now));
                            }
                        }
                    }
                    Ok(Ok(None)) | Err(_) => break,
                    Ok(Err(e)) => return Err(e.into()),
                }
            }
            Ok::<Arrivals, super::Error>(got)
        }));
    }
    drop(ready_tx);
    let setup_started = Instant::now();
    for _ in 0..streams {
        if ready_rx.recv().await.is_none() {
            break; // a stream failed; its error is reported below
        }
    }
    let setup_seconds = setup_started.elapsed().as_secs_f64();

    // The writer: (revision, sent, acknowledged) per put.
    let mut kv = clients[0].kv_client();
    let val = value(val_size, c.seed);
    let mut sent = HashMap::new();
    let mut put_rec = Recorder::default();
    let started = Instant::now();
    for p in 0..puts {
        let at = started + Duration::from_secs_f64(p as f64 / rate.max(0.001));
        if at >= deadline {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let t0 = Instant::now();
        match kv.put(format!("{PREFIX}key"), val.clone(), None).await {
            Ok(r) => {
                put_rec.ok(t0);
                let rev = r.header().map_or(0, |h| h.revision());
                sent.insert(rev, (t0, Instant::now()));
            }
            Err(e) => put_rec.err(e),
        }
    }

    let mut from_ack = Recorder::default();
    let mut from_send = Recorder::default();
    let mut received = 0u64;
    for t in tasks {
        match t.await? {
            Ok(got) => {
                for (rev, at) in got {
                    if let Some((t0, ack)) = sent.get(&rev) {
                        received += 1;
                        from_ack.push(at.saturating_duration_since(*ack));
                        from_send.push(at.saturating_duration_since(*t0));
                    }
                }
            }
            Err(e) => from_ack.err(e),
        }
    }
    let expected = watchers as u64 * sent.len() as u64;
    let missed = expected.saturating_sub(received);
    from_ack.errors += missed + put_rec.errors;
    if from_ack.first_error.is_none() {
        from_ack.first_error = put_rec.first_error.clone();
    }
    let elapsed = started.elapsed();
    let send = Summary::of(from_send, elapsed);
    let put = Summary::of(put_rec, elapsed);
    let sum = Summary::of(from_ack, elapsed);

    let mut j = Json::new();
    j.str("workload", "watch-latency");
    j.num("watchers", watchers as f64);
    j.num("streams", streams as f64);
    j.num("puts", sent.len() as f64);
    j.num("put_rate", rate);
    j.num("setup_seconds", setup_seconds);
    j.num("events_expected", expected as f64);
    j.num("events_received", received as f64);
    j.num("events_missed", missed as f64);
    j.num("from_send_p50_ms", send.p50_ms);
    j.num("from_send_p99_ms", send.p99_ms);
    j.num("put_p50_ms", put.p50_ms);
    sum.write(&mut j);
    Ok(j.finish())
}
