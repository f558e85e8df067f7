//! Domain types and rules of the presence broker. Pure: no I/O, no async.
//!
//! Modules:
//! - [`error`]: [`ApiError`], the one error type every service returns,
//!   mapped to gRPC codes in exactly one place (`presence-proto`);
//! - [`ids`]: validated newtypes for domain, site and user ids, MACs and
//!   e-mail addresses;
//! - [`presence`]: the per-user presence state machine and aggregation;
//! - [`scope`]: the six scopes, the user kinds and the capability table;
//! - [`text`]: limits and checks for free-text fields.

pub mod error;
pub mod ids;
pub mod presence;
pub mod scope;
pub mod text;

pub use error::{ApiError, ApiResult};
pub use ids::{DomainId, Email, Mac, SiteId, UserId, check_page_token};
pub use scope::{Capability, Scope, UserKind};
