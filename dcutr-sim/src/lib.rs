//! # dcutr-sim
//!
//! A deterministic, simulated world for two [`dcutr_core::Upgrade`]s: a
//! relayed stream with a chosen one-way delay, a direct path with its own
//! delay, and a simple NAT model, all on a fake clock. Tests, examples and
//! benchmarks share it instead of each wiring its own.
//!
//! Time only moves when [`Sim::step`] jumps to the next event or timer, so
//! a simulated minute takes microseconds and nothing sleeps.
//!
//! ## The model
//! * **Relayed stream:** bytes written by one side arrive at the other
//!   after [`SimConfig::relay_one_way`], in order. With per-attempt streams,
//!   each `OpenStream` starts a new stream generation; stale events of an
//!   older stream are dropped.
//! * **NAT:** a [`Nat::Firewalled`] peer accepts a packet from address X
//!   only if it already sent a packet (dial or spray) to X, as an
//!   endpoint-independent NAT with a stateful firewall does. A
//!   [`Nat::Public`] peer accepts everything.
//! * **TCP dials** send SYNs at 0, 1, 3 and 7 s (Linux's doubling RTO);
//!   each arrives after [`SimConfig::direct_one_way`]. An accepted SYN meets
//!   the peer's own dial (simultaneous open: both dials succeed) or its
//!   listener (an inbound connection).
//! * **QUIC dials** send Initials at the same offsets; an accepted Initial
//!   becomes an inbound connection at the peer's endpoint.
//! * Direct bytes (the identity check) take `direct_one_way` as well.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dcutr_core::{
    Candidate, Carrier, Config, Dial, DialError, DialPurpose, DirectId, Event, Outcome, Output,
    Side, SprayPayload, Transport, Upgrade, reason::StreamUnavailable, record::Timeline,
};

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

/// SYN / Initial retransmission offsets from the start of a dial.
const RETRANSMITS: [Duration; 4] = [
    Duration::from_secs(0),
    Duration::from_secs(1),
    Duration::from_secs(3),
    Duration::from_secs(7),
];

/// How a peer's network treats unsolicited inbound packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// No NAT, no firewall: every packet gets in.
    Public,
    /// Endpoint-independent NAT with a stateful firewall: a packet from X
    /// gets in only after we sent one to X.
    Firewalled,
}

/// One simulated peer.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    /// The addresses others observe for it (what it advertises). Dials to
    /// any other address go nowhere.
    pub addrs: Vec<Candidate>,
    /// Its NAT.
    pub nat: Nat,
    /// Addresses of the other peer it knows as public (for the initiator's
    /// unilateral dial).
    pub remote_public: Vec<Candidate>,
    /// Its core config.
    pub config: Config,
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
    /// One-way delay of the relayed stream.
    pub relay_one_way: Duration,
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
    /// given delays, and `config` on both sides.
    #[must_use]
    pub fn two_nats(config: &Config, relay_one_way: Duration, direct_one_way: Duration) -> Self {
        SimConfig {
            relay_one_way,
            direct_one_way,
            initiator: PeerSpec {
                addrs: vec![
                    Candidate::tcp(addr("198.51.100.2:4001")),
                    Candidate::quic(addr("198.51.100.2:4001")),
                ],
                nat: Nat::Firewalled,
                remote_public: Vec::new(),
                config: config.clone(),
            },
            responder: PeerSpec {
                addrs: vec![
                    Candidate::tcp(addr("203.0.113.7:5001")),
                    Candidate::quic(addr("203.0.113.7:5001")),
                ],
                nat: Nat::Firewalled,
                remote_public: Vec::new(),
                config: config.clone(),
            },
            blocked_attempts: Vec::new(),
            block: Block::Drop,
            seed: 1,
        }
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
    /// A SYN or Initial of `from`'s dial reaches the other peer's NAT.
    Arrive {
        from: usize,
        dial: DirectId,
        to: Candidate,
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
    Stranger {
        to: usize,
        from: Candidate,
        data: Bytes,
    },
}

struct Peer {
    side: Side,
    /// `None` only while its commands are being carried out.
    upgrade: Option<Upgrade>,
    spec: PeerSpec,
    /// (destination, transport, time) of every packet sent.
    sent: Vec<(SocketAddr, Transport, Instant)>,
    /// Our dials still wanted, with their target.
    dials: BTreeMap<DirectId, Candidate>,
    /// Our direct connection ids mapped to the peer's id for the same
    /// connection.
    links: BTreeMap<DirectId, (usize, DirectId)>,
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

    fn opened_towards(&self, remote: SocketAddr, transport: Transport, by: Instant) -> bool {
        self.sent
            .iter()
            .any(|(to, t, at)| *to == remote && *t == transport && *at <= by)
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
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: BTreeMap<u64, Ev>,
    next_seq: u64,
    relay_one_way: Duration,
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
        let make = |side: Side, spec: &PeerSpec, remote_public: &[Candidate], salt: u8| {
            let mut seed = [salt; 32];
            seed[..8].copy_from_slice(&cfg.seed.to_le_bytes());
            Upgrade::builder(side, spec.config.clone(), seed)
                .local_addrs(spec.addrs.iter().copied())
                .remote_public_addrs(remote_public.iter().copied())
                .start(start)
                .expect("simulation configs are valid")
        };
        let initiator = make(
            Side::Initiator,
            &cfg.initiator,
            &cfg.initiator.remote_public,
            1,
        );
        let responder = make(Side::Responder, &cfg.responder, &[], 2);
        let peer = |side, upgrade, spec: &PeerSpec| Peer {
            side,
            upgrade: Some(upgrade),
            spec: spec.clone(),
            sent: Vec::new(),
            dials: BTreeMap::new(),
            links: BTreeMap::new(),
            generation: 0,
        };
        let mut sim = Sim {
            now: start,
            start,
            peers: [
                peer(Side::Initiator, initiator, &cfg.initiator),
                peer(Side::Responder, responder, &cfg.responder),
            ],
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_seq: 0,
            relay_one_way: cfg.relay_one_way,
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

    /// Schedules a stranger's connection to side `to` at `after` from now,
    /// sending `data` as its first bytes.
    pub fn inject_stranger(&mut self, to: usize, after: Duration, from: Candidate, data: Bytes) {
        self.schedule(after, Ev::Stranger { to, from, data });
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
        let next_event = self.queue.peek().map(|Reverse((at, _))| *at);
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
        let next_event = self.queue.peek().map(|Reverse((at, _))| *at);
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
            let Reverse((_, seq)) = self.queue.pop().expect("peeked");
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
        self.events.insert(seq, ev);
        self.queue.push(Reverse((self.now + after, seq)));
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
            Ev::Arrive { from, dial, to } => self.arrive(from, dial, to),
            Ev::DialSucceeded { to, id } => {
                if self.peers[to].dials.contains_key(&id) {
                    self.peers[to].core_mut().handle_dial_succeeded(now, id);
                    self.drain(to);
                }
            }
            Ev::DialFailed { to, id, error } => {
                if self.peers[to].dials.remove(&id).is_some() {
                    self.peers[to].core_mut().handle_dial_failed(now, id, error);
                    self.drain(to);
                }
            }
            Ev::DirectData { to, id, data } => {
                if self.peers[to].links.contains_key(&id) {
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
            Ev::Stranger { to, from, data } => {
                if let Ok(id) = self.peers[to].core_mut().handle_inbound(now, from) {
                    // The stranger is not a peer: link to a sink index.
                    self.peers[to].links.insert(id, (usize::MAX, id));
                    self.drain(to);
                    self.peers[to].core_mut().handle_direct_data(now, id, &data);
                }
                self.drain(to);
            }
        }
    }

    /// A SYN/Initial from `from`'s dial `dial` reaches the NAT of the
    /// peer that owns `to`.
    fn arrive(&mut self, from: usize, dial: DirectId, to: Candidate) {
        let now = self.now;
        if !self.peers[from].dials.contains_key(&dial) || self.peers[from].links.contains_key(&dial)
        {
            return; // cancelled, or already connected by an earlier packet
        }
        let other = 1 - from;
        let src = self.peers[from].own_addr(to.transport, from);
        let open = match self.peers[other].spec.nat {
            Nat::Public => true,
            Nat::Firewalled => self.peers[other].opened_towards(src.addr, to.transport, now),
        };
        if !open {
            return;
        }
        let d = self.direct_one_way;
        // Simultaneous open: the other side is dialling us over TCP too.
        let crossing = (to.transport == Transport::Tcp)
            .then(|| {
                self.peers[other]
                    .dials
                    .iter()
                    .find(|(id, c)| **c == src && !self.peers[other].links.contains_key(*id))
                    .map(|(id, _)| *id)
            })
            .flatten();
        let other_id = match crossing {
            Some(id) => {
                self.schedule(Duration::ZERO, Ev::DialSucceeded { to: other, id });
                id
            }
            None => match self.peers[other].core_mut().handle_inbound(now, src) {
                Ok(id) => {
                    self.drain(other);
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
            self.sim.relay_one_way,
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
            self.sim.relay_one_way,
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
            self.sim.relay_one_way,
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
        let now = sim.now;
        sim.dialled.push((i, dial.to));
        sim.peers[i].dials.insert(dial.id, dial.to);
        let blocked = sim.blocked_attempts.contains(&dial.attempt)
            || (dial.purpose == DialPurpose::Unilateral
                && sim.peers[other].spec.nat != Nat::Public);
        let owned = sim.peers[other].spec.addrs.contains(&dial.to);
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
        for offset in RETRANSMITS {
            sim.peers[i]
                .sent
                .push((dial.to.addr, dial.to.transport, now + offset));
            if owned && !blocked {
                sim.schedule(
                    offset + d,
                    Ev::Arrive {
                        from: i,
                        dial: dial.id,
                        to: dial.to,
                    },
                );
            }
        }
        Ok(())
    }

    fn send_datagram(&mut self, to: SocketAddr, payload: SprayPayload) {
        self.log(Output::SendDatagram { to, payload });
        let now = self.sim.now;
        self.sim.datagrams.push((self.i, to));
        self.sim.peers[self.i].sent.push((to, Transport::Quic, now));
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
