//! The presence service of the presence broker: phones, gateways and the
//! PBX report device events; shard actors keep each user's state and
//! publish every change; queries are filtered by the policy.
//!
//! Modules:
//! - [`convert`]: wire ↔ state-machine conversions, caller-id redaction;
//! - [`shard`]: shard actors owning per-user state, exact expiry,
//!   publishing changes on `presence.v1.out.<domain>.<user>`;
//! - [`service`]: [`Fanout`]: `Publish`, `GetPresence`, NATS ingest;
//! - [`grpc`]: the tonic adapter.
//!
//! Watch streams (per-stream coalescing mailboxes, Denied / Revoked /
//! Granted, resume) are the next part of this service.

pub mod convert;
pub mod grpc;
pub mod service;
pub mod shard;

pub use grpc::FanoutGrpc;
pub use service::{Fanout, FanoutConfig};
