//! # dcutr-sim
//!
//! A deterministic, simulated world for two [`dcutr_core::Upgrade`]s: a
//! relayed stream with a chosen one-way delay, a direct path with its own
//! delay, and a NAT in front of each peer as RFC 4787 describes, all on a
//! fake clock. Tests, examples and
//! benchmarks share it instead of each wiring its own.
//!
//! Time only moves when [`Sim::step`] jumps to the next event or timer, so
//! a simulated minute takes microseconds and nothing sleeps.
//!
//! ## The model
//! * **Relayed stream:** bytes written by one side arrive at the other
//!   after [`SimConfig::relay_one_way`] (from the responder to the
//!   initiator: [`SimConfig::relay_back`] when set), in order. With
//!   per-attempt streams, each `OpenStream` starts a new stream
//!   generation; stale events of an older stream are dropped.
//! * **Sockets:** each peer has one socket per transport (TCP with port
//!   reuse: its dials and its listener share the port; QUIC: one
//!   endpoint). Its relayed connection runs from those sockets to
//!   [`RELAY_ADDR`], so what the relay observes, and the peer advertises
//!   ([`Sim::advertised`]), is its NAT's mapping towards the relay.
//! * **TCP dials** send SYNs at 0, 1, 3 and 7 s (Linux's doubling RTO)
//!   while the dial is pending; each arrives after
//!   [`SimConfig::direct_one_way`]. An admitted SYN meets the peer's own
//!   dial to the SYN's source (simultaneous open: both dials succeed) or
//!   its listener (an inbound connection, whatever the source).
//! * **QUIC dials** send Initials at the same offsets; an admitted Initial
//!   becomes an inbound connection at the peer's endpoint. Spray
//!   datagrams pass through both NATs too; the endpoint drops them.
//! * **QUIC dials as server** ([`Role::Server`], the libp2p mode
//!   [`QuicServerPunch::DialAsServer`](dcutr_core::settings::QuicServerPunch)),
//!   as libp2p-quic carries them out: random datagrams from the QUIC
//!   socket at the same offsets instead of Initials, and the peer's
//!   Initial from the dialled address, once admitted, completes this dial
//!   instead of arriving as an inbound connection. An Initial that meets
//!   our NAT before our first datagram opened it is lost until its
//!   re-send a second later.
//! * **Protocol** ([`PeerSpec::protocol`]): the spec's stream per
//!   attempt, or the dcutr-rs session on one shared stream, with or
//!   without its pinned TLS ([`Protocol`]).
//! * **Pinned TLS** (the identity check of the dcutr-rs session,
//!   [`UpgradeBuilder::dcutr_session`](dcutr_core::UpgradeBuilder::dcutr_session)):
//!   one round trip (`2 × direct_one_way`) after a side's core learnt of a
//!   direct connection, the simulated handshake reports the certificate
//!   of the other peer ([`Sim::fingerprint`]) to it. The report goes to
//!   every core; one without a handshake in progress ignores it. A
//!   [`Stranger`] presents another certificate, fails its handshake, or
//!   stays silent.
//! * Direct bytes (the select byte) take `direct_one_way` as well and are
//!   not filtered: once a connection formed, its flow is established.
//!
//! ## NATs ([`Nat`], [`NatModel`], RFC 4787 terms)
//! Every punch packet's source is translated by the sender's NAT
//! ([`NatState::outbound`]) and its arrival decided by the receiver's
//! ([`NatState::inbound`]). A NAT keeps a table of mappings, each with the
//! destinations it sent to (its filter state) and an idle timer
//! ([`nat::UDP_MAPPING_TIMEOUT`], [`nat::TCP_MAPPING_TIMEOUT`], refreshed
//! by outbound packets; the relay's mappings never expire).
//! * **Mapping:** [`MappingBehaviour::EndpointIndependent`] (EIM) uses one
//!   external port for every destination;
//!   [`MappingBehaviour::AddressDependent`] (ADM) one per destination IP;
//!   [`MappingBehaviour::AddressAndPortDependent`] (APDM, "symmetric")
//!   one per destination address and port.
//! * **Allocation** of a new mapping's port, from [`NatModel::ports`]
//!   (default 1024–65535): [`PortAllocation::Preserving`] keeps the
//!   socket's port unless another socket holds it (then random, as
//!   Linux); [`PortAllocation::Sequential`] takes the NAT's previous
//!   allocation plus `delta`, wrapping and skipping taken ports;
//!   [`PortAllocation::Random`] draws uniformly. Mappings of one socket may
//!   share a port towards different destinations (Linux's tuple
//!   uniqueness), so a random mapping lands on the advertised port with
//!   probability 1/R.
//! * **Filtering** of inbound packets that do not answer something the
//!   mapping sent (answers always pass):
//!   [`FilteringBehaviour::EndpointIndependent`] (EIF) admits anyone,
//!   [`FilteringBehaviour::AddressDependent`] (ADF) any port of an IP the
//!   mapping sent to, [`FilteringBehaviour::AddressAndPortDependent`]
//!   (APDF) nobody else. An admitted packet is answered through its own
//!   port, unless the host already has a mapping towards the sender on
//!   another port; then the answer goes out there and no connection forms
//!   ([`Inbound::Misrouted`]).
//! * **Firewall:** with [`NatModel::firewall`], refused packets are
//!   dropped. Without one (a Linux router with `masquerade` and no filter
//!   rules) the router takes a refused packet for itself: it answers a
//!   TCP SYN with a reset (the sender's dial fails, refused), ignores UDP
//!   (QUIC ignores the ICMP error), and remembers the flow
//!   ([`nat::ROUTER_TCP_TIMEOUT`], [`nat::ROUTER_UDP_TIMEOUT`]). A later
//!   outbound flow of ours to that same remote address would take the
//!   same tuple, so it is remapped to a random port, which the peer's
//!   filter refuses: the NAT lab's cone-no-firewall loss. It happens when
//!   the peer's first punch packet arrives before ours left.
//! * [`Nat::Public`] translates nothing and admits every packet to one of
//!   its sockets. [`Nat::Firewalled`] is
//!   [`NatModel::legacy_firewalled`]: EIM, APDF, preserving over every
//!   port, no expiry (a stateful firewall without translation looks the
//!   same); the initiator's unilateral dial to it is always blocked.
//!   [`Nat::Model`] takes any [`NatModel`]; [`NatModel::full_cone`],
//!   [`NatModel::address_restricted`], [`NatModel::port_restricted`],
//!   [`NatModel::cone_no_firewall`], [`NatModel::symmetric_sequential`]
//!   and [`NatModel::symmetric_random`] are the usual kinds.
//!
//! Not modelled: packet loss and jitter (delays are fixed per run; the
//! sweep varies them across seeds; only the [`birthday`] runs add seeded
//! loss and jitter on their direct path); other hosts behind the same NAT
//! taking ports (a sequential NAT's next port is always ours); hairpinning
//! and both peers behind one NAT; stacked NATs (CGNAT); TTL (a low-TTL
//! priming packet behaves like a normal one, except in [`birthday`] runs
//! with [`birthday::BirthdayParams::low_ttl_priming`]); ICMP errors killing a QUIC
//! dial; inbound refresh of mappings; the relay's own connection dropping
//! or its mappings expiring; TCP RSTs from the peer host itself (a SYN to
//! a port nobody listens on is dropped). Addresses are IPv4 in practice;
//! nothing depends on the family.
//!
//! ## The sweep
//! [`sweep`] runs every ordered pair of [`sweep::NatKind`]s over both
//! transports for many seeds; `cargo run --release -p dcutr-sim --example
//! nat-sweep [-- --json]` prints the table. Each seed draws its own
//! delays ([`sweep::World`]); randomness only ever comes from the seed, and
//! tables are vectors and B-trees, so a run replays exactly. By default
//! the peers run today's core with observed addresses only
//! ([`sweep::TODAY`]); [`sweep::Options::predict_sequential`] (`--predict`)
//! lets a sequential side send its predicted ports
//! ([`PeerSpec::predictor`]).
//!
//! ## The birthday punch
//! [`birthday`] runs dcutr-core's birthday machines
//! ([`dcutr_core::birthday`]) against each other through a
//! symmetric-random [`NatState`] and an endpoint-independent one
//! (port-restricted; full cone and a router without firewall, with and
//! without low-TTL priming, as extra rows), with seeded loss and jitter,
//! in both roles; `nat-sweep --birthday` prints its rows and the measured
//! numbers are in that module's docs. The upgrade itself
//! does not run the birthday punch yet, so the main sweep's
//! symmetric-random rows still show today's core.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dcutr_core::nat::SequentialPredictor;
use dcutr_core::{
    Candidate, Carrier, Config, Dial, DialError, DialPurpose, DirectId, Event, Outcome, Output,
    Role, Side, SprayPayload, Transport, Upgrade, reason::StreamUnavailable, record::Timeline,
    settings::FINGERPRINT_LEN,
};

pub mod birthday;
pub mod nat;
pub mod sweep;

pub use nat::{
    FilteringBehaviour, Inbound, MappingBehaviour, NatModel, NatState, NatStats, PortAllocation,
    PortRange,
};

/// Seed salts of the two NATs' port draws, so the initiator's and the
/// responder's NATs draw different ports from one simulation seed.
const NAT_SALT_INITIATOR: u64 = 0x4e41_5431_0000_0001;
const NAT_SALT_RESPONDER: u64 = 0x4e41_5432_0000_0002;

/// A fixed base instant for simulations in this process.
///
/// `Instant` has no public constructor besides `now`, so the simulation
/// reads the clock once, here, and only ever adds durations to it. Every
/// simulated run measures its times from its own start, so the value of
/// this base never reaches a result.
#[must_use]
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Whether `dial` is libp2p-quic's server punch: datagrams, then the
/// peer's connection from the dialled address.
fn is_quic_server_punch(dial: &Dial) -> bool {
    dial.role == Role::Server && dial.to.transport == Transport::Quic
}

/// SYN / Initial retransmission offsets from the start of a dial.
const RETRANSMITS: [Duration; 4] = [
    Duration::from_secs(0),
    Duration::from_secs(1),
    Duration::from_secs(3),
    Duration::from_secs(7),
];

/// What stands between a peer and the internet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// No NAT, no firewall: every packet to one of its addresses gets in.
    Public,
    /// Endpoint-independent NAT with a stateful firewall: a packet from X
    /// gets in only after we sent one to X. The same as
    /// [`NatModel::legacy_firewalled`], plus one rule of its own: the
    /// initiator's unilateral dial to it is always blocked.
    Firewalled,
    /// A NAT as RFC 4787 describes it (see [`NatModel`] and the crate
    /// docs).
    Model(NatModel),
}

impl Nat {
    /// The NAT model behind this peer, `None` for a public one.
    #[must_use]
    pub fn model(&self) -> Option<NatModel> {
        match self {
            Nat::Public => None,
            Nat::Firewalled => Some(NatModel::legacy_firewalled()),
            Nat::Model(m) => Some(*m),
        }
    }
}

/// Where both peers' relayed connections go: the NAT mappings towards it
/// are what the peers advertise. TEST-NET-1, port 443.
pub const RELAY_ADDR: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 200)),
    443,
);

/// What a simulated peer runs over its relayed connection: which
/// builder call its upgrade gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// Exactly the spec: a stream per attempt, and the caller (here: the
    /// first direct connection to form) authenticates. No session call.
    #[default]
    Spec,
    /// The dcutr-rs session's one shared stream without its pinned TLS
    /// ([`UpgradeBuilder::dcutr_session_unpinned`](dcutr_core::UpgradeBuilder::dcutr_session_unpinned)).
    SessionUnpinned,
    /// The dcutr-rs session with the peer's simulated certificate
    /// ([`UpgradeBuilder::dcutr_session`](dcutr_core::UpgradeBuilder::dcutr_session)
    /// with [`fingerprint`]): what the standalone adapters run.
    Session,
}

/// One simulated peer.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    /// Its sockets, one per transport (TCP and QUIC may share a port).
    /// Without a NAT, or with [`Nat::Firewalled`], these are also the
    /// addresses others observe for it and it advertises. Behind a
    /// [`Nat::Model`] the IP is the NAT's external address and the port
    /// the socket's internal one; what it advertises is the mapping its
    /// NAT made towards the relay ([`RELAY_ADDR`]), see
    /// [`Sim::advertised`]. Behind any NAT all its sockets share one
    /// external IP, the first address's. Packets to any other IP go
    /// nowhere.
    pub addrs: Vec<Candidate>,
    /// Its NAT.
    pub nat: Nat,
    /// Addresses of the other peer it knows as public (for the initiator's
    /// unilateral dial).
    pub remote_public: Vec<Candidate>,
    /// Its core config.
    pub config: Config,
    /// The spec, or the dcutr-rs session (default: the spec).
    pub protocol: Protocol,
    /// Guesses of its NAT's next ports that it sends in Connect after
    /// what it advertises (dcutr-core's sequential predictor, as an adapter
    /// would set it from discovery); `None`: advertised addresses only.
    pub predictor: Option<SequentialPredictor>,
    /// The NAT behaviour it declares in Connect, as an adapter would set
    /// it from discovery; `None`: not known, not sent.
    pub nat_behaviour: Option<dcutr_core::nat::NatBehaviour>,
}

/// What the direct path does to the dials of given attempts, so tests can
/// make attempts fail on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// Packets vanish; dials time out.
    Drop,
    /// The path answers with a refusal after one direct round trip.
    Refuse,
}

/// The whole simulated world.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// One-way delay of the relayed stream (from the initiator to the
    /// responder, and back unless `relay_back` says otherwise).
    pub relay_one_way: Duration,
    /// One-way delay of the relayed stream from the responder to the
    /// initiator, when the two directions differ. The initiator's RTT
    /// estimate then splits unevenly, so the two punches leave at
    /// different times.
    pub relay_back: Option<Duration>,
    /// One-way delay of the direct path.
    pub direct_one_way: Duration,
    /// Spec B.
    pub initiator: PeerSpec,
    /// Spec A.
    pub responder: PeerSpec,
    /// Dials of these attempt numbers (0: unilateral) are blocked.
    pub blocked_attempts: Vec<u8>,
    /// How blocked dials fail.
    pub block: Block,
    /// Seed for both upgrades (each side derives its own).
    pub seed: u64,
}

impl SimConfig {
    /// Two firewalled peers with one TCP and one QUIC address each, the
    /// given delays, and `config` on both sides, running the spec (see
    /// [`SimConfig::protocol`]).
    #[must_use]
    pub fn two_nats(config: &Config, relay_one_way: Duration, direct_one_way: Duration) -> Self {
        SimConfig {
            relay_one_way,
            relay_back: None,
            direct_one_way,
            initiator: PeerSpec {
                addrs: vec![
                    Candidate::tcp(addr("198.51.100.2:4001")),
                    Candidate::quic(addr("198.51.100.2:4001")),
                ],
                nat: Nat::Firewalled,
                remote_public: Vec::new(),
                config: config.clone(),
                protocol: Protocol::Spec,
                predictor: None,
                nat_behaviour: None,
            },
            responder: PeerSpec {
                addrs: vec![
                    Candidate::tcp(addr("203.0.113.7:5001")),
                    Candidate::quic(addr("203.0.113.7:5001")),
                ],
                nat: Nat::Firewalled,
                remote_public: Vec::new(),
                config: config.clone(),
                protocol: Protocol::Spec,
                predictor: None,
                nat_behaviour: None,
            },
            blocked_attempts: Vec::new(),
            block: Block::Drop,
            seed: 1,
        }
    }

    /// Runs `protocol` on both sides.
    #[must_use]
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.initiator.protocol = protocol;
        self.responder.protocol = protocol;
        self
    }

    /// Keeps only the addresses of one transport on both sides.
    #[must_use]
    pub fn only(mut self, transport: Transport) -> Self {
        self.initiator.addrs.retain(|c| c.transport == transport);
        self.responder.addrs.retain(|c| c.transport == transport);
        self
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a valid socket address literal")
}

/// One output as it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Simulated time since the start.
    pub at: Duration,
    /// Who emitted it.
    pub side: Side,
    /// What.
    pub output: Output,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    StreamOpened {
        to: usize,
        generation: u64,
    },
    StreamData {
        to: usize,
        generation: u64,
        data: Bytes,
    },
    StreamClosed {
        to: usize,
        generation: u64,
    },
    /// A retransmission of `from`'s dial leaves (if the dial still
    /// wants it).
    Send {
        from: usize,
        dial: DirectId,
        to: Candidate,
    },
    /// A SYN or Initial of `from`'s dial, sent from external address
    /// `src`, reaches the other peer's NAT.
    Arrive {
        from: usize,
        dial: DirectId,
        src: SocketAddr,
        to: Candidate,
    },
    /// A spray datagram from `from`, sent from external address `src`,
    /// reaches the other peer's NAT.
    Datagram {
        from: usize,
        src: SocketAddr,
        to: SocketAddr,
    },
    DialSucceeded {
        to: usize,
        id: DirectId,
    },
    DialFailed {
        to: usize,
        id: DirectId,
        error: DialError,
    },
    DirectData {
        to: usize,
        id: DirectId,
        data: Bytes,
    },
    DirectClosed {
        to: usize,
        id: DirectId,
    },
    /// The simulated TLS handshake on `to`'s direct connection `id`
    /// completed.
    Authenticated {
        to: usize,
        id: DirectId,
    },
    Stranger {
        to: usize,
        from: Candidate,
        kind: Stranger,
    },
}

/// What a stranger that connects to a peer's punch port does
/// ([`Sim::inject_stranger`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stranger {
    /// Connects and never finishes a handshake.
    Silent,
    /// Does not speak TLS: the handshake fails at once.
    Garbage,
    /// Completes the TLS handshake with its own certificate, of this
    /// fingerprint (a host at an advertised address, or a man in the
    /// middle with a key of its own).
    Certificate([u8; FINGERPRINT_LEN]),
}

/// The fingerprint of side `index`'s simulated TLS certificate.
#[must_use]
pub fn fingerprint(index: usize) -> [u8; FINGERPRINT_LEN] {
    // Distinct per side; a stranger's certificate is anything else.
    [0xf0 | u8::try_from(index & 0x0f).unwrap_or(0); FINGERPRINT_LEN]
}

struct Peer {
    side: Side,
    /// `None` only while its commands are being carried out.
    upgrade: Option<Upgrade>,
    spec: PeerSpec,
    /// Its NAT's table; `None` for a public peer.
    nat: Option<NatState>,
    /// What it advertises (what the relay observes).
    advertised: Vec<Candidate>,
    /// Our dials still wanted.
    dials: BTreeMap<DirectId, Dial>,
    /// Our direct connection ids mapped to the peer's id for the same
    /// connection.
    links: BTreeMap<DirectId, (usize, DirectId)>,
    /// Direct connections the core was told of (dial succeeded, inbound).
    told: BTreeSet<DirectId>,
    /// Direct connections whose simulated TLS handshake was reported.
    authenticated: BTreeSet<DirectId>,
    generation: u64,
}

impl Peer {
    fn core(&self) -> &Upgrade {
        self.upgrade
            .as_ref()
            .expect("the upgrade is only out while it drains")
    }

    fn core_mut(&mut self) -> &mut Upgrade {
        self.upgrade
            .as_mut()
            .expect("the upgrade is only out while it drains")
    }

    /// Whether a packet to `ip` reaches this peer (its NAT, or itself).
    fn owns_ip(&self, ip: IpAddr) -> bool {
        match &self.nat {
            Some(nat) => nat.external_ip() == ip,
            None => self.spec.addrs.iter().any(|c| c.addr.ip() == ip),
        }
    }

    /// A packet from `from` to our external port `port` arrives: whether
    /// it reaches one of our sockets, and what the NAT did with it.
    fn receive(
        &mut self,
        now: Instant,
        transport: Transport,
        port: u16,
        from: SocketAddr,
    ) -> Inbound {
        match &mut self.nat {
            Some(nat) => nat.inbound(now, transport, port, from),
            None => {
                let ours = self
                    .spec
                    .addrs
                    .iter()
                    .any(|c| c.transport == transport && c.addr.port() == port);
                if ours {
                    Inbound::Deliver { local_port: port }
                } else {
                    Inbound::Dropped
                }
            }
        }
    }

    /// Sends a packet from our `transport` socket to `to`: the external
    /// source address it leaves with (`None`: the NAT dropped it).
    fn send(
        &mut self,
        now: Instant,
        transport: Transport,
        to: SocketAddr,
        index: usize,
    ) -> Option<SocketAddr> {
        let local = self.own_addr(transport, index).addr;
        match &mut self.nat {
            Some(nat) => nat.outbound(now, transport, local.port(), to),
            None => Some(local),
        }
    }

    fn own_addr(&self, transport: Transport, index: usize) -> Candidate {
        self.spec
            .addrs
            .iter()
            .copied()
            .find(|c| c.transport == transport)
            .unwrap_or_else(|| {
                // A peer without an address for this transport still has
                // some source address; give it one in TEST-NET-1.
                let octet = u8::try_from(index + 1).unwrap_or(1);
                Candidate {
                    transport,
                    addr: SocketAddr::from(([192, 0, 2, octet], 9)),
                }
            })
    }
}

/// Two upgrades, a relay, a direct path and a fake clock.
pub struct Sim {
    now: Instant,
    start: Instant,
    peers: [Peer; 2],
    /// (due, class, sequence): at one instant, packets leave (class 0)
    /// before anything arrives (class 1).
    queue: BinaryHeap<Reverse<(Instant, u8, u64)>>,
    events: BTreeMap<u64, Ev>,
    next_seq: u64,
    /// Relay delay of what each side sends.
    relay_delay: [Duration; 2],
    direct_one_way: Duration,
    blocked_attempts: Vec<u8>,
    block: Block,
    /// Everything both sides emitted, in order.
    pub log: Vec<Record>,
    /// Datagrams each side sprayed: (side index, destination).
    pub datagrams: Vec<(usize, SocketAddr)>,
    /// Dials each side made: (side index, target).
    pub dialled: Vec<(usize, Candidate)>,
    /// When each side asked to close the relayed connection.
    pub relay_closed: [Option<Duration>; 2],
}

/// Index of the initiator in [`Sim`]'s arrays.
pub const INITIATOR: usize = 0;
/// Index of the responder in [`Sim`]'s arrays.
pub const RESPONDER: usize = 1;

impl Sim {
    /// Builds both upgrades and starts them at the simulation's time zero.
    ///
    /// # Panics
    /// If either config is invalid: a test bug.
    #[must_use]
    pub fn new(cfg: SimConfig) -> Self {
        let start = epoch();
        // Each NAT maps the peer's sockets towards the relay first: those
        // mappings are what the relay observes and the peer advertises.
        let behind = |spec: &PeerSpec, salt: u64| {
            let mut nat = spec.nat.model().map(|model| {
                let ip = spec
                    .addrs
                    .first()
                    .map_or(IpAddr::from([192, 0, 2, 250]), |c| c.addr.ip());
                NatState::new(model, ip, cfg.seed ^ salt)
            });
            let mut advertised: Vec<Candidate> = Vec::new();
            for c in &spec.addrs {
                let seen = match &mut nat {
                    Some(n) => {
                        n.pinned(start, c.transport, c.addr.port(), RELAY_ADDR)
                            .map(|addr| Candidate {
                                transport: c.transport,
                                addr,
                            })
                    }
                    None => Some(*c),
                };
                if let Some(seen) = seen
                    && !advertised.contains(&seen)
                {
                    advertised.push(seen);
                }
            }
            (nat, advertised)
        };
        let (b_nat, b_advertised) = behind(&cfg.initiator, NAT_SALT_INITIATOR);
        let (a_nat, a_advertised) = behind(&cfg.responder, NAT_SALT_RESPONDER);
        let make = |side: Side,
                    spec: &PeerSpec,
                    own: &[Candidate],
                    remote_public: &[Candidate],
                    salt: u8| {
            let mut seed = [salt; 32];
            seed[..8].copy_from_slice(&cfg.seed.to_le_bytes());
            let index = match side {
                Side::Initiator => INITIATOR,
                Side::Responder => RESPONDER,
            };
            let mut builder = Upgrade::builder(side, spec.config.clone(), seed)
                .local_addrs(own.iter().copied())
                .remote_public_addrs(remote_public.iter().copied());
            builder = match spec.protocol {
                Protocol::Spec => builder,
                Protocol::SessionUnpinned => builder.dcutr_session_unpinned(),
                Protocol::Session => builder.dcutr_session(fingerprint(index)),
            };
            if let Some(p) = spec.predictor {
                builder = builder.predictor(Box::new(p));
            }
            if let Some(b) = &spec.nat_behaviour {
                builder = builder.nat_behaviour(b.clone());
            }
            builder.start(start).expect("simulation configs are valid")
        };
        let initiator = make(
            Side::Initiator,
            &cfg.initiator,
            &b_advertised,
            &cfg.initiator.remote_public,
            1,
        );
        let responder = make(Side::Responder, &cfg.responder, &a_advertised, &[], 2);
        let peer = |side, upgrade, spec: &PeerSpec, nat, advertised| Peer {
            side,
            upgrade: Some(upgrade),
            spec: spec.clone(),
            nat,
            advertised,
            dials: BTreeMap::new(),
            links: BTreeMap::new(),
            told: BTreeSet::new(),
            authenticated: BTreeSet::new(),
            generation: 0,
        };
        let mut sim = Sim {
            now: start,
            start,
            peers: [
                peer(
                    Side::Initiator,
                    initiator,
                    &cfg.initiator,
                    b_nat,
                    b_advertised,
                ),
                peer(
                    Side::Responder,
                    responder,
                    &cfg.responder,
                    a_nat,
                    a_advertised,
                ),
            ],
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_seq: 0,
            relay_delay: [
                cfg.relay_one_way,
                cfg.relay_back.unwrap_or(cfg.relay_one_way),
            ],
            direct_one_way: cfg.direct_one_way,
            blocked_attempts: cfg.blocked_attempts,
            block: cfg.block,
            log: Vec::new(),
            datagrams: Vec::new(),
            dialled: Vec::new(),
            relay_closed: [None, None],
        };
        sim.drain(INITIATOR);
        sim.drain(RESPONDER);
        sim
    }

    /// The upgrade of side `index` ([`INITIATOR`] or [`RESPONDER`]).
    #[must_use]
    pub fn upgrade(&self, index: usize) -> &Upgrade {
        self.peers[index].core()
    }

    /// What side `index` advertises: its addresses as the relay observes
    /// them (through its NAT's mappings towards [`RELAY_ADDR`]).
    #[must_use]
    pub fn advertised(&self, index: usize) -> &[Candidate] {
        &self.peers[index].advertised
    }

    /// What the NAT of side `index` did so far; `None` for a public peer.
    #[must_use]
    pub fn nat_stats(&self, index: usize) -> Option<NatStats> {
        self.peers[index].nat.as_ref().map(NatState::stats)
    }

    /// Simulated time since the start.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The simulation's start instant.
    #[must_use]
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Both outcomes, once both are decided.
    #[must_use]
    pub fn outcomes(&self) -> (Option<&Outcome>, Option<&Outcome>) {
        (
            self.peers[INITIATOR].core().outcome(),
            self.peers[RESPONDER].core().outcome(),
        )
    }

    /// Schedules a stranger's connection from `from` to side `to` at
    /// `after` from now, behaving as `kind` says.
    pub fn inject_stranger(&mut self, to: usize, after: Duration, from: Candidate, kind: Stranger) {
        self.schedule(after, Ev::Stranger { to, from, kind });
    }

    /// The fingerprint of side `index`'s simulated certificate
    /// (the free function [`fingerprint`]).
    #[must_use]
    pub fn fingerprint(&self, index: usize) -> [u8; FINGERPRINT_LEN] {
        fingerprint(index)
    }

    /// Reports `to`'s handshake on direct connection `id` as done, with
    /// the other peer's certificate, once.
    fn authenticate(&mut self, to: usize, id: DirectId) {
        let peer = &mut self.peers[to];
        if peer.told.contains(&id) && peer.links.contains_key(&id) && peer.authenticated.insert(id)
        {
            let presented = fingerprint(1 - to);
            let now = self.now;
            peer.core_mut()
                .handle_direct_authenticated(now, id, presented);
            self.drain(to);
        }
    }

    /// The simulated TLS handshake of `to`'s new direct connection `id`
    /// reports its result one round trip from now.
    fn handshake(&mut self, to: usize, id: DirectId) {
        self.schedule(2 * self.direct_one_way, Ev::Authenticated { to, id });
    }

    /// Runs until both upgrades are finished or `limit` of simulated time
    /// has passed. Returns whether both finished.
    pub fn run(&mut self, limit: Duration) -> bool {
        while !self.finished() {
            if !self.step() || self.elapsed() > limit {
                return false;
            }
        }
        true
    }

    /// Runs every event and timer due up to `at` after the start, then
    /// moves the clock to `at`.
    pub fn run_until(&mut self, at: Duration) {
        let until = self.start + at;
        while self.next_wakeup().is_some_and(|next| next <= until) {
            self.step();
        }
        self.now = self.now.max(until);
    }

    /// Side `i` learns the other side's public addresses now (as from
    /// identify), and its commands are carried out.
    pub fn add_remote_public(&mut self, i: usize, addrs: Vec<Candidate>) {
        let now = self.now;
        self.peers[i]
            .core_mut()
            .handle_remote_public_addrs(now, addrs);
        self.drain(i);
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let next_event = self.queue.peek().map(|Reverse((at, _, _))| *at);
        let next_timer = self
            .peers
            .iter()
            .filter_map(|p| p.core().poll_timeout().map(|t| t.at))
            .min();
        [next_event, next_timer].into_iter().flatten().min()
    }

    /// Whether both upgrades are finished.
    #[must_use]
    pub fn finished(&self) -> bool {
        self.peers.iter().all(|p| p.core().is_finished())
    }

    /// Advances to the next event or timer and handles it. Returns false
    /// when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        let next_event = self.queue.peek().map(|Reverse((at, _, _))| *at);
        let next_timer = self
            .peers
            .iter()
            .filter_map(|p| p.core().poll_timeout().map(|t| t.at))
            .min();
        let Some(at) = [next_event, next_timer].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(at);
        if next_event == Some(at) {
            let Reverse((_, _, seq)) = self.queue.pop().expect("peeked");
            let ev = self
                .events
                .remove(&seq)
                .expect("every queued entry has an event");
            self.deliver(ev);
        } else {
            for i in [INITIATOR, RESPONDER] {
                let due = self.peers[i]
                    .core()
                    .poll_timeout()
                    .is_some_and(|t| t.at <= self.now);
                if due {
                    self.peers[i].core_mut().handle_timeout(self.now);
                    self.drain(i);
                }
            }
        }
        true
    }

    /// The time of the first record of `side` that `pred` selects.
    #[must_use]
    pub fn first(&self, side: Side, pred: impl Fn(&Output) -> bool) -> Option<Duration> {
        self.log
            .iter()
            .find(|r| r.side == side && pred(&r.output))
            .map(|r| r.at)
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let class = u8::from(!matches!(ev, Ev::Send { .. }));
        self.events.insert(seq, ev);
        self.queue.push(Reverse((self.now + after, class, seq)));
    }

    /// Dial `dial` of side `i` sends a SYN / Initial to `to` now: through
    /// its NAT, and, unless the path drops it, on to the other peer.
    fn send_dial_packet(&mut self, i: usize, dial: DirectId, to: Candidate, arrives: bool) {
        let now = self.now;
        let server_punch = self.peers[i]
            .dials
            .get(&dial)
            .is_some_and(is_quic_server_punch);
        let Some(src) = self.peers[i].send(now, to.transport, to.addr, i) else {
            return;
        };
        if arrives && self.peers[1 - i].owns_ip(to.addr.ip()) {
            let ev = if server_punch {
                Ev::Datagram {
                    from: i,
                    src,
                    to: to.addr,
                }
            } else {
                Ev::Arrive {
                    from: i,
                    dial,
                    src,
                    to,
                }
            };
            self.schedule(self.direct_one_way, ev);
        }
    }

    /// Whether the path drops the packets of dial `dial` of side `i`.
    fn dial_blocked(&self, i: usize, dial: DirectId) -> bool {
        let Some(d) = self.peers[i].dials.get(&dial) else {
            return true;
        };
        self.blocked_attempts.contains(&d.attempt)
            || (d.purpose == DialPurpose::Unilateral
                && self.peers[1 - i].spec.nat == Nat::Firewalled)
    }

    /// Whether dial `dial` of side `i` still sends packets.
    fn dial_pending(&self, i: usize, dial: DirectId) -> bool {
        self.peers[i].dials.contains_key(&dial) && !self.peers[i].links.contains_key(&dial)
    }

    fn deliver(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::StreamOpened { to, generation } => {
                if self.peers[to].generation < generation {
                    self.peers[to].generation = generation;
                    self.peers[to].core_mut().handle_stream_opened(now);
                    self.drain(to);
                }
            }
            Ev::StreamData {
                to,
                generation,
                data,
            } => {
                if self.peers[to].generation == generation {
                    self.peers[to].core_mut().handle_stream_data(now, &data);
                    self.drain(to);
                }
            }
            Ev::StreamClosed { to, generation } => {
                if self.peers[to].generation == generation {
                    self.peers[to].core_mut().handle_stream_closed(now);
                    self.drain(to);
                }
            }
            Ev::Send { from, dial, to } => {
                if self.dial_pending(from, dial) {
                    let arrives = !self.dial_blocked(from, dial);
                    self.send_dial_packet(from, dial, to, arrives);
                }
            }
            Ev::Arrive {
                from,
                dial,
                src,
                to,
            } => self.arrive(from, dial, src, to),
            Ev::Datagram { from, src, to } => {
                // Spray payloads are not QUIC: the endpoint drops them, so
                // only what the NAT does with them matters.
                let _ = self.peers[1 - from].receive(now, Transport::Quic, to.port(), src);
            }
            Ev::DialSucceeded { to, id } => {
                if self.peers[to].dials.contains_key(&id) {
                    self.peers[to].core_mut().handle_dial_succeeded(now, id);
                    self.peers[to].told.insert(id);
                    self.drain(to);
                    self.handshake(to, id);
                }
            }
            Ev::Authenticated { to, id } => self.authenticate(to, id),
            Ev::DialFailed { to, id, error } => {
                if self.peers[to].dials.remove(&id).is_some() {
                    self.peers[to].core_mut().handle_dial_failed(now, id, error);
                    self.drain(to);
                }
            }
            Ev::DirectData { to, id, data }
                if !self.peers[to].told.contains(&id)
                    && self.peers[to].dials.contains_key(&id)
                    && self.peers[to].links.contains_key(&id) =>
            {
                // With no delay the bytes can overtake the receiver's own
                // news of its dial (its `DialSucceeded`, due at this same
                // instant): deliver them after it.
                self.schedule(Duration::ZERO, Ev::DirectData { to, id, data });
            }
            Ev::DirectData { to, id, data } => {
                if self.peers[to].links.contains_key(&id) {
                    // Bytes inside TLS are readable only once the
                    // receiver's handshake is done: if the sender finished
                    // first, so does the receiver now.
                    self.authenticate(to, id);
                    self.peers[to].core_mut().handle_direct_data(now, id, &data);
                    self.drain(to);
                }
            }
            Ev::DirectClosed { to, id } => {
                if self.peers[to].links.remove(&id).is_some() {
                    self.peers[to].dials.remove(&id);
                    self.peers[to].core_mut().handle_direct_closed(now, id);
                    self.drain(to);
                }
            }
            Ev::Stranger { to, from, kind } => {
                if let Ok(id) = self.peers[to].core_mut().handle_inbound(now, from) {
                    // The stranger is not a peer: link to a sink index.
                    self.peers[to].links.insert(id, (usize::MAX, id));
                    self.peers[to].told.insert(id);
                    self.drain(to);
                    let core = self.peers[to].core_mut();
                    match kind {
                        Stranger::Silent => {}
                        Stranger::Garbage => core.handle_direct_handshake_failed(now, id, None),
                        Stranger::Certificate(fp) => core.handle_direct_authenticated(now, id, fp),
                    }
                }
                self.drain(to);
            }
        }
    }

    /// A SYN/Initial from `from`'s dial `dial`, sent from external
    /// address `src`, reaches the NAT of the peer that owns `to`.
    fn arrive(&mut self, from: usize, dial: DirectId, src: SocketAddr, to: Candidate) {
        let now = self.now;
        if !self.dial_pending(from, dial) {
            return; // cancelled, or already connected by an earlier packet
        }
        let other = 1 - from;
        let src = Candidate {
            transport: to.transport,
            addr: src,
        };
        let d = self.direct_one_way;
        match self.peers[other].receive(now, to.transport, to.addr.port(), src.addr) {
            Inbound::Deliver { .. } => {}
            Inbound::Router if to.transport == Transport::Tcp => {
                // The router answers the SYN with a reset, which our NAT
                // lets in (it answers our own flow): connection refused.
                self.schedule(
                    d,
                    Ev::DialFailed {
                        to: from,
                        id: dial,
                        error: DialError::Refused,
                    },
                );
                return;
            }
            // Dropped; or an ICMP error QUIC ignores; or let in but
            // answered from a port the dialler never sent to.
            Inbound::Router | Inbound::Dropped | Inbound::Misrouted => return,
        }
        // Simultaneous open: the other side is dialling us over TCP too.
        // Over QUIC, its server punch to our address takes our connection.
        let crossing = self.peers[other]
            .dials
            .iter()
            .find(|(id, c)| {
                let takes = to.transport == Transport::Tcp || is_quic_server_punch(c);
                takes && c.to == src && !self.peers[other].links.contains_key(*id)
            })
            .map(|(id, _)| *id);
        let other_id = match crossing {
            Some(id) => {
                self.schedule(Duration::ZERO, Ev::DialSucceeded { to: other, id });
                id
            }
            None => match self.peers[other].core_mut().handle_inbound(now, src) {
                Ok(id) => {
                    self.peers[other].told.insert(id);
                    self.drain(other);
                    self.handshake(other, id);
                    id
                }
                Err(_) => {
                    self.drain(other);
                    self.schedule(
                        d,
                        Ev::DialFailed {
                            to: from,
                            id: dial,
                            error: DialError::Refused,
                        },
                    );
                    return;
                }
            },
        };
        self.peers[other].links.insert(other_id, (from, dial));
        self.peers[from].links.insert(dial, (other, other_id));
        self.schedule(d, Ev::DialSucceeded { to: from, id: dial });
    }

    /// Carries out every output of side `i`, through the core's one
    /// exhaustive dispatch.
    fn drain(&mut self, i: usize) {
        let mut core = self.peers[i].upgrade.take().expect("drain does not nest");
        let now = self.now;
        let mut side = SimSide {
            sim: self,
            i,
            opened: false,
        };
        loop {
            core.drain(now, &mut side);
            // The simulated relay opens streams at once.
            if !std::mem::take(&mut side.opened) {
                break;
            }
            core.handle_stream_opened(now);
        }
        self.peers[i].upgrade = Some(core);
    }
}

/// Side `i` of the simulation, as the carrier of its core's commands.
struct SimSide<'a> {
    sim: &'a mut Sim,
    i: usize,
    /// The core asked for a stream: the simulated relay opens it at once.
    opened: bool,
}

impl SimSide<'_> {
    fn other(&self) -> usize {
        1 - self.i
    }

    fn log(&mut self, output: Output) {
        let at = self.sim.elapsed();
        let side = self.sim.peers[self.i].side;
        self.sim.log.push(Record { at, side, output });
    }

    /// The relay carries a close of our stream to the other side.
    fn close_stream_at_peer(&mut self, generation: u64) {
        let other = self.other();
        self.sim.schedule(
            self.sim.relay_delay[self.i],
            Ev::StreamClosed {
                to: other,
                generation,
            },
        );
    }
}

impl Carrier for SimSide<'_> {
    fn open_stream(&mut self) -> Result<(), StreamUnavailable> {
        self.log(Output::OpenStream);
        let (i, other) = (self.i, self.other());
        self.sim.peers[i].generation += 1;
        let generation = self.sim.peers[i].generation;
        self.opened = true;
        self.sim.schedule(
            self.sim.relay_delay[self.i],
            Ev::StreamOpened {
                to: other,
                generation,
            },
        );
        Ok(())
    }

    fn write_stream(&mut self, data: Bytes) {
        self.log(Output::WriteStream(data.clone()));
        let other = self.other();
        let generation = self.sim.peers[self.i].generation;
        self.sim.schedule(
            self.sim.relay_delay[self.i],
            Ev::StreamData {
                to: other,
                generation,
                data,
            },
        );
    }

    fn finish_stream(&mut self) {
        self.log(Output::FinishStream);
        self.close_stream_at_peer(self.sim.peers[self.i].generation);
    }

    fn reset_stream(&mut self) {
        self.log(Output::ResetStream);
        self.close_stream_at_peer(self.sim.peers[self.i].generation);
    }

    fn close_relay(&mut self) {
        self.log(Output::CloseRelay);
        self.sim.relay_closed[self.i] = Some(self.sim.elapsed());
        self.close_stream_at_peer(self.sim.peers[self.other()].generation);
    }

    fn dial(&mut self, dial: Dial) -> Result<(), DialError> {
        self.log(Output::Dial(dial));
        let (i, other) = (self.i, self.other());
        let sim = &mut *self.sim;
        let d = sim.direct_one_way;
        sim.dialled.push((i, dial.to));
        sim.peers[i].dials.insert(dial.id, dial);
        let blocked = sim.dial_blocked(i, dial.id);
        let owned = sim.peers[other].advertised.contains(&dial.to);
        if blocked && sim.block == Block::Refuse && owned {
            sim.schedule(
                2 * d,
                Ev::DialFailed {
                    to: i,
                    id: dial.id,
                    error: DialError::Refused,
                },
            );
        }
        // The first SYN / Initial leaves now, the retransmissions later
        // while the dial is still pending. A blocked dial's packets still
        // open our own NAT; the path drops them.
        sim.send_dial_packet(i, dial.id, dial.to, !blocked);
        for offset in RETRANSMITS.into_iter().skip(1) {
            sim.schedule(
                offset,
                Ev::Send {
                    from: i,
                    dial: dial.id,
                    to: dial.to,
                },
            );
        }
        Ok(())
    }

    fn send_birthday(&mut self, transmit: dcutr_core::birthday::Transmit) {
        // The birthday punch is simulated on its own
        // (`crate::birthday`); the upgrade's carrier here does not model
        // fresh sockets yet, so the datagram is logged and dropped.
        self.log(Output::SendBirthday(transmit));
    }

    fn close_fresh(&mut self, keep: Option<u16>) {
        self.log(Output::CloseFresh { keep });
    }

    fn dial_fresh(&mut self, socket: u16, dial: Dial) -> Result<(), DialError> {
        self.log(Output::DialFresh { socket, dial });
        Err(DialError::Io(std::io::ErrorKind::Unsupported))
    }

    fn prime(&mut self, to: Candidate, ttl: u8) {
        self.log(Output::Prime { to, ttl });
        // The packet passes our own NAT, which maps it, and expires before
        // the peer's: nothing is delivered. The simulated path has no
        // hops between the NATs to count, so every TTL the core allows
        // counts as "our NAT, not the peer's".
        let (i, now) = (self.i, self.sim.now);
        let _ = self.sim.peers[i].send(now, to.transport, to.addr, i);
    }

    fn send_datagram(&mut self, to: SocketAddr, payload: SprayPayload) {
        self.log(Output::SendDatagram { to, payload });
        let (i, other) = (self.i, self.other());
        let sim = &mut *self.sim;
        let now = sim.now;
        sim.datagrams.push((i, to));
        let Some(src) = sim.peers[i].send(now, Transport::Quic, to, i) else {
            return;
        };
        if sim.peers[other].owns_ip(to.ip()) {
            sim.schedule(sim.direct_one_way, Ev::Datagram { from: i, src, to });
        }
    }

    fn write_direct(&mut self, id: DirectId, data: Bytes) {
        self.log(Output::WriteDirect {
            id,
            data: data.clone(),
        });
        if let Some((peer, peer_id)) = self.sim.peers[self.i].links.get(&id).copied()
            && peer < 2
        {
            self.sim.schedule(
                self.sim.direct_one_way,
                Ev::DirectData {
                    to: peer,
                    id: peer_id,
                    data,
                },
            );
        }
    }

    fn close_direct(&mut self, id: DirectId) {
        self.log(Output::CloseDirect { id });
        let i = self.i;
        self.sim.peers[i].dials.remove(&id);
        if let Some((peer, peer_id)) = self.sim.peers[i].links.remove(&id)
            && peer < 2
        {
            self.sim.schedule(
                self.sim.direct_one_way,
                Ev::DirectClosed {
                    to: peer,
                    id: peer_id,
                },
            );
        }
    }

    fn event(&mut self, event: Event, _timeline: &Timeline) {
        if let Event::Upgraded(up) = &event {
            // The winner now belongs to the application: stop tracking.
            self.sim.peers[self.i].dials.remove(&up.id);
        }
        self.log(Output::Event(event));
    }
}
