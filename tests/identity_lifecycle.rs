//! Tokens follow identities, not ids: the lifecycle table.
//!
//! Each row takes a token of one kind (user session, phone, service),
//! changes the identity it stands for through the public API, and says
//! whether the token still works afterwards. Ids repeat (a user deleted
//! and created again keeps its extension, a MAC comes back, a domain id
//! is taken by a new tenant); a token must never follow the id into the
//! new identity, while changes that keep the identity keep the token.

#![allow(clippy::unwrap_used)]

use presence_client::PresenceClient;
use presence_proto::v1::{self, Scope};
use presence_tests::{
    NatsServer, NewUser, Sandbox, assert_code, domain, phone_token, service_token, site, user,
};
use tonic::Code;

const PW: &str = "correct horse battery";
const MAC: &str = "0004f2000042";

/// The identities a row starts from: domain `reuse` with site hq, users
/// `dep` (basic user with a password) and `other`, and dep's phone.
async fn setup(sb: &Sandbox) {
    let mut a = sb.admin.clone();
    domain(&mut a, "reuse").await;
    site(&mut a, "reuse", "hq").await;
    for id in ["dep", "other"] {
        user(
            &mut a,
            "reuse",
            id,
            NewUser {
                first: id,
                email: "x@reuse.example",
                site: "hq",
                scope: Some(Scope::BasicUser),
                password: Some(PW),
                ..Default::default()
            },
        )
        .await;
    }
    add_phone(&mut a, "dep").await;
}

async fn add_phone(a: &mut PresenceClient, owner: &str) {
    a.directory
        .add_phone(v1::AddPhoneRequest {
            domain: "reuse".into(),
            user: owner.into(),
            mac: MAC.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn move_phone(a: &mut PresenceClient, to: &str) {
    a.directory
        .update_phone(v1::UpdatePhoneRequest {
            domain: "reuse".into(),
            mac: MAC.into(),
            user: Some(to.into()),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn create_dep(a: &mut PresenceClient, scope: Scope) {
    user(
        a,
        "reuse",
        "dep",
        NewUser {
            first: "new hire",
            site: "hq",
            scope: Some(scope),
            password: Some(PW),
            ..Default::default()
        },
    )
    .await;
}

async fn delete_user(a: &mut PresenceClient, id: &str) {
    a.directory
        .delete_user(v1::DeleteUserRequest {
            domain: "reuse".into(),
            id: id.into(),
            expected_version: 0,
        })
        .await
        .unwrap();
}

/// Deletes domain `reuse` with everything in it and lets a new tenant
/// create it again, with an office manager `dep`.
async fn recreate_domain(a: &mut PresenceClient) {
    a.directory
        .delete_domain(v1::DeleteDomainRequest {
            id: "reuse".into(),
            force: true,
            expected_version: 0,
        })
        .await
        .unwrap();
    domain(a, "reuse").await;
    site(a, "reuse", "hq").await;
    create_dep(a, Scope::OfficeManager).await;
}

/// Applies one lifecycle action through the admin client.
async fn act(sb: &Sandbox, action: &str) {
    let mut a = sb.admin.clone();
    match action {
        "recreate user with a higher scope" => {
            delete_user(&mut a, "dep").await;
            create_dep(&mut a, Scope::OfficeManager).await;
        }
        "recreate domain" => recreate_domain(&mut a).await,
        "delete and re-add phone" => {
            a.directory
                .delete_phone(v1::DeletePhoneRequest {
                    domain: "reuse".into(),
                    mac: MAC.into(),
                    expected_version: 0,
                })
                .await
                .unwrap();
            add_phone(&mut a, "dep").await;
        }
        "move phone away and back" => {
            move_phone(&mut a, "other").await;
            move_phone(&mut a, "dep").await;
        }
        "recreate owner and re-add phone" => {
            delete_user(&mut a, "dep").await;
            create_dep(&mut a, Scope::BasicUser).await;
            add_phone(&mut a, "dep").await;
        }
        "edit profile" => {
            a.directory
                .update_user(v1::UpdateUserRequest {
                    domain: "reuse".into(),
                    id: "dep".into(),
                    profile: Some(v1::ProfileUpdate {
                        first_name: Some("renamed".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        "edit phone label" => {
            a.directory
                .update_phone(v1::UpdatePhoneRequest {
                    domain: "reuse".into(),
                    mac: MAC.into(),
                    label: Some("desk".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        "edit domain name" => {
            a.directory
                .update_domain(v1::UpdateDomainRequest {
                    id: "reuse".into(),
                    name: Some("Reuse Ltd".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        other => panic!("unknown action {other}"),
    }
}

/// Returns a token of `kind` for the identities of [`setup`].
async fn token(sb: &Sandbox, kind: &str) -> String {
    let mut a = sb.admin.clone();
    match kind {
        "user" => sb.login_token("reuse", "dep", PW).await,
        "phone" => phone_token(&mut a, "reuse", MAC).await,
        "service" => {
            service_token(
                &mut a,
                "reuse-pbx",
                &["reuse"],
                &["directory.read", "tokens.issue"],
            )
            .await
        }
        other => panic!("unknown token kind {other}"),
    }
}

#[rustfmt::skip]
const LIFECYCLE: &[(&str, &str, &str)] = &[
    // token      action                                 token after
    ("user",    "recreate user with a higher scope",   "UA"),
    ("user",    "recreate domain",                      "UA"),
    ("user",    "edit profile",                         "ok"),
    ("phone",   "delete and re-add phone",              "UA"),
    ("phone",   "move phone away and back",             "UA"),
    ("phone",   "recreate owner and re-add phone",      "UA"),
    ("phone",   "recreate domain",                      "UA"),
    ("phone",   "edit phone label",                     "ok"),
    ("service", "recreate domain",                      "UA"),
    ("service", "edit domain name",                     "ok"),
];

#[tokio::test]
async fn test_tokens_follow_identities_not_ids() {
    let mut failures = Vec::new();
    for (kind, action, want) in LIFECYCLE {
        let sb = Sandbox::start().await;
        setup(&sb).await;
        let t = token(&sb, kind).await;
        let mut c = sb.client(Some(&t)).await;
        c.auth
            .who_am_i(v1::WhoAmIRequest {})
            .await
            .unwrap_or_else(|e| panic!("{kind} token before {action}: {e}"));
        act(&sb, action).await;
        let got = match c.auth.who_am_i(v1::WhoAmIRequest {}).await {
            Ok(_) => "ok".to_string(),
            Err(s) if s.code() == Code::Unauthenticated => "UA".to_string(),
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
        };
        if got != *want {
            failures.push(format!(
                "{kind} token after {action}: expected {want}, got {got}"
            ));
        }
        sb.stop().await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The probe's account takeover, step by step: a deleted basic user's
/// session must not become the office manager created under its id,
/// whatever the session epochs of the two accounts.
#[tokio::test]
async fn test_deleted_users_token_does_not_become_the_new_account() {
    let sb = Sandbox::start().await;
    setup(&sb).await;
    let mut a = sb.admin.clone();
    // Bring the old account's epoch to 3 (two password changes).
    let mut t = sb.login_token("reuse", "dep", PW).await;
    for pw in ["second passphrase", "third passphrase"] {
        let mut c = sb.client(Some(&t)).await;
        let old = if pw == "second passphrase" {
            PW
        } else {
            "second passphrase"
        };
        t = c
            .auth
            .change_password(v1::ChangePasswordRequest {
                old_password: old.into(),
                new_password: pw.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token;
    }
    let mut old = sb.client(Some(&t)).await;
    old.auth.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    delete_user(&mut a, "dep").await;
    assert_code(
        old.auth.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
    );
    // The new office manager reaches epochs 1, 2, 3 and 4: the old token
    // is refused at each of them.
    create_dep(&mut a, Scope::OfficeManager).await;
    for epoch in 1..=4 {
        assert_code(
            old.auth.who_am_i(v1::WhoAmIRequest {}).await,
            Code::Unauthenticated,
        );
        assert_code(
            old.directory
                .create_user(presence_tests::req_user(
                    "reuse",
                    &format!("evil{epoch}"),
                    NewUser {
                        scope: Some(Scope::OfficeManager),
                        password: Some(PW),
                        ..Default::default()
                    },
                ))
                .await,
            Code::Unauthenticated,
        );
        assert_code(
            old.directory
                .send_welcome(v1::SendWelcomeRequest {
                    domain: "reuse".into(),
                    user: "other".into(),
                    ttl_seconds: 0,
                })
                .await,
            Code::Unauthenticated,
        );
        // Next epoch of the new account: an admin password change.
        a.directory
            .update_user(v1::UpdateUserRequest {
                domain: "reuse".into(),
                id: "dep".into(),
                password: Some(format!("new hire passphrase {epoch}")),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // Nothing the old token tried was done.
    for epoch in 1..=4 {
        assert_code(
            a.directory
                .get_user(v1::GetUserRequest {
                    domain: "reuse".into(),
                    id: format!("evil{epoch}"),
                })
                .await,
            Code::NotFound,
        );
    }
}

/// A service token of a deleted domain lists nothing of the new tenant
/// that took the id, and cannot get its office manager's welcome token.
#[tokio::test]
async fn test_service_token_dies_with_its_domain() {
    let sb = Sandbox::start().await;
    setup(&sb).await;
    let mut a = sb.admin.clone();
    domain(&mut a, "keep").await;
    let t = service_token(
        &mut a,
        "pbx",
        &["reuse", "keep"],
        &["directory.read", "directory.write"],
    )
    .await;
    let mut old = sb.client(Some(&t)).await;
    recreate_domain(&mut a).await;
    assert_code(
        old.directory
            .list_users(v1::ListUsersRequest {
                domain: "reuse".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        old.directory
            .send_welcome(v1::SendWelcomeRequest {
                domain: "reuse".into(),
                user: "dep".into(),
                ttl_seconds: 0,
            })
            .await,
        Code::NotFound,
    );
    // Its rights in the domain that was not touched remain.
    old.directory
        .list_users(v1::ListUsersRequest {
            domain: "keep".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Tokens cannot be issued for a domain that does not exist (it
    // would pass to whoever creates it), nor under the bootstrap name.
    assert_code(
        a.auth
            .issue_token(v1::IssueTokenRequest {
                subject: Some(v1::issue_token_request::Subject::Service(
                    v1::ServicePrincipal {
                        name: "early".into(),
                        domains: vec!["future".into()],
                        rights: vec!["directory.read".into()],
                    },
                )),
                ttl_seconds: 60,
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        a.auth
            .issue_token(v1::IssueTokenRequest {
                subject: Some(v1::issue_token_request::Subject::Service(
                    v1::ServicePrincipal {
                        name: "bootstrap-admin".into(),
                        domains: vec!["keep".into()],
                        rights: vec!["directory.read".into()],
                    },
                )),
                ttl_seconds: 60,
            })
            .await,
        Code::InvalidArgument,
    );
    // A single-domain token of a deleted domain ends altogether.
    let single = service_token(&mut a, "single", &["keep"], &["directory.read"]).await;
    a.directory
        .delete_domain(v1::DeleteDomainRequest {
            id: "keep".into(),
            force: true,
            expected_version: 0,
        })
        .await
        .unwrap();
    let mut s = sb.client(Some(&single)).await;
    assert_code(
        s.auth.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
    );
}

/// A phone token is issued for the phone's owner only: asking for
/// another user is refused instead of binding to the real owner.
#[tokio::test]
async fn test_phone_token_for_another_user_is_refused() {
    let sb = Sandbox::start().await;
    setup(&sb).await;
    let mut a = sb.admin.clone();
    let r = a
        .auth
        .issue_token(v1::IssueTokenRequest {
            subject: Some(v1::issue_token_request::Subject::Phone(
                v1::PhonePrincipal {
                    domain: "reuse".into(),
                    user: "other".into(),
                    mac: MAC.into(),
                },
            )),
            ttl_seconds: 60,
        })
        .await;
    assert_code(r, Code::InvalidArgument);
    a.auth
        .issue_token(v1::IssueTokenRequest {
            subject: Some(v1::issue_token_request::Subject::Phone(
                v1::PhonePrincipal {
                    domain: "reuse".into(),
                    user: "dep".into(),
                    mac: MAC.into(),
                },
            )),
            ttl_seconds: 60,
        })
        .await
        .unwrap();
}

/// A fanout-only node replicates the directory like every node on NATS:
/// a gateway token of a deleted domain does not watch or publish for the
/// tenant that created the domain again, there as anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_fanout_only_node_refuses_service_tokens_of_a_recreated_domain() {
    let nats = NatsServer::start();
    let a = Sandbox::start_with(nats.url()).await;
    let key = a.data_dir().join("auth.key");
    let b = Sandbox::start_tuned_with(nats.url(), |c| {
        c.roles = vec!["fanout".into()];
        c.auth_key_file = key.display().to_string();
    })
    .await;
    setup(&a).await;
    let mut admin = a.admin.clone();
    let gw = service_token(
        &mut admin,
        "gateway",
        &["reuse"],
        &["presence.watch", "presence.publish"],
    )
    .await;
    let watch = || v1::WatchRequest {
        domain: "reuse".into(),
        watcher: "dep".into(),
        selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
            targets: vec!["dep".into()],
        })),
        ..Default::default()
    };
    let status = || v1::PublishRequest {
        events: vec![v1::DeviceEvent {
            domain: "reuse".into(),
            user: "dep".into(),
            device: "pbx-1".into(),
            sequence: 1,
            at_ms: 0,
            kind: Some(v1::device_event::Kind::ManualStatus(v1::ManualStatus {
                status: v1::UserStatus::Busy as i32,
                message: String::new(),
            })),
        }],
    };
    let mut on_b = b.client(Some(&gw)).await;
    on_b.presence.watch(watch()).await.unwrap();
    recreate_domain(&mut admin).await;
    // Read-your-writes on b: its calls wait until it applied a's writes.
    let seq = admin
        .directory
        .get_domain(v1::GetDomainRequest { id: "reuse".into() })
        .await
        .unwrap()
        .metadata()
        .get("presence-log-sequence")
        .cloned()
        .unwrap();
    fn after<T>(
        seq: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        msg: T,
    ) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("presence-min-sequence", seq.clone());
        r
    }
    let err = assert_code(
        on_b.presence.watch(after(&seq, watch())).await.map(drop),
        Code::Unauthenticated,
    );
    assert!(err.contains("deleted"), "{err}");
    assert_code(
        on_b.presence.publish(after(&seq, status())).await.map(drop),
        Code::Unauthenticated,
    );
    // A token issued for the new tenant works on the same node.
    let fresh = service_token(&mut admin, "gateway", &["reuse"], &["presence.watch"]).await;
    let mut fresh_b = b.client(Some(&fresh)).await;
    fresh_b.presence.watch(watch()).await.unwrap();
    // A token revoked through a is refused by the fanout-only node.
    let revoked = admin
        .auth
        .revoke_token(v1::RevokeTokenRequest {
            token: fresh.clone(),
            token_id: String::new(),
            expires_at_ms: 0,
        })
        .await
        .unwrap();
    let seq = revoked
        .metadata()
        .get("presence-log-sequence")
        .cloned()
        .unwrap();
    let err = assert_code(
        fresh_b.presence.watch(after(&seq, watch())).await.map(drop),
        Code::Unauthenticated,
    );
    assert!(err.contains("revoked"), "{err}");
    b.stop().await;
    a.stop().await;
}
