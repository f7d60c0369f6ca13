//! What happened when: the record an upgrade keeps of itself, for logs,
//! benchmarks and the adapters' reports.
//!
//! Every list here is bounded: attempts by
//! [`Config::max_attempts`](crate::Config::max_attempts), dials by attempts
//! times [`Config::max_remote_addrs`](crate::Config::max_remote_addrs)
//! (plus the unilateral dials); inbound connections are only counted.

use std::time::{Duration, Instant};

use crate::addr::Candidate;
use crate::error::{AttemptFailure, DialError};
use crate::output::{DialPurpose, DirectId, DirectRejection, Role};

/// The record of one upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeline {
    /// When the upgrade started.
    pub started: Instant,
    /// When the unilateral dial started and ended, if there was one.
    pub unilateral: Option<(Instant, Option<Instant>)>,
    /// One record per hole-punch attempt.
    pub attempts: Vec<AttemptRecord>,
    /// Every dial we made.
    pub dials: Vec<DialRecord>,
    /// Inbound connections taken for the identity check.
    pub inbound_accepted: u32,
    /// Inbound connections refused or closed by the identity check.
    pub inbound_rejected: u32,
    /// When the outcome was decided.
    pub decided: Option<Instant>,
}

/// The record of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Attempt number, from 1.
    pub number: u8,
    /// When it started.
    pub started: Instant,
    /// When our Connect left.
    pub connect_sent: Option<Instant>,
    /// When the peer's Connect arrived.
    pub connect_received: Option<Instant>,
    /// The relayed round trip (initiator only).
    pub rtt: Option<Duration>,
    /// When Sync left (initiator) or arrived (responder).
    pub sync: Option<Instant>,
    /// When we punched.
    pub punch: Option<Instant>,
    /// How many of the peer's addresses were usable.
    pub remote_addrs: usize,
    /// Spray datagrams sent.
    pub spray_packets: u32,
    /// When it ended (success or failure).
    pub ended: Option<Instant>,
    /// Why it failed, if it did.
    pub failure: Option<AttemptFailure>,
}

impl AttemptRecord {
    pub(crate) fn new(number: u8, started: Instant) -> Self {
        AttemptRecord {
            number,
            started,
            connect_sent: None,
            connect_received: None,
            rtt: None,
            sync: None,
            punch: None,
            remote_addrs: 0,
            spray_packets: 0,
            ended: None,
            failure: None,
        }
    }
}

/// How a dial ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DialResult {
    /// Connected (and, with the identity check, waiting for it).
    Connected,
    /// Connected and won.
    Won,
    /// Failed.
    Failed(DialError),
    /// Connected, then closed before it could win.
    Rejected(DirectRejection),
    /// Cancelled by the core (attempt over, or another connection won).
    Cancelled,
    /// Still in flight when another connection won, and left to finish:
    /// without the identity check the peer may have taken this one, so it is
    /// the caller's to keep or close
    /// ([`IdentityCheck::CallerAuthenticates`](crate::settings::IdentityCheck::CallerAuthenticates)).
    Released,
}

/// The record of one dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DialRecord {
    /// The dial's id.
    pub id: DirectId,
    /// Where to.
    pub to: Candidate,
    /// Our role.
    pub role: Role,
    /// Why.
    pub purpose: DialPurpose,
    /// Attempt number (0: unilateral).
    pub attempt: u8,
    /// When it was issued.
    pub started: Instant,
    /// When its result was known.
    pub ended: Option<Instant>,
    /// Its latest result.
    pub result: Option<DialResult>,
}

impl Timeline {
    /// A timeline with nothing recorded yet, started at `started`.
    #[must_use]
    pub fn empty(started: Instant) -> Self {
        Timeline {
            started,
            unilateral: None,
            attempts: Vec::new(),
            dials: Vec::new(),
            inbound_accepted: 0,
            inbound_rejected: 0,
            decided: None,
        }
    }

    /// From the start to the outcome.
    #[must_use]
    pub fn duration(&self) -> Option<Duration> {
        self.decided
            .map(|t| t.saturating_duration_since(self.started))
    }

    /// From the last attempt's Connect to the outcome: the figure that the
    /// bound `1.5 * relayed RTT + direct RTT` applies to.
    #[must_use]
    pub fn since_last_connect(&self) -> Option<Duration> {
        let sent = self.attempts.last()?.connect_sent?;
        self.decided.map(|t| t.saturating_duration_since(sent))
    }

    /// The round trip measured in the last attempt that measured one.
    #[must_use]
    pub fn last_rtt(&self) -> Option<Duration> {
        self.attempts.iter().rev().find_map(|a| a.rtt)
    }

    pub(crate) fn attempt_mut(&mut self) -> Option<&mut AttemptRecord> {
        self.attempts.last_mut()
    }

    pub(crate) fn dial_mut(&mut self, id: DirectId) -> Option<&mut DialRecord> {
        self.dials.iter_mut().rev().find(|d| d.id == id)
    }

    pub(crate) fn end_dial(&mut self, id: DirectId, now: Instant, result: DialResult) {
        if let Some(dial) = self.dial_mut(id) {
            dial.ended.get_or_insert(now);
            dial.result = Some(result);
        }
    }
}
