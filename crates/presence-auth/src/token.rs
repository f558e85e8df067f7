//! Signed bearer tokens.
//!
//! Format: `pst1.<base64url(JSON claims)>.<base64url(HMAC-SHA256)>`. The
//! key is 32 random bytes shared by every node of a deployment. A token
//! only proves identity; what the identity may do (and whether a user's
//! session is still valid) is decided at each call from current data.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac as _};
use presence_core::{ApiError, ApiResult};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};

const PREFIX: &str = "pst1";

/// Length of a signing key in bytes.
pub const KEY_LEN: usize = 32;

/// What a token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Subject {
    /// A user session; valid while the same incarnation of the user
    /// exists with an unchanged session epoch.
    User {
        /// Domain id.
        domain: String,
        /// User id.
        user: String,
        /// The user's session epoch when the token was issued.
        epoch: u64,
        /// The user's incarnation when the token was issued: a user
        /// deleted and created again under the same id has another one.
        #[serde(default)]
        inc: u64,
    },
    /// A phone; valid while the same incarnation of the phone exists and
    /// belongs to the user.
    Phone {
        /// Domain id.
        domain: String,
        /// Owner id.
        user: String,
        /// Canonical MAC.
        mac: String,
        /// The phone's incarnation when the token was issued (a new one
        /// when the phone is added again or given to another owner).
        #[serde(default)]
        inc: u64,
    },
    /// A service with named rights in some domains.
    Service {
        /// Service name.
        name: String,
        /// Domain ids or `*`.
        domains: Vec<String>,
        /// Right names.
        rights: Vec<String>,
        /// The incarnation of each of `domains` (same order) when the
        /// token was issued: the token's rights in a domain end when that
        /// domain is deleted, and do not pass to a domain created again
        /// under the same id. Empty for `*`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        incs: Vec<u64>,
    },
}

/// The signed payload of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the bearer is.
    pub sub: Subject,
    /// Issued at, unix milliseconds.
    pub iat: i64,
    /// Expires at, unix milliseconds.
    pub exp: i64,
}

/// Returns the current unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Returns `n` random bytes from the OS.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    OsRng.fill_bytes(&mut v);
    v
}

/// The id of a token: 32 hex digits of a SHA-256 over a fixed label and
/// the token. It names the token (for revocation and logs) without
/// giving it away.
pub fn token_id(token: &str) -> String {
    use sha2::Digest as _;
    let mut h = Sha256::new();
    h.update(b"presence token id\0");
    h.update(token.as_bytes());
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `s` has the shape of a [`token_id`].
pub fn is_token_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// Signs and verifies tokens with one HMAC key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    /// Returns a signer for `key`, which must be at least 32 bytes.
    pub fn new(key: Vec<u8>) -> ApiResult<Self> {
        if key.len() < KEY_LEN {
            return Err(ApiError::invalid(format!(
                "signing key must be at least {KEY_LEN} bytes, got {}",
                key.len()
            )));
        }
        Ok(Self { key })
    }

    /// Returns a short fingerprint of the key (16 hex digits of a
    /// SHA-256 over a fixed label and the key): equal on nodes that share
    /// the key, useless for forging tokens.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        let mut h = Sha256::new();
        h.update(b"presence signing key fingerprint\0");
        h.update(&self.key);
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Returns a fresh random key.
    pub fn generate_key() -> Vec<u8> {
        random_bytes(KEY_LEN)
    }

    fn mac(&self, data: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; this cannot fail.
        let mut m = match <Hmac<Sha256>>::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => unreachable!("hmac accepts any key length"),
        };
        m.update(data);
        m
    }

    /// Returns a signed token for `sub` valid for `ttl_ms` from now.
    pub fn issue(&self, sub: Subject, ttl_ms: i64) -> (String, Claims) {
        let iat = now_ms();
        let claims = Claims {
            sub,
            iat,
            exp: iat.saturating_add(ttl_ms),
        };
        let json = serde_json::to_vec(&claims).unwrap_or_default();
        let body = format!("{PREFIX}.{}", B64.encode(json));
        let sig = self.mac(body.as_bytes()).finalize().into_bytes();
        (format!("{body}.{}", B64.encode(sig)), claims)
    }

    /// Verifies a token's signature and expiry and returns its claims.
    pub fn verify(&self, token: &str) -> ApiResult<Claims> {
        let claims = self.verify_signature(token)?;
        if claims.exp <= now_ms() {
            return Err(ApiError::Unauthenticated("token expired".into()));
        }
        Ok(claims)
    }

    /// Verifies a token's signature only (an expired token's claims too).
    pub fn verify_signature(&self, token: &str) -> ApiResult<Claims> {
        let bad = || ApiError::Unauthenticated("invalid token".into());
        let (body, sig) = token.rsplit_once('.').ok_or_else(bad)?;
        let payload = body.strip_prefix("pst1.").ok_or_else(bad)?;
        let sig = B64.decode(sig).map_err(|_| bad())?;
        self.mac(body.as_bytes())
            .verify_slice(&sig)
            .map_err(|_| bad())?;
        let json = B64.decode(payload).map_err(|_| bad())?;
        serde_json::from_slice(&json).map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        TokenSigner::new(TokenSigner::generate_key()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn user() -> Subject {
        Subject::User {
            domain: "acme".into(),
            user: "1001".into(),
            epoch: 3,
            inc: 7,
        }
    }

    #[test]
    fn test_round_trip() {
        let s = signer();
        let (tok, claims) = s.issue(user(), 60_000);
        assert_eq!(s.verify(&tok), Ok(claims));
    }

    #[test]
    fn test_rejects_tampering_other_keys_and_expiry() {
        let s = signer();
        let (tok, _) = s.issue(user(), 60_000);
        assert!(signer().verify(&tok).is_err(), "another key");
        let mut t = tok.clone().into_bytes();
        let mid = t.len() / 2;
        t[mid] = if t[mid] == b'A' { b'B' } else { b'A' };
        assert!(s.verify(&String::from_utf8_lossy(&t)).is_err(), "tampered");
        let (expired, _) = s.issue(user(), -1);
        assert_eq!(
            s.verify(&expired),
            Err(ApiError::Unauthenticated("token expired".into()))
        );
        for junk in ["", "pst1", "pst1..", "bearer", "pst1.e30.AAAA"] {
            assert!(s.verify(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn test_claims_of_earlier_tokens_read_as_incarnation_zero() {
        let json =
            r#"{"sub":{"kind":"user","domain":"acme","user":"1001","epoch":3},"iat":1,"exp":2}"#;
        let c: Claims = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.sub,
            Subject::User {
                domain: "acme".into(),
                user: "1001".into(),
                epoch: 3,
                inc: 0
            }
        );
        let json = r#"{"sub":{"kind":"service","name":"pbx","domains":["acme"],"rights":["*"]},"iat":1,"exp":2}"#;
        let c: Claims = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(c.sub, Subject::Service { incs, .. } if incs.is_empty()));
    }

    #[test]
    fn test_short_keys_are_refused() {
        assert!(TokenSigner::new(vec![0; 16]).is_err());
    }
}
