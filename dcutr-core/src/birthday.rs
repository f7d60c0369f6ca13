//! The birthday punch, as a Sans-IO sub-machine: one side behind an
//! endpoint-dependent NAT with random port allocation (the **hard** side),
//! the other behind an endpoint-independent one (the **easy** side).
//!
//! Neither side can predict the hard side's next external port, so both
//! make many guesses ([`Strategy::Birthday`](crate::nat::Strategy::Birthday)):
//!
//! * the hard side opens `N` ([`BirthdayConfig::sockets`]) fresh local
//!   sockets and sends one **priming** datagram from each to the easy
//!   side's address; each opens a mapping on its NAT at a random external
//!   port that admits the easy side's address;
//! * the easy side sends `M` ([`BirthdayConfig::probes`]) **probes** from
//!   its one punch socket to the hard side's IP, at ports drawn from the
//!   seed without repetition over the port range, one every
//!   [`BirthdayConfig::probe_interval`];
//! * a probe that lands on an open mapping reaches socket `i`; the hard
//!   side **answers** from it ([`ANSWER_COPIES`] copies) and reports
//!   [`Outcome::Met`]; the answer passes the easy side's filter (it
//!   answers the probe), and the easy side reports `Met` too.
//!
//! With `R` ports ([`EPHEMERAL_PORTS`](crate::nat::EPHEMERAL_PORTS)) the chance to meet is
//! `P = 1 − (1 − N/R)^M` ([`birthday_success`](crate::nat::birthday_success)):
//! the defaults, 256 × 1024, give 98.3 %, and the first hit comes after
//! about `R/N` ≈ 252 probes, 252 ms at the default pacing.
//!
//! The machine owns no socket, clock or randomness: the carrier opens the
//! sockets the [`Transmit`]s name, sends their payloads, feeds back what
//! arrives ([`Birthday::handle_datagram`]) and calls
//! [`Birthday::handle_timeout`] at [`Birthday::poll_timeout`]. Ports come
//! from a ChaCha8 stream seeded by the caller, so the same seed and inputs
//! give byte-identical outputs. The hard side keeps all its sockets open
//! until the outcome; on `Met` only the winning one stays.
//!
//! ## Over TCP
//! With [`BirthdayConfig::tcp`] the same machine punches TCP: every
//! [`Transmit`] is then a **connect** ([`Transmit::transport`] is
//! [`Transport::Tcp`]) instead of a datagram. The hard side's
//! [`DatagramKind::Priming`] transmits are `N` connects from fresh TCP
//! sockets to the easy side's punch address (each SYN opens a mapping);
//! the easy side's [`DatagramKind::Probe`] transmits are `M` connects
//! from its punch socket (port reuse) to random ports of the hard side's
//! IP. A probe's SYN that lands on an open mapping meets a socket in
//! `SYN_SENT`: a TCP simultaneous open, and both connects complete. The
//! carrier reports each completed connect with
//! [`Birthday::handle_connected`]; the first that passes the checks is
//! [`Outcome::Met`]. There are no answers: both ends see the connection.
//!
//! A connect in `SYN_SENT` retransmits its SYN on its own (Linux: after
//! 1 s, then 2 s more, doubling). The carrier closes every connect at
//! its [`Transmit::expires`]: a probe lives [`BirthdayConfig::probe_lifetime`]
//! (default [`TCP_DEFAULT_PROBE_LIFETIME`], below the first retransmission,
//! so a probe is exactly one SYN), a fresh socket until the deadline. At
//! most [`BirthdayConfig::max_in_flight`] probes are unexpired at once
//! (the machine holds the next probe back until one expires), which also
//! bounds the file descriptors a punch takes.
//!
//! ## Validation
//! The easy side probes exactly the IP it is given: pass the hard side's
//! IP as an observer saw it (the relay, or a STUN server), never one the
//! peer merely claims, so a hostile peer cannot point the probes at a
//! third party. A datagram counts only when it comes from the peer's IP,
//! carries this punch's [`BirthdayConfig::token`], is of the kind the role expects, and
//! (easy side) answers a port it probed. Everything else is refused with a
//! typed [`Refusal`] and counted ([`Birthday::refusals`]). The token only
//! tells this punch's datagrams from stray ones; it travels in the clear
//! and authenticates nothing: the handshake of the direct connection on
//! the pair that met does.
//!
//! ## What a hostile peer can aim at a victim
//! The easy side's probes are a port scan of one IP, and the hard side's
//! priming datagrams go to one address, both named by the peer. From the
//! defaults, per punch and per victim IP:
//!
//! | | packets | UDP payload bytes | rate |
//! |---|---|---|---|
//! | easy side (probes) | at most [`DEFAULT_PROBES`] = 1024 | 1024 × [`DATAGRAM_LEN`] = 16 384 | at most [`MAX_PROBE_BURST`] back to back, then one per 1 ms ([`DEFAULT_PROBE_INTERVAL`]) |
//! | hard side (priming) | [`DEFAULT_SOCKETS`] = 256 | 256 × 16 = 4 096 | one burst at start |
//! | hard side (answers) | [`ANSWER_COPIES`] = 3 | 48 | to the prober's own address only |
//!
//! | over TCP, easy side (probe connects) | at most 1024 SYNs, one each: a probe lives [`TCP_DEFAULT_PROBE_LIFETIME`] = 500 ms, below Linux's first SYN retransmission (1 s) | 1024 × 60 = 61 440 bytes on the wire | as above; at most [`TCP_DEFAULT_MAX_IN_FLIGHT`] = 512 alive |
//! | over TCP, hard side (fresh connects) | 256 sockets × at most 3 SYNs (0, 1 s, 3 s, until [`DEFAULT_DEADLINE`]) = 768 | 768 × 60 = 46 080 bytes on the wire | one burst at start, then the kernel's retransmissions |
//!
//! Probes draw distinct ports, so no port of the victim gets more than one
//! probe per punch. A priming datagram that reaches the easy side adds a
//! probe to its source at once, unpaced but inside the same budget of
//! [`BirthdayConfig::probes`], and only to the hard side's IP (it passed
//! the IP check). With IP and UDP headers (28 bytes for IPv4) one punch
//! is at most 1024 × 44 = 45 056 bytes on the wire, over at least
//! 1.023 s.
//!
//! Per minute, the machine alone bounds only the pace: punches run one
//! after another at the default interval send at most about 1000 probes
//! a second, so at most 60 000 probes (2.6 MB on the wire) a minute at one
//! IP. The budgets above the machine (one birthday punch at a time, a
//! cooldown between punches, a per-IP and per-process cap, per the
//! issue's safety rules) must bring that down; with a cooldown of `C`
//! seconds after each punch of at most 1.5 s (probing plus
//! [`ANSWER_GRACE`]) a minute holds at most `60 / (1.5 + C)` punches of
//! 1024 probes each. Whatever the config, one punch is bounded by
//! [`MAX_PROBES`] packets, [`MIN_PROBE_INTERVAL`] pacing and
//! [`MAX_DEADLINE`] in time.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::addr::Transport;

/// Fresh sockets the hard side opens by default: 256.
///
/// `N` of `P = 1 − (1 − N/R)^M`; with 1024 probes, 256 sockets give
/// 98.3 % (Tailscale's published design), and the expected first hit after
/// `R/N` ≈ 252 probes. Doubling N halves the time to the first hit but
/// doubles the file descriptors and NAT mappings one punch takes; 256
/// stays well inside Linux's default soft limit of 1024 descriptors.
pub const DEFAULT_SOCKETS: u16 = 256;

/// Most sockets a config may ask for: 1024.
///
/// A NAT's table and the process's descriptor limit are shared with
/// everything else; 1024 fresh mappings is already a quarter of the
/// simulator's NAT table ([`MAX_PROBES`] is the matching bound on the
/// other side).
pub const MAX_SOCKETS: u16 = 1024;

/// Probes the easy side sends by default: 1024.
///
/// `M` of the formula: 256 × 1024 gives 98.3 % over [`EPHEMERAL_PORTS`](crate::nat::EPHEMERAL_PORTS);
/// the dcutr-sim sweep measures it (its `birthday` module). 1024 probes
/// at [`DEFAULT_PROBE_INTERVAL`] take 1.023 s, inside the 2 s
/// target for the median time to direct.
pub const DEFAULT_PROBES: u16 = 1024;

/// Most probes a config may ask for: 4096.
///
/// 256 × 4096 would already give 1 − 10⁻⁷; past it a punch is mostly a
/// port scan. It also bounds the set of probed ports the easy side keeps
/// (4096 × 2 bytes plus the tree's overhead).
pub const MAX_PROBES: u16 = 4096;

/// Time between two probes by default: 1 ms (1000 probes a second).
///
/// Chosen so [`DEFAULT_PROBES`] fit in about 1 s, leaving half of the 2 s
/// target for the relay round trips before the punch and the handshake
/// after it; the expected first hit, after about 252 probes, comes at
/// about 250 ms. 1000 small datagrams a second is far below what a home
/// uplink or a NAT's table churn notices.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(1);

/// Shortest probe interval a config may ask for: 100 µs (10 000 probes a
/// second), so no config turns a punch into a flood.
pub const MIN_PROBE_INTERVAL: Duration = Duration::from_micros(100);

/// Longest probe interval a config may ask for: 1 s; slower pacing could
/// not finish [`DEFAULT_PROBES`] within any useful deadline.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Draws of a probe port before the easy side stops redrawing ports it
/// already probed and picks among the free ones directly: 8.
///
/// With the default budget at most 1023 of 64 512 ports are taken, so
/// eight misses in a row happen with probability below 10⁻¹⁴; a small
/// range nearly full of probes takes the direct path instead.
const MAX_REDRAWS: u8 = 8;

/// Most probes sent back to back when the caller's timer fired late: 4.
///
/// After that the schedule restarts from the late instant, so a stalled
/// runtime never releases a burst of the probes it missed.
pub const MAX_PROBE_BURST: u8 = 4;

/// How long the easy side waits for an answer after its last probe before
/// it reports [`Outcome::Exhausted`]: 500 ms.
///
/// The answer to the last probe needs one round trip on the direct path;
/// 500 ms covers any terrestrial path with queueing.
pub const ANSWER_GRACE: Duration = Duration::from_millis(500);

/// Whole time one birthday punch may take by default, on either side:
/// 3 s.
///
/// The hard side must keep its mappings open while the easy side probes
/// (1.023 s at the defaults), plus the skew between the two starts (the
/// relay's one-way delay, up to a few hundred ms) and [`ANSWER_GRACE`].
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(3);

/// Longest deadline a config may ask for: 30 s, the longest a punch's
/// mappings are worth holding (UDP mappings live 120 s at least).
pub const MAX_DEADLINE: Duration = Duration::from_secs(30);

/// Over TCP, how long a probe connect lives before the carrier closes it
/// by default: 500 ms.
///
/// A probe that lands needs one round trip on the direct path (our SYN
/// in, the hard side's SYN-ACK back) before its connect completes; 500 ms
/// covers any terrestrial path with queueing. It stays below Linux's
/// initial retransmission timeout (1 s), so a probe is exactly one SYN
/// on the wire.
pub const TCP_DEFAULT_PROBE_LIFETIME: Duration = Duration::from_millis(500);

/// Shortest probe lifetime a config may ask for: 10 ms, about the
/// shortest direct round trip worth punching through two NATs.
pub const TCP_MIN_PROBE_LIFETIME: Duration = Duration::from_millis(10);

/// Longest probe lifetime a config may ask for: 900 ms, still below
/// Linux's initial retransmission timeout of 1 s, so no config makes a
/// probe send a second SYN.
pub const TCP_MAX_PROBE_LIFETIME: Duration = Duration::from_millis(900);

/// Over TCP, probe connects unexpired at once by default: 512.
///
/// The default lifetime over the default interval is 500 probes alive;
/// 512 leaves room for a late timer's burst ([`MAX_PROBE_BURST`]). Each
/// is a file descriptor of the easy side (the carrier raises its limit
/// to fit), and a conntrack entry on its NAT.
pub const TCP_DEFAULT_MAX_IN_FLIGHT: u16 = 512;

/// Most probe connects a config may keep unexpired at once: 1024, as
/// many descriptors as Linux's default soft limit.
pub const TCP_MAX_IN_FLIGHT: u16 = 1024;

/// Copies of the hard side's answer: 3, [`ANSWER_INTERVAL`] apart.
///
/// The answer is the only packet that tells the easy side which port won
/// and no later probe goes to that port again; with 1 % loss three copies
/// all get lost once in a million.
pub const ANSWER_COPIES: u8 = 3;

/// Time between copies of an answer: 20 ms, longer than a burst of loss
/// on a busy queue, short next to the handshake that follows.
pub const ANSWER_INTERVAL: Duration = Duration::from_millis(20);

/// Bytes of every datagram of the punch (priming, probe, answer): 16.
///
/// `"DCBP"`, a version byte, the kind, a 16-bit index (socket or probe
/// number) and the 64-bit token of the punch. This is the most a probe
/// carries; [`Birthday::handle_datagram`] refuses any other length.
pub const DATAGRAM_LEN: usize = 16;

/// First bytes of every datagram.
const MAGIC: [u8; 4] = *b"DCBP";
/// Version of the datagram layout.
const VERSION: u8 = 1;

/// Whether `datagram` looks like a datagram of a birthday punch
/// ([`DATAGRAM_LEN`] bytes with this module's magic), so a carrier can
/// take it out of its QUIC socket's traffic and pass it to the core. It
/// proves nothing about the sender: the machine checks IP and token.
#[must_use]
pub fn is_birthday_datagram(datagram: &[u8]) -> bool {
    datagram.len() == DATAGRAM_LEN && datagram.starts_with(&MAGIC)
}

/// Which side of the birthday punch this machine plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Behind the endpoint-dependent, random NAT: opens many sockets.
    Hard,
    /// Behind the endpoint-independent NAT: probes many ports.
    Easy,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Hard => "hard",
            Role::Easy => "easy",
        })
    }
}

/// A local socket of the punch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Local {
    /// The easy side's one punch socket (the one its peer knows).
    Punch,
    /// The hard side's fresh socket number `i`, `0 ≤ i < sockets`.
    Fresh(u16),
}

impl fmt::Display for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Local::Punch => f.write_str("punch socket"),
            Local::Fresh(i) => write!(f, "fresh socket {i}"),
        }
    }
}

/// What a datagram of the punch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DatagramKind {
    /// Hard side: the first datagram of a fresh socket, sent to open its
    /// NAT mapping. Only our own NAT needs to see it: a carrier that can
    /// should send it with a low TTL.
    Priming,
    /// Easy side: a guess at one port of the hard side.
    Probe,
    /// Hard side: the reply to a probe, from the socket it reached.
    Answer,
}

impl DatagramKind {
    fn code(self) -> u8 {
        match self {
            DatagramKind::Priming => 1,
            DatagramKind::Probe => 2,
            DatagramKind::Answer => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(DatagramKind::Priming),
            2 => Some(DatagramKind::Probe),
            3 => Some(DatagramKind::Answer),
            _ => None,
        }
    }
}

/// One datagram for the carrier to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Transmit {
    /// The socket to send from. A [`DatagramKind::Priming`] transmit is
    /// the first of its socket: open (bind) it first.
    pub local: Local,
    /// Where to.
    pub destination: SocketAddr,
    /// What it is.
    pub kind: DatagramKind,
    /// The bytes to send ([`DATAGRAM_LEN`]); over TCP unused (a connect
    /// carries no payload).
    pub payload: [u8; DATAGRAM_LEN],
    /// [`Transport::Quic`]: send `payload` as a UDP datagram.
    /// [`Transport::Tcp`]: a connect from `local` to `destination`
    /// (from [`Local::Punch`], the TCP punch socket with port reuse; from
    /// [`Local::Fresh`], a new TCP socket at an ephemeral port), reported
    /// with [`Birthday::handle_connected`] when it completes.
    pub transport: Transport,
    /// Over TCP: close the connect at this instant unless it completed
    /// (its SYN retransmissions end with it). `None` over QUIC.
    pub expires: Option<Instant>,
}

/// How a birthday punch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A probe met an open mapping: `local` talks to `remote` through
    /// both NATs. The hard side closes every other fresh socket.
    Met {
        /// Our socket that met.
        local: Local,
        /// The peer's address as it reached us.
        remote: SocketAddr,
    },
    /// Easy side: every probe sent and no answer within [`ANSWER_GRACE`].
    Exhausted,
    /// The deadline passed without a meeting.
    TimedOut,
}

/// The parameters of one birthday punch; both sides use the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct BirthdayConfig {
    /// Fresh sockets of the hard side, `N`: 1 to [`MAX_SOCKETS`],
    /// default [`DEFAULT_SOCKETS`].
    pub sockets: u16,
    /// Probes of the easy side, `M`: 1 to [`MAX_PROBES`] and at most the
    /// port range, default [`DEFAULT_PROBES`].
    pub probes: u16,
    /// Time between probes: [`MIN_PROBE_INTERVAL`] to
    /// [`MAX_PROBE_INTERVAL`], default [`DEFAULT_PROBE_INTERVAL`].
    pub probe_interval: Duration,
    /// Whole time of the punch, from [`Birthday::start`]: long enough for
    /// every probe and [`ANSWER_GRACE`], at most [`MAX_DEADLINE`];
    /// default [`DEFAULT_DEADLINE`].
    pub deadline: Duration,
    /// Lowest port the easy side probes (default 1024).
    pub first_port: u16,
    /// Highest port the easy side probes (default 65535): with
    /// `first_port`, the `R` = [`EPHEMERAL_PORTS`](crate::nat::EPHEMERAL_PORTS) of the formula.
    pub last_port: u16,
    /// A value both sides agree on for this punch (from the relayed
    /// exchange); datagrams with another token are refused.
    pub token: u64,
    /// Datagrams ([`Transport::Quic`], the default) or connects
    /// ([`Transport::Tcp`], see [the module](self#over-tcp)).
    pub transport: Transport,
    /// Over TCP, how long each probe connect lives:
    /// [`TCP_MIN_PROBE_LIFETIME`] to [`TCP_MAX_PROBE_LIFETIME`], default
    /// [`TCP_DEFAULT_PROBE_LIFETIME`]. Unused over QUIC.
    pub probe_lifetime: Duration,
    /// Over TCP, most probe connects unexpired at once: 1 to
    /// [`TCP_MAX_IN_FLIGHT`], and at least `probe_lifetime /
    /// probe_interval` so the cap never slows the nominal pacing; default
    /// [`TCP_DEFAULT_MAX_IN_FLIGHT`]. Unused over QUIC.
    pub max_in_flight: u16,
}

impl BirthdayConfig {
    /// The defaults, with the punch's shared `token`.
    #[must_use]
    pub const fn new(token: u64) -> Self {
        BirthdayConfig {
            sockets: DEFAULT_SOCKETS,
            probes: DEFAULT_PROBES,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            deadline: DEFAULT_DEADLINE,
            first_port: 1024,
            last_port: 65535,
            token,
            transport: Transport::Quic,
            probe_lifetime: TCP_DEFAULT_PROBE_LIFETIME,
            max_in_flight: TCP_DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// The defaults over TCP ([the module](self#over-tcp)), with the
    /// punch's shared `token`: the same `N`, `M`, pacing and deadline as
    /// over QUIC, probes living [`TCP_DEFAULT_PROBE_LIFETIME`], at most
    /// [`TCP_DEFAULT_MAX_IN_FLIGHT`] at once.
    #[must_use]
    pub const fn tcp(token: u64) -> Self {
        let mut config = BirthdayConfig::new(token);
        config.transport = Transport::Tcp;
        config
    }

    /// How long the easy side waits after its last probe: over QUIC
    /// [`ANSWER_GRACE`] for the answer, over TCP the probe's lifetime.
    #[must_use]
    pub fn grace(&self) -> Duration {
        match self.transport {
            Transport::Quic => ANSWER_GRACE,
            Transport::Tcp => self.probe_lifetime,
        }
    }

    /// Ports in `first_port..=last_port` (0 when empty).
    #[must_use]
    pub fn range(&self) -> u32 {
        if self.first_port > self.last_port {
            0
        } else {
            u32::from(self.last_port) - u32::from(self.first_port) + 1
        }
    }

    /// How long the easy side probes: `(probes − 1) × probe_interval`.
    #[must_use]
    pub fn probing_time(&self) -> Duration {
        self.probe_interval
            .saturating_mul(u32::from(self.probes.saturating_sub(1)))
    }

    /// Checks every field against its bounds.
    ///
    /// # Errors
    /// The first [`BirthdayError`] found.
    pub fn validate(&self) -> Result<(), BirthdayError> {
        if self.sockets == 0 || self.sockets > MAX_SOCKETS {
            return Err(BirthdayError::Sockets(self.sockets));
        }
        if self.first_port == 0 || self.first_port > self.last_port {
            return Err(BirthdayError::PortRange {
                first: self.first_port,
                last: self.last_port,
            });
        }
        if self.probes == 0 || self.probes > MAX_PROBES || u32::from(self.probes) > self.range() {
            return Err(BirthdayError::Probes(self.probes));
        }
        if !(MIN_PROBE_INTERVAL..=MAX_PROBE_INTERVAL).contains(&self.probe_interval) {
            return Err(BirthdayError::ProbeInterval(self.probe_interval));
        }
        if self.transport == Transport::Tcp {
            if !(TCP_MIN_PROBE_LIFETIME..=TCP_MAX_PROBE_LIFETIME).contains(&self.probe_lifetime) {
                return Err(BirthdayError::ProbeLifetime(self.probe_lifetime));
            }
            let alive = self
                .probe_lifetime
                .as_nanos()
                .div_ceil(self.probe_interval.as_nanos().max(1));
            if self.max_in_flight == 0
                || self.max_in_flight > TCP_MAX_IN_FLIGHT
                || u128::from(self.max_in_flight) < alive
            {
                return Err(BirthdayError::InFlight(self.max_in_flight));
            }
        }
        let needed = self.probing_time().saturating_add(self.grace());
        if self.deadline < needed || self.deadline > MAX_DEADLINE {
            return Err(BirthdayError::Deadline {
                deadline: self.deadline,
                needed,
            });
        }
        Ok(())
    }
}

impl Default for BirthdayConfig {
    fn default() -> Self {
        BirthdayConfig::new(0)
    }
}

/// Why a birthday punch cannot be set up or started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BirthdayError {
    /// `sockets` is 0 or above [`MAX_SOCKETS`].
    #[error("{0} sockets: must be 1 to {MAX_SOCKETS}")]
    Sockets(u16),
    /// `probes` is 0, above [`MAX_PROBES`] or above the port range.
    #[error("{0} probes: must be 1 to {MAX_PROBES} and at most the port range")]
    Probes(u16),
    /// The probe interval is outside
    /// [`MIN_PROBE_INTERVAL`]..=[`MAX_PROBE_INTERVAL`].
    #[error("probe interval {0:?} out of bounds")]
    ProbeInterval(Duration),
    /// The deadline is shorter than the probing plus [`ANSWER_GRACE`], or
    /// above [`MAX_DEADLINE`].
    #[error("deadline {deadline:?}: needs at least {needed:?} and at most {MAX_DEADLINE:?}")]
    Deadline {
        /// The deadline asked for.
        deadline: Duration,
        /// What the probes need.
        needed: Duration,
    },
    /// The port range is empty or starts at 0.
    #[error("port range {first}..={last} is empty or starts at 0")]
    PortRange {
        /// Its first port.
        first: u16,
        /// Its last port.
        last: u16,
    },
    /// The peer's address is unspecified, multicast or broadcast, or
    /// (hard side) has port 0.
    #[error("peer address {0} cannot be punched")]
    PeerAddress(SocketAddr),
    /// Over TCP, the probe lifetime is outside
    /// [`TCP_MIN_PROBE_LIFETIME`]..=[`TCP_MAX_PROBE_LIFETIME`].
    #[error("probe lifetime {0:?} out of bounds")]
    ProbeLifetime(Duration),
    /// Over TCP, `max_in_flight` is 0, above [`TCP_MAX_IN_FLIGHT`], or
    /// below the probes one lifetime holds at the configured pacing.
    #[error(
        "{0} probes in flight: must be 1 to {TCP_MAX_IN_FLIGHT} and hold one lifetime's probes"
    )]
    InFlight(u16),
    /// [`Birthday::start`] was called twice.
    #[error("already started")]
    AlreadyStarted,
}

/// Why a datagram did not count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Before [`Birthday::start`].
    #[error("not started")]
    NotStarted,
    /// After the outcome.
    #[error("already finished")]
    Finished,
    /// From an IP other than the peer's.
    #[error("from {from}, not the peer's IP {expected}")]
    WrongIp {
        /// The sender.
        from: SocketAddr,
        /// The peer's IP.
        expected: IpAddr,
    },
    /// On a socket this role does not have (or has not opened yet).
    #[error("on {0}, which this side does not have open")]
    UnknownSocket(Local),
    /// Not a datagram of the punch (length, magic, version or kind).
    #[error("not a birthday datagram")]
    Malformed,
    /// A datagram of another punch.
    #[error("token of another punch")]
    WrongToken,
    /// A kind this role never receives (the hard side only takes probes,
    /// the easy side answers and priming).
    #[error("unexpected {0:?}")]
    UnexpectedKind(DatagramKind),
    /// Easy side: an answer (or TCP connection) from a port it never
    /// probed; hard side over TCP: a connection to a port other than the
    /// easy side's.
    #[error("port {0} was never probed or connected to")]
    NotProbed(u16),
    /// A datagram in a TCP punch, or a TCP connection in a QUIC one.
    #[error("not of this punch's transport")]
    WrongTransport,
    /// Easy side: a priming datagram from a port already probed, or
    /// with the probe budget spent; it adds no probe.
    #[error("priming from port {0} adds no probe (already probed, or budget spent)")]
    Redundant(u16),
}

/// How many datagrams were refused, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RefusalCounts {
    /// [`Refusal::NotStarted`] and [`Refusal::Finished`].
    pub not_running: u32,
    /// [`Refusal::WrongIp`].
    pub wrong_ip: u32,
    /// [`Refusal::UnknownSocket`].
    pub unknown_socket: u32,
    /// [`Refusal::Malformed`] and [`Refusal::WrongToken`].
    pub malformed: u32,
    /// [`Refusal::UnexpectedKind`], [`Refusal::NotProbed`],
    /// [`Refusal::Redundant`] and [`Refusal::WrongTransport`].
    pub unexpected: u32,
}

impl RefusalCounts {
    /// Every refusal.
    #[must_use]
    pub fn total(&self) -> u32 {
        self.not_running
            .saturating_add(self.wrong_ip)
            .saturating_add(self.unknown_socket)
            .saturating_add(self.malformed)
            .saturating_add(self.unexpected)
    }

    fn count(&mut self, r: Refusal) {
        let slot = match r {
            Refusal::NotStarted | Refusal::Finished => &mut self.not_running,
            Refusal::WrongIp { .. } => &mut self.wrong_ip,
            Refusal::UnknownSocket(_) => &mut self.unknown_socket,
            Refusal::Malformed | Refusal::WrongToken => &mut self.malformed,
            Refusal::UnexpectedKind(_)
            | Refusal::NotProbed(_)
            | Refusal::Redundant(_)
            | Refusal::WrongTransport => &mut self.unexpected,
        };
        *slot = slot.saturating_add(1);
    }
}

/// What a counted datagram did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Accepted {
    /// It met: the outcome is [`Outcome::Met`] now.
    Met,
    /// Easy side: a priming datagram got through our NAT (its filter is
    /// open); a probe to its source is queued, and the answer will meet.
    Reflexive,
}

/// The peer: the easy side's address (hard role) or the hard side's IP
/// (easy role).
#[derive(Clone, Copy, Debug)]
enum Peer {
    Easy(SocketAddr),
    Hard(IpAddr),
}

/// One birthday punch, hard or easy side. See the [module](self).
#[derive(Clone, Debug)]
pub struct Birthday {
    config: BirthdayConfig,
    peer: Peer,
    rng: ChaCha8Rng,
    started: Option<Instant>,
    outcome: Option<Outcome>,
    queue: VecDeque<Transmit>,
    /// Hard side: fresh sockets opened so far.
    opened: u16,
    /// Hard side, after a meeting: answer copies left and when the next
    /// one goes.
    answers: Option<(u8, Instant, Transmit)>,
    /// Easy side: probes sent (drawn or reflexive), and the ports they
    /// went to.
    sent: u16,
    probed: BTreeSet<u16>,
    next_probe: Option<Instant>,
    /// Easy side: when the last probe went out.
    last_probe: Option<Instant>,
    /// Easy side over TCP: when each unexpired probe connect expires,
    /// oldest first; at most [`BirthdayConfig::max_in_flight`].
    in_flight: VecDeque<Instant>,
    refusals: RefusalCounts,
}

/// `t + d`, or `t` itself where an `Instant` cannot hold the sum (a
/// caller's clock at the end of its range): never a panic.
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

fn unpunchable(ip: IpAddr) -> bool {
    ip.is_unspecified()
        || ip.is_multicast()
        || match ip {
            IpAddr::V4(v4) => v4.is_broadcast(),
            IpAddr::V6(_) => false,
        }
}

impl Birthday {
    /// The hard side of a punch towards the easy side's `easy` address.
    ///
    /// # Errors
    /// An invalid `config` ([`BirthdayConfig::validate`]), or an `easy`
    /// address that is unspecified, multicast, broadcast or port 0
    /// ([`BirthdayError::PeerAddress`]).
    pub fn hard(config: BirthdayConfig, easy: SocketAddr) -> Result<Self, BirthdayError> {
        config.validate()?;
        if unpunchable(easy.ip()) || easy.port() == 0 {
            return Err(BirthdayError::PeerAddress(easy));
        }
        Ok(Self::with(config, Peer::Easy(easy), [0; 32]))
    }

    /// The easy side of a punch towards the hard side's IP `hard`, with
    /// the ports to probe drawn from `seed`.
    ///
    /// # Errors
    /// An invalid `config` ([`BirthdayConfig::validate`]), or a `hard`
    /// IP that is unspecified, multicast or broadcast
    /// ([`BirthdayError::PeerAddress`]).
    pub fn easy(
        config: BirthdayConfig,
        hard: IpAddr,
        seed: [u8; 32],
    ) -> Result<Self, BirthdayError> {
        config.validate()?;
        if unpunchable(hard) {
            return Err(BirthdayError::PeerAddress(SocketAddr::new(hard, 0)));
        }
        Ok(Self::with(config, Peer::Hard(hard), seed))
    }

    fn with(config: BirthdayConfig, peer: Peer, seed: [u8; 32]) -> Self {
        Birthday {
            config,
            peer,
            rng: ChaCha8Rng::from_seed(seed),
            started: None,
            outcome: None,
            queue: VecDeque::new(),
            opened: 0,
            answers: None,
            sent: 0,
            probed: BTreeSet::new(),
            next_probe: None,
            last_probe: None,
            in_flight: VecDeque::new(),
            refusals: RefusalCounts::default(),
        }
    }

    /// Which side this is.
    #[must_use]
    pub fn role(&self) -> Role {
        match self.peer {
            Peer::Easy(_) => Role::Hard,
            Peer::Hard(_) => Role::Easy,
        }
    }

    /// The config.
    #[must_use]
    pub fn config(&self) -> &BirthdayConfig {
        &self.config
    }

    /// Starts the punch at `now`: the hard side queues one priming
    /// datagram per fresh socket; the easy side its first probe.
    ///
    /// # Errors
    /// [`BirthdayError::AlreadyStarted`] on a second call.
    pub fn start(&mut self, now: Instant) -> Result<(), BirthdayError> {
        if self.started.is_some() {
            return Err(BirthdayError::AlreadyStarted);
        }
        self.started = Some(now);
        match self.peer {
            Peer::Easy(easy) => {
                let expires = later(now, self.config.deadline);
                for i in 0..self.config.sockets {
                    let mut t = self.transmit(Local::Fresh(i), easy, DatagramKind::Priming, i);
                    if t.transport == Transport::Tcp {
                        t.expires = Some(expires);
                    }
                    self.queue.push_back(t);
                }
                self.opened = self.config.sockets;
                tracing::debug!(sockets = self.opened, %easy, "birthday punch: hard side primes");
            }
            Peer::Hard(ip) => {
                self.next_probe = Some(now);
                tracing::debug!(probes = self.config.probes, %ip, "birthday punch: easy side probes");
                self.probe_due(now);
            }
        }
        Ok(())
    }

    fn transmit(
        &self,
        local: Local,
        destination: SocketAddr,
        kind: DatagramKind,
        index: u16,
    ) -> Transmit {
        let mut payload = [0u8; DATAGRAM_LEN];
        payload[..4].copy_from_slice(&MAGIC);
        payload[4] = VERSION;
        payload[5] = kind.code();
        payload[6..8].copy_from_slice(&index.to_be_bytes());
        payload[8..].copy_from_slice(&self.config.token.to_be_bytes());
        Transmit {
            local,
            destination,
            kind,
            payload,
            transport: self.config.transport,
            expires: None,
        }
    }

    /// A port of the range not probed yet, uniformly among those left.
    ///
    /// Draws over the whole range and redraws a port already probed
    /// (at most [`MAX_PROBES`] of at least as many ports are taken, so a
    /// draw is rarely wasted); after [`MAX_REDRAWS`] misses it takes the
    /// k-th free port instead, which is as uniform and always ends.
    /// Reflexive probes may have gone to ports outside the range; only
    /// those inside count as taken.
    fn draw_port(&mut self) -> Option<u16> {
        let (first, last) = (self.config.first_port, self.config.last_port);
        let range = self.config.range();
        for _ in 0..MAX_REDRAWS {
            let port = u16::try_from(u32::from(first) + self.rng.random_range(0..range)).ok()?;
            if !self.probed.contains(&port) {
                return Some(port);
            }
        }
        let inside = self.probed.range(first..=last);
        let taken = u32::try_from(inside.clone().count()).unwrap_or(u32::MAX);
        let left = range.saturating_sub(taken);
        if left == 0 {
            return None;
        }
        // The k-th free port, k uniform: walk the probed ports of the
        // range (sorted) to skip the taken ones.
        let mut port = u32::from(first) + self.rng.random_range(0..left);
        for p in inside {
            if u32::from(*p) <= port {
                port += 1;
            } else {
                break;
            }
        }
        u16::try_from(port).ok()
    }

    /// Sends the probes due at `now`, at most [`MAX_PROBE_BURST`].
    fn probe_due(&mut self, now: Instant) {
        let Peer::Hard(ip) = self.peer else { return };
        let mut burst = 0;
        while let Some(at) = self.next_probe {
            if at > now || self.outcome.is_some() {
                break;
            }
            if burst == MAX_PROBE_BURST {
                // Late: restart the schedule from now instead of catching up.
                self.next_probe = Some(later(now, self.config.probe_interval));
                break;
            }
            if self.sent >= self.config.probes {
                self.next_probe = None;
                break;
            }
            if self.in_flight_full(now) {
                // Held back until the oldest probe connect expires
                // (`poll_timeout`); the schedule resumes from then.
                break;
            }
            let Some(port) = self.draw_port() else {
                self.next_probe = None;
                break;
            };
            self.send_probe(now, SocketAddr::new(ip, port));
            burst += 1;
            self.next_probe = if self.sent < self.config.probes {
                Some(later(at, self.config.probe_interval))
            } else {
                None
            };
        }
    }

    /// Over TCP: drops the expired probe connects and tells whether
    /// [`BirthdayConfig::max_in_flight`] are still alive.
    fn in_flight_full(&mut self, now: Instant) -> bool {
        if self.config.transport != Transport::Tcp {
            return false;
        }
        while self.in_flight.front().is_some_and(|at| *at <= now) {
            self.in_flight.pop_front();
        }
        self.in_flight.len() >= usize::from(self.config.max_in_flight)
    }

    /// When the next probe may go: its slot, or later while
    /// [`BirthdayConfig::max_in_flight`] probe connects are alive.
    fn next_probe_at(&self) -> Option<Instant> {
        let at = self.next_probe?;
        let full = self.config.transport == Transport::Tcp
            && self.in_flight.len() >= usize::from(self.config.max_in_flight);
        match (full, self.in_flight.front()) {
            (true, Some(oldest)) => Some(at.max(*oldest)),
            _ => Some(at),
        }
    }

    fn send_probe(&mut self, now: Instant, to: SocketAddr) {
        self.probed.insert(to.port());
        let mut t = self.transmit(Local::Punch, to, DatagramKind::Probe, self.sent);
        if t.transport == Transport::Tcp {
            let expires = later(now, self.config.probe_lifetime);
            t.expires = Some(expires);
            self.in_flight.push_back(expires);
        }
        self.queue.push_back(t);
        self.sent += 1;
        self.last_probe = Some(now);
    }

    /// The next datagram to send, in order.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.queue.pop_front()
    }

    /// When [`Birthday::handle_timeout`] must be called next; `None` once
    /// nothing is left to do (or before [`Birthday::start`]).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let start = self.started?;
        let answer = self.answers.map(|(_, at, _)| at);
        if self.outcome.is_some() {
            return answer;
        }
        let deadline = later(start, self.config.deadline);
        let grace = match (self.next_probe, self.last_probe) {
            (None, Some(last)) => Some(later(last, self.config.grace())),
            _ => None,
        };
        [self.next_probe_at(), grace, Some(deadline)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time passed: sends due probes and answer copies, ends the punch
    /// at its deadline or (easy side) after the last probe's grace.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(start) = self.started else { return };
        if let Some((left, at, t)) = self.answers
            && now >= at
        {
            self.queue.push_back(t);
            self.answers = (left > 1).then(|| (left - 1, later(now, ANSWER_INTERVAL), t));
        }
        if self.outcome.is_some() {
            return;
        }
        if now >= later(start, self.config.deadline) {
            self.finish(Outcome::TimedOut);
            return;
        }
        self.probe_due(now);
        if self.next_probe.is_none()
            && self.role() == Role::Easy
            && self
                .last_probe
                .is_some_and(|last| now >= later(last, self.config.grace()))
        {
            self.finish(Outcome::Exhausted);
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        tracing::debug!(?outcome, sent = self.sent, role = %self.role(), "birthday punch ended");
        self.outcome = Some(outcome);
        self.next_probe = None;
    }

    /// A datagram arrived on `local` from `from` at `now`.
    ///
    /// # Errors
    /// The [`Refusal`] when it does not count; each is counted in
    /// [`Birthday::refusals`] and changes nothing else.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: Local,
        from: SocketAddr,
        payload: &[u8],
    ) -> Result<Accepted, Refusal> {
        let verdict = self.accept(now, local, from, payload);
        if let Err(reason) = verdict {
            tracing::debug!(%reason, %from, %local, "birthday punch refused a datagram");
            self.refusals.count(reason);
        }
        verdict
    }

    fn accept(
        &mut self,
        now: Instant,
        local: Local,
        from: SocketAddr,
        payload: &[u8],
    ) -> Result<Accepted, Refusal> {
        if self.started.is_none() {
            return Err(Refusal::NotStarted);
        }
        if self.outcome.is_some() {
            return Err(Refusal::Finished);
        }
        if self.config.transport != Transport::Quic {
            return Err(Refusal::WrongTransport);
        }
        let expected = match self.peer {
            Peer::Easy(a) => a.ip(),
            Peer::Hard(ip) => ip,
        };
        if from.ip() != expected {
            return Err(Refusal::WrongIp { from, expected });
        }
        match (self.peer, local) {
            (Peer::Easy(_), Local::Fresh(i)) if i < self.opened => {}
            (Peer::Hard(_), Local::Punch) => {}
            _ => return Err(Refusal::UnknownSocket(local)),
        }
        let kind = self.parse(payload)?;
        match (self.peer, kind) {
            (Peer::Easy(_), DatagramKind::Probe) => {
                let Local::Fresh(i) = local else {
                    return Err(Refusal::UnknownSocket(local));
                };
                let answer = self.transmit(local, from, DatagramKind::Answer, i);
                self.queue.push_back(answer);
                self.answers = (ANSWER_COPIES > 1)
                    .then(|| (ANSWER_COPIES - 1, later(now, ANSWER_INTERVAL), answer));
                self.finish(Outcome::Met {
                    local,
                    remote: from,
                });
                Ok(Accepted::Met)
            }
            (Peer::Hard(_), DatagramKind::Answer) => {
                if !self.probed.contains(&from.port()) {
                    return Err(Refusal::NotProbed(from.port()));
                }
                self.finish(Outcome::Met {
                    local,
                    remote: from,
                });
                Ok(Accepted::Met)
            }
            (Peer::Hard(_), DatagramKind::Priming) => {
                // Our filter let the hard side's mapping in: probe it
                // directly, within the same budget, once.
                if self.probed.contains(&from.port()) || self.sent >= self.config.probes {
                    return Err(Refusal::Redundant(from.port()));
                }
                self.send_probe(now, from);
                if self.sent >= self.config.probes {
                    self.next_probe = None;
                }
                Ok(Accepted::Reflexive)
            }
            _ => Err(Refusal::UnexpectedKind(kind)),
        }
    }

    /// Over TCP: the connect from `local` to `remote` completed at `now`
    /// (a simultaneous open, or the peer's listener took it). The first
    /// that passes the checks is [`Outcome::Met`]: the carrier keeps that
    /// connection and closes every other connect of the punch.
    ///
    /// # Errors
    /// The [`Refusal`] when it does not count (not a TCP punch, not
    /// running, another IP, a socket this side never opened, a port never
    /// connected to); counted in [`Birthday::refusals`]. The carrier
    /// closes a refused connection.
    pub fn handle_connected(
        &mut self,
        now: Instant,
        local: Local,
        remote: SocketAddr,
    ) -> Result<Accepted, Refusal> {
        let verdict = self.accept_connected(now, local, remote);
        if let Err(reason) = verdict {
            tracing::debug!(%reason, %remote, %local, "birthday punch refused a connection");
            self.refusals.count(reason);
        }
        verdict
    }

    fn accept_connected(
        &mut self,
        _now: Instant,
        local: Local,
        remote: SocketAddr,
    ) -> Result<Accepted, Refusal> {
        if self.started.is_none() {
            return Err(Refusal::NotStarted);
        }
        if self.outcome.is_some() {
            return Err(Refusal::Finished);
        }
        if self.config.transport != Transport::Tcp {
            return Err(Refusal::WrongTransport);
        }
        let expected = match self.peer {
            Peer::Easy(a) => a.ip(),
            Peer::Hard(ip) => ip,
        };
        if remote.ip() != expected {
            return Err(Refusal::WrongIp {
                from: remote,
                expected,
            });
        }
        match (self.peer, local) {
            (Peer::Easy(easy), Local::Fresh(i)) if i < self.opened => {
                if remote.port() != easy.port() {
                    return Err(Refusal::NotProbed(remote.port()));
                }
            }
            (Peer::Hard(_), Local::Punch) => {
                if !self.probed.contains(&remote.port()) {
                    return Err(Refusal::NotProbed(remote.port()));
                }
            }
            _ => return Err(Refusal::UnknownSocket(local)),
        }
        self.finish(Outcome::Met { local, remote });
        Ok(Accepted::Met)
    }

    fn parse(&self, payload: &[u8]) -> Result<DatagramKind, Refusal> {
        if payload.len() != DATAGRAM_LEN || payload[..4] != MAGIC || payload[4] != VERSION {
            return Err(Refusal::Malformed);
        }
        let kind = DatagramKind::from_code(payload[5]).ok_or(Refusal::Malformed)?;
        let mut token = [0u8; 8];
        token.copy_from_slice(&payload[8..]);
        if u64::from_be_bytes(token) != self.config.token {
            return Err(Refusal::WrongToken);
        }
        Ok(kind)
    }

    /// How it ended, once it has.
    #[must_use]
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// Probes sent so far (easy side), drawn or reflexive; never above
    /// [`BirthdayConfig::probes`].
    #[must_use]
    pub fn probes_sent(&self) -> u16 {
        self.sent
    }

    /// Fresh sockets opened (hard side); never above
    /// [`BirthdayConfig::sockets`].
    #[must_use]
    pub fn sockets_opened(&self) -> u16 {
        self.opened
    }

    /// Datagrams refused so far, by reason.
    #[must_use]
    pub fn refusals(&self) -> RefusalCounts {
        self.refusals
    }

    /// Transmits queued and not yet polled. At most
    /// [`BirthdayConfig::sockets`] (hard side, plus [`ANSWER_COPIES`]) or
    /// [`BirthdayConfig::probes`] (easy side), however the caller polls.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}
