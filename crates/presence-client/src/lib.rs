//! Rust client SDK of the presence broker.
//!
//! [`connect`] opens one HTTP/2 channel and returns typed clients for
//! every service, each sending the bearer token on every call. Errors
//! come back as [`presence_core::ApiError`] via
//! [`presence_proto::status::from_status`].
//!
//! `https://` URLs use TLS: the server's certificate is checked against
//! the system's roots, or against the CA of [`Tls::ca_file`]; a client
//! certificate ([`Tls::cert_file`], [`Tls::key_file`]) is shown to
//! servers that verify clients (mTLS).
//!
//! The `presencectl` binary (src/bin/presencectl/) is built on it.

use presence_proto::v1::auth_service_client::AuthServiceClient;
use presence_proto::v1::directory_service_client::DirectoryServiceClient;
use presence_proto::v1::policy_service_client::PolicyServiceClient;
use presence_proto::v1::presence_service_client::PresenceServiceClient;
use std::path::PathBuf;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Adds `authorization: Bearer <token>` to every request, when a token
/// is set.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Returns an interceptor for `token` (None sends no header).
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        match token {
            None => Ok(Self(None)),
            Some(t) => format!("Bearer {}", t.trim())
                .parse()
                .map(|v| Self(Some(v)))
                .map_err(|_| ClientError::BadToken),
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel with the bearer interceptor.
pub type AuthedChannel = InterceptedService<Channel, Bearer>;

/// Client errors before any RPC is made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL is malformed.
    #[error("invalid server url {0:?}")]
    BadUrl(String),
    /// The token contains characters that cannot go in a header.
    #[error("token is not valid header text")]
    BadToken,
    /// The server cannot be reached.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// The TLS settings cannot be used.
    #[error("tls: {0}")]
    Tls(String),
}

/// TLS settings of a connection (used with `https://` URLs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// PEM CA certificate(s) the server's certificate must chain to;
    /// `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Name to check the server's certificate against, when it differs
    /// from the URL's host.
    pub server_name: Option<String>,
}

impl Tls {
    /// Whether any setting is given.
    pub fn is_set(&self) -> bool {
        self != &Self::default()
    }

    fn client_config(&self) -> Result<ClientTlsConfig, ClientError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| ClientError::Tls(format!("read {}: {e}", p.display())))
        };
        let mut c = ClientTlsConfig::new();
        c = match &self.ca_file {
            Some(ca) => c.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => c.with_native_roots(),
        };
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                c = c.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(ClientError::Tls(
                    "a client certificate and its key go together".into(),
                ));
            }
        }
        if let Some(name) = &self.server_name {
            c = c.domain_name(name.clone());
        }
        Ok(c)
    }
}

/// Returns an endpoint for `url` with `tls` applied (`https://` URLs).
pub fn endpoint(url: &str, tls: &Tls) -> Result<Endpoint, ClientError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|_| ClientError::BadUrl(url.to_owned()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config(tls.client_config()?)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
    } else if tls.is_set() {
        return Err(ClientError::Tls(format!(
            "TLS settings are given but {url} is not an https:// URL"
        )));
    }
    Ok(endpoint)
}

/// Typed clients of every presence service over one channel.
#[derive(Clone)]
pub struct PresenceClient {
    /// DirectoryService.
    pub directory: DirectoryServiceClient<AuthedChannel>,
    /// AuthService.
    pub auth: AuthServiceClient<AuthedChannel>,
    /// PolicyService.
    pub policy: PolicyServiceClient<AuthedChannel>,
    /// PresenceService.
    pub presence: PresenceServiceClient<AuthedChannel>,
}

/// Connects to `url` (e.g. `http://127.0.0.1:50051`) and returns clients
/// that send `token`.
pub async fn connect(url: &str, token: Option<&str>) -> Result<PresenceClient, ClientError> {
    connect_with(url, token, &Tls::default()).await
}

/// Connects to `url` with TLS settings (`https://` URLs) and returns
/// clients that send `token`.
pub async fn connect_with(
    url: &str,
    token: Option<&str>,
    tls: &Tls,
) -> Result<PresenceClient, ClientError> {
    let channel = endpoint(url, tls)?
        .connect()
        .await
        // tonic's "transport error" alone says nothing: give the causes.
        .map_err(|e| ClientError::Connect(url.to_owned(), causes(&e)))?;
    with_channel(channel, token)
}

/// Returns `e` and its sources, joined by `: ` (for one-line errors).
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut why = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        // Layers often repeat the message of the one below.
        if !why.ends_with(&s_text) {
            why.push_str(": ");
            why.push_str(&s_text);
        }
        src = s.source();
    }
    why
}

/// Returns clients over an existing channel.
pub fn with_channel(channel: Channel, token: Option<&str>) -> Result<PresenceClient, ClientError> {
    let bearer = Bearer::new(token)?;
    Ok(PresenceClient {
        directory: DirectoryServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        auth: AuthServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        policy: PolicyServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        presence: PresenceServiceClient::with_interceptor(channel, bearer),
    })
}
