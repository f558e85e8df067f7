//! `presence-loadgen`: drives a running presence broker end to end over
//! its real interfaces and compares it with raw NATS fanout measured in
//! the same run.
//!
//! 1. **Setup** (gRPC, admin token): a domain with `--users` users; each
//!    user's presence is visible to "permitted users" and granted to the
//!    whole domain, so every check goes through the policy rules.
//! 2. **Baseline**: `--streams` subscribers, each subscribed directly on
//!    nats-server to the subjects of its `--targets` users (no policy, no
//!    aggregation), receive the same events the broker phase publishes.
//! 3. **Broker**: the same number of Watch streams with the same targets
//!    (phone style: one gRPC connection per stream; gateway style: the
//!    streams share `--connections` connections), opened by a gateway
//!    service token on behalf of users; the server's resident memory is
//!    read before and after they open (`--server-pid`). Device events are
//!    then published on `presence.v1.in.<domain>.<user>` at `--rate`
//!    events/s (0: as fast as possible) for `--duration` seconds.
//!
//! Each event carries its publish time (in the manual-status message), so
//! every delivery gives a publish-to-delivery latency. The report has
//! delivered events/s, latency percentiles, the broker/baseline ratios,
//! memory per idle stream and how many states were coalesced; `--json`
//! writes it for automation. See docs/benchmarks.md.
//!
//! `--mode revocation` measures instead how long a grant change through
//! one node takes to reach a watch stream on another ([`revocation`]);
//! `--mode fairness` how one tenant's flood affects another's latency
//! ([`fairness`]); `--mode sweep` the scale curve over stream counts and
//! targets per stream, with an SVG plot ([`sweep`]).

mod fairness;
mod revocation;
mod sweep;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use presence_client::PresenceClient;
use presence_proto::v1::{self, device_event::Kind as K, watch_event::Event as E};
use prost::Message;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How watch streams reach the broker.
#[derive(Debug, Clone, Copy, ValueEnum, Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Style {
    /// One gRPC connection (and one NATS connection in the baseline) per
    /// stream, like desk phones.
    Phone,
    /// Many streams per connection, like a phone gateway.
    Gateway,
    /// A gateway with one `WatchMany` stream per connection carrying its
    /// watchers (the baseline as in gateway style).
    Many,
}

/// Which phases to run.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum Mode {
    /// Baseline, then broker.
    Both,
    /// Raw NATS only.
    Baseline,
    /// The broker only.
    Broker,
    /// Grant changes through `--write-grpc` against a watch on `--grpc`:
    /// revocation latency across nodes.
    Revocation,
    /// Tenant B at `--rate`, alone and while tenant A floods at
    /// `--flood-factor` × `--rate`.
    Fairness,
    /// Baseline and broker at every point of `--sweep-streams` ×
    /// `--sweep-targets`: the scale curve.
    Sweep,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "presence-loadgen",
    about = "Load generator of the presence broker"
)]
struct Args {
    /// gRPC URL of the broker (`https://…` for TLS).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    grpc: String,
    /// PEM CA certificate the broker's certificate must chain to
    /// (https:// URLs; default: the system's roots).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// PEM client certificate and key (`CERT,KEY`) for brokers that
    /// verify clients (mTLS).
    #[arg(long, value_delimiter = ',', num_args = 2)]
    client_cert: Vec<PathBuf>,
    /// NATS URL the broker uses.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// File with an admin token (e.g. data/bootstrap-admin.token).
    #[arg(long)]
    token_file: PathBuf,
    /// Domain to use (default: a fresh `load<unix seconds>`).
    #[arg(long)]
    domain: Option<String>,
    /// Use the domain as it is (created by an earlier run) instead of
    /// creating it with its users and grants.
    #[arg(long)]
    no_setup: bool,
    /// Only create the domain, users and grants (for ghz and k6), then exit.
    #[arg(long)]
    setup_only: bool,
    /// Users (targets) in the domain.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Watch streams (and baseline subscribers).
    #[arg(long, default_value_t = 200)]
    streams: usize,
    /// Targets per stream.
    #[arg(long, default_value_t = 50)]
    targets: usize,
    /// Connection style.
    #[arg(long, value_enum, default_value = "gateway")]
    style: Style,
    /// Connections shared by the streams in gateway style.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Events published per second (0: as fast as possible).
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Seconds of publishing per phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Phases to run.
    #[arg(long, value_enum, default_value = "both")]
    mode: Mode,
    /// Process id of the broker, to read its resident memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The broker's Prometheus endpoint, e.g. http://127.0.0.1:9464/metrics.
    #[arg(long)]
    metrics_url: Option<String>,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Revocation mode: the node grants are changed through (default:
    /// `--grpc`).
    #[arg(long)]
    write_grpc: Option<String>,
    /// Revocation mode: rounds of revoke and grant.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Batched watch streams (`WatchRequest.batching`): on by default in
    /// gateway style, off in phone style.
    #[arg(long, value_enum, default_value = "auto")]
    batching: Batching,
    /// Linger of batched streams in milliseconds.
    #[arg(long, default_value_t = 0)]
    batch_linger_ms: u32,
    /// Fairness mode: the flooding tenant publishes this many times
    /// `--rate`.
    #[arg(long, default_value_t = 10)]
    flood_factor: u32,
    /// Sweep mode: stream counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000,3000,10000")]
    sweep_streams: Vec<usize>,
    /// Sweep mode: targets per stream, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "5,20")]
    sweep_targets: Vec<usize>,
    /// Sweep mode: write the curves here as an SVG image.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Sweep mode: draw `--plot` from these earlier `--json` results
    /// (comma-separated; their points are joined) instead of measuring.
    #[arg(long, value_delimiter = ',')]
    replot: Vec<PathBuf>,
}

/// Whether watch streams are batched.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum Batching {
    /// On in gateway style, off in phone style.
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl Args {
    /// The batching the broker phase asks for.
    fn batching(&self) -> Option<v1::WatchBatching> {
        let on = match self.batching {
            Batching::Auto => self.style != Style::Phone,
            Batching::On => true,
            Batching::Off => false,
        };
        on.then_some(v1::WatchBatching {
            linger_ms: self.batch_linger_ms,
            ..Default::default()
        })
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize, serde::Deserialize, Default, Clone)]
struct Latency {
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50_us: h.value_at_quantile(0.5) / 1000,
            p99_us: h.value_at_quantile(0.99) / 1000,
            p999_us: h.value_at_quantile(0.999) / 1000,
            max_us: h.max() / 1000,
        }
    }
}

/// The result of one phase.
#[derive(Debug, Serialize, serde::Deserialize, Default, Clone)]
struct Phase {
    name: String,
    published: u64,
    publish_per_sec: f64,
    /// Deliveries the fanout implies (each event × streams watching its user).
    expected: u64,
    delivered: u64,
    delivered_per_sec: f64,
    latency: Latency,
    /// Expected minus delivered: intermediate states replaced by newer
    /// ones in a stream's mailbox (the broker) or lost (baseline).
    not_delivered: u64,
    /// The broker's `presence_fanout_coalesced_total` during the phase.
    server_coalesced: Option<u64>,
    /// The broker's rejected events during the phase.
    server_rejected: Option<u64>,
}

/// Everything the run measured.
#[derive(Debug, Serialize)]
struct Report {
    users: usize,
    streams: usize,
    targets: usize,
    style: Style,
    connections: usize,
    /// Whether the broker's streams were batched.
    batched: bool,
    rate: u64,
    duration_secs: u64,
    baseline: Option<Phase>,
    broker: Option<Phase>,
    /// broker delivered/s ÷ baseline delivered/s.
    throughput_ratio: Option<f64>,
    /// broker p50 ÷ baseline p50.
    p50_ratio: Option<f64>,
    /// broker p99 ÷ baseline p99.
    p99_ratio: Option<f64>,
    /// Server resident memory added per idle stream (bytes), measured on
    /// the second half of the streams (after the first half warmed the
    /// allocator up).
    memory_per_stream_bytes: Option<f64>,
    /// Server resident memory growth over all streams, per stream
    /// (includes the allocator's high-water mark of the snapshots).
    memory_per_stream_total_bytes: Option<f64>,
}

/// Writes `value` as JSON to `path`, if one was given.
pub(crate) fn write_json(
    path: Option<&std::path::Path>,
    value: &impl Serialize,
) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(value)?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Nanoseconds since the run started (one clock for publishers and
/// receivers, in one process).
fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

fn user_id(i: usize) -> String {
    format!("u{i:06}")
}

/// Targets of stream `s`: a sliding window over the users.
fn targets_of(s: usize, a: &Args) -> Vec<usize> {
    (0..a.targets.min(a.users))
        .map(|j| (s * a.targets + j) % a.users)
        .collect()
}

/// Counters shared by the receivers of a phase.
struct Meter {
    base: Instant,
    /// Deliveries of events published after this (ns since base).
    since_ns: AtomicU64,
    delivered: AtomicU64,
    last_ns: AtomicU64,
}

impl Meter {
    /// A meter counting nothing yet (its phase starts publishing later).
    fn new(base: Instant) -> Arc<Self> {
        Arc::new(Self {
            base,
            since_ns: AtomicU64::new(u64::MAX),
            delivered: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
        })
    }

    /// Records one delivery of a message `lg:<ns>`; returns the latency.
    fn record(&self, message: &str, h: &mut Histogram<u64>) {
        let Some(t) = message
            .strip_prefix("lg:")
            .and_then(|t| t.parse::<u64>().ok())
        else {
            return;
        };
        if t < self.since_ns.load(Ordering::Relaxed) {
            return;
        }
        let now = now_ns(self.base);
        let _ = h.record(now.saturating_sub(t).max(1));
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_ns.fetch_max(now, Ordering::Relaxed);
    }
}

/// A latency histogram in nanoseconds, auto-resizing, 3 significant
/// digits.
fn histogram() -> Histogram<u64> {
    let mut h = match Histogram::new(3) {
        Ok(h) => h,
        // Only a significant-figure count above 5 fails.
        Err(e) => unreachable!("histogram with 3 significant figures: {e}"),
    };
    h.auto(true);
    h
}

/// Reads VmRSS of `pid` in bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS")?
        .parse()?;
    Ok(kb * 1024)
}

/// TLS settings of every gRPC connection, set once from the arguments.
static TLS: std::sync::OnceLock<presence_client::Tls> = std::sync::OnceLock::new();

/// Connects to the broker at `url` with the run's TLS settings.
pub(crate) async fn grpc(
    url: &str,
    token: Option<&str>,
) -> Result<presence_client::PresenceClient, presence_client::ClientError> {
    let tls = TLS.get_or_init(presence_client::Tls::default);
    presence_client::connect_with(url, token, tls).await
}

/// Sums the samples of `metric` (all label sets) from a Prometheus text
/// endpoint (plain HTTP).
async fn scrape(url: &str, metric: &str) -> anyhow::Result<u64> {
    let rest = url
        .strip_prefix("http://")
        .context("metrics url must be http://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let mut conn = tokio::net::TcpStream::connect(host).await?;
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await?;
    let mut total = 0f64;
    for line in body.lines() {
        if line.starts_with(metric)
            && line[metric.len()..].starts_with([' ', '{'])
            && let Some(v) = line.rsplit(' ').next()
        {
            total += v.parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(total as u64)
}

async fn server_counters(a: &Args) -> Option<(u64, u64)> {
    let url = a.metrics_url.as_deref()?;
    let c = scrape(url, "presence_fanout_coalesced_total").await.ok()?;
    let r = scrape(url, "presence_fanout_events_rejected_total")
        .await
        .ok()?;
    Some((c, r))
}

/// Creates the domain and its users, with their presence granted to the
/// whole domain.
async fn setup(admin: &mut PresenceClient, a: &Args, domain: &str) -> anyhow::Result<()> {
    admin
        .directory
        .create_domain(v1::CreateDomainRequest {
            id: domain.into(),
            name: format!("load test {domain}"),
            dns_name: format!("{domain}.load.example.com"),
        })
        .await
        .context("create domain")?;
    let created = AtomicU64::new(0);
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..a.users)
        .map(|i| {
            let mut c = admin.clone();
            let domain = domain.to_owned();
            let created = &created;
            async move {
                let id = user_id(i);
                c.directory
                    .create_user(v1::CreateUserRequest {
                        domain: domain.clone(),
                        id: id.clone(),
                        scope: v1::Scope::CallCenterAgent as i32,
                        profile: Some(v1::Profile {
                            first_name: "Load".into(),
                            last_name: id.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("create user {id}"))?;
                c.policy
                    .update_presence_settings(v1::UpdatePresenceSettingsRequest {
                        domain: domain.clone(),
                        user: id.clone(),
                        visibility: Some(v1::Visibility::PermittedUsers as i32),
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("settings of {id}"))?;
                c.policy
                    .add_grant(v1::AddGrantRequest {
                        domain: domain.clone(),
                        target: id.clone(),
                        kind: v1::GrantKind::See as i32,
                        grantee: Some(v1::Grantee {
                            kind: Some(v1::grantee::Kind::Domain(true)),
                        }),
                    })
                    .await
                    .with_context(|| format!("grant of {id}"))?;
                let n = created.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(500) {
                    eprintln!("  setup: {n}/{} users", a.users);
                }
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

/// The connections streams share in gateway style (none for phones,
/// which connect one by one).
async fn shared_connections<C, E, F>(a: &Args, connect: impl Fn() -> F) -> anyhow::Result<Vec<C>>
where
    F: std::future::Future<Output = Result<C, E>>,
    E: Into<anyhow::Error>,
{
    let mut v = Vec::new();
    if a.style != Style::Phone {
        for _ in 0..a.connections.max(1) {
            v.push(connect().await.map_err(Into::into)?);
        }
    }
    Ok(v)
}

/// Publishes `lg:` events for the phase's duration; returns (published,
/// expected deliveries, seconds spent).
async fn publish(
    nc: &async_nats::Client,
    a: &Args,
    domain: &str,
    subject_of: impl Fn(&str) -> String,
    watchers_per_user: &[u64],
    base: Instant,
    seq_base: u64,
) -> anyhow::Result<(u64, u64, f64)> {
    let start = Instant::now();
    let end = start + Duration::from_secs(a.duration);
    let mut sent = 0u64;
    let mut expected = 0u64;
    let mut next_report = start + Duration::from_secs(1);
    let subjects: Vec<String> = (0..a.users).map(|i| subject_of(&user_id(i))).collect();
    while Instant::now() < end {
        let due = if a.rate == 0 {
            sent + 1000
        } else {
            (start.elapsed().as_secs_f64() * a.rate as f64) as u64
        };
        if due <= sent {
            tokio::time::sleep(Duration::from_micros(500)).await;
            continue;
        }
        while sent < due {
            let i = (sent as usize) % a.users;
            let e = v1::DeviceEvent {
                domain: domain.into(),
                user: user_id(i),
                device: "loadgen".into(),
                sequence: seq_base + sent,
                at_ms: 0,
                kind: Some(K::ManualStatus(v1::ManualStatus {
                    status: if sent.is_multiple_of(2) {
                        v1::UserStatus::Busy as i32
                    } else {
                        v1::UserStatus::Away as i32
                    },
                    message: format!("lg:{}", now_ns(base)),
                })),
            };
            nc.publish(subjects[i].clone(), e.encode_to_vec().into())
                .await
                .context("publish")?;
            expected += watchers_per_user[i];
            sent += 1;
        }
        if Instant::now() >= next_report {
            eprintln!(
                "  {:>4.1}s published {sent} ({:.0}/s)",
                start.elapsed().as_secs_f64(),
                sent as f64 / start.elapsed().as_secs_f64()
            );
            next_report += Duration::from_secs(1);
        }
    }
    nc.flush().await.context("flush")?;
    Ok((sent, expected, start.elapsed().as_secs_f64()))
}

/// Waits until deliveries stop growing (or 10 s), so the tail is counted.
async fn drain(meter: &Meter, expected: u64) {
    let mut last = meter.delivered.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = meter.delivered.load(Ordering::Relaxed);
        if now >= expected || now == last {
            return;
        }
        last = now;
    }
}

fn finish(
    name: &str,
    meter: &Meter,
    hist: &Histogram<u64>,
    (published, expected, secs): (u64, u64, f64),
    counters: Option<((u64, u64), (u64, u64))>,
) -> Phase {
    let delivered = meter.delivered.load(Ordering::Relaxed);
    let span_ns = meter
        .last_ns
        .load(Ordering::Relaxed)
        .saturating_sub(meter.since_ns.load(Ordering::Relaxed))
        .max(1);
    Phase {
        name: name.into(),
        published,
        publish_per_sec: published as f64 / secs.max(1e-9),
        expected,
        delivered,
        delivered_per_sec: delivered as f64 / (span_ns as f64 / 1e9),
        latency: Latency::of(hist),
        not_delivered: expected.saturating_sub(delivered),
        server_coalesced: counters.map(|(b, a)| a.0.saturating_sub(b.0)),
        server_rejected: counters.map(|(b, a)| a.1.saturating_sub(b.1)),
    }
}

async fn baseline(
    a: &Args,
    domain: &str,
    watchers_per_user: &[u64],
    base: Instant,
) -> anyhow::Result<Phase> {
    eprintln!("baseline: {} raw NATS subscribers", a.streams);
    let subject = |u: &str| format!("loadgen.base.{domain}.{u}");
    let shared = shared_connections(a, || async_nats::connect(&a.nats)).await?;
    let meter = Meter::new(base);
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    let mut owned = Vec::new();
    for s in 0..a.streams {
        let nc = match a.style {
            Style::Gateway | Style::Many => shared[s % shared.len()].clone(),
            Style::Phone => {
                let c = async_nats::connect(&a.nats).await?;
                owned.push(c.clone());
                c
            }
        };
        let mut subs = Vec::new();
        for t in targets_of(s, a) {
            subs.push(nc.subscribe(subject(&user_id(t))).await?);
        }
        let mut all = futures_util::stream::select_all(subs);
        let meter = meter.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            loop {
                tokio::select! {
                    _ = stop.notified() => break,
                    m = all.next() => match m {
                        Some(m) => {
                            if let Ok(e) = v1::DeviceEvent::decode(m.payload)
                                && let Some(K::ManualStatus(ms)) = e.kind
                            {
                                meter.record(&ms.message, &mut h);
                            }
                        }
                        None => break,
                    },
                }
            }
            h
        }));
    }
    for c in shared.iter().chain(owned.iter()) {
        c.flush().await?;
    }
    let publisher = async_nats::connect(&a.nats).await?;
    meter.since_ns.store(now_ns(base), Ordering::Relaxed);
    let pub_result = publish(&publisher, a, domain, subject, watchers_per_user, base, 1).await?;
    drain(&meter, pub_result.1).await;
    stop.notify_waiters();
    let mut hist = histogram();
    for t in tasks {
        stop.notify_waiters();
        if let Ok(h) = t.await {
            let _ = hist.add(&h);
        }
    }
    Ok(finish("baseline", &meter, &hist, pub_result, None))
}

/// Issues a token for a gateway service `name` that watches on behalf
/// of the users of `domain` (needs an admin token).
async fn gateway_token(
    admin: &mut PresenceClient,
    domain: &str,
    name: &str,
) -> anyhow::Result<String> {
    Ok(admin
        .auth
        .issue_token(v1::IssueTokenRequest {
            subject: Some(v1::issue_token_request::Subject::Service(
                v1::ServicePrincipal {
                    name: name.into(),
                    domains: vec![domain.into()],
                    rights: vec!["presence.watch".into()],
                },
            )),
            ttl_seconds: 86_400,
        })
        .await
        .context("issue gateway token (needs an admin token)")?
        .into_inner()
        .token)
}

/// Open watch streams of one domain and their receiving tasks.
struct Streams {
    meter: Arc<Meter>,
    stop: Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<Histogram<u64>>>,
    /// (marginal, total) server memory per stream, when measured.
    per_stream: Option<(f64, f64)>,
}

impl Streams {
    /// Stops the receivers and merges their latency histograms.
    async fn close(self) -> Histogram<u64> {
        let mut hist = histogram();
        for t in self.tasks {
            self.stop.notify_waiters();
            if let Ok(h) = t.await {
                let _ = hist.add(&h);
            }
        }
        hist
    }
}

/// Opens `--streams` watch streams on `domain` with a gateway token and
/// waits for every snapshot; reads the server's memory around them.
async fn open_streams(
    a: &Args,
    admin: &mut PresenceClient,
    domain: &str,
    base: Instant,
) -> anyhow::Result<Streams> {
    let gateway = gateway_token(admin, domain, "loadgen-gateway").await?;
    let rss_before = match a.server_pid {
        Some(pid) => Some(rss(pid)?),
        None => None,
    };
    eprintln!(
        "broker: opening {} watch streams on {domain} ({:?} style)",
        a.streams, a.style
    );
    let shared = shared_connections(a, || crate::grpc(&a.grpc, Some(&gateway))).await?;
    if a.style == Style::Many {
        return open_many(a, shared, domain, base, rss_before).await;
    }
    let meter = Meter::new(base);
    let stop = Arc::new(tokio::sync::Notify::new());
    let (ready_tx, mut ready_rx) =
        tokio::sync::mpsc::channel::<anyhow::Result<()>>(a.streams.max(1));
    let mut tasks = Vec::new();
    // Streams open in two halves; the server's memory is read after each
    // (idle, settled): the second half's growth is the marginal memory
    // of an idle stream, free of the allocator's high-water mark from
    // the first half's snapshots.
    let half = a.streams / 2;
    let mut rss_after = Vec::new();
    for (lo, hi) in [(0, half), (half, a.streams)] {
        for s in lo..hi {
            let mut c = match a.style {
                Style::Gateway | Style::Many => shared[s % shared.len()].clone(),
                Style::Phone => crate::grpc(&a.grpc, Some(&gateway)).await?,
            };
            let targets: Vec<String> = targets_of(s, a).into_iter().map(user_id).collect();
            let watcher = user_id(s % a.users);
            let domain = domain.to_owned();
            let meter = meter.clone();
            let stop = stop.clone();
            let ready_tx = ready_tx.clone();
            let batching = a.batching();
            tasks.push(tokio::spawn(async move {
                let mut h = histogram();
                let stream = c
                    .presence
                    .watch(v1::WatchRequest {
                        domain,
                        watcher,
                        selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
                            targets,
                        })),
                        heartbeat_seconds: 3600,
                        batching,
                        ..Default::default()
                    })
                    .await;
                let mut stream = match stream {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("watch: {e}"))).await;
                        return h;
                    }
                };
                let mut announced = false;
                loop {
                    tokio::select! {
                        _ = stop.notified() => break,
                        m = stream.message() => match m {
                            Ok(Some(m)) => {
                                let events = match m.event {
                                    Some(E::Batch(b)) => b.events.into_iter().filter_map(|e| e.event).collect(),
                                    Some(e) => vec![e],
                                    None => Vec::new(),
                                };
                                for e in events {
                                    match e {
                                        E::SnapshotDone(_) if !announced => {
                                            announced = true;
                                            let _ = ready_tx.send(Ok(())).await;
                                        }
                                        E::State(st) => meter.record(&st.message, &mut h),
                                        _ => {}
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                if !announced {
                                    let _ = ready_tx.send(Err(anyhow::anyhow!("stream: {e}"))).await;
                                }
                                break;
                            }
                        },
                    }
                }
                h
            }));
        }
        for n in lo..hi {
            match ready_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    bail!(
                        "stream {n} failed to open: {e} (is max_streams_per_principal high enough?)"
                    )
                }
                None => bail!("streams ended before their snapshots"),
            }
        }
        // Let the server settle, then read its memory with every stream idle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(pid) = a.server_pid {
            rss_after.push(rss(pid)?);
        }
    }
    drop(ready_tx);
    let per_stream = per_stream_memory(rss_before, &rss_after, a.streams, half);
    Ok(Streams {
        meter,
        stop,
        tasks,
        per_stream,
    })
}

/// (marginal, total) server memory per stream: the second half's growth
/// over its streams, and the whole growth over all of them.
fn per_stream_memory(
    before: Option<u64>,
    after: &[u64],
    streams: usize,
    half: usize,
) -> Option<(f64, f64)> {
    match (before, after) {
        (Some(before), [first, second]) if streams - half > 0 => Some((
            second.saturating_sub(*first) as f64 / (streams - half) as f64,
            second.saturating_sub(before) as f64 / streams as f64,
        )),
        _ => None,
    }
}

/// `--style many`: one `WatchMany` stream per connection, watcher `s`
/// on connection `s % connections` with key `s`; the watchers are added
/// in two halves, as `open_streams` opens its streams.
async fn open_many(
    a: &Args,
    shared: Vec<PresenceClient>,
    domain: &str,
    base: Instant,
    rss_before: Option<u64>,
) -> anyhow::Result<Streams> {
    let meter = Meter::new(base);
    let stop = Arc::new(tokio::sync::Notify::new());
    let (ready_tx, mut ready_rx) =
        tokio::sync::mpsc::channel::<anyhow::Result<()>>(a.streams.max(1));
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for mut c in shared {
        let (tx, rx) = tokio::sync::mpsc::channel::<v1::WatchManyRequest>(16);
        tx.send(v1::WatchManyRequest {
            batching: a.batching(),
            ..Default::default()
        })
        .await?;
        let mut stream = c
            .presence
            .watch_many(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| anyhow::anyhow!("watch_many: {e}"))?
            .into_inner();
        senders.push(tx);
        let (meter, stop, ready_tx) = (meter.clone(), stop.clone(), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            loop {
                tokio::select! {
                    _ = stop.notified() => break,
                    m = stream.message() => match m {
                        Ok(Some(m)) => {
                            for k in m.events {
                                match k.body {
                                    Some(v1::keyed_event::Body::Event(e)) => match e.event {
                                        Some(E::SnapshotDone(_)) => {
                                            let _ = ready_tx.send(Ok(())).await;
                                        }
                                        Some(E::State(st)) => {
                                            for _ in &k.keys {
                                                meter.record(&st.message, &mut h);
                                            }
                                        }
                                        _ => {}
                                    },
                                    Some(v1::keyed_event::Body::Ended(end)) => {
                                        let _ = ready_tx
                                            .send(Err(anyhow::anyhow!("watcher ended: {end:?}")))
                                            .await;
                                    }
                                    None => {}
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow::anyhow!("stream: {e}"))).await;
                            break;
                        }
                    },
                }
            }
            h
        }));
    }
    drop(ready_tx);
    let half = a.streams / 2;
    let mut rss_after = Vec::new();
    for (lo, hi) in [(0, half), (half, a.streams)] {
        let mut adds: Vec<Vec<v1::WatchManyAdd>> = vec![Vec::new(); senders.len()];
        for s in lo..hi {
            adds[s % senders.len()].push(v1::WatchManyAdd {
                key: s as u32,
                watch: Some(v1::WatchRequest {
                    domain: domain.to_owned(),
                    watcher: user_id(s % a.users),
                    selector: Some(v1::watch_request::Selector::Targets(v1::TargetList {
                        targets: targets_of(s, a).into_iter().map(user_id).collect(),
                    })),
                    ..Default::default()
                }),
            });
        }
        for (tx, add) in senders.iter().zip(adds) {
            tx.send(v1::WatchManyRequest {
                add,
                ..Default::default()
            })
            .await?;
        }
        for n in lo..hi {
            match ready_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => bail!(
                    "watcher {n} failed to start: {e} (is max_streams_per_principal high enough?)"
                ),
                None => bail!("streams ended before their snapshots"),
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(pid) = a.server_pid {
            rss_after.push(rss(pid)?);
        }
    }
    // The request streams stay open while the phase runs.
    let keep = stop.clone();
    tasks.push(tokio::spawn(async move {
        let _senders = senders;
        keep.notified().await;
        histogram()
    }));
    let per_stream = per_stream_memory(rss_before, &rss_after, a.streams, half);
    Ok(Streams {
        meter,
        stop,
        tasks,
        per_stream,
    })
}

/// Sequence numbers above any earlier run on the same domain.
fn seq_base() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

async fn broker(
    a: &Args,
    admin: &mut PresenceClient,
    domain: &str,
    watchers_per_user: &[u64],
    base: Instant,
) -> anyhow::Result<(Phase, Option<(f64, f64)>)> {
    let streams = open_streams(a, admin, domain, base).await?;
    let before = server_counters(a).await;
    let publisher = async_nats::connect(&a.nats).await?;
    streams
        .meter
        .since_ns
        .store(now_ns(base), Ordering::Relaxed);
    let pub_result = publish(
        &publisher,
        a,
        domain,
        |u| format!("presence.v1.in.{domain}.{u}"),
        watchers_per_user,
        base,
        seq_base(),
    )
    .await?;
    drain(&streams.meter, pub_result.1).await;
    let after = server_counters(a).await;
    let (meter, per_stream) = (streams.meter.clone(), streams.per_stream);
    let hist = streams.close().await;
    let counters = before.zip(after);
    Ok((
        finish("broker", &meter, &hist, pub_result, counters),
        per_stream,
    ))
}

fn print_table(r: &Report) {
    println!();
    println!(
        "{} users, {} streams × {} targets, {:?} style{}, rate {} ev/s, {} s",
        r.users,
        r.streams,
        r.targets,
        r.style,
        if r.batched { " (batched)" } else { "" },
        if r.rate == 0 {
            "max".to_string()
        } else {
            r.rate.to_string()
        },
        r.duration_secs
    );
    println!(
        "{:<9} {:>10} {:>9} {:>11} {:>11} {:>11} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "phase",
        "published",
        "pub/s",
        "expected",
        "delivered",
        "deliv/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "coalesced"
    );
    for p in [&r.baseline, &r.broker].into_iter().flatten() {
        println!(
            "{:<9} {:>10} {:>9.0} {:>11} {:>11} {:>11.0} {:>8} {:>8} {:>8} {:>8} {:>10}",
            p.name,
            p.published,
            p.publish_per_sec,
            p.expected,
            p.delivered,
            p.delivered_per_sec,
            p.latency.p50_us,
            p.latency.p99_us,
            p.latency.p999_us,
            p.latency.max_us,
            p.server_coalesced
                .map(|c| c.to_string())
                .unwrap_or_else(|| p.not_delivered.to_string()),
        );
    }
    if let Some(t) = r.throughput_ratio {
        println!("broker/baseline: delivered/s {t:.2}×");
    }
    if let (Some(p50), Some(p99)) = (r.p50_ratio, r.p99_ratio) {
        println!("broker/baseline: p50 latency {p50:.1}×, p99 latency {p99:.1}×");
    }
    if let (Some(m), Some(t)) = (r.memory_per_stream_bytes, r.memory_per_stream_total_bytes) {
        println!(
            "server memory per idle stream: {:.1} KiB marginal, {:.1} KiB including warm-up",
            m / 1024.0,
            t / 1024.0
        );
    }
    if let Some(rej) = r.broker.as_ref().and_then(|b| b.server_rejected)
        && rej > 0
    {
        println!(
            "warning: the broker rejected {rej} events (raise device_rate_per_second/burst or use more users)"
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let _ = TLS.set(presence_client::Tls {
        ca_file: a.ca_file.clone(),
        cert_file: a.client_cert.first().cloned(),
        key_file: a.client_cert.get(1).cloned(),
        server_name: None,
    });
    if !a.replot.is_empty() {
        let mut points: Vec<sweep::Point> = Vec::new();
        for from in &a.replot {
            let bytes = std::fs::read(from).with_context(|| format!("read {}", from.display()))?;
            points.extend(serde_json::from_slice::<Vec<sweep::Point>>(&bytes)?);
        }
        points.sort_by_key(|p| (p.targets, p.streams));
        return sweep::report(&points, a.rate, a.json.as_deref(), a.plot.as_deref());
    }
    if a.users == 0 || a.streams == 0 || a.targets == 0 || a.duration == 0 {
        bail!("users, streams, targets and duration must be positive");
    }
    let token = std::fs::read_to_string(&a.token_file)
        .with_context(|| format!("read {}", a.token_file.display()))?;
    let mut admin = crate::grpc(&a.grpc, Some(token.trim())).await?;
    let domain = a.domain.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("load{secs}")
    });
    let mut watchers_per_user = vec![0u64; a.users];
    for s in 0..a.streams {
        for t in targets_of(s, &a) {
            watchers_per_user[t] += 1;
        }
    }
    if a.mode == Mode::Revocation {
        let write = a.write_grpc.clone().unwrap_or_else(|| a.grpc.clone());
        let r = revocation::run(
            &a.grpc,
            &write,
            token.trim(),
            &domain,
            a.users,
            a.rounds.max(1),
        )
        .await?;
        revocation::print(&r);
        write_json(a.json.as_deref(), &r)?;
        return Ok(());
    }
    let base = Instant::now();
    if !a.no_setup && (a.mode != Mode::Baseline || a.setup_only) {
        eprintln!("setup: domain {domain} with {} users", a.users);
        setup(&mut admin, &a, &domain).await?;
    }
    if a.setup_only {
        println!("{domain}");
        return Ok(());
    }
    if a.mode == Mode::Sweep {
        let points = sweep::run(&a, &mut admin, &domain, base).await?;
        return sweep::report(&points, a.rate, a.json.as_deref(), a.plot.as_deref());
    }
    if a.mode == Mode::Fairness {
        let r = fairness::run(&a, &mut admin, &domain, &watchers_per_user, base).await?;
        fairness::print(&r);
        write_json(a.json.as_deref(), &r)?;
        return Ok(());
    }
    let baseline_phase = if a.mode != Mode::Broker && a.mode != Mode::Fairness {
        Some(baseline(&a, &domain, &watchers_per_user, base).await?)
    } else {
        None
    };
    let (broker_phase, per_stream) = if a.mode != Mode::Baseline {
        let (p, m) = broker(&a, &mut admin, &domain, &watchers_per_user, base).await?;
        (Some(p), m)
    } else {
        (None, None)
    };
    let ratio = |f: &dyn Fn(&Phase) -> f64| match (&baseline_phase, &broker_phase) {
        (Some(b), Some(k)) if f(b) > 0.0 => Some(f(k) / f(b)),
        _ => None,
    };
    let report = Report {
        users: a.users,
        streams: a.streams,
        targets: a.targets,
        style: a.style,
        connections: a.connections,
        batched: a.batching().is_some(),
        rate: a.rate,
        duration_secs: a.duration,
        throughput_ratio: ratio(&|p| p.delivered_per_sec),
        p50_ratio: ratio(&|p| p.latency.p50_us as f64),
        p99_ratio: ratio(&|p| p.latency.p99_us as f64),
        baseline: baseline_phase,
        broker: broker_phase,
        memory_per_stream_bytes: per_stream.map(|m| m.0),
        memory_per_stream_total_bytes: per_stream.map(|m| m.1),
    };
    print_table(&report);
    write_json(a.json.as_deref(), &report)?;
    Ok(())
}
