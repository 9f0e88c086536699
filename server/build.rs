//! Generates the etcd API types and tonic services from server/proto with protox (a pure
//! Rust protobuf compiler), so building needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/etcdserverpb/rpc.proto",
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/leasepb/lease.proto",
        "proto/etchpb/internal.proto",
        "proto/etcdwalpb/wal.proto",
        "proto/v3lockpb/v3lock.proto",
        "proto/v3electionpb/v3election.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    // The descriptors, for the JSON gateway's proto3 JSON mapping.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("etcd_descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(fds)?;
    // Members call each other: the peer service gets a client too.
    let peer = protox::compile(["proto/etchpb/peer.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(peer)?;
    Ok(())
}
