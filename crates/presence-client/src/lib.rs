//! Rust client SDK of the presence broker.
//!
//! [`connect`] opens one HTTP/2 channel and returns typed clients for
//! every service, each sending the bearer token on every call. Errors
//! come back as [`presence_core::ApiError`] via
//! [`presence_proto::status::from_status`].
//!
//! The `presencectl` binary (src/bin/presencectl.rs) is built on it.

use presence_proto::v1::auth_service_client::AuthServiceClient;
use presence_proto::v1::directory_service_client::DirectoryServiceClient;
use presence_proto::v1::policy_service_client::PolicyServiceClient;
use presence_proto::v1::presence_service_client::PresenceServiceClient;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

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
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|_| ClientError::BadUrl(url.to_owned()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ClientError::Connect(url.to_owned(), e.to_string()))?;
    with_channel(channel, token)
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
