//! `presenced backup` and `presenced restore`: the whole directory (users,
//! credentials, options, phones, queues, policy) as one checked file.
//!
//! Embedded (no `nats_url`), they read or load the sled store of the data
//! dir; the broker must be stopped (sled holds a lock on it). Over NATS,
//! a backup is read from the replicated log like a joining node reads it
//! (newest snapshot plus the tail), so the deployment keeps serving; a
//! restore goes into a fresh deployment whose directory log is empty, as
//! its first snapshot, and every node then started with an empty data dir
//! loads it.

use crate::config::Config;
use anyhow::Context;
use presence_bus::nats::{NatsBus, NatsConfig};
use presence_directory::snapshot::{ImportOptions, SnapshotInfo};
use presence_directory::store::Store;
use std::path::{Path, PathBuf};
use std::time::Duration;

async fn connect(cfg: &Config) -> anyhow::Result<async_nats::Client> {
    let nb = NatsBus::connect(&NatsConfig {
        url: cfg.nats_url.clone(),
        subscription_capacity: 64,
        connection_name: "presenced backup".into(),
        connect_timeout: Duration::from_secs(5),
        security: cfg.nats_security(),
    })
    .await?;
    let client = nb.client().clone();
    crate::deployment::require_jetstream(&client, Duration::from_secs(5)).await?;
    Ok(client)
}

fn work_dir(cfg: &Config) -> anyhow::Result<PathBuf> {
    let dir = cfg.data_dir.join("snapshots");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

fn open_embedded(cfg: &Config) -> anyhow::Result<Store> {
    let dir = cfg.data_dir.join("directory");
    Store::open(&dir).map_err(|e| {
        anyhow::anyhow!(
            "open the directory store {}: {e} (a running presenced holds it: stop it first)",
            dir.display()
        )
    })
}

/// Writes the whole directory to `out`.
pub async fn backup(cfg: &Config, out: &Path) -> anyhow::Result<SnapshotInfo> {
    if cfg.nats_url.is_empty() {
        let cfg = cfg.clone();
        let out = out.to_owned();
        return tokio::task::spawn_blocking(move || {
            let store = open_embedded(&cfg)?;
            store
                .export_snapshot(&out)
                .map_err(|e| anyhow::anyhow!("backup: {e}"))
        })
        .await?;
    }
    let client = connect(cfg).await?;
    presence_directory::compaction::backup(client, out, &work_dir(cfg)?, cfg.jetstream_replicas)
        .await
        .map_err(|e| anyhow::anyhow!("backup: {e}"))
}

/// Loads the backup `from` into an empty directory: the data dir's
/// store (embedded) or a fresh deployment's log (over NATS).
pub async fn restore(cfg: &Config, from: &Path) -> anyhow::Result<SnapshotInfo> {
    if cfg.nats_url.is_empty() {
        let cfg = cfg.clone();
        let from = from.to_owned();
        return tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("create data dir {}", cfg.data_dir.display()))?;
            let store = open_embedded(&cfg)?;
            let empty = store
                .is_empty_of_records()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if !empty && !store.import_pending().map_err(|e| anyhow::anyhow!("{e}"))? {
                anyhow::bail!(
                    "{} already holds a directory: restore into an empty data dir",
                    cfg.data_dir.display()
                );
            }
            store
                .import_snapshot(
                    &from,
                    ImportOptions {
                        log_sequence: Some(0),
                        drop_outcomes: true,
                    },
                )
                .map_err(|e| anyhow::anyhow!("restore: {e}"))
        })
        .await?;
    }
    let client = connect(cfg).await?;
    let node = if cfg.node_id.is_empty() {
        "presenced-restore".to_owned()
    } else {
        cfg.node_id.clone()
    };
    presence_directory::compaction::restore(
        client,
        from,
        &work_dir(cfg)?,
        cfg.jetstream_replicas,
        &node,
    )
    .await
    .map_err(|e| anyhow::anyhow!("restore: {e}"))
}
