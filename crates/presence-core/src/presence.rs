//! The per-user presence state machine and its aggregation
//! (ARCHITECTURE.md §4). Pure: time comes in as `now_ms`.
//!
//! Per device: registration (with expiry), calls by call id, device DND,
//! and the last source sequence number. Per user: manual status and
//! message, DND mode, queue logins. [`UserPresence::apply`] validates and
//! applies one event; [`UserPresence::expire`] removes what timed out;
//! [`UserPresence::aggregate`] is what watchers receive, with a `version`
//! that increases exactly when the aggregate changes.
//!
//! Invariants (checked by the property tests below):
//! - stale or duplicate events (per-device sequence) are rejected;
//! - a terminated call id is remembered for a while, so a late "early"
//!   for it is rejected and cannot make a lamp blink forever;
//! - nothing outlives its expiry: a ringing call without news for
//!   `ring_timeout_ms`, a registration past its expiry, a call without
//!   news for `call_silence_ms`;
//! - the version never decreases and changes only with the aggregate.

use crate::text::has_unsafe_chars;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The state of one call, as reported by a device.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum CallState {
    /// Outgoing call set up, not ringing yet.
    Trying,
    /// Ringing.
    Early,
    /// Answered.
    Confirmed,
    /// On hold.
    Held,
    /// Ended.
    Terminated,
}

/// Call direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Direction {
    /// Towards the user.
    Inbound,
    /// From the user.
    Outbound,
}

/// A user's manual status.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum UserStatus {
    /// Available (the default).
    #[default]
    Available,
    /// Busy.
    Busy,
    /// Away.
    Away,
    /// Appear offline.
    Offline,
}

/// A user's do-not-disturb mode.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum DndMode {
    /// Take all calls (DND off).
    #[default]
    TakeAllCalls,
    /// Accept no calls.
    DoNotAcceptAny,
    /// Only department calls.
    DepartmentCallsOnly,
}

/// What happened, as reported by a device, gateway or PBX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The device registered, for `expires_s` seconds.
    Register {
        /// Registration lifetime in seconds (1..=86400).
        expires_s: u32,
    },
    /// The device unregistered: it and its calls stop counting.
    Unregister,
    /// A call changed state.
    Call {
        /// Call id, unique per device.
        call_id: String,
        /// New state.
        state: CallState,
        /// Direction.
        direction: Direction,
        /// Remote party number.
        remote_number: String,
        /// Remote party name.
        remote_name: String,
    },
    /// Device-level do-not-disturb.
    DeviceDnd(bool),
    /// The user's manual status and message.
    ManualStatus(UserStatus, String),
    /// The user's DND mode.
    UserDnd(DndMode),
    /// The user logged in to (or out of) a call queue.
    QueueLogin {
        /// Queue id.
        queue: String,
        /// Logged in?
        logged_in: bool,
    },
}

/// One event from one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Device id (MAC or PBX-side id).
    pub device: String,
    /// Strictly increasing per device.
    pub sequence: u64,
    /// When it happened at the source, unix ms (0 = unknown, use now).
    pub at_ms: i64,
    /// What happened.
    pub kind: EventKind,
}

/// Why an event was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Its sequence is not above the device's last one (duplicate or
    /// out of order).
    StaleSequence,
    /// The call transition is not allowed (e.g. ringing after answered,
    /// anything after terminated).
    IllegalTransition,
    /// A field is out of range or malformed.
    Malformed,
    /// The user has too many devices or calls.
    TooMany,
}

/// A rejected event: why, and a sentence naming the value at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The reason.
    pub reason: Reject,
    /// What was wrong, e.g. "call c1 of device p1 cannot go from
    /// confirmed to early".
    pub detail: String,
}

impl Rejection {
    /// A rejection for `reason` with `detail`.
    pub fn new(reason: Reject, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl CallState {
    /// The state's name in rejections ("trying", "early", …).
    pub fn name(self) -> &'static str {
        match self {
            CallState::Trying => "trying",
            CallState::Early => "early",
            CallState::Confirmed => "confirmed",
            CallState::Held => "held",
            CallState::Terminated => "terminated",
        }
    }
}

/// Whether `t` is acceptable event text: at most [`MAX_TEXT`] bytes and
/// no control characters.
fn text_ok(t: &str) -> bool {
    t.len() <= MAX_TEXT && !has_unsafe_chars(t)
}

/// Timeouts and bounds of the state machine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A ringing or trying call without news for this long is dropped.
    pub ring_timeout_ms: i64,
    /// Any call without news for this long is dropped.
    pub call_silence_ms: i64,
    /// How long a terminated call id is remembered.
    pub terminated_memory_ms: i64,
    /// At most this many remembered terminated call ids per user.
    pub terminated_max: usize,
    /// At most this many devices per user.
    pub max_devices: usize,
    /// At most this many concurrent calls per user.
    pub max_calls: usize,
    /// At most this many calls in an aggregate (newest first).
    pub shown_calls: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ring_timeout_ms: 120_000,
            call_silence_ms: 4 * 3600 * 1000,
            terminated_memory_ms: 120_000,
            terminated_max: 256,
            max_devices: 64,
            max_calls: 64,
            shown_calls: 7,
        }
    }
}

/// One call on one device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Call {
    /// Call id.
    pub call_id: String,
    /// Device it is on.
    pub device: String,
    /// State.
    pub state: CallState,
    /// Direction.
    pub direction: Direction,
    /// Remote number.
    pub remote_number: String,
    /// Remote name.
    pub remote_name: String,
    /// When the call started, unix ms.
    pub started_at_ms: i64,
    /// Last news, unix ms (local clock).
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Device {
    last_sequence: u64,
    registered_until_ms: Option<i64>,
    dnd: bool,
    calls: BTreeMap<String, Call>,
}

/// Aggregated presence status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PresenceStatus {
    /// Reachable and idle.
    Available,
    /// On a call, ringing, in DND or manually busy.
    Busy,
    /// No registered device and no call, or manually offline.
    Offline,
}

/// Aggregated telephony status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Telephony {
    /// No call.
    NoCall,
    /// An inbound call is ringing (pickup-relevant).
    Ringing,
    /// On a call (or placing one).
    Connected,
    /// All calls on hold.
    OnHold,
}

/// The full aggregated state of a user (never a delta).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Aggregate {
    /// Strictly increasing per user.
    pub version: u64,
    /// Presence status.
    pub presence: PresenceStatus,
    /// Telephony status.
    pub telephony: Telephony,
    /// Do-not-disturb in effect (device or user).
    pub dnd: bool,
    /// The user's DND mode.
    pub dnd_mode: DndMode,
    /// Manual status.
    pub user_status: UserStatus,
    /// Manual message.
    pub message: String,
    /// Active calls, newest first, at most `shown_calls`.
    pub calls: Vec<Call>,
    /// Queues the user is logged in to.
    pub queues: Vec<String>,
    /// Local time of the last change, unix ms.
    pub updated_at_ms: i64,
}

/// Longest id or text accepted in an event.
const MAX_TEXT: usize = 128;

/// The state of one user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserPresence {
    devices: BTreeMap<String, Device>,
    user_status: UserStatus,
    message: String,
    dnd_mode: DndMode,
    queues: BTreeSet<String>,
    /// (call id, forget at) of terminated calls, oldest first.
    terminated: VecDeque<(String, i64)>,
    current: Aggregate,
}

impl Default for UserPresence {
    fn default() -> Self {
        Self::new(0)
    }
}

fn allowed(from: CallState, to: CallState) -> bool {
    use CallState::*;
    match (from, to) {
        // Anything may end; nothing comes back from Terminated (no arm
        // below starts from it).
        (_, Terminated) => true,
        (Trying, Early | Confirmed | Trying) => true,
        (Early, Early | Confirmed) => true,
        (Confirmed | Held, Confirmed | Held) => true,
        _ => false,
    }
}

impl UserPresence {
    /// Returns a user with no device, offline, at version `version`
    /// (restored users start above their last published version).
    pub fn new(version: u64) -> Self {
        let mut u = Self {
            devices: BTreeMap::new(),
            user_status: UserStatus::Available,
            message: String::new(),
            dnd_mode: DndMode::TakeAllCalls,
            queues: BTreeSet::new(),
            terminated: VecDeque::new(),
            current: Aggregate {
                version,
                presence: PresenceStatus::Offline,
                telephony: Telephony::NoCall,
                dnd: false,
                dnd_mode: DndMode::TakeAllCalls,
                user_status: UserStatus::Available,
                message: String::new(),
                calls: Vec::new(),
                queues: Vec::new(),
                updated_at_ms: 0,
            },
        };
        u.current = u.compute(version, 0, &Limits::default());
        u
    }

    /// Returns the current aggregate.
    pub fn aggregate(&self) -> &Aggregate {
        &self.current
    }

    fn is_terminated(&self, call_id: &str) -> bool {
        self.terminated.iter().any(|(c, _)| c == call_id)
    }

    fn remember_terminated(&mut self, call_id: &str, now_ms: i64, lim: &Limits) {
        // A second termination restarts the memory of the id.
        self.terminated.retain(|(c, _)| c != call_id);
        self.terminated
            .push_back((call_id.to_owned(), now_ms + lim.terminated_memory_ms));
        while self.terminated.len() > lim.terminated_max {
            self.terminated.pop_front();
        }
    }

    fn call_count(&self) -> usize {
        self.devices.values().map(|d| d.calls.len()).sum()
    }

    /// Checks an event against the user's state without changing it.
    fn validate(&self, ev: &Event, lim: &Limits) -> Result<(), Rejection> {
        use Reject::*;
        let bad_text = |what: &str, t: &str| {
            Rejection::new(
                Malformed,
                format!(
                    "{what} {} is longer than {MAX_TEXT} bytes or has control characters",
                    crate::text::shown(t)
                ),
            )
        };
        if ev.device.is_empty() {
            return Err(Rejection::new(Malformed, "the device id is empty"));
        }
        if !text_ok(&ev.device) {
            return Err(bad_text("device id", &ev.device));
        }
        let dev = &ev.device;
        if ev.sequence == 0 {
            return Err(Rejection::new(
                Malformed,
                format!("sequence 0 of device {dev}: sequences start at 1"),
            ));
        }
        let last = self.devices.get(dev).map(|d| d.last_sequence).unwrap_or(0);
        if ev.sequence <= last {
            return Err(Rejection::new(
                StaleSequence,
                format!(
                    "sequence {} of device {dev} is not above its last applied one, {last}",
                    ev.sequence
                ),
            ));
        }
        if !self.devices.contains_key(dev) && self.devices.len() >= lim.max_devices {
            return Err(Rejection::new(
                TooMany,
                format!(
                    "device {dev} would be the user's device number {}, at most {} are kept",
                    self.devices.len() + 1,
                    lim.max_devices
                ),
            ));
        }
        match &ev.kind {
            EventKind::Register { expires_s } if *expires_s == 0 || *expires_s > 86_400 => {
                Err(Rejection::new(
                    Malformed,
                    format!(
                        "registration of device {dev} expires in {expires_s} s, allowed 1 to 86400"
                    ),
                ))
            }
            EventKind::Call {
                call_id,
                state,
                remote_number,
                remote_name,
                ..
            } => {
                if call_id.is_empty() {
                    return Err(Rejection::new(
                        Malformed,
                        format!("call event of device {dev} has an empty call id"),
                    ));
                }
                for (what, t) in [
                    ("call id", call_id),
                    ("remote number", remote_number),
                    ("remote name", remote_name),
                ] {
                    if !text_ok(t) {
                        return Err(bad_text(what, t));
                    }
                }
                let existing = self.devices.get(dev).and_then(|d| d.calls.get(call_id));
                match existing {
                    Some(c) if !allowed(c.state, *state) => Err(Rejection::new(
                        IllegalTransition,
                        format!(
                            "call {call_id} of device {dev} cannot go from {} to {}",
                            c.state.name(),
                            state.name()
                        ),
                    )),
                    None if self.is_terminated(call_id) => Err(Rejection::new(
                        IllegalTransition,
                        format!(
                            "call {call_id} has ended; it cannot become {}",
                            state.name()
                        ),
                    )),
                    None if *state != CallState::Terminated
                        && self.call_count() >= lim.max_calls =>
                    {
                        Err(Rejection::new(
                            TooMany,
                            format!(
                                "call {call_id} would be the user's call number {}, at most {} at once",
                                self.call_count() + 1,
                                lim.max_calls
                            ),
                        ))
                    }
                    _ => Ok(()),
                }
            }
            EventKind::ManualStatus(_, msg) if msg.chars().count() > MAX_TEXT => {
                Err(Rejection::new(
                    Malformed,
                    format!(
                        "status message of {} characters, at most {MAX_TEXT}",
                        msg.chars().count()
                    ),
                ))
            }
            EventKind::ManualStatus(_, msg) if has_unsafe_chars(msg) => Err(Rejection::new(
                Malformed,
                format!(
                    "status message {} has control characters",
                    crate::text::shown(msg)
                ),
            )),
            EventKind::QueueLogin { queue, .. } if queue.is_empty() => {
                Err(Rejection::new(Malformed, "queue login names no queue"))
            }
            EventKind::QueueLogin { queue, .. } if !text_ok(queue) => {
                Err(bad_text("queue id", queue))
            }
            _ => Ok(()),
        }
    }

    /// Validates and applies one event. Returns whether the aggregate
    /// changed (and so the version moved up by one). A rejected event
    /// changes nothing.
    pub fn apply(&mut self, ev: &Event, now_ms: i64, lim: &Limits) -> Result<bool, Reject> {
        self.apply_explained(ev, now_ms, lim).map_err(|r| r.reason)
    }

    /// [`UserPresence::apply`], with a rejection's sentence naming the
    /// value at fault.
    pub fn apply_explained(
        &mut self,
        ev: &Event,
        now_ms: i64,
        lim: &Limits,
    ) -> Result<bool, Rejection> {
        self.validate(ev, lim)?;
        let mut remember: Vec<String> = Vec::new();
        let dev = self.devices.entry(ev.device.clone()).or_default();
        dev.last_sequence = ev.sequence;
        match &ev.kind {
            EventKind::Register { expires_s } => {
                dev.registered_until_ms = Some(now_ms + i64::from(*expires_s) * 1000)
            }
            EventKind::Unregister => {
                dev.registered_until_ms = None;
                remember.extend(std::mem::take(&mut dev.calls).into_keys());
            }
            EventKind::Call {
                call_id,
                state,
                direction,
                remote_number,
                remote_name,
            } => {
                if *state == CallState::Terminated {
                    dev.calls.remove(call_id);
                    remember.push(call_id.clone());
                } else {
                    let started = if ev.at_ms > 0 { ev.at_ms } else { now_ms };
                    let c = dev.calls.entry(call_id.clone()).or_insert_with(|| Call {
                        call_id: call_id.clone(),
                        device: ev.device.clone(),
                        state: *state,
                        direction: *direction,
                        remote_number: String::new(),
                        remote_name: String::new(),
                        started_at_ms: started,
                        updated_at_ms: now_ms,
                    });
                    c.state = *state;
                    c.updated_at_ms = now_ms;
                    if !remote_number.is_empty() {
                        c.remote_number = remote_number.clone();
                    }
                    if !remote_name.is_empty() {
                        c.remote_name = remote_name.clone();
                    }
                }
            }
            EventKind::DeviceDnd(on) => dev.dnd = *on,
            EventKind::ManualStatus(s, msg) => {
                self.user_status = *s;
                self.message = msg.clone();
            }
            EventKind::UserDnd(m) => self.dnd_mode = *m,
            EventKind::QueueLogin { queue, logged_in } => {
                if *logged_in {
                    self.queues.insert(queue.clone());
                } else {
                    self.queues.remove(queue);
                }
            }
        }
        for id in remember {
            self.remember_terminated(&id, now_ms, lim);
        }
        Ok(self.refresh(now_ms, lim))
    }

    /// Drops what timed out at `now_ms`. Returns whether the aggregate
    /// changed.
    pub fn expire(&mut self, now_ms: i64, lim: &Limits) -> bool {
        let mut forgotten = Vec::new();
        for dev in self.devices.values_mut() {
            if dev.registered_until_ms.is_some_and(|t| t <= now_ms) {
                dev.registered_until_ms = None;
                forgotten.extend(std::mem::take(&mut dev.calls).into_keys());
            }
            dev.calls.retain(|id, c| {
                let ringing = matches!(c.state, CallState::Trying | CallState::Early);
                let keep = if ringing {
                    now_ms - c.updated_at_ms < lim.ring_timeout_ms
                } else {
                    now_ms - c.updated_at_ms < lim.call_silence_ms
                };
                if !keep {
                    forgotten.push(id.clone());
                }
                keep
            });
        }
        for id in forgotten {
            self.remember_terminated(&id, now_ms, lim);
        }
        while self.terminated.front().is_some_and(|(_, t)| *t <= now_ms) {
            self.terminated.pop_front();
        }
        self.refresh(now_ms, lim)
    }

    /// Returns when [`UserPresence::expire`] next has something to do.
    pub fn next_deadline(&self, lim: &Limits) -> Option<i64> {
        let mut next: Option<i64> = None;
        let mut consider = |t: i64| next = Some(next.map_or(t, |n| n.min(t)));
        for dev in self.devices.values() {
            if let Some(t) = dev.registered_until_ms {
                consider(t);
            }
            for c in dev.calls.values() {
                let ringing = matches!(c.state, CallState::Trying | CallState::Early);
                consider(
                    c.updated_at_ms
                        + if ringing {
                            lim.ring_timeout_ms
                        } else {
                            lim.call_silence_ms
                        },
                );
            }
        }
        if let Some((_, t)) = self.terminated.front() {
            consider(*t);
        }
        next
    }

    fn compute(&self, version: u64, now_ms: i64, lim: &Limits) -> Aggregate {
        let mut calls: Vec<Call> = self
            .devices
            .values()
            .flat_map(|d| d.calls.values().cloned())
            .collect();
        calls.sort_by(|a, b| {
            b.started_at_ms
                .cmp(&a.started_at_ms)
                .then_with(|| a.call_id.cmp(&b.call_id))
        });
        let ringing_in = calls
            .iter()
            .any(|c| c.state == CallState::Early && c.direction == Direction::Inbound);
        let connected = calls.iter().any(|c| {
            c.state == CallState::Confirmed
                || (matches!(c.state, CallState::Trying | CallState::Early)
                    && c.direction == Direction::Outbound)
        });
        let held = calls.iter().any(|c| c.state == CallState::Held);
        let telephony = if ringing_in {
            Telephony::Ringing
        } else if connected {
            Telephony::Connected
        } else if held {
            Telephony::OnHold
        } else if calls.is_empty() {
            Telephony::NoCall
        } else {
            // Inbound "trying": treat as ringing.
            Telephony::Ringing
        };
        let registered = self
            .devices
            .values()
            .any(|d| d.registered_until_ms.is_some());
        let dnd = self.dnd_mode == DndMode::DoNotAcceptAny
            || self
                .devices
                .values()
                .any(|d| d.dnd && d.registered_until_ms.is_some());
        let presence = if self.user_status == UserStatus::Offline
            || (!registered && calls.is_empty())
        {
            PresenceStatus::Offline
        } else if telephony != Telephony::NoCall || dnd || self.user_status == UserStatus::Busy {
            PresenceStatus::Busy
        } else {
            PresenceStatus::Available
        };
        calls.truncate(lim.shown_calls);
        Aggregate {
            version,
            presence,
            telephony,
            dnd,
            dnd_mode: self.dnd_mode,
            user_status: self.user_status,
            message: self.message.clone(),
            calls,
            queues: self.queues.iter().cloned().collect(),
            updated_at_ms: now_ms,
        }
    }

    /// Recomputes the aggregate; bumps the version only if it changed.
    /// Moves the version up to at least `floor` (and by at least one),
    /// without changing the state: a new shard owner starts its term
    /// above every version an earlier owner may have published.
    pub fn raise_version(&mut self, floor: u64) {
        self.current.version = (self.current.version + 1).max(floor);
    }

    fn refresh(&mut self, now_ms: i64, lim: &Limits) -> bool {
        // Computed at the current version and time: equal exactly when
        // nothing changed.
        let next = self.compute(self.current.version, self.current.updated_at_ms, lim);
        if next == self.current {
            return false;
        }
        self.current = Aggregate {
            version: self.current.version + 1,
            updated_at_ms: now_ms,
            ..next
        };
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn test_snapshot_round_trip_and_raised_version() {
        let lim = Limits::default();
        let mut u = UserPresence::new(0);
        let reg = Event {
            device: "d1".into(),
            sequence: 1,
            at_ms: 0,
            kind: EventKind::Register { expires_s: 60 },
        };
        assert_eq!(u.apply(&reg, 1_000, &lim), Ok(true));
        let ring = call("d1", 2, "c1", CallState::Early, Direction::Inbound);
        assert_eq!(u.apply(&ring, 1_000, &lim), Ok(true));
        let json = serde_json::to_vec(&u).unwrap();
        let mut back: UserPresence = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, u, "a snapshot restores the whole state");
        assert_eq!(
            back.apply(&ring, 1_000, &lim),
            Err(Reject::StaleSequence),
            "device sequences survive a snapshot"
        );
        let v = back.aggregate().version;
        back.raise_version(5 << 32);
        assert_eq!(back.aggregate().version, 5 << 32);
        back.raise_version(1);
        assert_eq!(back.aggregate().version, (5 << 32) + 1, "never down");
        assert!(v < 5 << 32);
        assert_eq!(back.aggregate().telephony, Telephony::Ringing);
    }

    fn call(dev: &str, seq: u64, id: &str, state: CallState, dir: Direction) -> Event {
        Event {
            device: dev.into(),
            sequence: seq,
            at_ms: 0,
            kind: EventKind::Call {
                call_id: id.into(),
                state,
                direction: dir,
                remote_number: "+15550100".into(),
                remote_name: "Caller".into(),
            },
        }
    }

    fn ev(dev: &str, seq: u64, kind: EventKind) -> Event {
        Event {
            device: dev.into(),
            sequence: seq,
            at_ms: 0,
            kind,
        }
    }

    #[test]
    fn test_rejections_name_the_value_at_fault() {
        use CallState::*;
        use Direction::Inbound;
        let lim = Limits {
            max_devices: 2,
            max_calls: 1,
            ..Limits::default()
        };
        let mut u = UserPresence::new(0);
        let detail = |u: &mut UserPresence, e: &Event| {
            let r = u.apply_explained(e, 1_000, &lim).unwrap_err();
            assert_eq!(u.apply(e, 1_000, &lim), Err(r.reason), "{e:?}");
            (r.reason, r.detail)
        };
        assert_eq!(
            u.apply(&call("p1", 5, "c1", Confirmed, Inbound), 1_000, &lim),
            Ok(true)
        );
        let cases = [
            (
                call("p1", 6, "c1", Early, Inbound),
                Reject::IllegalTransition,
                "call c1 of device p1 cannot go from confirmed to early",
            ),
            (
                ev("p1", 5, EventKind::Unregister),
                Reject::StaleSequence,
                "sequence 5 of device p1 is not above its last applied one, 5",
            ),
            (
                call("p1", 7, "c2", Early, Inbound),
                Reject::TooMany,
                "call c2 would be the user's call number 2, at most 1 at once",
            ),
            (
                ev("p1", 0, EventKind::Unregister),
                Reject::Malformed,
                "sequence 0 of device p1: sequences start at 1",
            ),
            (
                ev("p1", 8, EventKind::Register { expires_s: 0 }),
                Reject::Malformed,
                "registration of device p1 expires in 0 s, allowed 1 to 86400",
            ),
            (
                ev("", 1, EventKind::Unregister),
                Reject::Malformed,
                "the device id is empty",
            ),
        ];
        for (e, reason, text) in cases {
            assert_eq!(detail(&mut u, &e), (reason, text.to_owned()));
        }
        assert_eq!(
            u.apply(&call("p1", 9, "c1", Terminated, Inbound), 1_000, &lim),
            Ok(true)
        );
        assert_eq!(
            detail(&mut u, &call("p1", 10, "c1", Confirmed, Inbound)),
            (
                Reject::IllegalTransition,
                "call c1 has ended; it cannot become confirmed".to_owned()
            )
        );
        assert_eq!(
            u.apply(&ev("p2", 1, EventKind::Unregister), 1_000, &lim),
            Ok(false)
        );
        assert_eq!(
            detail(&mut u, &ev("p3", 1, EventKind::Unregister)),
            (
                Reject::TooMany,
                "device p3 would be the user's device number 3, at most 2 are kept".to_owned()
            )
        );
        let long = "x".repeat(MAX_TEXT + 1);
        let (reason, text) = detail(&mut u, &ev(&long, 1, EventKind::Unregister));
        assert_eq!(reason, Reject::Malformed);
        assert!(
            text.starts_with("device id \"xxx")
                && text.ends_with("longer than 128 bytes or has control characters"),
            "{text}"
        );
    }

    #[test]
    fn test_a_call_lifecycle() {
        let lim = Limits::default();
        let mut u = UserPresence::new(0);
        assert_eq!(u.aggregate().presence, PresenceStatus::Offline);
        assert_eq!(
            u.apply(
                &ev("p1", 1, EventKind::Register { expires_s: 3600 }),
                1_000,
                &lim
            ),
            Ok(true)
        );
        assert_eq!(
            (u.aggregate().presence, u.aggregate().version),
            (PresenceStatus::Available, 1)
        );
        u.apply(
            &call("p1", 2, "c1", CallState::Early, Direction::Inbound),
            2_000,
            &lim,
        )
        .unwrap();
        assert_eq!(u.aggregate().telephony, Telephony::Ringing);
        assert_eq!(u.aggregate().calls[0].remote_number, "+15550100");
        u.apply(
            &call("p1", 3, "c1", CallState::Confirmed, Direction::Inbound),
            3_000,
            &lim,
        )
        .unwrap();
        assert_eq!(
            (u.aggregate().telephony, u.aggregate().presence),
            (Telephony::Connected, PresenceStatus::Busy)
        );
        u.apply(
            &call("p1", 4, "c1", CallState::Held, Direction::Inbound),
            4_000,
            &lim,
        )
        .unwrap();
        assert_eq!(u.aggregate().telephony, Telephony::OnHold);
        u.apply(
            &call("p1", 5, "c1", CallState::Terminated, Direction::Inbound),
            5_000,
            &lim,
        )
        .unwrap();
        assert_eq!(
            (u.aggregate().telephony, u.aggregate().presence),
            (Telephony::NoCall, PresenceStatus::Available)
        );
        assert_eq!(u.aggregate().version, 5);
        // A late "early" for the same call is rejected: no eternal blink.
        assert_eq!(
            u.apply(
                &call("p1", 6, "c1", CallState::Early, Direction::Inbound),
                6_000,
                &lim
            ),
            Err(Reject::IllegalTransition)
        );
        assert_eq!(u.aggregate().telephony, Telephony::NoCall);
    }

    #[test]
    fn test_stale_duplicate_and_illegal_events_change_nothing() {
        let lim = Limits::default();
        let mut u = UserPresence::new(10);
        u.apply(&ev("p1", 5, EventKind::Register { expires_s: 60 }), 0, &lim)
            .unwrap();
        u.apply(
            &call("p1", 6, "c1", CallState::Confirmed, Direction::Outbound),
            0,
            &lim,
        )
        .unwrap();
        let before = u.clone();
        for (e, why) in [
            (
                ev("p1", 6, EventKind::DeviceDnd(true)),
                Reject::StaleSequence,
            ),
            (
                ev("p1", 3, EventKind::DeviceDnd(true)),
                Reject::StaleSequence,
            ),
            (
                call("p1", 7, "c1", CallState::Early, Direction::Outbound),
                Reject::IllegalTransition,
            ),
            (
                call("p1", 7, "c1", CallState::Trying, Direction::Outbound),
                Reject::IllegalTransition,
            ),
            (
                ev("p1", 7, EventKind::Register { expires_s: 0 }),
                Reject::Malformed,
            ),
            (ev("", 7, EventKind::Unregister), Reject::Malformed),
            (ev("p1", 0, EventKind::Unregister), Reject::Malformed),
            (
                call("p1", 7, "", CallState::Early, Direction::Inbound),
                Reject::Malformed,
            ),
        ] {
            assert_eq!(u.apply(&e, 0, &lim), Err(why), "{e:?}");
            assert_eq!(u, before, "rejected {e:?} changed the state");
        }
        // Sequences are per device.
        assert!(
            u.apply(&ev("p2", 1, EventKind::DeviceDnd(true)), 0, &lim)
                .is_ok()
        );
    }

    #[test]
    fn test_expiry() {
        let lim = Limits {
            ring_timeout_ms: 30_000,
            ..Limits::default()
        };
        let mut u = UserPresence::new(0);
        u.apply(&ev("p1", 1, EventKind::Register { expires_s: 60 }), 0, &lim)
            .unwrap();
        u.apply(
            &call("p1", 2, "c1", CallState::Early, Direction::Inbound),
            0,
            &lim,
        )
        .unwrap();
        assert_eq!(u.next_deadline(&lim), Some(30_000));
        assert!(!u.expire(29_999, &lim));
        assert!(u.expire(30_000, &lim), "ringing call without news expires");
        assert_eq!(u.aggregate().telephony, Telephony::NoCall);
        assert_eq!(
            u.apply(
                &call("p1", 3, "c1", CallState::Early, Direction::Inbound),
                31_000,
                &lim
            ),
            Err(Reject::IllegalTransition)
        );
        assert!(u.expire(60_000, &lim), "registration expires");
        assert_eq!(u.aggregate().presence, PresenceStatus::Offline);
    }

    #[test]
    fn test_aggregation_rules() {
        let lim = Limits::default();
        let mut u = UserPresence::new(0);
        u.apply(
            &ev("p1", 1, EventKind::Register { expires_s: 600 }),
            0,
            &lim,
        )
        .unwrap();
        u.apply(
            &ev("portal", 1, EventKind::UserDnd(DndMode::DoNotAcceptAny)),
            0,
            &lim,
        )
        .unwrap();
        assert!(u.aggregate().dnd);
        assert_eq!(u.aggregate().presence, PresenceStatus::Busy);
        u.apply(
            &ev("portal", 2, EventKind::UserDnd(DndMode::TakeAllCalls)),
            0,
            &lim,
        )
        .unwrap();
        u.apply(
            &ev(
                "portal",
                3,
                EventKind::ManualStatus(UserStatus::Offline, "gone fishing".into()),
            ),
            0,
            &lim,
        )
        .unwrap();
        assert_eq!(
            (u.aggregate().presence, u.aggregate().message.as_str()),
            (PresenceStatus::Offline, "gone fishing")
        );
        u.apply(
            &ev(
                "portal",
                4,
                EventKind::QueueLogin {
                    queue: "sales".into(),
                    logged_in: true,
                },
            ),
            0,
            &lim,
        )
        .unwrap();
        assert_eq!(u.aggregate().queues, vec!["sales".to_string()]);
        // At most 7 calls, newest first.
        for i in 0..9u64 {
            let mut e = call(
                "p1",
                10 + i,
                &format!("c{i}"),
                CallState::Confirmed,
                Direction::Outbound,
            );
            e.at_ms = 1_000 + i as i64;
            u.apply(&e, 0, &lim).unwrap();
        }
        let calls = &u.aggregate().calls;
        assert_eq!(calls.len(), 7);
        assert_eq!(calls[0].call_id, "c8");
        // A no-op event does not bump the version.
        let v = u.aggregate().version;
        assert_eq!(
            u.apply(
                &ev(
                    "portal",
                    5,
                    EventKind::QueueLogin {
                        queue: "sales".into(),
                        logged_in: true
                    }
                ),
                0,
                &lim
            ),
            Ok(false)
        );
        assert_eq!(u.aggregate().version, v);
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_event(r: &mut Rng, seqs: &mut [u64; 3]) -> Event {
        let d = r.below(3) as usize;
        // Sometimes reuse or go back in sequence (duplicates, reordering).
        let seq = match r.below(10) {
            0 => seqs[d],
            1 => seqs[d].saturating_sub(r.below(3)),
            _ => {
                seqs[d] += 1 + r.below(2); // gaps are lost events
                seqs[d]
            }
        };
        let states = [
            CallState::Trying,
            CallState::Early,
            CallState::Confirmed,
            CallState::Held,
            CallState::Terminated,
        ];
        let kind = match r.below(8) {
            0 => EventKind::Register {
                expires_s: 1 + r.below(120) as u32,
            },
            1 => EventKind::Unregister,
            2 => EventKind::DeviceDnd(r.below(2) == 0),
            3 => EventKind::ManualStatus(
                [
                    UserStatus::Available,
                    UserStatus::Busy,
                    UserStatus::Away,
                    UserStatus::Offline,
                ][r.below(4) as usize],
                String::new(),
            ),
            _ => EventKind::Call {
                call_id: format!("c{}", r.below(6)),
                state: states[r.below(5) as usize],
                direction: if r.below(2) == 0 {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                },
                remote_number: format!("{}", r.below(100)),
                remote_name: String::new(),
            },
        };
        Event {
            device: format!("d{d}"),
            sequence: seq,
            at_ms: 0,
            kind,
        }
    }

    #[test]
    fn test_property_random_orders_duplicates_and_losses() {
        let lim = Limits {
            ring_timeout_ms: 20_000,
            call_silence_ms: 60_000,
            terminated_memory_ms: 30_000,
            ..Limits::default()
        };
        for seed in 1..=200u64 {
            let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut u = UserPresence::new(seed);
            let mut seqs = [0u64; 3];
            let mut now = 0i64;
            let mut last_version = u.aggregate().version;
            let mut terminated_at: Vec<(String, String, i64)> = Vec::new();
            for _ in 0..400 {
                now += r.below(5_000) as i64;
                let before = u.clone();
                if r.below(6) == 0 {
                    let changed = u.expire(now, &lim);
                    assert_eq!(
                        changed,
                        u.aggregate() != before.aggregate(),
                        "expire reports changes truthfully"
                    );
                } else {
                    let e = random_event(&mut r, &mut seqs);
                    match u.apply(&e, now, &lim) {
                        Ok(changed) => {
                            assert_eq!(
                                changed,
                                u.aggregate().version != before.aggregate().version
                            );
                            if let EventKind::Call {
                                call_id,
                                state: CallState::Terminated,
                                ..
                            } = &e.kind
                            {
                                terminated_at.push((e.device.clone(), call_id.clone(), now));
                            }
                        }
                        Err(_) => assert_eq!(u, before, "a rejected event changed the state"),
                    }
                }
                let a = u.aggregate();
                // Versions never decrease; they move by one exactly when the
                // aggregate changes (so a watcher never sees a duplicate).
                assert!(a.version >= last_version);
                if a.version == last_version {
                    assert_eq!(
                        Aggregate {
                            updated_at_ms: 0,
                            ..a.clone()
                        },
                        Aggregate {
                            updated_at_ms: 0,
                            ..before.aggregate().clone()
                        }
                    );
                } else {
                    assert_eq!(a.version, last_version + 1);
                }
                last_version = a.version;
                // Nothing outlives its expiry once expire has run.
                let mut probe = u.clone();
                probe.expire(now, &lim);
                for c in &probe.aggregate().calls {
                    let ringing = matches!(c.state, CallState::Trying | CallState::Early);
                    let ttl = if ringing {
                        lim.ring_timeout_ms
                    } else {
                        lim.call_silence_ms
                    };
                    assert!(
                        now - c.updated_at_ms < ttl,
                        "call {c:?} outlived its expiry at {now}"
                    );
                }
                // A call terminated recently is never shown as ringing
                // again on the device that ended it.
                for (dev, id, t) in &terminated_at {
                    if now - t < lim.terminated_memory_ms {
                        assert!(
                            !u.aggregate().calls.iter().any(|c| &c.call_id == id
                                && &c.device == dev
                                && c.updated_at_ms > *t),
                            "terminated call {id} on {dev} came back"
                        );
                    }
                }
                // Deadlines are exact: nothing expires before next_deadline.
                if let Some(deadline) = u.next_deadline(&lim) {
                    let mut early = u.clone();
                    if deadline > now {
                        assert!(
                            !early.expire(deadline - 1, &lim),
                            "something expired before the deadline"
                        );
                    }
                }
                assert!(a.calls.len() <= lim.shown_calls);
            }
        }
    }

    // ---- boundaries: each limit at, just below and just above it -------

    fn reject(u: &mut UserPresence, e: &Event, lim: &Limits) -> Reject {
        match u.apply(e, 1_000, lim) {
            Err(r) => r,
            Ok(changed) => panic!("{e:?} was accepted (changed: {changed})"),
        }
    }

    fn call_with(dev: &str, seq: u64, id: &str, number: &str, name: &str) -> Event {
        Event {
            device: dev.into(),
            sequence: seq,
            at_ms: 0,
            kind: EventKind::Call {
                call_id: id.into(),
                state: CallState::Early,
                direction: Direction::Inbound,
                remote_number: number.into(),
                remote_name: name.into(),
            },
        }
    }

    #[test]
    fn test_text_limits_hold_at_their_boundary() {
        let lim = Limits::default();
        let at = "x".repeat(MAX_TEXT);
        let over = "x".repeat(MAX_TEXT + 1);
        let mut u = UserPresence::new(0);
        // Device ids.
        assert!(
            u.apply(&ev(&at, 1, EventKind::DeviceDnd(true)), 0, &lim)
                .is_ok()
        );
        assert_eq!(
            reject(&mut u, &ev(&over, 1, EventKind::DeviceDnd(true)), &lim),
            Reject::Malformed
        );
        // Call ids, remote numbers and names.
        let mut seq = 1;
        let mut next = || {
            seq += 1;
            seq
        };
        assert!(
            u.apply(&call_with("d", next(), &at, "1", "n"), 0, &lim)
                .is_ok()
        );
        assert!(
            u.apply(&call_with("d", next(), "c2", &at, &at), 0, &lim)
                .is_ok()
        );
        for e in [
            call_with("d", next(), &over, "1", "n"),
            call_with("d", next(), "c3", &over, "n"),
            call_with("d", next(), "c4", "1", &over),
        ] {
            assert_eq!(reject(&mut u, &e, &lim), Reject::Malformed, "{e:?}");
        }
        // Queue ids.
        let q = |queue: &str, seq| {
            ev(
                "d",
                seq,
                EventKind::QueueLogin {
                    queue: queue.into(),
                    logged_in: true,
                },
            )
        };
        assert!(u.apply(&q(&at, next()), 0, &lim).is_ok());
        assert_eq!(reject(&mut u, &q(&over, next()), &lim), Reject::Malformed);
        assert_eq!(reject(&mut u, &q("", next()), &lim), Reject::Malformed);
        // Status messages count characters: 128 two-byte ones pass.
        let wide: String = "é".repeat(MAX_TEXT);
        let status = |m: String, seq| ev("d", seq, EventKind::ManualStatus(UserStatus::Away, m));
        assert!(u.apply(&status(wide.clone(), next()), 0, &lim).is_ok());
        assert_eq!(u.aggregate().message, wide);
        assert_eq!(
            reject(&mut u, &status(format!("{wide}é"), next()), &lim),
            Reject::Malformed
        );
    }

    #[test]
    fn test_sequences_and_registration_lifetimes_at_their_boundary() {
        let lim = Limits::default();
        let mut u = UserPresence::new(0);
        let reg = |seq, expires_s| ev("d", seq, EventKind::Register { expires_s });
        assert_eq!(reject(&mut u, &reg(0, 60), &lim), Reject::Malformed);
        assert!(u.apply(&reg(5, 1), 0, &lim).is_ok());
        assert_eq!(reject(&mut u, &reg(5, 60), &lim), Reject::StaleSequence);
        assert_eq!(reject(&mut u, &reg(4, 60), &lim), Reject::StaleSequence);
        assert!(u.apply(&reg(6, 86_400), 0, &lim).is_ok());
        assert_eq!(reject(&mut u, &reg(7, 0), &lim), Reject::Malformed);
        assert_eq!(reject(&mut u, &reg(8, 86_401), &lim), Reject::Malformed);
        // A rejected event does not consume its sequence.
        assert!(u.apply(&reg(7, 60), 0, &lim).is_ok());
    }

    #[test]
    fn test_device_and_call_counts_at_their_boundary() {
        use CallState::*;
        use Direction::Inbound;
        let lim = Limits {
            max_devices: 2,
            max_calls: 2,
            ..Limits::default()
        };
        let mut u = UserPresence::new(0);
        let dnd = |d: &str, seq| ev(d, seq, EventKind::DeviceDnd(true));
        assert!(u.apply(&dnd("a", 1), 0, &lim).is_ok());
        assert!(u.apply(&dnd("b", 1), 0, &lim).is_ok());
        assert_eq!(reject(&mut u, &dnd("c", 1), &lim), Reject::TooMany);
        assert!(
            u.apply(&dnd("a", 2), 0, &lim).is_ok(),
            "a known device at the limit"
        );
        assert!(
            u.apply(&call("a", 3, "c1", Early, Inbound), 0, &lim)
                .is_ok()
        );
        assert!(
            u.apply(&call("b", 2, "c2", Early, Inbound), 0, &lim)
                .is_ok()
        );
        assert_eq!(
            reject(&mut u, &call("a", 4, "c3", Early, Inbound), &lim),
            Reject::TooMany
        );
        // At the limit, known calls move on, and an unknown call may end.
        assert!(
            u.apply(&call("a", 5, "c1", Confirmed, Inbound), 0, &lim)
                .is_ok()
        );
        assert!(
            u.apply(&call("a", 6, "c9", Terminated, Inbound), 0, &lim)
                .is_ok()
        );
        // One ends: room for another.
        assert!(
            u.apply(&call("b", 3, "c2", Terminated, Inbound), 0, &lim)
                .is_ok()
        );
        assert!(
            u.apply(&call("a", 7, "c3", Early, Inbound), 0, &lim)
                .is_ok()
        );
    }

    #[test]
    fn test_every_call_state_transition() {
        use CallState::*;
        let states = [Trying, Early, Confirmed, Held, Terminated];
        for from in states {
            for to in states {
                let expect = match (from, to) {
                    (_, Terminated) => true,
                    (Terminated, _) => false,
                    (Trying, Trying | Early | Confirmed) => true,
                    (Early, Early | Confirmed) => true,
                    (Confirmed | Held, Confirmed | Held) => true,
                    _ => false,
                };
                assert_eq!(allowed(from, to), expect, "{from:?} -> {to:?}");
                if from == Terminated {
                    continue;
                }
                // Through the state machine too.
                let lim = Limits::default();
                let mut u = UserPresence::new(0);
                u.apply(&call("d", 1, "c", from, Direction::Outbound), 0, &lim)
                    .unwrap();
                let r = u.apply(&call("d", 2, "c", to, Direction::Outbound), 0, &lim);
                assert_eq!(r.is_ok(), expect, "{from:?} -> {to:?}: {r:?}");
            }
        }
    }

    #[test]
    fn test_terminated_call_memory_at_its_boundary() {
        use CallState::*;
        use Direction::Inbound;
        let lim = Limits {
            terminated_max: 2,
            terminated_memory_ms: 1_000,
            ..Limits::default()
        };
        let mut u = UserPresence::new(0);
        let mut seq = 0;
        let mut next = || {
            seq += 1;
            seq
        };
        for id in ["c1", "c2", "c3"] {
            u.apply(&call("d", next(), id, Early, Inbound), 0, &lim)
                .unwrap();
            u.apply(&call("d", next(), id, Terminated, Inbound), 0, &lim)
                .unwrap();
        }
        // Only the two newest are remembered: c1 may come back.
        assert_eq!(
            reject(&mut u, &call("d", next(), "c2", Early, Inbound), &lim),
            Reject::IllegalTransition
        );
        assert_eq!(
            reject(&mut u, &call("d", next(), "c3", Early, Inbound), &lim),
            Reject::IllegalTransition
        );
        assert!(
            u.apply(&call("d", next(), "c1", Early, Inbound), 0, &lim)
                .is_ok()
        );
        // Terminated at 0 with 1000 ms of memory: remembered at 999,
        // forgotten at 1000.
        assert!(!u.expire(999, &lim), "nothing due at 999");
        assert_eq!(
            reject(&mut u, &call("d", next(), "c2", Early, Inbound), &lim),
            Reject::IllegalTransition
        );
        assert_eq!(u.next_deadline(&lim), Some(1_000));
        u.expire(1_000, &lim);
        assert!(
            u.apply(&call("d", next(), "c2", Early, Inbound), 1_000, &lim)
                .is_ok()
        );
    }

    #[test]
    fn test_timeouts_at_their_boundary() {
        use CallState::*;
        use Direction::{Inbound, Outbound};
        let lim = Limits {
            ring_timeout_ms: 100,
            call_silence_ms: 1_000,
            terminated_memory_ms: 10,
            ..Limits::default()
        };
        let mut u = UserPresence::new(0);
        u.apply(&ev("d", 1, EventKind::Register { expires_s: 5 }), 0, &lim)
            .unwrap();
        u.apply(&call("d", 2, "ring", Early, Inbound), 0, &lim)
            .unwrap();
        u.apply(&call("d", 3, "talk", Confirmed, Outbound), 0, &lim)
            .unwrap();
        u.apply(&call("d", 4, "try", Trying, Outbound), 50, &lim)
            .unwrap();
        assert_eq!(u.next_deadline(&lim), Some(100), "the ringing call first");
        assert!(!u.expire(99, &lim), "nothing due at 99");
        assert!(u.expire(100, &lim), "the ringing call goes at 100");
        assert_eq!(
            u.next_deadline(&lim),
            Some(110),
            "its memory ends at 110 (trying: 150)"
        );
        u.expire(149, &lim);
        assert_eq!(u.aggregate().calls.len(), 2, "trying kept at 149");
        u.expire(150, &lim);
        assert_eq!(u.aggregate().calls.len(), 1, "trying dropped at 150");
        assert!(!u.expire(999, &lim), "talking kept at 999");
        assert!(u.expire(1_000, &lim), "silent call dropped at 1000");
        assert_eq!(u.aggregate().telephony, Telephony::NoCall);
        assert_eq!(u.next_deadline(&lim), Some(1_010));
        u.expire(1_010, &lim);
        assert_eq!(u.next_deadline(&lim), Some(5_000), "the registration");
        assert!(!u.expire(4_999, &lim));
        assert_eq!(u.aggregate().presence, PresenceStatus::Available);
        assert!(u.expire(5_000, &lim));
        assert_eq!(u.aggregate().presence, PresenceStatus::Offline);
        assert_eq!(u.next_deadline(&lim), None);
    }

    #[test]
    fn test_aggregate_shows_the_newest_calls_and_maps_each_state() {
        use CallState::*;
        use Direction::{Inbound, Outbound};
        let lim = Limits {
            shown_calls: 2,
            ..Limits::default()
        };
        let at = |seq, id: &str, started, state, dir| Event {
            at_ms: started,
            ..call("d", seq, id, state, dir)
        };
        let mut u = UserPresence::new(0);
        u.apply(&at(1, "old", 10, Held, Inbound), 0, &lim).unwrap();
        assert_eq!(u.aggregate().telephony, Telephony::OnHold);
        assert_eq!(
            u.aggregate().presence,
            PresenceStatus::Busy,
            "a call without registration"
        );
        u.apply(&at(2, "b", 30, Trying, Inbound), 0, &lim).unwrap();
        assert_eq!(
            u.aggregate().telephony,
            Telephony::OnHold,
            "held beats inbound trying"
        );
        u.apply(&at(3, "a", 30, Trying, Outbound), 0, &lim).unwrap();
        assert_eq!(
            u.aggregate().telephony,
            Telephony::Connected,
            "placing a call"
        );
        let shown: Vec<&str> = u
            .aggregate()
            .calls
            .iter()
            .map(|c| c.call_id.as_str())
            .collect();
        assert_eq!(
            shown,
            ["a", "b"],
            "newest first, ties by id, at most shown_calls"
        );
        u.apply(&at(4, "b", 30, Early, Inbound), 0, &lim).unwrap();
        assert_eq!(
            u.aggregate().telephony,
            Telephony::Ringing,
            "ringing beats connected"
        );
        for (seq, id) in [(5, "a"), (6, "b"), (7, "old")] {
            u.apply(&at(seq, id, 0, Terminated, Inbound), 0, &lim)
                .unwrap();
        }
        u.apply(&at(8, "in", 40, Trying, Inbound), 0, &lim).unwrap();
        assert_eq!(
            u.aggregate().telephony,
            Telephony::Ringing,
            "inbound trying alone rings"
        );
        // Manual status and DND drive presence.
        let mut v = UserPresence::new(0);
        v.apply(&ev("d", 1, EventKind::Register { expires_s: 60 }), 0, &lim)
            .unwrap();
        assert_eq!(v.aggregate().presence, PresenceStatus::Available);
        v.apply(
            &ev(
                "d",
                2,
                EventKind::ManualStatus(UserStatus::Busy, String::new()),
            ),
            0,
            &lim,
        )
        .unwrap();
        assert_eq!(v.aggregate().presence, PresenceStatus::Busy);
        v.apply(
            &ev(
                "d",
                3,
                EventKind::ManualStatus(UserStatus::Offline, String::new()),
            ),
            0,
            &lim,
        )
        .unwrap();
        assert_eq!(v.aggregate().presence, PresenceStatus::Offline);
        v.apply(
            &ev(
                "d",
                4,
                EventKind::ManualStatus(UserStatus::Away, String::new()),
            ),
            0,
            &lim,
        )
        .unwrap();
        assert_eq!(
            v.aggregate().presence,
            PresenceStatus::Available,
            "away is still reachable"
        );
        v.apply(
            &ev("d", 5, EventKind::UserDnd(DndMode::DoNotAcceptAny)),
            0,
            &lim,
        )
        .unwrap();
        assert!(v.aggregate().dnd);
        assert_eq!(v.aggregate().presence, PresenceStatus::Busy);
        v.apply(
            &ev("d", 6, EventKind::UserDnd(DndMode::DepartmentCallsOnly)),
            0,
            &lim,
        )
        .unwrap();
        assert!(!v.aggregate().dnd);
        // Device DND counts only on a registered device.
        v.apply(&ev("e", 1, EventKind::DeviceDnd(true)), 0, &lim)
            .unwrap();
        assert!(!v.aggregate().dnd, "unregistered device");
        v.apply(&ev("d", 7, EventKind::DeviceDnd(true)), 0, &lim)
            .unwrap();
        assert!(v.aggregate().dnd);
        v.apply(&ev("d", 8, EventKind::Unregister), 0, &lim)
            .unwrap();
        assert!(!v.aggregate().dnd);
        assert_eq!(v.aggregate().presence, PresenceStatus::Offline);
        // Queues.
        let q = |seq, on| {
            ev(
                "d",
                seq,
                EventKind::QueueLogin {
                    queue: "sales".into(),
                    logged_in: on,
                },
            )
        };
        v.apply(&q(9, true), 0, &lim).unwrap();
        assert_eq!(v.aggregate().queues, ["sales"]);
        v.apply(&q(10, false), 0, &lim).unwrap();
        assert!(v.aggregate().queues.is_empty());
    }

    #[test]
    fn test_call_details_keep_what_later_events_leave_out() {
        let lim = Limits::default();
        let mut u = UserPresence::new(0);
        // No source time: the call starts now.
        u.apply(&call_with("d", 1, "c", "+1555", "Ann"), 500, &lim)
            .unwrap();
        let c = &u.aggregate().calls[0];
        assert_eq!((c.started_at_ms, c.updated_at_ms), (500, 500));
        // A later event without number or name keeps them; one with
        // them replaces them.
        u.apply(&call_with("d", 2, "c", "", ""), 600, &lim).unwrap();
        let c = &u.aggregate().calls[0];
        assert_eq!(
            (c.remote_number.as_str(), c.remote_name.as_str()),
            ("+1555", "Ann")
        );
        assert_eq!((c.started_at_ms, c.updated_at_ms), (500, 600));
        u.apply(&call_with("d", 3, "c", "+1666", "Bob"), 700, &lim)
            .unwrap();
        let c = &u.aggregate().calls[0];
        assert_eq!(
            (c.remote_number.as_str(), c.remote_name.as_str()),
            ("+1666", "Bob")
        );
        // A source time is kept as the start.
        let timed = Event {
            at_ms: 42,
            ..call_with("d", 4, "t", "1", "n")
        };
        u.apply(&timed, 800, &lim).unwrap();
        let t = u
            .aggregate()
            .calls
            .iter()
            .find(|c| c.call_id == "t")
            .unwrap();
        assert_eq!(t.started_at_ms, 42);
    }

    #[test]
    fn test_a_rejection_displays_its_sentence() {
        let mut u = UserPresence::new(0);
        let r = u
            .apply_explained(&ev("d", 0, EventKind::Unregister), 0, &Limits::default())
            .unwrap_err();
        assert_eq!(r.reason, Reject::Malformed);
        assert_eq!(r.to_string(), r.detail);
        assert!(r.to_string().contains("sequence 0 of device d"), "{r}");
    }

    #[test]
    fn test_versions_move_by_one_per_change_and_raise_to_a_floor() {
        let lim = Limits::default();
        let mut u = UserPresence::new(7);
        assert_eq!(u.aggregate().version, 7);
        assert!(
            u.apply(&ev("d", 1, EventKind::DeviceDnd(false)), 0, &lim)
                .is_ok_and(|c| !c)
        );
        assert_eq!(u.aggregate().version, 7, "no change, no version");
        assert!(
            u.apply(&ev("d", 2, EventKind::Register { expires_s: 60 }), 5, &lim)
                .unwrap()
        );
        assert_eq!((u.aggregate().version, u.aggregate().updated_at_ms), (8, 5));
        u.raise_version(3);
        assert_eq!(u.aggregate().version, 9, "at least one up");
        u.raise_version(100);
        assert_eq!(u.aggregate().version, 100);
    }
}
