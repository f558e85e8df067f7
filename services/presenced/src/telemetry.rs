//! Logging and tracing: a fmt layer (text or JSON) filtered by
//! `RUST_LOG` (default `info`), plus an OpenTelemetry layer exporting
//! spans over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Exported spans are those of the request path only ([`SPANS`]): a gRPC
//! call, a device event taken in from NATS, its application by the
//! shard's owner and its delivery to each node's watch streams, linked
//! into one trace across nodes (`presence_bus::trace`), with the
//! warnings and errors logged inside them. Long-lived task spans (a
//! shard's ownership, the log reader) stay in the logs only: exported,
//! they would be traces hours long with every event of their life.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The spans exported over OTLP: the request path.
pub const SPANS: &[&str] = &[
    "grpc",
    "presence.ingest",
    "presence.apply",
    "presence.deliver",
];

/// What the OpenTelemetry layer sees: the request-path spans, and
/// warnings and errors (attached to the span they happen in). Decided on
/// metadata alone, so every other call site is never asked again.
struct RequestPath;

impl RequestPath {
    fn wanted(m: &Metadata<'_>) -> bool {
        if m.is_span() {
            SPANS.contains(&m.name())
        } else {
            *m.level() <= Level::WARN
        }
    }
}

impl<S> Filter<S> for RequestPath {
    fn enabled(&self, m: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        Self::wanted(m)
    }

    fn callsite_enabled(&self, m: &'static Metadata<'static>) -> Interest {
        if Self::wanted(m) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::INFO)
    }
}

/// The span of one gRPC call (only while traces are exported), child of
/// the caller's span when the request carries a `traceparent`.
pub fn request_span(req: &http::Request<()>) -> tracing::Span {
    if !presence_bus::trace::enabled() {
        return tracing::Span::none();
    }
    let path = req.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    );
    let parent = req
        .headers()
        .get(presence_bus::trace::HEADER)
        .and_then(|v| v.to_str().ok());
    if let Some(p) = presence_bus::trace::from_header(parent) {
        p.adopt(&span);
    }
    span
}

/// Whether text logs are coloured: only on a terminal, and never when
/// `NO_COLOR` is set to anything but the empty string (no-color.org).
pub fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Keeps the trace provider alive; call [`Telemetry::shutdown`] at exit
/// to flush pending spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber; `node_id` names this process in
    /// exported spans (`service.instance.id`). Must run inside a tokio
    /// runtime when OTLP export is enabled.
    pub fn init(json: bool, node_id: &str) -> anyhow::Result<Self> {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let fmt = if json {
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .boxed()
        } else {
            use std::io::IsTerminal;
            let colour = colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            tracing_subscriber::fmt::layer()
                .with_ansi(colour)
                .with_writer(std::io::stderr)
                .boxed()
        };
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
        let (otel, provider) = if endpoint.is_empty() {
            (None, None)
        } else {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()?;
            let mut resource = opentelemetry_sdk::Resource::builder();
            if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
                resource = resource.with_service_name("presenced");
            }
            if !node_id.is_empty() {
                resource = resource.with_attribute(opentelemetry::KeyValue::new(
                    "service.instance.id",
                    node_id.to_owned(),
                ));
            }
            let provider = SdkTracerProvider::builder()
                .with_resource(resource.build())
                .with_batch_exporter(exporter)
                .build();
            let tracer = provider.tracer("presenced");
            (
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(RequestPath),
                ),
                Some(provider),
            )
        };
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .with(otel)
            .try_init()?;
        if provider.is_some() {
            presence_bus::trace::enable();
            tracing::info!(%endpoint, "exporting traces over OTLP");
        }
        Ok(Self { provider })
    }

    /// Flushes and stops the trace exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("trace provider shutdown: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new(""))));
    }
}
