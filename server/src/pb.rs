//! Types and services generated from server/proto (etcd's wire facts, written by us).

#![allow(clippy::all, dead_code, missing_debug_implementations, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod leasepb {
    tonic::include_proto!("leasepb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod etcdwalpb {
    tonic::include_proto!("etcdwalpb");
}

pub mod etchpb {
    tonic::include_proto!("etchpb");
}

pub mod etchpeerpb {
    tonic::include_proto!("etchpeerpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
