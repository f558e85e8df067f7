//! presenced: the one server process of the presence broker.
//!
//! The binary (`src/main.rs`) only parses flags, sets up logging, traces,
//! metrics and signals, then calls into this library:
//! - [`backup`]: `presenced backup` / `presenced restore` of the whole
//!   directory;
//! - [`config`]: defaults → TOML file → `PRESENCE_*` env → flags, validated
//!   before anything binds;
//! - [`consistency`]: read-your-writes across nodes (log sequence
//!   headers);
//! - [`deployment`]: what every node over NATS must share (JetStream,
//!   recorded settings), checked before serving;
//! - [`idempotency`]: the `idempotency-key` header of retried writes;
//! - [`incoming`]: admission of connections (slots, HTTP/2 preface
//!   deadline) and the open-files limit;
//! - [`server`]: builds storage, bus and services and serves them on a
//!   listener it is given until a cancellation token fires;
//! - [`telemetry`]: logging and the optional OTLP trace exporter.

pub mod backup;
pub mod config;
pub mod consistency;
pub mod deployment;
pub mod idempotency;
pub mod incoming;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use config::{Config, Overrides};
pub use server::Server;
