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

/// A view asks for answers at least as new as the newest ACL event it
/// applied; a policy node whose store is behind that epoch does not
/// answer from its stale store but says it is unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_checks_carry_the_askers_epoch_and_a_node_behind_it_does_not_answer() {
    let bus: SharedBus = Arc::new(InProcessBus::new(64));
    let d = DomainId::parse("acme").unwrap();
    let watcher = UserId::parse("jack").unwrap();
    let view = AclView::remote(bus.clone(), 100, Duration::from_secs(10));
    view.apply(&v1::AclEvent {
        domain: "acme".into(),
        epoch: 7,
        reason: "grant removed".into(),
        ..Default::default()
    });

    // What the view sends.
    let mut sub = bus
        .subscribe(subjects::policy_check(&d, false))
        .await
        .unwrap();
    let asking = {
        let (view, d, watcher) = (view.clone(), d.clone(), watcher.clone());
        tokio::spawn(async move {
            view.decide(&d, &watcher, &["carol".to_string()], Question::See)
                .await
        })
    };
    let m = sub.next().await.unwrap();
    let req = v1::CheckRequest::decode(m.payload.clone()).unwrap();
    assert_eq!(req.min_epoch, 7);
    drop(sub);
    asking.abort();

    // A real responder whose store is at epoch 0 (this domain never
    // changed there): a check needing epoch 7 is refused, one needing
    // nothing is answered from the store.
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(presence_directory::Store::open(tmp.path()).unwrap());
    let sub = presence_policy::remote::subscribe(&bus).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let responder = tokio::spawn(presence_policy::remote::serve_checks(
        store,
        bus.clone(),
        sub,
        shutdown.clone(),
    ));
    let carol = ["carol".to_string()];
    let ask = |min_epoch| {
        presence_policy::remote::ask(
            &bus,
            &d,
            &watcher,
            &carol,
            Question::See,
            min_epoch,
            Duration::from_secs(10),
        )
    };
    let behind = ask(7).await.unwrap_err();
    assert!(matches!(behind, ApiError::Unavailable(_)), "{behind:?}");
    let current = ask(0).await.unwrap_err();
    assert!(
        !matches!(current, ApiError::Unavailable(_)),
        "answered from the store (the domain does not exist there): {current:?}"
    );
    shutdown.cancel();
    responder.await.unwrap();
}
