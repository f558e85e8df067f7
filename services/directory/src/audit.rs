//! The audit trail: who changed what that decides access, when, and the
//! values before and after.
//!
//! An event is written in the same transaction as the change it records
//! (so it is replicated, and exists exactly when the change does), under
//! three keys holding the same [`v1::AuditEvent`]:
//!
//! - `A\0<domain>\0<id>`: a domain's trail (`-` for deployment-wide
//!   events);
//! - `AU\0<domain>\0<user>\0<id>`: one user's trail;
//! - `AT\0<time>-<rest of id>`: oldest first, for the retention purge.
//!
//! The id is `<u64::MAX - at_ms, 20 digits>-<nonce>-<n>`: forward scans
//! list newest first; the nonce is drawn once per request (a transaction
//! retried after a conflict writes the same keys) and `n` numbers the
//! events of one transaction.

use crate::records::Read as _;
use crate::store::{
    Tx,
    keys::{key, prefix},
};
use crate::{authz, service::Directory};
use presence_auth::{Principal, rights};
use presence_core::{ApiError, ApiResult, DomainId, UserId};
use presence_proto::v1;
use std::time::Duration;

/// Key tag of a domain's trail.
pub const TRAIL: &str = "A";
/// Key tag of a user's trail.
pub const BY_USER: &str = "AU";
/// Key tag of the time index.
pub const BY_TIME: &str = "AT";
/// The domain segment of deployment-wide events.
pub const DEPLOYMENT: &str = "-";

/// Most events per page.
pub const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;
/// Events deleted per purge transaction (three keys each).
const PURGE_BATCH: usize = 300;

/// Who acts, and when, for the events of one request.
#[derive(Debug, Clone)]
pub struct Auditor {
    by: String,
    at_ms: i64,
    nonce: String,
}

impl Auditor {
    /// An auditor for a request of `p`, now.
    pub fn new(p: &Principal) -> Self {
        Self::named(p.describe())
    }

    /// An auditor for an actor given by name (e.g. `maintenance`).
    pub fn named(by: String) -> Self {
        Self {
            by,
            at_ms: presence_auth::token::now_ms(),
            nonce: presence_auth::token::random_bytes(8)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        }
    }

    /// Stages one event in `tx`. `domain` `None`: deployment-wide.
    pub fn record(
        &self,
        tx: &mut Tx<'_>,
        domain: Option<&DomainId>,
        user: &str,
        action: &str,
        before: String,
        after: String,
    ) {
        let n = tx.next_audit();
        let inv = u64::MAX - u64::try_from(self.at_ms).unwrap_or(0);
        let id = format!("{inv:020}-{}-{n:04}", self.nonce);
        let d = domain.map_or(DEPLOYMENT, |d| d.as_str());
        let ev = v1::AuditEvent {
            id: id.clone(),
            at_ms: self.at_ms,
            principal: self.by.clone(),
            action: action.to_owned(),
            domain: domain.map(|d| d.to_string()).unwrap_or_default(),
            user: user.to_owned(),
            before,
            after,
        };
        tx.put(key(TRAIL, &[d, &id]), &ev);
        if !user.is_empty() {
            tx.put(key(BY_USER, &[d, user, &id]), &ev);
        }
        tx.put(key(BY_TIME, &[&time_key(self.at_ms, &id)]), &ev);
    }
}

/// The time-index key suffix of event `id` at `at_ms`: oldest first.
fn time_key(at_ms: i64, id: &str) -> String {
    let rest = id.split_once('-').map_or("", |(_, r)| r);
    format!("{:020}-{rest}", at_ms.max(0))
}

/// Renders a list of names as `[a, b]` (`[]` when empty).
pub fn list<T: AsRef<str>>(items: &[T]) -> String {
    let v: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("[{}]", v.join(", "))
}

/// Whether `p` may read the trail asked for (a site manager: the trail
/// of a user it manages, read from `store`).
fn authorize(
    store: &crate::store::Store,
    p: &Principal,
    domain: Option<&DomainId>,
    user: Option<&UserId>,
) -> ApiResult<()> {
    let Some(d) = domain else {
        return if p.has_global_right(rights::DOMAINS_ADMIN) {
            Ok(())
        } else {
            Err(ApiError::denied(
                "the deployment-wide audit trail needs domains.admin for every domain",
            ))
        };
    };
    let r = authz::role(p, d)?;
    if matches!(r, authz::Role::Admin | authz::Role::Reader) {
        return Ok(());
    }
    if let Some(u) = user {
        if r.user() == Some(u) && !matches!(r, authz::Role::Phone { .. }) {
            return Ok(());
        }
        if matches!(r, authz::Role::SiteManager { .. })
            && let Ok(rec) = store.user(d, u)
            && r.manages(&rec.site, crate::users::scope_of(&rec))
        {
            return Ok(());
        }
    }
    Err(ApiError::denied(match user {
        Some(_) => "not allowed to read this user's audit trail",
        None => "not allowed to read this domain's audit trail",
    }))
}

impl Directory {
    /// Lists audit events (see `ListAuditEvents` in directory.proto).
    pub async fn list_audit_events(
        &self,
        p: &Principal,
        req: v1::ListAuditEventsRequest,
    ) -> ApiResult<v1::ListAuditEventsResponse> {
        let domain = match req.domain.as_str() {
            "" => None,
            d => Some(DomainId::parse(d)?),
        };
        let user = match (req.user.as_str(), &domain) {
            ("", _) => None,
            (_, None) => {
                return Err(ApiError::invalid(
                    "user needs a domain (deployment-wide events are about no user)",
                ));
            }
            (u, Some(_)) => Some(UserId::parse(u)?),
        };
        let page = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(ApiError::invalid(format!(
                    "page_size {n} is over {MAX_PAGE}"
                )));
            }
            n => n,
        };
        if !req.page_token.is_empty() && !valid_id(&req.page_token) {
            return Err(ApiError::invalid(format!(
                "page_token {} is not an audit event id",
                presence_core::text::shown(&req.page_token)
            )));
        }
        if let Some(d) = &domain {
            // Another tenant's principal gets the unknown domain's answer.
            p.require_domain(d)?;
            self.store().domain(d)?;
        }
        authorize(self.store(), p, domain.as_ref(), user.as_ref())?;
        let d = domain.as_ref().map_or(DEPLOYMENT, |d| d.as_str());
        let prefix = match &user {
            Some(u) => prefix(BY_USER, &[d, u.as_str()]),
            None => prefix(TRAIL, &[d]),
        };
        let after = (!req.page_token.is_empty()).then(|| {
            let mut k = prefix.clone();
            k.extend_from_slice(req.page_token.as_bytes());
            k
        });
        let store = self.store().clone();
        tokio::task::spawn_blocking(move || {
            let mut events = Vec::with_capacity(page.min(64));
            let mut more = false;
            for r in store.scan(&prefix, after.as_deref()) {
                let (_, v) = r?;
                if events.len() == page {
                    more = true;
                    break;
                }
                events.push(crate::store::decode::<v1::AuditEvent>(&v)?);
            }
            let next_page_token = match (more, events.last()) {
                (true, Some(e)) => e.id.clone(),
                _ => String::new(),
            };
            Ok(v1::ListAuditEventsResponse {
                events,
                next_page_token,
            })
        })
        .await
        .map_err(|e| ApiError::Internal(format!("audit listing: {e}")))?
    }

    /// Deletes audit events older than `now_ms - retention` and
    /// revocations of tokens expired before `now_ms`, in bounded
    /// transactions; returns how many of each. Safe to run on several
    /// nodes at once (they delete the same records).
    pub async fn purge_expired(
        &self,
        now_ms: i64,
        retention: Duration,
    ) -> ApiResult<(usize, usize)> {
        let cutoff =
            now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let mut events = 0;
        loop {
            let n = self
                .write(move |tx| {
                    let prefix = prefix(BY_TIME, &[]);
                    let mut n = 0u64;
                    for k in tx.first_keys(&prefix, None, PURGE_BATCH)? {
                        let Some(ev) = tx.get::<v1::AuditEvent>(&k)? else {
                            continue;
                        };
                        if ev.at_ms >= cutoff {
                            break;
                        }
                        let d = if ev.domain.is_empty() {
                            DEPLOYMENT
                        } else {
                            ev.domain.as_str()
                        };
                        tx.delete(key(TRAIL, &[d, &ev.id]));
                        if !ev.user.is_empty() {
                            tx.delete(key(BY_USER, &[d, &ev.user, &ev.id]));
                        }
                        tx.delete(k);
                        n += 1;
                    }
                    Ok(n)
                })
                .await? as usize;
            events += n;
            if n < PURGE_BATCH {
                break;
            }
        }
        // Revocations are keyed by token id, not time: walk them in
        // chunks, each chunk one transaction reading only its keys.
        let mut revoked = 0;
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let from = cursor.clone();
            let (n, last) = self
                .write(move |tx| {
                    let prefix = prefix(crate::store::keys::REVOKED, &[]);
                    let chunk = tx.first_keys(&prefix, from.as_deref(), PURGE_BATCH)?;
                    let mut n = 0u64;
                    for k in &chunk {
                        if let Some(r) = tx.get::<crate::records::RevokedRecord>(k)?
                            && r.expires_at_ms < now_ms
                        {
                            tx.delete(k.clone());
                            n += 1;
                        }
                    }
                    Ok(Chunk {
                        deleted: n,
                        last: chunk.last().cloned().unwrap_or_default(),
                    })
                })
                .await
                .map(|c| (c.deleted as usize, c.last))?;
            revoked += n;
            if last.is_empty() {
                break;
            }
            cursor = Some(last);
        }
        if events + revoked > 0 {
            tracing::info!(
                events,
                revoked,
                "purged expired audit events and revocations"
            );
        }
        Ok((events, revoked))
    }
}

/// One chunk of the revocation purge (a transaction's reply).
#[derive(Clone, PartialEq, prost::Message)]
struct Chunk {
    #[prost(uint64, tag = "1")]
    deleted: u64,
    /// The last key looked at; empty when the chunk was empty.
    #[prost(bytes = "vec", tag = "2")]
    last: Vec<u8>,
}

fn valid_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    matches!(parts.as_slice(), [t, n, i]
        if t.len() == 20 && t.bytes().all(|c| c.is_ascii_digit())
        && n.len() == 16 && n.bytes().all(|c| c.is_ascii_hexdigit())
        && i.len() == 4 && i.bytes().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::testing::{admin, directory};

    fn count(store: &Store, tag: &str) -> usize {
        store.scan(&prefix(tag, &[]), None).count()
    }

    #[tokio::test]
    async fn test_purge_deletes_old_events_everywhere_and_expired_revocations_only() {
        let tmp = tempfile::tempdir().unwrap();
        let (d, store) = directory(tmp.path());
        let p = admin();
        d.create_domain(
            &p,
            v1::CreateDomainRequest {
                id: "acme".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        for i in 0..7 {
            d.create_user(
                &p,
                v1::CreateUserRequest {
                    domain: "acme".into(),
                    id: format!("10{i:02}"),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        }
        let tok = |ttl: u64| v1::IssueTokenRequest {
            subject: Some(v1::issue_token_request::Subject::Service(
                v1::ServicePrincipal {
                    name: "gw".into(),
                    domains: vec!["acme".into()],
                    rights: vec!["presence.watch".into()],
                },
            )),
            ttl_seconds: ttl,
        };
        let short = d.issue_token(&p, tok(60)).await.unwrap();
        let long = d.issue_token(&p, tok(7 * 86_400)).await.unwrap();
        for t in [&short, &long] {
            d.revoke_token(
                &p,
                None,
                v1::RevokeTokenRequest {
                    token: t.token.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        }
        // 7 creations + 2 issues + 2 revocations, each in three indexes
        // (the user-less token events in two).
        assert_eq!(count(&store, TRAIL), 11);
        assert_eq!(count(&store, BY_USER), 7);
        assert_eq!(count(&store, BY_TIME), 11);
        assert_eq!(count(&store, crate::store::keys::REVOKED), 2);

        let now = presence_auth::token::now_ms();
        // Nothing is old yet, and no revoked token has expired.
        let day = Duration::from_secs(86_400);
        assert_eq!(d.purge_expired(now, day).await.unwrap(), (0, 0));
        // Two hours on: the short token expired; its revocation goes.
        let later = now + 2 * 3_600_000;
        assert_eq!(d.purge_expired(later, day).await.unwrap(), (0, 1));
        // Two days on, with a day of retention: every event goes, from
        // all three indexes; the week-long token's revocation stays.
        let much_later = now + 2 * 86_400_000;
        assert_eq!(d.purge_expired(much_later, day).await.unwrap(), (11, 0));
        for tag in [TRAIL, BY_USER, BY_TIME] {
            assert_eq!(count(&store, tag), 0, "{tag}");
        }
        assert_eq!(count(&store, crate::store::keys::REVOKED), 1);
        // The trail reads empty.
        let listed = d
            .list_audit_events(
                &p,
                v1::ListAuditEventsRequest {
                    domain: "acme".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(listed.events.is_empty());
    }

    #[test]
    fn test_ids_sort_newest_first_and_time_keys_oldest_first() {
        let mk = |at: i64| {
            let inv = u64::MAX - at as u64;
            format!("{inv:020}-0123456789abcdef-0001")
        };
        let (old, new) = (mk(1_000), mk(2_000));
        assert!(new < old, "newest first");
        assert!(valid_id(&old) && valid_id(&new));
        assert!(
            time_key(1_000, &old) < time_key(2_000, &new),
            "oldest first"
        );
        for bad in ["", "x", "1-2-3", &old[1..], &format!("{old}0")] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
