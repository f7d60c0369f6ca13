//! `serde::Serialize` for what a report shows: events, outcomes, failures,
//! timelines and addresses (feature `serde`).
//!
//! Written out by hand, in one place, so that the JSON shape is a choice
//! rather than an accident of the Rust types:
//! - addresses are `{"transport": "tcp", "addr": "203.0.113.7:4001"}`;
//! - every error is `{"kind": "nothing_to_send", "message": "...", ...}`,
//!   its kind the variant's name in snake case and its message the
//!   `Display` text, plus the fields that matter;
//! - events are `{"event": "rtt_measured", ...fields}`;
//! - durations are milliseconds (`f64`), and the instants of a timeline are
//!   milliseconds since its start (an `Instant` has no meaning outside
//!   the process).

use std::time::{Duration, Instant};

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::addr::{AddrRejection, Candidate, RejectionCounts, Transport};
use crate::error::{AttemptFailure, DialError, Failure, ProtocolError};
use crate::output::{DialPurpose, DirectId, DirectRejection, Event, Outcome, Role, Side, Upgraded};
use crate::timeline::{AttemptRecord, DialRecord, DialResult, Timeline};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The leading identifier of a `Debug` rendering, in snake case: the
/// variant's name for our enums.
fn kind_of(debug: &str) -> String {
    let name: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `{"kind", "message"}` of an error, plus what `extra` adds.
fn error_map<S: Serializer, E: std::fmt::Debug + std::fmt::Display>(
    serializer: S,
    error: &E,
    extra: impl FnOnce(&mut S::SerializeMap) -> Result<(), S::Error>,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(None)?;
    map.serialize_entry("kind", &kind_of(&format!("{error:?}")))?;
    map.serialize_entry("message", &error.to_string())?;
    extra(&mut map)?;
    map.end()
}

macro_rules! as_display {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    )*};
}

as_display!(Side, Role, Transport);

impl Serialize for DialPurpose {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(match self {
            DialPurpose::Unilateral => "unilateral",
            DialPurpose::HolePunch => "hole_punch",
        })
    }
}

impl Serialize for DirectId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl Serialize for Candidate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("transport", &self.transport)?;
        map.serialize_entry("addr", &self.addr.to_string())?;
        map.end()
    }
}

impl Serialize for AddrRejection {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&kind_of(&format!("{self:?}")))
    }
}

/// The non-zero counts, by reason.
impl Serialize for RejectionCounts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (reason, count) in self.iter() {
            map.serialize_entry(&kind_of(&format!("{reason:?}")), &count)?;
        }
        map.end()
    }
}

impl Serialize for DialError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        error_map(serializer, self, |_| Ok(()))
    }
}

impl Serialize for DirectRejection {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&kind_of(&format!("{self:?}")))
    }
}

impl Serialize for ProtocolError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        error_map(serializer, self, |_| Ok(()))
    }
}

impl Serialize for AttemptFailure {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        error_map(serializer, self, |map| match self {
            AttemptFailure::Protocol(p) => map.serialize_entry("protocol", p),
            AttemptFailure::NothingToSend { dropped } => map.serialize_entry("dropped", dropped),
            AttemptFailure::NothingToDial { received, dropped } => {
                map.serialize_entry("received", received)?;
                map.serialize_entry("dropped", dropped)
            }
            AttemptFailure::AllDialsFailed { dials } => map.serialize_entry("dials", dials),
            AttemptFailure::DirectTimeout { after } => map.serialize_entry("after_ms", &ms(*after)),
            _ => Ok(()),
        })
    }
}

impl Serialize for Failure {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        error_map(serializer, self, |map| match self {
            Failure::AllAttemptsFailed { attempts }
            | Failure::PeerGaveUp { attempts }
            | Failure::GaveUp { attempts } => map.serialize_entry("attempts", attempts),
            Failure::Protocol(p) => map.serialize_entry("protocol", p),
            _ => Ok(()),
        })
    }
}

impl Serialize for Upgraded {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("transport", &self.transport)?;
        map.serialize_entry("remote", &self.remote.to_string())?;
        map.serialize_entry("role", &self.role)?;
        map.serialize_entry("attempt", &self.attempt)?;
        map.end()
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        match self {
            Outcome::Upgraded(up) => {
                map.serialize_entry("ok", &true)?;
                map.serialize_entry("upgraded", up)?;
            }
            Outcome::Failed(failure) => {
                map.serialize_entry("ok", &false)?;
                map.serialize_entry("failure", failure)?;
            }
        }
        map.end()
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("event", &kind_of(&format!("{self:?}")))?;
        match self {
            Event::UnilateralStarted { dials } => map.serialize_entry("dials", dials)?,
            Event::AttemptStarted { attempt }
            | Event::SyncSent { attempt, .. }
            | Event::SyncReceived { attempt } => map.serialize_entry("attempt", attempt)?,
            Event::RemoteAddrs {
                attempt,
                accepted,
                rejected,
            } => {
                map.serialize_entry("attempt", attempt)?;
                map.serialize_entry("accepted", accepted)?;
                map.serialize_entry("rejected", rejected)?;
            }
            Event::RttMeasured { attempt, rtt } => {
                map.serialize_entry("attempt", attempt)?;
                map.serialize_entry("rtt_ms", &ms(*rtt))?;
            }
            Event::Punch {
                attempt,
                dials,
                spray_targets,
            } => {
                map.serialize_entry("attempt", attempt)?;
                map.serialize_entry("dials", dials)?;
                map.serialize_entry("spray_targets", spray_targets)?;
            }
            Event::PeerReflexive { attempt, id, to } => {
                map.serialize_entry("attempt", attempt)?;
                map.serialize_entry("id", id)?;
                map.serialize_entry("to", to)?;
            }
            Event::DialFailed { id, to, error } => {
                map.serialize_entry("id", id)?;
                map.serialize_entry("to", to)?;
                map.serialize_entry("error", error)?;
            }
            Event::DirectRejected { id, remote, reason } => {
                map.serialize_entry("id", id)?;
                map.serialize_entry("remote", &remote.to_string())?;
                map.serialize_entry("reason", reason)?;
            }
            Event::AttemptFailed { attempt, reason } => {
                map.serialize_entry("attempt", attempt)?;
                map.serialize_entry("reason", reason)?;
            }
            Event::Upgraded(up) => map.serialize_entry("upgraded", up)?,
            Event::Failed(failure) => map.serialize_entry("failure", failure)?,
            _ => {}
        }
        map.end()
    }
}

/// An instant of a timeline, as milliseconds since its start.
struct Since(Instant, Instant);

impl Serialize for Since {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(ms(self.1.saturating_duration_since(self.0)))
    }
}

fn since(base: Instant, at: Option<Instant>) -> Option<Since> {
    at.map(|at| Since(base, at))
}

struct Attempt<'a>(Instant, &'a AttemptRecord);

impl Serialize for Attempt<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (base, a) = (self.0, self.1);
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("number", &a.number)?;
        map.serialize_entry("started_ms", &Since(base, a.started))?;
        map.serialize_entry("connect_sent_ms", &since(base, a.connect_sent))?;
        map.serialize_entry("connect_received_ms", &since(base, a.connect_received))?;
        map.serialize_entry("rtt_ms", &a.rtt.map(ms))?;
        map.serialize_entry("sync_ms", &since(base, a.sync))?;
        map.serialize_entry("punch_ms", &since(base, a.punch))?;
        map.serialize_entry("remote_addrs", &a.remote_addrs)?;
        map.serialize_entry("spray_packets", &a.spray_packets)?;
        map.serialize_entry("birthday_datagrams", &a.birthday_datagrams)?;
        map.serialize_entry("ended_ms", &since(base, a.ended))?;
        map.serialize_entry("failure", &a.failure)?;
        map.end()
    }
}

impl Serialize for DialResult {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("result", &kind_of(&format!("{self:?}")))?;
        match self {
            DialResult::Failed(error) => map.serialize_entry("error", error)?,
            DialResult::Rejected(reason) => map.serialize_entry("reason", reason)?,
            _ => {}
        }
        map.end()
    }
}

struct Dialled<'a>(Instant, &'a DialRecord);

impl Serialize for Dialled<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (base, d) = (self.0, self.1);
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &d.id)?;
        map.serialize_entry("to", &d.to)?;
        map.serialize_entry("role", &d.role)?;
        map.serialize_entry("purpose", &d.purpose)?;
        map.serialize_entry("attempt", &d.attempt)?;
        map.serialize_entry("started_ms", &Since(base, d.started))?;
        map.serialize_entry("ended_ms", &since(base, d.ended))?;
        map.serialize_entry("result", &d.result)?;
        map.serialize_entry("peer_reflexive", &d.peer_reflexive)?;
        map.end()
    }
}

impl Serialize for Timeline {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let base = self.started;
        let mut map = serializer.serialize_map(None)?;
        let unilateral = self
            .unilateral
            .map(|(start, end)| (Since(base, start), since(base, end)));
        map.serialize_entry("unilateral_ms", &unilateral)?;
        let attempts: Vec<Attempt<'_>> = self.attempts.iter().map(|a| Attempt(base, a)).collect();
        map.serialize_entry("attempts", &attempts)?;
        let dials: Vec<Dialled<'_>> = self.dials.iter().map(|d| Dialled(base, d)).collect();
        map.serialize_entry("dials", &dials)?;
        map.serialize_entry("inbound_accepted", &self.inbound_accepted)?;
        map.serialize_entry("inbound_rejected", &self.inbound_rejected)?;
        map.serialize_entry("peer_reflexive_refused", &self.peer_reflexive_refused)?;
        map.serialize_entry("decided_ms", &since(base, self.decided))?;
        map.end()
    }
}
