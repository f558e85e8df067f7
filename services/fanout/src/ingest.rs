//! Ingest validation and verdicts, shared by local and clustered shards:
//! an event's shape, its user's existence, queue-login rights, who may
//! publish for whom, the ingest subject's ids, and the counted verdicts
//! (`presence_fanout_events_{in,applied,unchanged,rejected}_total`).
//!
//! The counters add up: every event received (a gRPC `Publish` item, a
//! message on an ingest subject, malformed ones included) is counted in
//! `events_in` once by the node that takes it, and ends as exactly one of
//! `applied` (of which `unchanged` changed nothing), `rejected{reason}`
//! or, for a copy appended again at a takeover,
//! `presence_fanout_takeover_duplicates_total` (summed over a cluster's
//! nodes: the verdict is counted by the shard's owner). Events shed from
//! a full ingest backlog never count as received
//! (`presence_fanout_ingest_shed_total`).

use crate::convert::{event_from_proto, reject_label, reject_reason};
use presence_auth::{Principal, rights};
use presence_bus::trace::{self, TraceParent};
use presence_core::presence::EventKind;
use presence_core::{ApiError, DomainId, Mac, UserId};
use presence_policy::AclView;
use presence_proto::v1::{self, RejectReason};

/// Takes a device event that came over NATS with a trace context into
/// that trace: a `presence.ingest` span, child of the publisher's span,
/// whose context becomes the parent of the event's application (None:
/// the event is not traced).
pub(crate) fn ingest_span(subject: &str, parent: Option<TraceParent>) -> Option<TraceParent> {
    let span = trace::child(parent, || {
        tracing::info_span!(
            "presence.ingest",
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.destination.name = subject,
        )
    })?;
    TraceParent::of(&span)
}

/// Counts and logs a rejected event and returns its result.
pub(crate) fn rejected(reason: RejectReason, detail: impl Into<String>) -> v1::PublishResult {
    metrics::counter!("presence_fanout_events_rejected_total", "reason" => reject_label(reason))
        .increment(1);
    let detail = detail.into();
    tracing::debug!(reason = reject_label(reason), %detail, "event rejected");
    v1::PublishResult {
        accepted: false,
        reason: reason as i32,
        detail,
    }
}

/// Counts an applied event and returns its verdict.
pub(crate) fn applied(changed: bool) -> v1::PublishResult {
    metrics::counter!("presence_fanout_events_applied_total").increment(1);
    if !changed {
        metrics::counter!("presence_fanout_events_unchanged_total").increment(1);
    }
    v1::PublishResult {
        accepted: true,
        reason: RejectReason::Unspecified as i32,
        detail: String::new(),
    }
}

/// Validates an event's shape and that its user exists; a rejection is
/// counted and returned as the event's verdict.
pub(crate) async fn check_event(
    acl: &AclView,
    d: &DomainId,
    u: &UserId,
    e: &v1::DeviceEvent,
) -> Result<presence_core::presence::Event, v1::PublishResult> {
    let ev = event_from_proto(e).map_err(|r| rejected(reject_reason(r), "malformed event"))?;
    if let EventKind::QueueLogin { queue, .. } = &ev.kind
        && UserId::parse(queue).is_err()
    {
        return Err(rejected(RejectReason::Malformed, "invalid queue id"));
    }
    match acl.user_exists(d, u).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(rejected(
                RejectReason::UnknownUser,
                format!("user {u} not found in domain {d}"),
            ));
        }
        Err(e) => return Err(rejected(RejectReason::Unspecified, e.to_string())),
    }
    // A logout only removes what a login added: always taken.
    if let EventKind::QueueLogin {
        queue,
        logged_in: true,
    } = &ev.kind
    {
        check_queue_agent(acl, d, u, queue).await?;
    }
    Ok(ev)
}

/// Refuses a queue login of `u` unless the directory lists `u` as an
/// agent of queue `queue` of `d` (which also means its scope has the
/// queue-login capability). An unknown queue, another tenant's queue and
/// a queue `u` is not an agent of are refused alike.
async fn check_queue_agent(
    acl: &AclView,
    d: &DomainId,
    u: &UserId,
    queue: &str,
) -> Result<(), v1::PublishResult> {
    let not_agent = || {
        rejected(
            RejectReason::NotPermitted,
            format!("user {u} is not an agent of queue {queue}"),
        )
    };
    let sel = v1::watch_request::Selector::Queue(queue.to_owned());
    match acl
        .resolve(d, u, &sel, presence_core::text::MAX_QUEUE_MEMBERS)
        .await
    {
        Ok(agents) if agents.iter().any(|a| a == u.as_str()) => Ok(()),
        Ok(_) | Err(ApiError::NotFound(_) | ApiError::PermissionDenied(_)) => Err(not_agent()),
        Err(e) => Err(rejected(RejectReason::Unspecified, e.to_string())),
    }
}

/// Parses the user of an ingest subject `presence.v1.in.<domain>.<user>`.
pub(crate) fn ingest_subject(subject: &str) -> Option<(DomainId, UserId)> {
    let mut parts = subject.split('.');
    let (Some("presence"), Some("v1"), Some("in"), Some(d), Some(u), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some((DomainId::parse(d).ok()?, UserId::parse(u).ok()?))
}

/// Checks that an event's payload names user `u` of `d` (or no one) and
/// fills its ids.
pub(crate) fn same_user(
    d: &DomainId,
    u: &UserId,
    e: &mut v1::DeviceEvent,
) -> Result<(), v1::PublishResult> {
    if (!e.domain.is_empty() && e.domain != d.as_str())
        || (!e.user.is_empty() && e.user != u.as_str())
    {
        return Err(rejected(
            RejectReason::Malformed,
            "payload names another user than its subject",
        ));
    }
    e.domain = d.to_string();
    e.user = u.to_string();
    Ok(())
}

/// Parses the user of an ingest subject and checks that the payload
/// names the same user (or none); fills the payload's ids.
pub(crate) fn ingest_target(
    subject: &str,
    e: &mut v1::DeviceEvent,
) -> Result<(DomainId, UserId), v1::PublishResult> {
    let Some((d, u)) = ingest_subject(subject) else {
        return Err(rejected(
            RejectReason::Malformed,
            format!("bad subject {subject}"),
        ));
    };
    same_user(&d, &u, e)?;
    Ok((d, u))
}

/// Returns whether `p` may publish `e` (already parsed ids).
pub(crate) fn may_publish(p: &Principal, d: &DomainId, u: &UserId, e: &v1::DeviceEvent) -> bool {
    use v1::device_event::Kind as K;
    match p {
        Principal::Service { .. } => p.has_right(d, rights::PRESENCE_PUBLISH),
        Principal::Phone { domain, user, mac } => {
            domain == d && user == u && Mac::parse(&e.device).is_ok_and(|m| m == *mac)
        }
        Principal::User { domain, user, .. } => {
            domain == d
                && user == u
                && matches!(
                    e.kind,
                    Some(K::ManualStatus(_) | K::UserDnd(_) | K::QueueLogin(_))
                )
        }
    }
}
