//! Who may do what in the directory.
//!
//! A principal is first resolved to a [`Role`] in the requested domain
//! (another tenant's principal gets the same `NotFound` as an unknown
//! domain), then each operation asks one of the questions below. The
//! matrix is documented in docs/api.md and tested as a table in
//! tests/directory_authz.rs.

use presence_auth::{Principal, rights};
use presence_core::{ApiError, ApiResult, Capability, DomainId, Scope, SiteId, UserId};

/// What a principal is within one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Office manager or a service with `directory.write`.
    Admin,
    /// A service with `directory.read` only.
    Reader,
    /// A site manager (of `site`, if it has one).
    SiteManager {
        /// The manager itself.
        user: UserId,
        /// The site it manages.
        site: Option<SiteId>,
    },
    /// Any other user: acts on itself, per its scope's capabilities.
    Member {
        /// The user.
        user: UserId,
        /// Its scope.
        scope: Scope,
    },
    /// A phone, bound to its owner.
    Phone {
        /// The owner.
        user: UserId,
        /// The phone's MAC (canonical).
        mac: String,
    },
    /// A service without directory rights.
    Outsider,
}

/// Resolves the principal's role in `domain`.
pub fn role(p: &Principal, domain: &DomainId) -> ApiResult<Role> {
    p.require_domain(domain)?;
    Ok(match p {
        Principal::Service { .. } => {
            if p.has_right(domain, rights::DIRECTORY_WRITE) {
                Role::Admin
            } else if p.has_right(domain, rights::DIRECTORY_READ) {
                Role::Reader
            } else {
                Role::Outsider
            }
        }
        Principal::User {
            user, scope, site, ..
        } => match scope {
            Scope::OfficeManager => Role::Admin,
            Scope::SiteManager => Role::SiteManager {
                user: user.clone(),
                site: site.clone(),
            },
            s => Role::Member {
                user: user.clone(),
                scope: *s,
            },
        },
        Principal::Phone { user, mac, .. } => Role::Phone {
            user: user.clone(),
            mac: mac.to_string(),
        },
    })
}

fn deny(what: &str) -> ApiError {
    ApiError::denied(format!("not allowed to {what}"))
}

impl Role {
    /// Returns the user behind the role, if any.
    pub fn user(&self) -> Option<&UserId> {
        match self {
            Role::SiteManager { user, .. }
            | Role::Member { user, .. }
            | Role::Phone { user, .. } => Some(user),
            _ => None,
        }
    }

    /// Returns whether the role may read anything at all in the domain
    /// (domain record, sites, the redacted user list).
    pub fn can_browse(&self) -> bool {
        !matches!(self, Role::Outsider | Role::Phone { .. })
    }

    /// Requires [`Role::can_browse`].
    pub fn require_browse(&self) -> ApiResult<()> {
        if self.can_browse() {
            Ok(())
        } else {
            Err(deny("read this domain"))
        }
    }

    /// Requires office-manager or directory.write rights.
    pub fn require_admin(&self, what: &str) -> ApiResult<()> {
        if *self == Role::Admin {
            Ok(())
        } else {
            Err(deny(what))
        }
    }

    /// Returns whether the role manages a user of `site` with `scope`:
    /// admins always, site managers for their site's users up to their
    /// own scope.
    pub fn manages(&self, site: &str, scope: Scope) -> bool {
        match self {
            Role::Admin => true,
            Role::SiteManager { site: Some(s), .. } => {
                s.as_str() == site && scope <= Scope::SiteManager
            }
            _ => false,
        }
    }

    /// Requires [`Role::manages`].
    pub fn require_manage(&self, site: &str, scope: Scope, what: &str) -> ApiResult<()> {
        if self.manages(site, scope) {
            Ok(())
        } else {
            Err(deny(what))
        }
    }

    /// Returns whether `user` is the caller itself with the manage-self
    /// capability (site managers and admins always have it).
    pub fn is_self_manager(&self, user: &str) -> bool {
        match self {
            Role::Member { user: u, scope } => {
                u.as_str() == user && scope.has(Capability::ManageSelf)
            }
            Role::SiteManager { user: u, .. } => u.as_str() == user,
            _ => false,
        }
    }

    /// Returns whether the role may read the full record of a user of
    /// `site` with `scope` (managers, readers, and the user itself).
    pub fn reads_user(&self, user: &str, site: &str, scope: Scope) -> bool {
        matches!(self, Role::Reader)
            || self.manages(site, scope)
            || self.is_self_manager(user)
            || matches!(self, Role::Phone { user: u, .. } if u.as_str() == user)
    }

    /// Requires full read access to a user.
    pub fn require_read_user(&self, user: &str, site: &str, scope: Scope) -> ApiResult<()> {
        if self.reads_user(user, site, scope) {
            Ok(())
        } else {
            Err(deny(&format!("read user {user}")))
        }
    }

    /// Requires the right to read or edit a user's own options (self or
    /// its manager; readers may read).
    pub fn require_options(
        &self,
        user: &str,
        site: &str,
        scope: Scope,
        write: bool,
    ) -> ApiResult<()> {
        let ok = self.manages(site, scope)
            || self.is_self_manager(user)
            || (!write && *self == Role::Reader);
        if ok {
            Ok(())
        } else {
            Err(deny(&format!("access options of user {user}")))
        }
    }

    /// Returns the most a site manager may hand out; `None` for admins.
    pub fn scope_ceiling(&self) -> Option<Scope> {
        match self {
            Role::SiteManager { .. } => Some(Scope::SiteManager),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_auth::DomainSet;

    fn ok<T>(r: ApiResult<T>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn test_roles() {
        let acme = ok(DomainId::parse("acme"));
        let user = |scope| Principal::User {
            domain: acme.clone(),
            user: ok(UserId::parse("1001")),
            scope,
            site: Some(ok(SiteId::parse("hq"))),
        };
        assert_eq!(ok(role(&user(Scope::OfficeManager), &acme)), Role::Admin);
        assert!(matches!(
            ok(role(&user(Scope::SiteManager), &acme)),
            Role::SiteManager { .. }
        ));
        assert!(matches!(
            ok(role(&user(Scope::BasicUser), &acme)),
            Role::Member { .. }
        ));
        let other = ok(DomainId::parse("other"));
        assert_eq!(
            role(&user(Scope::OfficeManager), &other),
            Err(ApiError::domain_not_found("other"))
        );
        let svc = Principal::Service {
            name: "pbx".into(),
            domains: DomainSet::Some(vec![acme.clone()]),
            rights: vec![rights::PRESENCE_PUBLISH.into()],
        };
        assert_eq!(ok(role(&svc, &acme)), Role::Outsider);
    }

    #[test]
    fn test_site_manager_limits() {
        let r = Role::SiteManager {
            user: ok(UserId::parse("2000")),
            site: Some(ok(SiteId::parse("hq"))),
        };
        assert!(r.manages("hq", Scope::BasicUser));
        assert!(r.manages("hq", Scope::SiteManager));
        assert!(!r.manages("hq", Scope::OfficeManager));
        assert!(!r.manages("branch", Scope::BasicUser));
        assert!(!r.manages("", Scope::BasicUser));
    }
}
