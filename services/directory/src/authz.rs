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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use presence_auth::DomainSet;

    fn id(s: &str) -> UserId {
        ok(UserId::parse(s))
    }

    /// One role of each kind (and both site-manager shapes).
    fn roles() -> Vec<(&'static str, Role)> {
        vec![
            ("admin", Role::Admin),
            ("reader", Role::Reader),
            (
                "sm",
                Role::SiteManager {
                    user: id("2000"),
                    site: Some(ok(SiteId::parse("hq"))),
                },
            ),
            (
                "sm-nosite",
                Role::SiteManager {
                    user: id("2001"),
                    site: None,
                },
            ),
            (
                "basic",
                Role::Member {
                    user: id("1001"),
                    scope: Scope::BasicUser,
                },
            ),
            (
                "simple",
                Role::Member {
                    user: id("1002"),
                    scope: Scope::SimpleUser,
                },
            ),
            (
                "phone",
                Role::Phone {
                    user: id("1001"),
                    mac: "0004f2aabbcc".into(),
                },
            ),
            ("outsider", Role::Outsider),
        ]
    }

    /// Each question for each role, as one row per question: the roles
    /// (in [`roles`] order) that are answered yes.
    #[test]
    fn test_every_question_for_every_role() {
        use Scope::*;
        type Q = Box<dyn Fn(&Role) -> bool>;
        let questions: Vec<(&str, Q, &[&str])> = vec![
            (
                "browse",
                Box::new(|r| r.can_browse()),
                &["admin", "reader", "sm", "sm-nosite", "basic", "simple"],
            ),
            (
                "browse (require)",
                Box::new(|r| r.require_browse().is_ok()),
                &["admin", "reader", "sm", "sm-nosite", "basic", "simple"],
            ),
            (
                "admin",
                Box::new(|r| r.require_admin("x").is_ok()),
                &["admin"],
            ),
            (
                "manage hq basic",
                Box::new(|r| r.manages("hq", BasicUser)),
                &["admin", "sm"],
            ),
            (
                "manage hq site manager",
                Box::new(|r| r.manages("hq", SiteManager)),
                &["admin", "sm"],
            ),
            (
                "manage hq office manager",
                Box::new(|r| r.manages("hq", OfficeManager)),
                &["admin"],
            ),
            (
                "manage branch basic",
                Box::new(|r| r.manages("branch", BasicUser)),
                &["admin"],
            ),
            (
                "manage no site",
                Box::new(|r| r.manages("", BasicUser)),
                &["admin"],
            ),
            (
                "manage (require)",
                Box::new(|r| r.require_manage("hq", BasicUser, "x").is_ok()),
                &["admin", "sm"],
            ),
            (
                "self 1001",
                Box::new(|r| r.is_self_manager("1001")),
                &["basic"],
            ),
            (
                "self 1002 (no manage-self)",
                Box::new(|r| r.is_self_manager("1002")),
                &[],
            ),
            (
                "self 2000",
                Box::new(|r| r.is_self_manager("2000")),
                &["sm"],
            ),
            (
                "read 1001 of hq",
                Box::new(|r| r.reads_user("1001", "hq", BasicUser)),
                &["admin", "reader", "sm", "basic", "phone"],
            ),
            (
                "read 1003 of branch",
                Box::new(|r| r.reads_user("1003", "branch", BasicUser)),
                &["admin", "reader"],
            ),
            (
                "read (require)",
                Box::new(|r| r.require_read_user("1003", "hq", BasicUser).is_ok()),
                &["admin", "reader", "sm"],
            ),
            (
                "read options 1001",
                Box::new(|r| r.require_options("1001", "hq", BasicUser, false).is_ok()),
                &["admin", "reader", "sm", "basic"],
            ),
            (
                "write options 1001",
                Box::new(|r| r.require_options("1001", "hq", BasicUser, true).is_ok()),
                &["admin", "sm", "basic"],
            ),
            (
                "write options 1003 of branch",
                Box::new(|r| r.require_options("1003", "branch", BasicUser, true).is_ok()),
                &["admin"],
            ),
            (
                "has a ceiling",
                Box::new(|r| r.scope_ceiling() == Some(SiteManager)),
                &["sm", "sm-nosite"],
            ),
            (
                "no ceiling",
                Box::new(|r| r.scope_ceiling().is_none()),
                &["admin", "reader", "basic", "simple", "phone", "outsider"],
            ),
        ];
        for (q, f, yes) in &questions {
            for (name, r) in roles() {
                assert_eq!(f(&r), yes.contains(&name), "{q} for {name}");
            }
        }
        let users: Vec<(&str, Option<String>)> = roles()
            .iter()
            .map(|(n, r)| (*n, r.user().map(|u| u.to_string())))
            .collect();
        let want = |u: &str| Some(u.to_owned());
        assert_eq!(
            users,
            vec![
                ("admin", None),
                ("reader", None),
                ("sm", want("2000")),
                ("sm-nosite", want("2001")),
                ("basic", want("1001")),
                ("simple", want("1002")),
                ("phone", want("1001")),
                ("outsider", None),
            ]
        );
        let denied = Role::Outsider
            .require_admin("change the domain")
            .unwrap_err();
        assert_eq!(denied, ApiError::denied("not allowed to change the domain"));
    }

    #[test]
    fn test_principals_resolve_to_roles() {
        let acme = ok(DomainId::parse("acme"));
        let svc = |rights: &[&str]| Principal::Service {
            name: "svc".into(),
            domains: DomainSet::Some(vec![acme.clone()]),
            rights: rights.iter().map(|r| r.to_string()).collect(),
        };
        assert_eq!(
            ok(role(&svc(&[rights::DIRECTORY_WRITE]), &acme)),
            Role::Admin
        );
        assert_eq!(ok(role(&svc(&[rights::ALL]), &acme)), Role::Admin);
        assert_eq!(
            ok(role(&svc(&[rights::DIRECTORY_READ]), &acme)),
            Role::Reader
        );
        assert_eq!(
            ok(role(
                &svc(&[rights::DIRECTORY_READ, rights::DIRECTORY_WRITE]),
                &acme
            )),
            Role::Admin
        );
        let phone = Principal::Phone {
            domain: acme.clone(),
            user: id("1001"),
            mac: ok(presence_core::Mac::parse("00:04:f2:aa:bb:cc")),
        };
        assert!(
            matches!(ok(role(&phone, &acme)), Role::Phone { user, .. } if user.as_str() == "1001")
        );
        let member = |scope| Principal::User {
            domain: acme.clone(),
            user: id("1001"),
            scope,
            site: None,
        };
        for scope in [
            Scope::SimpleUser,
            Scope::BasicUser,
            Scope::CallCenterAgent,
            Scope::CallCenterSupervisor,
        ] {
            assert_eq!(
                ok(role(&member(scope), &acme)),
                Role::Member {
                    user: id("1001"),
                    scope
                }
            );
        }
        assert_eq!(
            ok(role(&member(Scope::SiteManager), &acme)),
            Role::SiteManager {
                user: id("1001"),
                site: None
            }
        );
    }

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
