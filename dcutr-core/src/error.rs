//! Why an attempt or an upgrade ended without a direct connection.

use std::time::Duration;

use crate::addr::{AddrRejection, RejectionCounts};
use crate::codec::{CodecError, MessageType};

/// Where in the exchange the upgrade was when something went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// Waiting for the peer's `Hello` (pinned-TLS identity check only).
    Hello,
    /// Waiting for a new stream to open.
    OpenStream,
    /// Waiting for the peer's Connect.
    Connect,
    /// Waiting for the initiator's Sync.
    Sync,
    /// The exchange of this attempt is over; nothing more may arrive.
    Done,
    /// Waiting for the initiator to start the next attempt.
    NextAttempt,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Hello => "hello",
            Step::OpenStream => "open-stream",
            Step::Connect => "connect",
            Step::Sync => "sync",
            Step::Done => "done",
            Step::NextAttempt => "next-attempt",
        })
    }
}

/// The peer broke the protocol on the relayed stream, or the stream
/// failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Framing or protobuf error (oversize frame, bad varint, undecodable
    /// message, unknown or missing type, bad `Hello`).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A well-formed message that may not come now: Sync before Connect, a
    /// second Connect, a Sync sent by the responder, or a Connect sent to
    /// an initiator that has not sent one.
    #[error("unexpected {got:?} while waiting at step {step}")]
    UnexpectedMessage {
        /// What we were waiting for.
        step: Step,
        /// What arrived.
        got: MessageType,
    },
    /// Bytes after the last message a stream may carry.
    #[error("{len} unexpected bytes after the last message of the stream")]
    TrailingBytes {
        /// How many bytes arrived (at least).
        len: usize,
    },
    /// The peer closed or reset the stream before the exchange was over.
    #[error("stream closed by the peer at step {step}")]
    StreamClosed {
        /// What we were waiting for.
        step: Step,
    },
    /// A stream could not be opened.
    #[error("could not open a stream to the peer")]
    StreamOpenFailed,
    /// The peer did not send the next message in time.
    #[error("peer sent nothing for {after:?} at step {step}")]
    StepTimeout {
        /// What we were waiting for.
        step: Step,
        /// The timeout that expired.
        after: Duration,
    },
    /// Both ends took the same side (two initiators, or two responders):
    /// every dcutr-rs session has one of each. Fix the roles the
    /// application gives the two peers.
    #[error("both peers are the {ours}: one must be the initiator, the other the responder")]
    SameSide {
        /// Our side, which the peer's `Hello` claims too.
        ours: crate::Side,
    },
    /// The initiator started more attempts than allowed.
    #[error("peer started attempt {attempt}, beyond the limit of {max}")]
    TooManyAttempts {
        /// The attempt number the peer tried to start.
        attempt: u8,
        /// [`Config::max_attempts`](crate::Config::max_attempts).
        max: u8,
    },
}

/// Why a direct dial failed, as the caller reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DialError {
    /// The remote refused (TCP RST, ICMP port unreachable).
    Refused,
    /// No route or host unreachable.
    Unreachable,
    /// The transport's own handshake failed (TLS, QUIC).
    Handshake,
    /// The core's deadline passed first (reported by the core itself).
    TimedOut,
    /// The identity check failed: a stranger answered.
    IdentityMismatch,
    /// The connection's address pair is already in use: a connection to
    /// that peer address exists, typically the peer's own SYN that our
    /// listener accepted a moment earlier. Not a sign the punch failed.
    AddrInUse,
    /// Any other I/O error.
    Io(std::io::ErrorKind),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Refused => f.write_str("refused"),
            DialError::Unreachable => f.write_str("unreachable"),
            DialError::Handshake => f.write_str("handshake failed"),
            DialError::TimedOut => f.write_str("timed out"),
            DialError::IdentityMismatch => f.write_str("identity check failed"),
            DialError::AddrInUse => f.write_str("address pair already in use"),
            DialError::Io(kind) => write!(f, "{kind}"),
        }
    }
}

impl From<std::io::ErrorKind> for DialError {
    fn from(kind: std::io::ErrorKind) -> Self {
        use std::io::ErrorKind as K;
        match kind {
            K::ConnectionRefused => DialError::Refused,
            K::HostUnreachable | K::NetworkUnreachable => DialError::Unreachable,
            // Linux answers a connect() whose 4-tuple exists (port reuse:
            // the peer's connection came in first) with EADDRNOTAVAIL.
            K::AddrInUse | K::AddrNotAvailable => DialError::AddrInUse,
            K::TimedOut => DialError::TimedOut,
            other => DialError::Io(other),
        }
    }
}

/// Why one attempt ended without a direct connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttemptFailure {
    /// The exchange on the relayed stream failed.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// We had no address of ours to advertise: every observed address
    /// was dropped (see [`AddressPolicy`](crate::AddressPolicy)), or none
    /// is known yet. No Connect was sent with nothing in it.
    #[error("no address of ours to send{}", policy_hint(.dropped))]
    NothingToSend {
        /// Our observed addresses we dropped, per reason.
        dropped: RejectionCounts,
    },
    /// The peer's Connect left nothing we can dial or spray.
    #[error("none of the peer's {received} addresses is usable{}", policy_hint(.dropped))]
    NothingToDial {
        /// Entries in the peer's Connect.
        received: usize,
        /// What we dropped, per reason.
        dropped: RejectionCounts,
    },
    /// Both sides' NATs map each destination to a new port, at least one
    /// of them at random: a punch would need about 170 000 probes, so none
    /// is tried (see [`Strategy::Impossible`](crate::nat::Strategy)).
    #[error(
        "the two NATs cannot meet: both map each destination to a new port, \
         ours with {ours} allocation and the peer's with {peer}; keep the relay, \
         or put one side behind an endpoint-independent NAT"
    )]
    NatsCannotMeet {
        /// How our endpoint-dependent NAT allocates ports.
        ours: crate::nat::Allocation,
        /// How the peer's does, as it declared it.
        peer: crate::nat::Allocation,
    },
    /// The birthday punch ([`crate::nat::Strategy::Birthday`]) ended
    /// without a meeting: every probe was sent unanswered, or its
    /// deadline passed.
    #[error("the birthday punch did not meet ({outcome:?} after {probes_sent} probes)")]
    BirthdayMissed {
        /// [`Exhausted`](crate::birthday::Outcome::Exhausted) or
        /// [`TimedOut`](crate::birthday::Outcome::TimedOut).
        outcome: crate::birthday::Outcome,
        /// Probes this side sent (0 on the hard side).
        probes_sent: u16,
    },
    /// Every dial failed and no inbound connection came.
    #[error("all {dials} direct dials failed")]
    AllDialsFailed {
        /// How many dials were made.
        dials: usize,
    },
    /// The direct phase ran out of time.
    #[error("no direct connection within {after:?}")]
    DirectTimeout {
        /// [`Config::direct_timeout`](crate::Config::direct_timeout).
        after: Duration,
    },
    /// The initiator started a new attempt before this one ended.
    #[error("superseded by a new attempt from the peer")]
    Superseded,
}

/// Why the whole upgrade failed. The relayed connection stays usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// Every attempt failed; one reason per attempt, in order.
    #[error("all {} attempts failed (last: {})", .attempts.len(), last(.attempts))]
    AllAttemptsFailed {
        /// The reason of each attempt.
        attempts: Vec<AttemptFailure>,
    },
    /// A protocol error on a shared stream, where the framing can no
    /// longer be trusted.
    #[error("protocol error: {0}")]
    Protocol(ProtocolError),
    /// The relayed stream closed before the upgrade was decided.
    #[error("relayed stream closed at step {step}")]
    RelayClosed {
        /// What we were waiting for.
        step: Step,
    },
    /// The initiator stopped early: an attempt showed that no address
    /// can be used, and no retry could change that.
    #[error("gave up, since no retry could change it: {}", last(.attempts))]
    GaveUp {
        /// Attempts that were made (the last one says why).
        attempts: Vec<AttemptFailure>,
    },
    /// The initiator stopped starting attempts (responder side).
    #[error("peer started no further attempt after {} failed", .attempts.len())]
    PeerGaveUp {
        /// Attempts that were made.
        attempts: Vec<AttemptFailure>,
    },
}

/// Names the policy and the one setting that changes it, when it was the
/// policy that dropped the addresses.
fn policy_hint(dropped: &RejectionCounts) -> String {
    let by_policy = dropped.get(AddrRejection::Loopback) + dropped.get(AddrRejection::Private);
    if by_policy == 0 {
        return String::new();
    }
    format!(
        " ({by_policy} loopback or private dropped by the address policy, which accepts \
         public addresses only by default; on loopback or a LAN set \
         `address_policy` to `AddressPolicy::permissive()`)"
    )
}

fn last(attempts: &[AttemptFailure]) -> String {
    attempts
        .last()
        .map_or_else(|| "none".to_owned(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_messages_name_the_last_reason() {
        let f = Failure::AllAttemptsFailed {
            attempts: vec![
                AttemptFailure::NothingToSend {
                    dropped: RejectionCounts::default(),
                },
                AttemptFailure::AllDialsFailed { dials: 2 },
            ],
        };
        assert_eq!(
            f.to_string(),
            "all 2 attempts failed (last: all 2 direct dials failed)"
        );
    }

    #[test]
    fn io_errors_map_to_dial_errors() {
        assert_eq!(
            DialError::from(std::io::ErrorKind::ConnectionRefused),
            DialError::Refused
        );
        assert_eq!(
            DialError::from(std::io::ErrorKind::BrokenPipe),
            DialError::Io(std::io::ErrorKind::BrokenPipe)
        );
    }
}
