//! Conversions between the wire (`presence.v1`) and the state machine
//! (`presence_core::presence`).

use presence_core::presence::{
    Aggregate, Call, CallState, Direction, DndMode, Event, EventKind, PresenceStatus, Reject,
    Telephony, UserStatus,
};
use presence_proto::v1::{self, device_event::Kind as K};

fn call_state(v: i32) -> Result<CallState, Reject> {
    match v1::CallState::try_from(v) {
        Ok(v1::CallState::Trying) => Ok(CallState::Trying),
        Ok(v1::CallState::Early) => Ok(CallState::Early),
        Ok(v1::CallState::Confirmed) => Ok(CallState::Confirmed),
        Ok(v1::CallState::Held) => Ok(CallState::Held),
        Ok(v1::CallState::Terminated) => Ok(CallState::Terminated),
        _ => Err(Reject::Malformed),
    }
}

fn call_state_to(s: CallState) -> v1::CallState {
    match s {
        CallState::Trying => v1::CallState::Trying,
        CallState::Early => v1::CallState::Early,
        CallState::Confirmed => v1::CallState::Confirmed,
        CallState::Held => v1::CallState::Held,
        CallState::Terminated => v1::CallState::Terminated,
    }
}

fn user_status(v: i32) -> Result<UserStatus, Reject> {
    match v1::UserStatus::try_from(v) {
        Ok(v1::UserStatus::Available) => Ok(UserStatus::Available),
        Ok(v1::UserStatus::Busy) => Ok(UserStatus::Busy),
        Ok(v1::UserStatus::Away) => Ok(UserStatus::Away),
        Ok(v1::UserStatus::Offline) => Ok(UserStatus::Offline),
        _ => Err(Reject::Malformed),
    }
}

fn dnd_mode(v: i32) -> Result<DndMode, Reject> {
    match v1::DndMode::try_from(v) {
        Ok(v1::DndMode::TakeAllCalls) => Ok(DndMode::TakeAllCalls),
        Ok(v1::DndMode::DoNotAcceptAny) => Ok(DndMode::DoNotAcceptAny),
        Ok(v1::DndMode::DepartmentCallsOnly) => Ok(DndMode::DepartmentCallsOnly),
        _ => Err(Reject::Malformed),
    }
}

fn dnd_mode_to(m: DndMode) -> v1::DndMode {
    match m {
        DndMode::TakeAllCalls => v1::DndMode::TakeAllCalls,
        DndMode::DoNotAcceptAny => v1::DndMode::DoNotAcceptAny,
        DndMode::DepartmentCallsOnly => v1::DndMode::DepartmentCallsOnly,
    }
}

/// Converts a wire event into a state-machine event.
pub fn event_from_proto(e: &v1::DeviceEvent) -> Result<Event, Reject> {
    let kind = match e.kind.as_ref().ok_or(Reject::Malformed)? {
        K::Registration(r) => EventKind::Register {
            expires_s: r.expires_seconds,
        },
        K::Unregistration(_) => EventKind::Unregister,
        K::Call(c) => EventKind::Call {
            call_id: c.call_id.clone(),
            state: call_state(c.state)?,
            direction: match v1::Direction::try_from(c.direction) {
                Ok(v1::Direction::Inbound) => Direction::Inbound,
                Ok(v1::Direction::Outbound) => Direction::Outbound,
                _ => return Err(Reject::Malformed),
            },
            remote_number: c.remote_number.clone(),
            remote_name: c.remote_name.clone(),
        },
        K::DeviceDnd(d) => EventKind::DeviceDnd(d.enabled),
        K::ManualStatus(m) => EventKind::ManualStatus(user_status(m.status)?, m.message.clone()),
        K::UserDnd(d) => EventKind::UserDnd(dnd_mode(d.mode)?),
        K::QueueLogin(q) => EventKind::QueueLogin {
            queue: q.queue.clone(),
            logged_in: q.logged_in,
        },
    };
    Ok(Event {
        device: e.device.clone(),
        sequence: e.sequence,
        at_ms: e.at_ms,
        kind,
    })
}

/// Returns the wire reason of a rejection.
pub fn reject_reason(r: Reject) -> v1::RejectReason {
    match r {
        Reject::StaleSequence => v1::RejectReason::StaleSequence,
        Reject::IllegalTransition => v1::RejectReason::IllegalTransition,
        Reject::Malformed => v1::RejectReason::Malformed,
        Reject::TooMany => v1::RejectReason::RateLimited,
    }
}

/// Returns the metric label of a rejection.
pub fn reject_label(r: v1::RejectReason) -> &'static str {
    match r {
        v1::RejectReason::Unspecified => "unspecified",
        v1::RejectReason::Malformed => "malformed",
        v1::RejectReason::UnknownUser => "unknown_user",
        v1::RejectReason::StaleSequence => "stale_sequence",
        v1::RejectReason::IllegalTransition => "illegal_transition",
        v1::RejectReason::RateLimited => "rate_limited",
        v1::RejectReason::NotPermitted => "not_permitted",
    }
}

fn call_to(c: &Call, caller_id: bool) -> v1::ActiveCall {
    v1::ActiveCall {
        call_id: c.call_id.clone(),
        state: call_state_to(c.state) as i32,
        direction: match c.direction {
            Direction::Inbound => v1::Direction::Inbound,
            Direction::Outbound => v1::Direction::Outbound,
        } as i32,
        remote_number: if caller_id {
            c.remote_number.clone()
        } else {
            String::new()
        },
        remote_name: if caller_id {
            c.remote_name.clone()
        } else {
            String::new()
        },
        started_at_ms: c.started_at_ms,
    }
}

/// Returns the full wire state of a user as one watcher may see it:
/// caller identity only when `caller_id` is true.
pub fn state_to_proto(
    domain: &str,
    user: &str,
    a: &Aggregate,
    caller_id: bool,
) -> v1::PresenceState {
    v1::PresenceState {
        domain: domain.into(),
        user: user.into(),
        version: a.version,
        presence: match a.presence {
            PresenceStatus::Available => v1::PresenceStatus::Available,
            PresenceStatus::Busy => v1::PresenceStatus::Busy,
            PresenceStatus::Offline => v1::PresenceStatus::Offline,
        } as i32,
        telephony: match a.telephony {
            Telephony::NoCall => v1::TelephonyStatus::NoCall,
            Telephony::Ringing => v1::TelephonyStatus::Ringing,
            Telephony::Connected => v1::TelephonyStatus::Connected,
            Telephony::OnHold => v1::TelephonyStatus::OnHold,
        } as i32,
        dnd: a.dnd,
        dnd_mode: dnd_mode_to(a.dnd_mode) as i32,
        user_status: match a.user_status {
            UserStatus::Available => v1::UserStatus::Available,
            UserStatus::Busy => v1::UserStatus::Busy,
            UserStatus::Away => v1::UserStatus::Away,
            UserStatus::Offline => v1::UserStatus::Offline,
        } as i32,
        message: a.message.clone(),
        calls: a.calls.iter().map(|c| call_to(c, caller_id)).collect(),
        queues_logged_in: a.queues.clone(),
        updated_at_ms: a.updated_at_ms,
    }
}

/// Removes caller identity from a full state unless `caller_id`.
pub fn redact(mut s: v1::PresenceState, caller_id: bool) -> v1::PresenceState {
    if !caller_id {
        for c in &mut s.calls {
            c.remote_number.clear();
            c.remote_name.clear();
        }
    }
    s
}
