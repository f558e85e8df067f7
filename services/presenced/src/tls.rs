//! TLS on the gRPC port (rustls with the ring provider).
//!
//! The server certificate chain and key (and, for mTLS, the CA that
//! client certificates must chain to) are read from PEM files. They are
//! read again every `tls_reload_interval_secs` and on `SIGHUP`: when the
//! bytes changed and the new files form a valid configuration, new
//! handshakes use it at once; connections already open keep theirs. A
//! broken file (half written, wrong key) is logged and counted, and the
//! previous configuration stays in force, so a botched renewal never
//! takes the port down.
//!
//! Metrics: `presence_tls_reloads_total{result="changed|unchanged|error"}`.

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Which files make the TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM CA certificates client certificates must chain to (mTLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients without a certificate (else a
    /// client may come without one, but a certificate it shows must be
    /// valid).
    pub client_cert_required: bool,
}

struct Loaded {
    config: Arc<rustls::ServerConfig>,
    /// The files' bytes, to tell whether they changed.
    bytes: Vec<Vec<u8>>,
    /// SHA-256 of the leaf certificate, hex (logged at each change).
    fingerprint: String,
}

/// The server's current TLS configuration, reloadable.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_all(files: &TlsFiles) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut paths = vec![&files.cert, &files.key];
    paths.extend(files.client_ca.as_ref());
    paths
        .into_iter()
        .map(|p| std::fs::read(p).with_context(|| format!("read {}", p.display())))
        .collect()
}

fn build(files: &TlsFiles, bytes: Vec<Vec<u8>>) -> anyhow::Result<Loaded> {
    let certs = CertificateDer::pem_slice_iter(&bytes[0])
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not PEM certificates", files.cert.display()))?;
    let Some(leaf) = certs.first() else {
        anyhow::bail!("{} holds no certificate", files.cert.display());
    };
    let fingerprint = {
        use sha2::Digest as _;
        sha2::Sha256::digest(leaf.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let key = PrivateKeyDer::from_pem_slice(&bytes[1])
        .with_context(|| format!("{}: no PEM private key", files.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match (&files.client_ca, bytes.get(2)) {
        (Some(path), Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                let c = c.with_context(|| format!("{}: not PEM certificates", path.display()))?;
                roots
                    .add(c)
                    .with_context(|| format!("{}: unusable CA certificate", path.display()))?;
            }
            if roots.is_empty() {
                anyhow::bail!("{} holds no certificate", path.display());
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            );
            let v = if files.client_cert_required {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(v.build().context("client certificate verifier")?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "{} and {} do not make a usable certificate and key",
            files.cert.display(),
            files.key.display()
        )
    })?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        bytes,
        fingerprint,
    })
}

impl ServerTls {
    /// Loads the files; fails (naming the file) when they do not make a
    /// valid configuration.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let loaded = build(&files, read_all(&files)?)?;
        tracing::info!(certificate = %files.cert.display(), sha256 = %loaded.fingerprint,
            client_ca = ?files.client_ca, "TLS on the gRPC port");
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(loaded)),
        }))
    }

    fn loaded(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Returns an acceptor with the configuration now in force.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.loaded().config.clone())
    }

    /// SHA-256 of the leaf certificate now in force, hex.
    pub fn fingerprint(&self) -> String {
        self.loaded().fingerprint.clone()
    }

    /// Reads the files again; returns whether the configuration changed.
    /// On an error the configuration in force stays.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let bytes = read_all(&self.files)?;
        if bytes == self.loaded().bytes {
            return Ok(false);
        }
        let loaded = Arc::new(build(&self.files, bytes)?);
        tracing::info!(sha256 = %loaded.fingerprint, "TLS certificate reloaded");
        match self.current.write() {
            Ok(mut g) => *g = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        Ok(true)
    }

    fn reload_logged(&self) {
        let result = match self.reload() {
            Ok(true) => "changed",
            Ok(false) => "unchanged",
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "TLS reload failed; the previous certificate stays in force"
                );
                "error"
            }
        };
        metrics::counter!("presence_tls_reloads_total", "result" => result).increment(1);
    }
}

/// Reloads `tls` every `interval` and on SIGHUP until `shutdown`. Runs
/// without TLS too: SIGHUP (`systemctl reload`) must never end the
/// process, whose default action on it is to exit.
pub async fn watch(tls: Option<Arc<ServerTls>>, interval: Duration, shutdown: CancellationToken) {
    #[cfg(unix)]
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS reloads by interval only");
            None
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let tick = async {
            match &tls {
                Some(_) => {
                    tick.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick => {}
            _ = hangup => tracing::info!(tls = tls.is_some(), "SIGHUP: reloading the TLS files"),
        }
        if let Some(t) = &tls {
            t.reload_logged();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use presence_testkit::pki::Pki;

    fn files(dir: &std::path::Path, pki: &Pki, name: &str) -> TlsFiles {
        let (cert, key) = pki.server(name, &["localhost"]);
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
            client_cert_required: false,
        }
    }

    #[test]
    fn test_reload_takes_new_files_and_keeps_the_old_on_broken_ones() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let f = files(dir.path(), &pki, "one");
        let tls = ServerTls::load(f.clone()).unwrap();
        let first = tls.fingerprint();
        assert!(!tls.reload().unwrap(), "same bytes: unchanged");
        files(dir.path(), &pki, "two");
        assert!(tls.reload().unwrap());
        let second = tls.fingerprint();
        assert_ne!(first, second);
        // A half-written key: refused, the second certificate stays.
        std::fs::write(&f.key, "-----BEGIN PRIVATE KEY-----\nAAAA").unwrap();
        assert!(tls.reload().is_err());
        assert_eq!(tls.fingerprint(), second);
        // A key of another certificate: refused too.
        let (_, other_key) = pki.server("three", &["localhost"]);
        std::fs::write(&f.key, other_key).unwrap();
        let err = tls.reload().unwrap_err();
        assert!(format!("{err:#}").contains("usable"), "{err:#}");
        assert_eq!(tls.fingerprint(), second);
    }

    #[test]
    fn test_load_names_the_file_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let mut f = files(dir.path(), &pki, "one");
        f.client_ca = Some(dir.path().join("missing-ca.pem"));
        let err = ServerTls::load(f.clone()).unwrap_err();
        assert!(format!("{err:#}").contains("missing-ca.pem"), "{err:#}");
        std::fs::write(dir.path().join("missing-ca.pem"), "nothing").unwrap();
        let err = ServerTls::load(f).unwrap_err();
        assert!(format!("{err:#}").contains("no certificate"), "{err:#}");
    }
}
