//! The protobuf codec of every generated client and server: prost with
//! small initial buffers.
//!
//! tonic's default codec gives each call an 8 KiB encode buffer (and a
//! decode buffer of the same size) for its whole life. A Watch stream is
//! long-lived and mostly idle and a presence state is a few hundred
//! bytes, so with thousands of streams per node that default dominates
//! the memory of an idle stream. The buffers start at 512 bytes and grow
//! when a message needs more.

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode/decode buffer of a call.
const BUFFER: usize = 512;
/// Bytes encoded before a streaming call yields to the transport (tonic's
/// default).
const YIELD: usize = 32 * 1024;

/// The buffer settings of every call: small initial buffers, tonic's
/// yield threshold.
pub(crate) fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER, YIELD)
}

/// [`ProstCodec`] with small initial buffers.
#[derive(Debug, Clone, Copy)]
pub struct CompactCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CompactCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for CompactCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffer_settings())
    }
}
