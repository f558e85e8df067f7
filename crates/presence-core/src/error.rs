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
    /// A limit that lifts by itself was reached: `ResourceExhausted`,
    /// with a `retry-after` (seconds) the client should wait.
    #[error("{message}")]
    RetryLater {
        /// What was refused and when to retry, e.g. "too many failed
        /// logins; retry after 8 s".
        message: String,
        /// Seconds to wait before trying again (at least 1).
        retry_after_secs: u64,
    },
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

    /// Returns the gRPC code name of the error, e.g. `NOT_FOUND` (used to
    /// carry errors over the bus).
    pub fn code_name(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "INVALID_ARGUMENT",
            Self::NotFound(_) => "NOT_FOUND",
            Self::AlreadyExists(_) => "ALREADY_EXISTS",
            Self::Aborted(_) => "ABORTED",
            Self::FailedPrecondition(_) => "FAILED_PRECONDITION",
            Self::PermissionDenied(_) => "PERMISSION_DENIED",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::ResourceExhausted(_) | Self::RetryLater { .. } => "RESOURCE_EXHAUSTED",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    /// Returns the error of a code name and message (inverse of
    /// [`ApiError::code_name`]; unknown names are internal errors).
    pub fn from_code_name(code: &str, msg: String) -> Self {
        match code {
            "INVALID_ARGUMENT" => Self::InvalidArgument(msg),
            "NOT_FOUND" => Self::NotFound(msg),
            "ALREADY_EXISTS" => Self::AlreadyExists(msg),
            "ABORTED" => Self::Aborted(msg),
            "FAILED_PRECONDITION" => Self::FailedPrecondition(msg),
            "PERMISSION_DENIED" => Self::PermissionDenied(msg),
            "UNAUTHENTICATED" => Self::Unauthenticated(msg),
            "RESOURCE_EXHAUSTED" => Self::ResourceExhausted(msg),
            "UNAVAILABLE" => Self::Unavailable(msg),
            _ => Self::Internal(msg),
        }
    }

    /// Returns the message.
    pub fn message(&self) -> &str {
        match self {
            Self::InvalidArgument(m)
            | Self::NotFound(m)
            | Self::AlreadyExists(m)
            | Self::Aborted(m)
            | Self::FailedPrecondition(m)
            | Self::PermissionDenied(m)
            | Self::Unauthenticated(m)
            | Self::ResourceExhausted(m)
            | Self::Unavailable(m)
            | Self::Internal(m) => m,
            Self::RetryLater { message, .. } => message,
        }
    }

    /// Returns the `NotFound` error used both for an unknown domain and
    /// for a domain the caller may not see.
    pub fn domain_not_found(domain: &str) -> Self {
        Self::NotFound(format!("domain {domain} not found"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_code_names_round_trip() {
        for e in [
            ApiError::InvalidArgument("a".into()),
            ApiError::NotFound("b".into()),
            ApiError::AlreadyExists("c".into()),
            ApiError::Aborted("d".into()),
            ApiError::FailedPrecondition("e".into()),
            ApiError::PermissionDenied("f".into()),
            ApiError::Unauthenticated("g".into()),
            ApiError::ResourceExhausted("h".into()),
            ApiError::Unavailable("i".into()),
            ApiError::Internal("j".into()),
        ] {
            assert_eq!(
                ApiError::from_code_name(e.code_name(), e.message().to_owned()),
                e
            );
        }
        assert_eq!(
            ApiError::from_code_name("BOGUS", "x".into()),
            ApiError::Internal("x".into())
        );
    }
}
