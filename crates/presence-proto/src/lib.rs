//! Generated gRPC types of the presence v1 API.
//!
//! Modules:
//! - [`v1`]: messages, service clients and servers generated from
//!   `proto/presence/v1/*.proto` (protox + tonic-prost-build, no protoc);
//! - [`json`]: serde helpers that render enum fields by name;
//! - [`convert`]: conversions between proto enums and `presence-core` types;
//! - [`status`]: the one mapping from [`presence_core::ApiError`] to
//!   [`tonic::Status`] (and back, for clients);
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors served by reflection.

pub mod codec;
pub mod convert;
pub mod json;
pub mod status;

/// Generated code of the `presence.v1` package.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("presence.v1");
}

/// The encoded `FileDescriptorSet` of every presence v1 proto, for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/presence_descriptor.bin"));
