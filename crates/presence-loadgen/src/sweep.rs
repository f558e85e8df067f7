//! `--mode sweep`: the scale curve. For every (streams, targets per
//! stream) point of `--sweep-streams` × `--sweep-targets`, the raw-NATS
//! baseline and the broker each run at `--rate` events/s for
//! `--duration` seconds with those subscribers; each point reports
//! delivered/s, p50/p99 publish-to-delivery and the server's memory per
//! idle stream. `--plot FILE.svg` draws the curves (no plotting library:
//! a small SVG writer below).

use crate::{Args, Phase, baseline, broker, targets_of};
use presence_client::PresenceClient;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Instant;

/// One point of the curve.
#[derive(Debug, Serialize, serde::Deserialize, Clone)]
pub struct Point {
    /// Watch streams (and baseline subscribers).
    pub streams: usize,
    /// Targets per stream.
    pub targets: usize,
    /// Deliveries the rate implies per second.
    pub expected_per_sec: f64,
    /// Raw NATS.
    pub baseline: Phase,
    /// The broker.
    pub broker: Phase,
    /// Server memory per idle stream (bytes, marginal).
    pub memory_per_stream: Option<f64>,
}

/// Runs every point; the domain is set up.
pub async fn run(
    a: &Args,
    admin: &mut PresenceClient,
    domain: &str,
    base: Instant,
) -> anyhow::Result<Vec<Point>> {
    let mut out = Vec::new();
    for &targets in &a.sweep_targets {
        for &streams in &a.sweep_streams {
            let mut p = a.clone();
            p.streams = streams;
            p.targets = targets;
            let mut watchers = vec![0u64; p.users];
            for s in 0..p.streams {
                for t in targets_of(s, &p) {
                    watchers[t] += 1;
                }
            }
            eprintln!("sweep: {streams} streams × {targets} targets");
            let b = baseline(&p, domain, &watchers, base).await?;
            let (k, mem) = broker(&p, admin, domain, &watchers, base).await?;
            let fanout = watchers.iter().sum::<u64>() as f64 / p.users as f64;
            out.push(Point {
                streams,
                targets,
                expected_per_sec: a.rate as f64 * fanout,
                baseline: b,
                broker: k,
                memory_per_stream: mem.map(|m| m.0),
            });
        }
    }
    Ok(out)
}

/// Prints the curve, writes it as JSON and draws it, where asked.
pub fn report(
    points: &[Point],
    rate: u64,
    json: Option<&std::path::Path>,
    plot: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    print(points, rate);
    crate::write_json(json, &points)?;
    if let Some(path) = plot {
        std::fs::write(path, svg(points, rate))
            .map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Prints the curve as a table.
pub fn print(points: &[Point], rate: u64) {
    println!();
    println!("scale sweep at {rate} events/s");
    println!(
        "{:>7} {:>7} {:>10} {:>10} {:>10} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "streams",
        "targets",
        "expected/s",
        "nats/s",
        "broker/s",
        "ratio",
        "nats p50",
        "nats p99",
        "brk p50",
        "brk p99",
        "KiB/strm"
    );
    for p in points {
        println!(
            "{:>7} {:>7} {:>10.0} {:>10.0} {:>10.0} {:>6.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9}",
            p.streams,
            p.targets,
            p.expected_per_sec,
            p.baseline.delivered_per_sec,
            p.broker.delivered_per_sec,
            p.broker.delivered_per_sec / p.baseline.delivered_per_sec.max(1.0),
            p.baseline.latency.p50_us as f64 / 1e3,
            p.baseline.latency.p99_us as f64 / 1e3,
            p.broker.latency.p50_us as f64 / 1e3,
            p.broker.latency.p99_us as f64 / 1e3,
            p.memory_per_stream
                .map(|m| format!("{:.1}", m / 1024.0))
                .unwrap_or_else(|| "-".into()),
        );
    }
}

/// Fewest streams whose memory is plotted: below, the growth of the
/// resident set is within its page and allocator granularity (and an
/// earlier point's freed memory is reused), so the figure is noise.
const MEMORY_MIN_STREAMS: usize = 1000;

/// A value of a point (`None`: not drawn).
type Value = fn(&Point) -> Option<f64>;

/// One panel: a y value per point, one line per (series, targets).
struct Panel {
    title: &'static str,
    unit: &'static str,
    /// Logarithmic y axis (latencies span orders of magnitude once a
    /// point saturates).
    log: bool,
    /// (label suffix, dashed, value).
    series: Vec<(&'static str, bool, Value)>,
}

const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

/// Draws delivered/s, p99 latency and memory per stream against the
/// number of streams (log scale), one color per targets-per-stream
/// value; dashed lines are raw NATS.
pub fn svg(points: &[Point], rate: u64) -> String {
    let panels = [
        Panel {
            title: "delivered per second",
            unit: "k/s",
            log: false,
            series: vec![
                ("broker", false, |p| Some(p.broker.delivered_per_sec / 1e3)),
                ("raw NATS", true, |p| {
                    Some(p.baseline.delivered_per_sec / 1e3)
                }),
            ],
        },
        Panel {
            title: "p99 publish-to-delivery",
            unit: "ms, log scale",
            log: true,
            series: vec![
                ("broker", false, |p| {
                    Some(p.broker.latency.p99_us as f64 / 1e3)
                }),
                ("raw NATS", true, |p| {
                    Some(p.baseline.latency.p99_us as f64 / 1e3)
                }),
            ],
        },
        Panel {
            title: "server memory per idle stream",
            unit: "KiB",
            log: false,
            series: vec![("broker", false, |p| {
                if p.streams < MEMORY_MIN_STREAMS {
                    None
                } else {
                    p.memory_per_stream.map(|m| m / 1024.0)
                }
            })],
        },
    ];
    let (pw, ph) = (360.0, 260.0);
    let (ml, mr, mt, mb) = (56.0, 16.0, 36.0, 44.0);
    let width = pw * panels.len() as f64;
    let height = ph + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let mut targets: Vec<usize> = points.iter().map(|p| p.targets).collect();
    targets.sort_unstable();
    targets.dedup();
    let xs: Vec<usize> = {
        let mut v: Vec<usize> = points.iter().map(|p| p.streams).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let (x0, x1) = (
        (*xs.first().unwrap_or(&1) as f64).log10(),
        (*xs.last().unwrap_or(&10) as f64).log10().max(0.1),
    );
    for (k, panel) in panels.iter().enumerate() {
        let ox = k as f64 * pw;
        let values: Vec<f64> = points
            .iter()
            .flat_map(|p| panel.series.iter().filter_map(move |(_, _, f)| f(p)))
            .collect();
        // Linear: 0 to 1.1 × max. Log: whole decades around the values.
        let (lo, hi) = if panel.log {
            let min = values.iter().copied().fold(f64::MAX, f64::min).max(0.01);
            let max = values
                .iter()
                .copied()
                .fold(0.0f64, f64::max)
                .max(min * 10.0);
            (min.log10().floor(), max.log10().ceil())
        } else {
            let max = values.iter().copied().fold(0.0f64, f64::max).max(1e-9);
            (0.0, max * 1.1)
        };
        let px = |streams: usize| {
            let t = if x1 > x0 {
                ((streams as f64).log10() - x0) / (x1 - x0)
            } else {
                0.5
            };
            ox + ml + t * (pw - ml - mr)
        };
        let py = |v: f64| {
            let t = if panel.log {
                (v.max(1e-9).log10() - lo) / (hi - lo).max(1e-9)
            } else {
                v / hi
            };
            mt + (1.0 - t) * (ph - mt - mb)
        };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="20" font-size="13" font-weight="bold">{} ({})</text>"#,
            ox + ml,
            panel.title,
            panel.unit
        );
        // Axes and grid.
        let _ = writeln!(
            s,
            r##"<line x1="{a}" y1="{b}" x2="{c}" y2="{b}" stroke="#333"/><line x1="{a}" y1="{t}" x2="{a}" y2="{b}" stroke="#333"/>"##,
            a = ox + ml,
            b = ph - mb,
            c = ox + pw - mr,
            t = mt
        );
        let ticks: Vec<f64> = if panel.log {
            (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect()
        } else {
            (0..=4).map(|i| hi * f64::from(i) / 4.0).collect()
        };
        for v in ticks {
            let y = py(v);
            let label = if v >= 10.0 || v == 0.0 {
                format!("{v:.0}")
            } else if v >= 1.0 {
                format!("{v:.1}")
            } else {
                format!("{v}")
            };
            let _ = writeln!(
                s,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
                ox + ml,
                ox + pw - mr,
                ox + ml - 4.0,
                y + 4.0,
            );
        }
        for &x in &xs {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{}" text-anchor="middle">{x}</text>"##,
                px(x),
                ph - mb + 14.0
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle">watch streams (log scale)</text>"##,
            ox + ml + (pw - ml - mr) / 2.0,
            ph - mb + 30.0
        );
        for (ti, t) in targets.iter().enumerate() {
            let color = COLORS[ti % COLORS.len()];
            for (_, dashed, f) in &panel.series {
                let mut pts: Vec<(usize, f64)> = points
                    .iter()
                    .filter(|p| p.targets == *t)
                    .filter_map(|p| f(p).map(|v| (p.streams, v)))
                    .collect();
                pts.sort_by_key(|(x, _)| *x);
                let path: Vec<String> = pts
                    .iter()
                    .map(|(x, v)| format!("{:.1},{:.1}", px(*x), py(*v)))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="2"{} points="{}"/>"#,
                    if *dashed {
                        r#" stroke-dasharray="5,4""#
                    } else {
                        ""
                    },
                    path.join(" ")
                );
                for (x, v) in &pts {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                        px(*x),
                        py(*v)
                    );
                }
            }
        }
    }
    // Legend.
    let mut lx = 10.0;
    let ly = height - 12.0;
    for (ti, t) in targets.iter().enumerate() {
        let color = COLORS[ti % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{t} targets/stream</text>"#,
            lx + 20.0,
            lx + 24.0,
            ly + 4.0,
            y = ly
        );
        lx += 130.0;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="#333" stroke-width="2" stroke-dasharray="5,4"/><text x="{}" y="{}">raw NATS (dashed), broker (solid); {rate} events/s, 2 cores shared by everything</text>"##,
        lx + 20.0,
        lx + 24.0,
        ly + 4.0
    );
    s.push_str("</svg>\n");
    s
}
