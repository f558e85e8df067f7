//! What every node of a deployment over NATS must agree on, checked
//! before the node serves.
//!
//! - JetStream must be enabled on the NATS server: without it a node
//!   cannot own shards or keep logs, and used to hang instead of saying so.
//! - Settings that must be equal on every node (the shard count, the
//!   shard lease lifetime, the token signing key) are recorded by the first
//!   node in the KV bucket `PRESENCE_DEPLOYMENT` (key `settings`, written
//!   with `create`, which is safe on replicated buckets of every server
//!   version); a node started with other values is refused with a message
//!   naming the setting and both values (exit 64, like any bad
//!   configuration). Nodes with different shard counts lost events.

use crate::config::Config;
use async_nats::jetstream;
use presence_auth::TokenSigner;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// KV bucket holding the deployment's recorded settings.
pub const BUCKET: &str = "PRESENCE_DEPLOYMENT";
const KEY: &str = "settings";

/// The settings every node must share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// `shards`.
    pub shards: usize,
    /// `lease_ttl_ms`.
    pub lease_ttl_ms: u64,
    /// Fingerprint of the signing key (`auth_key_file`).
    pub signing_key_fingerprint: String,
}

impl Settings {
    /// Returns this node's values.
    pub fn of(cfg: &Config, signer: &TokenSigner) -> Self {
        Self {
            shards: cfg.shards,
            lease_ttl_ms: cfg.lease_ttl_ms,
            signing_key_fingerprint: signer.fingerprint(),
        }
    }

    /// Returns the first setting that differs from `recorded`, as
    /// (name, recorded value, this node's value).
    pub fn differs_from(&self, recorded: &Settings) -> Option<(&'static str, String, String)> {
        if self.shards != recorded.shards {
            return Some((
                "shards",
                recorded.shards.to_string(),
                self.shards.to_string(),
            ));
        }
        if self.lease_ttl_ms != recorded.lease_ttl_ms {
            return Some((
                "lease_ttl_ms",
                recorded.lease_ttl_ms.to_string(),
                self.lease_ttl_ms.to_string(),
            ));
        }
        if self.signing_key_fingerprint != recorded.signing_key_fingerprint {
            return Some((
                "auth_key_file (signing key fingerprint)",
                recorded.signing_key_fingerprint.clone(),
                self.signing_key_fingerprint.clone(),
            ));
        }
        None
    }
}

/// A node whose configuration disagrees with the deployment's; the
/// binary exits 64 on it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{setting} differs from the deployment's: recorded {recorded}, this node {ours}; \
     every node on this NATS must use the same value (see docs/deployment.md)"
)]
pub struct Mismatch {
    /// The setting's name.
    pub setting: &'static str,
    /// The value recorded by the first node.
    pub recorded: String,
    /// This node's value.
    pub ours: String,
}

/// Fails unless the NATS server answers JetStream requests within
/// `timeout`.
pub async fn require_jetstream(
    client: &async_nats::Client,
    timeout: Duration,
) -> anyhow::Result<()> {
    let how = "presence needs JetStream on its NATS servers: start nats-server with -js, \
               or add a `jetstream { store_dir: ... }` block to its configuration \
               (deploy/nats/single.conf)";
    match tokio::time::timeout(timeout, client.request("$JS.API.INFO", "".into())).await {
        Err(_) => anyhow::bail!("no answer from JetStream within {timeout:?}: {how}"),
        Ok(Err(e)) => anyhow::bail!("JetStream is not available ({e}): {how}"),
        Ok(Ok(m)) => {
            // A server with JetStream disabled for the account answers
            // with an error object instead of account information.
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            if let Some(err) = v.get("error") {
                anyhow::bail!("JetStream is not available ({err}): {how}");
            }
            Ok(())
        }
    }
}

/// Records `ours` as the deployment's settings if none are recorded yet;
/// otherwise returns [`Mismatch`] (inside the error) when they differ.
pub async fn check_settings(
    client: &async_nats::Client,
    ours: &Settings,
    replicas: usize,
) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    let kv = presence_fanout::cluster::bucket(&js, BUCKET, Duration::ZERO, replicas)
        .await
        .map_err(|e| anyhow::anyhow!("deployment settings bucket: {e}"))?;
    let bytes = serde_json::to_vec(ours)?;
    if kv.create(KEY, bytes.into()).await.is_ok() {
        tracing::info!(?ours, "recorded the deployment's settings");
        return Ok(());
    }
    // Someone recorded them first (or the create failed): compare.
    let recorded = kv
        .get(KEY)
        .await
        .map_err(|e| anyhow::anyhow!("read the deployment's settings: {e}"))?
        .ok_or_else(|| anyhow::anyhow!("the deployment's settings could not be recorded"))?;
    let recorded: Settings = serde_json::from_slice(&recorded)
        .map_err(|e| anyhow::anyhow!("the recorded deployment settings are unreadable: {e}"))?;
    match ours.differs_from(&recorded) {
        None => Ok(()),
        Some((setting, recorded, ours)) => Err(Mismatch {
            setting,
            recorded,
            ours,
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_first_difference_is_named_with_both_values() {
        let a = Settings {
            shards: 8,
            lease_ttl_ms: 10_000,
            signing_key_fingerprint: "aa".into(),
        };
        assert_eq!(a.differs_from(&a), None);
        let b = Settings {
            shards: 64,
            ..a.clone()
        };
        assert_eq!(
            b.differs_from(&a),
            Some(("shards", "8".to_string(), "64".to_string()))
        );
        let c = Settings {
            signing_key_fingerprint: "bb".into(),
            ..a.clone()
        };
        assert!(
            matches!(c.differs_from(&a), Some((s, r, o)) if s.contains("key") && r == "aa" && o == "bb")
        );
    }
}
