//! The protobuf codec of every Concord client and server: prost's, with
//! small per-call buffers. tonic gives each call an 8 KiB buffer to encode
//! into and another to decode from, and keeps them while the call is in
//! flight; Concord's messages are a few hundred bytes, and a transaction in
//! flight holds several calls (the client's, one per branch), so those
//! buffers were most of the memory an in-flight transaction cost
//! (docs/performance.md). A larger message grows its buffer as needed.
//!
//! Bytes that do not decode as the expected message are the sender's fault:
//! the decoder answers INVALID_ARGUMENT with prost's reason, where tonic's
//! stock decoder says INTERNAL, which Concord keeps for its own faults.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf};
use tonic_prost::ProstEncoder;

/// Bytes reserved per call for encoding or decoding.
const BUFFER_BYTES: usize = 1024;

/// Encoded bytes past which a streaming encoder yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

/// prost encoding with `BUFFER_BYTES` buffers; named by the generated
/// code (`codec_path` in `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(PhantomData)
    }
}

/// prost decoding with `BUFFER_BYTES` buffers; a message that does not
/// parse is INVALID_ARGUMENT.
#[derive(Debug, Clone, Copy)]
pub struct Decoder<U>(PhantomData<U>);

impl<U: prost::Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|error| {
            // On a server this is the client's request; on a client (a
            // response that does not parse) the peer is not a Concord
            // service of this version, and the message says so too.
            Status::invalid_argument(format!(
                "failed to decode Protobuf message: {error} (the bytes are not a valid {})",
                std::any::type_name::<U>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("message")
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}
