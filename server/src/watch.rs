//! etcdserverpb.Watch.
//!
//! The hub (`watch_hub.rs`) reads every new revision once from the MVCC change feed and
//! broadcasts it in bounded batches. Each gRPC stream task matches the batches against its
//! own watchers.
//! Every watcher keeps `next_rev`, the first revision it has not been sent: an event is
//! delivered only at or above it, so nothing is sent twice; a batch starting above it (the
//! watcher started in the past, or its stream lagged behind the broadcast) makes the
//! watcher catch up from the change feed first, in bounded reads, so nothing is lost and a
//! slow watcher never holds back writes or other streams.

use std::collections::BTreeMap;
use std::sync::Arc;

use etch_engine::mvcc::{self, EventType};
use prost::Message as _;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use crate::convert::kv_out;
use crate::errors::EtcdError;
use crate::etch::{Credentials, Etch, GRPC_OVERHEAD_BYTES};
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::watch_server::Watch;
use crate::pb::mvccpb;
use crate::watch_hub::Batch;

/// Events per catch-up read.
const CATCH_UP_EVENTS: usize = 1000;
/// Responses queued per stream before its task waits for the client.
const STREAM_QUEUE: usize = 64;

#[derive(Debug, Clone)]
pub struct WatchService {
    pub etch: Arc<Etch>,
}

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if request
            .metadata()
            .get("hasleader")
            .is_some_and(|v| v.as_bytes() == b"true")
            && self.etch.node.status().leader == 0
        {
            return Err(EtcdError::NoLeader.into());
        }
        let creds = self.etch.credentials(&request);
        Ok(Response::new(serve(
            self.etch.clone(),
            request.into_inner(),
            creds,
        )))
    }
}

/// Serves one watch stream: requests from `inbound`, answers in the returned stream
/// (the gRPC service and the JSON gateway both run it).
pub fn serve<S>(
    etch: Arc<Etch>,
    inbound: S,
    creds: Credentials,
) -> ReceiverStream<Result<pb::WatchResponse, Status>>
where
    S: Stream<Item = Result<pb::WatchRequest, Status>> + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    tokio::spawn(async move {
        let mut s = StreamTask::new(etch, tx, creds);
        s.run(inbound).await;
    });
    ReceiverStream::new(rx)
}

#[derive(Debug)]
struct Watcher {
    key: Vec<u8>,
    /// In the MVCC store's convention: empty = one key, `[0]` = every key ≥ `key`.
    range_end: Vec<u8>,
    next_rev: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    /// Nothing was sent since the last progress tick.
    idle: bool,
}

impl Watcher {
    fn matches(&self, e: &mvcc::Event) -> bool {
        let k = e.kv.key.as_slice();
        let in_range = if self.range_end.is_empty() {
            k == self.key.as_slice()
        } else if self.range_end == [0] {
            k >= self.key.as_slice()
        } else {
            k >= self.key.as_slice() && k < self.range_end.as_slice()
        };
        in_range
            && !(self.no_put && e.kind == EventType::Put)
            && !(self.no_delete && e.kind == EventType::Delete)
    }

    fn event_out(&self, e: &mvcc::Event) -> mvccpb::Event {
        mvccpb::Event {
            r#type: match e.kind {
                EventType::Put => mvccpb::event::EventType::Put as i32,
                EventType::Delete => mvccpb::event::EventType::Delete as i32,
            },
            kv: Some(kv_out(e.kv.clone())),
            prev_kv: if self.prev_kv {
                e.prev_kv.clone().map(kv_out)
            } else {
                None
            },
        }
    }
}

/// Why a stream ends.
enum End {
    ClientGone,
}

struct StreamTask {
    etch: Arc<Etch>,
    out: Out,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// Every batch up to here has been matched against every watcher.
    seen_rev: i64,
    progress_requested: bool,
    /// Who opened the stream: each new watcher needs read permission on its range.
    creds: Credentials,
}

impl StreamTask {
    fn new(etch: Arc<Etch>, out: Out, creds: Credentials) -> StreamTask {
        StreamTask {
            etch,
            out,
            creds,
            watchers: BTreeMap::new(),
            next_id: 0,
            seen_rev: 0,
            progress_requested: false,
        }
    }

    async fn run<S>(&mut self, mut inbound: S)
    where
        S: Stream<Item = Result<pb::WatchRequest, Status>> + Unpin,
    {
        let mut batches = self.etch.watch_hub.subscribe();
        self.seen_rev = self.etch.watch_hub.progress();
        let interval = self.etch.cfg.watch_progress_notify_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            let r = tokio::select! {
                req = inbound.next() => match req {
                    Some(Ok(r)) => self.on_request(r).await,
                    None | Some(Err(_)) => return,
                },
                b = batches.recv() => match b {
                    Ok(b) => self.on_batch(&b).await,
                    // Lost batches show up as gaps in the next one.
                    Err(broadcast::error::RecvError::Lagged(_)) => Ok(()),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => self.on_progress_tick().await,
            };
            if r.is_err() {
                return;
            }
            if self.progress_requested && batches.is_empty() && self.all_synced() {
                self.progress_requested = false;
                if !self.watchers.is_empty() {
                    self.send(pb::WatchResponse {
                        header: Some(self.etch.header(self.seen_rev)),
                        watch_id: -1,
                        ..Default::default()
                    })
                    .await
                    .ok();
                }
            }
        }
    }

    fn all_synced(&self) -> bool {
        self.watchers.values().all(|w| w.next_rev > self.seen_rev)
    }

    async fn send(&self, r: pb::WatchResponse) -> Result<(), End> {
        self.out.send(Ok(r)).await.map_err(|_| End::ClientGone)
    }

    async fn on_request(&mut self, r: pb::WatchRequest) -> Result<(), End> {
        use pb::watch_request::RequestUnion;
        match r.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    let rev = self.etch.store.current_revision();
                    self.send(pb::WatchResponse {
                        header: Some(self.etch.header(rev)),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// etcd's check: read permission on the key and range end as its watch store takes
    /// them (an empty key is "\0"; a range end of "\0", every key above, is checked as
    /// the single key).
    async fn watch_permitted(&self, c: &pb::WatchCreateRequest) -> Result<(), EtcdError> {
        let who = self.etch.resolve(&self.creds).await?;
        let key: &[u8] = if c.key.is_empty() { &[0] } else { &c.key };
        let end: &[u8] = if c.range_end == [0] {
            &[]
        } else {
            &c.range_end
        };
        self.etch.auth.range_permitted(&who, key, end)
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Result<(), End> {
        if let Err(e) = self.watch_permitted(&c).await {
            // etcd 3.6: no watch id, and the reason in grpc-go's rendering of the status.
            let e = match e {
                EtcdError::InvalidAuthToken | EtcdError::AuthOldRevision | EtcdError::UserEmpty => {
                    e
                }
                _ => EtcdError::PermissionDenied,
            };
            return self
                .send(pb::WatchResponse {
                    header: Some(self.etch.header(self.etch.store.current_revision())),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: format!("rpc error: code = {:?} desc = {e}", e.code()),
                    ..Default::default()
                })
                .await;
        }
        let current = self.etch.store.current_revision();
        // An empty key means the smallest key; a range end of "\0" means every key above.
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let range_end = c.range_end;
        let mut reason = None;
        if !range_end.is_empty() && range_end != [0] && key >= range_end {
            reason = Some("mvcc: watcher range is empty");
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                reason = reason.or(Some("mvcc: duplicate watch ID provided on the WatchStream"));
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        if let Some(why) = reason {
            return self
                .send(pb::WatchResponse {
                    header: Some(self.etch.header(current)),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: why.to_string(),
                    ..Default::default()
                })
                .await;
        }
        if c.watch_id == 0 {
            self.next_id += 1;
        }
        let filters = &c.filters;
        let w = Watcher {
            key,
            range_end,
            // 0 is "from now". A negative start is kept: it lies below any compaction,
            // so the catch-up cancels the watcher as compacted, as etcd does.
            next_rev: if c.start_revision == 0 {
                current + 1
            } else {
                c.start_revision
            },
            prev_kv: c.prev_kv,
            no_put: filters.contains(&(pb::watch_create_request::FilterType::Noput as i32)),
            no_delete: filters.contains(&(pb::watch_create_request::FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            idle: true,
        };
        let past = w.next_rev <= self.seen_rev;
        self.watchers.insert(id, w);
        self.send(pb::WatchResponse {
            header: Some(self.etch.header(current)),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        if past {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    async fn on_batch(&mut self, b: &Batch) -> Result<(), End> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            if b.to < w.next_rev {
                continue;
            }
            if b.from > w.next_rev {
                self.catch_up(id).await?;
                continue;
            }
            let events: Vec<mvccpb::Event> = b
                .events
                .iter()
                .filter(|e| e.kv.mod_revision >= w.next_rev && w.matches(e))
                .map(|e| w.event_out(e))
                .collect();
            if let Some(w) = self.watchers.get_mut(&id) {
                w.next_rev = b.to + 1;
            }
            if !events.is_empty() {
                self.send_events(id, b.to, events).await?;
            }
        }
        self.seen_rev = self.seen_rev.max(b.to);
        Ok(())
    }

    /// Sends `id` everything from its `next_rev` up to the store's current revision,
    /// reading the change feed in bounded steps; cancels it if that history is compacted.
    async fn catch_up(&mut self, id: i64) -> Result<(), End> {
        loop {
            let Some(w) = self.watchers.get(&id) else {
                return Ok(());
            };
            let (next, key, end) = (w.next_rev, w.key.clone(), w.range_end.clone());
            let store = self.etch.store.clone();
            let read = tokio::task::spawn_blocking(move || -> Result<_, mvcc::Error> {
                let snap = store.read()?;
                let evs = snap.events(next, &key, &end, CATCH_UP_EVENTS);
                Ok((snap.revision(), snap.compact_revision(), evs))
            })
            .await;
            let (cur, compact, evs) = match read {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    tracing::error!("watch catch-up: {e}");
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!("watch catch-up task: {e}");
                    return Ok(());
                }
            };
            let evs = match evs {
                Ok(evs) => evs,
                Err(mvcc::Error::Compacted) => {
                    self.watchers.remove(&id);
                    // etcd's answer, field for field: header revision 0, and its store's
                    // initial compact revision -1 when nothing was ever compacted.
                    return self
                        .send(pb::WatchResponse {
                            header: Some(self.etch.header(0)),
                            watch_id: id,
                            canceled: true,
                            compact_revision: if compact > 0 { compact } else { -1 },
                            ..Default::default()
                        })
                        .await;
                }
                Err(e) => {
                    tracing::error!("watch catch-up: {e}");
                    return Ok(());
                }
            };
            let done = evs.len() < CATCH_UP_EVENTS;
            let w = self.watchers.get_mut(&id).expect("present");
            let upto = if done {
                cur
            } else {
                evs.last().map_or(cur, |e| e.kv.mod_revision)
            };
            let events: Vec<mvccpb::Event> = evs
                .iter()
                .filter(|e| w.matches(e))
                .map(|e| w.event_out(e))
                .collect();
            w.next_rev = w.next_rev.max(upto + 1);
            if !events.is_empty() {
                self.send_events(id, upto, events).await?;
            }
            if done {
                return Ok(());
            }
        }
    }

    async fn send_events(
        &mut self,
        id: i64,
        rev: i64,
        events: Vec<mvccpb::Event>,
    ) -> Result<(), End> {
        let fragment = match self.watchers.get_mut(&id) {
            Some(w) => {
                w.idle = false;
                w.fragment
            }
            None => return Ok(()),
        };
        let header = Some(self.etch.header(rev));
        let resp = pb::WatchResponse {
            header,
            watch_id: id,
            events,
            ..Default::default()
        };
        // etcd's limit: --max-request-bytes plus gRPC's headroom.
        let limit = self.etch.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
        if !fragment || resp.encoded_len() < limit || resp.events.len() < 2 {
            return self.send(resp).await;
        }
        // etcd's sendFragments: each response takes events while its encoded size stays
        // under the limit (and always at least one); all but the last are fragments.
        let base = pb::WatchResponse {
            header,
            watch_id: id,
            fragment: true,
            ..Default::default()
        }
        .encoded_len();
        let mut chunks: Vec<Vec<mvccpb::Event>> = vec![Vec::new()];
        let mut size = base;
        for e in resp.events {
            let len = e.encoded_len();
            // The field's one-byte tag (11), the length, the event.
            let n = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
            let last = chunks.last_mut().expect("non-empty");
            if !last.is_empty() && size + n >= limit {
                chunks.push(Vec::new());
                size = base;
            }
            size += n;
            chunks.last_mut().expect("non-empty").push(e);
        }
        let count = chunks.len();
        for (i, events) in chunks.into_iter().enumerate() {
            self.send(pb::WatchResponse {
                header,
                watch_id: id,
                events,
                fragment: i + 1 < count,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// etcd's progress notification: watchers that asked for it and were sent nothing
    /// since the last tick hear the revision they are synced to.
    async fn on_progress_tick(&mut self) -> Result<(), End> {
        let mut due = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            if w.progress_notify && w.idle && w.next_rev > self.seen_rev {
                due.push(*id);
            }
            w.idle = true;
        }
        for id in due {
            self.send(pb::WatchResponse {
                header: Some(self.etch.header(self.seen_rev)),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}
