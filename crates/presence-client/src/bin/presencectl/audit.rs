//! `presencectl audit`: the audit trail of a domain, of one user, or of
//! the deployment (newest first).

use crate::common::{CtlResult, Out, render_table, status_err, utc};
use clap::Args;
use presence_client::PresenceClient;
use presence_proto::v1;

/// Which trail to show.
#[derive(Args, Debug)]
pub(crate) struct AuditArgs {
    /// Domain (without it: deployment-wide events: domain deletions,
    /// tokens for every domain, signing keys).
    #[arg(long, short = 'd', env = "PRESENCE_DOMAIN")]
    domain: Option<String>,
    /// Only the events about this user.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Events per page.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Start after this event (a `next page` token).
    #[arg(long)]
    page_token: Option<String>,
    /// Follow every page to the oldest event.
    #[arg(long)]
    all: bool,
}

fn row(e: &v1::AuditEvent) -> Vec<String> {
    vec![
        utc(e.at_ms),
        e.principal.clone(),
        e.action.clone(),
        if e.user.is_empty() {
            "-".into()
        } else {
            e.user.clone()
        },
        if e.before.is_empty() {
            "-".into()
        } else {
            e.before.clone()
        },
        if e.after.is_empty() {
            "-".into()
        } else {
            e.after.clone()
        },
    ]
}

pub(crate) async fn audit_cmd(c: &mut PresenceClient, out: &Out, a: AuditArgs) -> CtlResult<()> {
    let mut token = a.page_token.unwrap_or_default();
    let mut events = Vec::new();
    loop {
        let r = c
            .directory
            .list_audit_events(v1::ListAuditEventsRequest {
                domain: a.domain.clone().unwrap_or_default(),
                user: a.user.clone().unwrap_or_default(),
                page_size: a.limit,
                page_token: token,
            })
            .await
            .map_err(status_err)?
            .into_inner();
        events.extend(r.events);
        token = r.next_page_token;
        if token.is_empty() || !a.all {
            break;
        }
    }
    let page = v1::ListAuditEventsResponse {
        events,
        next_page_token: token,
    };
    if out.json {
        return out.value(&page, &[], Vec::new());
    }
    print!(
        "{}",
        render_table(
            &["TIME", "BY", "ACTION", "USER", "BEFORE", "AFTER"],
            page.events.iter().map(row).collect(),
        )
    );
    if !page.next_page_token.is_empty() {
        println!("next page: --page-token {}", page.next_page_token);
    }
    Ok(())
}
