//! The `arbitrary` inputs of the targets, and their mapping to the plain
//! harness types.
//!
//! Addresses come mostly from a small pool so that the fuzzer easily names
//! the same address in a Connect, a dial result and an inbound connection;
//! raw bytes and arbitrary IPs cover the rest.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use dcutr_core::birthday::Local;
use dcutr_core::nat::{Allocation, Filtering, Mapping, NatBehaviour};
use dcutr_core::settings::FINGERPRINT_LEN;
use dcutr_core::wire::NatWire;
use dcutr_core::{AddressPolicy, Candidate, Config, DialError, Dialable, Side, Transport};
use dcutr_sim::{Block, INITIATOR, Nat, Protocol, RESPONDER};

use crate::driver::{BirthdayPayload, DirectPayload, Frame, Input, Setup, Step, Target};
use crate::world::{Stranger, World};

/// An IP address: from a pool of interesting ones, or any.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum IpIn {
    /// One of a few public addresses.
    Public(u8),
    /// One of a few private, loopback, multicast, broadcast or reserved
    /// addresses.
    Special(u8),
    /// Any IPv4 address.
    V4([u8; 4]),
    /// Any IPv6 address.
    V6([u8; 16]),
}

const PUBLIC: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
    IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0x4860, 0, 0, 0, 0, 0, 1)),
];

const SPECIAL: [IpAddr; 12] = [
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)),
    IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1)),
    IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)),
    IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(255, 255, 255, 255)),
    IpAddr::V4(Ipv4Addr::new(240, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0a00, 1)),
];

impl IpIn {
    fn ip(self) -> IpAddr {
        match self {
            IpIn::Public(i) => PUBLIC[usize::from(i) % PUBLIC.len()],
            IpIn::Special(i) => SPECIAL[usize::from(i) % SPECIAL.len()],
            IpIn::V4(b) => IpAddr::from(b),
            IpIn::V6(b) => IpAddr::from(b),
        }
    }
}

/// A candidate address.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct AddrIn {
    quic: bool,
    ip: IpIn,
    /// Mostly 4001 or 5001; any port (0 included) otherwise.
    port: PortIn,
}

/// A port.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum PortIn {
    /// 4001.
    A,
    /// 5001.
    B,
    /// Any.
    Any(u16),
}

impl AddrIn {
    /// The candidate.
    #[must_use]
    pub fn candidate(self) -> Candidate {
        let port = match self.port {
            PortIn::A => 4001,
            PortIn::B => 5001,
            PortIn::Any(p) => p,
        };
        let addr = SocketAddr::new(self.ip.ip(), port);
        if self.quic {
            Candidate::quic(addr)
        } else {
            Candidate::tcp(addr)
        }
    }
}

/// One `ObsAddrs` entry.
#[derive(Arbitrary, Clone, Debug)]
pub enum ObsAddrIn {
    /// A well-formed candidate.
    Addr(AddrIn),
    /// A candidate with a suffix that makes it relayed or unsupported.
    Suffixed(AddrIn, u8),
    /// Any bytes.
    Raw(Vec<u8>),
}

impl ObsAddrIn {
    fn bytes(&self) -> Vec<u8> {
        match self {
            ObsAddrIn::Addr(a) => a.candidate().to_multiaddr().to_vec(),
            ObsAddrIn::Suffixed(a, kind) => {
                let mut v = a.candidate().to_multiaddr().to_vec();
                // Multiaddr codes: p2p-circuit (0x0122), ws (0x01dd),
                // a bare p2p with a 2-byte garbage id, quic (0x01cc).
                let suffix: &[u8] = match kind % 4 {
                    0 => &[0xa2, 0x02],
                    1 => &[0xdd, 0x03],
                    2 => &[0xa5, 0x03, 0x02, 0x00, 0x00],
                    _ => &[0xcc, 0x03],
                };
                v.extend_from_slice(suffix);
                v
            }
            ObsAddrIn::Raw(b) => b.clone(),
        }
    }
}

/// A NAT behaviour, declared: the mapping and allocation decide the
/// strategy (random against independent runs the birthday punch).
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct NatIn {
    dependent: bool,
    allocation: u8,
    delta: i8,
}

impl NatIn {
    /// The behaviour.
    #[must_use]
    pub fn behaviour(self) -> NatBehaviour {
        let mapping = if self.dependent {
            Mapping::EndpointDependent
        } else {
            Mapping::EndpointIndependent
        };
        let allocation = match self.allocation % 4 {
            0 => Allocation::Random,
            1 => Allocation::Preserving,
            2 => Allocation::Sequential {
                delta: i32::from(self.delta),
            },
            _ => Allocation::Unknown,
        };
        let local = "0.0.0.0:0".parse().expect("an address");
        NatBehaviour::declared(mapping, allocation, Filtering::Unknown, local)
    }
}

/// Which of our sockets a birthday input arrives at.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum LocalIn {
    /// The punch socket.
    Punch,
    /// Fresh socket `n`.
    Fresh(u16),
}

impl LocalIn {
    fn local(self) -> Local {
        match self {
            LocalIn::Punch => Local::Punch,
            LocalIn::Fresh(n) => Local::Fresh(n),
        }
    }
}

/// A birthday datagram's bytes.
#[derive(Arbitrary, Clone, Debug)]
pub enum BirthdayPayloadIn {
    /// One of the core's own transmits, one byte changed.
    Echo(u16, u8, u8),
    /// Anything.
    Raw(Vec<u8>),
}

/// A frame from the peer.
#[derive(Arbitrary, Clone, Debug)]
pub enum FrameIn {
    /// Hello pinning the honest peer's certificate, or another one.
    Hello(CertIn),
    /// Connect.
    Connect(Vec<ObsAddrIn>),
    /// Connect with `n` copies of one address (thousands of addresses).
    ConnectMany(AddrIn, u16),
    /// Connect declaring the sender's NAT.
    ConnectNat(Vec<ObsAddrIn>, NatIn),
    /// Sync.
    Sync,
    /// Junk.
    Raw(Vec<u8>),
}

impl FrameIn {
    fn frame(&self) -> Frame {
        match self {
            FrameIn::Hello(c) => Frame::Hello(c.fingerprint()),
            FrameIn::Connect(addrs) => Frame::Connect(addrs.iter().map(ObsAddrIn::bytes).collect()),
            FrameIn::ConnectNat(addrs, nat) => Frame::ConnectNat(
                addrs.iter().map(ObsAddrIn::bytes).collect(),
                NatWire::from_behaviour(&nat.behaviour()),
            ),
            FrameIn::ConnectMany(a, n) => {
                let base = a.candidate();
                let raw = (0..*n % 600)
                    .map(|i| {
                        let mut c = base;
                        c.addr.set_port(c.addr.port().wrapping_add(i));
                        c.to_multiaddr().to_vec()
                    })
                    .collect();
                Frame::Connect(raw)
            }
            FrameIn::Sync => Frame::Sync,
            FrameIn::Raw(b) => Frame::Raw(b.clone()),
        }
    }
}

/// Which connection.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum TargetIn {
    /// A dial the core made.
    Dial(u8),
    /// Any id the driver knows.
    Known(u8),
    /// A made-up id.
    Raw(u64),
}

impl TargetIn {
    fn target(self) -> Target {
        match self {
            TargetIn::Dial(n) => Target::Dial(usize::from(n)),
            TargetIn::Known(n) => Target::Known(usize::from(n)),
            TargetIn::Raw(n) => Target::Raw(n),
        }
    }
}

/// Why a dial failed.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum DialErrorIn {
    /// Refused.
    Refused,
    /// Unreachable.
    Unreachable,
    /// Handshake.
    Handshake,
    /// Timed out.
    TimedOut,
    /// Identity mismatch.
    IdentityMismatch,
    /// The address pair is in use (the peer's connection came in first).
    AddrInUse,
}

/// Bytes on a direct connection.
#[derive(Arbitrary, Clone, Debug)]
pub enum DirectIn {
    /// The select byte.
    Select,
    /// Anything.
    Bytes(Vec<u8>),
}

/// A certificate a TLS handshake (or a `Hello`) presents.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum CertIn {
    /// The honest peer's.
    Peer,
    /// Anyone else's.
    Other([u8; FINGERPRINT_LEN]),
}

impl CertIn {
    fn fingerprint(self) -> [u8; FINGERPRINT_LEN] {
        match self {
            CertIn::Peer => crate::driver::PEER_FINGERPRINT,
            CertIn::Other(f) => f,
        }
    }
}

/// One input.
#[derive(Arbitrary, Clone, Debug)]
pub enum InputIn {
    /// Stream bytes.
    Stream(Vec<FrameIn>, u8),
    /// Stream opened.
    StreamOpened,
    /// Stream closed.
    StreamClosed,
    /// Dial succeeded.
    DialSucceeded(TargetIn),
    /// Dial failed.
    DialFailed(TargetIn, DialErrorIn),
    /// Inbound connection.
    Inbound(AddrIn),
    /// Direct bytes.
    DirectData(TargetIn, DirectIn),
    /// Direct closed.
    DirectClosed(TargetIn),
    /// A TLS handshake on a direct connection completed.
    Authenticated(TargetIn, CertIn),
    /// A TLS handshake on a direct connection failed.
    HandshakeFailed(TargetIn, Option<CertIn>),
    /// Next timeout.
    Timeout,
    /// New local address.
    ObserveLocal(AddrIn),
    /// The honest peer's next move.
    Honest,
    /// A spray datagram arrived at the punch socket from this address.
    PeerReflexive(AddrIn),
    /// A birthday datagram arrived.
    BirthdayDatagram(LocalIn, AddrIn, BirthdayPayloadIn),
    /// A birthday connect completed.
    BirthdayConnected(LocalIn, AddrIn),
}

/// How far time moves before an input.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum AdvanceIn {
    /// Not at all.
    Zero,
    /// Milliseconds.
    Millis(u16),
    /// Seconds.
    Secs(u8),
}

impl AdvanceIn {
    fn duration(self) -> Duration {
        match self {
            AdvanceIn::Zero => Duration::ZERO,
            AdvanceIn::Millis(ms) => Duration::from_millis(u64::from(ms)),
            AdvanceIn::Secs(s) => Duration::from_secs(u64::from(s)),
        }
    }
}

/// One step.
#[derive(Arbitrary, Clone, Debug)]
pub struct StepIn {
    advance: AdvanceIn,
    input: InputIn,
}

impl StepIn {
    fn step(&self) -> Step {
        let input = match &self.input {
            InputIn::Stream(frames, chunk) => Input::Stream {
                frames: frames.iter().map(FrameIn::frame).collect(),
                chunk: usize::from(*chunk),
            },
            InputIn::StreamOpened => Input::StreamOpened,
            InputIn::StreamClosed => Input::StreamClosed,
            InputIn::DialSucceeded(t) => Input::DialSucceeded(t.target()),
            InputIn::DialFailed(t, e) => Input::DialFailed(
                t.target(),
                match e {
                    DialErrorIn::Refused => DialError::Refused,
                    DialErrorIn::Unreachable => DialError::Unreachable,
                    DialErrorIn::Handshake => DialError::Handshake,
                    DialErrorIn::TimedOut => DialError::TimedOut,
                    DialErrorIn::IdentityMismatch => DialError::IdentityMismatch,
                    DialErrorIn::AddrInUse => DialError::AddrInUse,
                },
            ),
            InputIn::Inbound(a) => Input::Inbound(a.candidate()),
            InputIn::PeerReflexive(a) => Input::PeerReflexive(a.candidate()),
            InputIn::BirthdayDatagram(l, a, p) => Input::BirthdayDatagram(
                l.local(),
                a.candidate(),
                match p {
                    BirthdayPayloadIn::Echo(n, at, flip) => BirthdayPayload::Echo {
                        n: *n,
                        at: *at,
                        flip: *flip,
                    },
                    BirthdayPayloadIn::Raw(raw) => BirthdayPayload::Raw(raw.clone()),
                },
            ),
            InputIn::BirthdayConnected(l, a) => Input::BirthdayConnected(l.local(), a.candidate()),
            InputIn::DirectData(t, d) => Input::DirectData(
                t.target(),
                match d {
                    DirectIn::Select => DirectPayload::Select,
                    DirectIn::Bytes(b) => DirectPayload::Bytes(b.clone()),
                },
            ),
            InputIn::DirectClosed(t) => Input::DirectClosed(t.target()),
            InputIn::Authenticated(t, c) => Input::Authenticated(t.target(), c.fingerprint()),
            InputIn::HandshakeFailed(t, c) => {
                Input::HandshakeFailed(t.target(), c.map(CertIn::fingerprint))
            }
            InputIn::Timeout => Input::Timeout,
            InputIn::ObserveLocal(a) => Input::ObserveLocal(a.candidate()),
            InputIn::Honest => Input::Honest,
        };
        Step {
            advance: self.advance.duration(),
            input,
        }
    }
}

/// A duration of `base + x` milliseconds, at least 1 ms.
/// The protocol two knobs choose: `pinned` is the whole dcutr-rs
/// session, `shared` alone its stream without the pin, neither the spec.
fn protocol(shared: bool, pinned: bool) -> Protocol {
    match (shared, pinned) {
        (_, true) => Protocol::Session,
        (true, false) => Protocol::SessionUnpinned,
        (false, false) => Protocol::Spec,
    }
}

fn millis(x: u16, base: u64) -> Duration {
    Duration::from_millis(base + u64::from(x)).max(Duration::from_millis(1))
}

/// The config knobs the fuzzer turns.
#[derive(Arbitrary, Clone, Debug)]
#[allow(clippy::struct_excessive_bools)]
pub struct ConfigIn {
    shared: bool,
    pinned: bool,
    max_attempts: u8,
    unilateral: bool,
    permissive: bool,
    dialable: u8,
    max_remote_addrs: u8,
    max_local_addrs: u8,
    max_spray: u16,
    spray_min: u8,
    spray_extra: u8,
    step: u16,
    direct: u16,
    unilateral_timeout: u16,
    confirm: u16,
    grace: u16,
    max_pending_inbound: u8,
    small_frames: Option<u16>,
    /// `None`: priming off; else a TTL in range.
    prime_ttl: Option<u8>,
}

impl ConfigIn {
    /// The spec, or the dcutr-rs session with or without its pin: the
    /// builder call the knobs choose.
    #[must_use]
    pub fn protocol(&self) -> Protocol {
        protocol(self.shared, self.pinned)
    }

    /// A valid config from the knobs.
    #[must_use]
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.max_attempts = 1 + self.max_attempts % dcutr_core::settings::MAX_ATTEMPTS_LIMIT;
        c.unilateral = self.unilateral;
        c.address_policy = if self.permissive {
            AddressPolicy::permissive()
        } else {
            AddressPolicy::public_only()
        };
        let mut d = Dialable::none();
        for (bit, t, v6) in [
            (1, Transport::Tcp, false),
            (2, Transport::Tcp, true),
            (4, Transport::Quic, false),
            (8, Transport::Quic, true),
        ] {
            if self.dialable & bit == 0 {
                d = d.with(t, v6);
            }
        }
        c.dialable = d;
        c.max_remote_addrs = 1 + usize::from(self.max_remote_addrs % 32);
        c.max_local_addrs = 1 + usize::from(self.max_local_addrs % 32);
        c.max_spray_packets_per_attempt = 1 + u32::from(self.max_spray % 400);
        c.prime_ttl = self
            .prime_ttl
            .map(|t| 1 + t % dcutr_core::settings::MAX_PRIME_TTL);
        c.spray_interval_min = Duration::from_millis(1 + u64::from(self.spray_min));
        c.spray_interval_max =
            c.spray_interval_min + Duration::from_millis(u64::from(self.spray_extra));
        c.step_timeout = millis(self.step, 1);
        c.direct_timeout = millis(self.direct, 1);
        c.unilateral_timeout = millis(self.unilateral_timeout, 1);
        c.confirm_timeout = millis(self.confirm, 1);
        c.relay_grace_period = millis(self.grace, 1);
        c.max_pending_inbound = 1 + usize::from(self.max_pending_inbound % 16);
        if let Some(size) = self.small_frames {
            c.max_message_size = 64 + usize::from(size) % (4096 - 64 + 1);
        }
        debug_assert_eq!(c.validate(), Ok(()));
        c
    }
}

/// The input of `upgrade_initiator` and `upgrade_responder`.
#[derive(Arbitrary, Clone, Debug)]
pub struct UpgradeCase {
    config: ConfigIn,
    seed: u64,
    local: Vec<AddrIn>,
    remote_public: Vec<AddrIn>,
    respect_wanted: bool,
    late_driver: bool,
    nat: Option<NatIn>,
    steps: Vec<StepIn>,
}

impl UpgradeCase {
    /// The setup for `side`.
    #[must_use]
    pub fn setup(&self, side: Side) -> Setup {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.seed.to_le_bytes());
        Setup {
            side,
            config: self.config.config(),
            protocol: self.config.protocol(),
            seed,
            local: self.local.iter().map(|a| a.candidate()).collect(),
            remote_public: self.remote_public.iter().map(|a| a.candidate()).collect(),
            nat: self.nat.map(NatIn::behaviour),
            respect_wanted: self.respect_wanted,
            punctual: !self.late_driver,
        }
    }

    /// The steps.
    #[must_use]
    pub fn steps(&self) -> Vec<Step> {
        self.steps.iter().map(StepIn::step).collect()
    }
}

/// A stranger in the orchestrator target.
#[derive(Arbitrary, Clone, Debug)]
pub struct StrangerIn {
    to_initiator: bool,
    after_ms: u16,
    quic: bool,
    port: u16,
    kind: StrangerKindIn,
}

/// What a stranger does on the connection.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum StrangerKindIn {
    /// Nothing.
    Silent,
    /// No TLS.
    Garbage,
    /// TLS with its own certificate.
    Certificate([u8; FINGERPRINT_LEN]),
}

/// The input of `orchestrator`.
#[derive(Arbitrary, Clone, Debug)]
#[allow(clippy::struct_excessive_bools)]
pub struct WorldCase {
    relay_ms: u16,
    direct_ms: u16,
    seed: u64,
    blocked: u8,
    refuse: bool,
    initiator_public: bool,
    responder_public: bool,
    transports: u8,
    shared: bool,
    pinned: bool,
    unilateral_known: bool,
    max_attempts: u8,
    step: u16,
    direct: u16,
    /// The responder's own limits, when they differ from the initiator's
    /// (peers of other versions or configurations).
    responder: Option<PeerLimitsIn>,
    strangers: Vec<StrangerIn>,
}

/// Limits of one side that may differ from the other side's.
#[derive(Arbitrary, Clone, Debug)]
pub struct PeerLimitsIn {
    max_attempts: u8,
    unilateral: bool,
    step: u16,
}

impl WorldCase {
    /// The world.
    #[must_use]
    pub fn world(&self) -> World {
        let protocol = protocol(self.shared, self.pinned);
        let mut config = Config::default();
        config.max_attempts = 1 + self.max_attempts % 4;
        let relay = Duration::from_millis(u64::from(self.relay_ms % 2001));
        let direct = Duration::from_millis(u64::from(self.direct_ms % 501));
        // Timeouts shorter than the round trips they wait for make the two
        // sides give up at different moments, which no protocol without a
        // further message can settle; keep them above the round trips.
        config.step_timeout = 4 * relay + millis(self.step % 10_000, 50);
        config.direct_timeout = 4 * direct + millis(self.direct % 5_000, 50);
        let blocked = (0..=4u8).filter(|i| self.blocked & (1 << i) != 0).collect();
        let mut sim = crate::world::world(
            &config,
            protocol,
            relay,
            direct,
            match self.transports % 3 {
                0 => (true, false),
                1 => (false, true),
                _ => (true, true),
            },
            (
                if self.initiator_public {
                    Nat::Public
                } else {
                    Nat::Firewalled
                },
                if self.responder_public {
                    Nat::Public
                } else {
                    Nat::Firewalled
                },
            ),
            self.unilateral_known,
            blocked,
            if self.refuse {
                Block::Refuse
            } else {
                Block::Drop
            },
            self.seed,
        );
        if let Some(limits) = &self.responder {
            let shared = protocol != Protocol::Spec;
            let c = &mut sim.responder.config;
            // On a shared stream the sides agree on the smaller limit through
            // the identity check's Hello (fuzz_regressions::
            // peers_with_different_attempt_limits_leave_the_shared_stream_alone).
            // Without it nothing can tell the initiator that a responder with
            // fewer attempts gave up, so the config must match: documented,
            // and only generated in strict mode.
            if !shared || self.pinned || crate::strict() {
                c.max_attempts = 1 + limits.max_attempts % 4;
            }
            c.unilateral = limits.unilateral;
            c.step_timeout = 4 * relay + millis(limits.step % 10_000, 50);
        }
        // Without the identity check the caller's own handshake keeps
        // strangers out, which the simulation does not model: strangers
        // only come with the pinned-TLS check.
        let strangers = if self.pinned {
            self.strangers
                .iter()
                .take(16)
                .map(|s| Stranger {
                    to: if s.to_initiator { INITIATOR } else { RESPONDER },
                    after: Duration::from_millis(u64::from(s.after_ms)),
                    from: Candidate {
                        transport: if s.quic {
                            Transport::Quic
                        } else {
                            Transport::Tcp
                        },
                        addr: SocketAddr::from(([192, 0, 2, 66], s.port.max(1))),
                    },
                    kind: match s.kind {
                        StrangerKindIn::Silent => dcutr_sim::Stranger::Silent,
                        StrangerKindIn::Garbage => dcutr_sim::Stranger::Garbage,
                        StrangerKindIn::Certificate(f) => {
                            dcutr_sim::Stranger::Certificate(strangers_own(f))
                        }
                    },
                })
                .collect()
        } else {
            Vec::new()
        };
        World { sim, strangers }
    }
}

/// A stranger's certificate: TLS proves that its holder has the key, so a
/// stranger can present any certificate but either peer's. An input that
/// names a peer's fingerprint gets one that differs in its first byte
/// (found by `orchestrator`: a "stranger" with the responder's own
/// certificate was, rightly, taken for the responder).
fn strangers_own(mut fingerprint: [u8; FINGERPRINT_LEN]) -> [u8; FINGERPRINT_LEN] {
    if (0..2).any(|side| dcutr_sim::fingerprint(side) == fingerprint) {
        fingerprint[0] ^= 0x01;
    }
    fingerprint
}
