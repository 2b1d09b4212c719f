//! Compiles `proto/concord/v1/*.proto` with protox (pure Rust, so a machine
//! with only cargo builds it: no system `protoc`), generates the prost types
//! and tonic clients and servers, and writes the encoded descriptor set that
//! the coordinator serves over gRPC reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/concord/v1/types.proto",
    "proto/concord/v1/coordinator.proto",
    "proto/concord/v1/participant.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    std::fs::write(
        out_dir.join("concord_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Small buffers per call (see `concord_proto::codec`).
        .codec_path("crate::codec::Codec")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
