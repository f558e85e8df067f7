//! Pre-encoded `WatchEvent`s: what the server side of `Watch` sends.
//!
//! A presence state reaches many streams. Encoding it once and handing
//! every stream the same bytes is what makes delivery cheap, so the
//! server's `Watch` does not yield [`v1::WatchEvent`] structs for tonic
//! to encode per stream: it yields [`Frame`]s, which reference already
//! encoded bodies (reference-counted [`Bytes`]) and are written to the
//! wire by [`FrameCodec`] with no protobuf encoding at all. On the wire
//! a frame is an ordinary `WatchEvent`; clients decode it with the
//! generated types.
//!
//! Layout: a `WatchEvent` is one field of its `event` oneof, i.e. a tag
//! byte, a length varint and the body (the field's message). A batch is
//! field 7, whose body is the `WatchBatch` message: field 1 repeated,
//! each element a whole `WatchEvent`.

use crate::v1;
use bytes::{BufMut, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

/// Field numbers of `WatchEvent.event`.
mod field {
    pub const STATE: u8 = 1;
    pub const DENIED: u8 = 2;
    pub const REVOKED: u8 = 3;
    pub const GRANTED: u8 = 4;
    pub const HEARTBEAT: u8 = 5;
    pub const SNAPSHOT_DONE: u8 = 6;
    pub const BATCH: u8 = 7;
}

/// Field number of `WatchBatch.events`.
const BATCH_EVENTS: u8 = 1;

/// The tag byte of a length-delimited field below 16.
const fn tag(field: u8) -> u8 {
    (field << 3) | 2
}

/// Bytes of `n` as a varint.
fn varint_len(n: usize) -> usize {
    prost::encoding::encoded_len_varint(n as u64)
}

/// One encoded `WatchEvent`: a tag byte, the body's length and the body,
/// which may be shared with every other stream sending the same event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBytes {
    tag: u8,
    body: Bytes,
}

impl EventBytes {
    fn of(field: u8, body: Bytes) -> Self {
        Self {
            tag: tag(field),
            body,
        }
    }

    /// A state event, from the encoding of a `PresenceState`.
    pub fn state(encoded_state: Bytes) -> Self {
        Self::of(field::STATE, encoded_state)
    }

    /// A `denied` event.
    pub fn denied(c: &v1::AccessChange) -> Self {
        Self::of(field::DENIED, c.encode_to_vec().into())
    }

    /// A `revoked` event.
    pub fn revoked(c: &v1::AccessChange) -> Self {
        Self::of(field::REVOKED, c.encode_to_vec().into())
    }

    /// A `granted` event.
    pub fn granted(c: &v1::AccessChange) -> Self {
        Self::of(field::GRANTED, c.encode_to_vec().into())
    }

    /// A heartbeat.
    pub fn heartbeat(at_ms: i64) -> Self {
        Self::of(
            field::HEARTBEAT,
            v1::Heartbeat { at_ms }.encode_to_vec().into(),
        )
    }

    /// The end of the snapshot.
    pub fn snapshot_done() -> Self {
        Self::of(field::SNAPSHOT_DONE, Bytes::new())
    }

    /// Returns whether this is a heartbeat.
    pub fn is_heartbeat(&self) -> bool {
        self.tag == tag(field::HEARTBEAT)
    }

    /// Identifies the encoded body this event shares (its kind, address
    /// and length): two events with the same identity are one encoding,
    /// e.g. one state delivered to several streams. None for an empty
    /// body.
    pub fn identity(&self) -> Option<(u8, usize, usize)> {
        (!self.body.is_empty()).then(|| (self.tag, self.body.as_ptr() as usize, self.body.len()))
    }

    /// Returns the encoded length of the whole `WatchEvent`.
    pub fn encoded_len(&self) -> usize {
        1 + varint_len(self.body.len()) + self.body.len()
    }

    /// Returns the length of this event as an element of a batch.
    fn batched_len(&self) -> usize {
        let n = self.encoded_len();
        1 + varint_len(n) + n
    }

    fn write(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.tag);
        prost::encoding::encode_varint(self.body.len() as u64, dst);
        dst.put_slice(&self.body);
    }
}

/// What one `Watch` message carries: one event, or a batch of events.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// One event.
    One(EventBytes),
    /// A `batch` event holding these events, in order.
    Batch(Vec<EventBytes>),
}

impl Frame {
    /// Returns the length of the batch body holding `events`.
    fn batch_body_len(events: &[EventBytes]) -> usize {
        events.iter().map(EventBytes::batched_len).sum()
    }

    /// Returns the encoded length of the message.
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::One(e) => e.encoded_len(),
            Frame::Batch(events) => {
                let n = Self::batch_body_len(events);
                1 + varint_len(n) + n
            }
        }
    }

    /// Writes the message's protobuf encoding to `dst`.
    pub fn write(&self, dst: &mut impl BufMut) {
        match self {
            Frame::One(e) => e.write(dst),
            Frame::Batch(events) => {
                dst.put_u8(tag(field::BATCH));
                prost::encoding::encode_varint(Self::batch_body_len(events) as u64, dst);
                for e in events {
                    dst.put_u8(tag(BATCH_EVENTS));
                    prost::encoding::encode_varint(e.encoded_len() as u64, dst);
                    e.write(dst);
                }
            }
        }
    }

    /// Returns the message's encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.write(&mut v);
        v
    }

    /// Decodes the message as a client would (tests and tools).
    pub fn to_event(&self) -> Result<v1::WatchEvent, prost::DecodeError> {
        v1::WatchEvent::decode(self.to_bytes().as_slice())
    }
}

/// Returns the length a batch holding `events` plus `next` would have on
/// the wire (to keep batches under a byte bound as they fill).
pub fn batch_len_with(events_len: usize, next: &EventBytes) -> usize {
    let n = events_len + next.batched_len();
    1 + varint_len(n) + n
}

/// Returns the contribution of `e` to a batch's body length.
pub fn batch_element_len(e: &EventBytes) -> usize {
    e.batched_len()
}

/// The codec of the server side of `Watch`: writes [`Frame`]s as they
/// are, decodes the request with prost. Buffers start small, like
/// [`crate::codec::CompactCodec`]'s.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec;

/// The encoder of [`FrameCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameEncoder;

impl Encoder for FrameEncoder {
    type Item = Frame;
    type Error = Status;

    fn encode(&mut self, item: Frame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.write(dst);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        // tonic keeps a stream's encode buffer for the stream's life at
        // the largest size it ever grew to: yielding to the transport
        // after every kilobyte keeps it near the largest single message
        // instead of everything that was ready at once (a whole
        // snapshot).
        BufferSettings::new(512, FRAME_YIELD)
    }
}

/// Bytes of frames encoded before a `Watch` stream yields them to the
/// transport.
const FRAME_YIELD: usize = 1024;

/// The decoder of [`FrameCodec`] and [`ManyCodec`] (the requests).
pub struct RequestDecoder<T>(ProstDecoder<T>);

impl<T: Message + Default + Send + 'static> Decoder for RequestDecoder<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.0.decode(src)
    }

    fn buffer_settings(&self) -> BufferSettings {
        crate::codec::buffer_settings()
    }
}

impl Codec for FrameCodec {
    type Encode = Frame;
    type Decode = v1::WatchRequest;
    type Encoder = FrameEncoder;
    type Decoder = RequestDecoder<v1::WatchRequest>;

    fn encoder(&mut self) -> FrameEncoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> RequestDecoder<v1::WatchRequest> {
        RequestDecoder(
            tonic_prost::ProstCodec::<v1::WatchEvent, v1::WatchRequest>::raw_decoder(
                crate::codec::buffer_settings(),
            ),
        )
    }
}

/// Field numbers of `KeyedEvent`.
mod keyed {
    pub const KEYS: u8 = 1;
    pub const EVENT: u8 = 2;
    pub const ENDED: u8 = 3;
}

/// Field number of `WatchManyEvent.events`.
const MANY_EVENTS: u8 = 1;

/// What a `KeyedEvent` carries.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyedBody {
    /// A `WatchEvent` (shared bytes).
    Event(EventBytes),
    /// An encoded `WatcherEnded`.
    Ended(Bytes),
}

/// One pre-encoded `KeyedEvent`: the watchers it is for and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyed {
    /// The keys of the watchers it is for (empty: the stream's heartbeat).
    pub keys: Vec<u32>,
    /// The event.
    pub body: KeyedBody,
}

impl Keyed {
    /// A `WatcherEnded` for `key`.
    pub fn ended(key: u32, code: i32, message: impl Into<String>) -> Self {
        let e = v1::WatcherEnded {
            code,
            message: message.into(),
        };
        Self {
            keys: vec![key],
            body: KeyedBody::Ended(e.encode_to_vec().into()),
        }
    }

    fn keys_len(&self) -> usize {
        self.keys.iter().map(|k| varint_len(*k as usize)).sum()
    }

    fn body_field_len(&self) -> usize {
        match &self.body {
            KeyedBody::Event(e) => e.encoded_len(),
            KeyedBody::Ended(b) => b.len(),
        }
    }

    /// The length of the `KeyedEvent` message itself.
    fn message_len(&self) -> usize {
        let keys = if self.keys.is_empty() {
            0
        } else {
            let k = self.keys_len();
            1 + varint_len(k) + k
        };
        let b = self.body_field_len();
        keys + 1 + varint_len(b) + b
    }

    /// Returns the length of this event as an element of a
    /// `WatchManyEvent`.
    pub fn element_len(&self) -> usize {
        let n = self.message_len();
        1 + varint_len(n) + n
    }

    fn write(&self, dst: &mut impl BufMut) {
        dst.put_u8(tag(MANY_EVENTS));
        prost::encoding::encode_varint(self.message_len() as u64, dst);
        if !self.keys.is_empty() {
            dst.put_u8(tag(keyed::KEYS));
            prost::encoding::encode_varint(self.keys_len() as u64, dst);
            for k in &self.keys {
                prost::encoding::encode_varint(u64::from(*k), dst);
            }
        }
        match &self.body {
            KeyedBody::Event(e) => {
                dst.put_u8(tag(keyed::EVENT));
                prost::encoding::encode_varint(e.encoded_len() as u64, dst);
                e.write(dst);
            }
            KeyedBody::Ended(b) => {
                dst.put_u8(tag(keyed::ENDED));
                prost::encoding::encode_varint(b.len() as u64, dst);
                dst.put_slice(b);
            }
        }
    }
}

/// What one `WatchMany` message carries: a `WatchManyEvent`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ManyFrame(pub Vec<Keyed>);

impl ManyFrame {
    /// Returns the encoded length of the message.
    pub fn encoded_len(&self) -> usize {
        self.0.iter().map(Keyed::element_len).sum()
    }

    /// Writes the message's protobuf encoding to `dst`.
    pub fn write(&self, dst: &mut impl BufMut) {
        for k in &self.0 {
            k.write(dst);
        }
    }

    /// Decodes the message as a client would (tests and tools).
    pub fn to_event(&self) -> Result<v1::WatchManyEvent, prost::DecodeError> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.write(&mut v);
        v1::WatchManyEvent::decode(v.as_slice())
    }
}

/// The codec of the server side of `WatchMany`: writes [`ManyFrame`]s
/// as they are, decodes the requests with prost.
#[derive(Debug, Clone, Copy, Default)]
pub struct ManyCodec;

/// The encoder of [`ManyCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ManyEncoder;

impl Encoder for ManyEncoder {
    type Item = ManyFrame;
    type Error = Status;

    fn encode(&mut self, item: ManyFrame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.write(dst);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(512, FRAME_YIELD)
    }
}

impl Codec for ManyCodec {
    type Encode = ManyFrame;
    type Decode = v1::WatchManyRequest;
    type Encoder = ManyEncoder;
    type Decoder = RequestDecoder<v1::WatchManyRequest>;

    fn encoder(&mut self) -> ManyEncoder {
        ManyEncoder
    }

    fn decoder(&mut self) -> RequestDecoder<v1::WatchManyRequest> {
        RequestDecoder(tonic_prost::ProstCodec::<
            v1::WatchManyEvent,
            v1::WatchManyRequest,
        >::raw_decoder(crate::codec::buffer_settings()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use v1::watch_event::Event as E;

    fn state(user: &str, version: u64) -> v1::PresenceState {
        v1::PresenceState {
            domain: "acme".into(),
            user: user.into(),
            version,
            message: "x".repeat(200),
            ..Default::default()
        }
    }

    fn change(t: &str) -> v1::AccessChange {
        v1::AccessChange {
            target: t.into(),
            reason: "r".into(),
        }
    }

    #[test]
    fn test_frames_decode_as_the_events_they_stand_for() {
        let cases = vec![
            (
                EventBytes::state(state("a", 7).encode_to_vec().into()),
                E::State(state("a", 7)),
            ),
            (EventBytes::denied(&change("b")), E::Denied(change("b"))),
            (EventBytes::revoked(&change("c")), E::Revoked(change("c"))),
            (EventBytes::granted(&change("d")), E::Granted(change("d"))),
            (
                EventBytes::heartbeat(42),
                E::Heartbeat(v1::Heartbeat { at_ms: 42 }),
            ),
            (
                EventBytes::snapshot_done(),
                E::SnapshotDone(v1::SnapshotDone {}),
            ),
        ];
        let mut all = Vec::new();
        let mut expected = Vec::new();
        for (bytes, event) in cases {
            let want = v1::WatchEvent { event: Some(event) };
            let f = Frame::One(bytes.clone());
            assert_eq!(f.to_bytes(), want.encode_to_vec(), "same bytes as prost");
            assert_eq!(f.encoded_len(), want.encoded_len());
            assert_eq!(f.to_event().unwrap(), want);
            all.push(bytes);
            expected.push(want);
        }
        let batch = Frame::Batch(all.clone());
        let want = v1::WatchEvent {
            event: Some(E::Batch(v1::WatchBatch { events: expected })),
        };
        assert_eq!(batch.to_bytes(), want.encode_to_vec());
        assert_eq!(batch.encoded_len(), want.encoded_len());
        // The running bound agrees with the real length.
        let mut body = 0;
        for (i, e) in all.iter().enumerate() {
            assert_eq!(
                batch_len_with(body, e),
                Frame::Batch(all[..=i].to_vec()).encoded_len()
            );
            body += batch_element_len(e);
        }
    }

    #[test]
    fn test_large_bodies_take_multi_byte_lengths() {
        let big = state("a", 1);
        let mut big = big;
        big.message = "y".repeat(70_000);
        let f = Frame::Batch(vec![EventBytes::state(big.encode_to_vec().into())]);
        let want = v1::WatchEvent {
            event: Some(E::Batch(v1::WatchBatch {
                events: vec![v1::WatchEvent {
                    event: Some(E::State(big)),
                }],
            })),
        };
        assert_eq!(f.to_bytes(), want.encode_to_vec());
    }
}
