//! A policy node that answers for other targets than asked (a bug or a
//! mismatched version) is an error for the asking view, and none of its
//! answers is cached.

#![allow(clippy::unwrap_used, missing_docs)]

use futures_util::StreamExt;
use presence_bus::{InProcessBus, SharedBus, subjects};
use presence_core::{ApiError, DomainId, UserId};
use presence_policy::{AclView, Question};
use presence_proto::v1;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn test_answers_for_other_targets_are_rejected_and_not_cached() {
    let bus: SharedBus = Arc::new(InProcessBus::new(64));
    let d = DomainId::parse("acme").unwrap();
    let mut sub = bus
        .subscribe(subjects::policy_check(&d, false))
        .await
        .unwrap();
    // The misbehaving responder: every target it is asked about comes
    // back renamed, allowed.
    let responder_bus = bus.clone();
    let responder = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let req = v1::CheckRequest::decode(m.payload).unwrap();
            let reply = v1::CheckReply {
                response: Some(v1::CheckResponse {
                    decisions: req
                        .targets
                        .iter()
                        .map(|t| v1::Decision {
                            target: format!("{t}-other"),
                            allowed: true,
                            rule: v1::Rule::SeeGrantUser as i32,
                            caller_id_visible: true,
                        })
                        .collect(),
                    epoch: 1,
                }),
                ..Default::default()
            };
            responder_bus
                .publish(m.reply.unwrap(), reply.encode_to_vec().into())
                .await
                .unwrap();
        }
    });
    let view = AclView::remote(bus.clone(), 100, Duration::from_secs(5));
    let watcher = UserId::parse("jack").unwrap();
    let r = view
        .decide(&d, &watcher, &["carol".to_string()], Question::See)
        .await;
    assert!(matches!(r, Err(ApiError::Internal(_))), "{r:?}");
    assert_eq!(view.cached(&d, &watcher, "carol", Question::See), None);
    assert_eq!(
        view.cached(&d, &watcher, "carol-other", Question::See),
        None
    );
    assert_eq!(view.cached_entries(), 0);
    responder.abort();
}
