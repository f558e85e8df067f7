//! Policy commands: visibility settings, grants, monitored lines,
//! checks and explanations.

use clap::Subcommand;
use presence_client::PresenceClient;
use presence_proto::v1;

use crate::common::*;

#[derive(Subcommand, Debug)]
pub(crate) enum PolicyCmd {
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

/// Runs a `policy` command.
pub(crate) async fn policy_cmd(c: &mut PresenceClient, out: &Out, cmd: PolicyCmd) -> CtlResult<()> {
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
