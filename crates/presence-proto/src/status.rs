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
        ApiError::Unavailable(m) => Status::unavailable(m),
        ApiError::Internal(_) => Status::internal("internal error"),
    }
}

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
        Code::ResourceExhausted => ApiError::ResourceExhausted(m),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ApiError::Unavailable(m),
        _ => ApiError::Internal(m),
    }
}
