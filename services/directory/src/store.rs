//! The sled-backed key-value layer of the directory.
//!
//! All records live in one sled tree under typed key prefixes (see
//! [`keys`]). Writers are serialized by one mutex and each mutation is a
//! [`Tx`]: reads see the transaction's own pending writes, and commit
//! applies every write plus the store sequence number as one atomic sled
//! batch, then flushes to disk before the caller acknowledges. One writer
//! at a time is also what later replication needs: a total order.

use presence_core::{ApiError, ApiResult};
use presence_proto::v1;
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// Key layout. Components are joined with `\0`, which no id contains.
pub mod keys {
    /// Separator between key components.
    pub const SEP: u8 = 0;

    /// Builds a key from a prefix tag and components.
    pub fn key(tag: &str, parts: &[&str]) -> Vec<u8> {
        let mut k =
            Vec::with_capacity(tag.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>());
        k.extend_from_slice(tag.as_bytes());
        for p in parts {
            k.push(SEP);
            k.extend_from_slice(p.as_bytes());
        }
        k
    }

    /// Builds a prefix that matches every key under `tag` and `parts`.
    pub fn prefix(tag: &str, parts: &[&str]) -> Vec<u8> {
        let mut k = key(tag, parts);
        k.push(SEP);
        k
    }

    /// Domain record: `D\0domain`.
    pub const DOMAIN: &str = "D";
    /// Site record: `S\0domain\0site`.
    pub const SITE: &str = "S";
    /// User record: `U\0domain\0user`.
    pub const USER: &str = "U";
    /// User options: `O\0domain\0user`.
    pub const OPTIONS: &str = "O";
    /// Credentials: `C\0domain\0user`.
    pub const CREDENTIALS: &str = "C";
    /// Phone by MAC (unique within a domain): `P\0domain\0mac`. Stores
    /// of earlier versions keyed phones by MAC alone (`P\0mac`);
    /// [`super::Store::open`] moves them.
    pub const PHONE: &str = "P";
    /// Phones of a user: `PU\0domain\0user\0mac`.
    pub const PHONE_BY_USER: &str = "PU";
    /// Queue: `Q\0domain\0queue`.
    pub const QUEUE: &str = "Q";
    /// Welcome token by hash: `W\0sha256hex`.
    pub const WELCOME: &str = "W";
    /// The active welcome token of a user: `WU\0domain\0user`.
    pub const WELCOME_BY_USER: &str = "WU";
    /// Search index: `I\0domain\0token\0user`.
    pub const INDEX: &str = "I";
    /// Store metadata: `M\0name`.
    pub const META: &str = "M";
    /// Incarnation of a domain (`N\0domain`), a user
    /// (`N\0domain\0u\0user`) or a phone (`N\0domain\0p\0mac`): a random
    /// nonzero id drawn when the record is created, so a record deleted
    /// and created again under the same id is a different identity.
    pub const INCARNATION: &str = "N";
}

/// The open store.
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    write_lock: Mutex<()>,
    sync: bool,
}

fn storage(e: sled::Error) -> ApiError {
    tracing::error!(error = %e, "directory storage error");
    ApiError::Internal(format!("storage: {e}"))
}

/// Decodes a stored protobuf record.
pub fn decode<M: Message + Default>(bytes: &[u8]) -> ApiResult<M> {
    M::decode(bytes).map_err(|e| ApiError::Internal(format!("corrupt record: {e}")))
}

impl Store {
    /// Opens (or creates) the store under `dir`. Every commit is flushed
    /// to disk before it is acknowledged.
    pub fn open(dir: &Path) -> ApiResult<Self> {
        Self::open_with(dir, true)
    }

    /// Opens the store without flushing each commit (sled still flushes
    /// in the background). Only for bulk loads and benchmarks: a crash
    /// may lose acknowledged writes (never atomicity).
    pub fn open_unsynced(dir: &Path) -> ApiResult<Self> {
        Self::open_with(dir, false)
    }

    fn open_with(dir: &Path, sync: bool) -> ApiResult<Self> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(storage)?;
        let tree = db.open_tree("directory").map_err(storage)?;
        let store = Self {
            db,
            tree,
            write_lock: Mutex::new(()),
            sync,
        };
        store.migrate_phone_keys()?;
        Ok(store)
    }

    /// Moves phones stored under `P\0mac` (MACs unique across domains)
    /// to `P\0domain\0mac`, in one commit; a no-op on current stores.
    fn migrate_phone_keys(&self) -> ApiResult<()> {
        let prefix = keys::prefix(keys::PHONE, &[]);
        let mut old = Vec::new();
        for r in self.scan(&prefix, None) {
            let (k, v) = r?;
            if !k[prefix.len()..].contains(&keys::SEP) {
                old.push((k.to_vec(), decode::<v1::Phone>(&v)?));
            }
        }
        if old.is_empty() {
            return Ok(());
        }
        tracing::info!(phones = old.len(), "moving phones to per-domain keys");
        self.write(|tx| {
            for (k, ph) in &old {
                tx.delete(k.clone());
                tx.put(keys::key(keys::PHONE, &[&ph.domain, &ph.mac]), ph);
            }
            Ok(())
        })
        .map(|_| ())
    }

    /// Reads a raw value.
    pub fn get_raw(&self, key: &[u8]) -> ApiResult<Option<sled::IVec>> {
        self.tree.get(key).map_err(storage)
    }

    /// Reads and decodes a record.
    pub fn get<M: Message + Default>(&self, key: &[u8]) -> ApiResult<Option<M>> {
        match self.get_raw(key)? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Iterates keys and values under `prefix`, starting strictly after
    /// `after` when given.
    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = ApiResult<(sled::IVec, sled::IVec)>> + '_ {
        let mut start = prefix.to_vec();
        if let Some(a) = after {
            start = a.to_vec();
            start.push(0);
        }
        let prefix = prefix.to_vec();
        self.tree
            .range(start..)
            .take_while(move |r| match r {
                Ok((k, _)) => k.starts_with(&prefix),
                Err(_) => true,
            })
            .map(|r| r.map_err(storage))
    }

    /// Returns the last committed sequence number.
    pub fn sequence(&self) -> ApiResult<u64> {
        Ok(self
            .get_raw(&keys::key(keys::META, &["seq"]))?
            .map(|v| u64_from(&v))
            .unwrap_or(0))
    }

    /// Runs `f` as one atomic, durable write transaction. Returns its
    /// result and its outbox: the change events it emitted, stamped with
    /// the commit's sequence number, and other messages to publish (both
    /// empty when `f` wrote nothing).
    pub fn write<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> ApiResult<T>) -> ApiResult<(T, Outbox)> {
        let guard = match self.write_lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut tx = Tx {
            store: self,
            pending: BTreeMap::new(),
            events: Vec::new(),
            messages: Vec::new(),
        };
        let out = f(&mut tx)?;
        if tx.pending.is_empty() {
            return Ok((out, Outbox::default()));
        }
        let messages = std::mem::take(&mut tx.messages);
        let seq = self.sequence()? + 1;
        let mut events = std::mem::take(&mut tx.events);
        for ev in &mut events {
            ev.sequence = seq;
        }
        let mut batch = sled::Batch::default();
        for (k, v) in tx.pending {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        batch.insert(keys::key(keys::META, &["seq"]), seq.to_be_bytes().to_vec());
        self.tree.apply_batch(batch).map_err(storage)?;
        drop(guard);
        // Acknowledge only what is on disk; concurrent commits share the
        // flush (group commit).
        if self.sync {
            self.db.flush().map_err(storage)?;
        }
        Ok((out, Outbox { events, messages }))
    }
}

fn u64_from(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if v.len() == 8 {
        b.copy_from_slice(v);
    }
    u64::from_be_bytes(b)
}

/// What a committed transaction publishes.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Directory change events, for `presence.v1.dir.<domain>`.
    pub events: Vec<v1::DirectoryEvent>,
    /// Other messages: (subject, encoded payload).
    pub messages: Vec<(String, Vec<u8>)>,
}

/// A write transaction: reads see its own pending writes.
pub struct Tx<'a> {
    store: &'a Store,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    events: Vec<v1::DirectoryEvent>,
    messages: Vec<(String, Vec<u8>)>,
}

impl Tx<'_> {
    /// Records a change event, published after the commit.
    pub fn emit(&mut self, ev: v1::DirectoryEvent) {
        self.events.push(ev);
    }

    /// Queues a message, published on `subject` after the commit.
    pub fn publish(&mut self, subject: String, payload: Vec<u8>) {
        self.messages.push((subject, payload));
    }

    /// Reads a raw value, pending writes first.
    pub fn get_raw(&self, key: &[u8]) -> ApiResult<Option<Vec<u8>>> {
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.store.get_raw(key)?.map(|v| v.to_vec())),
        }
    }

    /// Reads and decodes a record, pending writes first.
    pub fn get<M: Message + Default>(&self, key: &[u8]) -> ApiResult<Option<M>> {
        match self.get_raw(key)? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Returns whether a key exists.
    pub fn exists(&self, key: &[u8]) -> ApiResult<bool> {
        Ok(self.get_raw(key)?.is_some())
    }

    /// Stages a record write.
    pub fn put<M: Message>(&mut self, key: Vec<u8>, m: &M) {
        self.pending.insert(key, Some(m.encode_to_vec()));
    }

    /// Stages a raw write.
    pub fn put_raw(&mut self, key: Vec<u8>, v: Vec<u8>) {
        self.pending.insert(key, Some(v));
    }

    /// Stages a delete.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// Returns the committed keys under `prefix` merged with pending
    /// writes (pending deletes removed, pending inserts added).
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> ApiResult<Vec<Vec<u8>>> {
        let mut out: std::collections::BTreeSet<Vec<u8>> = std::collections::BTreeSet::new();
        for r in self.store.scan(prefix, None) {
            let (k, _) = r?;
            out.insert(k.to_vec());
        }
        for (k, v) in self.pending.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            if v.is_some() {
                out.insert(k.clone());
            } else {
                out.remove(k);
            }
        }
        Ok(out.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_phones_of_earlier_stores_move_to_per_domain_keys() -> ApiResult<()> {
        let dir = tempfile::tempdir().map_err(|e| ApiError::Internal(e.to_string()))?;
        let phone = |d: &str| v1::Phone {
            mac: "0004f2aabbcc".into(),
            domain: d.into(),
            user: "1001".into(),
            ..Default::default()
        };
        {
            let store = Store::open(dir.path())?;
            store.write(|tx| {
                // As earlier versions stored it: by MAC alone.
                tx.put(keys::key(keys::PHONE, &["0004f2aabbcc"]), &phone("acme"));
                Ok(())
            })?;
        }
        let store = Store::open(dir.path())?;
        let moved: Option<v1::Phone> =
            store.get(&keys::key(keys::PHONE, &["acme", "0004f2aabbcc"]))?;
        assert_eq!(moved, Some(phone("acme")));
        assert!(
            store
                .get_raw(&keys::key(keys::PHONE, &["0004f2aabbcc"]))?
                .is_none()
        );
        // Opening again changes nothing.
        let seq = store.sequence()?;
        drop(store);
        let store = Store::open(dir.path())?;
        assert_eq!(store.sequence()?, seq);
        Ok(())
    }

    #[test]
    fn test_tx_reads_own_writes_and_commits_atomically() -> ApiResult<()> {
        let dir = tempfile::tempdir().map_err(|e| ApiError::Internal(e.to_string()))?;
        let store = Store::open(dir.path())?;
        let k1 = keys::key(keys::META, &["a"]);
        let k2 = keys::key(keys::META, &["b"]);
        let (_, outbox) = store.write(|tx| {
            tx.put_raw(k1.clone(), b"1".to_vec());
            assert_eq!(tx.get_raw(&k1)?, Some(b"1".to_vec()));
            tx.put_raw(k2.clone(), b"2".to_vec());
            tx.emit(v1::DirectoryEvent::default());
            Ok(())
        })?;
        assert_eq!(outbox.events.len(), 1);
        assert_eq!(outbox.events[0].sequence, 1);
        assert_eq!(store.sequence()?, 1);
        // A failing transaction leaves nothing behind.
        let r: ApiResult<((), Outbox)> = store.write(|tx| {
            tx.delete(k1.clone());
            Err(ApiError::invalid("boom"))
        });
        assert!(r.is_err());
        assert!(store.get_raw(&k1)?.is_some());
        assert_eq!(store.sequence()?, 1);
        let keys = store.write(|tx| {
            tx.delete(k1.clone());
            tx.keys_with_prefix(&keys::prefix(keys::META, &[]))
        })?;
        assert_eq!(keys.0.len(), 2, "seq and b remain: {:?}", keys.0);
        Ok(())
    }
}
