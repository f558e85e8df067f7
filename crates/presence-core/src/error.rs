//! The error type shared by every service.
//!
//! Each variant corresponds to one gRPC status code; the mapping lives in
//! `presence_proto::status` and nowhere else. Messages are lowercase, have
//! no trailing punctuation and name the offending value.

/// Result alias used across the services.
pub type ApiResult<T> = Result<T, ApiError>;

/// An error with the class a client can act upon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: bad id, oversized field, bad enum.
    #[error("{0}")]
    InvalidArgument(String),
    /// The entity does not exist, or belongs to a domain the caller
    /// cannot see (the two are indistinguishable on purpose).
    #[error("{0}")]
    NotFound(String),
    /// An entity with that id (or MAC) already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request named a stale version of a record.
    #[error("{0}")]
    Aborted(String),
    /// The system is not in a state that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller is known but not allowed to do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// A configured limit was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency (storage, bus) is not available right now.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a storage failure; details go to the log, not the client.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Returns an `InvalidArgument` error.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }

    /// Returns a `NotFound` error.
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }

    /// Returns a `PermissionDenied` error.
    pub fn denied(msg: impl Into<String>) -> Self {
        Self::PermissionDenied(msg.into())
    }

    /// Returns the `NotFound` error used both for an unknown domain and
    /// for a domain the caller may not see.
    pub fn domain_not_found(domain: &str) -> Self {
        Self::NotFound(format!("domain {domain} not found"))
    }
}
