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
    pub(crate) started: Instant,
    /// When the unilateral dial started and ended, if there was one.
    pub(crate) unilateral: Option<(Instant, Option<Instant>)>,
    /// One record per hole-punch attempt.
    pub(crate) attempts: Vec<AttemptRecord>,
    /// Every dial we made.
    pub(crate) dials: Vec<DialRecord>,
    /// Inbound connections taken for the identity check.
    pub(crate) inbound_accepted: u32,
    /// Inbound connections refused or closed by the identity check.
    pub(crate) inbound_rejected: u32,
    /// Punch datagram sources not dialled as peer-reflexive candidates.
    pub(crate) peer_reflexive_refused: u32,
    /// When the outcome was decided.
    pub(crate) decided: Option<Instant>,
}

/// The record of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Attempt number, from 1.
    pub(crate) number: u8,
    /// When it started.
    pub(crate) started: Instant,
    /// When our Connect left.
    pub(crate) connect_sent: Option<Instant>,
    /// When the peer's Connect arrived.
    pub(crate) connect_received: Option<Instant>,
    /// The relayed round trip (initiator only).
    pub(crate) rtt: Option<Duration>,
    /// When Sync left (initiator) or arrived (responder).
    pub(crate) sync: Option<Instant>,
    /// When we punched.
    pub(crate) punch: Option<Instant>,
    /// How many of the peer's addresses were usable.
    pub(crate) remote_addrs: usize,
    /// Spray datagrams sent.
    pub(crate) spray_packets: u32,
    /// Birthday-punch datagrams asked for (probes, priming, answers).
    pub(crate) birthday_datagrams: u32,
    /// When it ended (success or failure).
    pub(crate) ended: Option<Instant>,
    /// Why it failed, if it did.
    pub(crate) failure: Option<AttemptFailure>,
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
            birthday_datagrams: 0,
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
    /// the caller's to keep or close (the spec, or
    /// [`UpgradeBuilder::dcutr_session_unpinned`](crate::UpgradeBuilder::dcutr_session_unpinned)).
    Released,
}

/// The record of one dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DialRecord {
    /// The dial's id.
    pub(crate) id: DirectId,
    /// Where to.
    pub(crate) to: Candidate,
    /// Our role.
    pub(crate) role: Role,
    /// Why.
    pub(crate) purpose: DialPurpose,
    /// Attempt number (0: unilateral).
    pub(crate) attempt: u8,
    /// When it was issued.
    pub(crate) started: Instant,
    /// When its result was known.
    pub(crate) ended: Option<Instant>,
    /// Its latest result.
    pub(crate) result: Option<DialResult>,
    /// Whether it goes to a peer-reflexive candidate: the source of a
    /// punch datagram of the peer, not an address its Connect named.
    pub(crate) peer_reflexive: bool,
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
            peer_reflexive_refused: 0,
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

/// Read access: the core writes the record, everyone else reads it.
impl Timeline {
    /// When the upgrade started.
    #[must_use]
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When the unilateral dial started and, if it has, ended.
    #[must_use]
    pub fn unilateral(&self) -> Option<(Instant, Option<Instant>)> {
        self.unilateral
    }

    /// One record per hole-punch attempt, in order (the first is attempt 1).
    #[must_use]
    pub fn attempts(&self) -> &[AttemptRecord] {
        &self.attempts
    }

    /// Every dial we made, in the order they were issued.
    #[must_use]
    pub fn dials(&self) -> &[DialRecord] {
        &self.dials
    }

    /// Inbound connections taken for the identity check.
    #[must_use]
    pub fn inbound_accepted(&self) -> u32 {
        self.inbound_accepted
    }

    /// Inbound connections refused or closed by the identity check.
    #[must_use]
    pub fn inbound_rejected(&self) -> u32 {
        self.inbound_rejected
    }

    /// When the outcome was decided, once it has been.
    #[must_use]
    pub fn decided(&self) -> Option<Instant> {
        self.decided
    }

    /// Punch datagram sources that were not dialled as peer-reflexive
    /// candidates, for any [`PeerReflexiveRefused`](crate::reason::PeerReflexiveRefused)
    /// reason (saturating).
    #[must_use]
    pub fn peer_reflexive_refused(&self) -> u32 {
        self.peer_reflexive_refused
    }
}

/// Read access to one attempt's record.
impl AttemptRecord {
    /// Attempt number, from 1.
    #[must_use]
    pub fn number(&self) -> u8 {
        self.number
    }

    /// When the attempt started.
    #[must_use]
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When our Connect left.
    #[must_use]
    pub fn connect_sent(&self) -> Option<Instant> {
        self.connect_sent
    }

    /// When the peer's Connect arrived.
    #[must_use]
    pub fn connect_received(&self) -> Option<Instant> {
        self.connect_received
    }

    /// The relayed round trip (initiator only).
    #[must_use]
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// When Sync left (initiator) or arrived (responder).
    #[must_use]
    pub fn sync(&self) -> Option<Instant> {
        self.sync
    }

    /// When we punched.
    #[must_use]
    pub fn punch(&self) -> Option<Instant> {
        self.punch
    }

    /// How many of the peer's addresses were usable.
    #[must_use]
    pub fn remote_addrs(&self) -> usize {
        self.remote_addrs
    }

    /// Spray datagrams sent.
    #[must_use]
    pub fn spray_packets(&self) -> u32 {
        self.spray_packets
    }

    /// Birthday-punch datagrams the core asked for in this attempt:
    /// probes (easy side), priming datagrams and answers (hard side).
    /// A carrier's process-wide budget may have held some back.
    #[must_use]
    pub fn birthday_datagrams(&self) -> u32 {
        self.birthday_datagrams
    }

    /// When the attempt ended (success or failure).
    #[must_use]
    pub fn ended(&self) -> Option<Instant> {
        self.ended
    }

    /// Why the attempt failed, if it did.
    #[must_use]
    pub fn failure(&self) -> Option<&AttemptFailure> {
        self.failure.as_ref()
    }
}

/// Read access to one dial's record.
impl DialRecord {
    /// The dial's id.
    #[must_use]
    pub fn id(&self) -> DirectId {
        self.id
    }

    /// Where the dial went.
    #[must_use]
    pub fn to(&self) -> Candidate {
        self.to
    }

    /// Our role on the connection it would make.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// Why it was made.
    #[must_use]
    pub fn purpose(&self) -> DialPurpose {
        self.purpose
    }

    /// Attempt number (0: the unilateral dial).
    #[must_use]
    pub fn attempt(&self) -> u8 {
        self.attempt
    }

    /// When it was issued.
    #[must_use]
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When its result was known.
    #[must_use]
    pub fn ended(&self) -> Option<Instant> {
        self.ended
    }

    /// Its latest result, once there is one.
    #[must_use]
    pub fn result(&self) -> Option<DialResult> {
        self.result
    }

    /// Whether it went to a peer-reflexive candidate (the source of one of
    /// the peer's punch datagrams) rather than to an address the peer
    /// named.
    #[must_use]
    pub fn is_peer_reflexive(&self) -> bool {
        self.peer_reflexive
    }
}

/// Hand-made records for tests of code that reads them (metrics, reports):
/// not part of the stable API, and only with the `internals` feature.
#[cfg(feature = "internals")]
impl Timeline {
    /// A timeline with the given attempts, unilateral dial and decision.
    #[doc(hidden)]
    #[must_use]
    pub fn fixture(
        started: Instant,
        unilateral: Option<(Instant, Option<Instant>)>,
        attempts: Vec<AttemptRecord>,
        decided: Option<Instant>,
    ) -> Self {
        Timeline {
            unilateral,
            attempts,
            decided,
            ..Timeline::empty(started)
        }
    }
}

#[cfg(feature = "internals")]
impl AttemptRecord {
    /// An attempt record with the given measurements and nothing else.
    #[doc(hidden)]
    #[must_use]
    pub fn fixture(
        number: u8,
        started: Instant,
        connect_sent: Option<Instant>,
        rtt: Option<Duration>,
        sync: Option<Instant>,
        remote_addrs: usize,
    ) -> Self {
        AttemptRecord {
            connect_sent,
            rtt,
            sync,
            remote_addrs,
            ..AttemptRecord::new(number, started)
        }
    }
}
