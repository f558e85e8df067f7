//! presencectl: manage a presence broker from the command line.
//!
//! Tables by default, `--json` for scripts, one-line errors
//! (`error: not_found: user 1001 not found in domain acme`) with a
//! non-zero exit code.
//!
//! One module per command group: [`directory`] (domains, sites, users,
//! options, phones, queues), [`policy`], [`presence`] (get, watch,
//! publish), [`keys`] (signing keys), [`audit`] (the audit trail); [`common`] holds argument parsing, errors, saved tokens and
//! the table/JSON output.

mod audit;
mod common;
mod directory;
mod keys;
mod policy;
mod presence;

use clap::{Parser, Subcommand};
use common::*;
use directory::*;
use policy::PolicyCmd;
use presence_client::{PresenceClient, connect_with};
use presence_proto::v1;
use std::path::PathBuf;
use std::process::ExitCode;
#[derive(Parser, Debug)]
#[command(name = "presencectl", version, about = "Manage a presence broker")]
struct Cli {
    /// Server URL (`https://…` for TLS).
    #[arg(
        long,
        env = "PRESENCE_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: String,
    /// Bearer token (overrides --token-file).
    #[arg(long, env = "PRESENCE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token. Default: the file `login` saves
    /// (~/.config/presence/token), else ./data/bootstrap-admin.token.
    #[arg(long, env = "PRESENCE_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// PEM CA certificate the server's certificate must chain to
    /// (https:// URLs; default: the system's roots).
    #[arg(long, env = "PRESENCE_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (mTLS).
    #[arg(long, env = "PRESENCE_CERT_FILE", global = true, requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// PEM private key of --cert-file.
    #[arg(long, env = "PRESENCE_KEY_FILE", global = true, requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Log in as a user and save the session token.
    Login {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        user: String,
        /// Password; read from PRESENCE_PASSWORD or the first line of stdin when absent.
        #[arg(long, env = "PRESENCE_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// New password, when the account requires a reset.
        #[arg(long)]
        new_password: Option<String>,
        /// Print the token instead of saving it.
        #[arg(long)]
        print: bool,
    },
    /// Accept a welcome token: set the first password (and voicemail PIN).
    AcceptWelcome {
        welcome_token: String,
        #[arg(long)]
        password: String,
        #[arg(long)]
        pin: Option<String>,
        #[arg(long)]
        print: bool,
    },
    /// Show who the token belongs to.
    Whoami,
    /// Domains (tenants).
    #[command(subcommand)]
    Domains(DomainCmd),
    /// Sites of a domain.
    #[command(subcommand)]
    Sites(SiteCmd),
    /// Users of a domain.
    #[command(subcommand)]
    Users(UserCmd),
    /// Answering rules and voicemail of a user.
    #[command(subcommand)]
    Options(OptionsCmd),
    /// Phones.
    #[command(subcommand)]
    Phones(PhoneCmd),
    /// Call queues.
    #[command(subcommand)]
    Queues(QueueCmd),
    /// Tokens for services and phones.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The audit trail: who changed access, when, before and after.
    Audit(audit::AuditArgs),
    /// Token signing keys: list, add, retire.
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Presence permissions: settings, grants, lines, checks.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Live presence: get, watch, publish device events.
    #[command(subcommand)]
    Presence(presence::PresenceCmd),
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Issue a service token (--service) or a phone token (--phone MAC).
    Issue {
        #[arg(long, conflicts_with = "phone")]
        service: Option<String>,
        #[arg(long)]
        phone: Option<String>,
        #[arg(long = "domain")]
        domains: Vec<String>,
        #[arg(long = "right")]
        rights: Vec<String>,
        #[arg(long, default_value_t = 0)]
        ttl_secs: u64,
    },
    /// Revoke a token before it expires: give the token (`-` reads it
    /// from stdin) or its id (as `issue --json` shows it).
    Revoke {
        /// The token to revoke, or `-` for stdin.
        #[arg(conflicts_with = "id", required_unless_present = "id")]
        revoked: Option<String>,
        /// The token's id instead (32 hex digits).
        #[arg(long)]
        id: Option<String>,
    },
}

async fn run(cli: Cli) -> CtlResult<()> {
    let token = resolve_token(&cli)?;
    let tls = presence_client::Tls {
        ca_file: cli.ca_file.clone(),
        cert_file: cli.cert_file.clone(),
        key_file: cli.key_file.clone(),
        server_name: None,
    };
    let mut c: PresenceClient = connect_with(&cli.server, token.as_deref(), &tls)
        .await
        .map_err(|e| e.to_string())?;
    let out = Out { json: cli.json };
    match cli.command {
        Cmd::Login {
            domain,
            user,
            password,
            new_password,
            print,
        } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .map_err(|e| e.to_string())?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            let r = c
                .auth
                .login(v1::LoginRequest {
                    domain,
                    user,
                    password,
                    new_password,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            save_token(&r.token, print)?;
        }
        Cmd::AcceptWelcome {
            welcome_token,
            password,
            pin,
            print,
        } => {
            let r = c
                .auth
                .accept_welcome(v1::AcceptWelcomeRequest {
                    welcome_token,
                    password,
                    voicemail_pin: pin,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            save_token(&r.token, print)?;
        }
        Cmd::Whoami => {
            let r = c
                .auth
                .who_am_i(v1::WhoAmIRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            let row = match r.principal.as_ref().and_then(|p| p.kind.as_ref()) {
                Some(v1::principal::Kind::User(u)) => vec![
                    "user".into(),
                    format!("{}/{}", u.domain, u.user),
                    scope_name(u.scope),
                ],
                Some(v1::principal::Kind::Phone(p)) => vec![
                    "phone".into(),
                    format!("{}/{}", p.domain, p.user),
                    p.mac.clone(),
                ],
                Some(v1::principal::Kind::Service(s)) => {
                    vec![
                        "service".into(),
                        s.name.clone(),
                        format!("{} in {}", s.rights.join(","), s.domains.join(",")),
                    ]
                }
                None => vec!["-".into(), "-".into(), "-".into()],
            };
            out.value(&r, &["kind", "who", "scope/rights"], vec![row])?;
        }
        Cmd::Domains(cmd) => directory::domains(&mut c, &out, cmd).await?,
        Cmd::Sites(cmd) => directory::sites(&mut c, &out, cmd).await?,
        Cmd::Users(cmd) => directory::users(&mut c, &out, cmd).await?,
        Cmd::Options(cmd) => directory::options(&mut c, &out, cmd).await?,
        Cmd::Phones(cmd) => directory::phones(&mut c, &out, cmd).await?,
        Cmd::Queues(cmd) => directory::queues(&mut c, &out, cmd).await?,
        Cmd::Policy(cmd) => policy::policy_cmd(&mut c, &out, cmd).await?,
        Cmd::Presence(cmd) => presence::run(&mut c, &out, cmd).await?,
        Cmd::Keys(cmd) => keys::keys_cmd(&mut c, &out, cmd).await?,
        Cmd::Audit(a) => audit::audit_cmd(&mut c, &out, a).await?,
        Cmd::Token(TokenCmd::Revoke { revoked, id }) => {
            let token = match revoked.as_deref() {
                Some("-") => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .map_err(|e| e.to_string())?;
                    line.trim().to_owned()
                }
                Some(t) => t.to_owned(),
                None => String::new(),
            };
            let r = c
                .auth
                .revoke_token(v1::RevokeTokenRequest {
                    token,
                    token_id: id.unwrap_or_default(),
                    expires_at_ms: 0,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let what = if r.revoked {
                format!("token {} revoked", r.token_id)
            } else {
                format!("token {} had expired already", r.token_id)
            };
            out.done(&what);
        }
        Cmd::Token(TokenCmd::Issue {
            service,
            phone,
            domains,
            rights,
            ttl_secs,
        }) => {
            let subject = match (service, phone) {
                (Some(name), None) => {
                    v1::issue_token_request::Subject::Service(v1::ServicePrincipal {
                        name,
                        domains,
                        rights,
                    })
                }
                (None, Some(mac)) => {
                    let domain = domains.first().cloned().ok_or("--phone needs --domain")?;
                    v1::issue_token_request::Subject::Phone(v1::PhonePrincipal {
                        domain,
                        user: String::new(),
                        mac,
                    })
                }
                _ => return Err("give --service NAME or --phone MAC".into()),
            };
            let r = c
                .auth
                .issue_token(v1::IssueTokenRequest {
                    subject: Some(subject),
                    ttl_seconds: ttl_secs,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if cli.json {
                out.value(&r, &[], vec![])?;
            } else {
                println!("{}", r.token);
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
