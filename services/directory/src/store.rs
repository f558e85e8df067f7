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
use sha2::{Digest, Sha256};
use std::cell::RefCell;
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
    /// A revoked token by id (`R\0token_id`), with its expiry.
    pub const REVOKED: &str = "R";
    /// A key of the signing key ring (`K\0key_id`; `K\0deployment` for
    /// the deployment key's retirement).
    pub const SIGNING_KEY: &str = "K";
    /// Incarnation of a domain (`N\0domain`), a user
    /// (`N\0domain\0u\0user`) or a phone (`N\0domain\0p\0mac`): a random
    /// nonzero id drawn when the record is created, so a record deleted
    /// and created again under the same id is a different identity.
    pub const INCARNATION: &str = "N";
    /// Outcome of a transaction of the replicated log: `T\0tx_id`.
    pub const TX: &str = "T";
    /// The transaction recorded at a log sequence (20 decimal digits):
    /// `TS\0sequence` → tx id, so outcomes are pruned in log order.
    pub const TX_BY_SEQ: &str = "TS";

    /// The key of the transaction recorded at log sequence `seq`.
    pub fn tx_at(seq: u64) -> Vec<u8> {
        key(TX_BY_SEQ, &[&format!("{seq:020}")])
    }
}

/// How many log entries a transaction's outcome stays recorded for: a
/// retry of a write (same idempotency key) is recognized until this many
/// later entries were applied. Pruned in log order, identically on every
/// node.
pub const OUTCOMES_KEPT: u64 = 100_000;

/// The open store.
pub struct Store {
    pub(crate) db: sled::Db,
    pub(crate) tree: sled::Tree,
    pub(crate) write_lock: Mutex<()>,
    pub(crate) sync: bool,
    /// Moves after every commit (see [`Store::generation`]).
    pub(crate) commits: std::sync::atomic::AtomicU64,
}

pub(crate) fn storage(e: sled::Error) -> ApiError {
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
            commits: std::sync::atomic::AtomicU64::new(0),
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
        let mut tx = self.tx();
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
        self.committed();
        drop(guard);
        // Acknowledge only what is on disk; concurrent commits share the
        // flush (group commit).
        if self.sync {
            self.db.flush().map_err(storage)?;
        }
        Ok((out, Outbox { events, messages }))
    }

    fn tx(&self) -> Tx<'_> {
        Tx {
            store: self,
            pending: BTreeMap::new(),
            events: Vec::new(),
            messages: Vec::new(),
            reads: RefCell::new(BTreeMap::new()),
            scans: RefCell::new(BTreeMap::new()),
            clears: Vec::new(),
            audits: 0,
        }
    }

    /// Runs `f` against the local state without committing: returns its
    /// result and, when it wrote anything, the log entry that carries it
    /// (to be published on the replicated log and applied by
    /// [`Store::apply_entry`] on every node).
    pub fn prepare<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> ApiResult<T>,
    ) -> ApiResult<(T, Option<LogEntry>)> {
        let mut tx = self.tx();
        let out = f(&mut tx)?;
        if tx.pending.is_empty() {
            return Ok((out, None));
        }
        Ok((out, Some(tx.into_entry())))
    }

    /// Returns the sequence of the last log entry applied (0: none).
    pub fn log_sequence(&self) -> ApiResult<u64> {
        Ok(self
            .get_raw(&keys::key(keys::META, &["log"]))?
            .map(|v| u64_from(&v))
            .unwrap_or(0))
    }

    /// Returns the recorded outcome of a logged transaction.
    pub fn outcome(&self, tx_id: &str) -> ApiResult<Option<TxOutcome>> {
        self.get(&keys::key(keys::TX, &[tx_id]))
    }

    /// Applies the log entry at sequence `seq`, which must follow the last
    /// one applied: checks that everything it read is unchanged, then, in
    /// one durable batch, applies its writes, records its outcome and
    /// moves the applied sequence. The same entries in the same order give
    /// the same outcomes and the same store on every node.
    pub fn apply_entry(&self, e: &LogEntry, seq: u64) -> ApiResult<Applied> {
        self.apply_entry_keeping(e, seq, OUTCOMES_KEPT)
    }

    fn apply_entry_keeping(&self, e: &LogEntry, seq: u64, kept: u64) -> ApiResult<Applied> {
        let guard = match self.write_lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let last = self.log_sequence()?;
        if seq != last + 1 {
            return Err(ApiError::Internal(format!(
                "log entry {seq} does not follow the last applied ({last})"
            )));
        }
        if !e.restored.is_empty() {
            return Err(ApiError::FailedPrecondition(format!(
                "a backup was restored into the directory log at entry {seq} while this node \
                 was running on it: restart this node (it then loads the restored directory)"
            )));
        }
        let mut batch = sled::Batch::default();
        batch.insert(keys::key(keys::META, &["log"]), seq.to_be_bytes().to_vec());
        let tx_key = keys::key(keys::TX, &[&e.tx_id]);
        let prior: Option<TxOutcome> = self.get(&tx_key)?;
        if seq > kept {
            self.prune_outcome(seq - kept, &mut batch)?;
        }
        let applied = if prior.is_some_and(|p| p.committed) {
            Applied::Duplicate
        } else if !self.unchanged(e)? {
            let o = TxOutcome {
                committed: false,
                sequence: seq,
                reply: Vec::new(),
            };
            batch.insert(tx_key, o.encode_to_vec());
            batch.insert(keys::tx_at(seq), e.tx_id.as_bytes());
            Applied::Conflict
        } else {
            for p in &e.clears {
                for r in self.scan(p, None) {
                    let (k, _) = r?;
                    batch.remove(k);
                }
            }
            for w in &e.writes {
                match &w.value {
                    Some(v) => batch.insert(w.key.as_slice(), v.as_slice()),
                    None => batch.remove(w.key.as_slice()),
                }
            }
            let o = TxOutcome {
                committed: true,
                sequence: seq,
                reply: e.reply.clone(),
            };
            batch.insert(tx_key, o.encode_to_vec());
            batch.insert(keys::tx_at(seq), e.tx_id.as_bytes());
            batch.insert(keys::key(keys::META, &["seq"]), seq.to_be_bytes().to_vec());
            let mut events = e.events.clone();
            for ev in &mut events {
                ev.sequence = seq;
            }
            Applied::Committed(Outbox {
                events,
                messages: e
                    .messages
                    .iter()
                    .map(|m| (m.subject.clone(), m.payload.clone()))
                    .collect(),
            })
        };
        self.tree.apply_batch(batch).map_err(storage)?;
        self.committed();
        drop(guard);
        if self.sync {
            self.db.flush().map_err(storage)?;
        }
        Ok(applied)
    }

    /// Forgets the outcome recorded at log sequence `seq`, unless a later
    /// attempt of the same transaction recorded its own.
    fn prune_outcome(&self, seq: u64, batch: &mut sled::Batch) -> ApiResult<()> {
        let at = keys::tx_at(seq);
        let Some(tx_id) = self.get_raw(&at)? else {
            return Ok(());
        };
        batch.remove(at);
        let tx_key = keys::key(keys::TX, &[&String::from_utf8_lossy(&tx_id)]);
        if let Some(o) = self.get::<TxOutcome>(&tx_key)?
            && o.sequence == seq
        {
            batch.remove(tx_key);
        }
        Ok(())
    }

    /// Whether every value and key set `e` read is still what it read.
    fn unchanged(&self, e: &LogEntry) -> ApiResult<bool> {
        for c in &e.reads {
            let v = self.get_raw(&c.key)?;
            if value_digest(v.as_deref()) != c.digest {
                return Ok(false);
            }
        }
        for c in &e.scans {
            let mut h = Sha256::new();
            for r in self.scan(&c.key, None) {
                let (k, _) = r?;
                digest_key(&mut h, &k);
            }
            if h.finalize()[..DIGEST_LEN] != c.digest[..] {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A number that moves after every commit (writes, applied log
    /// entries, loaded snapshots): what was derived from the store (the
    /// signing key ring) is read again when it moved.
    pub fn generation(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn committed(&self) {
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Writes a value that belongs to this node only (never replicated,
    /// e.g. that this data dir wrote its bootstrap token).
    pub fn put_local(&self, key: &[u8], value: &[u8]) -> ApiResult<()> {
        self.tree.insert(key, value).map_err(storage)?;
        if self.sync {
            self.db.flush().map_err(storage)?;
        }
        Ok(())
    }

    /// Returns a digest of every replicated record (everything but the
    /// node's own metadata under `M`): equal on nodes that applied the same
    /// log.
    pub fn digest(&self) -> ApiResult<String> {
        let mut h = Sha256::new();
        let meta = keys::prefix(keys::META, &[]);
        for r in self.tree.iter() {
            let (k, v) = r.map_err(storage)?;
            if k.starts_with(&meta) {
                continue;
            }
            digest_key(&mut h, &k);
            digest_key(&mut h, &v);
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

pub(crate) fn u64_from(v: &[u8]) -> u64 {
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
///
/// A transaction also records what it read from the committed store (a
/// digest of each value, and of the key set of each prefix it listed),
/// so that a replicated log can carry it as a [`LogEntry`] and every
/// node can check, at the entry's place in the log, that the
/// transaction would have read the same (see [`Store::apply_entry`]).
pub struct Tx<'a> {
    store: &'a Store,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    events: Vec<v1::DirectoryEvent>,
    messages: Vec<(String, Vec<u8>)>,
    reads: RefCell<BTreeMap<Vec<u8>, Vec<u8>>>,
    scans: RefCell<BTreeMap<Vec<u8>, Vec<u8>>>,
    clears: Vec<Vec<u8>>,
    /// Audit events staged so far (numbers them within the transaction).
    audits: u32,
}

impl Tx<'_> {
    /// Returns the number of the next audit event of this transaction.
    pub(crate) fn next_audit(&mut self) -> u32 {
        self.audits += 1;
        self.audits
    }

    /// Returns up to `limit` committed keys under `prefix` strictly after
    /// `after`, in order, without recording the listing: a transaction
    /// that acts on them must read each one (then only those are its
    /// preconditions, however large the prefix).
    pub fn first_keys(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> ApiResult<Vec<Vec<u8>>> {
        self.store
            .scan(prefix, after)
            .take(limit)
            .map(|r| r.map(|(k, _)| k.to_vec()))
            .collect()
    }

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
        if let Some(v) = self.pending.get(key) {
            return Ok(v.clone());
        }
        let v = self.store.get_raw(key)?.map(|v| v.to_vec());
        self.reads
            .borrow_mut()
            .entry(key.to_vec())
            .or_insert_with(|| value_digest(v.as_deref()));
        Ok(v)
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
        let mut digest = Sha256::new();
        for r in self.store.scan(prefix, None) {
            let (k, _) = r?;
            digest_key(&mut digest, &k);
            out.insert(k.to_vec());
        }
        self.scans
            .borrow_mut()
            .entry(prefix.to_vec())
            .or_insert_with(|| digest.finalize()[..DIGEST_LEN].to_vec());
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

    /// Stages the deletion of every key under `prefix` (a log entry
    /// carries it as one operation, however many keys it removes).
    pub fn delete_prefix(&mut self, prefix: &[u8]) -> ApiResult<()> {
        for k in self.keys_with_prefix(prefix)? {
            self.pending.insert(k, None);
        }
        self.clears.push(prefix.to_vec());
        Ok(())
    }

    /// Turns the transaction into a log entry (without reply or id).
    fn into_entry(self) -> LogEntry {
        let clears = self.clears;
        let cleared = |k: &[u8]| clears.iter().any(|p| k.starts_with(p));
        let writes = self
            .pending
            .into_iter()
            .filter(|(k, v)| v.is_some() || !cleared(k))
            .map(|(key, value)| WriteOp { key, value })
            .collect();
        LogEntry {
            tx_id: String::new(),
            reads: self
                .reads
                .into_inner()
                .into_iter()
                .map(|(key, digest)| Check { key, digest })
                .collect(),
            scans: self
                .scans
                .into_inner()
                .into_iter()
                .map(|(key, digest)| Check { key, digest })
                .collect(),
            clears: clears.clone(),
            writes,
            events: self.events,
            messages: self
                .messages
                .into_iter()
                .map(|(subject, payload)| OutMessage { subject, payload })
                .collect(),
            reply: Vec::new(),
            restored: String::new(),
        }
    }
}

/// Bytes of SHA-256 kept per checked value or key set: 128 bits make an
/// unnoticed change by collision negligible and keep entries that read
/// thousands of records small.
const DIGEST_LEN: usize = 16;

/// Digest of a stored value as a transaction read it (empty: absent).
fn value_digest(v: Option<&[u8]>) -> Vec<u8> {
    match v {
        Some(v) => Sha256::digest(v)[..DIGEST_LEN].to_vec(),
        None => Vec::new(),
    }
}

pub(crate) fn digest_key(h: &mut Sha256, k: &[u8]) {
    h.update((k.len() as u64).to_be_bytes());
    h.update(k);
}

/// One transaction as the replicated log carries it: what it read (to be
/// checked where it lands in the log), what it writes, and what it
/// publishes once applied.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogEntry {
    /// The transaction's id: the same for every retry of one request.
    #[prost(string, tag = "1")]
    pub tx_id: String,
    /// Values read from the committed store, by digest.
    #[prost(message, repeated, tag = "2")]
    pub reads: Vec<Check>,
    /// Prefixes listed, by digest of their key sets.
    #[prost(message, repeated, tag = "3")]
    pub scans: Vec<Check>,
    /// Prefixes deleted whole (before `writes`).
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub clears: Vec<Vec<u8>>,
    /// Puts and deletes.
    #[prost(message, repeated, tag = "5")]
    pub writes: Vec<WriteOp>,
    /// Directory change events (their sequence is stamped when applied).
    #[prost(message, repeated, tag = "6")]
    pub events: Vec<v1::DirectoryEvent>,
    /// Other messages published once applied.
    #[prost(message, repeated, tag = "7")]
    pub messages: Vec<OutMessage>,
    /// The encoded answer to the request that made the transaction,
    /// kept with its outcome for retries.
    #[prost(bytes = "vec", tag = "8")]
    pub reply: Vec<u8>,
    /// Set only on the first entry of a log that `presenced restore`
    /// wrote (the SHA-256 of the snapshot it published): nodes load that
    /// snapshot instead of applying the entry, and one that reaches it by
    /// applying the log (it ran before the restore) stops.
    #[prost(string, tag = "9")]
    pub restored: String,
}

/// A key and the digest of what a transaction found there.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Check {
    /// The key (or prefix).
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// SHA-256 of the value (empty: absent) or of the prefix's key set.
    #[prost(bytes = "vec", tag = "2")]
    pub digest: Vec<u8>,
}

/// A put (`value` set) or delete.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteOp {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The new value; `None` deletes.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub value: Option<Vec<u8>>,
}

/// A message to publish once the transaction is applied.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutMessage {
    /// The subject.
    #[prost(string, tag = "1")]
    pub subject: String,
    /// The payload.
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// What became of a logged transaction, kept under `T\0tx_id`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxOutcome {
    /// Whether it was applied (otherwise it read something that had
    /// changed by its place in the log, and changed nothing).
    #[prost(bool, tag = "1")]
    pub committed: bool,
    /// The log sequence it was applied at.
    #[prost(uint64, tag = "2")]
    pub sequence: u64,
    /// The encoded answer (see [`LogEntry::reply`]).
    #[prost(bytes = "vec", tag = "3")]
    pub reply: Vec<u8>,
}

/// What [`Store::apply_entry`] did with an entry.
#[derive(Debug)]
pub enum Applied {
    /// Applied at this sequence; here is what to publish.
    Committed(Outbox),
    /// Changed nothing: something it read had changed.
    Conflict,
    /// Its id was already applied at an earlier place: changed nothing.
    Duplicate,
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

    #[test]
    fn test_log_entries_apply_in_order_and_stale_reads_conflict() -> ApiResult<()> {
        let dir = tempfile::tempdir().map_err(|e| ApiError::Internal(e.to_string()))?;
        let store = Store::open(dir.path())?;
        let k = keys::key(keys::META, &["x"]);
        let bump = |tx: &mut Tx<'_>| {
            let n = tx.get_raw(&k)?.map(|v| u64_from(&v)).unwrap_or(0);
            tx.put_raw(k.clone(), (n + 1).to_be_bytes().to_vec());
            Ok(n + 1)
        };
        // Two nodes prepare against the same state: both read x absent.
        let (one, e1) = store.prepare(bump)?;
        let (_, e2) = store.prepare(bump)?;
        let (mut e1, mut e2) = (e1.unwrap_or_default(), e2.unwrap_or_default());
        e1.tx_id = "t1".into();
        e2.tx_id = "t2".into();
        assert_eq!(one, 1);
        assert!(matches!(store.apply_entry(&e1, 1)?, Applied::Committed(_)));
        // The second read a value that has changed: nothing applied.
        assert!(matches!(store.apply_entry(&e2, 2)?, Applied::Conflict));
        assert_eq!(store.get_raw(&k)?.map(|v| u64_from(&v)), Some(1));
        assert_eq!(store.outcome("t2")?.map(|o| o.committed), Some(false));
        // The same transaction again (a retry with another message id).
        assert!(matches!(store.apply_entry(&e1, 3)?, Applied::Duplicate));
        assert_eq!(store.get_raw(&k)?.map(|v| u64_from(&v)), Some(1));
        // Never across a gap.
        assert!(store.apply_entry(&e2, 5).is_err());
        assert_eq!(store.log_sequence()?, 3);
        Ok(())
    }

    #[test]
    fn test_a_listed_prefix_that_changed_conflicts_and_clears_apply_whole() -> ApiResult<()> {
        let dir = tempfile::tempdir().map_err(|e| ApiError::Internal(e.to_string()))?;
        let store = Store::open(dir.path())?;
        let p = keys::prefix(keys::QUEUE, &["acme"]);
        let q = |n: &str| keys::key(keys::QUEUE, &["acme", n]);
        let mut seq = 0;
        let mut apply = |e: Option<LogEntry>| -> ApiResult<Applied> {
            seq += 1;
            let mut e = e.unwrap_or_default();
            e.tx_id = format!("t{seq}");
            store.apply_entry(&e, seq)
        };
        let (_, e) = store.prepare(|tx| {
            tx.put_raw(q("a"), b"1".to_vec());
            Ok(())
        })?;
        assert!(matches!(apply(e)?, Applied::Committed(_)));
        // Prepared while the prefix held one key; another lands first.
        let (_, clear) = store.prepare(|tx| tx.delete_prefix(&p))?;
        let clear = clear.unwrap_or_default();
        assert!(clear.writes.is_empty(), "one clear, no per-key deletes");
        let (_, add) = store.prepare(|tx| {
            tx.put_raw(q("b"), b"2".to_vec());
            Ok(())
        })?;
        assert!(matches!(apply(add)?, Applied::Committed(_)));
        assert!(matches!(apply(Some(clear))?, Applied::Conflict));
        assert_eq!(store.scan(&p, None).count(), 2);
        let (_, clear) = store.prepare(|tx| tx.delete_prefix(&p))?;
        assert!(matches!(apply(clear)?, Applied::Committed(_)));
        assert_eq!(store.scan(&p, None).count(), 0);
        Ok(())
    }

    #[test]
    fn test_outcomes_are_pruned_in_log_order_but_a_later_attempt_is_kept() -> ApiResult<()> {
        let dir = tempfile::tempdir().map_err(|e| ApiError::Internal(e.to_string()))?;
        let store = Store::open_unsynced(dir.path())?;
        let entry = |tx: &str, n: u8| LogEntry {
            tx_id: tx.into(),
            writes: vec![WriteOp {
                key: keys::key(keys::QUEUE, &["acme", tx]),
                value: Some(vec![n]),
            }],
            ..Default::default()
        };
        let stale = |tx: &str| LogEntry {
            tx_id: tx.into(),
            reads: vec![Check {
                key: keys::key(keys::QUEUE, &["acme", "t1"]),
                digest: Vec::new(),
            }],
            ..Default::default()
        };
        store.apply_entry_keeping(&entry("t1", 1), 1, 3)?;
        // t2's first attempt conflicts at 2, its retry commits at 3.
        assert!(matches!(
            store.apply_entry_keeping(&stale("t2"), 2, 3)?,
            Applied::Conflict
        ));
        assert!(matches!(
            store.apply_entry_keeping(&entry("t2", 2), 3, 3)?,
            Applied::Committed(_)
        ));
        store.apply_entry_keeping(&entry("t3", 3), 4, 3)?;
        assert!(store.outcome("t1")?.is_none(), "pruned 3 entries later");
        store.apply_entry_keeping(&entry("t4", 4), 5, 3)?;
        // Pruning entry 2 leaves the outcome entry 3 recorded.
        assert_eq!(store.outcome("t2")?.map(|o| o.sequence), Some(3));
        store.apply_entry_keeping(&entry("t5", 5), 6, 3)?;
        assert!(store.outcome("t2")?.is_none());
        assert!(store.outcome("t5")?.is_some());
        assert_eq!(
            store
                .scan(&keys::prefix(keys::TX_BY_SEQ, &[]), None)
                .count(),
            3
        );
        Ok(())
    }
}
