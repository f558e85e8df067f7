//! The replicated directory with real processes: three nats-servers in one
//! JetStream cluster and three presenced nodes with every role, the
//! directory log at three replicas. Writes go through every node; a
//! change through one node is read on the others; conflicting updates of
//! one record through three nodes have exactly one winner per round; a
//! node killed with -9 catches up when it comes back, and in the end every
//! node's store has the same digest. A read sent to another node with the
//! log sequence a write returned sees the write. A retried write (same idempotency
//! key) through another node gets the original answer, applied once; a
//! password changed through one node ends sessions issued by another; a
//! grant removed through one node revokes a watch open on another.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{acme, assert_equal_digests, bootstrap_token, node, user, wait_version};
use presence_client::connect;
use presence_proto::v1;
use presence_testkit::NatsCluster;
use std::time::Duration;
use tonic::Code;

async fn cc_admin(url: &str, token: &str) -> presence_client::PresenceClient {
    connect(url, Some(token)).await.unwrap()
}

async fn next_event(s: &mut tonic::Streaming<v1::WatchEvent>) -> v1::watch_event::Event {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("a watch event within 10 s")
        .unwrap()
        .expect("the stream goes on")
        .event
        .unwrap()
}

fn rename(id: &str, version: u64, name: String) -> v1::UpdateUserRequest {
    v1::UpdateUserRequest {
        domain: "acme".into(),
        id: id.into(),
        expected_version: version,
        profile: Some(v1::ProfileUpdate {
            first_name: Some(name),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_three_nodes_share_one_directory_through_the_log() {
    let mut nats = NatsCluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (a, url_a) = node(dir, "a", &nats.url(0), None);
    let key = dir.join("a/auth.key");
    let (b, url_b) = node(dir, "b", &nats.url(1), Some(&key));
    let (c, url_c) = node(dir, "c", &nats.urls(), Some(&key));
    let mut procs = vec![a, b, c];
    let token = bootstrap_token(&dir.join("a"));
    let mut ca = connect(&url_a, Some(&token)).await.unwrap();
    let mut cb = connect(&url_b, Some(&token)).await.unwrap();
    let mut cc = connect(&url_c, Some(&token)).await.unwrap();

    // A domain created through a; its first user through a too, the
    // others through b and c once they see the domain.
    ca.directory.create_domain(acme()).await.unwrap();
    ca.directory.create_user(user("1001")).await.unwrap();
    wait_version(&mut cb, "1001", 1).await;
    wait_version(&mut cc, "1001", 1).await;
    cb.directory.create_user(user("1002")).await.unwrap();
    cc.directory.create_user(user("1003")).await.unwrap();
    // Read-your-writes on the node that took the write.
    let got = cc
        .directory
        .get_user(v1::GetUserRequest {
            domain: "acme".into(),
            id: "1003".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.profile.unwrap().first_name, "1003");
    // A record created twice through two nodes: one wins.
    let twice = tokio::join!(
        ca.directory.create_user(user("1004")),
        cb.directory.create_user(user("1004"))
    );
    let wins = [twice.0.is_ok(), twice.1.is_ok()];
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{twice:?}");
    for r in [&twice.0, &twice.1] {
        if let Err(s) = r {
            assert_eq!(s.code(), Code::AlreadyExists, "{s:?}");
        }
    }

    // Read-your-writes on other nodes: a write's answer names its log
    // entry; a read sent with it to any node reflects the write.
    let mut last_seq = 0;
    for i in 0..20 {
        let id = format!("15{i:02}");
        let created = ca.directory.create_user(user(&id)).await.unwrap();
        let seq: u64 = created
            .metadata()
            .get("presence-log-sequence")
            .expect("a write names its log entry")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(seq > last_seq, "log sequences grow: {seq} after {last_seq}");
        last_seq = seq;
        let mut read = tonic::Request::new(v1::GetUserRequest {
            domain: "acme".into(),
            id: id.clone(),
        });
        read.metadata_mut()
            .insert("presence-min-sequence", seq.to_string().parse().unwrap());
        let other = if i % 2 == 0 { &mut cb } else { &mut cc };
        let got = other.directory.get_user(read).await.unwrap();
        assert_eq!(got.get_ref().id, id);
        let seen: u64 = got
            .metadata()
            .get("presence-log-sequence")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(seen >= seq);
    }
    for (value, what) in [("12x", "malformed"), ("999999999", "past the end")] {
        let mut read = tonic::Request::new(v1::GetUserRequest {
            domain: "acme".into(),
            id: "1001".into(),
        });
        read.metadata_mut()
            .insert("presence-min-sequence", value.parse().unwrap());
        let e = cb.directory.get_user(read).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
    }

    // Conflicting updates of one record through three nodes, each with
    // the version all three saw: exactly one winner per round.
    let mut version = wait_version(&mut ca, "1001", 1).await.version;
    for round in 0..8 {
        wait_version(&mut cb, "1001", version).await;
        wait_version(&mut cc, "1001", version).await;
        let (ra, rb, rc) = tokio::join!(
            ca.directory
                .update_user(rename("1001", version, format!("a{round}"))),
            cb.directory
                .update_user(rename("1001", version, format!("b{round}"))),
            cc.directory
                .update_user(rename("1001", version, format!("c{round}"))),
        );
        let results = [ra, rb, rc];
        let winners: Vec<&v1::User> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|u| u.get_ref()))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(s) = r {
                assert_eq!(s.code(), Code::Aborted, "round {round}: {s:?}");
            }
        }
        let winner = winners[0].clone();
        assert_eq!(winner.version, version + 1);
        version = winner.version;
        // Every node ends with the winner's name.
        for cl in [&mut ca, &mut cb, &mut cc] {
            let u = wait_version(cl, "1001", version).await;
            assert_eq!(u.profile, winner.profile, "round {round}");
        }
    }

    // A retried request (same idempotency key) through another node is
    // answered as the first and applied once.
    let keyed = |id: &str| {
        let mut r = tonic::Request::new(user(id));
        r.metadata_mut()
            .insert("idempotency-key", "create-2001".parse().unwrap());
        r
    };
    let first = ca.directory.create_user(keyed("2001")).await.unwrap();
    let retried = cb.directory.create_user(keyed("2001")).await.unwrap();
    assert_eq!(first.get_ref(), retried.get_ref());
    // Without the key the same request is a second create.
    let again = cc.directory.create_user(user("2001")).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);

    // A password set through a: a login on b works once b applied it;
    // a second change through a ends the session b issued and refuses
    // the old password on b.
    let set_pw = |pw: &str| v1::UpdateUserRequest {
        domain: "acme".into(),
        id: "1002".into(),
        password: Some(pw.into()),
        ..Default::default()
    };
    let login = |pw: &str| v1::LoginRequest {
        domain: "acme".into(),
        user: "1002".into(),
        password: pw.into(),
        new_password: None,
    };
    let v = ca
        .directory
        .update_user(set_pw("first secret pw"))
        .await
        .unwrap()
        .into_inner()
        .version;
    wait_version(&mut cb, "1002", v).await;
    let session = cb
        .auth
        .login(login("first secret pw"))
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut as_user = connect(&url_b, Some(&session)).await.unwrap();
    let me = v1::GetUserRequest {
        domain: "acme".into(),
        id: "1002".into(),
    };
    as_user.directory.get_user(me.clone()).await.unwrap();
    let v = ca
        .directory
        .update_user(set_pw("second secret pw"))
        .await
        .unwrap()
        .into_inner()
        .version;
    wait_version(&mut cb, "1002", v).await;
    let ended = as_user.directory.get_user(me).await.unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    let old = cb.auth.login(login("first secret pw")).await.unwrap_err();
    assert_eq!(old.code(), Code::Unauthenticated, "{old:?}");
    wait_version(&mut cc, "1002", v).await;
    cc.auth.login(login("second secret pw")).await.unwrap();

    // A grant removed through node a revokes a watch open on node c. The
    // grant is given through a too; c's watch waits for it with the
    // log sequence a's answer named.
    ca.policy
        .update_presence_settings(v1::UpdatePresenceSettingsRequest {
            domain: "acme".into(),
            user: "1001".into(),
            visibility: Some(v1::Visibility::PermittedUsers as i32),
            ..Default::default()
        })
        .await
        .unwrap();
    let see_1002 = || {
        Some(v1::Grantee {
            kind: Some(v1::grantee::Kind::User("1002".into())),
        })
    };
    let granted = ca
        .policy
        .add_grant(v1::AddGrantRequest {
            domain: "acme".into(),
            target: "1001".into(),
            kind: v1::GrantKind::See as i32,
            grantee: see_1002(),
        })
        .await
        .unwrap();
    let seq = granted
        .metadata()
        .get("presence-log-sequence")
        .unwrap()
        .clone();
    let session = cc
        .auth
        .login(login("second secret pw"))
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut watcher = connect(&url_c, Some(&session)).await.unwrap();
    let mut open = tonic::Request::new(v1::WatchRequest {
        domain: "acme".into(),
        selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
            targets: vec!["1001".into()],
        })),
        heartbeat_seconds: 1,
        ..Default::default()
    });
    open.metadata_mut().insert("presence-min-sequence", seq);
    let mut stream = watcher.presence.watch(open).await.unwrap().into_inner();
    use v1::watch_event::Event as E;
    loop {
        match next_event(&mut stream).await {
            E::SnapshotDone(_) => break,
            E::Denied(d) => panic!("the grant through a is not seen on c: {d:?}"),
            _ => {}
        }
    }
    ca.policy
        .remove_grant(v1::RemoveGrantRequest {
            domain: "acme".into(),
            target: "1001".into(),
            kind: v1::GrantKind::See as i32,
            grantee: see_1002(),
        })
        .await
        .unwrap();
    loop {
        match next_event(&mut stream).await {
            E::Revoked(r) => {
                assert_eq!(r.target, "1001");
                break;
            }
            E::Heartbeat(_) | E::State(_) => {}
            other => panic!("expected the revocation, got {other:?}"),
        }
    }
    drop(stream);

    // A token issued through a and revoked through b is refused by c once
    // c has applied the revocation (read-your-writes: no waiting game).
    let issued = ca
        .auth
        .issue_token(v1::IssueTokenRequest {
            subject: Some(v1::issue_token_request::Subject::Service(
                v1::ServicePrincipal {
                    name: "gw".into(),
                    domains: vec!["acme".into()],
                    rights: vec!["directory.read".into()],
                },
            )),
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner();
    let revoked = cb
        .auth
        .revoke_token(v1::RevokeTokenRequest {
            token: issued.token.clone(),
            token_id: String::new(),
            expires_at_ms: 0,
        })
        .await
        .unwrap();
    let seq = revoked
        .metadata()
        .get("presence-log-sequence")
        .unwrap()
        .clone();
    let mut gw_c = connect(&url_c, Some(&issued.token)).await.unwrap();
    let mut who = tonic::Request::new(v1::WhoAmIRequest {});
    who.metadata_mut().insert("presence-min-sequence", seq);
    let e = gw_c.auth.who_am_i(who).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::Unauthenticated, "token revoked")
    );

    // A signing key added through a signs tokens issued by b (once b
    // applied it), which c verifies; retired through c, its tokens are
    // refused by a.
    let added = ca
        .auth
        .add_signing_key(v1::AddSigningKeyRequest {})
        .await
        .unwrap();
    let after = |seq: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>| {
        let mut r = tonic::Request::new(v1::IssueTokenRequest {
            subject: Some(v1::issue_token_request::Subject::Service(
                v1::ServicePrincipal {
                    name: "gw2".into(),
                    domains: vec!["acme".into()],
                    rights: vec!["directory.read".into()],
                },
            )),
            ttl_seconds: 600,
        });
        r.metadata_mut()
            .insert("presence-min-sequence", seq.clone());
        r
    };
    let seq = added
        .metadata()
        .get("presence-log-sequence")
        .unwrap()
        .clone();
    let ring_key = added.into_inner();
    let by_b = cb.auth.issue_token(after(&seq)).await.unwrap().into_inner();
    assert_eq!(
        presence_auth::token::key_id_of(&by_b.token),
        Some(ring_key.id.as_str())
    );
    let mut gw2_c = connect(&url_c, Some(&by_b.token)).await.unwrap();
    gw2_c.auth.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    // The token that retires it must outlive it: signed by the deployment
    // key, which stays active.
    let retired = cc_admin(&url_c, &token)
        .await
        .auth
        .retire_signing_key(v1::RetireSigningKeyRequest {
            id: ring_key.id.clone(),
        })
        .await
        .unwrap();
    let seq = retired
        .metadata()
        .get("presence-log-sequence")
        .unwrap()
        .clone();
    let mut gw2_a = connect(&url_a, Some(&by_b.token)).await.unwrap();
    let mut who = tonic::Request::new(v1::WhoAmIRequest {});
    who.metadata_mut().insert("presence-min-sequence", seq);
    let e = gw2_a.auth.who_am_i(who).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("retired"), "{}", e.message());

    // Node c killed with -9; writes go on through a and b; c comes back
    // and catches up before it serves.
    procs[2].0.kill().unwrap();
    procs[2].0.wait().unwrap();
    for i in 0..20 {
        let cl = if i % 2 == 0 { &mut ca } else { &mut cb };
        cl.directory
            .create_user(user(&format!("30{i:02}")))
            .await
            .unwrap();
    }
    std::fs::remove_file(dir.join("c.ready")).ok();
    let (c, url_c) = node(dir, "c", &nats.urls(), Some(&key));
    procs[2] = c;
    let mut cc = connect(&url_c, Some(&token)).await.unwrap();
    let back = cc
        .directory
        .get_user(v1::GetUserRequest {
            domain: "acme".into(),
            id: "3019".into(),
        })
        .await
        .unwrap();
    assert_eq!(back.get_ref().id, "3019", "caught up before serving");

    // The stream survives one NATS server's death: writes resume.
    nats.kill(2);
    ca.directory.create_user(user("4001")).await.unwrap();
    wait_version(&mut cb, "4001", 1).await;
    nats.restart(2);

    // A node with an empty data dir joins and serves the same data.
    let (d, url_d) = node(dir, "d", &nats.url(2), Some(&key));
    let mut cd = connect(&url_d, Some(&token)).await.unwrap();
    wait_version(&mut cd, "4001", 1).await;
    procs.push(d);

    // Every node applied the same log: equal store digests.
    let last = wait_version(&mut ca, "1001", version).await;
    for cl in [&mut cb, &mut cc, &mut cd] {
        wait_version(cl, "4001", 1).await;
        assert_eq!(wait_version(cl, "1001", version).await, last);
    }
    for p in &mut procs {
        p.terminate(Duration::from_secs(10));
    }
    assert_equal_digests(dir, &["a", "b", "c", "d"]);
}
