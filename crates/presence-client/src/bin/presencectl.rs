//! presencectl: manage a presence broker from the command line.
//!
//! Tables by default, `--json` for scripts, one-line errors
//! (`error: not_found: user 1001 not found in domain acme`) with a
//! non-zero exit code.

use clap::{Args, Parser, Subcommand};
use presence_client::{PresenceClient, connect};
use presence_core::{Scope, UserKind};
use presence_proto::convert::{kind_to_proto, scope_to_proto};
use presence_proto::v1;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use tonic::Status;

#[derive(Parser, Debug)]
#[command(name = "presencectl", version, about = "Manage a presence broker")]
struct Cli {
    /// Server URL.
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
    /// Presence permissions: settings, grants, lines, checks.
    #[command(subcommand)]
    Policy(PolicyCmd),
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Show a user's presence settings.
    Settings {
        #[command(flatten)]
        d: Dom,
        user: String,
        /// everyone, nobody, permitted-users, pickup-users.
        #[arg(long)]
        visibility: Option<String>,
        /// all, none, permitted-users.
        #[arg(long)]
        caller_id: Option<String>,
    },
    /// Show a target's grants, or change them: --see/--pickup take
    /// user:ID, site:ID or domain.
    Grants {
        #[command(flatten)]
        d: Dom,
        target: String,
        /// Replace the see list with these (repeat); with --pickup, both lists.
        #[arg(long)]
        see: Vec<String>,
        #[arg(long)]
        pickup: Vec<String>,
        /// Replace the lists even when empty (clears them).
        #[arg(long)]
        replace: bool,
    },
    /// Show (or set with --target, repeatable) a watcher's monitored lines.
    Lines {
        #[command(flatten)]
        d: Dom,
        watcher: String,
        #[arg(long = "target")]
        targets: Vec<String>,
        #[arg(long)]
        omit_self: bool,
    },
    /// May WATCHER see (or with --pickup, pick up) each TARGET?
    Check {
        #[command(flatten)]
        d: Dom,
        watcher: String,
        targets: Vec<String>,
        #[arg(long)]
        pickup: bool,
    },
    /// Why may (or may not) WATCHER see TARGET?
    Explain {
        #[command(flatten)]
        d: Dom,
        watcher: String,
        target: String,
    },
    /// Who can see TARGET.
    Watchers {
        #[command(flatten)]
        d: Dom,
        target: String,
    },
    /// Whom WATCHER can see.
    Monitorable {
        #[command(flatten)]
        d: Dom,
        watcher: String,
    },
}

#[derive(Subcommand, Debug)]
enum DomainCmd {
    List,
    Get {
        id: String,
    },
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        dns_name: String,
    },
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        dns_name: Option<String>,
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
    Delete {
        id: String,
        #[arg(long)]
        force: bool,
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
}

#[derive(Args, Debug)]
struct Dom {
    /// Domain id.
    #[arg(long, short = 'd', env = "PRESENCE_DOMAIN")]
    domain: String,
}

#[derive(Subcommand, Debug)]
enum SiteCmd {
    List(Dom),
    Get {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
    Create {
        #[command(flatten)]
        d: Dom,
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        address: String,
        #[arg(long, default_value = "")]
        time_zone: String,
    },
    Update {
        #[command(flatten)]
        d: Dom,
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        time_zone: Option<String>,
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
    Delete {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// List or search users (system users hidden unless --show-system).
    List {
        #[command(flatten)]
        d: Dom,
        #[arg(long, default_value = "")]
        search: String,
        #[arg(long)]
        scope: Option<String>,
        #[arg(long, default_value = "")]
        site: String,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value = "")]
        department: String,
        /// Also show conference bridges, auto attendants and call queues.
        #[arg(long)]
        show_system: bool,
        #[arg(long, default_value_t = 0)]
        page_size: u32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    Get {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
    Create {
        #[command(flatten)]
        d: Dom,
        id: String,
        #[arg(long, default_value = "")]
        first_name: String,
        #[arg(long, default_value = "")]
        last_name: String,
        #[arg(long, default_value = "")]
        email: String,
        #[arg(long, default_value = "")]
        department: String,
        /// simple-user, basic-user, call-center-agent, call-center-supervisor, site-manager, office-manager.
        #[arg(long)]
        scope: Option<String>,
        /// person, conference-bridge, auto-attendant, call-queue.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value = "")]
        site: String,
        #[arg(long)]
        password: Option<String>,
    },
    Update {
        #[command(flatten)]
        d: Dom,
        id: String,
        #[arg(long)]
        first_name: Option<String>,
        #[arg(long)]
        last_name: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        department: Option<String>,
        #[arg(long)]
        caller_id_name: Option<String>,
        #[arg(long)]
        scope: Option<String>,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        password: Option<String>,
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
    Delete {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
    /// Answering rules and voicemail back to defaults; sessions ended.
    Reset {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
    /// Issue a welcome token (also published for a mailer).
    Welcome {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
    /// End sessions; the next login must set a new password.
    ForceReset {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum OptionsCmd {
    Get {
        #[command(flatten)]
        d: Dom,
        user: String,
    },
    /// Replace answering rules: --rule CONDITION:TARGET[:TIMEOUT], in order.
    /// CONDITION is always|busy|no-answer|unregistered|dnd; TARGET is
    /// user=ID, number=+1555…, or voicemail.
    Rules {
        #[command(flatten)]
        d: Dom,
        user: String,
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
    Voicemail {
        #[command(flatten)]
        d: Dom,
        user: String,
        #[arg(long)]
        enabled: Option<bool>,
        #[arg(long)]
        greeting: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        pin: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum PhoneCmd {
    List {
        #[command(flatten)]
        d: Dom,
        #[arg(long, default_value = "")]
        user: String,
    },
    Get {
        #[command(flatten)]
        d: Dom,
        mac: String,
    },
    /// Add a phone: --key INDEX:KIND:VALUE[:LABEL] for line keys.
    Add {
        #[command(flatten)]
        d: Dom,
        #[arg(long)]
        user: String,
        mac: String,
        #[arg(long, default_value = "")]
        model: String,
        #[arg(long, default_value = "")]
        label: String,
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    Update {
        #[command(flatten)]
        d: Dom,
        mac: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        label: Option<String>,
        /// Replaces every line key when given at least once.
        #[arg(long = "key")]
        keys: Vec<String>,
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
    Delete {
        #[command(flatten)]
        d: Dom,
        mac: String,
    },
}

#[derive(Subcommand, Debug)]
enum QueueCmd {
    List {
        #[command(flatten)]
        d: Dom,
        #[arg(long, default_value = "")]
        member: String,
    },
    Get {
        #[command(flatten)]
        d: Dom,
        id: String,
    },
    /// Replace agents and supervisors.
    Members {
        #[command(flatten)]
        d: Dom,
        id: String,
        #[arg(long = "agent")]
        agents: Vec<String>,
        #[arg(long = "supervisor")]
        supervisors: Vec<String>,
    },
    Login {
        #[command(flatten)]
        d: Dom,
        id: String,
        agent: String,
    },
    Logout {
        #[command(flatten)]
        d: Dom,
        id: String,
        agent: String,
    },
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
}

type CtlResult<T> = Result<T, String>;

fn parse_grantee(s: &str) -> CtlResult<v1::Grantee> {
    use v1::grantee::Kind as G;
    let kind = match s.split_once(':') {
        Some(("user", u)) => G::User(u.into()),
        Some(("site", x)) => G::Site(x.into()),
        None if s == "domain" => G::Domain(true),
        _ => {
            return Err(format!(
                "grantee {s:?}: expected user:ID, site:ID or domain"
            ));
        }
    };
    Ok(v1::Grantee { kind: Some(kind) })
}

fn grantee_name(g: &v1::Grantee) -> String {
    use v1::grantee::Kind as G;
    match &g.kind {
        Some(G::User(u)) => format!("user:{u}"),
        Some(G::Site(x)) => format!("site:{x}"),
        Some(G::Domain(_)) => "domain".into(),
        None => "-".into(),
    }
}

fn enum_name(full: &str, prefix: &str) -> String {
    full.trim_start_matches(prefix)
        .to_lowercase()
        .replace('_', "-")
}

fn rule_name(r: i32) -> String {
    v1::Rule::try_from(r)
        .map(|r| enum_name(r.as_str_name(), "RULE_"))
        .unwrap_or_else(|_| "-".into())
}

fn status_err(s: Status) -> String {
    let code = format!("{:?}", s.code());
    let mut snake = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    format!("{snake}: {}", s.message())
}

fn saved_token_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/presence/token"))
}

fn resolve_token(cli: &Cli) -> CtlResult<Option<String>> {
    if let Some(t) = &cli.token {
        return Ok(Some(t.clone()));
    }
    let candidates: Vec<PathBuf> = match &cli.token_file {
        Some(f) => vec![f.clone()],
        None => saved_token_path()
            .into_iter()
            .chain([PathBuf::from("data/bootstrap-admin.token")])
            .collect(),
    };
    for f in &candidates {
        match std::fs::read_to_string(f) {
            Ok(t) => return Ok(Some(t.trim().to_owned())),
            Err(e) if cli.token_file.is_some() => {
                return Err(format!("cannot read token file {}: {e}", f.display()));
            }
            Err(_) => {}
        }
    }
    Ok(None)
}

fn parse_scope(s: &str) -> CtlResult<i32> {
    Scope::from_name(s)
        .map(|s| scope_to_proto(s) as i32)
        .ok_or_else(|| format!("unknown scope {s:?}"))
}

fn parse_kind(s: &str) -> CtlResult<i32> {
    UserKind::from_name(s)
        .map(|k| kind_to_proto(k) as i32)
        .ok_or_else(|| format!("unknown kind {s:?}"))
}

fn parse_rule(s: &str) -> CtlResult<v1::AnsweringRule> {
    use v1::forward_target::Target;
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 {
        return Err(format!("rule {s:?}: expected CONDITION:TARGET[:TIMEOUT]"));
    }
    let condition = match parts[0] {
        "always" => v1::RuleCondition::Always,
        "busy" => v1::RuleCondition::Busy,
        "no-answer" => v1::RuleCondition::NoAnswer,
        "unregistered" => v1::RuleCondition::Unregistered,
        "dnd" => v1::RuleCondition::DoNotDisturb,
        c => return Err(format!("rule {s:?}: unknown condition {c:?}")),
    };
    let target = match parts[1].split_once('=') {
        Some(("user", u)) => Target::User(u.to_owned()),
        Some(("number", n)) => Target::ExternalNumber(n.to_owned()),
        None if parts[1] == "voicemail" => Target::Voicemail(true),
        _ => {
            return Err(format!(
                "rule {s:?}: target must be user=ID, number=N or voicemail"
            ));
        }
    };
    let ring_timeout_seconds = match parts.get(2) {
        Some(t) => t.parse().map_err(|_| format!("rule {s:?}: bad timeout"))?,
        None => 0,
    };
    Ok(v1::AnsweringRule {
        condition: condition as i32,
        forward_to: Some(v1::ForwardTarget {
            target: Some(target),
        }),
        ring_timeout_seconds,
        enabled: true,
    })
}

fn parse_key(s: &str) -> CtlResult<v1::LineKey> {
    let parts: Vec<&str> = s.splitn(4, ':').collect();
    if parts.len() < 3 {
        return Err(format!("key {s:?}: expected INDEX:KIND:VALUE[:LABEL]"));
    }
    Ok(v1::LineKey {
        index: parts[0]
            .parse()
            .map_err(|_| format!("key {s:?}: bad index"))?,
        kind: parts[1].to_owned(),
        value: parts[2].to_owned(),
        label: parts.get(3).map(|l| l.to_string()).unwrap_or_default(),
    })
}

/// Prints rows as an aligned table, or values as JSON.
struct Out {
    json: bool,
}

impl Out {
    fn value<T: Serialize>(
        &self,
        v: &T,
        headers: &[&str],
        rows: Vec<Vec<String>>,
    ) -> CtlResult<()> {
        if self.json {
            let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
            println!("{s}");
            return Ok(());
        }
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let line = |cells: Vec<String>| {
            let s: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{:w$}", c, w = widths.get(i).copied().unwrap_or(0)))
                .collect();
            println!("{}", s.join("  ").trim_end());
        };
        line(headers.iter().map(|h| h.to_uppercase()).collect());
        for r in rows {
            line(r);
        }
        Ok(())
    }

    fn done(&self, what: &str) {
        if self.json {
            println!("{{}}");
        } else {
            println!("{what}");
        }
    }
}

fn scope_name(v: i32) -> String {
    presence_proto::convert::scope_from_proto(v)
        .map(|s| s.name().to_owned())
        .unwrap_or_else(|_| "-".into())
}

fn kind_name(v: i32) -> String {
    presence_proto::convert::kind_from_proto(v)
        .map(|k| k.name().to_owned())
        .unwrap_or_else(|_| "-".into())
}

fn user_rows(users: &[v1::User]) -> Vec<Vec<String>> {
    users
        .iter()
        .map(|u| {
            let p = u.profile.clone().unwrap_or_default();
            vec![
                u.id.clone(),
                format!("{} {}", p.first_name, p.last_name)
                    .trim()
                    .to_owned(),
                kind_name(u.kind),
                scope_name(u.scope),
                u.site.clone(),
                p.email,
                p.department,
                u.version.to_string(),
            ]
        })
        .collect()
}

const DOMAIN_HEADERS: &[&str] = &["id", "name", "dns name", "version"];

fn domain_row(d: &v1::Domain) -> Vec<String> {
    vec![
        d.id.clone(),
        d.name.clone(),
        d.dns_name.clone(),
        d.version.to_string(),
    ]
}

const USER_HEADERS: &[&str] = &[
    "id",
    "name",
    "kind",
    "scope",
    "site",
    "email",
    "department",
    "version",
];

fn phone_rows(phones: &[v1::Phone]) -> Vec<Vec<String>> {
    phones
        .iter()
        .map(|p| {
            vec![
                p.mac.clone(),
                p.user.clone(),
                p.model.clone(),
                p.label.clone(),
                p.line_keys.len().to_string(),
                p.version.to_string(),
            ]
        })
        .collect()
}

const PHONE_HEADERS: &[&str] = &["mac", "user", "model", "label", "keys", "version"];

fn queue_rows(queues: &[v1::Queue]) -> Vec<Vec<String>> {
    queues
        .iter()
        .map(|q| {
            let agents: Vec<String> = q
                .agents
                .iter()
                .map(|a| format!("{}{}", a.user, if a.logged_in { "*" } else { "" }))
                .collect();
            vec![
                q.id.clone(),
                agents.join(","),
                q.supervisors.join(","),
                q.version.to_string(),
            ]
        })
        .collect()
}

const QUEUE_HEADERS: &[&str] = &["queue", "agents (*=logged in)", "supervisors", "version"];

fn options_rows(o: &v1::UserOptions) -> Vec<Vec<String>> {
    use v1::forward_target::Target;
    let mut rows: Vec<Vec<String>> = o
        .answering_rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let cond = v1::RuleCondition::try_from(r.condition)
                .map(|c| {
                    c.as_str_name()
                        .trim_start_matches("RULE_CONDITION_")
                        .to_lowercase()
                })
                .unwrap_or_default();
            let target = match r.forward_to.as_ref().and_then(|f| f.target.as_ref()) {
                Some(Target::User(u)) => format!("user {u}"),
                Some(Target::ExternalNumber(n)) => format!("number {n}"),
                Some(Target::Voicemail(_)) => "voicemail".into(),
                None => "-".into(),
            };
            vec![
                format!("rule {}", i + 1),
                format!("{cond} -> {target} ({}s)", r.ring_timeout_seconds),
            ]
        })
        .collect();
    let vm = o.voicemail.clone().unwrap_or_default();
    rows.push(vec![
        "voicemail".into(),
        if vm.enabled {
            "enabled".into()
        } else {
            "disabled".into()
        },
    ]);
    rows.push(vec![
        "pin".into(),
        if vm.pin_set {
            "set".into()
        } else {
            "not set".into()
        },
    ]);
    rows.push(vec!["notify".into(), vm.notification_email]);
    rows.push(vec!["version".into(), o.version.to_string()]);
    rows
}

fn save_token(token: &str, print: bool) -> CtlResult<()> {
    if print {
        println!("{token}");
        return Ok(());
    }
    let path = saved_token_path().ok_or("HOME is not set; use --print")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    std::fs::write(&path, format!("{token}\n"))
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    eprintln!("token saved to {}", path.display());
    Ok(())
}

async fn run(cli: Cli) -> CtlResult<()> {
    let token = resolve_token(&cli)?;
    let mut c: PresenceClient = connect(&cli.server, token.as_deref())
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
        Cmd::Domains(cmd) => {
            let d = match cmd {
                DomainCmd::List => {
                    let r = c
                        .directory
                        .list_domains(v1::ListDomainsRequest {
                            page_size: 1000,
                            page_token: String::new(),
                        })
                        .await
                        .map_err(status_err)?
                        .into_inner();
                    return out.value(
                        &r,
                        DOMAIN_HEADERS,
                        r.domains.iter().map(domain_row).collect(),
                    );
                }
                DomainCmd::Delete {
                    id,
                    force,
                    expected_version,
                } => {
                    c.directory
                        .delete_domain(v1::DeleteDomainRequest {
                            id: id.clone(),
                            expected_version,
                            force,
                        })
                        .await
                        .map_err(status_err)?;
                    out.done(&format!("domain {id} deleted"));
                    return Ok(());
                }
                DomainCmd::Get { id } => c.directory.get_domain(v1::GetDomainRequest { id }).await,
                DomainCmd::Create { id, name, dns_name } => {
                    c.directory
                        .create_domain(v1::CreateDomainRequest { id, name, dns_name })
                        .await
                }
                DomainCmd::Update {
                    id,
                    name,
                    dns_name,
                    expected_version,
                } => {
                    c.directory
                        .update_domain(v1::UpdateDomainRequest {
                            id,
                            expected_version,
                            name,
                            dns_name,
                        })
                        .await
                }
            }
            .map_err(status_err)?
            .into_inner();
            out.value(&d, DOMAIN_HEADERS, vec![domain_row(&d)])?;
        }
        Cmd::Sites(cmd) => {
            let site_row = |s: &v1::Site| {
                vec![
                    s.id.clone(),
                    s.name.clone(),
                    s.address.clone(),
                    s.time_zone.clone(),
                    s.version.to_string(),
                ]
            };
            let headers = &["id", "name", "address", "time zone", "version"];
            match cmd {
                SiteCmd::List(d) => {
                    let r = c
                        .directory
                        .list_sites(v1::ListSitesRequest {
                            domain: d.domain,
                            page_size: 1000,
                            page_token: String::new(),
                        })
                        .await
                        .map_err(status_err)?
                        .into_inner();
                    out.value(&r, headers, r.sites.iter().map(site_row).collect())?;
                }
                SiteCmd::Get { d, id } => {
                    let s = c
                        .directory
                        .get_site(v1::GetSiteRequest {
                            domain: d.domain,
                            id,
                        })
                        .await
                        .map_err(status_err)?
                        .into_inner();
                    out.value(&s, headers, vec![site_row(&s)])?;
                }
                SiteCmd::Create {
                    d,
                    id,
                    name,
                    address,
                    time_zone,
                } => {
                    let s = c
                        .directory
                        .create_site(v1::CreateSiteRequest {
                            domain: d.domain,
                            id,
                            name,
                            address,
                            time_zone,
                        })
                        .await
                        .map_err(status_err)?
                        .into_inner();
                    out.value(&s, headers, vec![site_row(&s)])?;
                }
                SiteCmd::Update {
                    d,
                    id,
                    name,
                    address,
                    time_zone,
                    expected_version,
                } => {
                    let s = c
                        .directory
                        .update_site(v1::UpdateSiteRequest {
                            domain: d.domain,
                            id,
                            expected_version,
                            name,
                            address,
                            time_zone,
                        })
                        .await
                        .map_err(status_err)?
                        .into_inner();
                    out.value(&s, headers, vec![site_row(&s)])?;
                }
                SiteCmd::Delete { d, id } => {
                    c.directory
                        .delete_site(v1::DeleteSiteRequest {
                            domain: d.domain,
                            id: id.clone(),
                            expected_version: 0,
                        })
                        .await
                        .map_err(status_err)?;
                    out.done(&format!("site {id} deleted"));
                }
            }
        }
        Cmd::Users(cmd) => match cmd {
            UserCmd::List {
                d,
                search,
                scope,
                site,
                kind,
                department,
                show_system,
                page_size,
                page_token,
            } => {
                let r = c
                    .directory
                    .list_users(v1::ListUsersRequest {
                        domain: d.domain,
                        search,
                        scope: scope.as_deref().map(parse_scope).transpose()?.unwrap_or(0),
                        site,
                        kind: kind.as_deref().map(parse_kind).transpose()?.unwrap_or(0),
                        department,
                        hide_system_users: Some(!show_system),
                        page_size,
                        page_token,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                out.value(&r, USER_HEADERS, user_rows(&r.users))?;
                if !cli.json && !r.next_page_token.is_empty() {
                    eprintln!("more: --page-token {}", r.next_page_token);
                }
            }
            UserCmd::Get { d, id } => {
                let u = c
                    .directory
                    .get_user(v1::GetUserRequest {
                        domain: d.domain,
                        id,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                out.value(&u, USER_HEADERS, user_rows(std::slice::from_ref(&u)))?;
            }
            UserCmd::Create {
                d,
                id,
                first_name,
                last_name,
                email,
                department,
                scope,
                kind,
                site,
                password,
            } => {
                let u = c
                    .directory
                    .create_user(v1::CreateUserRequest {
                        domain: d.domain,
                        id,
                        kind: kind.as_deref().map(parse_kind).transpose()?.unwrap_or(0),
                        scope: scope.as_deref().map(parse_scope).transpose()?.unwrap_or(0),
                        site,
                        profile: Some(v1::Profile {
                            first_name,
                            last_name,
                            email,
                            department,
                            caller_id_name: String::new(),
                        }),
                        password,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                out.value(&u, USER_HEADERS, user_rows(std::slice::from_ref(&u)))?;
            }
            UserCmd::Update {
                d,
                id,
                first_name,
                last_name,
                email,
                department,
                caller_id_name,
                scope,
                site,
                password,
                expected_version,
            } => {
                let u = c
                    .directory
                    .update_user(v1::UpdateUserRequest {
                        domain: d.domain,
                        id,
                        expected_version,
                        scope: scope.as_deref().map(parse_scope).transpose()?,
                        site,
                        profile: Some(v1::ProfileUpdate {
                            first_name,
                            last_name,
                            email,
                            department,
                            caller_id_name,
                        }),
                        password,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                out.value(&u, USER_HEADERS, user_rows(std::slice::from_ref(&u)))?;
            }
            UserCmd::Delete { d, id } => {
                c.directory
                    .delete_user(v1::DeleteUserRequest {
                        domain: d.domain,
                        id: id.clone(),
                        expected_version: 0,
                    })
                    .await
                    .map_err(status_err)?;
                out.done(&format!("user {id} deleted"));
            }
            UserCmd::Reset { d, id } => {
                let u = c
                    .directory
                    .reset_user(v1::ResetUserRequest {
                        domain: d.domain,
                        user: id,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                out.value(&u, USER_HEADERS, user_rows(std::slice::from_ref(&u)))?;
            }
            UserCmd::Welcome { d, id } => {
                let r = c
                    .directory
                    .send_welcome(v1::SendWelcomeRequest {
                        domain: d.domain,
                        user: id,
                        ttl_seconds: 0,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                out.value(
                    &r,
                    &["welcome token", "expires at (ms)"],
                    vec![vec![r.welcome_token.clone(), r.expires_at_ms.to_string()]],
                )?;
            }
            UserCmd::ForceReset { d, id } => {
                let u = c
                    .directory
                    .force_password_reset(v1::ForcePasswordResetRequest {
                        domain: d.domain,
                        user: id,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                out.value(&u, USER_HEADERS, user_rows(std::slice::from_ref(&u)))?;
            }
        },
        Cmd::Options(cmd) => {
            let o = match cmd {
                OptionsCmd::Get { d, user } => {
                    c.directory
                        .get_user_options(v1::GetUserOptionsRequest {
                            domain: d.domain,
                            user,
                        })
                        .await
                }
                OptionsCmd::Rules { d, user, rules } => {
                    let answering_rules = rules
                        .iter()
                        .map(|r| parse_rule(r))
                        .collect::<CtlResult<Vec<_>>>()?;
                    c.directory
                        .set_answering_rules(v1::SetAnsweringRulesRequest {
                            domain: d.domain,
                            user,
                            expected_version: 0,
                            answering_rules,
                        })
                        .await
                }
                OptionsCmd::Voicemail {
                    d,
                    user,
                    enabled,
                    greeting,
                    email,
                    pin,
                } => {
                    c.directory
                        .update_voicemail(v1::UpdateVoicemailRequest {
                            domain: d.domain,
                            user,
                            expected_version: 0,
                            enabled,
                            greeting,
                            notification_email: email,
                            pin,
                        })
                        .await
                }
            }
            .map_err(status_err)?
            .into_inner();
            out.value(&o, &["option", "value"], options_rows(&o))?;
        }
        Cmd::Phones(cmd) => match cmd {
            PhoneCmd::List { d, user } => {
                let r = c
                    .directory
                    .list_phones(v1::ListPhonesRequest {
                        domain: d.domain,
                        user,
                        page_size: 1000,
                        page_token: String::new(),
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                out.value(&r, PHONE_HEADERS, phone_rows(&r.phones))?;
            }
            PhoneCmd::Get { d, mac } => {
                let p = c
                    .directory
                    .get_phone(v1::GetPhoneRequest {
                        domain: d.domain,
                        mac,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                out.value(&p, PHONE_HEADERS, phone_rows(std::slice::from_ref(&p)))?;
            }
            PhoneCmd::Add {
                d,
                user,
                mac,
                model,
                label,
                keys,
            } => {
                let line_keys = keys
                    .iter()
                    .map(|k| parse_key(k))
                    .collect::<CtlResult<Vec<_>>>()?;
                let p = c
                    .directory
                    .add_phone(v1::AddPhoneRequest {
                        domain: d.domain,
                        user,
                        mac,
                        model,
                        label,
                        line_keys,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                out.value(&p, PHONE_HEADERS, phone_rows(std::slice::from_ref(&p)))?;
            }
            PhoneCmd::Update {
                d,
                mac,
                user,
                model,
                label,
                keys,
                expected_version,
            } => {
                let line_keys = keys
                    .iter()
                    .map(|k| parse_key(k))
                    .collect::<CtlResult<Vec<_>>>()?;
                let p = c
                    .directory
                    .update_phone(v1::UpdatePhoneRequest {
                        domain: d.domain,
                        mac,
                        expected_version,
                        model,
                        label,
                        replace_line_keys: !line_keys.is_empty(),
                        line_keys,
                        user,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                out.value(&p, PHONE_HEADERS, phone_rows(std::slice::from_ref(&p)))?;
            }
            PhoneCmd::Delete { d, mac } => {
                c.directory
                    .delete_phone(v1::DeletePhoneRequest {
                        domain: d.domain,
                        mac: mac.clone(),
                        expected_version: 0,
                    })
                    .await
                    .map_err(status_err)?;
                out.done(&format!("phone {mac} deleted"));
            }
        },
        Cmd::Queues(cmd) => {
            let q = match cmd {
                QueueCmd::List { d, member } => {
                    let r = c
                        .directory
                        .list_queues(v1::ListQueuesRequest {
                            domain: d.domain,
                            member,
                        })
                        .await
                        .map_err(status_err)?
                        .into_inner();
                    return out.value(&r, QUEUE_HEADERS, queue_rows(&r.queues));
                }
                QueueCmd::Get { d, id } => {
                    c.directory
                        .get_queue(v1::GetQueueRequest {
                            domain: d.domain,
                            id,
                        })
                        .await
                }
                QueueCmd::Members {
                    d,
                    id,
                    agents,
                    supervisors,
                } => {
                    c.directory
                        .set_queue_members(v1::SetQueueMembersRequest {
                            domain: d.domain,
                            id,
                            expected_version: 0,
                            agents,
                            supervisors,
                        })
                        .await
                }
                QueueCmd::Login { d, id, agent } => {
                    c.directory
                        .set_queue_login(v1::SetQueueLoginRequest {
                            domain: d.domain,
                            id,
                            agent,
                            logged_in: true,
                        })
                        .await
                }
                QueueCmd::Logout { d, id, agent } => {
                    c.directory
                        .set_queue_login(v1::SetQueueLoginRequest {
                            domain: d.domain,
                            id,
                            agent,
                            logged_in: false,
                        })
                        .await
                }
            }
            .map_err(status_err)?
            .into_inner();
            out.value(&q, QUEUE_HEADERS, queue_rows(std::slice::from_ref(&q)))?;
        }
        Cmd::Policy(cmd) => policy_cmd(&mut c, &out, cmd).await?,
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

async fn policy_cmd(c: &mut PresenceClient, out: &Out, cmd: PolicyCmd) -> CtlResult<()> {
    match cmd {
        PolicyCmd::Settings {
            d,
            user,
            visibility,
            caller_id,
        } => {
            let s = if visibility.is_none() && caller_id.is_none() {
                c.policy
                    .get_presence_settings(v1::GetPresenceSettingsRequest {
                        domain: d.domain,
                        user,
                    })
                    .await
            } else {
                let vis = visibility
                    .map(|v| {
                        v1::Visibility::from_str_name(&format!(
                            "VISIBILITY_{}",
                            v.to_uppercase().replace('-', "_")
                        ))
                        .map(|x| x as i32)
                        .ok_or(format!("unknown visibility {v:?}"))
                    })
                    .transpose()?;
                let cid = caller_id
                    .map(|v| {
                        v1::CallerIdVisibility::from_str_name(&format!(
                            "CALLER_ID_VISIBILITY_{}",
                            v.to_uppercase().replace('-', "_")
                        ))
                        .map(|x| x as i32)
                        .ok_or(format!("unknown caller-id visibility {v:?}"))
                    })
                    .transpose()?;
                c.policy
                    .update_presence_settings(v1::UpdatePresenceSettingsRequest {
                        domain: d.domain,
                        user,
                        visibility: vis,
                        caller_id_visibility: cid,
                        ..Default::default()
                    })
                    .await
            }
            .map_err(status_err)?
            .into_inner();
            let vis = v1::Visibility::try_from(s.visibility)
                .map(|v| enum_name(v.as_str_name(), "VISIBILITY_"))
                .unwrap_or_default();
            let cid = v1::CallerIdVisibility::try_from(s.caller_id_visibility)
                .map(|v| enum_name(v.as_str_name(), "CALLER_ID_VISIBILITY_"))
                .unwrap_or_default();
            out.value(
                &s,
                &["user", "visibility", "caller id", "version"],
                vec![vec![s.user.clone(), vis, cid, s.version.to_string()]],
            )
        }
        PolicyCmd::Grants {
            d,
            target,
            see,
            pickup,
            replace,
        } => {
            let g = if see.is_empty() && pickup.is_empty() && !replace {
                c.policy
                    .list_grants(v1::ListGrantsRequest {
                        domain: d.domain,
                        target,
                    })
                    .await
            } else {
                let see = see
                    .iter()
                    .map(|x| parse_grantee(x))
                    .collect::<CtlResult<Vec<_>>>()?;
                let pickup = pickup
                    .iter()
                    .map(|x| parse_grantee(x))
                    .collect::<CtlResult<Vec<_>>>()?;
                c.policy
                    .set_grants(v1::SetGrantsRequest {
                        domain: d.domain,
                        target,
                        expected_version: 0,
                        see,
                        pickup,
                    })
                    .await
            }
            .map_err(status_err)?
            .into_inner();
            let rows = g
                .see
                .iter()
                .map(|x| vec!["see".to_string(), grantee_name(x)])
                .chain(
                    g.pickup
                        .iter()
                        .map(|x| vec!["pickup".to_string(), grantee_name(x)]),
                )
                .collect();
            out.value(&g, &["grant", "to"], rows)
        }
        PolicyCmd::Lines {
            d,
            watcher,
            targets,
            omit_self,
        } => {
            let l = if targets.is_empty() && !omit_self {
                c.policy
                    .get_monitored_lines(v1::GetMonitoredLinesRequest {
                        domain: d.domain,
                        watcher,
                    })
                    .await
            } else {
                c.policy
                    .set_monitored_lines(v1::SetMonitoredLinesRequest {
                        domain: d.domain,
                        watcher,
                        expected_version: 0,
                        targets,
                        omit_self,
                    })
                    .await
            }
            .map_err(status_err)?
            .into_inner();
            let rows = l
                .lines
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    vec![
                        (i + 1).to_string(),
                        x.target.clone(),
                        if x.allowed {
                            "yes".into()
                        } else {
                            "denied".into()
                        },
                    ]
                })
                .collect();
            out.value(&l, &["key", "target", "allowed"], rows)
        }
        PolicyCmd::Check {
            d,
            watcher,
            targets,
            pickup,
        } => {
            let req = v1::CheckRequest {
                domain: d.domain,
                watcher,
                targets,
                ..Default::default()
            };
            let r = if pickup {
                c.policy.check_pickup(req).await
            } else {
                c.policy.check_see(req).await
            }
            .map_err(status_err)?
            .into_inner();
            let rows = r
                .decisions
                .iter()
                .map(|x| {
                    vec![
                        x.target.clone(),
                        if x.allowed { "yes".into() } else { "no".into() },
                        rule_name(x.rule),
                        if x.caller_id_visible {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                    ]
                })
                .collect();
            out.value(&r, &["target", "allowed", "rule", "caller id"], rows)
        }
        PolicyCmd::Explain { d, watcher, target } => {
            let e = c
                .policy
                .explain(v1::ExplainRequest {
                    domain: d.domain,
                    watcher,
                    target,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let dec = e.decision.clone().unwrap_or_default();
            let row = vec![
                if dec.allowed {
                    "allowed".into()
                } else {
                    "denied".into()
                },
                rule_name(dec.rule),
                e.reason.clone(),
            ];
            out.value(&e, &["decision", "rule", "because"], vec![row])
        }
        PolicyCmd::Watchers { d, target } => {
            let r = c
                .policy
                .list_watchers(v1::ListWatchersRequest {
                    domain: d.domain,
                    target,
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let rows = r
                .watchers
                .iter()
                .map(|w| {
                    vec![
                        w.user.clone(),
                        rule_name(w.rule),
                        if w.can_pickup {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                    ]
                })
                .collect();
            out.value(&r, &["watcher", "rule", "can pick up"], rows)
        }
        PolicyCmd::Monitorable { d, watcher } => {
            let r = c
                .policy
                .list_monitorable(v1::ListMonitorableRequest {
                    domain: d.domain,
                    watcher,
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let rows = r
                .targets
                .iter()
                .map(|x| vec![x.target.clone(), rule_name(x.rule)])
                .collect();
            out.value(&r, &["target", "rule"], rows)
        }
    }
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
