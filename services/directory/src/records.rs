//! Record access shared by reads and write transactions: loading with
//! the right `NotFound` message, version checks, validation of request
//! fields and change-event construction.

use crate::store::{Store, Tx, keys};
use presence_core::text::{self, MAX_NAME};
use presence_core::{ApiError, ApiResult, DomainId, Email, SiteId, UserId};
use presence_proto::v1;
use prost::Message;

/// Internal credentials of a user; never leaves the store.
#[derive(Clone, PartialEq, Message)]
pub struct Credentials {
    /// PHC string of the password hash; empty when no password is set.
    #[prost(string, tag = "1")]
    pub password_hash: String,
    /// Bumped to invalidate every session of the user.
    #[prost(uint64, tag = "2")]
    pub session_epoch: u64,
    /// The next login must set a new password.
    #[prost(bool, tag = "3")]
    pub reset_required: bool,
    /// PHC string of the voicemail PIN hash; empty when unset.
    #[prost(string, tag = "4")]
    pub pin_hash: String,
}

/// A revoked token: kept until the token would have expired.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RevokedRecord {
    /// The token's expiry, unix milliseconds.
    #[prost(int64, tag = "1")]
    pub expires_at_ms: i64,
}

/// A pending welcome token (stored under the SHA-256 of the token).
#[derive(Clone, PartialEq, Message)]
pub struct WelcomeRecord {
    /// Domain of the user.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// The user.
    #[prost(string, tag = "2")]
    pub user: String,
    /// Expiry, unix milliseconds.
    #[prost(int64, tag = "3")]
    pub expires_at_ms: i64,
}

/// Incarnations: the identity of one life of a domain, user or phone.
///
/// Ids repeat (a user deleted and created again keeps its extension),
/// tokens must not follow them: every token names the incarnation of
/// what it stands for, and a record's incarnation changes whenever it is
/// created again (or, for a phone, given to another owner). 0 stands for
/// records created before incarnations existed; new ones are never 0.
pub mod incarnation {
    use crate::store::keys::{INCARNATION, key};

    /// Returns the incarnation key of domain `d`.
    pub fn domain_key(d: &str) -> Vec<u8> {
        key(INCARNATION, &[d])
    }

    /// Returns the incarnation key of user `u` of domain `d`.
    pub fn user_key(d: &str, u: &str) -> Vec<u8> {
        key(INCARNATION, &[d, "u", u])
    }

    /// Returns the incarnation key of the phone `mac` of domain `d`.
    pub fn phone_key(d: &str, mac: &str) -> Vec<u8> {
        key(INCARNATION, &[d, "p", mac])
    }

    /// Returns a fresh random incarnation (never 0). Drawn before a write
    /// transaction runs, so the transaction itself stays deterministic.
    pub fn fresh() -> u64 {
        loop {
            let b = presence_auth::token::random_bytes(8);
            let mut a = [0u8; 8];
            a.copy_from_slice(&b);
            let n = u64::from_be_bytes(a);
            if n != 0 {
                return n;
            }
        }
    }

    /// Decodes a stored incarnation (0 when absent or malformed).
    pub fn decode(v: Option<&[u8]>) -> u64 {
        match v {
            Some(b) if b.len() == 8 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_be_bytes(a)
            }
            _ => 0,
        }
    }
}

/// Read access common to the store and a transaction.
pub trait Read {
    /// Reads a raw value.
    fn raw(&self, key: &[u8]) -> ApiResult<Option<Vec<u8>>>;

    /// Reads and decodes a record.
    fn record<M: Message + Default>(&self, key: &[u8]) -> ApiResult<Option<M>> {
        match self.raw(key)? {
            Some(v) => crate::store::decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Loads a domain or returns the uniform `domain … not found`.
    fn domain(&self, d: &DomainId) -> ApiResult<v1::Domain> {
        self.record(&keys::key(keys::DOMAIN, &[d.as_str()]))?
            .ok_or_else(|| ApiError::domain_not_found(d.as_str()))
    }

    /// Loads a site.
    fn site(&self, d: &DomainId, s: &SiteId) -> ApiResult<v1::Site> {
        self.record(&keys::key(keys::SITE, &[d.as_str(), s.as_str()]))?
            .ok_or_else(|| ApiError::not_found(format!("site {s} not found in domain {d}")))
    }

    /// Loads a user.
    fn user(&self, d: &DomainId, u: &UserId) -> ApiResult<v1::User> {
        self.record(&keys::key(keys::USER, &[d.as_str(), u.as_str()]))?
            .ok_or_else(|| user_not_found(d, u.as_str()))
    }

    /// Loads a user's options.
    fn options(&self, d: &DomainId, u: &UserId) -> ApiResult<v1::UserOptions> {
        self.record(&keys::key(keys::OPTIONS, &[d.as_str(), u.as_str()]))?
            .ok_or_else(|| user_not_found(d, u.as_str()))
    }

    /// Loads a user's credentials (empty defaults when missing).
    fn credentials(&self, d: &DomainId, u: &UserId) -> ApiResult<Credentials> {
        Ok(self
            .record(&keys::key(keys::CREDENTIALS, &[d.as_str(), u.as_str()]))?
            .unwrap_or_default())
    }

    /// Loads a phone of domain `d`; a phone of another domain is
    /// reported exactly like a missing one.
    fn phone(&self, d: &DomainId, mac: &presence_core::Mac) -> ApiResult<v1::Phone> {
        match self.record::<v1::Phone>(&keys::key(keys::PHONE, &[d.as_str(), mac.as_str()]))? {
            Some(p) if p.domain == d.as_str() => Ok(p),
            _ => Err(ApiError::not_found(format!(
                "phone {mac} not found in domain {d}"
            ))),
        }
    }

    /// Returns the incarnation stored under `key` (see [`incarnation`];
    /// 0 when none is stored).
    fn incarnation(&self, key: &[u8]) -> ApiResult<u64> {
        Ok(incarnation::decode(self.raw(key)?.as_deref()))
    }

    /// Loads a call queue.
    fn queue(&self, d: &DomainId, q: &UserId) -> ApiResult<v1::Queue> {
        self.record(&keys::key(keys::QUEUE, &[d.as_str(), q.as_str()]))?
            .ok_or_else(|| ApiError::not_found(format!("queue {q} not found in domain {d}")))
    }
}

impl Read for Store {
    fn raw(&self, key: &[u8]) -> ApiResult<Option<Vec<u8>>> {
        Ok(self.get_raw(key)?.map(|v| v.to_vec()))
    }
}

impl Read for Tx<'_> {
    fn raw(&self, key: &[u8]) -> ApiResult<Option<Vec<u8>>> {
        self.get_raw(key)
    }
}

/// Voids the pending welcome token of user `u`, if any: a password set by
/// anyone, a reset and a deletion all end it.
pub fn void_welcome(tx: &mut Tx<'_>, d: &DomainId, u: &UserId) -> ApiResult<()> {
    let wu = keys::key(keys::WELCOME_BY_USER, &[d.as_str(), u.as_str()]);
    if let Some(h) = tx.raw(&wu)? {
        tx.delete(keys::key(keys::WELCOME, &[&String::from_utf8_lossy(&h)]));
        tx.delete(wu);
    }
    Ok(())
}

/// Returns the `NotFound` error of a missing user.
pub fn user_not_found(d: &DomainId, u: &str) -> ApiError {
    ApiError::not_found(format!("user {u} not found in domain {d}"))
}

/// Rejects a stale `expected` version (0 skips the check).
pub fn check_version(what: &str, current: u64, expected: u64) -> ApiResult<()> {
    if expected != 0 && expected != current {
        return Err(ApiError::Aborted(format!(
            "stale version: {what} is at version {current}, request had {expected}"
        )));
    }
    Ok(())
}

/// Returns a change event (sequence filled in at commit).
pub fn event(
    domain: &DomainId,
    entity: v1::EntityKind,
    change: v1::ChangeKind,
    id: &str,
    version: u64,
    facts: Vec<String>,
) -> v1::DirectoryEvent {
    v1::DirectoryEvent {
        domain: domain.to_string(),
        entity: entity as i32,
        change: change as i32,
        id: id.to_owned(),
        version,
        at_ms: presence_auth::token::now_ms(),
        facts,
        sequence: 0,
    }
}

/// Validates and normalizes a profile.
pub fn check_profile(p: &v1::Profile) -> ApiResult<v1::Profile> {
    Ok(v1::Profile {
        first_name: text::check("first_name", &p.first_name, MAX_NAME)?,
        last_name: text::check("last_name", &p.last_name, MAX_NAME)?,
        email: check_email(&p.email)?,
        department: text::check("department", &p.department, MAX_NAME)?,
        caller_id_name: text::check("caller_id_name", &p.caller_id_name, MAX_NAME)?,
    })
}

/// Validates an optional e-mail (empty is allowed).
pub fn check_email(e: &str) -> ApiResult<String> {
    if e.trim().is_empty() {
        Ok(String::new())
    } else {
        Email::parse(e).map(Email::into_string)
    }
}

/// Parses an optional site id (empty means none).
pub fn opt_site(s: &str) -> ApiResult<Option<SiteId>> {
    if s.is_empty() {
        Ok(None)
    } else {
        SiteId::parse(s).map(Some)
    }
}
