//! The sandbox of the end-to-end tests: a presenced server on a loopback
//! port with a temporary data directory, optionally over a real
//! nats-server, plus helpers to get authenticated clients.

#![allow(missing_docs, clippy::unwrap_used)]

use presence_client::{PresenceClient, Tls, connect_with};
use presence_presenced::{Config, Server};
use presence_proto::v1;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use presence_testkit::NatsServer;

/// A running server.
pub struct Sandbox {
    pub addr: SocketAddr,
    pub admin_token: String,
    pub admin: PresenceClient,
    data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    nats_url: String,
    /// The client side of TLS (default: plaintext).
    tls: Tls,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow_free::Result>,
}

mod anyhow_free {
    pub type Result = std::result::Result<(), String>;
}

impl Sandbox {
    /// Starts an embedded server (in-process bus).
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// Starts a server using the given NATS URL ("" = in-process bus).
    pub async fn start_with(nats_url: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Self::start_in(&dir, nats_url).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts an embedded server whose configuration `tune` adjusts
    /// (limits, timeouts) after the sandbox's own settings.
    pub async fn start_tuned(tune: impl FnOnce(&mut Config)) -> Self {
        Self::start_tuned_with("", tune).await
    }

    /// Starts a server on `nats_url` ("" = in-process bus) whose
    /// configuration `tune` adjusts (roles, key file, limits).
    pub async fn start_tuned_with(nats_url: &str, tune: impl FnOnce(&mut Config)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Self::start_in_with(&dir, nats_url, tune).await;
        s._tmp = Some(tmp);
        s
    }

    /// Returns the server's data directory (its signing key is
    /// `auth.key` there).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Starts an embedded server with TLS on (`tune` sets the server's
    /// files); its clients connect over `https://` with `tls`.
    pub async fn start_tls(tls: Tls, tune: impl FnOnce(&mut Config)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Self::start_in_tls(&dir, "", tls, tune).await;
        s._tmp = Some(tmp);
        s
    }

    async fn start_in(dir: &Path, nats_url: &str) -> Self {
        Self::start_in_with(dir, nats_url, |_| {}).await
    }

    async fn start_in_with(dir: &Path, nats_url: &str, tune: impl FnOnce(&mut Config)) -> Self {
        Self::start_in_tls(dir, nats_url, Tls::default(), tune).await
    }

    async fn start_in_tls(
        dir: &Path,
        nats_url: &str,
        tls: Tls,
        tune: impl FnOnce(&mut Config),
    ) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut cfg = Config {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.to_path_buf(),
            nats_url: nats_url.to_owned(),
            metrics_listen: String::new(),
            shutdown_grace_secs: 2,
            ..Config::default()
        };
        tune(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::build(cfg).await.unwrap();
        let admin_token = std::fs::read_to_string(dir.join("bootstrap-admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let handle = tokio::spawn(async move {
            server
                .run(listener, stop)
                .await
                .map_err(|e| format!("{e:#}"))
        });
        let scheme = if tls.is_set() { "https" } else { "http" };
        let admin = connect_with(&format!("{scheme}://{addr}"), Some(&admin_token), &tls)
            .await
            .unwrap();
        Self {
            addr,
            admin_token,
            admin,
            data_dir: dir.to_path_buf(),
            _tmp: None,
            nats_url: nats_url.to_owned(),
            tls,
            shutdown,
            handle,
        }
    }

    /// Returns the server URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_set() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Returns a client sending `token` (None: no token).
    pub async fn client(&self, token: Option<&str>) -> PresenceClient {
        connect_with(&self.url(), token, &self.tls).await.unwrap()
    }

    /// Logs in and returns the token.
    pub async fn login_token(&self, domain: &str, user: &str, password: &str) -> String {
        let mut c = self.client(None).await;
        c.auth
            .login(v1::LoginRequest {
                domain: domain.into(),
                user: user.into(),
                password: password.into(),
                new_password: None,
            })
            .await
            .unwrap_or_else(|e| panic!("login {domain}/{user}: {e}"))
            .into_inner()
            .token
    }

    /// Logs in and returns a client for the user.
    pub async fn login(&self, domain: &str, user: &str, password: &str) -> PresenceClient {
        let t = self.login_token(domain, user, password).await;
        self.client(Some(&t)).await
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(self) -> Option<tempfile::TempDir> {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
        self._tmp
    }

    /// Stops the server and starts a new one on the same data directory.
    pub async fn restart(self) -> Self {
        let dir = self.data_dir.clone();
        let url = self.nats_url.clone();
        let tmp = self.stop().await;
        let mut s = Self::start_in(&dir, &url).await;
        s._tmp = tmp;
        // The bootstrap token is written only on the first start.
        s
    }
}

/// Creates a domain with the admin client.
pub async fn domain(c: &mut PresenceClient, id: &str) -> v1::Domain {
    c.directory
        .create_domain(v1::CreateDomainRequest {
            id: id.into(),
            name: format!("{id} inc"),
            dns_name: format!("{id}.pbx.example.com"),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Creates a site.
pub async fn site(c: &mut PresenceClient, d: &str, id: &str) -> v1::Site {
    c.directory
        .create_site(v1::CreateSiteRequest {
            domain: d.into(),
            id: id.into(),
            name: format!("site {id}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Parameters of [`user`].
#[derive(Default, Clone)]
pub struct NewUser<'a> {
    pub first: &'a str,
    pub last: &'a str,
    pub email: &'a str,
    pub department: &'a str,
    pub scope: Option<v1::Scope>,
    pub kind: Option<v1::UserKind>,
    pub site: &'a str,
    pub password: Option<&'a str>,
}

/// Creates a user.
pub async fn user(c: &mut PresenceClient, d: &str, id: &str, u: NewUser<'_>) -> v1::User {
    c.directory
        .create_user(req_user(d, id, u))
        .await
        .unwrap_or_else(|e| panic!("create user {id}: {e}"))
        .into_inner()
}

/// Returns the request [`user`] sends.
pub fn req_user(d: &str, id: &str, u: NewUser<'_>) -> v1::CreateUserRequest {
    v1::CreateUserRequest {
        domain: d.into(),
        id: id.into(),
        kind: u.kind.map(|k| k as i32).unwrap_or(0),
        scope: u.scope.map(|s| s as i32).unwrap_or(0),
        site: u.site.into(),
        profile: Some(v1::Profile {
            first_name: u.first.into(),
            last_name: u.last.into(),
            email: u.email.into(),
            department: u.department.into(),
            caller_id_name: String::new(),
        }),
        password: u.password.map(str::to_owned),
    }
}

/// Asserts that a call failed with `code`, and returns its message.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: tonic::Code) -> String {
    match r {
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "message: {}", s.message());
            s.message().to_owned()
        }
    }
}

/// A boxed future borrowing a client, for [`check_matrix`].
pub type CallFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::Status>> + Send + 'a>>;

/// Runs an authorization matrix: for each row (operation, expected
/// outcome per principal: `ok`, `PD`, `NF`, `UA`), calls `call(op, i,
/// client_i)` and returns every mismatch as a sentence.
pub async fn check_matrix<F>(
    principals: &[&str],
    matrix: &[(&'static str, &'static str)],
    clients: &mut [PresenceClient],
    mut call: F,
) -> Vec<String>
where
    F: for<'a> FnMut(&'static str, usize, &'a mut PresenceClient) -> CallFuture<'a>,
{
    use tonic::Code;
    let mut failures = Vec::new();
    for (op, row) in matrix {
        let expected: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(expected.len(), principals.len(), "row {op}");
        for (i, want) in expected.iter().enumerate() {
            let got = match call(op, i, &mut clients[i]).await {
                Ok(()) => "ok",
                Err(s) => match s.code() {
                    Code::PermissionDenied => "PD",
                    Code::NotFound => "NF",
                    Code::Unauthenticated => "UA",
                    _ => {
                        failures.push(format!(
                            "{op} as {}: unexpected {:?}: {}",
                            principals[i],
                            s.code(),
                            s.message()
                        ));
                        continue;
                    }
                },
            };
            if got != *want {
                failures.push(format!(
                    "{op} as {}: expected {want}, got {got}",
                    principals[i]
                ));
            }
        }
    }
    failures
}

/// Issues a service token with `rights` in `domains` (using `admin`).
pub async fn service_token(
    admin: &mut PresenceClient,
    name: &str,
    domains: &[&str],
    rights: &[&str],
) -> String {
    admin
        .auth
        .issue_token(v1::IssueTokenRequest {
            subject: Some(v1::issue_token_request::Subject::Service(
                v1::ServicePrincipal {
                    name: name.into(),
                    domains: domains.iter().map(|d| d.to_string()).collect(),
                    rights: rights.iter().map(|r| r.to_string()).collect(),
                },
            )),
            ttl_seconds: 3600,
        })
        .await
        .unwrap_or_else(|e| panic!("issue token for {name}: {e}"))
        .into_inner()
        .token
}

/// Issues a token for the phone `mac` of `domain` (using `admin`).
pub async fn phone_token(admin: &mut PresenceClient, domain: &str, mac: &str) -> String {
    admin
        .auth
        .issue_token(v1::IssueTokenRequest {
            subject: Some(v1::issue_token_request::Subject::Phone(
                v1::PhonePrincipal {
                    domain: domain.into(),
                    user: String::new(),
                    mac: mac.into(),
                },
            )),
            ttl_seconds: 3600,
        })
        .await
        .unwrap_or_else(|e| panic!("issue phone token for {mac}: {e}"))
        .into_inner()
        .token
}
