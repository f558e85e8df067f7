//! `--mode revocation`: how long a grant change made through one node
//! takes to reach a watch stream open on another node.
//!
//! Setup: a domain with `--users` targets (presence visible to permitted
//! users) and one watcher user granted to see each. One Watch stream, on
//! the node at `--grpc`, watches every target on the watcher's behalf.
//! Then, for `--rounds` rounds, the see grant of one target is removed
//! through the node at `--write-grpc` and the time until the stream
//! reports it `revoked` is recorded; the grant is given back and the time
//! until `granted` is recorded too. Both are measured from the moment the
//! write was sent (what an administrator sees) and from its answer (the
//! replication and fanout part alone).

use crate::{Latency, histogram};
use anyhow::{Context, bail};
use presence_client::PresenceClient;
use presence_proto::v1::{self, watch_event::Event as E};
use serde::Serialize;
use std::time::{Duration, Instant};

/// What one revocation run measured.
#[derive(Debug, Serialize)]
pub struct RevocationReport {
    /// Rounds (each: one revocation and one grant).
    pub rounds: usize,
    /// Node the grants were changed through.
    pub write_node: String,
    /// Node the watch stream was open on.
    pub watch_node: String,
    /// The grant removal's own latency (request to answer).
    pub write: Latency,
    /// Request sent → `revoked` on the stream.
    pub revoked_from_request: Latency,
    /// Answer received → `revoked` on the stream (0 when it came first).
    pub revoked_from_answer: Latency,
    /// Request sent → `granted` on the stream.
    pub granted_from_request: Latency,
}

fn grantee(w: &str) -> Option<v1::Grantee> {
    Some(v1::Grantee {
        kind: Some(v1::grantee::Kind::User(w.into())),
    })
}

/// Gives (or removes) the watcher's see grant of `target`.
async fn see_grant(
    c: &mut PresenceClient,
    domain: &str,
    target: &str,
    give: bool,
) -> anyhow::Result<()> {
    let (domain, target) = (domain.to_owned(), target.to_owned());
    let kind = v1::GrantKind::See as i32;
    let r = if give {
        c.policy
            .add_grant(v1::AddGrantRequest {
                domain,
                target: target.clone(),
                kind,
                grantee: grantee(WATCHER),
            })
            .await
    } else {
        c.policy
            .remove_grant(v1::RemoveGrantRequest {
                domain,
                target: target.clone(),
                kind,
                grantee: grantee(WATCHER),
            })
            .await
    };
    r.with_context(|| format!("see grant of {target} (give: {give})"))?;
    Ok(())
}

fn target(i: usize) -> String {
    format!("t{i:05}")
}

const WATCHER: &str = "watcher";

async fn setup(admin: &mut PresenceClient, domain: &str, users: usize) -> anyhow::Result<()> {
    admin
        .directory
        .create_domain(v1::CreateDomainRequest {
            id: domain.into(),
            name: format!("revocation test {domain}"),
            dns_name: format!("{domain}.load.example.com"),
        })
        .await
        .context("create domain")?;
    let person = |id: &str| v1::CreateUserRequest {
        domain: domain.into(),
        id: id.into(),
        scope: v1::Scope::BasicUser as i32,
        profile: Some(v1::Profile {
            first_name: "Load".into(),
            last_name: id.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    admin
        .directory
        .create_user(person(WATCHER))
        .await
        .context("create watcher")?;
    for i in 0..users {
        let id = target(i);
        admin
            .directory
            .create_user(person(&id))
            .await
            .with_context(|| format!("create {id}"))?;
        admin
            .policy
            .update_presence_settings(v1::UpdatePresenceSettingsRequest {
                domain: domain.into(),
                user: id.clone(),
                visibility: Some(v1::Visibility::PermittedUsers as i32),
                ..Default::default()
            })
            .await
            .with_context(|| format!("settings of {id}"))?;
        see_grant(admin, domain, &id, true).await?;
    }
    Ok(())
}

/// Waits on `stream` for `want(event)`, skipping states and heartbeats.
async fn wait_for(
    stream: &mut tonic::Streaming<v1::WatchEvent>,
    want: impl Fn(&E) -> bool,
) -> anyhow::Result<Instant> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .context("no watch event within 30 s")??
            .context("watch stream ended")?;
        match m.event {
            Some(ref e) if want(e) => return Ok(Instant::now()),
            Some(E::State(_)) | Some(E::Heartbeat(_)) | Some(E::SnapshotDone(_)) => {}
            other => bail!("unexpected watch event {other:?}"),
        }
    }
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// Runs the revocation measurement.
pub async fn run(
    watch_url: &str,
    write_url: &str,
    token: &str,
    domain: &str,
    users: usize,
    rounds: usize,
) -> anyhow::Result<RevocationReport> {
    let mut writer = crate::grpc(write_url, Some(token)).await?;
    eprintln!("revocation: setup of {domain} ({users} targets) through {write_url}");
    setup(&mut writer, domain, users).await?;
    let mut watch_admin = crate::grpc(watch_url, Some(token)).await?;
    let gateway = crate::gateway_token(&mut watch_admin, domain, "loadgen-revocation").await?;
    // The watch node must hold the whole setup before the stream opens.
    let caught_up = writer
        .directory
        .get_domain(v1::GetDomainRequest { id: domain.into() })
        .await?;
    let seq = caught_up.metadata().get("presence-log-sequence").cloned();
    let mut gw = crate::grpc(watch_url, Some(&gateway)).await?;
    let mut open = tonic::Request::new(v1::WatchRequest {
        domain: domain.into(),
        watcher: WATCHER.into(),
        selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
            targets: (0..users).map(target).collect(),
        })),
        heartbeat_seconds: 3600,
        ..Default::default()
    });
    if let Some(s) = seq {
        open.metadata_mut().insert("presence-min-sequence", s);
    }
    let mut stream = gw.presence.watch(open).await?.into_inner();
    wait_for(&mut stream, |e| matches!(e, E::SnapshotDone(_))).await?;
    let (mut write, mut revoked_req, mut revoked_ans, mut granted_req) =
        (histogram(), histogram(), histogram(), histogram());
    for r in 0..rounds {
        let t = target(r % users);
        let sent = Instant::now();
        see_grant(&mut writer, domain, &t, false).await?;
        let answered = Instant::now();
        let seen = wait_for(&mut stream, |e| matches!(e, E::Revoked(a) if a.target == t)).await?;
        write.record(ns(answered - sent)).ok();
        revoked_req.record(ns(seen - sent)).ok();
        revoked_ans
            .record(ns(seen.saturating_duration_since(answered)))
            .ok();
        let sent = Instant::now();
        see_grant(&mut writer, domain, &t, true).await?;
        let seen = wait_for(&mut stream, |e| matches!(e, E::Granted(a) if a.target == t)).await?;
        granted_req.record(ns(seen - sent)).ok();
    }
    Ok(RevocationReport {
        rounds,
        write_node: write_url.into(),
        watch_node: watch_url.into(),
        write: Latency::of(&write),
        revoked_from_request: Latency::of(&revoked_req),
        revoked_from_answer: Latency::of(&revoked_ans),
        granted_from_request: Latency::of(&granted_req),
    })
}

/// Prints the report as a table.
pub fn print(r: &RevocationReport) {
    println!(
        "revocation: {} rounds, grants changed through {}, watch on {}",
        r.rounds, r.write_node, r.watch_node
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10}",
        "", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for (name, l) in [
        ("grant removal (write)", &r.write),
        ("request → revoked", &r.revoked_from_request),
        ("answer → revoked", &r.revoked_from_answer),
        ("request → granted", &r.granted_from_request),
    ] {
        let ms = |v: u64| v as f64 / 1000.0;
        println!(
            "{name:<28} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            ms(l.p50_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us)
        );
    }
}
