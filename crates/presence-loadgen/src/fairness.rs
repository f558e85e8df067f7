//! `--mode fairness`: does one tenant's flood starve another?
//!
//! Two domains with the same users, grants and stream layout: B (the
//! run's domain) and A (`<domain>x`). Phase 1: B's streams open and B
//! publishes at `--rate` alone. Phase 2: B's and A's streams open, B
//! publishes at `--rate` while A floods at `--flood-factor` × that rate.
//! The report compares B's publish-to-delivery latency in the two phases
//! and shows what became of A's flood (delivered, coalesced, refused by
//! its ingest quota when the broker has one).

use crate::{
    Args, Phase, broker, drain, finish, now_ns, open_streams, publish, seq_base, server_counters,
    setup,
};
use anyhow::bail;
use presence_client::PresenceClient;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What a fairness run measured.
#[derive(Debug, Serialize)]
pub struct FairnessReport {
    /// B's publish rate (events/s).
    pub rate: u64,
    /// A's publish rate during the flood (events/s).
    pub flood_rate: u64,
    /// Streams per domain.
    pub streams: usize,
    /// Targets per stream.
    pub targets: usize,
    /// B alone.
    pub alone: Phase,
    /// B while A floods.
    pub flooded: Phase,
    /// A's flood.
    pub flood: Phase,
    /// B's p99 under the flood ÷ B's p99 alone.
    pub p99_ratio: Option<f64>,
    /// B's p50 under the flood ÷ B's p50 alone.
    pub p50_ratio: Option<f64>,
}

/// Runs both phases; B (`domain`) is already set up.
pub async fn run(
    a: &Args,
    admin: &mut PresenceClient,
    domain: &str,
    watchers_per_user: &[u64],
    base: Instant,
) -> anyhow::Result<FairnessReport> {
    if a.rate == 0 {
        bail!("--mode fairness needs a --rate for tenant B");
    }
    let flooder = format!("{domain}x");
    if !a.no_setup {
        eprintln!("setup: domain {flooder} with {} users", a.users);
        setup(admin, a, &flooder).await?;
    }
    eprintln!("phase 1: {domain} alone at {} events/s", a.rate);
    let (mut alone, _) = broker(a, admin, domain, watchers_per_user, base).await?;
    alone.name = "B alone".into();

    let flood_rate = a.rate * u64::from(a.flood_factor);
    eprintln!(
        "phase 2: {domain} at {} events/s while {flooder} floods at {flood_rate}",
        a.rate
    );
    let streams_b = open_streams(a, admin, domain, base).await?;
    let streams_a = open_streams(a, admin, &flooder, base).await?;
    let before = server_counters(a).await;
    let nc_b = async_nats::connect(&a.nats).await?;
    let nc_a = async_nats::connect(&a.nats).await?;
    let mut flood_args = a.clone();
    flood_args.rate = flood_rate;
    let start = now_ns(base);
    streams_b.meter.since_ns.store(start, Ordering::Relaxed);
    streams_a.meter.since_ns.store(start, Ordering::Relaxed);
    let seq = seq_base();
    let (rb, ra) = tokio::join!(
        publish(
            &nc_b,
            a,
            domain,
            |u| format!("presence.v1.in.{domain}.{u}"),
            watchers_per_user,
            base,
            seq,
        ),
        publish(
            &nc_a,
            &flood_args,
            &flooder,
            |u| format!("presence.v1.in.{flooder}.{u}"),
            watchers_per_user,
            base,
            seq,
        ),
    );
    let (rb, ra) = (rb?, ra?);
    drain(&streams_b.meter, rb.1).await;
    drain(&streams_a.meter, ra.1).await;
    let after = server_counters(a).await;
    let counters = before.zip(after);
    let (meter_b, meter_a) = (streams_b.meter.clone(), streams_a.meter.clone());
    let hist_b = streams_b.close().await;
    let hist_a = streams_a.close().await;
    let flooded = finish("B under A's flood", &meter_b, &hist_b, rb, None);
    let flood = finish("A flooding", &meter_a, &hist_a, ra, counters);
    let ratio = |f: &dyn Fn(&Phase) -> u64| {
        let (x, y) = (f(&flooded), f(&alone));
        (y > 0).then(|| x as f64 / y as f64)
    };
    Ok(FairnessReport {
        rate: a.rate,
        flood_rate,
        streams: a.streams,
        targets: a.targets,
        p99_ratio: ratio(&|p| p.latency.p99_us),
        p50_ratio: ratio(&|p| p.latency.p50_us),
        alone,
        flooded,
        flood,
    })
}

/// Prints the report as a table.
pub fn print(r: &FairnessReport) {
    println!();
    println!(
        "fairness: {} streams × {} targets per domain; B at {} events/s, A floods at {}",
        r.streams, r.targets, r.rate, r.flood_rate
    );
    println!(
        "{:<20} {:>9} {:>9} {:>11} {:>11} {:>8} {:>8} {:>8} {:>9}",
        "phase",
        "published",
        "pub/s",
        "expected",
        "delivered",
        "p50 µs",
        "p99 µs",
        "max µs",
        "rejected"
    );
    for p in [&r.alone, &r.flooded, &r.flood] {
        println!(
            "{:<20} {:>9} {:>9.0} {:>11} {:>11} {:>8} {:>8} {:>8} {:>9}",
            p.name,
            p.published,
            p.publish_per_sec,
            p.expected,
            p.delivered,
            p.latency.p50_us,
            p.latency.p99_us,
            p.latency.max_us,
            p.server_rejected
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
    if let (Some(p50), Some(p99)) = (r.p50_ratio, r.p99_ratio) {
        println!("B under the flood / B alone: p50 {p50:.2}×, p99 {p99:.2}× (goal p99 ≤ 2×)");
    }
}
