//! The NATS bus: a thin layer over an `async_nats::Client`.
//!
//! Each subscription buffers at most `subscription_capacity` messages in
//! the client (async-nats drops and reports a slow consumer beyond that).
//! The client reconnects by itself; while disconnected, publishes are
//! buffered by async-nats up to its own bound.

use crate::{Bus, BusError, BusFuture, BusMessage, BusSubscription};
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;

/// A bus backed by a NATS connection (and a second one, opened on first
/// use, for [`Bus::subscribe_ingest`]).
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    reconnects: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    cfg: NatsConfig,
    ingest: std::sync::Arc<tokio::sync::OnceCell<async_nats::Client>>,
}

/// Connection settings of the NATS bus.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL(s), comma separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Messages buffered per subscription before drops.
    pub subscription_capacity: usize,
    /// Name shown in the server's connection list.
    pub connection_name: String,
    /// How long to wait for the first connection.
    pub connect_timeout: Duration,
    /// TLS and credentials.
    pub security: NatsSecurity,
}

/// How the bus proves who it is to NATS and checks the server: TLS with
/// a custom CA and a client certificate, and credentials (a `.creds`
/// file of a decentralized-auth user, or an nkey seed). User and
/// password or a token go in the URL (`nats://user:password@host`).
#[derive(Debug, Clone, Default)]
pub struct NatsSecurity {
    /// PEM file of the CA(s) the server's certificate must chain to
    /// (default: the system's roots). Setting it requires TLS.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for servers that verify clients (`verify:
    /// true`); needs `key_file`.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<std::path::PathBuf>,
    /// A NATS credentials file (user JWT and nkey seed, as `nsc`
    /// writes).
    pub creds_file: Option<std::path::PathBuf>,
    /// A file holding an nkey seed (`SU…`), for servers whose users are
    /// nkeys.
    pub nkey_file: Option<std::path::PathBuf>,
}

impl NatsSecurity {
    /// Whether TLS is required whatever the URL says.
    fn requires_tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some()
    }
}

impl NatsBus {
    /// Connects to NATS. Fails if no server answers within the timeout.
    pub async fn connect(cfg: &NatsConfig) -> Result<Self, BusError> {
        let reconnects = std::sync::Arc::new(tokio::sync::watch::channel(0u64).0);
        let events = reconnects.clone();
        let client = connect_with(cfg, &cfg.connection_name, move |ev| {
            let events = events.clone();
            async move {
                tracing::info!(event = %ev, "nats connection event");
                if matches!(
                    ev,
                    async_nats::Event::Connected | async_nats::Event::SlowConsumer(_)
                ) {
                    events.send_modify(|n| *n += 1);
                }
            }
        })
        .await?;
        Ok(Self {
            client,
            reconnects,
            cfg: cfg.clone(),
            ingest: Default::default(),
        })
    }

    /// Returns the underlying client (for JetStream use by services).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The connection of ingest subscriptions: its slow consumers are
    /// counted (`presence_bus_ingest_dropped_total`), not signalled as a
    /// need to resynchronize, and logged at debug level only (a flood
    /// drops one message at a time).
    async fn ingest_client(&self) -> Result<&async_nats::Client, BusError> {
        let name = format!("{}-ingest", self.cfg.connection_name);
        self.ingest
            .get_or_try_init(|| {
                connect_with(&self.cfg, &name, |ev| async move {
                    match ev {
                        async_nats::Event::SlowConsumer(_) => {
                            metrics::counter!("presence_bus_ingest_dropped_total").increment(1);
                            tracing::debug!(event = %ev, "ingest connection event");
                        }
                        ev => tracing::info!(event = %ev, "ingest connection event"),
                    }
                })
            })
            .await
    }
}

/// Connects to `cfg`'s servers as `name`, with `events` as the event
/// callback.
async fn connect_with<F, Fut>(
    cfg: &NatsConfig,
    name: &str,
    events: F,
) -> Result<async_nats::Client, BusError>
where
    F: Fn(async_nats::Event) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    {
        // async-nats does not read credentials from the URL itself:
        // `nats://user:password@host` and `nats://token@host` are applied
        // here.
        let mut opts = async_nats::ConnectOptions::new();
        // A comma-separated list of seed servers: async-nats takes a list
        // of addresses, not one string with commas in it.
        let servers = parse_servers(&cfg.url)?;
        if let Some(addr) = servers.first() {
            match (addr.username(), addr.password()) {
                (Some(u), Some(p)) => {
                    opts = opts.user_and_password(u.to_owned(), p.to_owned());
                }
                (Some(t), None) => opts = opts.token(t.to_owned()),
                _ => {}
            }
        }
        let sec = &cfg.security;
        if let Some(ca) = &sec.ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        match (&sec.cert_file, &sec.key_file) {
            (Some(c), Some(k)) => opts = opts.add_client_certificate(c.clone(), k.clone()),
            (None, None) => {}
            _ => {
                return Err(BusError::Unavailable(
                    "a NATS client certificate needs both its certificate and its key file".into(),
                ));
            }
        }
        if sec.requires_tls() || servers.iter().any(|s| s.tls_required()) {
            opts = opts.require_tls(true);
        }
        if sec.creds_file.is_some() && sec.nkey_file.is_some() {
            return Err(BusError::Unavailable(
                "give a NATS credentials file or an nkey seed file, not both".into(),
            ));
        }
        if let Some(f) = &sec.creds_file {
            opts = opts.credentials_file(f).await.map_err(|e| {
                BusError::Unavailable(format!("NATS credentials file {}: {e}", f.display()))
            })?;
        }
        if let Some(f) = &sec.nkey_file {
            let seed = std::fs::read_to_string(f).map_err(|e| {
                BusError::Unavailable(format!("NATS nkey seed file {}: {e}", f.display()))
            })?;
            opts = opts.nkey(seed.trim().to_owned());
        }
        opts.name(name)
            .subscription_capacity(cfg.subscription_capacity.max(1))
            .connection_timeout(cfg.connect_timeout)
            .event_callback(events)
            .connect(servers)
            .await
            .map_err(|e| {
                BusError::Unavailable(format!("connect to NATS at {}: {e}", redact(&cfg.url)))
            })
    }
}

/// A server list with passwords and tokens replaced by `***`, for
/// messages and logs.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|s| match s.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((cred, host)) => {
                    let user = cred.split_once(':').map_or("***", |(u, _)| u);
                    let cred = if cred.contains(':') {
                        format!("{user}:***")
                    } else {
                        "***".to_owned()
                    };
                    format!("{scheme}://{cred}@{host}")
                }
                None => s.to_owned(),
            },
            None => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `nats://a:4222,nats://b:4222,…` (or `host:port` items) into
/// server addresses; a malformed item is named in the error.
pub fn parse_servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, BusError> {
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| BusError::Unavailable(format!("invalid NATS server URL {s:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err(BusError::Unavailable("no NATS server URL given".into()));
    }
    Ok(servers)
}

fn map_sub(sub: async_nats::Subscriber) -> BusSubscription {
    Box::pin(sub.map(|m| {
        BusMessage {
            subject: m.subject.to_string(),
            payload: m.payload,
            reply: m.reply.map(|r| r.to_string()),
            trace: crate::trace::from_header(
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(crate::trace::HEADER))
                    .map(|v| v.as_str()),
            ),
        }
    }))
}

fn subject(s: String) -> Result<async_nats::Subject, BusError> {
    if crate::pattern::valid_pattern(&s) {
        Ok(async_nats::Subject::from(s))
    } else {
        Err(BusError::InvalidSubject(s))
    }
}

impl Bus for NatsBus {
    fn publish(&self, subj: String, payload: Bytes) -> BusFuture<'_, ()> {
        Box::pin(async move {
            if !crate::pattern::valid_subject(&subj) {
                return Err(BusError::InvalidSubject(subj));
            }
            self.client
                .publish(subject(subj)?, payload)
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))
        })
    }

    fn publish_traced(
        &self,
        subj: String,
        payload: Bytes,
        trace: Option<crate::trace::TraceParent>,
    ) -> BusFuture<'_, ()> {
        let Some(t) = trace else {
            return self.publish(subj, payload);
        };
        Box::pin(async move {
            if !crate::pattern::valid_subject(&subj) {
                return Err(BusError::InvalidSubject(subj));
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(crate::trace::HEADER, t.header().as_str());
            self.client
                .publish_with_headers(subject(subj)?, headers, payload)
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))
        })
    }

    fn subscribe(&self, pattern: String) -> BusFuture<'_, BusSubscription> {
        Box::pin(async move {
            let sub = self
                .client
                .subscribe(subject(pattern)?)
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))?;
            Ok(map_sub(sub))
        })
    }

    fn subscribe_ingest(&self, pattern: String) -> BusFuture<'_, BusSubscription> {
        Box::pin(async move {
            let client = self.ingest_client().await?;
            let sub = client
                .subscribe(subject(pattern)?)
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))?;
            // The subscription is on the server once the connection has
            // flushed it (as for the main connection's subscribe).
            client
                .flush()
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))?;
            Ok(map_sub(sub))
        })
    }

    fn queue_subscribe(&self, pattern: String, group: String) -> BusFuture<'_, BusSubscription> {
        Box::pin(async move {
            let sub = self
                .client
                .queue_subscribe(subject(pattern)?, group)
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))?;
            Ok(map_sub(sub))
        })
    }

    fn request(&self, subj: String, payload: Bytes, timeout: Duration) -> BusFuture<'_, Bytes> {
        Box::pin(async move {
            if !crate::pattern::valid_subject(&subj) {
                return Err(BusError::InvalidSubject(subj));
            }
            let req = self.client.request(subject(subj.clone())?, payload);
            match tokio::time::timeout(timeout, req).await {
                Ok(Ok(m)) => Ok(m.payload),
                Ok(Err(e)) => Err(BusError::Unavailable(format!("request on {subj}: {e}"))),
                Err(_) => Err(BusError::Unavailable(format!(
                    "no reply on {subj} within {timeout:?}"
                ))),
            }
        })
    }

    fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reconnects.subscribe()
    }

    fn flush(&self) -> BusFuture<'_, ()> {
        Box::pin(async move {
            self.client
                .flush()
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))
        })
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_and_tokens_never_reach_a_message() {
        assert_eq!(
            redact("nats://presenced:s3cret@a:4222,tls://tok@b:4222,nats://c:4222"),
            "nats://presenced:***@a:4222,tls://***@b:4222,nats://c:4222"
        );
        assert_eq!(redact("127.0.0.1:4222"), "127.0.0.1:4222");
    }
}
