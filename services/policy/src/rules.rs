//! The access rules of ARCHITECTURE.md §5, as pure functions over the
//! facts of one watcher and one target. No I/O: the service loads the
//! facts, these functions decide.
//!
//! CanSee, in order:
//! 1. another domain → deny (handled before: such ids are "not found");
//! 2. watcher = target → allow;
//! 3. scope-implied, each switchable per domain: an office manager sees
//!    its domain, a site manager its site, a call-center supervisor the
//!    agents of the queues it supervises;
//! 4. the target's visibility: everyone / nobody / permitted users (see
//!    or pickup grants to the watcher, its site or the domain) / only
//!    users permitted to pick up its calls;
//! 5. otherwise deny.
//!
//! CanPickup needs a pickup grant (or is the target itself). Caller
//! identity of calls follows the target's caller-id visibility: all,
//! none, or permitted users (pickup grantees); the target itself always
//! sees its own callers.

use presence_core::Scope;
use presence_proto::v1::{self, CallerIdVisibility, Rule, Visibility, grantee::Kind as G};
use std::collections::HashSet;

/// What the rules need to know about the watcher.
#[derive(Debug, Clone)]
pub struct Watcher {
    /// User id.
    pub id: String,
    /// Site ("" when none).
    pub site: String,
    /// Scope.
    pub scope: Scope,
    /// Agents of the queues the watcher supervises.
    pub supervised: HashSet<String>,
}

/// What the rules need to know about a target.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// User id.
    pub id: &'a str,
    /// Site ("" when none).
    pub site: &'a str,
    /// Presence settings (defaults when never saved).
    pub settings: &'a v1::PresenceSettings,
    /// See and pickup grants.
    pub grants: &'a v1::Grants,
}

/// A decision and the rule that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// Whether access is allowed.
    pub allowed: bool,
    /// The deciding rule.
    pub rule: Rule,
    /// Whether caller identity of calls is visible (false when denied).
    pub caller_id_visible: bool,
}

fn grant_matches(g: &v1::Grantee, w: &Watcher) -> Option<Rule> {
    match g.kind.as_ref()? {
        G::User(u) if *u == w.id => Some(Rule::SeeGrantUser),
        G::Site(s) if !w.site.is_empty() && *s == w.site => Some(Rule::SeeGrantSite),
        G::Domain(true) => Some(Rule::SeeGrantDomain),
        _ => None,
    }
}

/// Returns the rule of the first pickup grant naming the watcher.
pub fn pickup_grant(w: &Watcher, t: &Target<'_>) -> Option<Rule> {
    t.grants.pickup.iter().find_map(|g| grant_matches(g, w))
}

/// Returns the rule of the first see grant naming the watcher.
fn see_grant(w: &Watcher, t: &Target<'_>) -> Option<Rule> {
    t.grants.see.iter().find_map(|g| grant_matches(g, w))
}

fn caller_id(w: &Watcher, t: &Target<'_>) -> bool {
    if w.id == t.id {
        return true;
    }
    match CallerIdVisibility::try_from(t.settings.caller_id_visibility) {
        Ok(CallerIdVisibility::All) => true,
        Ok(CallerIdVisibility::None) => false,
        // Unset means the default: permitted users (pickup grantees).
        _ => pickup_grant(w, t).is_some(),
    }
}

fn verdict(allowed: bool, rule: Rule, w: &Watcher, t: &Target<'_>) -> Verdict {
    Verdict {
        allowed,
        rule,
        caller_id_visible: allowed && caller_id(w, t),
    }
}

/// Decides whether `w` may see `t`'s presence.
pub fn can_see(policy: &v1::DomainPolicy, w: &Watcher, t: &Target<'_>) -> Verdict {
    if w.id == t.id {
        return verdict(true, Rule::Self_, w, t);
    }
    if policy.office_manager_sees_domain && w.scope == Scope::OfficeManager {
        return verdict(true, Rule::OfficeManager, w, t);
    }
    if policy.site_manager_sees_site
        && w.scope == Scope::SiteManager
        && !w.site.is_empty()
        && w.site == t.site
    {
        return verdict(true, Rule::SiteManager, w, t);
    }
    if policy.supervisor_sees_queue_agents
        && w.scope.has(presence_core::Capability::MonitorQueueAgents)
        && w.supervised.contains(t.id)
    {
        return verdict(true, Rule::QueueSupervisor, w, t);
    }
    match Visibility::try_from(t.settings.visibility) {
        Ok(Visibility::Everyone) => verdict(true, Rule::VisibilityEveryone, w, t),
        Ok(Visibility::Nobody) => verdict(false, Rule::VisibilityNobody, w, t),
        Ok(Visibility::PickupUsers) => match pickup_grant(w, t) {
            Some(_) => verdict(true, Rule::PickupGrant, w, t),
            None => verdict(false, Rule::NoGrant, w, t),
        },
        // Permitted users (also the default when unset).
        _ => match (see_grant(w, t), pickup_grant(w, t)) {
            (Some(rule), _) => verdict(true, rule, w, t),
            (None, Some(_)) => verdict(true, Rule::PickupGrant, w, t),
            (None, None) => verdict(false, Rule::NoGrant, w, t),
        },
    }
}

/// Decides whether `w` may pick up `t`'s incoming calls.
pub fn can_pickup(w: &Watcher, t: &Target<'_>) -> Verdict {
    if w.id == t.id {
        return verdict(true, Rule::Self_, w, t);
    }
    match pickup_grant(w, t) {
        Some(_) => verdict(true, Rule::PickupGrant, w, t),
        None => verdict(false, Rule::NoGrant, w, t),
    }
}

/// Returns a human-readable reason for a verdict.
pub fn explain(v: &Verdict, w: &Watcher, t: &Target<'_>) -> String {
    let (wid, tid) = (&w.id, t.id);
    match v.rule {
        Rule::Self_ => format!("{wid} is {tid}"),
        Rule::OfficeManager => {
            format!("{wid} is an office manager and office managers see the whole domain")
        }
        Rule::SiteManager => format!("{wid} manages site {} where {tid} is", t.site),
        Rule::QueueSupervisor => format!("{wid} supervises a call queue {tid} is an agent of"),
        Rule::VisibilityEveryone => format!("{tid} lets everyone see its presence"),
        Rule::VisibilityNobody => format!("{tid} lets nobody see its presence"),
        Rule::SeeGrantUser => format!("{tid} granted see to {wid}"),
        Rule::SeeGrantSite => format!("{tid} granted see to site {}", w.site),
        Rule::SeeGrantDomain => format!("{tid} granted see to the whole domain"),
        Rule::PickupGrant => {
            format!("{tid} allows {wid} to pick up its calls (pickup implies see)")
        }
        Rule::NoGrant => match Visibility::try_from(t.settings.visibility) {
            Ok(Visibility::PickupUsers) => format!(
                "{tid} is visible only to users who may pick up its calls, and {wid} may not"
            ),
            _ => format!("{tid} has granted nothing to {wid}, its site or the domain"),
        },
        Rule::OtherDomain | Rule::Unspecified => "no such user".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(om: bool, sm: bool, sup: bool) -> v1::DomainPolicy {
        v1::DomainPolicy {
            office_manager_sees_domain: om,
            site_manager_sees_site: sm,
            supervisor_sees_queue_agents: sup,
            ..Default::default()
        }
    }

    fn watcher(id: &str, site: &str, scope: Scope, supervised: &[&str]) -> Watcher {
        Watcher {
            id: id.into(),
            site: site.into(),
            scope,
            supervised: supervised.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn settings(vis: Visibility, cid: CallerIdVisibility) -> v1::PresenceSettings {
        v1::PresenceSettings {
            visibility: vis as i32,
            caller_id_visibility: cid as i32,
            ..Default::default()
        }
    }

    fn user(u: &str) -> v1::Grantee {
        v1::Grantee {
            kind: Some(G::User(u.into())),
        }
    }
    fn site(s: &str) -> v1::Grantee {
        v1::Grantee {
            kind: Some(G::Site(s.into())),
        }
    }
    fn domain() -> v1::Grantee {
        v1::Grantee {
            kind: Some(G::Domain(true)),
        }
    }

    /// One row: watcher, target visibility, see grants, pickup grants,
    /// domain switches → allowed, rule.
    type Row<'a> = (
        &'a Watcher,
        Visibility,
        Vec<v1::Grantee>,
        Vec<v1::Grantee>,
        &'a v1::DomainPolicy,
        bool,
        Rule,
    );

    #[test]
    fn test_can_see_table() {
        let all_on = policy(true, true, true);
        let all_off = policy(false, false, false);
        let basic = watcher("w", "hq", Scope::BasicUser, &[]);
        let om = watcher("w", "hq", Scope::OfficeManager, &[]);
        let sm = watcher("w", "hq", Scope::SiteManager, &[]);
        let sm_elsewhere = watcher("w", "branch", Scope::SiteManager, &[]);
        let sup = watcher("w", "hq", Scope::CallCenterSupervisor, &["t"]);
        let sup_other = watcher("w", "hq", Scope::CallCenterSupervisor, &["x"]);
        let agent_listed = watcher("w", "hq", Scope::CallCenterAgent, &["t"]);
        use Rule as R;
        use Visibility as V;
        let rows: Vec<Row<'_>> = vec![
            (
                &basic,
                V::Everyone,
                vec![],
                vec![],
                &all_on,
                true,
                R::VisibilityEveryone,
            ),
            (
                &basic,
                V::Nobody,
                vec![user("w")],
                vec![user("w")],
                &all_on,
                false,
                R::VisibilityNobody,
            ),
            (
                &basic,
                V::PermittedUsers,
                vec![],
                vec![],
                &all_on,
                false,
                R::NoGrant,
            ),
            (
                &basic,
                V::Unspecified,
                vec![],
                vec![],
                &all_on,
                false,
                R::NoGrant,
            ),
            (
                &basic,
                V::PermittedUsers,
                vec![user("w")],
                vec![],
                &all_on,
                true,
                R::SeeGrantUser,
            ),
            (
                &basic,
                V::PermittedUsers,
                vec![user("other")],
                vec![],
                &all_on,
                false,
                R::NoGrant,
            ),
            (
                &basic,
                V::PermittedUsers,
                vec![site("hq")],
                vec![],
                &all_on,
                true,
                R::SeeGrantSite,
            ),
            (
                &basic,
                V::PermittedUsers,
                vec![site("branch")],
                vec![],
                &all_on,
                false,
                R::NoGrant,
            ),
            (
                &basic,
                V::PermittedUsers,
                vec![domain()],
                vec![],
                &all_on,
                true,
                R::SeeGrantDomain,
            ),
            (
                &basic,
                V::PermittedUsers,
                vec![],
                vec![user("w")],
                &all_on,
                true,
                R::PickupGrant,
            ),
            (
                &basic,
                V::PickupUsers,
                vec![user("w")],
                vec![],
                &all_on,
                false,
                R::NoGrant,
            ),
            (
                &basic,
                V::PickupUsers,
                vec![],
                vec![site("hq")],
                &all_on,
                true,
                R::PickupGrant,
            ),
            (
                &om,
                V::Nobody,
                vec![],
                vec![],
                &all_on,
                true,
                R::OfficeManager,
            ),
            (
                &om,
                V::Nobody,
                vec![],
                vec![],
                &all_off,
                false,
                R::VisibilityNobody,
            ),
            (
                &sm,
                V::Nobody,
                vec![],
                vec![],
                &all_on,
                true,
                R::SiteManager,
            ),
            (
                &sm_elsewhere,
                V::Nobody,
                vec![],
                vec![],
                &all_on,
                false,
                R::VisibilityNobody,
            ),
            (
                &sm,
                V::PermittedUsers,
                vec![],
                vec![],
                &all_off,
                false,
                R::NoGrant,
            ),
            (
                &sup,
                V::Nobody,
                vec![],
                vec![],
                &all_on,
                true,
                R::QueueSupervisor,
            ),
            (
                &sup_other,
                V::Nobody,
                vec![],
                vec![],
                &all_on,
                false,
                R::VisibilityNobody,
            ),
            (
                &sup,
                V::Nobody,
                vec![],
                vec![],
                &all_off,
                false,
                R::VisibilityNobody,
            ),
            // An agent has no monitor capability even if listed.
            (
                &agent_listed,
                V::Nobody,
                vec![],
                vec![],
                &all_on,
                false,
                R::VisibilityNobody,
            ),
        ];
        for (i, (w, vis, see, pickup, pol, allowed, rule)) in rows.into_iter().enumerate() {
            let s = settings(vis, CallerIdVisibility::PermittedUsers);
            let g = v1::Grants {
                see,
                pickup,
                ..Default::default()
            };
            let t = Target {
                id: "t",
                site: "hq",
                settings: &s,
                grants: &g,
            };
            let v = can_see(pol, w, &t);
            assert_eq!((v.allowed, v.rule), (allowed, rule), "row {i}");
            assert!(!explain(&v, w, &t).is_empty());
        }
    }

    #[test]
    fn test_every_explanation_names_who_and_why() {
        let w = watcher("1001", "hq", Scope::BasicUser, &[]);
        let grants = v1::Grants::default();
        let text = |rule: Rule, vis: Visibility| {
            let st = settings(vis, CallerIdVisibility::All);
            let t = Target {
                id: "1002",
                site: "branch",
                settings: &st,
                grants: &grants,
            };
            let v = Verdict {
                allowed: true,
                rule,
                caller_id_visible: false,
            };
            explain(&v, &w, &t)
        };
        let e = Visibility::Everyone;
        let cases = [
            (Rule::Self_, e, "1001 is 1002"),
            (
                Rule::OfficeManager,
                e,
                "1001 is an office manager and office managers see the whole domain",
            ),
            (
                Rule::SiteManager,
                e,
                "1001 manages site branch where 1002 is",
            ),
            (
                Rule::QueueSupervisor,
                e,
                "1001 supervises a call queue 1002 is an agent of",
            ),
            (
                Rule::VisibilityEveryone,
                e,
                "1002 lets everyone see its presence",
            ),
            (
                Rule::VisibilityNobody,
                e,
                "1002 lets nobody see its presence",
            ),
            (Rule::SeeGrantUser, e, "1002 granted see to 1001"),
            (Rule::SeeGrantSite, e, "1002 granted see to site hq"),
            (
                Rule::SeeGrantDomain,
                e,
                "1002 granted see to the whole domain",
            ),
            (
                Rule::PickupGrant,
                e,
                "1002 allows 1001 to pick up its calls (pickup implies see)",
            ),
            (
                Rule::NoGrant,
                Visibility::PickupUsers,
                "1002 is visible only to users who may pick up its calls, and 1001 may not",
            ),
            (
                Rule::NoGrant,
                Visibility::PermittedUsers,
                "1002 has granted nothing to 1001, its site or the domain",
            ),
            (Rule::OtherDomain, e, "no such user"),
            (Rule::Unspecified, e, "no such user"),
        ];
        for (rule, vis, want) in cases {
            assert_eq!(text(rule, vis), want, "{rule:?}");
        }
    }

    #[test]
    fn test_self_is_always_allowed_with_caller_id() {
        let w = watcher("t", "", Scope::SimpleUser, &[]);
        let s = settings(Visibility::Nobody, CallerIdVisibility::None);
        let g = v1::Grants::default();
        let t = Target {
            id: "t",
            site: "",
            settings: &s,
            grants: &g,
        };
        let v = can_see(&policy(false, false, false), &w, &t);
        assert_eq!(
            (v.allowed, v.rule, v.caller_id_visible),
            (true, Rule::Self_, true)
        );
        assert!(can_pickup(&w, &t).allowed);
    }

    #[test]
    fn test_caller_id_visibility() {
        let w = watcher("w", "hq", Scope::BasicUser, &[]);
        let see_only = v1::Grants {
            see: vec![user("w")],
            ..Default::default()
        };
        let pickup = v1::Grants {
            pickup: vec![user("w")],
            ..Default::default()
        };
        let pol = policy(true, true, true);
        for (cid, grants, expect) in [
            (CallerIdVisibility::All, &see_only, true),
            (CallerIdVisibility::None, &pickup, false),
            (CallerIdVisibility::PermittedUsers, &see_only, false),
            (CallerIdVisibility::PermittedUsers, &pickup, true),
            (CallerIdVisibility::Unspecified, &pickup, true),
        ] {
            let s = settings(Visibility::PermittedUsers, cid);
            let t = Target {
                id: "t",
                site: "hq",
                settings: &s,
                grants,
            };
            assert_eq!(can_see(&pol, &w, &t).caller_id_visible, expect, "{cid:?}");
        }
        // Denied means no caller id either.
        let s = settings(Visibility::Nobody, CallerIdVisibility::All);
        let t = Target {
            id: "t",
            site: "hq",
            settings: &s,
            grants: &pickup,
        };
        assert!(!can_see(&pol, &w, &t).caller_id_visible);
    }

    #[test]
    fn test_pickup_needs_a_pickup_grant() {
        let w = watcher("w", "hq", Scope::OfficeManager, &[]);
        let s = settings(Visibility::Everyone, CallerIdVisibility::All);
        for (grants, expect) in [
            (
                v1::Grants {
                    see: vec![user("w")],
                    ..Default::default()
                },
                false,
            ),
            (
                v1::Grants {
                    pickup: vec![user("w")],
                    ..Default::default()
                },
                true,
            ),
            (
                v1::Grants {
                    pickup: vec![site("hq")],
                    ..Default::default()
                },
                true,
            ),
            (
                v1::Grants {
                    pickup: vec![domain()],
                    ..Default::default()
                },
                true,
            ),
            (
                v1::Grants {
                    pickup: vec![site("branch")],
                    ..Default::default()
                },
                false,
            ),
        ] {
            let t = Target {
                id: "t",
                site: "hq",
                settings: &s,
                grants: &grants,
            };
            assert_eq!(can_pickup(&w, &t).allowed, expect, "{grants:?}");
        }
    }
}
