//! Policy checks over the bus, for fanout nodes that do not hold the
//! directory store: policy nodes answer requests on
//! `presence.v1.policy.<see|pickup>.<domain>` (queue group `policy`, so
//! several policy nodes share the load), and [`crate::AclView::remote`]
//! asks them on cache misses. The same responders resolve watch
//! selectors (`presence.v1.policy.resolve.<domain>`, a `WatchRequest`
//! answered with a `ResolveReply`) and tell a domain's incarnation
//! (`presence.v1.policy.domain.<domain>`, answered with a `DomainReply`),
//! with which fanout-only nodes check service tokens.

use crate::service::{Question, evaluate};
use presence_bus::{BusMessage, SharedBus, subjects};
use presence_core::{ApiError, ApiResult, DomainId, UserId};
use presence_directory::Store;
use presence_proto::v1;
use prost::Message;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Queue group of the policy responders.
pub const QUEUE_GROUP: &str = "policy";

/// Most targets in one remote check (as for CheckSee).
pub const MAX_TARGETS: usize = 5000;

/// How long a policy node behind a check's `min_epoch` waits for its
/// replicated store to reach it before answering `Unavailable`.
pub const MIN_EPOCH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits (on this blocking thread) until the store holds policy epoch
/// `min` of `d`. Epochs only grow, even across a domain's deletion and
/// re-creation.
fn reach_epoch(store: &Store, d: &DomainId, min: u64) -> ApiResult<()> {
    let deadline = std::time::Instant::now() + MIN_EPOCH_WAIT;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        let epoch = crate::records::domain_policy(store, d)?.epoch;
        if epoch >= min {
            return Ok(());
        }
        if std::time::Instant::now() + pause > deadline {
            metrics::counter!("presence_policy_remote_behind_total").increment(1);
            return Err(ApiError::Unavailable(format!(
                "this policy node is at epoch {epoch} of domain {d}, the check needs {min}"
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
}

/// What a request on `presence.v1.policy.<what>.<domain>` asks.
enum Asked {
    Check(Question),
    Resolve,
    Domain,
}

/// Parses `presence.v1.policy.<what>.<domain>`.
fn parse_subject(s: &str) -> ApiResult<(Asked, DomainId)> {
    let parts: Vec<&str> = s.split('.').collect();
    match parts.as_slice() {
        [_, _, "policy", q, d] => {
            let q = match *q {
                "see" => Asked::Check(Question::See),
                "pickup" => Asked::Check(Question::Pickup),
                "resolve" => Asked::Resolve,
                "domain" => Asked::Domain,
                other => return Err(ApiError::invalid(format!("unknown question {other:?}"))),
            };
            Ok((q, DomainId::parse(d)?))
        }
        _ => Err(ApiError::invalid(format!("not a policy subject: {s}"))),
    }
}

fn failed(e: &ApiError) -> (String, String) {
    (e.code_name().into(), e.message().into())
}

/// Answers one request with the encoded reply.
fn answer(store: &Store, m: &BusMessage) -> Vec<u8> {
    match parse_subject(&m.subject) {
        // Asked by fanout nodes of earlier versions (which held no
        // directory) during a rolling upgrade.
        Ok((Asked::Domain, d)) => match domain_incarnation(store, &d) {
            Ok(incarnation) => v1::DomainReply {
                incarnation,
                ..Default::default()
            },
            Err(e) => {
                let (error_code, error_message) = failed(&e);
                v1::DomainReply {
                    incarnation: 0,
                    error_code,
                    error_message,
                }
            }
        }
        .encode_to_vec(),
        Ok((Asked::Resolve, d)) => match resolve_here(store, &d, m) {
            Ok(targets) => v1::ResolveReply {
                targets,
                ..Default::default()
            },
            Err(e) => {
                let (error_code, error_message) = failed(&e);
                v1::ResolveReply {
                    targets: Vec::new(),
                    error_code,
                    error_message,
                }
            }
        }
        .encode_to_vec(),
        checked => match checked.and_then(|(a, d)| match a {
            Asked::Check(q) => check_here(store, q, &d, m),
            Asked::Resolve | Asked::Domain => Err(ApiError::invalid("not a check")),
        }) {
            Ok(r) => v1::CheckReply {
                response: Some(r),
                ..Default::default()
            },
            Err(e) => {
                let (error_code, error_message) = failed(&e);
                v1::CheckReply {
                    response: None,
                    error_code,
                    error_message,
                }
            }
        }
        .encode_to_vec(),
    }
}

/// Returns the current incarnation of domain `d` (`NotFound` when it
/// does not exist).
pub fn domain_incarnation(store: &Store, d: &DomainId) -> ApiResult<u64> {
    use presence_directory::records::{Read, incarnation};
    store.domain(d)?;
    store.incarnation(&incarnation::domain_key(d.as_str()))
}

fn resolve_here(store: &Store, d: &DomainId, m: &BusMessage) -> ApiResult<Vec<String>> {
    let req = v1::WatchRequest::decode(m.payload.clone())
        .map_err(|e| ApiError::invalid(format!("malformed resolve: {e}")))?;
    if req.domain != d.as_str() {
        return Err(ApiError::invalid("resolve domain differs from its subject"));
    }
    let w = UserId::parse(&req.watcher)?;
    let sel = req
        .selector
        .ok_or_else(|| ApiError::invalid("a selector must be set"))?;
    crate::service::resolve_selector(store, d, &w, &sel, MAX_TARGETS)
}

fn check_here(
    store: &Store,
    q: Question,
    d: &DomainId,
    m: &BusMessage,
) -> ApiResult<v1::CheckResponse> {
    let req = v1::CheckRequest::decode(m.payload.clone())
        .map_err(|e| ApiError::invalid(format!("malformed check: {e}")))?;
    if req.domain != d.as_str() {
        return Err(ApiError::invalid("check domain differs from its subject"));
    }
    if req.targets.len() > MAX_TARGETS {
        return Err(ApiError::ResourceExhausted(format!(
            "{} targets, at most {MAX_TARGETS}",
            req.targets.len()
        )));
    }
    let w = UserId::parse(&req.watcher)?;
    for t in &req.targets {
        UserId::parse(t)?;
    }
    reach_epoch(store, d, req.min_epoch)?;
    let (epoch, decisions) = evaluate(store, d, &w, &req.targets, q)?;
    Ok(v1::CheckResponse { decisions, epoch })
}

/// Subscribes the responder (queue group `policy`); pass the result to
/// [`serve_checks`].
pub async fn subscribe(bus: &SharedBus) -> ApiResult<presence_bus::BusSubscription> {
    Ok(bus
        .queue_subscribe(subjects::policy_check_all(), QUEUE_GROUP.into())
        .await?)
}

/// Answers policy checks from `sub` until `shutdown`. One request at a
/// time per responder (the subscription's buffer bounds the backlog);
/// evaluation runs on a blocking thread.
pub async fn serve_checks(
    store: Arc<Store>,
    bus: SharedBus,
    mut sub: presence_bus::BusSubscription,
    shutdown: CancellationToken,
) {
    loop {
        let Some(m) = presence_bus::next_or_shutdown(&mut sub, &shutdown).await else {
            return;
        };
        let Some(reply_to) = m.reply.clone() else {
            tracing::debug!(subject = %m.subject, "policy check without reply subject ignored");
            continue;
        };
        let st = store.clone();
        let reply = match tokio::task::spawn_blocking(move || answer(&st, &m)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "policy request task failed");
                continue;
            }
        };
        metrics::counter!("presence_policy_remote_checks_total").increment(1);
        if let Err(e) = bus.publish(reply_to, reply.into()).await {
            tracing::warn!(error = %e, "policy check reply not sent");
        }
    }
}

/// Asks a policy node over the bus, for an answer of at least policy
/// epoch `min_epoch` of `d`.
pub async fn ask(
    bus: &SharedBus,
    d: &DomainId,
    watcher: &UserId,
    targets: &[String],
    q: Question,
    min_epoch: u64,
    timeout: std::time::Duration,
) -> ApiResult<(u64, Vec<v1::Decision>)> {
    let req = v1::CheckRequest {
        domain: d.to_string(),
        watcher: watcher.to_string(),
        targets: targets.to_vec(),
        min_epoch,
    };
    let subject = subjects::policy_check(d, q == Question::Pickup);
    let bytes = bus
        .request(subject, req.encode_to_vec().into(), timeout)
        .await?;
    let reply = v1::CheckReply::decode(bytes)
        .map_err(|e| ApiError::Internal(format!("malformed check reply: {e}")))?;
    match reply.response {
        Some(r) if reply.error_code.is_empty() => Ok((r.epoch, r.decisions)),
        _ => Err(ApiError::from_code_name(
            &reply.error_code,
            reply.error_message,
        )),
    }
}

/// Asks a policy node which targets `sel` names for `watcher`.
pub async fn resolve(
    bus: &SharedBus,
    d: &DomainId,
    watcher: &UserId,
    sel: &v1::watch_request::Selector,
    timeout: std::time::Duration,
) -> ApiResult<Vec<String>> {
    let req = v1::WatchRequest {
        domain: d.to_string(),
        watcher: watcher.to_string(),
        selector: Some(sel.clone()),
        ..Default::default()
    };
    let bytes = bus
        .request(
            subjects::policy_resolve(d),
            req.encode_to_vec().into(),
            timeout,
        )
        .await?;
    let reply = v1::ResolveReply::decode(bytes)
        .map_err(|e| ApiError::Internal(format!("malformed resolve reply: {e}")))?;
    if reply.error_code.is_empty() {
        Ok(reply.targets)
    } else {
        Err(ApiError::from_code_name(
            &reply.error_code,
            reply.error_message,
        ))
    }
}
