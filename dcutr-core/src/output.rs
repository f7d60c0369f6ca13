//! What the core asks its driver to do, and what it reports.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::addr::{AddrRejection, Candidate, RejectionCounts, Transport};
use crate::config::SPRAY_PACKET_LEN;
use crate::error::{AttemptFailure, DialError, Failure};

/// Which end of the relayed connection we are.
///
/// The specification calls them B and A; we name them by what they do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The spec's **B**: usually the peer behind a NAT that accepted the
    /// relayed connection. Opens the `/libp2p/dcutr` stream, sends the
    /// first Connect, measures the round trip, sends Sync, and punches
    /// half a round trip later. Server of the direct connection (except
    /// in the unilateral dial, where it is the dialer and client).
    Initiator,
    /// The spec's **A**: dialled B through the relay. Answers the stream,
    /// replies with its own Connect, and punches the moment Sync arrives.
    /// Client of the direct connection.
    Responder,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Initiator => "initiator",
            Side::Responder => "responder",
        })
    }
}

/// Our role on a direct connection, for everything layered on top of it
/// (security handshake, muxer, QUIC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The dialer: QUIC client, TLS/Noise initiator.
    Client,
    /// The listener: QUIC server, TLS/Noise responder.
    Server,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Server => "server",
        })
    }
}

/// Names one direct connection or dial. Assigned by the core, unique
/// within one [`Upgrade`](crate::Upgrade).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DirectId(pub u64);

impl fmt::Display for DirectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why a dial is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DialPurpose {
    /// The plain direct dial before any hole punch (the spec's step 0).
    Unilateral,
    /// Part of a synchronised hole punch.
    HolePunch,
}

/// A dial to make now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dial {
    /// Report the result with this id.
    pub id: DirectId,
    /// Transport and address to dial. For TCP the dial must leave from
    /// the local port the peer observed (port reuse).
    pub to: Candidate,
    /// Our role on the resulting connection. For QUIC this is always
    /// [`Role::Client`]: the server side sprays instead of dialling.
    pub role: Role,
    /// Why.
    pub purpose: DialPurpose,
    /// The attempt this dial belongs to (0 for the unilateral dial).
    pub attempt: u8,
}

/// A command for the driver. Drain them with
/// [`Upgrade::poll_output`](crate::Upgrade::poll_output) after every input.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Open a new `/libp2p/dcutr` stream on the relayed connection, then
    /// report it with `handle_stream_opened` (or its failure with
    /// `handle_stream_closed`). Only in the spec's stream per attempt, not
    /// in the dcutr-rs session
    /// ([`UpgradeBuilder::dcutr_session`](crate::UpgradeBuilder::dcutr_session)).
    OpenStream,
    /// Write these bytes to the relayed stream.
    WriteStream(Bytes),
    /// Finish (half-close) the relayed stream after the queued writes.
    FinishStream,
    /// Reset the relayed stream: the current exchange is abandoned.
    ResetStream,
    /// Dial now.
    Dial(Dial),
    /// Send this datagram from the UDP socket the QUIC endpoint listens on
    /// (the socket whose NAT mapping the peer observed).
    SendDatagram {
        /// Destination, always a QUIC address from the peer's Connect.
        to: SocketAddr,
        /// The random bytes to send; see [`SprayPayload::bytes`].
        payload: SprayPayload,
    },
    /// Prime our own NAT: send one packet to `to` with IP TTL (IPv6 hop
    /// limit) `ttl`, set on this packet only, never on the socket. From
    /// the socket the punch will use: for QUIC one
    /// [`SPRAY_MARKER`]-marked datagram of [`SPRAY_PACKET_LEN`] bytes
    /// from the QUIC socket, for TCP one SYN from the punch port (the core
    /// primes QUIC targets only today: a TCP priming SYN from another
    /// socket than the dial's leaves the NAT's conntrack entry with a
    /// sequence number our later SYN-ACK does not match). The
    /// packet passes our NAT, which creates the mapping the punch will
    /// use, and expires before the peer's NAT
    /// ([`DEFAULT_PRIME_TTL`](crate::settings::DEFAULT_PRIME_TTL) has
    /// the derivation). Issued as soon as the peer's Connect arrives, on
    /// both sides, once per address the punch will aim at; nothing is
    /// reported back, and a carrier that cannot set a per-packet TTL
    /// drops the command.
    Prime {
        /// Transport and address: one the punch of this attempt aims at.
        to: Candidate,
        /// The TTL, from [`Config::prime_ttl`](crate::Config::prime_ttl).
        ttl: u8,
    },
    /// Birthday punch ([`crate::birthday`]): send this datagram. From
    /// [`Local::Punch`](crate::birthday::Local::Punch), the UDP socket the
    /// QUIC endpoint listens on; from
    /// [`Local::Fresh(i)`](crate::birthday::Local::Fresh), fresh socket
    /// `i`, which its first transmit (a
    /// [`Priming`](crate::birthday::DatagramKind::Priming) one) opens: a
    /// new UDP socket on the punch socket's IP at an ephemeral port. Read
    /// what arrives on the fresh sockets (and birthday datagrams,
    /// [`is_birthday_datagram`](crate::birthday::is_birthday_datagram), on
    /// the punch socket) into
    /// [`Upgrade::handle_birthday_datagram`](crate::Upgrade::handle_birthday_datagram).
    ///
    /// Over TCP ([`Transmit::transport`](crate::birthday::Transmit::transport)
    /// is [`Transport::Tcp`](crate::Transport::Tcp)) it is a connect
    /// instead: from the TCP punch socket (port reuse) or from a new
    /// fresh TCP socket `i` at an ephemeral port, to the destination,
    /// closed at its [`expires`](crate::birthday::Transmit::expires)
    /// unless it completed; report a completed one with
    /// [`Upgrade::handle_birthday_connected`](crate::Upgrade::handle_birthday_connected).
    SendBirthday(crate::birthday::Transmit),
    /// Birthday punch: close every fresh socket but `keep` (all of them
    /// when `None`); over TCP also every pending connect of the punch
    /// (the easy side's probes). A connection already handed to the core
    /// is not among them.
    CloseFresh {
        /// The fresh socket that stays open: the one that met, which a
        /// [`Output::DialFresh`] dials from.
        keep: Option<u16>,
    },
    /// Birthday punch, hard side: a QUIC dial (we are the QUIC client)
    /// that must leave from fresh socket `socket`, the one whose NAT
    /// mapping met the peer. Its [`Dial::role`] is the identity check's,
    /// by side ([`Role::Server`] on the initiator), as the easy side
    /// labels the inbound connection. Report it like any
    /// [`Output::Dial`].
    DialFresh {
        /// The fresh socket to dial from.
        socket: u16,
        /// The dial.
        dial: Dial,
    },
    /// Write these bytes to a direct connection (the identity check).
    WriteDirect {
        /// Which connection.
        id: DirectId,
        /// What to write.
        data: Bytes,
    },
    /// Cancel this dial, or close this direct connection: it timed out,
    /// failed the identity check, or lost to another one.
    CloseDirect {
        /// Which connection.
        id: DirectId,
    },
    /// Close the relayed connection: the grace period after the upgrade
    /// is over.
    CloseRelay,
    /// Something happened; see [`Event`].
    Event(Event),
}

/// The first bytes of every spray datagram: how the peer's punch socket
/// tells our spray from other traffic and learns the address it came from
/// ([`Upgrade::handle_peer_reflexive`](crate::Upgrade::handle_peer_reflexive)).
///
/// The first byte is 0, so the QUIC fixed bit is clear: a QUIC endpoint
/// drops the datagram as malformed without answering it (no stateless
/// reset, no version negotiation). The marker proves nothing about the
/// sender, who can be anyone: the core's checks of the source are the
/// guard.
pub const SPRAY_MARKER: [u8; 8] = *b"\0dcutr-p";

/// The random content of one spray datagram.
///
/// Held as a 64-bit seed drawn from the upgrade's RNG, so that a queued
/// [`Output`] stays small and a spray tick allocates nothing; the driver
/// expands it with [`SprayPayload::bytes`] when it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SprayPayload(pub(crate) u64);

impl SprayPayload {
    /// The [`SPRAY_PACKET_LEN`] bytes to send: [`SPRAY_MARKER`], then a
    /// deterministic expansion of the seed, so replays send the same
    /// bytes.
    #[must_use]
    pub fn bytes(&self) -> [u8; SPRAY_PACKET_LEN] {
        use rand::{RngCore, SeedableRng};
        let mut out = [0u8; SPRAY_PACKET_LEN];
        let (marker, rest) = out.split_at_mut(SPRAY_MARKER.len());
        marker.copy_from_slice(&SPRAY_MARKER);
        rand_chacha::ChaCha8Rng::seed_from_u64(self.0).fill_bytes(rest);
        out
    }

    /// Whether `datagram` looks like a spray datagram of a dcutr-rs peer:
    /// [`SPRAY_PACKET_LEN`] bytes that start with [`SPRAY_MARKER`].
    #[must_use]
    pub fn is_spray(datagram: &[u8]) -> bool {
        datagram.len() == SPRAY_PACKET_LEN && datagram.starts_with(&SPRAY_MARKER)
    }
}

/// The winning direct connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upgraded {
    /// The connection (a dial of ours, or an inbound one).
    pub id: DirectId,
    /// Its transport.
    pub transport: Transport,
    /// The peer's address on it.
    pub remote: SocketAddr,
    /// Our role on it.
    pub role: Role,
    /// The attempt that produced it; 0 for the unilateral dial.
    pub attempt: u8,
}

/// How the upgrade ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A direct connection won.
    Upgraded(Upgraded),
    /// No direct connection; keep using the relay.
    Failed(Failure),
}

/// Why an inbound connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InboundRejected {
    /// The upgrade is already decided.
    #[error("the upgrade is already over")]
    Finished,
    /// Too many inbound connections are waiting for the identity check.
    #[error("too many inbound connections pending the identity check")]
    TooManyPending,
}

/// Why a punch datagram's source was not dialled as a peer-reflexive
/// candidate ([`Upgrade::handle_peer_reflexive`](crate::Upgrade::handle_peer_reflexive)).
/// Each refusal is counted in the timeline
/// ([`Timeline::peer_reflexive_refused`](crate::record::Timeline::peer_reflexive_refused)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerReflexiveRefused {
    /// No attempt is punching: before the punch, between attempts, or
    /// after the outcome.
    #[error("no attempt is punching")]
    NotPunching,
    /// The source's IP is not the IP of any address the peer's Connect of
    /// this attempt named for that transport. A symmetric NAT keeps its
    /// IP and changes only the port; another IP is a stranger, or a
    /// hostile peer aiming our dials at a third party.
    #[error("not an IP the peer named for this transport")]
    NotPeerIp,
    /// That address was dialled in this upgrade already, or is one the
    /// punch aims at anyway.
    #[error("address already dialled or punched")]
    AlreadyKnown,
    /// We are the QUIC server of this punch: the peer dials us, and the
    /// endpoint accepts its connection from whatever port it arrives.
    #[error("we are the QUIC server of this punch: the peer dials")]
    PeerDials,
    /// The address policy or our sockets refuse the address.
    #[error("refused by the address policy: {0}")]
    Policy(AddrRejection),
    /// This attempt made its
    /// [`MAX_PEER_REFLEXIVE_DIALS`](crate::settings::MAX_PEER_REFLEXIVE_DIALS)
    /// peer-reflexive dials already, or the per-IP or per-upgrade dial
    /// budget is spent.
    #[error("peer-reflexive or dial budget spent")]
    BudgetSpent,
}

/// Why a direct connection was closed before it could win.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DirectRejection {
    /// Not the peer: the TLS certificate the other end presented is not
    /// the one pinned by the peer's `Hello` (a stranger, or a man in the middle).
    IdentityMismatch,
    /// The TLS handshake of the dcutr-rs session
    /// ([`UpgradeBuilder::dcutr_session`](crate::UpgradeBuilder::dcutr_session))
    /// failed before any certificate could be compared (the other end does
    /// not speak TLS, sent no certificate, or could not prove its key).
    HandshakeFailed,
    /// The identity check did not finish in time.
    ConfirmTimeout,
    /// The peer sent bytes where the identity check allows none, or more
    /// than the select byte.
    Oversized,
}

/// Something that happened, for logs, metrics and timelines.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The peer's `Hello` arrived (pinned-TLS identity check).
    HelloReceived,
    /// The unilateral direct dial started, to this many addresses.
    UnilateralStarted {
        /// Number of dials.
        dials: usize,
    },
    /// The unilateral dial failed; hole punching follows.
    UnilateralFailed,
    /// A hole-punch attempt started.
    AttemptStarted {
        /// Attempt number, from 1.
        attempt: u8,
    },
    /// The peer's Connect arrived and was filtered.
    RemoteAddrs {
        /// Attempt number.
        attempt: u8,
        /// What we will dial or spray.
        accepted: Vec<Candidate>,
        /// What we dropped, per reason.
        rejected: RejectionCounts,
    },
    /// The initiator measured the relayed round trip.
    RttMeasured {
        /// Attempt number.
        attempt: u8,
        /// Connect sent to Connect received.
        rtt: Duration,
    },
    /// The initiator sent Sync; it punches at `punch_at`.
    SyncSent {
        /// Attempt number.
        attempt: u8,
        /// When the punch starts (now + rtt/2).
        punch_at: Instant,
    },
    /// The responder received Sync and punches now.
    SyncReceived {
        /// Attempt number.
        attempt: u8,
    },
    /// The punch started: dials issued and spray started.
    Punch {
        /// Attempt number.
        attempt: u8,
        /// Dials issued.
        dials: usize,
        /// Addresses sprayed.
        spray_targets: usize,
    },
    /// A punch datagram of the peer arrived from an address its Connect
    /// did not name (its symmetric NAT gave the punch a fresh port), and
    /// we dial it as a peer-reflexive candidate.
    PeerReflexive {
        /// Attempt number.
        attempt: u8,
        /// The dial made to it.
        id: DirectId,
        /// Where the datagram came from, and the dial goes.
        to: Candidate,
    },
    /// Both sides' NAT behaviours are known and call for a punch other
    /// than the spec's: this attempt runs it (today only the birthday
    /// punch, [`crate::nat::Strategy::Birthday`]).
    StrategyChosen {
        /// Attempt number.
        attempt: u8,
        /// What both behaviours allow.
        strategy: crate::nat::Strategy,
    },
    /// The birthday punch of this attempt started, in this role.
    BirthdayStarted {
        /// Attempt number.
        attempt: u8,
        /// Hard (many fresh sockets) or easy (many probes).
        role: crate::birthday::Role,
        /// Hard side: the easy side's address. Easy side: the hard side's
        /// IP, with port 0.
        peer: SocketAddr,
    },
    /// The birthday punch of this attempt ended.
    BirthdayEnded {
        /// Attempt number.
        attempt: u8,
        /// Met (then, over QUIC, the hard side's dial from the socket
        /// that met follows; over TCP the connection that met is the
        /// attempt's already), exhausted or timed out.
        outcome: crate::birthday::Outcome,
        /// Probes sent (easy side; 0 on the hard side).
        probes_sent: u16,
        /// Fresh sockets opened (hard side; 0 on the easy side).
        sockets_opened: u16,
    },
    /// A dial failed.
    DialFailed {
        /// The dial.
        id: DirectId,
        /// Where it went.
        to: Candidate,
        /// Why.
        error: DialError,
    },
    /// A direct connection was closed before it could win.
    DirectRejected {
        /// The connection.
        id: DirectId,
        /// Its remote address.
        remote: SocketAddr,
        /// Why.
        reason: DirectRejection,
    },
    /// A hole-punch attempt failed.
    AttemptFailed {
        /// Attempt number.
        attempt: u8,
        /// Why.
        reason: AttemptFailure,
    },
    /// The upgrade succeeded. Final.
    Upgraded(Upgraded),
    /// The upgrade failed. Final.
    Failed(Failure),
}

/// The named timers of an upgrade; [`Upgrade::poll_timeout`] says which
/// one it wants to wake for.
///
/// [`Upgrade::poll_timeout`]: crate::Upgrade::poll_timeout
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimerKind {
    /// Waiting for the peer's next message or a stream.
    StepTimeout,
    /// The initiator's wait of rtt/2 between Sync and its punch.
    SyncDelay,
    /// End of the current attempt's direct phase.
    PunchWindow,
    /// The next spray round.
    SprayTick,
    /// End of the unilateral dial.
    Unilateral,
    /// End of the grace period; then the relay closes.
    GracePeriod,
    /// The initiator's QUIC server punch has run for
    /// [`QUIC_CLIENT_FALLBACK`](crate::settings::QUIC_CLIENT_FALLBACK)
    /// plus its round trips with no direct connection: dial its QUIC
    /// targets once as a client too.
    QuicClientFallback,
    /// A dial or identity check of one direct connection times out.
    DirectDeadline,
    /// The birthday punch's next probe, answer copy or deadline.
    Birthday,
}

/// When to call [`Upgrade::handle_timeout`](crate::Upgrade::handle_timeout)
/// next, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout {
    /// The deadline.
    pub at: Instant,
    /// The timer that wants it.
    pub kind: TimerKind,
}

impl Timeout {
    /// Whether this deadline must be met to the millisecond: the driver
    /// then wakes a little early and yields up to it instead of trusting
    /// a runtime timer that rounds up.
    ///
    /// The Sync delay is such a timer: it sets when our punch leaves,
    /// while the peer punches on Sync's arrival, and a late punch hands
    /// the race to the peer's packets, which some NATs then remap.
    #[must_use]
    pub fn is_precise(&self) -> bool {
        self.kind == TimerKind::SyncDelay
    }
}
