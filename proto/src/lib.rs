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
//! - [`signature`]: the signature the coordinator puts on every call to a
//!   participant, and how a participant checks it (DESIGN §12).
//! - [`metadata`]: the names of the metadata calls and answers carry
//!   (the owner of a transaction, the forwarding mark, a watch's resume
//!   cursor, a reused key's transaction id).
//! - [`connect_failed`]: whether a failed call never left the caller, so
//!   that another node may be sent it (the coordinator's forwarding and the
//!   SDK's routing both ask).

pub mod codec;
pub mod metadata;
pub mod signature;

/// Generated code for `concord.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("concord.v1");
}

/// The encoded `FileDescriptorSet` of every Concord proto, for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/concord_descriptor.bin"));

/// Whether `status` comes from failing to connect (refused, unreachable,
/// no name, connect timeout): tonic sends a request only on an established
/// connection, so such a call never left this process and may be sent to
/// another node. Anything else (a reset, a deadline, a status from the
/// peer) may have arrived.
pub fn connect_failed(status: &tonic::Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        cause = error.source();
    }
    false
}
