//! Conversions between proto enums and `presence-core` domain types.

use crate::v1;
use presence_core::{ApiError, ApiResult, Scope, UserKind};

/// Returns the core scope of a proto scope number, or InvalidArgument.
pub fn scope_from_proto(v: i32) -> ApiResult<Scope> {
    match v1::Scope::try_from(v) {
        Ok(v1::Scope::SimpleUser) => Ok(Scope::SimpleUser),
        Ok(v1::Scope::BasicUser) => Ok(Scope::BasicUser),
        Ok(v1::Scope::CallCenterAgent) => Ok(Scope::CallCenterAgent),
        Ok(v1::Scope::CallCenterSupervisor) => Ok(Scope::CallCenterSupervisor),
        Ok(v1::Scope::SiteManager) => Ok(Scope::SiteManager),
        Ok(v1::Scope::OfficeManager) => Ok(Scope::OfficeManager),
        Ok(v1::Scope::Unspecified) | Err(_) => {
            Err(ApiError::invalid(format!("invalid scope {v}: must be set")))
        }
    }
}

/// Returns the proto scope of a core scope.
pub fn scope_to_proto(s: Scope) -> v1::Scope {
    match s {
        Scope::SimpleUser => v1::Scope::SimpleUser,
        Scope::BasicUser => v1::Scope::BasicUser,
        Scope::CallCenterAgent => v1::Scope::CallCenterAgent,
        Scope::CallCenterSupervisor => v1::Scope::CallCenterSupervisor,
        Scope::SiteManager => v1::Scope::SiteManager,
        Scope::OfficeManager => v1::Scope::OfficeManager,
    }
}

/// Returns the core kind of a proto kind number, or InvalidArgument.
pub fn kind_from_proto(v: i32) -> ApiResult<UserKind> {
    match v1::UserKind::try_from(v) {
        Ok(v1::UserKind::Person) => Ok(UserKind::Person),
        Ok(v1::UserKind::ConferenceBridge) => Ok(UserKind::ConferenceBridge),
        Ok(v1::UserKind::AutoAttendant) => Ok(UserKind::AutoAttendant),
        Ok(v1::UserKind::CallQueue) => Ok(UserKind::CallQueue),
        Ok(v1::UserKind::Unspecified) | Err(_) => Err(ApiError::invalid(format!(
            "invalid user kind {v}: must be set"
        ))),
    }
}

/// Returns the proto kind of a core kind.
pub fn kind_to_proto(k: UserKind) -> v1::UserKind {
    match k {
        UserKind::Person => v1::UserKind::Person,
        UserKind::ConferenceBridge => v1::UserKind::ConferenceBridge,
        UserKind::AutoAttendant => v1::UserKind::AutoAttendant,
        UserKind::CallQueue => v1::UserKind::CallQueue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_scope_round_trip() {
        for s in Scope::ALL {
            assert_eq!(scope_from_proto(scope_to_proto(s) as i32), Ok(s));
        }
        assert!(scope_from_proto(0).is_err());
        assert!(scope_from_proto(99).is_err());
    }

    #[test]
    fn test_kind_round_trip() {
        for k in [
            UserKind::Person,
            UserKind::ConferenceBridge,
            UserKind::AutoAttendant,
            UserKind::CallQueue,
        ] {
            assert_eq!(kind_from_proto(kind_to_proto(k) as i32), Ok(k));
        }
        assert!(kind_from_proto(0).is_err());
    }
}
