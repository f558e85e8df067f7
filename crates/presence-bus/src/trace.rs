//! Trace context across the bus: a change is one trace from the call or
//! message that caused it to the watch streams it reaches, on every node
//! it crosses.
//!
//! The context travels as a W3C Trace Context `traceparent`
//! (`00-<trace id>-<span id>-<flags>`): in the NATS header `traceparent`
//! of device events a PBX publishes and of the changes a shard publishes
//! on `presence.v1.out.*`, in gRPC metadata of the same name, and per
//! event in the entries of the input log (an entry mixes many events and
//! so many traces). The in-process bus carries it in
//! [`crate::BusMessage::trace`].
//!
//! Nothing is carried, and no span of the request path is created, until
//! [`enable`] is called (presenced does when it exports traces over
//! OTLP): the hot path pays nothing when tracing is off.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (NATS) and metadata key (gRPC) carrying the context.
pub const HEADER: &str = "traceparent";

/// Whether trace context is carried and request-path spans are made.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns trace propagation on for this process (once spans are exported).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Returns whether trace propagation is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A span's place in a trace, as W3C `traceparent` names it: the trace,
/// the parent span and the trace flags (sampled or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

/// Lower-case hex digits only (the W3C format); None otherwise.
fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(s[2 * i])? << 4 | digit(s[2 * i + 1])?;
    }
    Some(out)
}

impl TraceParent {
    /// Parses a `traceparent` value; None when it is not one (wrong
    /// length or separators, upper-case or non-hex digits, version `ff`,
    /// an all-zero trace or span id). A later version's value is read by
    /// its first four fields, as the W3C recommendation asks.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let [version] = hex::<1>(&b[0..2])?;
        let exact = b.len() == 55;
        if version == 0xff || (version == 0 && !exact) || (!exact && b[55] != b'-') {
            return None;
        }
        let p = Self {
            trace_id: hex::<16>(&b[3..35])?,
            span_id: hex::<8>(&b[36..52])?,
            flags: hex::<1>(&b[53..55])?[0],
        };
        p.valid().then_some(p)
    }

    /// Returns the parent of a span `trace_id`/`span_id` (None when
    /// either is zero).
    pub fn new(trace_id: u128, span_id: u64, sampled: bool) -> Option<Self> {
        let p = Self {
            trace_id: trace_id.to_be_bytes(),
            span_id: span_id.to_be_bytes(),
            flags: u8::from(sampled),
        };
        p.valid().then_some(p)
    }

    fn valid(&self) -> bool {
        self.trace_id != [0; 16] && self.span_id != [0; 8]
    }

    /// Returns the value to send (version 00).
    pub fn header(&self) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        for b in self.trace_id {
            let _ = write!(s, "{b:02x}");
        }
        s.push('-');
        for b in self.span_id {
            let _ = write!(s, "{b:02x}");
        }
        let _ = write!(s, "-{:02x}", self.flags);
        s
    }

    /// Returns the trace's id.
    pub fn trace_id(&self) -> u128 {
        u128::from_be_bytes(self.trace_id)
    }

    /// Returns the parent span's id.
    pub fn span_id(&self) -> u64 {
        u64::from_be_bytes(self.span_id)
    }

    /// Returns the context of the current span, when propagation is on
    /// and the span belongs to a trace.
    pub fn current() -> Option<Self> {
        if !enabled() {
            return None;
        }
        Self::of(&tracing::Span::current())
    }

    /// Returns the context of `span` (None when it belongs to no trace,
    /// e.g. it is disabled or nothing exports spans).
    pub fn of(span: &tracing::Span) -> Option<Self> {
        if span.is_none() {
            return None;
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        Some(Self {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        })
    }

    /// Makes `span` (just created, not entered yet) a child of this
    /// remote parent.
    pub fn adopt(&self, span: &tracing::Span) {
        let sc = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        if let Err(e) = span.set_parent(cx) {
            tracing::debug!(error = %e, "trace parent not set");
        }
    }
}

/// Returns the span `make` builds as a child of `parent`, or None when
/// there is no parent or propagation is off (then `make` is not called:
/// untraced events cost nothing).
pub fn child(
    parent: Option<TraceParent>,
    make: impl FnOnce() -> tracing::Span,
) -> Option<tracing::Span> {
    let p = parent.filter(|_| enabled())?;
    let span = make();
    p.adopt(&span);
    Some(span)
}

/// Returns the context a header value names, if it is a valid one.
pub fn from_header(v: Option<&str>) -> Option<TraceParent> {
    if !enabled() {
        return None;
    }
    TraceParent::parse(v?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const W3C: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_round_trips() {
        let p = TraceParent::parse(W3C).unwrap();
        assert_eq!(p.trace_id(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.span_id(), 0x00f067aa0ba902b7);
        assert_eq!(p.flags, 1);
        assert_eq!(p.header(), W3C);
        assert_eq!(
            TraceParent::new(p.trace_id(), p.span_id(), true),
            Some(p),
            "the same context built from its ids"
        );
    }

    #[test]
    fn what_is_not_a_traceparent_is_refused() {
        let bad = [
            "",
            "00",
            // Upper-case hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // All-zero trace id, then span id.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff, and version 00 with more fields.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
            // A later version glued to its next field.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01xyz",
            // Wrong separators and digits.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // A multi-byte character where a digit belongs.
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ];
        for b in bad {
            assert_eq!(TraceParent::parse(b), None, "{b:?}");
        }
        assert_eq!(TraceParent::new(0, 1, true), None);
        assert_eq!(TraceParent::new(1, 0, true), None);
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes-next";
        let p = TraceParent::parse(v).unwrap();
        assert_eq!(p.trace_id(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(
            p.header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "sent on as the version this broker speaks"
        );
    }

    #[test]
    fn off_means_nothing_is_read_or_made() {
        // Nothing in this crate's tests turns propagation on.
        assert!(!enabled());
        assert_eq!(from_header(Some(W3C)), None);
        assert!(
            child(TraceParent::parse(W3C), || panic!("not called")).is_none(),
            "no span is built while propagation is off"
        );
        assert_eq!(TraceParent::current(), None);
    }
}
