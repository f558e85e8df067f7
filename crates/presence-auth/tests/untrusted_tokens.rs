//! Randomized tests over the token verifier, which sees every bearer
//! string a caller sends: noise, hostile text, valid tokens with a few
//! bytes changed, tokens of another key, and bodies forged with a valid
//! encoding. Nothing but an untouched token of the right key verifies,
//! nothing panics, and the error says no more than "invalid token".
//!
//! Cases: `PRESENCE_FUZZ_CASES` (default 20 000); replay with
//! `PRESENCE_FUZZ_SEED`.

#![allow(clippy::unwrap_used, missing_docs)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use presence_auth::token::{KeySource, StoredKey, Subject, TokenSigner};
use presence_testkit::rng::{Rng, cases, seed};
use std::sync::Arc;

fn subject(r: &mut Rng) -> Subject {
    match r.below(3) {
        0 => Subject::User {
            domain: r.hostile_string(20),
            user: r.hostile_string(20),
            epoch: r.next(),
            inc: r.next(),
        },
        1 => Subject::Phone {
            domain: "acme".into(),
            user: "1001".into(),
            mac: r.hostile_string(17),
            inc: r.next(),
        },
        _ => Subject::Service {
            name: r.hostile_string(30),
            domains: vec![r.hostile_string(10)],
            rights: vec!["*".into()],
            incs: vec![r.next()],
        },
    }
}

/// A fixed key ring.
struct Fixed(Vec<StoredKey>);

impl KeySource for Fixed {
    fn generation(&self) -> u64 {
        1
    }
    fn keys(&self) -> presence_core::ApiResult<Vec<StoredKey>> {
        Ok(self.0.clone())
    }
}

/// A signer whose ring holds one active and one retired key (its tokens
/// are `pst2`).
fn with_ring() -> TokenSigner {
    let s = TokenSigner::new(TokenSigner::generate_key()).unwrap();
    let (a, wa) = s.new_ring_key();
    let (b, wb) = s.new_ring_key();
    s.attach(Arc::new(Fixed(vec![
        StoredKey {
            id: a,
            wrapped: wa,
            created_ms: 2,
            retired: false,
        },
        StoredKey {
            id: b,
            wrapped: wb,
            created_ms: 1,
            retired: true,
        },
    ])));
    s
}

#[test]
fn untrusted_tokens_only_the_untouched_one_of_the_right_key_verifies() {
    let key = TokenSigner::new(TokenSigner::generate_key()).unwrap();
    let other = TokenSigner::new(TokenSigner::generate_key()).unwrap();
    check(&key, &other, cases(20_000) / 2);
    let (key, other) = (with_ring(), with_ring());
    assert!(
        key.issue(subject(&mut Rng::new(1)), 1)
            .0
            .starts_with("pst2.")
    );
    check(&key, &other, cases(20_000) / 2);
}

fn check(key: &TokenSigner, other: &TokenSigner, n: usize) {
    let mut r = Rng::new(seed());
    for _ in 0..n {
        let (token, claims) = key.issue(subject(&mut r), 60_000);
        let candidate: String = match r.below(5) {
            0 => r.hostile_string(400),
            1 => String::from_utf8_lossy(&r.bytes(400)).into_owned(),
            2 => other.issue(subject(&mut r), 60_000).0,
            3 => {
                // A forged body with a valid encoding and a copied
                // signature.
                let (head, sig) = token.rsplit_once('.').unwrap_or_default();
                let body = B64.encode(r.hostile_string(200));
                match presence_auth::token::key_id_of(head) {
                    Some(id) if head.starts_with("pst2.") => format!("pst2.{id}.{body}.{sig}"),
                    _ => format!("pst1.{body}.{sig}"),
                }
            }
            _ => {
                let mut b = token.clone().into_bytes();
                r.mutate(&mut b);
                String::from_utf8_lossy(&b).into_owned()
            }
        };
        match key.verify(&candidate) {
            Ok(c) => {
                assert_eq!(candidate, token, "only the untouched token verifies");
                assert_eq!(c, claims);
            }
            Err(e) => assert!(
                e.message() == "invalid token" || e.message() == "token expired",
                "{e}"
            ),
        }
        assert_eq!(key.verify(&token).unwrap(), claims);
    }
}
