//! What the behaviour reports to the swarm.

use dcutr_core::{
    AttemptFailure, Candidate, Failure, ProtocolError, Side, Upgraded, filter::AddrRejection,
    record::Timeline,
};
use libp2p_identity::PeerId;
use libp2p_swarm::ConnectionId;

/// The outcome of one upgrade, shaped like `libp2p::dcutr::Event` so that
/// code matching on the stock event keeps compiling.
///
/// Unlike stock, both peers get one: the side whose dial won and the side
/// that accepted the winning connection.
///
/// Deliberately not `#[non_exhaustive]`: a pattern such as
/// `Event { remote_peer_id, result: Ok(id) }` written for the stock event
/// must keep matching.
#[derive(Debug, Clone)]
pub struct Event {
    /// The peer at the other end of the relayed connection.
    pub remote_peer_id: PeerId,
    /// The direct connection that won, or why there is none.
    pub result: Result<ConnectionId, Error>,
}

/// Why an upgrade produced no direct connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The core gave up: every attempt failed (one typed reason per
    /// attempt), the peer stopped trying, or the relayed stream broke.
    #[error("failed to hole-punch connection: {0}{hint}", hint = hint_suffix(.0))]
    Failed(Failure),
    /// The relayed connection closed before the upgrade was decided and
    /// no direct connection was in the making.
    #[error("relayed connection closed before the upgrade was decided")]
    RelayedConnectionClosed,
}

/// What to change when no address passed the policy, for
/// [`Error::hint`].
const POLICY_HINT: &str = "no address passed the address policy, and the default \
    (AddressPolicy::public_only) drops loopback and private addresses: for peers on one \
    host or LAN use Config::default().with_address_policy(AddressPolicy::permissive())";

impl Error {
    /// The protocol violation that ended the upgrade or its last attempt,
    /// if one did: what stock's `inbound::ProtocolViolation` and
    /// `outbound::ProtocolViolation` describe, as one type for both
    /// directions.
    #[must_use]
    pub fn protocol_violation(&self) -> Option<&ProtocolError> {
        let Error::Failed(failure) = self else {
            return None;
        };
        match failure {
            Failure::Protocol(p) => Some(p),
            Failure::AllAttemptsFailed { attempts } | Failure::PeerGaveUp { attempts } => {
                match attempts.last() {
                    Some(AttemptFailure::Protocol(p)) => Some(p),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// What to change, when the failure is one our configuration caused:
    /// every attempt found no usable address, which on one host or in a
    /// LAN is the default address policy at work. The error's message
    /// ends with it.
    #[must_use]
    pub fn hint(&self) -> Option<&'static str> {
        let Error::Failed(failure) = self else {
            return None;
        };
        let (Failure::AllAttemptsFailed { attempts }
        | Failure::PeerGaveUp { attempts }
        | Failure::GaveUp { attempts }) = failure
        else {
            return None;
        };
        let by_policy = |dropped: &dcutr_core::filter::RejectionCounts| {
            dropped.get(AddrRejection::Loopback) + dropped.get(AddrRejection::Private) > 0
        };
        let policy = attempts.iter().any(|a| match a {
            AttemptFailure::NothingToSend { dropped }
            | AttemptFailure::NothingToDial { dropped, .. } => by_policy(dropped),
            _ => false,
        });
        policy.then_some(POLICY_HINT)
    }
}

fn hint_suffix(failure: &Failure) -> String {
    Error::Failed(failure.clone())
        .hint()
        .map_or_else(String::new, |h| format!("; {h}"))
}

/// Everything the behaviour can report: pick it with
/// `Behaviour::<Report>::with_config`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Report {
    /// The final outcome of one upgrade, with its record.
    Outcome {
        /// The stock-shaped event.
        event: Event,
        /// The relayed connection the upgrade ran on.
        relayed_connection_id: ConnectionId,
        /// Our role in it.
        side: Side,
        /// What happened when: attempts, RTTs, dials and their results.
        /// `None` when the relayed connection closed before the upgrade
        /// started.
        timeline: Option<Box<Timeline>>,
        /// The winner as the core saw it (transport, the peer's address,
        /// the attempt that made it); `None` on failure.
        upgraded: Option<Upgraded>,
        /// The addresses of the last attempt that exchanged them.
        addrs: AttemptAddrs,
    },
    /// A step of one upgrade.
    Progress(Progress),
}

/// The addresses of one hole-punch attempt: what the per-address metrics
/// (`libp2p_holepunch_address_outcomes_total`) are computed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttemptAddrs {
    /// Ours, as our Connect carried them (the policy and transport filters
    /// applied), read when the peer's Connect was taken.
    pub local: Vec<Candidate>,
    /// The peer's, as accepted from its Connect.
    pub remote: Vec<Candidate>,
}

impl AttemptAddrs {
    /// Addresses of an attempt: ours and the peer's.
    #[must_use]
    pub fn new(local: Vec<Candidate>, remote: Vec<Candidate>) -> Self {
        AttemptAddrs { local, remote }
    }
}

/// One step of an upgrade: attempt started or failed (with its typed
/// reason), the peer's addresses and what was dropped, the measured RTT,
/// the punch, each failed dial.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Progress {
    /// The peer.
    pub remote_peer_id: PeerId,
    /// The relayed connection the upgrade runs on.
    pub relayed_connection_id: ConnectionId,
    /// Our role.
    pub side: Side,
    /// The core's event. Its `DirectId`s are the core's names for dials;
    /// [`Progress::direct_connection_id`] gives the libp2p one.
    pub event: dcutr_core::Event,
    /// The libp2p connection the event is about, for events that name a
    /// dial or a direct connection.
    pub direct_connection_id: Option<ConnectionId>,
}

/// Turns reports into the behaviour's `ToSwarm` type; [`Event`] keeps the
/// outcomes only, [`Report`] keeps everything.
pub trait FromReport: Send + 'static + Sized {
    /// `None` drops the report.
    fn from_report(report: Report) -> Option<Self>;
}

impl FromReport for Event {
    fn from_report(report: Report) -> Option<Self> {
        match report {
            Report::Outcome { event, .. } => Some(event),
            Report::Progress(_) => None,
        }
    }
}

impl FromReport for Report {
    fn from_report(report: Report) -> Option<Self> {
        Some(report)
    }
}
