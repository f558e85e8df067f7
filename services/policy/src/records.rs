//! Policy records in the shared directory store, their defaults, and the
//! per-domain policy epoch.

use presence_bus::subjects;
use presence_core::{ApiResult, DomainId};
use presence_directory::records::Read;
use presence_directory::store::{Tx, keys};
use presence_proto::v1::{self, CallerIdVisibility, Visibility};
use prost::Message;

/// Presence settings of a user: `PS\0domain\0user`.
pub const SETTINGS: &str = "PS";
/// Grants of a target: `PG\0domain\0target`.
pub const GRANTS: &str = "PG";
/// Reverse index of user grantees: `PGU\0domain\0grantee\0target`.
pub const GRANTS_BY_USER: &str = "PGU";
/// Reverse index of site grantees: `PGS\0domain\0site\0target`.
pub const GRANTS_BY_SITE: &str = "PGS";
/// Monitored lines of a watcher: `PL\0domain\0watcher`.
pub const LINES: &str = "PL";
/// Domain policy (switches and epoch): `PD\0domain`.
pub const DOMAIN_POLICY: &str = "PD";

/// Every policy key prefix that is scoped by domain.
pub const DOMAIN_SCOPED: &[&str] = &[
    SETTINGS,
    GRANTS,
    GRANTS_BY_USER,
    GRANTS_BY_SITE,
    LINES,
    DOMAIN_POLICY,
];

/// Returns the default settings of a user: visible only to permitted
/// users (nobody until grants are made), caller identity only to users
/// who may pick up its calls, no ring on monitored calls, no pickup of
/// held calls.
pub fn default_settings(domain: &str, user: &str) -> v1::PresenceSettings {
    v1::PresenceSettings {
        domain: domain.into(),
        user: user.into(),
        visibility: Visibility::PermittedUsers as i32,
        caller_id_visibility: CallerIdVisibility::PermittedUsers as i32,
        ring_on_monitored_call: false,
        pickup_calls_on_hold: false,
        version: 0,
    }
}

/// Returns the default domain policy: every scope-implied visibility on.
pub fn default_domain_policy(domain: &str) -> v1::DomainPolicy {
    v1::DomainPolicy {
        domain: domain.into(),
        office_manager_sees_domain: true,
        site_manager_sees_site: true,
        supervisor_sees_queue_agents: true,
        epoch: 0,
    }
}

/// Loads a user's settings (defaults when never saved).
pub fn settings(r: &impl Read, d: &DomainId, user: &str) -> ApiResult<v1::PresenceSettings> {
    Ok(r.record(&keys::key(SETTINGS, &[d.as_str(), user]))?
        .unwrap_or_else(|| default_settings(d.as_str(), user)))
}

/// Loads a target's grants (empty when never saved).
pub fn grants(r: &impl Read, d: &DomainId, target: &str) -> ApiResult<v1::Grants> {
    Ok(r.record(&keys::key(GRANTS, &[d.as_str(), target]))?
        .unwrap_or_else(|| v1::Grants {
            domain: d.to_string(),
            target: target.into(),
            ..Default::default()
        }))
}

/// Loads the domain policy (defaults when never saved).
pub fn domain_policy(r: &impl Read, d: &DomainId) -> ApiResult<v1::DomainPolicy> {
    Ok(r.record(&keys::key(DOMAIN_POLICY, &[d.as_str()]))?
        .unwrap_or_else(|| default_domain_policy(d.as_str())))
}

/// Bumps the domain's policy epoch inside `tx` and queues the matching
/// `AclEvent` on `presence.v1.acl.<domain>`. Returns the new epoch.
pub fn bump_epoch(
    tx: &mut Tx<'_>,
    d: &DomainId,
    targets: Vec<String>,
    watchers: Vec<String>,
    reason: &str,
) -> ApiResult<u64> {
    let mut p = domain_policy(tx, d)?;
    p.epoch += 1;
    tx.put(keys::key(DOMAIN_POLICY, &[d.as_str()]), &p);
    let ev = v1::AclEvent {
        domain: d.to_string(),
        epoch: p.epoch,
        targets,
        watchers,
        reason: reason.into(),
    };
    tx.publish(subjects::acl(d), ev.encode_to_vec());
    Ok(p.epoch)
}

/// Writes a target's grants and keeps the reverse indexes in step.
pub fn put_grants(tx: &mut Tx<'_>, d: &DomainId, old: &v1::Grants, new: &v1::Grants) {
    let ds = d.as_str();
    for g in old.see.iter().chain(&old.pickup) {
        if let Some(k) = reverse_key(ds, &old.target, g) {
            tx.delete(k);
        }
    }
    for g in new.see.iter().chain(&new.pickup) {
        if let Some(k) = reverse_key(ds, &new.target, g) {
            tx.put_raw(k, Vec::new());
        }
    }
    let key = keys::key(GRANTS, &[ds, &new.target]);
    if new.see.is_empty() && new.pickup.is_empty() && new.version == 0 {
        tx.delete(key);
    } else {
        tx.put(key, new);
    }
}

fn reverse_key(d: &str, target: &str, g: &v1::Grantee) -> Option<Vec<u8>> {
    use v1::grantee::Kind as G;
    match g.kind.as_ref()? {
        G::User(u) => Some(keys::key(GRANTS_BY_USER, &[d, u, target])),
        G::Site(s) => Some(keys::key(GRANTS_BY_SITE, &[d, s, target])),
        G::Domain(_) => None,
    }
}
