//! Login, welcome, forced reset, user reset, password change, token
//! issuance and session invalidation, end to end over gRPC.

#![allow(clippy::unwrap_used)]

use presence_proto::v1::{self, Scope};
use presence_tests::{NewUser, Sandbox, assert_code, domain, site, user};
use tonic::Code;

const PW: &str = "correct horse battery";

fn login(d: &str, u: &str, pw: &str, new: Option<&str>) -> v1::LoginRequest {
    v1::LoginRequest {
        domain: d.into(),
        user: u.into(),
        password: pw.into(),
        new_password: new.map(str::to_owned),
    }
}

async fn setup() -> Sandbox {
    let sb = Sandbox::start().await;
    let mut a = sb.admin.clone();
    domain(&mut a, "acme").await;
    site(&mut a, "acme", "hq").await;
    user(
        &mut a,
        "acme",
        "1001",
        NewUser {
            first: "Jack",
            email: "jack@acme.com",
            site: "hq",
            password: Some(PW),
            ..Default::default()
        },
    )
    .await;
    user(
        &mut a,
        "acme",
        "1002",
        NewUser {
            first: "Jill",
            email: "jill@acme.com",
            site: "hq",
            ..Default::default()
        },
    )
    .await;
    user(
        &mut a,
        "acme",
        "1003",
        NewUser {
            scope: Some(Scope::SimpleUser),
            password: Some(PW),
            ..Default::default()
        },
    )
    .await;
    sb
}

#[tokio::test]
async fn test_login_and_bad_credentials() {
    let sb = setup().await;
    let mut anon = sb.client(None).await;
    let r = anon
        .auth
        .login(login("acme", "1001", PW, None))
        .await
        .unwrap()
        .into_inner();
    assert!(r.expires_at_ms > 0);
    let mut me = sb.client(Some(&r.token)).await;
    let who = me
        .auth
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    match who.principal.and_then(|p| p.kind) {
        Some(v1::principal::Kind::User(u)) => assert_eq!(
            (u.domain.as_str(), u.user.as_str(), u.scope),
            ("acme", "1001", Scope::BasicUser as i32)
        ),
        other => panic!("unexpected principal {other:?}"),
    }
    // Wrong password, unknown user, user without password, unknown domain,
    // malformed ids: all the same answer.
    for req in [
        login("acme", "1001", "wrong password", None),
        login("acme", "9999", PW, None),
        login("acme", "1002", PW, None),
        login("nosuch", "1001", PW, None),
        login("Bad.Domain", "1001", PW, None),
    ] {
        let m = assert_code(anon.auth.login(req).await, Code::Unauthenticated);
        assert_eq!(m, "invalid credentials");
    }
    // A simple user has no portal access, even with the right password.
    assert_code(
        anon.auth.login(login("acme", "1003", PW, None)).await,
        Code::PermissionDenied,
    );
    // Requests without a token or with a bad one.
    let m = assert_code(
        anon.directory
            .list_users(v1::ListUsersRequest {
                domain: "acme".into(),
                ..Default::default()
            })
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(m, "missing bearer token");
    let mut forged = sb.client(Some("pst1.eyJ4IjoxfQ.AAAA")).await;
    assert_code(
        forged.auth.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
    );
    let mut garbage = sb.client(Some("garbage")).await;
    assert_code(
        garbage
            .directory
            .get_domain(v1::GetDomainRequest { id: "acme".into() })
            .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn test_welcome_flow_is_single_use() {
    let sb = setup().await;
    let mut a = sb.admin.clone();
    let w = a
        .directory
        .send_welcome(v1::SendWelcomeRequest {
            domain: "acme".into(),
            user: "1002".into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(w.welcome_token.len() >= 40);
    let mut anon = sb.client(None).await;
    let bad = v1::AcceptWelcomeRequest {
        welcome_token: w.welcome_token.clone(),
        password: "short".into(),
        voicemail_pin: None,
    };
    assert_code(anon.auth.accept_welcome(bad).await, Code::InvalidArgument);
    let ok = v1::AcceptWelcomeRequest {
        welcome_token: w.welcome_token.clone(),
        password: PW.into(),
        voicemail_pin: Some("2468".into()),
    };
    let r = anon
        .auth
        .accept_welcome(ok.clone())
        .await
        .unwrap()
        .into_inner();
    let mut jill = sb.client(Some(&r.token)).await;
    jill.auth.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    let o = a
        .directory
        .get_user_options(v1::GetUserOptionsRequest {
            domain: "acme".into(),
            user: "1002".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(o.voicemail.unwrap().pin_set);
    // Single use.
    let m = assert_code(anon.auth.accept_welcome(ok).await, Code::Unauthenticated);
    assert_eq!(m, "invalid or expired welcome token");
    anon.auth
        .login(login("acme", "1002", PW, None))
        .await
        .unwrap();
    // A second welcome replaces the first.
    let w1 = a
        .directory
        .send_welcome(v1::SendWelcomeRequest {
            domain: "acme".into(),
            user: "1001".into(),
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    let w2 = a
        .directory
        .send_welcome(v1::SendWelcomeRequest {
            domain: "acme".into(),
            user: "1001".into(),
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    let use1 = v1::AcceptWelcomeRequest {
        welcome_token: w1.welcome_token,
        password: PW.into(),
        voicemail_pin: None,
    };
    assert_code(anon.auth.accept_welcome(use1).await, Code::Unauthenticated);
    let use2 = v1::AcceptWelcomeRequest {
        welcome_token: w2.welcome_token,
        password: PW.into(),
        voicemail_pin: None,
    };
    anon.auth.accept_welcome(use2).await.unwrap();
    // Deleting the user kills a pending welcome.
    let w3 = a
        .directory
        .send_welcome(v1::SendWelcomeRequest {
            domain: "acme".into(),
            user: "1001".into(),
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    a.directory
        .delete_user(v1::DeleteUserRequest {
            domain: "acme".into(),
            id: "1001".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    let use3 = v1::AcceptWelcomeRequest {
        welcome_token: w3.welcome_token,
        password: PW.into(),
        voicemail_pin: None,
    };
    assert_code(anon.auth.accept_welcome(use3).await, Code::Unauthenticated);
}

#[tokio::test]
async fn test_force_reset_and_reset_end_sessions() {
    let sb = setup().await;
    let mut a = sb.admin.clone();
    let mut jack = sb.login("acme", "1001", PW).await;
    jack.auth.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    let u = a
        .directory
        .force_password_reset(v1::ForcePasswordResetRequest {
            domain: "acme".into(),
            user: "1001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(u.password_reset_required);
    let m = assert_code(
        jack.auth.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
    );
    assert_eq!(m, "session ended; log in again");
    let mut anon = sb.client(None).await;
    assert_code(
        anon.auth.login(login("acme", "1001", PW, None)).await,
        Code::FailedPrecondition,
    );
    assert_code(
        anon.auth
            .login(login("acme", "1001", PW, Some("short")))
            .await,
        Code::InvalidArgument,
    );
    let new_pw = "a brand new passphrase";
    let r = anon
        .auth
        .login(login("acme", "1001", PW, Some(new_pw)))
        .await
        .unwrap()
        .into_inner();
    let mut jack = sb.client(Some(&r.token)).await;
    jack.auth.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    assert_code(
        anon.auth.login(login("acme", "1001", PW, None)).await,
        Code::Unauthenticated,
    );
    let u = a
        .directory
        .get_user(v1::GetUserRequest {
            domain: "acme".into(),
            id: "1001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!u.password_reset_required);

    // Reset: options back to defaults and sessions ended.
    a.directory
        .update_voicemail(v1::UpdateVoicemailRequest {
            domain: "acme".into(),
            user: "1001".into(),
            pin: Some("1111".into()),
            greeting: Some("hi".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    a.directory
        .reset_user(v1::ResetUserRequest {
            domain: "acme".into(),
            user: "1001".into(),
        })
        .await
        .unwrap();
    assert_code(
        jack.auth.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
    );
    let o = a
        .directory
        .get_user_options(v1::GetUserOptionsRequest {
            domain: "acme".into(),
            user: "1001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let vm = o.voicemail.unwrap();
    assert!(!vm.pin_set && vm.greeting.is_empty() && o.answering_rules.is_empty());
    // The password still works after a reset.
    anon.auth
        .login(login("acme", "1001", new_pw, None))
        .await
        .unwrap();
}

#[tokio::test]
async fn test_scope_change_takes_effect_on_existing_tokens() {
    let sb = setup().await;
    let mut a = sb.admin.clone();
    let mut jack = sb.login("acme", "1001", PW).await;
    assert_code(
        jack.directory
            .create_site(v1::CreateSiteRequest {
                domain: "acme".into(),
                id: "x".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    a.directory
        .update_user(v1::UpdateUserRequest {
            domain: "acme".into(),
            id: "1001".into(),
            scope: Some(Scope::OfficeManager as i32),
            ..Default::default()
        })
        .await
        .unwrap();
    jack.directory
        .create_site(v1::CreateSiteRequest {
            domain: "acme".into(),
            id: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    a.directory
        .delete_user(v1::DeleteUserRequest {
            domain: "acme".into(),
            id: "1001".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    assert_code(
        jack.auth.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn test_change_password_and_issue_tokens() {
    let sb = setup().await;
    let mut a = sb.admin.clone();
    let mut jack = sb.login("acme", "1001", PW).await;
    let mut jack2 = sb.login("acme", "1001", PW).await;
    assert_code(
        jack.auth
            .change_password(v1::ChangePasswordRequest {
                old_password: "nope nope".into(),
                new_password: "another passphrase".into(),
            })
            .await,
        Code::Unauthenticated,
    );
    let r = jack
        .auth
        .change_password(v1::ChangePasswordRequest {
            old_password: PW.into(),
            new_password: "another passphrase".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_code(
        jack2.auth.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
    );
    let mut jack3 = sb.client(Some(&r.token)).await;
    jack3.auth.who_am_i(v1::WhoAmIRequest {}).await.unwrap();

    // A service token with a subset of rights; it cannot escalate.
    let svc = |rights: &[&str], domains: &[&str]| v1::IssueTokenRequest {
        subject: Some(v1::issue_token_request::Subject::Service(
            v1::ServicePrincipal {
                name: "gateway".into(),
                domains: domains.iter().map(|s| s.to_string()).collect(),
                rights: rights.iter().map(|s| s.to_string()).collect(),
            },
        )),
        ttl_seconds: 600,
    };
    let t = a
        .auth
        .issue_token(svc(&["directory.read", "tokens.issue"], &["acme"]))
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut gw = sb.client(Some(&t)).await;
    gw.directory
        .list_users(v1::ListUsersRequest {
            domain: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_code(
        gw.directory
            .create_site(v1::CreateSiteRequest {
                domain: "acme".into(),
                id: "y".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    gw.auth
        .issue_token(svc(&["directory.read"], &["acme"]))
        .await
        .unwrap();
    assert_code(
        gw.auth
            .issue_token(svc(&["directory.write"], &["acme"]))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        gw.auth.issue_token(svc(&["directory.read"], &["*"])).await,
        Code::PermissionDenied,
    );
    assert_code(
        gw.auth.issue_token(svc(&["root"], &["acme"])).await,
        Code::InvalidArgument,
    );
    assert_code(
        gw.auth.issue_token(svc(&[], &["acme"])).await,
        Code::InvalidArgument,
    );
    assert_code(
        gw.auth.issue_token(svc(&["directory.read"], &[])).await,
        Code::InvalidArgument,
    );
    assert_code(
        gw.auth
            .issue_token(v1::IssueTokenRequest {
                subject: None,
                ttl_seconds: 0,
            })
            .await,
        Code::InvalidArgument,
    );
    // Phone tokens end when the phone is deleted.
    a.directory
        .add_phone(v1::AddPhoneRequest {
            domain: "acme".into(),
            user: "1001".into(),
            mac: "0004f2000042".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pt = a
        .auth
        .issue_token(v1::IssueTokenRequest {
            subject: Some(v1::issue_token_request::Subject::Phone(
                v1::PhonePrincipal {
                    domain: "acme".into(),
                    user: String::new(),
                    mac: "0004f2000042".into(),
                },
            )),
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut phone = sb.client(Some(&pt)).await;
    phone.auth.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    a.directory
        .delete_phone(v1::DeletePhoneRequest {
            domain: "acme".into(),
            mac: "0004f2000042".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    assert_code(
        phone.auth.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
    );
}

/// Repeated failed logins for one account are throttled after five:
/// `ResourceExhausted` with a `retry-after`, for an unknown account
/// exactly as for a real one, and even with the right password; another
/// account is not affected.
#[tokio::test]
async fn test_failed_logins_are_throttled_without_revealing_accounts() {
    let sb = setup().await;
    let mut anon = sb.client(None).await;
    for user in ["1001", "9999"] {
        for _ in 0..5 {
            let m = assert_code(
                anon.auth
                    .login(login("acme", user, "wrong password", None))
                    .await,
                Code::Unauthenticated,
            );
            assert_eq!(m, "invalid credentials");
        }
    }
    let mut answers = Vec::new();
    for (user, pw) in [("1001", PW), ("1001", "wrong password"), ("9999", PW)] {
        let s = anon
            .auth
            .login(login("acme", user, pw, None))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted, "{user}: {s:?}");
        let secs: u64 = s
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or_else(|| panic!("no retry-after: {s:?}"));
        assert!((1..=300).contains(&secs), "{secs}");
        answers.push(s.message().replace(&secs.to_string(), "N"));
    }
    // Real and unknown accounts get the same answer.
    assert!(answers.iter().all(|m| m == &answers[0]), "{answers:?}");
    assert_eq!(
        answers[0],
        "too many failed logins for this account or address; retry after N s"
    );
    // Another account (from the same address, far below its limit) logs
    // in.
    user(
        &mut sb.admin.clone(),
        "acme",
        "1004",
        NewUser {
            password: Some(PW),
            ..Default::default()
        },
    )
    .await;
    anon.auth
        .login(login("acme", "1004", PW, None))
        .await
        .unwrap();
}

/// Tokens can be revoked before they expire: a service token by an
/// administrator (then refused everywhere with "token revoked"), one's own
/// session (a logout), and the bootstrap administrator's token after a
/// new one was issued; who may revoke what, and bad requests.
#[tokio::test]
async fn test_revoked_tokens_are_refused() {
    use presence_tests::service_token;
    let sb = setup().await;
    let mut admin = sb.admin.clone();
    let issued = admin
        .auth
        .issue_token(v1::IssueTokenRequest {
            subject: Some(v1::issue_token_request::Subject::Service(
                v1::ServicePrincipal {
                    name: "gateway".into(),
                    domains: vec!["acme".into()],
                    rights: vec!["presence.watch".into()],
                },
            )),
            ttl_seconds: 3600,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.token_id.len(), 32);
    let mut gw = sb.client(Some(&issued.token)).await;
    gw.auth.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    // A user session without tokens.issue may not revoke it; nor may the
    // gateway revoke another token.
    let mut jack = sb.login("acme", "1001", PW).await;
    let revoke = |token: &str, id: &str| v1::RevokeTokenRequest {
        token: token.into(),
        token_id: id.into(),
        expires_at_ms: 0,
    };
    assert_code(
        jack.auth.revoke_token(revoke(&issued.token, "")).await,
        Code::PermissionDenied,
    );
    let other = service_token(&mut admin, "other", &["acme"], &["presence.watch"]).await;
    assert_code(
        gw.auth.revoke_token(revoke(&other, "")).await,
        Code::PermissionDenied,
    );
    let r = admin
        .auth
        .revoke_token(revoke(&issued.token, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(r.revoked);
    assert_eq!(r.token_id, issued.token_id);
    let m = assert_code(
        gw.auth.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
    );
    assert_eq!(m, "token revoked");
    // By id, as IssueToken returned it: the same.
    let mut o = sb.client(Some(&other)).await;
    o.auth.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    let other_id = presence_auth::token::token_id(&other);
    admin
        .auth
        .revoke_token(revoke("", &other_id))
        .await
        .unwrap();
    assert_code(
        o.auth.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
    );
    // Logout: a user revokes the session it calls with.
    let jack_token = sb.login_token("acme", "1001", PW).await;
    let mut j2 = sb.client(Some(&jack_token)).await;
    j2.auth.revoke_token(revoke(&jack_token, "")).await.unwrap();
    assert_code(
        j2.auth.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
    );
    jack.auth.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    // Bad requests.
    for (req, what) in [
        (revoke("", ""), "nothing"),
        (revoke(&other, &other_id), "both"),
        (revoke("pst1.e30.AAAA", ""), "a forged token"),
        (revoke("", "not-an-id"), "a bad id"),
    ] {
        let s = admin.auth.revoke_token(req).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
    }
    // The bootstrap administrator's token: issue a new admin token with
    // it, revoke the old one with the new one.
    let new_admin = service_token(&mut admin, "ops-admin", &["*"], &["*"]).await;
    let mut ops = sb.client(Some(&new_admin)).await;
    ops.auth
        .revoke_token(revoke(&sb.admin_token, ""))
        .await
        .unwrap();
    assert_code(
        admin.auth.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
    );
    ops.auth.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
}

/// Issues a deployment-wide administrator token through `c`.
async fn admin_token(c: &mut presence_client::PresenceClient, name: &str) -> String {
    c.auth
        .issue_token(v1::IssueTokenRequest {
            subject: Some(v1::issue_token_request::Subject::Service(
                v1::ServicePrincipal {
                    name: name.into(),
                    domains: vec!["*".into()],
                    rights: vec!["*".into()],
                },
            )),
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

fn key_of(token: &str) -> &str {
    presence_auth::token::key_id_of(token).unwrap()
}

#[tokio::test]
async fn test_signing_keys_rotate_without_ending_sessions_and_retiring_ends_their_tokens() {
    let sb = setup().await;
    let mut boot = sb.admin.clone();
    assert_eq!(key_of(&sb.admin_token), "deployment");
    let keys = boot
        .auth
        .list_signing_keys(v1::ListSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1);
    assert!(keys[0].id == "deployment" && keys[0].signing && keys[0].retired_at_ms == 0);
    let jack_before = sb.login_token("acme", "1001", PW).await;
    assert_eq!(key_of(&jack_before), "deployment");

    // A new key signs every later token; earlier ones go on working.
    let k1 = boot
        .auth
        .add_signing_key(v1::AddSigningKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        k1.signing && k1.added_by.contains("bootstrap-admin"),
        "{k1:?}"
    );
    let jack_k1 = sb.login_token("acme", "1001", PW).await;
    assert_eq!(key_of(&jack_k1), k1.id);
    let admin_k1 = admin_token(&mut boot, "ops").await;
    assert_eq!(key_of(&admin_k1), k1.id);
    for t in [&jack_before, &jack_k1, &sb.admin_token] {
        let mut c = sb.client(Some(t)).await;
        c.auth.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    }

    // Retire the deployment key: its tokens (the bootstrap one too) end.
    let mut ops = sb.client(Some(&admin_k1)).await;
    let retired = ops
        .auth
        .retire_signing_key(v1::RetireSigningKeyRequest {
            id: "deployment".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(retired.retired_at_ms > 0 && retired.retired_by.contains("ops"));
    for t in [&jack_before, &sb.admin_token] {
        let mut c = sb.client(Some(t)).await;
        let err = assert_code(
            c.auth.who_am_i(v1::WhoAmIRequest {}).await,
            Code::Unauthenticated,
        );
        assert!(err.contains("retired"), "{err}");
    }
    // Retiring again changes nothing; k1 is now the only key: kept.
    ops.auth
        .retire_signing_key(v1::RetireSigningKeyRequest {
            id: "deployment".into(),
        })
        .await
        .unwrap();
    let err = assert_code(
        ops.auth
            .retire_signing_key(v1::RetireSigningKeyRequest { id: k1.id.clone() })
            .await,
        Code::FailedPrecondition,
    );
    assert!(err.contains("no key to sign"), "{err}");

    // k2 takes over; retiring k1 ends k1's tokens only.
    let k2 = ops
        .auth
        .add_signing_key(v1::AddSigningKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    let admin_k2 = admin_token(&mut ops, "ops2").await;
    assert_eq!(key_of(&admin_k2), k2.id);
    let mut ops2 = sb.client(Some(&admin_k2)).await;
    ops2.auth
        .retire_signing_key(v1::RetireSigningKeyRequest { id: k1.id.clone() })
        .await
        .unwrap();
    for t in [&jack_k1, &admin_k1] {
        let mut c = sb.client(Some(t)).await;
        assert_code(
            c.auth.who_am_i(v1::WhoAmIRequest {}).await,
            Code::Unauthenticated,
        );
    }
    let jack_k2 = sb.login_token("acme", "1001", PW).await;
    assert_eq!(key_of(&jack_k2), k2.id);
    let listed = ops2
        .auth
        .list_signing_keys(v1::ListSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    let ids: Vec<(&str, bool, bool)> = listed
        .iter()
        .map(|k| (k.id.as_str(), k.signing, k.retired_at_ms > 0))
        .collect();
    assert_eq!(
        ids,
        vec![
            (k2.id.as_str(), true, false),
            (k1.id.as_str(), false, true),
            ("deployment", false, true)
        ]
    );

    // Bad input.
    for (id, code) in [
        ("nope", Code::InvalidArgument),
        ("0123456789ABCDEF", Code::InvalidArgument),
        ("", Code::InvalidArgument),
        ("0123456789abcdef", Code::NotFound),
    ] {
        assert_code(
            ops2.auth
                .retire_signing_key(v1::RetireSigningKeyRequest { id: id.into() })
                .await,
            code,
        );
    }
    // The keys survive a restart (they are directory records).
    let sb = sb.restart().await;
    let mut c = sb.client(Some(&jack_k2)).await;
    c.auth.who_am_i(v1::WhoAmIRequest {}).await.unwrap();
    let mut c = sb.client(Some(&jack_k1)).await;
    assert_code(
        c.auth.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
    );
    sb.stop().await;
}
