//! Randomized tests over every parser of untrusted text in the core:
//! ids, MACs, e-mails, page tokens, free text, passwords, numbers, and the
//! presence state machine fed hostile events. None may panic; what is
//! accepted keeps its invariants; an error never grows with the input.
//!
//! Cases per test: `PRESENCE_FUZZ_CASES` (default 20 000); replay a
//! failure with `PRESENCE_FUZZ_SEED`.

#![allow(clippy::unwrap_used, missing_docs)]

use presence_core::presence::{
    CallState, Direction, DndMode, Event, EventKind, Limits, UserPresence, UserStatus,
};
use presence_core::text::{self, has_unsafe_chars};
use presence_core::{ApiResult, DomainId, Email, Mac, SiteId, UserId, check_page_token};
use presence_testkit::rng::{Rng, cases, seed};

/// An error message stays short whatever was sent: the value is cut to
/// 64 characters (at most 10 bytes each once escaped), whatever its size.
fn short<T>(r: &ApiResult<T>) {
    if let Err(e) = r {
        assert!(
            e.message().len() <= 1024,
            "{} bytes: {e}",
            e.message().len()
        );
    }
}

/// A hostile string, now and then a very long one.
fn input(r: &mut Rng) -> String {
    if r.below(50) == 0 {
        r.hostile_string(20_000)
    } else {
        r.hostile_string(300)
    }
}

#[test]
fn untrusted_ids_macs_emails_and_page_tokens_never_panic_and_keep_their_shape() {
    let mut r = Rng::new(seed());
    for _ in 0..cases(20_000) {
        let s = input(&mut r);
        let d = DomainId::parse(&s);
        short(&d);
        if let Ok(d) = d {
            assert!(
                d.as_str().len() <= 63 && !has_unsafe_chars(d.as_str()),
                "{s:?}"
            );
            assert_eq!(DomainId::parse(d.as_str()).unwrap(), d);
        }
        for parsed in [
            UserId::parse(&s).map(|u| u.into_string()),
            SiteId::parse(&s).map(|x| x.into_string()),
        ] {
            short(&parsed);
            if let Ok(v) = parsed {
                assert!(!v.is_empty() && v.len() <= 64, "{s:?}");
                assert!(
                    v.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                );
            }
        }
        let m = Mac::parse(&s);
        short(&m);
        if let Ok(m) = m {
            assert_eq!(m.as_str().len(), 12);
            assert_eq!(Mac::parse(&m.colon_form()).unwrap(), m);
        }
        let e = Email::parse(&s);
        short(&e);
        if let Ok(e) = e {
            assert!(e.as_str().len() <= 254 && e.as_str().contains('@'), "{s:?}");
            assert_eq!(Email::parse(e.as_str()).unwrap(), e);
        }
        let p = check_page_token(&s, UserId::parse);
        short(&p);
        assert_eq!(p.is_ok(), s.is_empty() || UserId::parse(&s).is_ok());
    }
}

#[test]
fn untrusted_free_text_passwords_and_numbers_never_panic_and_keep_their_limits() {
    let mut r = Rng::new(seed() ^ 1);
    for _ in 0..cases(20_000) {
        let s = input(&mut r);
        let max = r.below(200);
        let t = text::check("field", &s, max);
        short(&t);
        if let Ok(v) = t {
            assert!(v.chars().count() <= max && !has_unsafe_chars(&v), "{s:?}");
            assert_eq!(v, v.trim());
        }
        short(&text::check_password(&s));
        short(&text::check_pin(&s));
        let n = text::check_number(&s);
        short(&n);
        if let Ok(n) = n {
            assert!(
                n.trim_start_matches('+')
                    .bytes()
                    .all(|c| c.is_ascii_digit()),
                "{n:?}"
            );
        }
    }
}

fn hostile_event(r: &mut Rng) -> Event {
    let states = [
        CallState::Trying,
        CallState::Early,
        CallState::Confirmed,
        CallState::Held,
        CallState::Terminated,
    ];
    let kind = match r.below(8) {
        0 => EventKind::Register {
            expires_s: *r.pick(&[0, 1, 3600, 86_400, 86_401, u32::MAX]),
        },
        1 => EventKind::Unregister,
        2 => EventKind::DeviceDnd(r.below(2) == 0),
        3 => EventKind::ManualStatus(
            *r.pick(&[
                UserStatus::Available,
                UserStatus::Busy,
                UserStatus::Away,
                UserStatus::Offline,
            ]),
            r.hostile_string(140),
        ),
        4 => EventKind::UserDnd(*r.pick(&[
            DndMode::TakeAllCalls,
            DndMode::DoNotAcceptAny,
            DndMode::DepartmentCallsOnly,
        ])),
        5 => EventKind::QueueLogin {
            queue: r.hostile_string(140),
            logged_in: r.below(2) == 0,
        },
        _ => EventKind::Call {
            call_id: if r.below(3) == 0 {
                r.hostile_string(140)
            } else {
                format!("c{}", r.below(80))
            },
            state: *r.pick(&states),
            direction: *r.pick(&[Direction::Inbound, Direction::Outbound]),
            remote_number: r.hostile_string(140),
            remote_name: r.hostile_string(140),
        },
    };
    Event {
        device: if r.below(4) == 0 {
            r.hostile_string(140)
        } else {
            format!("d{}", r.below(70))
        },
        sequence: if r.below(10) == 0 {
            0
        } else {
            r.next() % 1_000_000
        },
        at_ms: r.next() as i64,
        kind,
    }
}

#[test]
fn untrusted_events_never_break_the_state_machine_bounds() {
    let lim = Limits::default();
    let mut r = Rng::new(seed() ^ 2);
    let mut u = UserPresence::new(0);
    let mut now = 1_000i64;
    for i in 0..cases(20_000) {
        if i % 2000 == 0 {
            u = UserPresence::new(0);
        }
        now += r.below(5000) as i64;
        let before = u.aggregate().version;
        let e = hostile_event(&mut r);
        match u.apply_explained(&e, now, &lim) {
            Ok(changed) => assert_eq!(u.aggregate().version, before + u64::from(changed)),
            Err(rej) => {
                assert_eq!(
                    u.aggregate().version,
                    before,
                    "a rejected event changed nothing"
                );
                assert!(
                    !rej.detail.is_empty() && rej.detail.len() <= 1024,
                    "{}",
                    rej.detail
                );
            }
        }
        u.expire(now, &lim);
        let a = u.aggregate();
        assert!(a.calls.len() <= lim.shown_calls);
        assert!(!has_unsafe_chars(&a.message));
        assert!(
            a.calls
                .iter()
                .all(|c| !has_unsafe_chars(&c.remote_name) && !has_unsafe_chars(&c.call_id))
        );
    }
}
