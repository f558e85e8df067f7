//! The one place where [`ApiError`] becomes a gRPC [`Status`].

use presence_core::ApiError;
use tonic::{Code, Status};

/// Returns the gRPC status for an API error. Internal errors are logged
/// by the caller; the client sees a generic message.
pub fn to_status(err: ApiError) -> Status {
    match err {
        ApiError::InvalidArgument(m) => Status::invalid_argument(m),
        ApiError::NotFound(m) => Status::not_found(m),
        ApiError::AlreadyExists(m) => Status::already_exists(m),
        ApiError::Aborted(m) => Status::aborted(m),
        ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
        ApiError::PermissionDenied(m) => Status::permission_denied(m),
        ApiError::Unauthenticated(m) => Status::unauthenticated(m),
        ApiError::ResourceExhausted(m) => Status::resource_exhausted(m),
        ApiError::RetryLater {
            message,
            retry_after_secs,
        } => {
            let mut md = tonic::metadata::MetadataMap::new();
            md.insert(RETRY_AFTER, retry_after_secs.max(1).into());
            Status::with_metadata(Code::ResourceExhausted, message, md)
        }
        ApiError::Unavailable(m) => Status::unavailable(m),
        ApiError::Internal(_) => Status::internal("internal error"),
    }
}

/// The metadata key of a `ResourceExhausted` status that lifts by itself:
/// seconds to wait before retrying.
pub const RETRY_AFTER: &str = "retry-after";

/// Returns the API error a client sees for a gRPC status.
pub fn from_status(s: &Status) -> ApiError {
    let m = s.message().to_owned();
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange => ApiError::InvalidArgument(m),
        Code::NotFound => ApiError::NotFound(m),
        Code::AlreadyExists => ApiError::AlreadyExists(m),
        Code::Aborted => ApiError::Aborted(m),
        Code::FailedPrecondition => ApiError::FailedPrecondition(m),
        Code::PermissionDenied => ApiError::PermissionDenied(m),
        Code::Unauthenticated => ApiError::Unauthenticated(m),
        Code::ResourceExhausted => match s
            .metadata()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        {
            Some(retry_after_secs) => ApiError::RetryLater {
                message: m,
                retry_after_secs,
            },
            None => ApiError::ResourceExhausted(m),
        },
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ApiError::Unavailable(m),
        _ => ApiError::Internal(m),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_later_carries_its_retry_after_both_ways() {
        let s = to_status(ApiError::RetryLater {
            message: "too many failed logins; retry after 8 s".into(),
            retry_after_secs: 8,
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get(RETRY_AFTER).unwrap(), "8");
        assert_eq!(
            from_status(&s),
            ApiError::RetryLater {
                message: "too many failed logins; retry after 8 s".into(),
                retry_after_secs: 8,
            }
        );
        // Never "retry after 0".
        let s = to_status(ApiError::RetryLater {
            message: "x".into(),
            retry_after_secs: 0,
        });
        assert_eq!(s.metadata().get(RETRY_AFTER).unwrap(), "1");
        // A plain limit has no retry-after.
        let s = to_status(ApiError::ResourceExhausted("full".into()));
        assert!(s.metadata().get(RETRY_AFTER).is_none());
        assert_eq!(from_status(&s), ApiError::ResourceExhausted("full".into()));
    }
}
