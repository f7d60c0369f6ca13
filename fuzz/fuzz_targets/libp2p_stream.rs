//! dcutr-libp2p's byte pump: the behaviour as the connection handler
//! drives it, with arbitrary `/libp2p/dcutr` stream bytes and stream events.
//!
//! The target plays the handler and the swarm around one
//! `dcutr_libp2p::Behaviour` with a relayed connection to one peer (either
//! side): streams open (ours or the peer's, current or stale numbers), fail
//! to open, carry Connect and Sync frames and junk split at arbitrary
//! points, end (EOF and reset look the same to the behaviour), and the
//! swarm reports dial results, inbound direct connections, closed
//! connections, new addresses, and the relayed connection going away.
//! Timeouts are a few milliseconds so the timers fire too.
//!
//! Invariants, besides "no panic": every byte the behaviour writes to a
//! stream is a well-formed DCUtR frame that decodes; it writes at most two
//! frames per stream it was given and at most `max_attempts` streams'
//! worth; it asks for at most `max_attempts` streams; its dials number at
//! most `max_dials_per_upgrade` and go only to addresses this input named
//! (in a Connect or as the peer's address), at most `max_punches_per_ip`
//! of them per IP per attempt; it reports exactly one outcome at most, and
//! none before the relayed connection existed.
#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arbitrary::Arbitrary;
use dcutr_core::settings::MAX_FRAME_LEN;
use dcutr_core::wire::{
    FrameDecoder, MAX_MESSAGE_SIZE, decode_message, encode_connect, encode_sync,
};
use dcutr_core::{AddressPolicy, Candidate};
use dcutr_libp2p::__fuzz::{Command, HandlerEvent};
use dcutr_libp2p::{Behaviour, Config, Report};
use either::Either;
use libfuzzer_sys::fuzz_target;
use libp2p_core::connection::ConnectedPoint;
use libp2p_core::transport::{PortUse, TransportError};
use libp2p_core::{Endpoint, Multiaddr};
use libp2p_identity::PeerId;
use libp2p_swarm::behaviour::{
    ConnectionClosed, ConnectionEstablished, DialFailure, FromSwarm, NewExternalAddrCandidate,
    NewExternalAddrOfPeer,
};
use libp2p_swarm::{ConnectionId, NetworkBehaviour, ToSwarm};

/// Most steps per input: keeps one input's work bounded.
const MAX_STEPS: usize = 64;
/// Most polls after one step before the behaviour must be idle.
const MAX_POLLS: usize = 10_000;
/// Total real time one input may sleep to let timers fire.
const MAX_SLEEP: Duration = Duration::from_millis(6);

/// One address; a handful of IPs so that per-IP caps are reached.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct AddrIn {
    quic: bool,
    /// The last octet of 198.51.100.x (documentation: passes the default
    /// public-only policy), or, above 200, a private 10.0.0.x.
    host: u8,
    port: u16,
}

impl AddrIn {
    fn candidate(self) -> Candidate {
        let ip = if self.host > 200 {
            Ipv4Addr::new(10, 0, 0, self.host)
        } else {
            Ipv4Addr::new(198, 51, 100, self.host % 8)
        };
        let addr = SocketAddr::new(IpAddr::V4(ip), self.port);
        if self.quic {
            Candidate::quic(addr)
        } else {
            Candidate::tcp(addr)
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Frame {
    Connect(Vec<AddrIn>),
    Sync,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// A stream opens with the next number (the peer's, or ours after Open).
    Opened,
    /// The end of a stream with a number not handed out yet.
    ClosedUnknown(u8),
    OpenFailed(bool),
    /// Frames on the current stream, cut at these offsets.
    Data {
        frames: Vec<Frame>,
        cuts: Vec<u16>,
    },
    /// Bytes for a stale stream number.
    DataStale(u8, Vec<u8>),
    /// The current stream ends (EOF or reset).
    Closed,
    ClosedStale(u8),
    /// The nth dial in flight fails, or succeeds.
    DialFailed(u8),
    DialSucceeded(u8),
    /// The peer connects to us directly from this address.
    Inbound(AddrIn),
    /// The nth direct connection closes.
    DirectClosed(u8),
    /// The relayed connection closes.
    RelayClosed,
    OwnAddr(AddrIn),
    PeerAddr(AddrIn),
    /// Sleep a millisecond so timers expire.
    Wait,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// We accepted the relayed connection (the spec's B) or dialled it.
    listener: bool,
    /// Timeouts in milliseconds (1..=4) so they fire within the input.
    step_ms: u8,
    direct_ms: u8,
    max_attempts: u8,
    /// Our observed addresses before the relayed connection (without any,
    /// we have nothing to send and the upgrade ends at once).
    own_addrs_first: Vec<AddrIn>,
    peer_addrs_first: Vec<AddrIn>,
    steps: Vec<Step>,
}

fn ms(v: u8) -> Duration {
    Duration::from_millis(1 + u64::from(v % 4))
}

fn libp2p_addr(c: &Candidate) -> Multiaddr {
    Multiaddr::try_from(c.to_multiaddr().to_vec()).expect("a candidate is a multiaddr")
}

struct World {
    b: Behaviour<Report>,
    peer: PeerId,
    relayed: ConnectionId,
    relayed_endpoint: ConnectedPoint,
    relay_open: bool,
    max_attempts: usize,
    max_dials: usize,
    max_per_ip: usize,
    /// Stream numbers handed out (as the handler numbers them).
    next_stream: u64,
    current: Option<u64>,
    /// Bytes the behaviour wrote, per stream.
    written: BTreeMap<u64, FrameDecoder>,
    frames_written: BTreeMap<u64, usize>,
    opens_asked: usize,
    /// Addresses the input named, as libp2p strings.
    named: Vec<(String, IpAddr)>,
    /// Dials in flight (connection id, debug string).
    dials: Vec<ConnectionId>,
    dials_total: usize,
    /// Dials per (attempt count of Opened so far, IP).
    per_ip: BTreeMap<(u64, IpAddr), usize>,
    directs: Vec<(ConnectionId, ConnectedPoint)>,
    next_conn: usize,
    outcomes: usize,
    slept: Duration,
}

impl World {
    fn name(&mut self, c: &Candidate) {
        self.named.push((libp2p_addr(c).to_string(), c.addr.ip()));
    }

    fn run(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..MAX_POLLS {
            match self.b.poll(&mut cx) {
                Poll::Pending => return,
                Poll::Ready(event) => self.on_event(event),
            }
        }
        panic!("the behaviour is still busy after {MAX_POLLS} polls");
    }

    fn on_event(&mut self, event: ToSwarm<Report, Either<Command, std::convert::Infallible>>) {
        match event {
            ToSwarm::GenerateEvent(Report::Outcome { .. }) => {
                self.outcomes += 1;
                assert!(
                    self.outcomes <= 1,
                    "two outcomes for one relayed connection"
                );
            }
            ToSwarm::GenerateEvent(Report::Progress(_)) => {}
            ToSwarm::Dial { opts } => {
                self.dials_total += 1;
                assert!(
                    self.dials_total <= self.max_dials,
                    "{} dials in one upgrade, cap {}",
                    self.dials_total,
                    self.max_dials
                );
                assert_eq!(
                    opts.get_peer_id(),
                    Some(self.peer),
                    "a dial to another peer"
                );
                // `DialOpts` shows its addresses only through `Debug`.
                let shown = format!("{opts:?}");
                let (_, ip) = self
                    .named
                    .iter()
                    .find(|(a, _)| shown.contains(&format!("{a}/p2p/")))
                    .unwrap_or_else(|| panic!("a dial to an address nobody named: {shown}"));
                let n = self.per_ip.entry((self.next_stream, *ip)).or_default();
                *n += 1;
                assert!(
                    *n <= self.max_per_ip * 2,
                    "{n} dials to {ip} in one attempt, cap {}",
                    self.max_per_ip
                );
                self.dials.push(opts.connection_id());
            }
            ToSwarm::NotifyHandler { event, .. } => match event {
                Either::Left(Command::Open) => {
                    self.opens_asked += 1;
                    assert!(
                        self.opens_asked <= self.max_attempts,
                        "{} streams asked for, max_attempts {}",
                        self.opens_asked,
                        self.max_attempts
                    );
                }
                Either::Left(Command::Write { stream, data }) => {
                    assert!(
                        stream <= self.next_stream,
                        "a write to a stream never opened"
                    );
                    let decoder = self
                        .written
                        .entry(stream)
                        .or_insert_with(|| FrameDecoder::new(MAX_MESSAGE_SIZE));
                    let mut rest = &data[..];
                    while !rest.is_empty() {
                        let frame = decoder
                            .decode(&mut rest)
                            .expect("the behaviour writes well-formed frames");
                        if let Some(frame) = frame {
                            decode_message(&frame).expect("the behaviour writes valid messages");
                            let n = self.frames_written.entry(stream).or_default();
                            *n += 1;
                            assert!(*n <= 2, "{n} frames on one stream");
                        }
                    }
                    let total: usize = self.frames_written.values().sum();
                    assert!(
                        total <= 2 * self.max_attempts,
                        "{total} frames written in all"
                    );
                    assert!(data.len() <= 2 * MAX_FRAME_LEN);
                }
                Either::Left(Command::Finish { .. } | Command::Reset { .. } | Command::Done) => {}
                Either::Right(never) => match never {},
            },
            _ => {}
        }
    }

    fn handler(&mut self, event: HandlerEvent) {
        self.b
            .on_connection_handler_event(self.peer, self.relayed, Either::Left(event));
    }

    fn conn(&mut self) -> ConnectionId {
        self.next_conn += 1;
        ConnectionId::new_unchecked(1_000_000 + self.next_conn)
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Opened => {
                if self.relay_open {
                    self.next_stream += 1;
                    self.current = Some(self.next_stream);
                    let stream = self.next_stream;
                    self.handler(HandlerEvent::Opened { stream });
                }
            }
            Step::ClosedUnknown(n) => {
                let stream = u64::from(n) + self.next_stream + 1;
                self.handler(HandlerEvent::Closed { stream });
            }
            Step::OpenFailed(unsupported) => self.handler(HandlerEvent::OpenFailed { unsupported }),
            Step::Data { frames, cuts } => {
                let Some(stream) = self.current else { return };
                let mut bytes = Vec::new();
                for f in frames.iter().take(8) {
                    match f {
                        Frame::Connect(addrs) => {
                            let cands: Vec<Candidate> =
                                addrs.iter().take(24).map(|a| a.candidate()).collect();
                            for c in &cands {
                                self.name(c);
                            }
                            let raw: Vec<Vec<u8>> =
                                cands.iter().map(|c| c.to_multiaddr().to_vec()).collect();
                            let (frame, _) =
                                encode_connect(raw.iter().map(Vec::as_slice), MAX_MESSAGE_SIZE);
                            bytes.extend_from_slice(&frame);
                        }
                        Frame::Sync => bytes.extend_from_slice(&encode_sync()),
                        Frame::Raw(raw) => bytes.extend_from_slice(&raw[..raw.len().min(512)]),
                    }
                }
                for range in dcutr_fuzz::chunks(&cuts, 16, bytes.len()) {
                    let data = bytes::Bytes::copy_from_slice(&bytes[range]);
                    self.handler(HandlerEvent::Data { stream, data });
                    self.run();
                }
            }
            Step::DataStale(n, data) => {
                let stream = self.next_stream.saturating_sub(1 + u64::from(n));
                if Some(stream) != self.current {
                    let data = bytes::Bytes::from(data);
                    self.handler(HandlerEvent::Data { stream, data });
                }
            }
            Step::Closed => {
                if let Some(stream) = self.current.take() {
                    self.handler(HandlerEvent::Closed { stream });
                }
            }
            Step::ClosedStale(n) => {
                let stream = self.next_stream.saturating_sub(1 + u64::from(n));
                if Some(stream) != self.current {
                    self.handler(HandlerEvent::Closed { stream });
                }
            }
            Step::DialFailed(n) => {
                if self.dials.is_empty() {
                    return;
                }
                let id = self.dials.remove(usize::from(n) % self.dials.len());
                let addr: Multiaddr = "/ip4/198.51.100.1/tcp/1".parse().unwrap();
                let error = if n % 2 == 0 {
                    libp2p_swarm::DialError::Transport(vec![(
                        addr,
                        TransportError::Other(std::io::Error::from(
                            std::io::ErrorKind::ConnectionRefused,
                        )),
                    )])
                } else {
                    libp2p_swarm::DialError::Aborted
                };
                self.b.on_swarm_event(FromSwarm::DialFailure(DialFailure {
                    peer_id: Some(self.peer),
                    error: &error,
                    connection_id: id,
                }));
            }
            Step::DialSucceeded(n) => {
                if self.dials.is_empty() {
                    return;
                }
                let id = self.dials.remove(usize::from(n) % self.dials.len());
                let endpoint = ConnectedPoint::Dialer {
                    address: "/ip4/198.51.100.1/tcp/4001".parse().unwrap(),
                    role_override: Endpoint::Dialer,
                    port_use: PortUse::Reuse,
                };
                self.established(id, endpoint);
            }
            Step::Inbound(a) => {
                let id = self.conn();
                let endpoint = ConnectedPoint::Listener {
                    local_addr: "/ip4/198.51.100.200/tcp/4001".parse().unwrap(),
                    send_back_addr: libp2p_addr(&a.candidate()),
                };
                self.established(id, endpoint);
            }
            Step::DirectClosed(n) => {
                if self.directs.is_empty() {
                    return;
                }
                let (id, endpoint) = self.directs.remove(usize::from(n) % self.directs.len());
                self.b
                    .on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                        peer_id: self.peer,
                        connection_id: id,
                        endpoint: &endpoint,
                        cause: None,
                        remaining_established: 1,
                    }));
            }
            Step::RelayClosed => {
                if self.relay_open {
                    self.relay_open = false;
                    self.current = None;
                    let endpoint = self.relayed_endpoint.clone();
                    self.b
                        .on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                            peer_id: self.peer,
                            connection_id: self.relayed,
                            endpoint: &endpoint,
                            cause: None,
                            remaining_established: self.directs.len(),
                        }));
                }
            }
            Step::OwnAddr(a) => {
                let addr = libp2p_addr(&a.candidate());
                self.b.on_swarm_event(FromSwarm::NewExternalAddrCandidate(
                    NewExternalAddrCandidate { addr: &addr },
                ));
            }
            Step::PeerAddr(a) => {
                let c = a.candidate();
                self.name(&c);
                let addr = libp2p_addr(&c);
                self.b
                    .on_swarm_event(FromSwarm::NewExternalAddrOfPeer(NewExternalAddrOfPeer {
                        peer_id: self.peer,
                        addr: &addr,
                    }));
            }
            Step::Wait => {
                if self.slept < MAX_SLEEP {
                    std::thread::sleep(Duration::from_millis(1));
                    self.slept += Duration::from_millis(1);
                }
            }
        }
        self.run();
    }

    fn established(&mut self, id: ConnectionId, endpoint: ConnectedPoint) {
        self.b
            .on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id: self.peer,
                connection_id: id,
                endpoint: &endpoint,
                failed_addresses: &[],
                other_established: 1,
            }));
        self.directs.push((id, endpoint));
    }
}

fn peer_id(byte: u8) -> PeerId {
    // An identity multihash: deterministic, no key generation.
    let mut bytes = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    bytes.extend_from_slice(&[byte; 32]);
    PeerId::from_bytes(&bytes).expect("an identity peer id")
}

fuzz_target!(|input: Input| {
    let mut config = Config::default().with_address_policy(AddressPolicy::public_only());
    config.core.step_timeout = ms(input.step_ms);
    config.core.direct_timeout = ms(input.direct_ms);
    config.core.unilateral_timeout = ms(input.direct_ms);
    config.core.confirm_timeout = ms(input.step_ms);
    config.core.relay_grace_period = Duration::from_millis(1);
    config.core.max_attempts = 1 + input.max_attempts % 3;
    config.seed = Some([7; 32]);
    let (max_attempts, max_dials, max_per_ip) = (
        usize::from(config.core.max_attempts),
        config.core.max_dials_per_upgrade,
        config.core.max_punches_per_ip,
    );
    let b = Behaviour::<Report>::with_config(peer_id(1), config).expect("a valid config");
    let relayed = ConnectionId::new_unchecked(1);
    let circuit: Multiaddr = "/ip4/198.51.100.250/tcp/4001/p2p-circuit".parse().unwrap();
    let relayed_endpoint = if input.listener {
        ConnectedPoint::Listener {
            local_addr: circuit.clone(),
            send_back_addr: circuit,
        }
    } else {
        ConnectedPoint::Dialer {
            address: circuit,
            role_override: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        }
    };
    let mut w = World {
        b,
        peer: peer_id(2),
        relayed,
        relayed_endpoint,
        relay_open: true,
        max_attempts,
        max_dials,
        max_per_ip,
        next_stream: 0,
        current: None,
        written: BTreeMap::new(),
        frames_written: BTreeMap::new(),
        opens_asked: 0,
        named: Vec::new(),
        dials: Vec::new(),
        dials_total: 0,
        per_ip: BTreeMap::new(),
        directs: Vec::new(),
        next_conn: 0,
        outcomes: 0,
        slept: Duration::ZERO,
    };
    // At least one usable address of ours, so that most inputs get past
    // the start; the input adds more, or private ones the policy drops.
    let own = AddrIn {
        quic: false,
        host: 100,
        port: 4001,
    };
    w.step(Step::OwnAddr(own));
    for a in input.own_addrs_first.iter().take(4) {
        w.step(Step::OwnAddr(*a));
    }
    for a in input.peer_addrs_first.iter().take(4) {
        w.step(Step::PeerAddr(*a));
    }
    let endpoint = w.relayed_endpoint.clone();
    w.b.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
        peer_id: w.peer,
        connection_id: relayed,
        endpoint: &endpoint,
        failed_addresses: &[],
        other_established: 0,
    }));
    w.run();
    for step in input.steps.into_iter().take(MAX_STEPS) {
        w.step(step);
    }
    if dcutr_fuzz::trace() {
        let frames: usize = w.frames_written.values().sum();
        eprintln!(
            "trace libp2p_stream listener={} streams={} opens={} frames_written={frames} dials={} outcomes={}",
            input.listener, w.next_stream, w.opens_asked, w.dials_total, w.outcomes
        );
    }
});
