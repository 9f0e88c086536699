//! A raw gRPC client for what etcd-client 0.21 does not expose: the `fragment` flag of
//! watch responses, the Auth service's AuthStatus, and etcd 3.7's RangeStream. The messages are written here by
//! hand with etcd's field numbers (only the fields the tests read).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub version: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// 0 PUT, 1 DELETE.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
    #[prost(message, optional, tag = "3")]
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchCreateRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub start_revision: i64,
    #[prost(bool, tag = "4")]
    pub progress_notify: bool,
    #[prost(int32, repeated, tag = "5")]
    pub filters: Vec<i32>,
    #[prost(bool, tag = "6")]
    pub prev_kv: bool,
    #[prost(int64, tag = "7")]
    pub watch_id: i64,
    #[prost(bool, tag = "8")]
    pub fragment: bool,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RequestUnion {
    #[prost(message, tag = "1")]
    Create(WatchCreateRequest),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchRequest {
    #[prost(oneof = "RequestUnion", tags = "1")]
    pub request_union: Option<RequestUnion>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub watch_id: i64,
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    #[prost(int64, tag = "5")]
    pub compact_revision: i64,
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    #[prost(bool, tag = "7")]
    pub fragment: bool,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthStatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthStatusResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(bool, tag = "2")]
    pub enabled: bool,
    #[prost(uint64, tag = "3")]
    pub auth_revision: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseKeepAliveRequest {
    #[prost(int64, tag = "1")]
    pub id: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseKeepAliveResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub id: i64,
    #[prost(int64, tag = "3")]
    pub ttl: i64,
}

/// Large enough for any response the tests provoke.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

async fn grpc(endpoint: &str) -> tonic::client::Grpc<Channel> {
    let ch = Channel::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect()
        .await
        .expect("connecting");
    tonic::client::Grpc::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// One unary call to `path` ("/etcdserverpb.Service/Method").
pub async fn unary<Req, Resp>(
    endpoint: &str,
    path: &'static str,
    req: Req,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut g = grpc(endpoint).await;
    g.ready().await.expect("channel ready");
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    g.unary(
        tonic::Request::new(req),
        PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Opens a bidirectional stream at `path`, sends `req` and returns the first response.
pub async fn stream_once<Req, Resp>(endpoint: &str, path: &'static str, req: Req) -> Resp
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut g = grpc(endpoint).await;
    g.ready().await.expect("channel ready");
    let (tx, reqs) = mpsc::channel(1);
    tx.send(req).await.expect("queueing the request");
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let mut rx = g
        .streaming(
            tonic::Request::new(ReceiverStream::new(reqs)),
            PathAndQuery::from_static(path),
            codec,
        )
        .await
        .expect("opening the stream")
        .into_inner();
    let r = tokio::time::timeout(Duration::from_secs(20), rx.message())
        .await
        .expect("a response within 20 s")
        .expect("a response")
        .expect("a message before the end of the stream");
    drop(tx);
    r
}

/// A Watch stream speaking the raw messages.
#[derive(Debug)]
pub struct RawWatch {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
}

impl RawWatch {
    /// Opens a stream with its first watcher: etcd sends the stream's headers only with
    /// its first response, so the call would not return before a request.
    pub async fn open(endpoint: &str, first: WatchCreateRequest) -> RawWatch {
        let mut g = grpc(endpoint).await;
        g.ready().await.expect("channel ready");
        let (tx, reqs) = mpsc::channel(16);
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::Create(first)),
        })
        .await
        .expect("queueing the first request");
        let codec = tonic_prost::ProstCodec::<WatchRequest, WatchResponse>::default();
        let rx = g
            .streaming(
                tonic::Request::new(ReceiverStream::new(reqs)),
                PathAndQuery::from_static("/etcdserverpb.Watch/Watch"),
                codec,
            )
            .await
            .expect("opening a watch stream")
            .into_inner();
        RawWatch { tx, rx }
    }

    pub async fn create(&mut self, c: WatchCreateRequest) {
        self.tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::Create(c)),
            })
            .await
            .expect("sending a watch request");
    }

    /// The next response; panics after `timeout` or when the stream ends.
    pub async fn next(&mut self, timeout: Duration) -> WatchResponse {
        match tokio::time::timeout(timeout, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => panic!("watch stream ended"),
            Ok(Err(e)) => panic!("watch stream failed: {e}"),
            Err(_) => panic!("no watch response within {timeout:?}"),
        }
    }
}

/// A server-streaming call: sends `req` to `path` and collects every response (or the
/// error that ends the stream).
pub async fn server_stream<Req, Resp>(
    endpoint: &str,
    path: &'static str,
    req: Req,
) -> Result<Vec<Resp>, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut g = grpc(endpoint).await;
    g.ready().await.expect("channel ready");
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let mut rx = g
        .server_streaming(
            tonic::Request::new(req),
            PathAndQuery::from_static(path),
            codec,
        )
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(20), rx.message())
        .await
        .expect("a chunk within 20 s")?
    {
        out.push(m);
    }
    Ok(out)
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub limit: i64,
    #[prost(int64, tag = "4")]
    pub revision: i64,
    #[prost(int32, tag = "5")]
    pub sort_order: i32,
    #[prost(int32, tag = "6")]
    pub sort_target: i32,
    #[prost(bool, tag = "9")]
    pub count_only: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
    #[prost(bool, tag = "3")]
    pub more: bool,
    #[prost(int64, tag = "4")]
    pub count: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeStreamResponse {
    #[prost(message, optional, tag = "1")]
    pub range_response: Option<RangeResponse>,
}
