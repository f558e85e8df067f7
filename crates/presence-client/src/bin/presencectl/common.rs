//! What every command group shares: parsing of arguments, errors,
//! tokens on disk, and output as tables or JSON.

use clap::Args;
use presence_core::{Scope, UserKind};
use presence_proto::convert::{kind_to_proto, scope_to_proto};
use presence_proto::v1;
use serde::Serialize;
use std::path::PathBuf;
use tonic::Status;

use crate::Cli;

/// The domain a command is about.
#[derive(Args, Debug)]
pub(crate) struct Dom {
    /// Domain id.
    #[arg(long, short = 'd', env = "PRESENCE_DOMAIN")]
    pub(crate) domain: String,
}

pub(crate) type CtlResult<T> = Result<T, String>;

pub(crate) fn parse_grantee(s: &str) -> CtlResult<v1::Grantee> {
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

pub(crate) fn grantee_name(g: &v1::Grantee) -> String {
    use v1::grantee::Kind as G;
    match &g.kind {
        Some(G::User(u)) => format!("user:{u}"),
        Some(G::Site(x)) => format!("site:{x}"),
        Some(G::Domain(_)) => "domain".into(),
        None => "-".into(),
    }
}

pub(crate) fn enum_name(full: &str, prefix: &str) -> String {
    full.trim_start_matches(prefix)
        .to_lowercase()
        .replace('_', "-")
}

pub(crate) fn rule_name(r: i32) -> String {
    v1::Rule::try_from(r)
        .map(|r| enum_name(r.as_str_name(), "RULE_"))
        .unwrap_or_else(|_| "-".into())
}

pub(crate) fn status_err(s: Status) -> String {
    let code = format!("{:?}", s.code());
    let mut snake = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    // A transport failure (e.g. a TLS alert after the handshake) says
    // only "transport error": append its causes.
    match std::error::Error::source(&s).map(presence_client::causes) {
        Some(c) if c.starts_with(s.message()) => format!("{snake}: {c}"),
        Some(c) => format!("{snake}: {}: {c}", s.message()),
        None => format!("{snake}: {}", s.message()),
    }
}

pub(crate) fn saved_token_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/presence/token"))
}

pub(crate) fn resolve_token(cli: &Cli) -> CtlResult<Option<String>> {
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

pub(crate) fn parse_scope(s: &str) -> CtlResult<i32> {
    Scope::from_name(s)
        .map(|s| scope_to_proto(s) as i32)
        .ok_or_else(|| format!("unknown scope {s:?}"))
}

pub(crate) fn parse_kind(s: &str) -> CtlResult<i32> {
    UserKind::from_name(s)
        .map(|k| kind_to_proto(k) as i32)
        .ok_or_else(|| format!("unknown kind {s:?}"))
}

pub(crate) fn parse_rule(s: &str) -> CtlResult<v1::AnsweringRule> {
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

pub(crate) fn parse_key(s: &str) -> CtlResult<v1::LineKey> {
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
pub(crate) struct Out {
    pub(crate) json: bool,
}

impl Out {
    pub(crate) fn value<T: Serialize>(
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
        print!("{}", render_table(headers, rows));
        Ok(())
    }

    pub(crate) fn done(&self, what: &str) {
        if self.json {
            println!("{{}}");
        } else {
            println!("{what}");
        }
    }
}

/// A table: upper-case headers, columns padded to their widest cell.
pub(crate) fn render_table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:w$}", c, w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        out.push_str(s.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
    out
}

pub(crate) fn scope_name(v: i32) -> String {
    presence_proto::convert::scope_from_proto(v)
        .map(|s| s.name().to_owned())
        .unwrap_or_else(|_| "-".into())
}

pub(crate) fn kind_name(v: i32) -> String {
    presence_proto::convert::kind_from_proto(v)
        .map(|k| k.name().to_owned())
        .unwrap_or_else(|_| "-".into())
}

pub(crate) fn user_rows(users: &[v1::User]) -> Vec<Vec<String>> {
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

pub(crate) const DOMAIN_HEADERS: &[&str] = &["id", "name", "dns name", "version"];

pub(crate) fn domain_row(d: &v1::Domain) -> Vec<String> {
    vec![
        d.id.clone(),
        d.name.clone(),
        d.dns_name.clone(),
        d.version.to_string(),
    ]
}

pub(crate) const USER_HEADERS: &[&str] = &[
    "id",
    "name",
    "kind",
    "scope",
    "site",
    "email",
    "department",
    "version",
];

pub(crate) fn phone_rows(phones: &[v1::Phone]) -> Vec<Vec<String>> {
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

pub(crate) const PHONE_HEADERS: &[&str] = &["mac", "user", "model", "label", "keys", "version"];

pub(crate) fn queue_rows(queues: &[v1::Queue]) -> Vec<Vec<String>> {
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

pub(crate) const QUEUE_HEADERS: &[&str] =
    &["queue", "agents (*=logged in)", "supervisors", "version"];

pub(crate) fn options_rows(o: &v1::UserOptions) -> Vec<Vec<String>> {
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

pub(crate) fn save_token(token: &str, print: bool) -> CtlResult<()> {
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

/// Formats unix milliseconds as UTC `YYYY-MM-DD HH:MM:SSZ` ("-" for 0).
pub(crate) fn utc(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn test_utc_formats_known_instants() {
        assert_eq!(utc(0), "-");
        assert_eq!(utc(1), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_796_319_994_000), "2026-12-03 17:46:34Z");
        assert_eq!(utc(-1000), "1969-12-31 23:59:59Z");
    }
}
