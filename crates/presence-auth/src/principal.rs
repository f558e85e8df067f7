//! Principals: users, phones and services.

use presence_core::{ApiError, ApiResult, DomainId, Mac, Scope, UserId};
use presence_proto::{convert::scope_to_proto, v1};

/// Named rights a service principal can hold.
pub mod rights {
    /// Every right.
    pub const ALL: &str = "*";
    /// Create, list and delete domains.
    pub const DOMAINS_ADMIN: &str = "domains.admin";
    /// Read everything in the directory of its domains.
    pub const DIRECTORY_READ: &str = "directory.read";
    /// Change everything in the directory of its domains.
    pub const DIRECTORY_WRITE: &str = "directory.write";
    /// Issue service and phone tokens for its domains.
    pub const TOKENS_ISSUE: &str = "tokens.issue";
    /// Publish device events.
    pub const PRESENCE_PUBLISH: &str = "presence.publish";
    /// Watch presence on behalf of users.
    pub const PRESENCE_WATCH: &str = "presence.watch";
    /// Read presence policy.
    pub const POLICY_READ: &str = "policy.read";
    /// Change presence policy.
    pub const POLICY_WRITE: &str = "policy.write";
    /// Add and retire token signing keys (held for every domain).
    pub const KEYS_ADMIN: &str = "keys.admin";

    /// Every named right, for validation.
    pub const KNOWN: &[&str] = &[
        ALL,
        KEYS_ADMIN,
        DOMAINS_ADMIN,
        DIRECTORY_READ,
        DIRECTORY_WRITE,
        TOKENS_ISSUE,
        PRESENCE_PUBLISH,
        PRESENCE_WATCH,
        POLICY_READ,
        POLICY_WRITE,
    ];
}

/// The domains a service principal's rights apply to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainSet {
    /// Every domain, present and future (`*`).
    All,
    /// The listed domains.
    Some(Vec<DomainId>),
}

impl DomainSet {
    /// Returns whether `d` is in the set.
    pub fn contains(&self, d: &DomainId) -> bool {
        match self {
            DomainSet::All => true,
            DomainSet::Some(v) => v.contains(d),
        }
    }

    /// Parses `["*"]` or a list of domain ids.
    pub fn parse(items: &[String]) -> ApiResult<Self> {
        if items.is_empty() {
            return Err(ApiError::invalid("a service needs at least one domain"));
        }
        if items.iter().any(|d| d == "*") {
            return Ok(DomainSet::All);
        }
        items
            .iter()
            .map(|d| DomainId::parse(d))
            .collect::<ApiResult<Vec<_>>>()
            .map(DomainSet::Some)
    }

    /// Returns the set as strings (`["*"]` for all).
    pub fn to_strings(&self) -> Vec<String> {
        match self {
            DomainSet::All => vec!["*".to_owned()],
            DomainSet::Some(v) => v.iter().map(|d| d.to_string()).collect(),
        }
    }
}

/// Who is calling an API, as established from a valid token. For users
/// the scope is the *current* one, read from the directory at each call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A logged-in user.
    User {
        /// The user's domain.
        domain: DomainId,
        /// The user's id.
        user: UserId,
        /// The user's current scope.
        scope: Scope,
        /// The user's current site, if any.
        site: Option<presence_core::SiteId>,
    },
    /// A phone, bound to its owner.
    Phone {
        /// The owner's domain.
        domain: DomainId,
        /// The owner.
        user: UserId,
        /// The phone's MAC.
        mac: Mac,
    },
    /// A service with named rights.
    Service {
        /// Service name, for audit logs.
        name: String,
        /// Domains the rights apply to.
        domains: DomainSet,
        /// Rights held.
        rights: Vec<String>,
    },
}

impl Principal {
    /// Returns whether the principal belongs to (or has rights in) `d`.
    pub fn in_domain(&self, d: &DomainId) -> bool {
        match self {
            Principal::User { domain, .. } | Principal::Phone { domain, .. } => domain == d,
            Principal::Service { domains, .. } => domains.contains(d),
        }
    }

    /// Returns whether a service principal holds `right` in `d`. Always
    /// false for users and phones.
    pub fn has_right(&self, d: &DomainId, right: &str) -> bool {
        match self {
            Principal::Service {
                domains, rights, ..
            } => domains.contains(d) && rights.iter().any(|r| r == right || r == rights::ALL),
            _ => false,
        }
    }

    /// Returns whether a service principal holds `right` for every
    /// domain (used for deployment-wide operations).
    pub fn has_global_right(&self, right: &str) -> bool {
        match self {
            Principal::Service {
                domains: DomainSet::All,
                rights,
                ..
            } => rights.iter().any(|r| r == right || r == rights::ALL),
            _ => false,
        }
    }

    /// Returns `NotFound("domain … not found")` unless the principal may
    /// see domain `d`: another tenant's principal learns nothing.
    pub fn require_domain(&self, d: &DomainId) -> ApiResult<()> {
        if self.in_domain(d) {
            Ok(())
        } else {
            Err(ApiError::domain_not_found(d.as_str()))
        }
    }

    /// Returns a short description for logs: `user acme/1001`.
    pub fn describe(&self) -> String {
        match self {
            Principal::User { domain, user, .. } => format!("user {domain}/{user}"),
            Principal::Phone { domain, mac, .. } => format!("phone {domain}/{mac}"),
            Principal::Service { name, .. } => format!("service {name}"),
        }
    }

    /// Returns the key a per-principal limit in domain `d` counts under:
    /// the domain first, then who the principal is (for services, the
    /// name and every domain it holds). Two tenants' services of the same
    /// name never share a counter, so one cannot exhaust or measure the
    /// other's.
    pub fn limit_key(&self, d: &DomainId) -> String {
        match self {
            Principal::User { domain, user, .. } => format!("{d}|user {domain}/{user}"),
            Principal::Phone { domain, mac, .. } => format!("{d}|phone {domain}/{mac}"),
            Principal::Service { name, domains, .. } => {
                let mut ds = domains.to_strings();
                ds.sort();
                format!("{d}|service {name} [{}]", ds.join(","))
            }
        }
    }

    /// Returns the proto form of the principal.
    pub fn to_proto(&self) -> v1::Principal {
        let kind = match self {
            Principal::User {
                domain,
                user,
                scope,
                ..
            } => v1::principal::Kind::User(v1::UserPrincipal {
                domain: domain.to_string(),
                user: user.to_string(),
                scope: scope_to_proto(*scope) as i32,
            }),
            Principal::Phone { domain, user, mac } => {
                v1::principal::Kind::Phone(v1::PhonePrincipal {
                    domain: domain.to_string(),
                    user: user.to_string(),
                    mac: mac.to_string(),
                })
            }
            Principal::Service {
                name,
                domains,
                rights,
                ..
            } => v1::principal::Kind::Service(v1::ServicePrincipal {
                name: name.clone(),
                domains: domains.to_strings(),
                rights: rights.clone(),
            }),
        };
        v1::Principal { kind: Some(kind) }
    }
}

/// Validates a list of service rights.
pub fn parse_rights(items: &[String]) -> ApiResult<Vec<String>> {
    if items.is_empty() {
        return Err(ApiError::invalid("a service needs at least one right"));
    }
    for r in items {
        if !rights::KNOWN.contains(&r.as_str()) {
            return Err(ApiError::invalid(format!(
                "unknown right {r:?}: expected one of {}",
                rights::KNOWN.join(", ")
            )));
        }
    }
    Ok(items.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> DomainId {
        DomainId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn test_membership_descriptions_and_proto_of_each_kind() {
        let acme = d("acme");
        let user = Principal::User {
            domain: acme.clone(),
            user: UserId::parse("1001").unwrap_or_else(|e| panic!("{e}")),
            scope: Scope::SiteManager,
            site: None,
        };
        let phone = Principal::Phone {
            domain: acme.clone(),
            user: UserId::parse("1001").unwrap_or_else(|e| panic!("{e}")),
            mac: Mac::parse("00:04:f2:aa:bb:cc").unwrap_or_else(|e| panic!("{e}")),
        };
        let some = Principal::Service {
            name: "pbx".into(),
            domains: DomainSet::Some(vec![acme.clone(), d("globex")]),
            rights: vec![rights::ALL.into()],
        };
        let all = Principal::Service {
            name: "ops".into(),
            domains: DomainSet::All,
            rights: vec![rights::DOMAINS_ADMIN.into()],
        };
        for p in [&user, &phone, &some, &all] {
            assert!(p.in_domain(&acme), "{p:?}");
        }
        for p in [&user, &phone] {
            assert!(!p.in_domain(&d("globex")), "{p:?}");
        }
        assert!(some.in_domain(&d("globex")) && !some.in_domain(&d("initech")));
        assert!(all.in_domain(&d("initech")));
        // Global rights: only services of every domain, by name or `*`.
        assert!(all.has_global_right(rights::DOMAINS_ADMIN));
        assert!(!all.has_global_right(rights::KEYS_ADMIN));
        assert!(
            !some.has_global_right(rights::DOMAINS_ADMIN),
            "named domains only"
        );
        assert!(!user.has_global_right(rights::DOMAINS_ADMIN));
        let star = Principal::Service {
            name: "root".into(),
            domains: DomainSet::All,
            rights: vec![rights::ALL.into()],
        };
        assert!(star.has_global_right(rights::KEYS_ADMIN));
        assert_eq!(
            [&user, &phone, &some].map(|p| p.describe()),
            ["user acme/1001", "phone acme/0004f2aabbcc", "service pbx"]
        );
        use v1::principal::Kind as K;
        match user.to_proto().kind {
            Some(K::User(u)) => assert_eq!(
                (u.domain.as_str(), u.user.as_str(), u.scope),
                ("acme", "1001", v1::Scope::SiteManager as i32)
            ),
            other => panic!("{other:?}"),
        }
        match phone.to_proto().kind {
            Some(K::Phone(p)) => assert_eq!(
                (p.domain.as_str(), p.user.as_str(), p.mac.as_str()),
                ("acme", "1001", "0004f2aabbcc")
            ),
            other => panic!("{other:?}"),
        }
        match some.to_proto().kind {
            Some(K::Service(s)) => assert_eq!(
                (s.name.as_str(), s.domains, s.rights),
                (
                    "pbx",
                    vec!["acme".to_owned(), "globex".to_owned()],
                    vec!["*".to_owned()]
                )
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(DomainSet::All.to_strings(), ["*"]);
    }

    #[test]
    fn test_service_rights_are_scoped_to_domains() {
        let p = Principal::Service {
            name: "pbx".into(),
            domains: DomainSet::Some(vec![d("acme")]),
            rights: vec![rights::DIRECTORY_READ.into()],
        };
        assert!(p.has_right(&d("acme"), rights::DIRECTORY_READ));
        assert!(!p.has_right(&d("acme"), rights::DIRECTORY_WRITE));
        assert!(!p.has_right(&d("other"), rights::DIRECTORY_READ));
        assert!(!p.has_global_right(rights::DIRECTORY_READ));
        assert!(matches!(
            p.require_domain(&d("other")),
            Err(ApiError::NotFound(m)) if m == "domain other not found"
        ));
    }

    #[test]
    fn test_limit_keys_separate_tenants() {
        let svc = |ds: &[&str]| Principal::Service {
            name: "globex-phone-gw".into(),
            domains: DomainSet::Some(ds.iter().map(|x| d(x)).collect()),
            rights: vec![rights::PRESENCE_WATCH.into()],
        };
        let acme = svc(&["acme"]).limit_key(&d("acme"));
        let globex = svc(&["globex"]).limit_key(&d("globex"));
        assert_ne!(acme, globex);
        assert_ne!(
            svc(&["acme", "globex"]).limit_key(&d("acme")),
            svc(&["acme", "globex"]).limit_key(&d("globex"))
        );
        assert_eq!(
            svc(&["globex", "acme"]).limit_key(&d("acme")),
            svc(&["acme", "globex"]).limit_key(&d("acme"))
        );
    }

    #[test]
    fn test_all_rights_and_domains() {
        let p = Principal::Service {
            name: "admin".into(),
            domains: DomainSet::All,
            rights: vec![rights::ALL.into()],
        };
        assert!(p.has_global_right(rights::DOMAINS_ADMIN));
        assert!(p.has_right(&d("any"), rights::DIRECTORY_WRITE));
    }

    #[test]
    fn test_parse_rights_and_domains() {
        assert!(parse_rights(&["directory.read".into()]).is_ok());
        assert!(parse_rights(&["root".into()]).is_err());
        assert!(parse_rights(&[]).is_err());
        assert_eq!(DomainSet::parse(&["*".into()]), Ok(DomainSet::All));
        assert!(DomainSet::parse(&["Bad.Domain".into()]).is_err());
        assert!(DomainSet::parse(&[]).is_err());
    }
}
