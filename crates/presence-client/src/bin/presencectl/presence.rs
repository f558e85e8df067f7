//! Presence commands: read states (`get`), follow them live (`watch`),
//! and publish device events (`publish`) to try a deployment without a
//! PBX.
//!
//! `watch` redraws a table of lamps in place when stdout is a terminal,
//! prints one line per change otherwise, and one JSON object per line
//! with `--json`.

use clap::{Args, Subcommand, ValueEnum};
use presence_client::PresenceClient;
use presence_proto::v1;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use crate::common::*;

/// Live presence.
#[derive(Subcommand, Debug)]
pub(crate) enum PresenceCmd {
    /// Current states of some users (those the caller may see).
    Get {
        #[command(flatten)]
        d: Dom,
        /// User ids.
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Follow states live: a table of lamps that updates in place on a
    /// terminal, one line per change otherwise, NDJSON with --json.
    Watch {
        #[command(flatten)]
        d: Dom,
        /// Watch on behalf of this user (a service token with
        /// presence.watch); default: the token's own user.
        #[arg(long, default_value = "")]
        watcher: String,
        #[command(flatten)]
        sel: Selection,
        /// Stop after this many changes (0: run until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Publish one device event for a user.
    Publish {
        #[command(flatten)]
        d: Dom,
        /// The user the event is about.
        #[arg(long)]
        user: String,
        /// The device (MAC or PBX-side id).
        #[arg(long, default_value = "presencectl")]
        device: String,
        /// Sequence number; default: the current time in milliseconds, so
        /// successive commands increase.
        #[arg(long)]
        seq: Option<u64>,
        #[command(subcommand)]
        event: EventCmd,
    },
}

/// Which users a watch follows (exactly one).
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct Selection {
    /// These users (comma separated).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// The watcher's monitored lines.
    #[arg(long)]
    monitored: bool,
    /// Everyone the watcher may see.
    #[arg(long)]
    everyone: bool,
    /// The users of a site.
    #[arg(long)]
    site: Option<String>,
    /// The agents of a call queue.
    #[arg(long)]
    queue: Option<String>,
}

/// A device event.
#[derive(Subcommand, Debug)]
pub(crate) enum EventCmd {
    /// The device registered (it is reachable) for some seconds.
    Register {
        #[arg(long, default_value_t = 3600)]
        expires: u32,
    },
    /// The device unregistered.
    Unregister,
    /// A call rings (inbound by default).
    Ring {
        #[command(flatten)]
        call: CallArgs,
        /// The caller's number.
        #[arg(long, default_value = "")]
        from: String,
        /// The caller's name.
        #[arg(long, default_value = "")]
        name: String,
        /// An outgoing call being placed instead (state trying).
        #[arg(long)]
        outbound: bool,
    },
    /// The call was answered.
    Answer(CallArgs),
    /// The call was put on hold.
    Hold(CallArgs),
    /// The held call was resumed.
    Resume(CallArgs),
    /// The call ended.
    Hangup(CallArgs),
    /// Device do-not-disturb on or off.
    Dnd {
        #[arg(value_enum)]
        state: OnOff,
    },
    /// The user's manual status and message.
    Status {
        #[arg(value_enum)]
        status: Status,
        #[arg(long, default_value = "")]
        message: String,
    },
}

/// The call a call event is about.
#[derive(Args, Debug)]
pub(crate) struct CallArgs {
    /// Call id.
    #[arg(long, default_value = "c1")]
    call: String,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub(crate) enum OnOff {
    On,
    Off,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub(crate) enum Status {
    Available,
    Busy,
    Away,
    Offline,
}

const STATE_HEADERS: &[&str] = &[
    "user",
    "presence",
    "telephony",
    "dnd",
    "status",
    "message",
    "calls",
    "version",
];

/// An enum value's name without its prefix, e.g. `ringing`.
fn name<E>(v: i32, as_str: impl Fn(&E) -> &'static str, prefix: &str) -> String
where
    E: TryFrom<i32>,
{
    E::try_from(v)
        .map(|e| enum_name(as_str(&e), prefix))
        .unwrap_or_else(|_| "-".into())
}

fn call_text(c: &v1::ActiveCall) -> String {
    let state = name(c.state, v1::CallState::as_str_name, "CALL_STATE_");
    let dir = if c.direction == v1::Direction::Outbound as i32 {
        "to"
    } else {
        "from"
    };
    let who = match (c.remote_name.as_str(), c.remote_number.as_str()) {
        ("", "") => String::new(),
        ("", n) => format!(" {dir} {n}"),
        (m, "") => format!(" {dir} {m}"),
        (m, n) => format!(" {dir} {m} <{n}>"),
    };
    format!("{} {state}{who}", c.call_id)
}

/// One table row of a state.
fn state_row(s: &v1::PresenceState) -> Vec<String> {
    vec![
        s.user.clone(),
        name(
            s.presence,
            v1::PresenceStatus::as_str_name,
            "PRESENCE_STATUS_",
        ),
        name(
            s.telephony,
            v1::TelephonyStatus::as_str_name,
            "TELEPHONY_STATUS_",
        ),
        if s.dnd { "dnd" } else { "-" }.into(),
        name(s.user_status, v1::UserStatus::as_str_name, "USER_STATUS_"),
        s.message.clone(),
        s.calls.iter().map(call_text).collect::<Vec<_>>().join("; "),
        s.version.to_string(),
    ]
}

/// A state as one JSON object, enums by name.
fn state_json(s: &v1::PresenceState) -> serde_json::Value {
    let calls: Vec<serde_json::Value> = s
        .calls
        .iter()
        .map(|c| {
            serde_json::json!({
                "call_id": c.call_id,
                "state": name(c.state, v1::CallState::as_str_name, "CALL_STATE_"),
                "direction": name(c.direction, v1::Direction::as_str_name, "DIRECTION_"),
                "remote_number": c.remote_number,
                "remote_name": c.remote_name,
                "started_at_ms": c.started_at_ms,
            })
        })
        .collect();
    serde_json::json!({
        "event": "state",
        "domain": s.domain,
        "user": s.user,
        "version": s.version,
        "presence": name(s.presence, v1::PresenceStatus::as_str_name, "PRESENCE_STATUS_"),
        "telephony": name(s.telephony, v1::TelephonyStatus::as_str_name, "TELEPHONY_STATUS_"),
        "dnd": s.dnd,
        "status": name(s.user_status, v1::UserStatus::as_str_name, "USER_STATUS_"),
        "message": s.message,
        "calls": calls,
        "queues_logged_in": s.queues_logged_in,
        "updated_at_ms": s.updated_at_ms,
    })
}

/// Runs a `presence` command.
pub(crate) async fn run(c: &mut PresenceClient, out: &Out, cmd: PresenceCmd) -> CtlResult<()> {
    match cmd {
        PresenceCmd::Get { d, targets } => {
            let r = c
                .presence
                .get_presence(v1::GetPresenceRequest {
                    domain: d.domain,
                    targets,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if out.json {
                let states: Vec<_> = r.states.iter().map(state_json).collect();
                let v = serde_json::json!({ "states": states, "denied": r.denied });
                out.value(&v, &[], vec![])?;
            } else {
                let mut rows: Vec<Vec<String>> = r.states.iter().map(state_row).collect();
                for t in &r.denied {
                    let mut row = vec![t.clone(), "(not visible)".into()];
                    row.resize(STATE_HEADERS.len(), String::new());
                    rows.push(row);
                }
                out.value(&r, STATE_HEADERS, rows)?;
            }
        }
        PresenceCmd::Watch {
            d,
            watcher,
            sel,
            count,
        } => watch(c, out, d.domain, watcher, sel, count).await?,
        PresenceCmd::Publish {
            d,
            user,
            device,
            seq,
            event,
        } => {
            let sequence = match seq {
                Some(s) => s,
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|t| t.as_millis() as u64)
                    .map_err(|e| e.to_string())?,
            };
            let e = v1::DeviceEvent {
                domain: d.domain,
                user: user.clone(),
                device,
                sequence,
                at_ms: 0,
                kind: Some(event_kind(event)),
            };
            let r = c
                .presence
                .publish(v1::PublishRequest { events: vec![e] })
                .await
                .map_err(status_err)?
                .into_inner();
            let Some(res) = r.results.first() else {
                return Err("the server returned no verdict".into());
            };
            if !res.accepted {
                let reason = name(res.reason, v1::RejectReason::as_str_name, "REJECT_REASON_");
                return Err(format!("rejected: {reason}: {}", res.detail));
            }
            out.done(&format!("event {sequence} for {user} accepted"));
        }
    }
    Ok(())
}

fn call(c: CallArgs, state: v1::CallState, outbound: bool) -> v1::CallUpdate {
    v1::CallUpdate {
        call_id: c.call,
        state: state as i32,
        direction: if outbound {
            v1::Direction::Outbound
        } else {
            v1::Direction::Inbound
        } as i32,
        remote_number: String::new(),
        remote_name: String::new(),
    }
}

fn event_kind(e: EventCmd) -> v1::device_event::Kind {
    use v1::CallState as S;
    use v1::device_event::Kind as K;
    match e {
        EventCmd::Register { expires } => K::Registration(v1::Registration {
            expires_seconds: expires,
        }),
        EventCmd::Unregister => K::Unregistration(v1::Unregistration {}),
        EventCmd::Ring {
            call: c,
            from,
            name,
            outbound,
        } => {
            let state = if outbound { S::Trying } else { S::Early };
            let mut u = call(c, state, outbound);
            u.remote_number = from;
            u.remote_name = name;
            K::Call(u)
        }
        EventCmd::Answer(c) | EventCmd::Resume(c) => K::Call(call(c, S::Confirmed, false)),
        EventCmd::Hold(c) => K::Call(call(c, S::Held, false)),
        EventCmd::Hangup(c) => K::Call(call(c, S::Terminated, false)),
        EventCmd::Dnd { state } => K::DeviceDnd(v1::DeviceDnd {
            enabled: matches!(state, OnOff::On),
        }),
        EventCmd::Status { status, message } => K::ManualStatus(v1::ManualStatus {
            status: match status {
                Status::Available => v1::UserStatus::Available,
                Status::Busy => v1::UserStatus::Busy,
                Status::Away => v1::UserStatus::Away,
                Status::Offline => v1::UserStatus::Offline,
            } as i32,
            message,
        }),
    }
}

/// How a watch shows what it receives.
enum View {
    /// A table redrawn in place (stdout is a terminal).
    Live(BTreeMap<String, Vec<String>>),
    /// One line per change.
    Lines,
    /// One JSON object per line.
    Json,
}

impl View {
    fn show(&mut self, ev: &v1::WatchEvent, changes: &mut u64) -> CtlResult<()> {
        use v1::watch_event::Event as E;
        let Some(e) = &ev.event else { return Ok(()) };
        match (self, e) {
            (v, E::Batch(b)) => {
                for ev in &b.events {
                    v.show(ev, changes)?;
                }
            }
            (View::Json, e) => {
                let v = match e {
                    E::State(s) => state_json(s),
                    E::Denied(a) | E::Revoked(a) | E::Granted(a) => {
                        let kind = match e {
                            E::Denied(_) => "denied",
                            E::Revoked(_) => "revoked",
                            _ => "granted",
                        };
                        serde_json::json!({ "event": kind, "target": a.target, "reason": a.reason })
                    }
                    E::Heartbeat(h) => {
                        serde_json::json!({ "event": "heartbeat", "at_ms": h.at_ms })
                    }
                    E::SnapshotDone(_) => serde_json::json!({ "event": "snapshot_done" }),
                    E::Batch(_) => return Ok(()),
                };
                println!("{v}");
            }
            (View::Lines, E::State(s)) => println!("{}", state_row(s).join("  ")),
            (View::Lines, E::Denied(a)) => println!("{} denied: {}", a.target, a.reason),
            (View::Lines, E::Revoked(a)) => println!("{} revoked: {}", a.target, a.reason),
            (View::Lines, E::Granted(a)) => println!("{} granted: {}", a.target, a.reason),
            (View::Lines, E::SnapshotDone(_)) => println!("-- snapshot done"),
            (View::Live(rows), E::State(s)) => {
                rows.insert(s.user.clone(), state_row(s));
            }
            (View::Live(rows), E::Denied(a) | E::Revoked(a)) => {
                let mut row = vec![a.target.clone(), format!("(not visible: {})", a.reason)];
                row.resize(STATE_HEADERS.len(), String::new());
                rows.insert(a.target.clone(), row);
            }
            (_, E::Heartbeat(_) | E::Granted(_) | E::SnapshotDone(_)) => return Ok(()),
        }
        if matches!(e, E::State(_)) {
            *changes += 1;
        }
        Ok(())
    }

    /// Redraws the live table (cursor home, clear, table).
    fn redraw(&self) {
        if let View::Live(rows) = self {
            let table = render_table(STATE_HEADERS, rows.values().cloned().collect());
            let mut o = std::io::stdout().lock();
            let _ = write!(o, "\x1b[H\x1b[2J{table}");
            let _ = o.flush();
        }
    }
}

async fn watch(
    c: &mut PresenceClient,
    out: &Out,
    domain: String,
    watcher: String,
    sel: Selection,
    count: u64,
) -> CtlResult<()> {
    use v1::watch_request::Selector;
    let selector = if !sel.targets.is_empty() {
        Selector::Targets(v1::TargetList {
            targets: sel.targets,
        })
    } else if sel.monitored {
        Selector::MonitoredLines(true)
    } else if sel.everyone {
        Selector::EveryoneVisible(true)
    } else if let Some(s) = sel.site {
        Selector::Site(s)
    } else if let Some(q) = sel.queue {
        Selector::Queue(q)
    } else {
        return Err("give --targets, --monitored, --everyone, --site or --queue".into());
    };
    let mut stream = c
        .presence
        .watch(v1::WatchRequest {
            domain,
            watcher,
            selector: Some(selector),
            // One message per burst of changes: one redraw per burst.
            batching: Some(v1::WatchBatching::default()),
            ..Default::default()
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let mut view = if out.json {
        View::Json
    } else if std::io::stdout().is_terminal() {
        View::Live(BTreeMap::new())
    } else {
        View::Lines
    };
    let mut changes = 0u64;
    loop {
        let Some(ev) = stream.message().await.map_err(status_err)? else {
            return Err("the server ended the stream".into());
        };
        view.show(&ev, &mut changes)?;
        view.redraw();
        if count > 0 && changes >= count {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::watch_event::Event as E;

    fn state(user: &str, version: u64, telephony: v1::TelephonyStatus) -> v1::WatchEvent {
        v1::WatchEvent {
            event: Some(E::State(v1::PresenceState {
                user: user.into(),
                version,
                presence: v1::PresenceStatus::Busy as i32,
                telephony: telephony as i32,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn the_live_table_keeps_one_row_per_target_at_its_latest_state() {
        let mut view = View::Live(BTreeMap::new());
        let mut changes = 0;
        let batch = v1::WatchEvent {
            event: Some(E::Batch(v1::WatchBatch {
                events: vec![
                    state("1002", 7, v1::TelephonyStatus::Ringing),
                    state("1001", 3, v1::TelephonyStatus::Connected),
                ],
            })),
        };
        view.show(&batch, &mut changes).ok();
        view.show(&state("1002", 8, v1::TelephonyStatus::OnHold), &mut changes)
            .ok();
        let denied = v1::WatchEvent {
            event: Some(E::Revoked(v1::AccessChange {
                target: "1003".into(),
                reason: "grant removed".into(),
            })),
        };
        view.show(&denied, &mut changes).ok();
        assert_eq!(changes, 3);
        let View::Live(rows) = &view else {
            unreachable!()
        };
        let table = render_table(STATE_HEADERS, rows.values().cloned().collect());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("USER"));
        assert!(lines[1].starts_with("1001") && lines[1].contains("connected"));
        assert!(
            lines[2].starts_with("1002") && lines[2].contains("on-hold") && lines[2].ends_with('8')
        );
        assert!(lines[3].contains("(not visible: grant removed)"));
    }
}
