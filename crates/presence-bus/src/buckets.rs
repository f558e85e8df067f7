//! JetStream KV buckets opened the same way by every service.

use async_nats::jetstream::{self, kv, stream};
use presence_core::{ApiError, ApiResult};
use std::time::Duration;

/// Opens KV bucket `name`, creating it if needed, with entries expiring
/// after `max_age` (zero: never) and `replicas` replicas. The bucket's
/// stream is created directly with the KV layout (ADR-8) because
/// async-nats' `create_key_value` first reads account info in a shape
/// nats-server 2.9 does not send.
pub async fn kv_bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> ApiResult<kv::Store> {
    if let Ok(s) = js.get_key_value(name).await {
        return Ok(s);
    }
    let cfg = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    let unavailable =
        |e: &dyn std::fmt::Display| ApiError::Unavailable(format!("KV bucket {name}: {e}"));
    if let Err(e) = js.get_or_create_stream(cfg).await {
        return Err(unavailable(&e));
    }
    js.get_key_value(name).await.map_err(|e| unavailable(&e))
}

/// How long a node keeps retrying the JetStream calls it makes while
/// starting (creating or opening streams and buckets): longer than a
/// stream or meta leader election (4–9 s), so a node started while a
/// NATS server restarts waits instead of failing.
pub const STARTUP_RETRIES_FOR: Duration = Duration::from_secs(30);

/// Runs `f` until it succeeds, retrying `Unavailable` (timeouts, no
/// leader) with backoff for up to [`STARTUP_RETRIES_FOR`].
pub async fn retry_unavailable<T, F, Fut>(what: &str, mut f: F) -> ApiResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ApiResult<T>>,
{
    let deadline = tokio::time::Instant::now() + STARTUP_RETRIES_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        match f().await {
            Err(ApiError::Unavailable(m)) if tokio::time::Instant::now() + pause < deadline => {
                tracing::info!(what, error = %m, "JetStream not ready; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            r => return r,
        }
    }
}

/// Every live entry of KV bucket `name` as (key, value), read from the
/// stream's leader without a consumer: KV `keys()` makes one, which a
/// dead server can leave unanswered, and a direct get may be answered by
/// a replica still catching up after a restart, without recent entries.
/// Deleted and purged keys are left out.
pub async fn kv_entries(
    js: &jetstream::Context,
    name: &str,
) -> ApiResult<Vec<(String, bytes::Bytes)>> {
    use futures_util::TryStreamExt;
    let unavailable =
        |e: &dyn std::fmt::Display| ApiError::Unavailable(format!("KV bucket {name}: {e}"));
    let stream = js
        .get_stream(format!("KV_{name}"))
        .await
        .map_err(|e| unavailable(&e))?;
    let prefix = format!("$KV.{name}.");
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(|e| unavailable(&e))?
        .try_collect()
        .await
        .map_err(|e| unavailable(&e))?;
    let mut out = Vec::with_capacity(subjects.len());
    for (subject, _) in subjects {
        let m = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => continue,
            Err(e) => return Err(unavailable(&e)),
        };
        let op = m.headers.get("KV-Operation").map(|v| v.as_str().to_owned());
        if matches!(op.as_deref(), Some("DEL" | "PURGE")) {
            continue;
        }
        if let Some(key) = subject.strip_prefix(&prefix) {
            out.push((key.to_owned(), m.payload));
        }
    }
    Ok(out)
}
