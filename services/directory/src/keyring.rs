//! The token signing key ring, kept in the (replicated) directory.
//!
//! Each ring key is a record `K\0<key id>` holding the key wrapped under
//! the deployment key (see `presence_auth::token`), when it was added and
//! retired, and by whom. `K\0deployment` records the retirement of the
//! deployment key itself. Every node's [`TokenSigner`] reads the ring
//! from its store ([`StoreKeys`]) whenever the store's generation moved,
//! so a key added or retired through any node signs or stops verifying
//! on each node as soon as that node applied the entry.

use crate::service::Directory;
use crate::store::{Store, Tx, keys};
use presence_auth::token::{DEPLOYMENT_KEY_ID, KeySource, StoredKey, is_key_id, now_ms};
use presence_auth::{Principal, TokenSigner, rights};
use presence_core::{ApiError, ApiResult, text};
use presence_proto::v1;
use std::sync::Arc;

/// A ring key as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SigningKeyRecord {
    /// The key wrapped under the deployment key (empty for the deployment
    /// key's own record).
    #[prost(bytes = "vec", tag = "1")]
    pub wrapped: Vec<u8>,
    /// When it was added, unix ms.
    #[prost(int64, tag = "2")]
    pub created_ms: i64,
    /// When it was retired, unix ms; 0 while active.
    #[prost(int64, tag = "3")]
    pub retired_ms: i64,
    /// Who added it.
    #[prost(string, tag = "4")]
    pub added_by: String,
    /// Who retired it.
    #[prost(string, tag = "5")]
    pub retired_by: String,
}

/// The ring as a [`KeySource`] over a store.
pub struct StoreKeys(pub Arc<Store>);

fn records(store: &Store) -> ApiResult<Vec<(String, SigningKeyRecord)>> {
    let prefix = keys::prefix(keys::SIGNING_KEY, &[]);
    let mut out = Vec::new();
    for r in store.scan(&prefix, None) {
        let (k, v) = r?;
        let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        out.push((id, crate::store::decode::<SigningKeyRecord>(&v)?));
    }
    Ok(out)
}

impl KeySource for StoreKeys {
    fn generation(&self) -> u64 {
        self.0.generation()
    }

    fn keys(&self) -> ApiResult<Vec<StoredKey>> {
        Ok(records(&self.0)?
            .into_iter()
            .map(|(id, r)| StoredKey {
                id,
                wrapped: r.wrapped,
                created_ms: r.created_ms,
                retired: r.retired_ms != 0,
            })
            .collect())
    }
}

fn require_keys_admin(p: &Principal) -> ApiResult<()> {
    if p.has_global_right(rights::KEYS_ADMIN) {
        Ok(())
    } else {
        Err(ApiError::denied(
            "managing signing keys needs the keys.admin right for every domain",
        ))
    }
}

fn view(id: &str, r: &SigningKeyRecord, signing: &str) -> v1::SigningKey {
    v1::SigningKey {
        id: id.to_owned(),
        created_at_ms: r.created_ms,
        retired_at_ms: r.retired_ms,
        signing: id == signing,
        added_by: r.added_by.clone(),
        retired_by: r.retired_by.clone(),
    }
}

/// The deployment key's record when none is stored (never retired).
fn deployment_record() -> SigningKeyRecord {
    SigningKeyRecord {
        added_by: "auth_key_file".into(),
        ..SigningKeyRecord::default()
    }
}

/// The id of the key that signs given the stored records: the newest
/// active ring key, else the deployment key. Mirrors the signer's choice
/// (without unwrapping), so answers can be given inside a transaction.
fn signing_of(recs: &[(String, SigningKeyRecord)]) -> String {
    recs.iter()
        .filter(|(id, r)| id != DEPLOYMENT_KEY_ID && r.retired_ms == 0)
        .max_by(|(a, x), (b, y)| (x.created_ms, a).cmp(&(y.created_ms, b)))
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| DEPLOYMENT_KEY_ID.to_owned())
}

/// Reads every record inside a transaction (so that concurrent changes
/// of the ring conflict).
fn tx_records(tx: &Tx<'_>) -> ApiResult<Vec<(String, SigningKeyRecord)>> {
    let prefix = keys::prefix(keys::SIGNING_KEY, &[]);
    let mut out = Vec::new();
    for k in tx.keys_with_prefix(&prefix)? {
        if let Some(r) = tx.get::<SigningKeyRecord>(&k)? {
            out.push((String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), r));
        }
    }
    Ok(out)
}

fn sorted(mut recs: Vec<(String, SigningKeyRecord)>) -> Vec<(String, SigningKeyRecord)> {
    if !recs.iter().any(|(id, _)| id == DEPLOYMENT_KEY_ID) {
        recs.push((DEPLOYMENT_KEY_ID.to_owned(), deployment_record()));
    }
    recs.sort_by(|(a, x), (b, y)| {
        let dep = |id: &str| id == DEPLOYMENT_KEY_ID;
        (dep(a), std::cmp::Reverse((x.created_ms, a.clone())))
            .cmp(&(dep(b), std::cmp::Reverse((y.created_ms, b.clone()))))
    });
    recs
}

impl Directory {
    /// The signer, following this directory's key ring.
    pub(crate) fn attach_keyring(signer: &TokenSigner, store: &Arc<Store>) {
        signer.attach(Arc::new(StoreKeys(store.clone())));
    }

    /// Lists the signing keys (see `ListSigningKeys` in auth.proto).
    pub async fn list_signing_keys(&self, p: &Principal) -> ApiResult<v1::ListSigningKeysResponse> {
        require_keys_admin(p)?;
        let recs = sorted(records(self.store())?);
        let signing = signing_of(&recs);
        Ok(v1::ListSigningKeysResponse {
            keys: recs.iter().map(|(id, r)| view(id, r, &signing)).collect(),
        })
    }

    /// Adds a key to the ring (see `AddSigningKey`).
    pub async fn add_signing_key(&self, p: &Principal) -> ApiResult<v1::SigningKey> {
        require_keys_admin(p)?;
        // Drawn once: a retried transaction stores the same key.
        let (id, wrapped) = self.signer().new_ring_key();
        let by = p.describe();
        let created_ms = now_ms();
        let audit = crate::audit::Auditor::new(p);
        let added = self
            .write(move |tx| {
                let recs = tx_records(tx)?;
                // Never older than a key already there: the new key signs.
                let newest = recs.iter().map(|(_, r)| r.created_ms).max().unwrap_or(0);
                let rec = SigningKeyRecord {
                    wrapped: wrapped.clone(),
                    created_ms: created_ms.max(newest + 1),
                    retired_ms: 0,
                    added_by: by.clone(),
                    retired_by: String::new(),
                };
                tx.put(keys::key(keys::SIGNING_KEY, &[&id]), &rec);
                audit.record(
                    tx,
                    None,
                    "",
                    "key.add",
                    String::new(),
                    format!("key {id} signing"),
                );
                Ok(view(&id, &rec, &id))
            })
            .await?;
        tracing::info!(by = %p.describe(), key_id = %added.id, "signing key added");
        Ok(added)
    }

    /// Retires a key (see `RetireSigningKey`).
    pub async fn retire_signing_key(&self, p: &Principal, id: &str) -> ApiResult<v1::SigningKey> {
        require_keys_admin(p)?;
        if id != DEPLOYMENT_KEY_ID && !is_key_id(id) {
            return Err(ApiError::invalid(format!(
                "key id {} is neither 16 lowercase hex digits nor \"{DEPLOYMENT_KEY_ID}\"",
                text::shown(id)
            )));
        }
        let (id, by, now) = (id.to_owned(), p.describe(), now_ms());
        let audit = crate::audit::Auditor::new(p);
        let retired = self
            .write(move |tx| {
                let mut recs = tx_records(tx)?;
                if !recs.iter().any(|(k, _)| k == DEPLOYMENT_KEY_ID) {
                    recs.push((DEPLOYMENT_KEY_ID.to_owned(), deployment_record()));
                }
                let Some(i) = recs.iter().position(|(k, _)| *k == id) else {
                    return Err(ApiError::NotFound(format!("signing key {id} not found")));
                };
                if recs[i].1.retired_ms != 0 {
                    let signing = signing_of(&recs);
                    return Ok(view(&id, &recs[i].1, &signing));
                }
                let others_active = recs
                    .iter()
                    .enumerate()
                    .any(|(j, (_, r))| j != i && r.retired_ms == 0);
                if !others_active {
                    return Err(ApiError::FailedPrecondition(format!(
                        "retiring {id} would leave no key to sign tokens: add a key first \
                         (presencectl keys add)"
                    )));
                }
                recs[i].1.retired_ms = now;
                recs[i].1.retired_by = by.clone();
                tx.put(keys::key(keys::SIGNING_KEY, &[&id]), &recs[i].1);
                let signing = signing_of(&recs);
                audit.record(
                    tx,
                    None,
                    "",
                    "key.retire",
                    format!("key {id} active"),
                    format!("key {id} retired; {signing} signs"),
                );
                Ok(view(&id, &recs[i].1, &signing))
            })
            .await?;
        tracing::info!(by = %p.describe(), key_id = %retired.id, "signing key retired");
        Ok(retired)
    }
}
