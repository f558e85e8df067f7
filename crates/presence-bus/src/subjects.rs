//! Every NATS subject the broker uses. Nothing else in the code base
//! spells a subject; docs/subjects.md documents the same list.
//!
//! Domain and user ids are validated newtypes that are always a single
//! subject token, so a subject can never be confused with a wildcard.

use presence_core::{DomainId, UserId};

/// Common prefix of every subject.
pub const PREFIX: &str = "presence.v1";

/// Ingest of device events for one user: `presence.v1.in.<domain>.<user>`.
pub fn ingest(domain: &DomainId, user: &UserId) -> String {
    format!("{PREFIX}.in.{domain}.{user}")
}

/// Pattern matching every ingest subject: `presence.v1.in.>`.
pub fn ingest_all() -> String {
    format!("{PREFIX}.in.>")
}

/// The input log of distributed fanout (the JetStream stream
/// `PRESENCE_INGEST`): batches of admitted events, appended by fanout
/// nodes only: `presence.v1.admitted`.
pub fn admitted() -> String {
    format!("{PREFIX}.admitted")
}

/// Aggregated presence of one user: `presence.v1.out.<domain>.<user>`.
pub fn presence_out(domain: &DomainId, user: &UserId) -> String {
    presence_out_str(domain.as_str(), user.as_str())
}

/// [`presence_out`] of already validated ids.
pub fn presence_out_str(domain: &str, user: &str) -> String {
    format!("{PREFIX}.out.{domain}.{user}")
}

/// The replicated log of directory, auth and policy transactions (the
/// JetStream stream `PRESENCE_DIRECTORY`): `presence.v1.log.directory`.
pub fn directory_log() -> String {
    format!("{PREFIX}.log.directory")
}

/// ACL change events of a domain: `presence.v1.acl.<domain>`.
pub fn acl(domain: &DomainId) -> String {
    format!("{PREFIX}.acl.{domain}")
}

/// Pattern matching ACL events of every domain: `presence.v1.acl.*`.
pub fn acl_all() -> String {
    format!("{PREFIX}.acl.*")
}

/// Directory change events of a domain: `presence.v1.dir.<domain>`.
pub fn directory(domain: &DomainId) -> String {
    format!("{PREFIX}.dir.{domain}")
}

/// Pattern matching directory events of every domain:
/// `presence.v1.dir.*`.
pub fn directory_all() -> String {
    format!("{PREFIX}.dir.*")
}

/// Policy checks answered by policy nodes (request/reply, queue group
/// `policy`): `presence.v1.policy.<see|pickup>.<domain>`.
pub fn policy_check(domain: &DomainId, pickup: bool) -> String {
    let q = if pickup { "pickup" } else { "see" };
    format!("{PREFIX}.policy.{q}.{domain}")
}

/// State reads answered by the owner of shard `n`:
/// `presence.v1.shard.<n>.get`.
pub fn shard_get(n: usize) -> String {
    format!("{PREFIX}.shard.{n}.get")
}

/// Verdicts of shard owners for events a node waits on:
/// `presence.v1.node.<node>.results`.
pub fn node_results(node: &str) -> String {
    format!("{PREFIX}.node.{node}.results")
}

/// Watch-selector resolution by policy nodes:
/// `presence.v1.policy.resolve.<domain>`.
pub fn policy_resolve(domain: &DomainId) -> String {
    format!("{PREFIX}.policy.resolve.{domain}")
}

/// A domain's current incarnation, answered by policy nodes:
/// `presence.v1.policy.domain.<domain>`.
pub fn policy_domain(domain: &DomainId) -> String {
    format!("{PREFIX}.policy.domain.{domain}")
}

/// Pattern matching every policy request (checks, resolutions, domains):
/// `presence.v1.policy.*.*`.
pub fn policy_check_all() -> String {
    format!("{PREFIX}.policy.*.*")
}

/// Mail requests (welcome mails) of a domain: `presence.v1.mail.<domain>`.
pub fn mail(domain: &DomainId) -> String {
    format!("{PREFIX}.mail.{domain}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::{matches, valid_pattern, valid_subject};

    #[test]
    fn test_subjects_are_valid_and_match_their_patterns() -> Result<(), presence_core::ApiError> {
        let d = DomainId::parse("acme")?;
        let u = UserId::parse("1001")?;
        for s in [
            ingest(&d, &u),
            presence_out(&d, &u),
            acl(&d),
            directory(&d),
            mail(&d),
            shard_get(7),
            node_results("node-1"),
            policy_resolve(&d),
            policy_domain(&d),
            directory_log(),
            admitted(),
        ] {
            assert!(valid_subject(&s), "{s}");
        }
        for p in [ingest_all(), acl_all(), directory_all()] {
            assert!(valid_pattern(&p), "{p}");
        }
        assert!(matches(&ingest_all(), &ingest(&d, &u)));
        assert!(matches(&directory_all(), &directory(&d)));
        assert!(matches(&acl_all(), &acl(&d)));
        assert!(!matches(&directory_all(), &acl(&d)));
        assert!(!matches(&directory_all(), &directory_log()));
        // The input log must not capture what tenants publish.
        assert!(!matches(&ingest_all(), &admitted()));
        assert!(matches(&policy_check_all(), &policy_resolve(&d)));
        assert!(matches(&policy_check_all(), &policy_domain(&d)));
        assert_eq!(directory(&d), "presence.v1.dir.acme");
        Ok(())
    }
}
