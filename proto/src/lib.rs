//! Concord's gRPC contract, package `concord.v1`, generated from the protos in
//! `proto/concord/v1/` at build time (protox + tonic-prost-build, no system
//! `protoc`). The `.proto` comments are the API documentation.
//!
//! - [`v1::coordinator_client`] / [`v1::coordinator_server`]: the Coordinator
//!   service that clients and participants call.
//! - [`v1::participant_client`] / [`v1::participant_server`]: the Participant
//!   service that participant services implement.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, served by gRPC
//!   reflection.
//! - [`codec`]: the protobuf codec every generated client and server uses.

pub mod codec;

/// Generated code for `concord.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("concord.v1");
}

/// The encoded `FileDescriptorSet` of every Concord proto, for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/concord_descriptor.bin"));
