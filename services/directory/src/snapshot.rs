//! Snapshots of the directory store: one file with every replicated
//! record at one log sequence, checked end to end.
//!
//! The same format serves three purposes: the snapshots nodes of a
//! replicated deployment publish so that the log can be compacted and a
//! new node can join without replaying all history ([`crate::replica`]),
//! `presenced backup` files, and what `presenced restore` loads.
//!
//! Layout: the magic `PRESNAP1`; a length-delimited [`SnapshotHeader`];
//! every record as a length-delimited [`WriteOp`] in key order; an empty
//! `WriteOp` as the end marker; then the SHA-256 of everything before
//! it. A file is read twice on import: once to check the digest, once
//! to load, so a damaged file never touches the store.

use crate::store::{Store, WriteOp, keys, storage};
use presence_core::{ApiError, ApiResult};
use prost::Message;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"PRESNAP1";

/// How many records one sled batch of an import holds.
const IMPORT_BATCH: usize = 10_000;

/// What a snapshot holds, written at its start.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotHeader {
    /// Version of the layout (1).
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// The last log entry the snapshot includes (0: a store that never
    /// was replicated, e.g. an embedded broker's).
    #[prost(uint64, tag = "2")]
    pub log_sequence: u64,
    /// The store's commit sequence at the snapshot (event sequences
    /// continue from it).
    #[prost(uint64, tag = "3")]
    pub store_sequence: u64,
    /// When it was taken, milliseconds since the Unix epoch.
    #[prost(uint64, tag = "4")]
    pub created_unix_ms: u64,
}

/// A written or checked snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The last log entry it includes.
    pub log_sequence: u64,
    /// The store's commit sequence at the snapshot.
    pub store_sequence: u64,
    /// Number of records.
    pub records: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the file's content (before the digest itself).
    pub sha256: String,
}

fn io(what: &str, e: std::io::Error) -> ApiError {
    ApiError::Internal(format!("{what}: {e}"))
}

fn corrupt(why: &str) -> ApiError {
    ApiError::FailedPrecondition(format!("not a valid directory snapshot: {why}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.hash.update(b);
        self.bytes += b.len() as u64;
        self.inner.write_all(b)
    }
}

impl<R: Read> Hashing<R> {
    fn take(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_exact(buf)?;
        self.hash.update(&*buf);
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// Reads one length-delimited message body.
    fn frame(&mut self, limit: usize) -> ApiResult<Vec<u8>> {
        let mut len: u64 = 0;
        for shift in (0..64).step_by(7) {
            let mut b = [0u8; 1];
            self.take(&mut b).map_err(|_| corrupt("truncated"))?;
            len |= u64::from(b[0] & 0x7f) << shift;
            if b[0] & 0x80 == 0 {
                let len = usize::try_from(len).map_err(|_| corrupt("bad length"))?;
                if len > limit {
                    return Err(corrupt("record too large"));
                }
                let mut body = vec![0u8; len];
                self.take(&mut body).map_err(|_| corrupt("truncated"))?;
                return Ok(body);
            }
        }
        Err(corrupt("bad length"))
    }
}

/// Largest record a snapshot may hold (sled values are far smaller).
const MAX_RECORD: usize = 64 * 1024 * 1024;

/// Reads a snapshot, calling `each` for every record; returns its header
/// and what was read. Fails on any damage, after or before `each` ran.
fn read(
    path: &Path,
    mut each: impl FnMut(WriteOp) -> ApiResult<()>,
) -> ApiResult<(SnapshotHeader, SnapshotInfo)> {
    let f = File::open(path).map_err(|e| io(&format!("open {}", path.display()), e))?;
    let mut r = Hashing {
        inner: BufReader::new(f),
        hash: Sha256::new(),
        bytes: 0,
    };
    let mut magic = [0u8; 8];
    r.take(&mut magic).map_err(|_| corrupt("truncated"))?;
    if &magic != MAGIC {
        return Err(corrupt("wrong magic"));
    }
    let header = SnapshotHeader::decode(r.frame(4096)?.as_slice())
        .map_err(|e| corrupt(&format!("header: {e}")))?;
    if header.format != 1 {
        return Err(corrupt(&format!("unknown format {}", header.format)));
    }
    let mut records = 0;
    loop {
        let op = WriteOp::decode(r.frame(MAX_RECORD)?.as_slice())
            .map_err(|e| corrupt(&format!("record: {e}")))?;
        if op.key.is_empty() {
            break;
        }
        records += 1;
        each(op)?;
    }
    let digest = r.hash.finalize();
    let mut stored = [0u8; 32];
    r.inner
        .read_exact(&mut stored)
        .map_err(|_| corrupt("truncated digest"))?;
    if stored[..] != digest[..] {
        return Err(corrupt("checksum mismatch"));
    }
    let mut rest = [0u8; 1];
    if r.inner.read(&mut rest).map_err(|e| io("read", e))? != 0 {
        return Err(corrupt("data after the checksum"));
    }
    let info = SnapshotInfo {
        log_sequence: header.log_sequence,
        store_sequence: header.store_sequence,
        records,
        bytes: r.bytes + 32,
        sha256: hex(&digest),
    };
    Ok((header, info))
}

/// Checks a snapshot file end to end without loading it.
pub fn verify(path: &Path) -> ApiResult<SnapshotInfo> {
    read(path, |_| Ok(())).map(|(_, i)| i)
}

/// How [`Store::import_snapshot`] treats what it loads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// Record this log sequence instead of the snapshot's (a restore into
    /// a new deployment, whose log starts afresh).
    pub log_sequence: Option<u64>,
    /// Leave out recorded transaction outcomes (they belong to the log
    /// the snapshot came from).
    pub drop_outcomes: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    /// Writes every replicated record (all but the node's own metadata)
    /// to `path`, consistent at one log sequence: the store takes no
    /// write while it runs.
    pub fn export_snapshot(&self, path: &Path) -> ApiResult<SnapshotInfo> {
        let tmp = path.with_extension("partial");
        let f = File::create(&tmp).map_err(|e| io(&format!("create {}", tmp.display()), e))?;
        let mut w = Hashing {
            inner: BufWriter::new(f),
            hash: Sha256::new(),
            bytes: 0,
        };
        let guard = match self.write_lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let header = SnapshotHeader {
            format: 1,
            log_sequence: self.log_sequence()?,
            store_sequence: self.sequence()?,
            created_unix_ms: now_ms(),
        };
        let meta = keys::prefix(keys::META, &[]);
        let mut records = 0u64;
        let write = |w: &mut Hashing<BufWriter<File>>, b: &[u8]| {
            w.put(b)
                .map_err(|e| io(&format!("write {}", tmp.display()), e))
        };
        write(&mut w, MAGIC)?;
        write(&mut w, &header.encode_length_delimited_to_vec())?;
        for r in self.tree.iter() {
            let (k, v) = r.map_err(storage)?;
            if k.starts_with(&meta) {
                continue;
            }
            let op = WriteOp {
                key: k.to_vec(),
                value: Some(v.to_vec()),
            };
            write(&mut w, &op.encode_length_delimited_to_vec())?;
            records += 1;
        }
        drop(guard);
        write(&mut w, &WriteOp::default().encode_length_delimited_to_vec())?;
        let digest = w.hash.clone().finalize();
        let bytes = w.bytes + 32;
        let mut inner = w.inner;
        inner
            .write_all(&digest)
            .and_then(|_| inner.flush())
            .map_err(|e| io(&format!("write {}", tmp.display()), e))?;
        let f = inner
            .into_inner()
            .map_err(|e| io(&format!("write {}", tmp.display()), e.into_error()))?;
        f.sync_all()
            .map_err(|e| io(&format!("sync {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(&format!("rename {}", path.display()), e))?;
        Ok(SnapshotInfo {
            log_sequence: header.log_sequence,
            store_sequence: header.store_sequence,
            records,
            bytes,
            sha256: hex(&digest),
        })
    }

    /// Replaces every replicated record with the snapshot at `path`
    /// (checked first), keeping the node's own metadata. A crash midway
    /// leaves a marker that [`Store::import_pending`] reports, so the
    /// load is done again before the store is used.
    pub fn import_snapshot(&self, path: &Path, opts: ImportOptions) -> ApiResult<SnapshotInfo> {
        verify(path)?;
        let guard = match self.write_lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let loading = keys::key(keys::META, &["loading"]);
        self.tree.insert(&loading, b"1").map_err(storage)?;
        self.db.flush().map_err(storage)?;
        let meta = keys::prefix(keys::META, &[]);
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for r in self.tree.iter() {
            let (k, _) = r.map_err(storage)?;
            if !k.starts_with(&meta) {
                batch.remove(k);
                n += 1;
                if n % IMPORT_BATCH == 0 {
                    self.tree
                        .apply_batch(std::mem::take(&mut batch))
                        .map_err(storage)?;
                }
            }
        }
        self.tree.apply_batch(batch).map_err(storage)?;
        self.committed();
        let outcomes = [
            keys::prefix(keys::TX, &[]),
            keys::prefix(keys::TX_BY_SEQ, &[]),
        ];
        let mut batch = sled::Batch::default();
        let mut n = 0;
        let (header, mut info) = read(path, |op| {
            if op.key.starts_with(&meta)
                || (opts.drop_outcomes && outcomes.iter().any(|p| op.key.starts_with(p)))
            {
                return Ok(());
            }
            batch.insert(op.key, op.value.unwrap_or_default());
            n += 1;
            if n % IMPORT_BATCH == 0 {
                self.tree
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(storage)?;
            }
            Ok(())
        })?;
        let log = opts.log_sequence.unwrap_or(header.log_sequence);
        batch.insert(keys::key(keys::META, &["log"]), log.to_be_bytes().to_vec());
        batch.insert(
            keys::key(keys::META, &["seq"]),
            header.store_sequence.to_be_bytes().to_vec(),
        );
        batch.remove(loading);
        self.tree.apply_batch(batch).map_err(storage)?;
        self.committed();
        self.db.flush().map_err(storage)?;
        drop(guard);
        info.log_sequence = log;
        Ok(info)
    }

    /// Whether a snapshot load was interrupted: the store's records are
    /// incomplete and must be loaded again.
    pub fn import_pending(&self) -> ApiResult<bool> {
        Ok(self
            .get_raw(&keys::key(keys::META, &["loading"]))?
            .is_some())
    }

    /// Whether the store holds no replicated record at all.
    pub fn is_empty_of_records(&self) -> ApiResult<bool> {
        let meta = keys::prefix(keys::META, &[]);
        for r in self.tree.iter() {
            let (k, _) = r.map_err(storage)?;
            if !k.starts_with(&meta) {
                return Ok(false);
            }
        }
        Ok(self.sequence()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LogEntry;

    fn tmp() -> ApiResult<tempfile::TempDir> {
        tempfile::tempdir().map_err(|e| ApiError::Internal(e.to_string()))
    }

    #[test]
    fn test_a_snapshot_loads_into_an_equal_store_and_damage_is_refused() -> ApiResult<()> {
        let dir = tmp()?;
        let a = Store::open(&dir.path().join("a"))?;
        for i in 0..50u8 {
            let e = LogEntry {
                tx_id: format!("t{i}"),
                writes: vec![WriteOp {
                    key: keys::key(keys::QUEUE, &["acme", &format!("q{i}")]),
                    value: Some(vec![i; 40]),
                }],
                ..Default::default()
            };
            a.apply_entry(&e, u64::from(i) + 1)?;
        }
        a.put_local(&keys::key(keys::META, &["bootstrapped"]), b"1")?;
        let file = dir.path().join("snap");
        let info = a.export_snapshot(&file)?;
        assert_eq!(info.log_sequence, 50);
        // 50 records, 50 outcomes, 50 outcome indexes; no metadata.
        assert_eq!(info.records, 150);
        assert_eq!(verify(&file)?, info);

        let b = Store::open(&dir.path().join("b"))?;
        b.put_local(&keys::key(keys::QUEUE, &["acme", "stale"]), b"x")?;
        let loaded = b.import_snapshot(&file, ImportOptions::default())?;
        assert_eq!(loaded, info);
        assert_eq!(b.digest()?, a.digest()?);
        assert_eq!(b.log_sequence()?, 50);
        assert_eq!(b.sequence()?, a.sequence()?);
        assert!(!b.import_pending()?);
        // The node's own facts stay its own.
        assert!(
            b.get_raw(&keys::key(keys::META, &["bootstrapped"]))?
                .is_none()
        );

        // Restored into a new deployment: outcomes dropped, log renumbered.
        let c = Store::open(&dir.path().join("c"))?;
        let opts = ImportOptions {
            log_sequence: Some(1),
            drop_outcomes: true,
        };
        assert_eq!(c.import_snapshot(&file, opts)?.log_sequence, 1);
        assert!(c.outcome("t3")?.is_none());
        assert_eq!(c.scan(&keys::prefix(keys::QUEUE, &[]), None).count(), 50);

        // One flipped byte anywhere: refused, the store untouched.
        let mut bytes = std::fs::read(&file).map_err(|e| io("read", e))?;
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        let bad = dir.path().join("bad");
        std::fs::write(&bad, &bytes).map_err(|e| io("write", e))?;
        let before = b.digest()?;
        assert!(matches!(
            b.import_snapshot(&bad, ImportOptions::default()),
            Err(ApiError::FailedPrecondition(_))
        ));
        std::fs::write(&bad, &bytes[..bytes.len() - 10]).map_err(|e| io("write", e))?;
        assert!(verify(&bad).is_err());
        assert_eq!(b.digest()?, before);
        Ok(())
    }
}
