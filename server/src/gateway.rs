//! etcd's JSON gateway on the client URLs: `POST /v3/kv/range` and the rest of etcd's
//! HTTP paths, each a JSON body in and a JSON answer out, run by the same service code
//! the gRPC API runs (the request is decoded into the gRPC message and handed to the
//! service; its answer is encoded back).
//!
//! The JSON is etcd's gateway's: proto3's JSON mapping with the fields' proto names,
//! 64-bit integers as strings, bytes in base64, enums by name and default values left
//! out; an error is `{"error","code","message"}` with the HTTP status grpc-gateway gives
//! its gRPC code. A streaming answer (watch, lease keep-alive, snapshot, observe) is one
//! `{"result": …}` object per line, as grpc-gateway streams them.

use std::future::Future;
use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Code, Request, Status};

use crate::auth::service::AuthService;
use crate::cluster::ClusterService;
use crate::concurrency::{ElectionService, LockService};
use crate::etch::Etch;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::maintenance::MaintenanceService;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::auth_server::Auth as _;
use crate::pb::etcdserverpb::cluster_server::Cluster as _;
use crate::pb::etcdserverpb::kv_server::Kv as _;
use crate::pb::etcdserverpb::lease_server::Lease as _;
use crate::pb::etcdserverpb::maintenance_server::Maintenance as _;
use crate::pb::v3electionpb::election_server::Election as _;
use crate::pb::v3lockpb::lock_server::Lock as _;

/// The descriptors of etcd's messages, written by build.rs.
static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/etcd_descriptors.bin"))[..])
        .expect("build.rs writes valid descriptors")
});

/// grpc-gateway's HTTP status for a gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn error(s: &Status) -> Response {
    let msg = json_string(s.message());
    let body = format!(
        "{{\"error\":{msg},\"code\":{},\"message\":{msg}}}",
        s.code() as i32
    );
    (
        http_status(s.code()),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The JSON body as the protobuf encoding of message `name`.
fn decode(name: &str, body: &[u8]) -> Result<Vec<u8>, Status> {
    let desc = POOL
        .get_message_by_name(name)
        .ok_or_else(|| Status::internal(format!("etch: no descriptor for {name}")))?;
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let msg = DynamicMessage::deserialize(desc, &mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(prost::Message::encode_to_vec(&msg))
}

/// The answer `bytes` (message `name`) as etcd's gateway writes it.
fn encode(name: &str, bytes: &[u8]) -> Result<Vec<u8>, Status> {
    let desc = POOL
        .get_message_by_name(name)
        .ok_or_else(|| Status::internal(format!("etch: no descriptor for {name}")))?;
    let msg = DynamicMessage::decode(desc, bytes)
        .map_err(|e| Status::internal(format!("etch: re-decoding {name}: {e}")))?;
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    msg.serialize_with_options(&mut ser, &opts)
        .map_err(|e| Status::internal(format!("etch: encoding {name} as JSON: {e}")))?;
    Ok(out)
}

/// One unary call: JSON → `Req` → the service → `Resp` → JSON.
async fn unary<Req, Resp, Fut>(
    body: &[u8],
    req_name: &str,
    resp_name: &str,
    call: impl FnOnce(Req) -> Fut,
) -> Response
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let req = match decode(req_name, body).and_then(|b| {
        Req::decode(b.as_slice()).map_err(|e| Status::invalid_argument(e.to_string()))
    }) {
        Ok(r) => r,
        Err(s) => return error(&s),
    };
    match call(req).await {
        Ok(resp) => match encode(resp_name, &resp.into_inner().encode_to_vec()) {
            Ok(json) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                json,
            )
                .into_response(),
            Err(s) => error(&s),
        },
        Err(s) => error(&s),
    }
}

/// A streaming answer as grpc-gateway writes one: each message as `{"result": …}` on a
/// line of its own, an error as `{"error": {"grpc_code", "http_code", "message",
/// "http_status"}}`.
fn stream_response<Resp, S>(resp_name: &'static str, s: S) -> Response
where
    Resp: prost::Message + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    let lines = s.map(move |item| {
        let line = match item.and_then(|m| encode(resp_name, &m.encode_to_vec())) {
            Ok(json) => format!("{{\"result\":{}}}\n", String::from_utf8_lossy(&json)),
            Err(e) => {
                let http = http_status(e.code());
                format!(
                    "{{\"error\":{{\"grpc_code\":{},\"http_code\":{},\"message\":{},\"http_status\":{}}}}}\n",
                    e.code() as i32,
                    http.as_u16(),
                    json_string(e.message()),
                    json_string(http.canonical_reason().unwrap_or(""))
                )
            }
        };
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// The messages of a client stream: the body holds one JSON object per message.
fn requests<Req: prost::Message + Default>(name: &str, body: &[u8]) -> Result<Vec<Req>, Status> {
    let mut out = Vec::new();
    for v in serde_json::Deserializer::from_slice(body).into_iter::<serde_json::Value>() {
        let v = v.map_err(|e| Status::invalid_argument(e.to_string()))?;
        let bytes = decode(name, v.to_string().as_bytes())?;
        out.push(
            Req::decode(bytes.as_slice()).map_err(|e| Status::invalid_argument(e.to_string()))?,
        );
    }
    Ok(out)
}

/// `/v3/watch`: the watches the body creates, their events streamed until the client
/// goes away (the end of the body ends no watch, as with etcd).
async fn watch(
    State(etch): State<Arc<Etch>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let reqs = match requests::<pb::WatchRequest>("etcdserverpb.WatchRequest", &body) {
        Ok(r) => r,
        Err(s) => return error(&s),
    };
    let inbound = tokio_stream::iter(reqs.into_iter().map(Ok)).chain(tokio_stream::pending());
    stream_response("etcdserverpb.WatchResponse", {
        let creds = etch.credentials(&with_auth((), &headers));
        crate::watch::serve(etch, Box::pin(inbound), creds)
    })
}

/// `/v3/lease/keepalive`: one answer per request in the body.
async fn keep_alive(State(etch): State<Arc<Etch>>, body: Bytes) -> Response {
    let reqs =
        match requests::<pb::LeaseKeepAliveRequest>("etcdserverpb.LeaseKeepAliveRequest", &body) {
            Ok(r) => r,
            Err(s) => return error(&s),
        };
    let inbound = tokio_stream::iter(reqs.into_iter().map(Ok));
    stream_response(
        "etcdserverpb.LeaseKeepAliveResponse",
        crate::lease::keep_alive(etch, Box::pin(inbound)),
    )
}

async fn snapshot(
    State(etch): State<Arc<Etch>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let req = match decode("etcdserverpb.SnapshotRequest", &body).and_then(|b| {
        pb::SnapshotRequest::decode(b.as_slice())
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }) {
        Ok(r) => r,
        Err(s) => return error(&s),
    };
    match (MaintenanceService { etch })
        .snapshot(with_auth(req, &headers))
        .await
    {
        Ok(s) => stream_response("etcdserverpb.SnapshotResponse", s.into_inner()),
        Err(s) => error(&s),
    }
}

async fn observe(
    State(etch): State<Arc<Etch>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let req = match decode("v3electionpb.LeaderRequest", &body).and_then(|b| {
        crate::pb::v3electionpb::LeaderRequest::decode(b.as_slice())
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }) {
        Ok(r) => r,
        Err(s) => return error(&s),
    };
    match (ElectionService { etch })
        .observe(with_auth(req, &headers))
        .await
    {
        Ok(s) => stream_response("v3electionpb.LeaderResponse", s.into_inner()),
        Err(s) => error(&s),
    }
}

/// A gRPC request carrying the HTTP request's `Authorization` header as the
/// `authorization` metadata, where grpc-gateway puts it (the token etcd reads).
fn with_auth<T>(msg: T, headers: &axum::http::HeaderMap) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(v) = headers.get(header::AUTHORIZATION)
        && let Ok(v) = tonic::metadata::MetadataValue::try_from(v.as_bytes())
    {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// Routes `POST $path` to `$service.$method`, with etcd's message names.
macro_rules! unary_route {
    ($router:expr, $path:literal, $service:ident, $method:ident, $req:literal, $resp:literal) => {
        $router.route(
            $path,
            post(|State(etch): State<Arc<Etch>>, headers: axum::http::HeaderMap, body: Bytes| async move {
                let s = $service { etch };
                unary(&body, $req, $resp, |r| async move {
                    s.$method(with_auth(r, &headers)).await
                })
                .await
            }),
        )
    };
}

pub fn router(etch: Arc<Etch>) -> Router {
    let r = Router::new();
    let r = unary_route!(
        r,
        "/v3/kv/range",
        KvService,
        range,
        "etcdserverpb.RangeRequest",
        "etcdserverpb.RangeResponse"
    );
    let r = unary_route!(
        r,
        "/v3/kv/put",
        KvService,
        put,
        "etcdserverpb.PutRequest",
        "etcdserverpb.PutResponse"
    );
    let r = unary_route!(
        r,
        "/v3/kv/deleterange",
        KvService,
        delete_range,
        "etcdserverpb.DeleteRangeRequest",
        "etcdserverpb.DeleteRangeResponse"
    );
    let r = unary_route!(
        r,
        "/v3/kv/txn",
        KvService,
        txn,
        "etcdserverpb.TxnRequest",
        "etcdserverpb.TxnResponse"
    );
    let r = unary_route!(
        r,
        "/v3/kv/compaction",
        KvService,
        compact,
        "etcdserverpb.CompactionRequest",
        "etcdserverpb.CompactionResponse"
    );
    let r = unary_route!(
        r,
        "/v3/lease/grant",
        LeaseService,
        lease_grant,
        "etcdserverpb.LeaseGrantRequest",
        "etcdserverpb.LeaseGrantResponse"
    );
    let r = unary_route!(
        r,
        "/v3/lease/revoke",
        LeaseService,
        lease_revoke,
        "etcdserverpb.LeaseRevokeRequest",
        "etcdserverpb.LeaseRevokeResponse"
    );
    let r = unary_route!(
        r,
        "/v3/kv/lease/revoke",
        LeaseService,
        lease_revoke,
        "etcdserverpb.LeaseRevokeRequest",
        "etcdserverpb.LeaseRevokeResponse"
    );
    let r = unary_route!(
        r,
        "/v3/lease/timetolive",
        LeaseService,
        lease_time_to_live,
        "etcdserverpb.LeaseTimeToLiveRequest",
        "etcdserverpb.LeaseTimeToLiveResponse"
    );
    let r = unary_route!(
        r,
        "/v3/kv/lease/timetolive",
        LeaseService,
        lease_time_to_live,
        "etcdserverpb.LeaseTimeToLiveRequest",
        "etcdserverpb.LeaseTimeToLiveResponse"
    );
    let r = unary_route!(
        r,
        "/v3/lease/leases",
        LeaseService,
        lease_leases,
        "etcdserverpb.LeaseLeasesRequest",
        "etcdserverpb.LeaseLeasesResponse"
    );
    let r = unary_route!(
        r,
        "/v3/kv/lease/leases",
        LeaseService,
        lease_leases,
        "etcdserverpb.LeaseLeasesRequest",
        "etcdserverpb.LeaseLeasesResponse"
    );
    let r = unary_route!(
        r,
        "/v3/cluster/member/add",
        ClusterService,
        member_add,
        "etcdserverpb.MemberAddRequest",
        "etcdserverpb.MemberAddResponse"
    );
    let r = unary_route!(
        r,
        "/v3/cluster/member/remove",
        ClusterService,
        member_remove,
        "etcdserverpb.MemberRemoveRequest",
        "etcdserverpb.MemberRemoveResponse"
    );
    let r = unary_route!(
        r,
        "/v3/cluster/member/update",
        ClusterService,
        member_update,
        "etcdserverpb.MemberUpdateRequest",
        "etcdserverpb.MemberUpdateResponse"
    );
    let r = unary_route!(
        r,
        "/v3/cluster/member/list",
        ClusterService,
        member_list,
        "etcdserverpb.MemberListRequest",
        "etcdserverpb.MemberListResponse"
    );
    let r = unary_route!(
        r,
        "/v3/cluster/member/promote",
        ClusterService,
        member_promote,
        "etcdserverpb.MemberPromoteRequest",
        "etcdserverpb.MemberPromoteResponse"
    );
    let r = unary_route!(
        r,
        "/v3/maintenance/alarm",
        MaintenanceService,
        alarm,
        "etcdserverpb.AlarmRequest",
        "etcdserverpb.AlarmResponse"
    );
    let r = unary_route!(
        r,
        "/v3/maintenance/status",
        MaintenanceService,
        status,
        "etcdserverpb.StatusRequest",
        "etcdserverpb.StatusResponse"
    );
    let r = unary_route!(
        r,
        "/v3/maintenance/defragment",
        MaintenanceService,
        defragment,
        "etcdserverpb.DefragmentRequest",
        "etcdserverpb.DefragmentResponse"
    );
    // etcd maps Hash and HashKV both to this path; its gateway serves Hash there.
    let r = unary_route!(
        r,
        "/v3/maintenance/hash",
        MaintenanceService,
        hash,
        "etcdserverpb.HashRequest",
        "etcdserverpb.HashResponse"
    );
    let r = unary_route!(
        r,
        "/v3/maintenance/transfer-leadership",
        MaintenanceService,
        move_leader,
        "etcdserverpb.MoveLeaderRequest",
        "etcdserverpb.MoveLeaderResponse"
    );
    let r = unary_route!(
        r,
        "/v3/maintenance/downgrade",
        MaintenanceService,
        downgrade,
        "etcdserverpb.DowngradeRequest",
        "etcdserverpb.DowngradeResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/enable",
        AuthService,
        auth_enable,
        "etcdserverpb.AuthEnableRequest",
        "etcdserverpb.AuthEnableResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/disable",
        AuthService,
        auth_disable,
        "etcdserverpb.AuthDisableRequest",
        "etcdserverpb.AuthDisableResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/status",
        AuthService,
        auth_status,
        "etcdserverpb.AuthStatusRequest",
        "etcdserverpb.AuthStatusResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/authenticate",
        AuthService,
        authenticate,
        "etcdserverpb.AuthenticateRequest",
        "etcdserverpb.AuthenticateResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/user/add",
        AuthService,
        user_add,
        "etcdserverpb.AuthUserAddRequest",
        "etcdserverpb.AuthUserAddResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/user/get",
        AuthService,
        user_get,
        "etcdserverpb.AuthUserGetRequest",
        "etcdserverpb.AuthUserGetResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/user/list",
        AuthService,
        user_list,
        "etcdserverpb.AuthUserListRequest",
        "etcdserverpb.AuthUserListResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/user/delete",
        AuthService,
        user_delete,
        "etcdserverpb.AuthUserDeleteRequest",
        "etcdserverpb.AuthUserDeleteResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/user/changepw",
        AuthService,
        user_change_password,
        "etcdserverpb.AuthUserChangePasswordRequest",
        "etcdserverpb.AuthUserChangePasswordResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/user/grant",
        AuthService,
        user_grant_role,
        "etcdserverpb.AuthUserGrantRoleRequest",
        "etcdserverpb.AuthUserGrantRoleResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/user/revoke",
        AuthService,
        user_revoke_role,
        "etcdserverpb.AuthUserRevokeRoleRequest",
        "etcdserverpb.AuthUserRevokeRoleResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/role/add",
        AuthService,
        role_add,
        "etcdserverpb.AuthRoleAddRequest",
        "etcdserverpb.AuthRoleAddResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/role/get",
        AuthService,
        role_get,
        "etcdserverpb.AuthRoleGetRequest",
        "etcdserverpb.AuthRoleGetResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/role/list",
        AuthService,
        role_list,
        "etcdserverpb.AuthRoleListRequest",
        "etcdserverpb.AuthRoleListResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/role/delete",
        AuthService,
        role_delete,
        "etcdserverpb.AuthRoleDeleteRequest",
        "etcdserverpb.AuthRoleDeleteResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/role/grant",
        AuthService,
        role_grant_permission,
        "etcdserverpb.AuthRoleGrantPermissionRequest",
        "etcdserverpb.AuthRoleGrantPermissionResponse"
    );
    let r = unary_route!(
        r,
        "/v3/auth/role/revoke",
        AuthService,
        role_revoke_permission,
        "etcdserverpb.AuthRoleRevokePermissionRequest",
        "etcdserverpb.AuthRoleRevokePermissionResponse"
    );
    let r = unary_route!(
        r,
        "/v3/lock/lock",
        LockService,
        lock,
        "v3lockpb.LockRequest",
        "v3lockpb.LockResponse"
    );
    let r = unary_route!(
        r,
        "/v3/lock/unlock",
        LockService,
        unlock,
        "v3lockpb.UnlockRequest",
        "v3lockpb.UnlockResponse"
    );
    let r = unary_route!(
        r,
        "/v3/election/campaign",
        ElectionService,
        campaign,
        "v3electionpb.CampaignRequest",
        "v3electionpb.CampaignResponse"
    );
    let r = unary_route!(
        r,
        "/v3/election/proclaim",
        ElectionService,
        proclaim,
        "v3electionpb.ProclaimRequest",
        "v3electionpb.ProclaimResponse"
    );
    let r = unary_route!(
        r,
        "/v3/election/leader",
        ElectionService,
        leader,
        "v3electionpb.LeaderRequest",
        "v3electionpb.LeaderResponse"
    );
    let r = unary_route!(
        r,
        "/v3/election/resign",
        ElectionService,
        resign,
        "v3electionpb.ResignRequest",
        "v3electionpb.ResignResponse"
    );
    r.route("/v3/watch", post(watch))
        .route("/v3/lease/keepalive", post(keep_alive))
        .route("/v3/maintenance/snapshot", post(snapshot))
        .route("/v3/election/observe", post(observe))
        .with_state(etch)
}
