//! The policy service of the presence broker: who may see whose presence
//! and pick up whose calls.
//!
//! Modules:
//! - [`rules`]: the access rules (ARCHITECTURE.md §5) as pure functions;
//! - [`records`]: policy records in the shared directory store, their
//!   defaults, and the per-domain policy epoch with its `AclEvent`;
//! - [`service`]: [`Policy`], the domain API independent of tonic
//!   (settings, grants, monitored lines, domain switches, checks,
//!   explanations, watcher and monitorable lists);
//! - [`hooks`]: cascades run inside directory transactions (user, site
//!   and domain deletion; scope, site and queue changes);
//! - [`acl`]: [`AclView`], the cached decisions fanout nodes use;
//! - [`remote`]: policy checks over the bus (responder and client);
//! - [`grpc`]: the tonic adapter.

pub mod acl;
pub mod grpc;
pub mod hooks;
pub mod records;
pub mod remote;
pub mod rules;
pub mod service;

pub use acl::{AclView, CachedDecision};
pub use grpc::PolicyGrpc;
pub use service::{Policy, PolicyConfig, Question};
