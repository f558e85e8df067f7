//! Signed bearer tokens and the keys that sign them.
//!
//! Formats:
//! - `pst2.<key id>.<base64url(JSON claims)>.<base64url(HMAC-SHA256)>`:
//!   signed with a key of the deployment's **key ring** (the MAC covers
//!   everything before the last dot, the key id included);
//! - `pst1.<base64url(JSON claims)>.<base64url(HMAC-SHA256)>`: signed
//!   with the **deployment key** itself (the 32 random bytes of
//!   `auth_key_file`, shared by every node), as every token was before
//!   key rotation, and while the ring holds no active key.
//!
//! The ring lives in the replicated directory ([`KeySource`]): each key
//! is 32 random bytes stored wrapped under the deployment key (a
//! per-key-id HMAC pad and tag), so the NATS stream holding the
//! directory never carries a usable key. The newest active key signs;
//! every active key verifies; a retired key (the deployment key
//! included) verifies nothing, so retiring a key ends every token it
//! signed. The ring is re-read whenever the source's generation moves.
//!
//! A token only proves identity; what the identity may do (and whether a
//! user's session is still valid) is decided at each call from current
//! data.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac as _};
use presence_core::{ApiError, ApiResult};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

const PREFIX: &str = "pst1";
const PREFIX_RING: &str = "pst2";

/// Length of a signing key in bytes.
pub const KEY_LEN: usize = 32;

/// The id under which the deployment key itself appears in the ring
/// (tokens without a key id are its).
pub const DEPLOYMENT_KEY_ID: &str = "deployment";

/// One key of the ring as the directory stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Key id: 16 lowercase hex digits ([`DEPLOYMENT_KEY_ID`] for the
    /// deployment key, whose `wrapped` is empty).
    pub id: String,
    /// The key wrapped under the deployment key ([`TokenSigner::wrap`]).
    pub wrapped: Vec<u8>,
    /// When the key was added, unix ms (the newest active key signs).
    pub created_ms: i64,
    /// A retired key verifies no token.
    pub retired: bool,
}

/// Where the key ring comes from (the directory store).
pub trait KeySource: Send + Sync + 'static {
    /// A number that changes whenever the ring may have changed.
    fn generation(&self) -> u64;
    /// Every stored key.
    fn keys(&self) -> ApiResult<Vec<StoredKey>>;
}

/// Whether `s` has the shape of a ring key id (16 lowercase hex digits).
pub fn is_key_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// Returns the key id a token names: [`DEPLOYMENT_KEY_ID`] for `pst1`
/// tokens, `None` when it has neither shape.
pub fn key_id_of(token: &str) -> Option<&str> {
    if token.starts_with("pst1.") {
        return Some(DEPLOYMENT_KEY_ID);
    }
    let rest = token.strip_prefix("pst2.")?;
    let (id, _) = rest.split_once('.')?;
    is_key_id(id).then_some(id)
}

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

/// The keys in force, as read from the source.
#[derive(Default)]
struct Ring {
    /// The source generation this was read at (`None`: never read).
    generation: Option<u64>,
    /// Ring keys by id, with whether each is retired (a retired key is
    /// kept to tell its genuine tokens that it was retired).
    keys: std::collections::HashMap<String, (Vec<u8>, bool)>,
    /// The id of the key that signs (newest active); `None`: the
    /// deployment key.
    signing: Option<String>,
    /// The deployment key was retired.
    deployment_retired: bool,
}

struct Keys {
    /// The deployment key (`auth_key_file`): signs `pst1` tokens and
    /// wraps the ring's keys.
    key: Vec<u8>,
    source: std::sync::OnceLock<Arc<dyn KeySource>>,
    ring: RwLock<Arc<Ring>>,
}

/// Signs and verifies tokens with the deployment key and its key ring.
/// Clones share the ring.
#[derive(Clone)]
pub struct TokenSigner {
    keys: Arc<Keys>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = match <Hmac<Sha256>>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("hmac accepts any key length"),
    };
    for p in parts {
        m.update(p);
    }
    m
}

fn retired() -> ApiError {
    ApiError::Unauthenticated("token signed with a retired key; get a new token".into())
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
        Ok(Self {
            keys: Arc::new(Keys {
                key,
                source: std::sync::OnceLock::new(),
                ring: RwLock::new(Arc::new(Ring::default())),
            }),
        })
    }

    /// Takes the key ring from `source` from now on (once; later calls
    /// are ignored). Every clone of this signer follows it.
    pub fn attach(&self, source: Arc<dyn KeySource>) {
        let _ = self.keys.source.set(source);
    }

    /// Returns a short fingerprint of the deployment key (16 hex digits
    /// of a SHA-256 over a fixed label and the key): equal on nodes that
    /// share the key, useless for forging tokens.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        let mut h = Sha256::new();
        h.update(b"presence signing key fingerprint\0");
        h.update(&self.keys.key);
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

    /// Returns a new ring key: its id (16 random hex digits) and the
    /// key wrapped under the deployment key, to be stored.
    pub fn new_ring_key(&self) -> (String, Vec<u8>) {
        let id: String = random_bytes(8).iter().map(|b| format!("{b:02x}")).collect();
        let wrapped = self.wrap(&id, &Self::generate_key());
        (id, wrapped)
    }

    /// Wraps `key` (32 bytes) for storage under id `id`: the key XOR an
    /// HMAC of the id under the deployment key, then a 16-byte tag.
    pub fn wrap(&self, id: &str, key: &[u8]) -> Vec<u8> {
        let pad = hmac(&self.keys.key, &[b"presence key wrap\0", id.as_bytes()])
            .finalize()
            .into_bytes();
        let mut out: Vec<u8> = key.iter().zip(pad.iter()).map(|(k, p)| k ^ p).collect();
        let tag = hmac(
            &self.keys.key,
            &[b"presence key tag\0", id.as_bytes(), &out],
        )
        .finalize()
        .into_bytes();
        out.extend_from_slice(&tag[..16]);
        out
    }

    /// Unwraps a stored key; `None` when it was not wrapped under this
    /// deployment key for this id.
    pub fn unwrap_key(&self, id: &str, wrapped: &[u8]) -> Option<Vec<u8>> {
        if wrapped.len() != KEY_LEN + 16 {
            return None;
        }
        let (body, tag) = wrapped.split_at(KEY_LEN);
        hmac(
            &self.keys.key,
            &[b"presence key tag\0", id.as_bytes(), body],
        )
        .verify_truncated_left(tag)
        .ok()?;
        let pad = hmac(&self.keys.key, &[b"presence key wrap\0", id.as_bytes()])
            .finalize()
            .into_bytes();
        Some(body.iter().zip(pad.iter()).map(|(k, p)| k ^ p).collect())
    }

    /// The ring in force, re-read when the source moved on.
    fn ring(&self) -> Arc<Ring> {
        let current = match self.keys.ring.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let Some(source) = self.keys.source.get() else {
            return current;
        };
        let generation = source.generation();
        if current.generation == Some(generation) {
            return current;
        }
        // Read after taking the generation: a change meanwhile moves it
        // again, and the next call reads once more.
        let stored = match source.keys() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the signing key ring; keeping the last one read");
                return current;
            }
        };
        let mut ring = Ring {
            generation: Some(generation),
            ..Ring::default()
        };
        let mut newest: Option<(i64, String)> = None;
        for k in stored {
            if k.id == DEPLOYMENT_KEY_ID {
                ring.deployment_retired = k.retired;
                continue;
            }
            let Some(key) = self.unwrap_key(&k.id, &k.wrapped) else {
                tracing::error!(key_id = %k.id, "signing key not wrapped under this node's deployment key (auth_key_file); ignored");
                continue;
            };
            if !k.retired {
                newest = newest.max(Some((k.created_ms, k.id.clone())));
            }
            ring.keys.insert(k.id, (key, k.retired));
        }
        ring.signing = newest.map(|(_, id)| id);
        let ring = Arc::new(ring);
        match self.keys.ring.write() {
            Ok(mut g) => *g = ring.clone(),
            Err(p) => *p.into_inner() = ring.clone(),
        }
        ring
    }

    /// Returns the id of the key that signs new tokens now.
    pub fn signing_key_id(&self) -> String {
        self.ring()
            .signing
            .clone()
            .unwrap_or_else(|| DEPLOYMENT_KEY_ID.to_owned())
    }

    /// Returns a signed token for `sub` valid for `ttl_ms` from now,
    /// signed with the newest active key of the ring (the deployment key
    /// while the ring has none).
    pub fn issue(&self, sub: Subject, ttl_ms: i64) -> (String, Claims) {
        let iat = now_ms();
        let claims = Claims {
            sub,
            iat,
            exp: iat.saturating_add(ttl_ms),
        };
        let json = serde_json::to_vec(&claims).unwrap_or_default();
        let ring = self.ring();
        let signing = ring
            .signing
            .as_ref()
            .and_then(|id| Some((id, &ring.keys.get(id)?.0)));
        let (body, key) = match signing {
            Some((id, key)) => (
                format!("{PREFIX_RING}.{id}.{}", B64.encode(json)),
                key.as_slice(),
            ),
            None => (
                format!("{PREFIX}.{}", B64.encode(json)),
                self.keys.key.as_slice(),
            ),
        };
        let sig = hmac(key, &[body.as_bytes()]).finalize().into_bytes();
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

    /// Verifies a token's signature only (an expired token's claims too);
    /// a token of a retired key is refused.
    pub fn verify_signature(&self, token: &str) -> ApiResult<Claims> {
        let bad = || ApiError::Unauthenticated("invalid token".into());
        let (body, sig) = token.rsplit_once('.').ok_or_else(bad)?;
        let ring = self.ring();
        let (payload, key, was_retired) = if let Some(payload) = body.strip_prefix("pst1.") {
            (payload, self.keys.key.as_slice(), ring.deployment_retired)
        } else {
            let rest = body.strip_prefix("pst2.").ok_or_else(bad)?;
            let (id, payload) = rest.split_once('.').ok_or_else(bad)?;
            let (k, r) = ring.keys.get(id).ok_or_else(bad)?;
            (payload, k.as_slice(), *r)
        };
        let sig = B64.decode(sig).map_err(|_| bad())?;
        hmac(key, &[body.as_bytes()])
            .verify_slice(&sig)
            .map_err(|_| bad())?;
        // Only a genuine token learns that its key was retired.
        if was_retired {
            return Err(retired());
        }
        let json = B64.decode(payload).map_err(|_| bad())?;
        serde_json::from_slice(&json).map_err(|_| bad())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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

    /// A key ring in memory; `reads` counts how often it was read.
    #[derive(Default)]
    struct MemRing {
        generation: std::sync::atomic::AtomicU64,
        keys: std::sync::Mutex<Vec<StoredKey>>,
        reads: std::sync::atomic::AtomicU64,
    }

    impl MemRing {
        fn set(&self, keys: Vec<StoredKey>) {
            *self.keys.lock().unwrap() = keys;
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl KeySource for MemRing {
        fn generation(&self) -> u64 {
            self.generation.load(std::sync::atomic::Ordering::SeqCst)
        }
        fn keys(&self) -> ApiResult<Vec<StoredKey>> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(self.keys.lock().unwrap().clone())
        }
    }

    fn stored(s: &TokenSigner, created_ms: i64) -> StoredKey {
        let (id, wrapped) = s.new_ring_key();
        StoredKey {
            id,
            wrapped,
            created_ms,
            retired: false,
        }
    }

    fn retire(mut k: StoredKey) -> StoredKey {
        k.retired = true;
        k
    }

    fn deployment(retired: bool) -> StoredKey {
        StoredKey {
            id: DEPLOYMENT_KEY_ID.into(),
            wrapped: Vec::new(),
            created_ms: 0,
            retired,
        }
    }

    #[test]
    fn test_rotation_signs_with_the_newest_key_and_retiring_ends_its_tokens() {
        let s = signer();
        let ring = Arc::new(MemRing::default());
        // A clone made before attaching follows the ring too.
        let verifier = s.clone();
        s.attach(ring.clone());
        let (old, _) = s.issue(user(), 60_000);
        assert!(old.starts_with("pst1."));
        assert_eq!(key_id_of(&old), Some(DEPLOYMENT_KEY_ID));

        let k1 = stored(&s, 10);
        ring.set(vec![k1.clone()]);
        let (t1, _) = s.issue(user(), 60_000);
        assert_eq!(key_id_of(&t1), Some(k1.id.as_str()));
        assert_eq!(s.signing_key_id(), k1.id);
        let k2 = stored(&s, 20);
        ring.set(vec![k2.clone(), k1.clone()]);
        let (t2, _) = s.issue(user(), 60_000);
        assert_eq!(key_id_of(&t2), Some(k2.id.as_str()), "the newest key signs");
        for t in [&old, &t1, &t2] {
            assert!(verifier.verify(t).is_ok(), "every active key verifies");
        }

        ring.set(vec![k2.clone(), retire(k1.clone()), deployment(true)]);
        assert_eq!(verifier.verify(&t1), Err(retired()));
        assert_eq!(verifier.verify(&old), Err(retired()));
        assert!(verifier.verify(&t2).is_ok());
        // A retired key's id on a forged token says nothing of retirement.
        let forged = format!("pst2.{}.e30.AAAA", k1.id);
        assert_eq!(
            verifier.verify(&forged),
            Err(ApiError::Unauthenticated("invalid token".into()))
        );
        // All ring keys retired, the deployment key too: nothing signs
        // validly, so the directory refuses to get there (see RetireKey).
        ring.set(vec![retire(k2.clone()), retire(k1), deployment(false)]);
        let (t3, _) = s.issue(user(), 60_000);
        assert!(t3.starts_with("pst1."), "back to the deployment key");
        assert!(verifier.verify(&t3).is_ok());
        assert_eq!(verifier.verify(&t2), Err(retired()));
    }

    #[test]
    fn test_key_ids_are_bound_to_the_signature() {
        let s = signer();
        let ring = Arc::new(MemRing::default());
        s.attach(ring.clone());
        let (k1, k2) = (stored(&s, 1), stored(&s, 2));
        ring.set(vec![k1.clone(), k2.clone()]);
        let (t2, _) = s.issue(user(), 60_000);
        // The same body and signature under the other key's id.
        let swapped = t2.replacen(&k2.id, &k1.id, 1);
        assert!(s.verify(&swapped).is_err());
        let unknown = t2.replacen(&k2.id, "0123456789abcdef", 1);
        assert!(s.verify(&unknown).is_err());
        // As a pst1 token (deployment key): refused.
        let as_pst1 = format!("pst1.{}", t2.splitn(3, '.').nth(2).unwrap());
        assert!(s.verify(&as_pst1).is_err());
    }

    #[test]
    fn test_keys_wrapped_under_another_deployment_key_are_ignored() {
        let (s, other) = (signer(), signer());
        let ring = Arc::new(MemRing::default());
        s.attach(ring.clone());
        let foreign = stored(&other, 5);
        ring.set(vec![foreign.clone()]);
        let (t, _) = s.issue(user(), 60_000);
        assert!(t.starts_with("pst1."), "a key it cannot unwrap never signs");
        assert_eq!(s.unwrap_key(&foreign.id, &foreign.wrapped), None);
        let mine = stored(&s, 6);
        let key = s.unwrap_key(&mine.id, &mine.wrapped).unwrap();
        assert_eq!(key.len(), KEY_LEN);
        assert_eq!(
            s.wrap(&mine.id, &key),
            mine.wrapped,
            "wrapping is deterministic"
        );
        // Under another id, or with one bit flipped: refused.
        assert_eq!(s.unwrap_key("0123456789abcdef", &mine.wrapped), None);
        let mut flipped = mine.wrapped.clone();
        flipped[0] ^= 1;
        assert_eq!(s.unwrap_key(&mine.id, &flipped), None);
        assert_eq!(s.unwrap_key(&mine.id, &mine.wrapped[1..]), None);
    }

    #[test]
    fn test_the_ring_is_read_again_only_when_its_generation_moves() {
        let s = signer();
        let ring = Arc::new(MemRing::default());
        s.attach(ring.clone());
        ring.set(vec![stored(&s, 1)]);
        let (t, _) = s.issue(user(), 60_000);
        for _ in 0..10 {
            assert!(s.verify(&t).is_ok());
        }
        assert_eq!(ring.reads.load(std::sync::atomic::Ordering::SeqCst), 1);
        ring.set(vec![stored(&s, 2)]);
        assert!(s.verify(&t).is_err(), "its key is gone");
        assert_eq!(ring.reads.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn test_key_id_shapes() {
        assert!(is_key_id("0123456789abcdef"));
        for bad in [
            "",
            "0123456789ABCDEF",
            "0123456789abcde",
            "0123456789abcdefa",
            "g123456789abcdef",
        ] {
            assert!(!is_key_id(bad), "{bad}");
        }
        assert_eq!(
            key_id_of("pst2.0123456789abcdef.x.y"),
            Some("0123456789abcdef")
        );
        assert_eq!(key_id_of("pst2.nothex.x.y"), None);
        assert_eq!(key_id_of("bearer"), None);
    }

    #[test]
    fn test_ids_fingerprints_and_clock_match_their_definitions() {
        // Fixed vectors (SHA-256 over the labels, computed independently).
        assert_eq!(token_id("pst1.abc.def"), "5b69873d6752eb8223442dec1c0c1506");
        let fixed = TokenSigner::new((0..32).collect()).unwrap();
        assert_eq!(fixed.fingerprint(), "66253154d34afebf");
        assert_ne!(signer().fingerprint(), fixed.fingerprint());
        assert!(is_token_id(&token_id("x")));
        for bad in [
            "",
            "5b69873d6752eb8223442dec1c0c150",
            "5b69873d6752eb8223442dec1c0c15066",
            "5B69873D6752EB8223442DEC1C0C1506",
            "5b69873d6752eb8223442dec1c0c150g",
            "5b69873d6752eb8223442dec1c0c150 ",
        ] {
            assert!(!is_token_id(bad), "{bad:?}");
        }
        // The clock is the system's, in milliseconds.
        let sys = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!((now_ms() - sys).abs() < 60_000);
        // Debug never shows the key.
        assert_eq!(format!("{fixed:?}"), "TokenSigner(..)");
    }

    #[test]
    fn test_wrapping_round_trips_the_exact_key() {
        let s = signer();
        let key: Vec<u8> = (100..132).collect();
        let wrapped = s.wrap("0123456789abcdef", &key);
        assert_eq!(wrapped.len(), KEY_LEN + 16);
        assert_ne!(
            &wrapped[..KEY_LEN],
            key.as_slice(),
            "not stored in the clear"
        );
        assert_eq!(s.unwrap_key("0123456789abcdef", &wrapped), Some(key));
    }

    #[test]
    fn test_short_keys_are_refused() {
        assert!(TokenSigner::new(vec![0; 16]).is_err());
    }
}
