//! The directory of the presence broker: domains, sites, users, user
//! options, phones and call queues, stored in sled, plus the AuthService
//! that turns credentials into tokens.
//!
//! Modules:
//! - [`store`]: the sled key-value layer (atomic, durable, serialized
//!   writes with a sequence number);
//! - [`records`]: typed record access, validation helpers, change events;
//! - [`authz`]: who may do what (roles per domain);
//! - [`search`]: the case-insensitive user search index;
//! - [`service`]: [`Directory`], the domain API independent of tonic
//!   (domains and sites), extended by `users`, `options`, `phones`,
//!   `queues` and `auth`;
//! - [`auth`]: login, welcome, password change, token issuance and the
//!   [`auth::StoreValidator`] used by every server's interceptor;
//! - [`hashing`]: the bounded pool of threads that hash passwords;
//! - [`hooks`]: extension points run inside directory transactions;
//! - [`replica`]: the replicated log (JetStream) and its applier;
//! - [`replicated`]: transaction ids of replicated writes;
//! - [`snapshot`]: snapshot files of the store (log compaction, joining,
//!   backup and restore);
//! - [`compaction`]: snapshots published to JetStream and the log purged
//!   behind them;
//! - [`grpc`]: the tonic adapters.

pub mod audit;
pub mod auth;
pub mod authz;
pub mod compaction;
pub mod grpc;
pub mod hashing;
pub mod hooks;
pub mod keyring;
mod options;
mod phones;
pub mod queues;
pub mod records;
pub mod replica;
pub mod replicated;
pub mod search;
pub mod service;
pub mod snapshot;
pub mod store;
#[cfg(test)]
mod testing;
pub mod throttle;
mod users;

pub use auth::StoreValidator;
pub use grpc::{AuthGrpc, DirectoryGrpc};
pub use hooks::DirectoryHooks;
pub use service::{Directory, DirectoryConfig, Reply};
pub use store::Store;
