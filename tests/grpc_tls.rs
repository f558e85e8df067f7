//! TLS on the gRPC port, over real loopback connections: a client that
//! trusts the CA is served, plaintext and untrusting clients are not; a
//! renewed certificate written over the files is served to new
//! connections without a restart; with a client CA (mTLS) only clients
//! with a certificate of that CA connect.

#![allow(clippy::unwrap_used)]

use presence_client::{Tls, connect_with};
use presence_proto::v1;
use presence_testkit::pki::Pki;
use presence_tests::Sandbox;
use std::path::Path;
use std::time::Duration;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn trusting(pki: &Pki) -> Tls {
    Tls {
        ca_file: Some(pki.ca.clone()),
        ..Tls::default()
    }
}

async fn whoami(url: &str, token: &str, tls: &Tls) -> Result<String, String> {
    let mut c = connect_with(url, Some(token), tls)
        .await
        .map_err(|e| e.to_string())?;
    c.auth
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .map(|r| format!("{:?}", r.into_inner().principal))
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn test_tls_serves_trusting_clients_only_and_reloads_a_renewed_certificate() {
    let pki = Pki::new();
    // The server's files live apart from the PKI's so that the test can
    // write a renewal over them.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&pki.server_cert, &cert).unwrap();
    std::fs::copy(&pki.server_key, &key).unwrap();
    let sb = Sandbox::start_tls(trusting(&pki), |c| {
        c.tls_cert_file = s(&cert);
        c.tls_key_file = s(&key);
        c.tls_reload_secs = 1;
    })
    .await;
    let https = sb.url();
    assert!(https.starts_with("https://"));
    let who = whoami(&https, &sb.admin_token, &trusting(&pki)).await;
    assert!(
        who.as_ref().is_ok_and(|w| w.contains("bootstrap-admin")),
        "{who:?}"
    );

    // Plaintext to a TLS port: no answer.
    let plain = format!("http://{}", sb.addr);
    assert!(
        whoami(&plain, &sb.admin_token, &Tls::default())
            .await
            .is_err()
    );
    // The system's roots do not know the test CA.
    let err = whoami(&https, &sb.admin_token, &Tls::default()).await;
    assert!(err.is_err(), "{err:?}");
    // Another CA: refused.
    let other = Pki::new();
    assert!(
        whoami(&https, &sb.admin_token, &trusting(&other))
            .await
            .is_err()
    );
    // TLS settings with an http:// URL are a mistake, said as one.
    let err = whoami(&plain, &sb.admin_token, &trusting(&pki))
        .await
        .unwrap_err();
    assert!(err.contains("not an https:// URL"), "{err}");

    // A renewed certificate, for a name the first one does not carry.
    let renamed = Tls {
        server_name: Some("renewed.presence.test".into()),
        ..trusting(&pki)
    };
    assert!(whoami(&https, &sb.admin_token, &renamed).await.is_err());
    let (new_cert, new_key) = pki.server("renewed", &["renewed.presence.test", "127.0.0.1"]);
    // Key first, then certificate: in between the pair does not match
    // and the reload is refused, the old certificate staying in force.
    std::fs::write(&key, new_key).unwrap();
    std::fs::write(&cert, new_cert).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match whoami(&https, &sb.admin_token, &renamed).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("the renewed certificate was never served: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    // The existing client's channel reconnects under the new certificate
    // too (its name, localhost/127.0.0.1, is still in it).
    let mut admin = sb.client(Some(&sb.admin_token)).await;
    assert!(admin.auth.who_am_i(v1::WhoAmIRequest {}).await.is_ok());
    sb.stop().await;
}

#[tokio::test]
async fn test_mtls_admits_only_clients_with_a_certificate_of_the_client_ca() {
    let pki = Pki::new();
    let with_cert = Tls {
        cert_file: Some(pki.client_cert.clone()),
        key_file: Some(pki.client_key.clone()),
        ..trusting(&pki)
    };
    let sb = Sandbox::start_tls(with_cert.clone(), |c| {
        c.tls_cert_file = s(&pki.server_cert);
        c.tls_key_file = s(&pki.server_key);
        c.tls_client_ca_file = s(&pki.ca);
    })
    .await;
    let url = sb.url();
    assert!(whoami(&url, &sb.admin_token, &with_cert).await.is_ok());
    // No client certificate: the handshake fails.
    assert!(
        whoami(&url, &sb.admin_token, &trusting(&pki))
            .await
            .is_err()
    );
    // A client certificate of another CA: refused.
    let other = Pki::new();
    let foreign = Tls {
        cert_file: Some(other.client_cert.clone()),
        key_file: Some(other.client_key.clone()),
        ..trusting(&pki)
    };
    assert!(whoami(&url, &sb.admin_token, &foreign).await.is_err());
    // The certificate only opens the connection: calls still need a token.
    let mut anonymous = connect_with(&url, None, &with_cert).await.unwrap();
    let err = anonymous
        .directory
        .list_domains(v1::ListDomainsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    sb.stop().await;
}

#[tokio::test]
async fn test_optional_client_certificates_admit_clients_without_one() {
    let pki = Pki::new();
    let sb = Sandbox::start_tls(trusting(&pki), |c| {
        c.tls_cert_file = s(&pki.server_cert);
        c.tls_key_file = s(&pki.server_key);
        c.tls_client_ca_file = s(&pki.ca);
        c.tls_client_auth = "optional".into();
    })
    .await;
    let url = sb.url();
    assert!(whoami(&url, &sb.admin_token, &trusting(&pki)).await.is_ok());
    // A certificate shown must still be valid.
    let other = Pki::new();
    let foreign = Tls {
        cert_file: Some(other.client_cert.clone()),
        key_file: Some(other.client_key.clone()),
        ..trusting(&pki)
    };
    assert!(whoami(&url, &sb.admin_token, &foreign).await.is_err());
    sb.stop().await;
}
