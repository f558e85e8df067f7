//! Randomized tests over what the fanout decodes from untrusted bytes:
//! device events as published on NATS (noise and mutated valid
//! encodings), ingest subjects, input-log entries, `WatchMany` requests
//! and `traceparent` values (NATS headers, gRPC metadata, log entries).
//! None may panic; what is accepted is well formed.
//!
//! Cases: `PRESENCE_FUZZ_CASES` (default 20 000); replay with
//! `PRESENCE_FUZZ_SEED`.

use crate::convert::event_from_proto;
use crate::ingest::{ingest_subject, ingest_target};
use presence_core::presence::{Limits, UserPresence};
use presence_proto::v1;
use presence_testkit::rng::{Rng, cases, seed};
use prost::Message;

fn valid_event(r: &mut Rng) -> v1::DeviceEvent {
    use v1::device_event::Kind as K;
    let kind = match r.below(5) {
        0 => K::Registration(v1::Registration {
            expires_seconds: 600,
        }),
        1 => K::Call(v1::CallUpdate {
            call_id: format!("c{}", r.below(5)),
            state: r.below(6) as i32,
            direction: r.below(3) as i32,
            remote_number: "+15550100".into(),
            remote_name: r.hostile_string(40),
        }),
        2 => K::ManualStatus(v1::ManualStatus {
            status: r.below(5) as i32,
            message: r.hostile_string(150),
        }),
        3 => K::QueueLogin(v1::QueueLogin {
            queue: r.hostile_string(10),
            logged_in: true,
        }),
        _ => K::UserDnd(v1::UserDnd {
            mode: r.below(5) as i32,
        }),
    };
    v1::DeviceEvent {
        domain: "acme".into(),
        user: "1001".into(),
        device: format!("d{}", r.below(3)),
        sequence: r.next() % 1000,
        at_ms: 0,
        kind: Some(kind),
    }
}

#[test]
fn device_events_from_the_wire_never_panic_the_ingest_path() {
    let lim = Limits::default();
    let mut r = Rng::new(seed() ^ 3);
    let mut u = UserPresence::new(0);
    let subjects = [
        "presence.v1.in.acme.1001",
        "presence.v1.in.acme.2002",
        "presence.v1.in.acme",
        "presence.v1.in.ACME.1001",
        "presence.v1.in.acme.1001.x",
    ];
    for i in 0..cases(20_000) {
        let mut bytes = valid_event(&mut r).encode_to_vec();
        match r.below(3) {
            0 => bytes = r.bytes(300),
            1 => r.mutate(&mut bytes),
            _ => {}
        }
        let Ok(mut e) = v1::DeviceEvent::decode(bytes.as_slice()) else {
            continue;
        };
        let subject = if r.below(4) == 0 {
            format!("presence.v1.in.{}", r.hostile_string(40))
        } else {
            (*r.pick(&subjects)).to_owned()
        };
        let Ok((d, user)) = ingest_target(&subject, &mut e) else {
            continue;
        };
        assert_eq!(
            (e.domain.as_str(), e.user.as_str()),
            (d.as_str(), user.as_str())
        );
        if let Ok(ev) = event_from_proto(&e) {
            if i % 500 == 0 {
                u = UserPresence::new(0);
            }
            let _ = u.apply_explained(&ev, 1_000 + i as i64, &lim);
            assert!(u.aggregate().calls.len() <= lim.shown_calls);
        }
    }
}

#[test]
fn hostile_subjects_parse_to_valid_ids_or_nothing() {
    let mut r = Rng::new(seed() ^ 4);
    for _ in 0..cases(20_000) {
        let s = match r.below(3) {
            0 => r.hostile_string(120),
            1 => format!(
                "presence.v1.in.{}.{}",
                r.hostile_string(30),
                r.hostile_string(30)
            ),
            _ => format!("presence.v1.in.acme.{}", r.hostile_string(70)),
        };
        if let Some((d, u)) = ingest_subject(&s) {
            assert_eq!(s, format!("presence.v1.in.{d}.{u}"));
        }
    }
}

const W3C: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn hostile_traceparents_parse_to_a_context_or_nothing() {
    use presence_bus::trace::TraceParent;
    let mut r = Rng::new(seed() ^ 6);
    for _ in 0..cases(20_000) {
        let s = match r.below(3) {
            0 => r.hostile_string(80),
            1 => {
                let mut b = W3C.as_bytes().to_vec();
                r.mutate(&mut b);
                String::from_utf8_lossy(&b).into_owned()
            }
            _ => format!(
                "{:02x}-{:032x}-{:016x}-{:02x}{}",
                r.below(256),
                u128::from(r.next()) << 64 | u128::from(r.next()),
                r.next(),
                r.below(256),
                if r.below(2) == 0 {
                    String::new()
                } else {
                    r.hostile_string(10)
                }
            ),
        };
        if let Some(p) = TraceParent::parse(&s) {
            // What is accepted names a trace and a span, and is sent on
            // as a version-00 value that reads back the same.
            assert!(p.trace_id() != 0 && p.span_id() != 0, "{s:?}");
            assert_eq!(p.header().len(), 55);
            assert_eq!(TraceParent::parse(&p.header()), Some(p), "{s:?}");
            if s.starts_with("00") {
                // Version 00 has exactly one spelling.
                assert_eq!(p.header(), s);
            }
        }
    }
}

#[test]
fn input_log_entries_and_watch_many_requests_decode_or_refuse() {
    let mut r = Rng::new(seed() ^ 5);
    let entry = v1::IngestBatch {
        items: vec![v1::IngestItem {
            domain: "acme".into(),
            user: "1001".into(),
            event: valid_event(&mut r).encode_to_vec(),
            reply: String::new(),
            token: 0,
            takeover: false,
            traceparent: W3C.into(),
        }],
        admitted_ms: 1,
    }
    .encode_to_vec();
    let many = v1::WatchManyRequest {
        add: vec![v1::WatchManyAdd {
            key: 7,
            watch: Some(v1::WatchRequest {
                domain: "acme".into(),
                ..Default::default()
            }),
        }],
        remove: vec![1, 2],
        batching: None,
    }
    .encode_to_vec();
    for _ in 0..cases(20_000) {
        let mut b = if r.below(2) == 0 {
            entry.clone()
        } else {
            r.bytes(200)
        };
        r.mutate(&mut b);
        if let Ok(batch) = v1::IngestBatch::decode(b.as_slice()) {
            let n = batch.items.len();
            let (events, malformed) = crate::cluster::batch_events_for_tests(batch.items);
            assert_eq!(events + malformed, n);
        }
        let mut m = many.clone();
        r.mutate(&mut m);
        if let Ok(req) = v1::WatchManyRequest::decode(m.as_slice()) {
            assert!(req.add.len() + req.remove.len() <= m.len());
        }
    }
}
