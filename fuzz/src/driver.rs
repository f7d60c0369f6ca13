//! Drives one [`Upgrade`] through scripted, timestamped inputs and checks
//! its invariants after every step.
//!
//! The driver plays the peer and the network at once: it feeds stream
//! bytes (well-formed Hello/Connect/Sync frames mixed with garbage, in any
//! chunking), opens and closes streams, reports dial results for ids the
//! core handed out or made-up ones, delivers inbound connections and direct
//! bytes, and fires timeouts. Time only moves forward.
//!
//! Invariants (each `assert!` names the one it guards):
//! * no panic in the core;
//! * after the outcome event only cleanup outputs follow (`CloseDirect`,
//!   `CloseRelay`, `ResetStream`, `FinishStream`) and never a second
//!   outcome; `CloseRelay` only after `Upgraded`, at most once;
//! * `AttemptStarted` numbers run 1, 2, … and never pass `max_attempts`;
//! * every hole-punch `Dial` and every `SendDatagram` goes to a candidate
//!   that `filter_remote` accepts from a Connect frame the driver fed; a
//!   unilateral dial only to a configured public address that passes the
//!   policy; dial roles and transports follow the spec (the initiator never
//!   dials QUIC in a punch, the responder never sprays);
//! * per attempt at most `max_remote_addrs` dials and at most
//!   `max_spray_packets_per_attempt` datagrams;
//! * the winner is a connection the driver reported as connected; with
//!   pinned TLS its handshake proved the certificate the peer's `Hello`
//!   pinned (and, on the client, it carried the select byte), and nothing
//!   but the select byte is written on a direct connection, only on one
//!   that proved itself;
//! * `poll_timeout()` is never before the latest `now`, and after
//!   `handle_timeout(t)` nothing is due at `t` any more (no busy loop);
//! * `stream_bytes_wanted()` never exceeds the frame limit, and a driver
//!   that reads no more than it is never told about trailing bytes;
//! * `heap_estimate()` stays under a bound computed from the config;
//! * every frame we write is a valid frame within the size limit;
//! * the outcome is decided within a bound computed from the config, and
//!   once the inputs stop, the timers alone finish the upgrade.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use dcutr_core::birthday::{Local, Transmit};
use dcutr_core::filter::filter_remote;
use dcutr_core::nat::NatBehaviour;
use dcutr_core::wire::{self, FrameDecoder, Message, NatWire};
use dcutr_core::{
    AttemptFailure, Candidate, Config, Dial, DialError, DialPurpose, DirectId, Event, Output,
    ProtocolError, Role, Side, Transport, Upgrade, settings::FINGERPRINT_LEN,
};
use dcutr_sim::Protocol;

/// How the upgrade under test is set up.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Which side the core plays; the driver plays the other one.
    pub side: Side,
    /// The core's config (must be valid).
    pub config: Config,
    /// The spec, or the dcutr-rs session (with [`OWN_FINGERPRINT`], or
    /// without its pin): the builder call the upgrade gets.
    pub protocol: Protocol,
    /// The core's seed.
    pub seed: [u8; 32],
    /// Our observed addresses.
    pub local: Vec<Candidate>,
    /// The peer's public addresses (unilateral dial).
    pub remote_public: Vec<Candidate>,
    /// Our NAT's behaviour, if known (with the peer's, it may call for
    /// the birthday punch).
    pub nat: Option<NatBehaviour>,
    /// Feed stream bytes no faster than `stream_bytes_wanted()` allows,
    /// as a careful driver on a shared stream does.
    pub respect_wanted: bool,
    /// Fire every timer that is due before the next input, as a driver
    /// with a working event loop does. Without it timers fire only on
    /// [`Input::Timeout`] (a late driver), and the time bound is not
    /// checked.
    pub punctual: bool,
}

/// One frame (or junk) the peer writes to the relayed stream.
#[derive(Clone, Debug)]
pub enum Frame {
    /// A `Hello` (of the other side) pinning this fingerprint.
    Hello([u8; FINGERPRINT_LEN]),
    /// A Connect carrying these raw `ObsAddrs` entries.
    Connect(Vec<Vec<u8>>),
    /// A Connect that also declares the sender's NAT (the dcutr-rs
    /// extension field).
    ConnectNat(Vec<Vec<u8>>, NatWire),
    /// A Sync.
    Sync,
    /// Raw bytes, framed or not.
    Raw(Vec<u8>),
}

/// What a birthday datagram carries.
#[derive(Clone, Debug)]
pub enum BirthdayPayload {
    /// The payload of the core's `n`-th birthday transmit (modulo the
    /// count), with byte `at` (modulo the length) xored with `flip`: the
    /// peer's answers look like ours, so this reaches the checks past
    /// the marker and token.
    Echo { n: u16, at: u8, flip: u8 },
    /// Anything.
    Raw(Vec<u8>),
}

/// Which direct connection an input is about.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// The n-th dial the core asked for (modulo the count).
    Dial(usize),
    /// The n-th id the driver knows (dials and accepted inbound ones).
    Known(usize),
    /// Any id, probably unknown to the core.
    Raw(u64),
}

/// What arrives on a direct connection.
#[derive(Clone, Debug)]
pub enum DirectPayload {
    /// The select byte.
    Select,
    /// Anything.
    Bytes(Vec<u8>),
}

/// One input.
#[derive(Clone, Debug)]
pub enum Input {
    /// Frames written by the peer, delivered in chunks of `chunk` bytes
    /// (0: all at once).
    Stream {
        /// The frames, concatenated.
        frames: Vec<Frame>,
        /// Chunk size.
        chunk: usize,
    },
    /// A stream opened.
    StreamOpened,
    /// The stream closed.
    StreamClosed,
    /// A dial connected.
    DialSucceeded(Target),
    /// A dial failed.
    DialFailed(Target, DialError),
    /// A connection arrived from this address.
    Inbound(Candidate),
    /// A spray datagram arrived at the punch socket from this address
    /// (`Upgrade::handle_peer_reflexive`).
    PeerReflexive(Candidate),
    /// Bytes on a direct connection.
    DirectData(Target, DirectPayload),
    /// A direct connection closed.
    DirectClosed(Target),
    /// The TLS handshake on a direct connection proved this certificate.
    Authenticated(Target, [u8; FINGERPRINT_LEN]),
    /// The TLS handshake on a direct connection failed, after the other
    /// end presented this certificate (if it got that far).
    HandshakeFailed(Target, Option<[u8; FINGERPRINT_LEN]>),
    /// A birthday datagram arrived at our socket `local` from `from`.
    BirthdayDatagram(Local, Candidate, BirthdayPayload),
    /// A birthday connect of ours from `local` completed with `remote`.
    BirthdayConnected(Local, Candidate),
    /// Jump to the next timeout and fire it.
    Timeout,
    /// A newly observed address of ours.
    ObserveLocal(Candidate),
    /// The honest peer's next move, whatever it is (answer the stream,
    /// send the next message, complete a dial with the right check bytes,
    /// or wait for the next timer): lets inputs reach the deep states.
    Honest,
}

/// An input after `advance` of time.
#[derive(Clone, Debug)]
pub struct Step {
    /// How far time moves first.
    pub advance: Duration,
    /// The input.
    pub input: Input,
}

/// The honest peer's certificate fingerprint.
pub const PEER_FINGERPRINT: [u8; FINGERPRINT_LEN] = [0x5a; FINGERPRINT_LEN];
/// The core's own certificate fingerprint.
const OWN_FINGERPRINT: [u8; FINGERPRINT_LEN] = [0xa5; FINGERPRINT_LEN];
/// The honest peer's addresses: public, so every policy accepts them.
const PEER_ADDRS: [Candidate; 3] = [
    Candidate::tcp(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        5001,
    )),
    Candidate::quic(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        5001,
    )),
    Candidate::quic(SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0x4860, 0, 0, 0, 0, 0, 1)),
        5001,
    )),
];

/// What the honest peer of [`Input::Honest`] has done so far.
#[derive(Default)]
struct Honest {
    hello_sent: bool,
    /// `OpenStream`s the core asked for and the peer has not answered.
    open_pending: u32,
    /// Connects the core wrote, and how many the peer answered.
    core_connects: u32,
    connects_answered: u32,
    core_connects_before: u32,
    stream_open: bool,
    connect_sent: bool,
    sync_sent: bool,
    /// Dials the peer has completed (or given up on).
    settled: BTreeSet<DirectId>,
}
const SELECT: u8 = 0x01;
const CLEANUP_LIMIT: usize = 100_000;

/// The harness around one upgrade.
pub struct Driver {
    up: Upgrade,
    side: Side,
    config: Config,
    protocol: Protocol,
    respect_wanted: bool,
    punctual: bool,
    start: Instant,
    now: Instant,
    /// The latest `now` handed to the core.
    passed: Instant,
    /// Whether the core's `Hello` went out.
    hello_written: bool,
    /// The certificate each direct connection's handshake proved.
    authenticated: BTreeMap<DirectId, [u8; FINGERPRINT_LEN]>,
    /// Every stream byte fed, for the fallback scan of Connect frames.
    fed: Vec<u8>,
    scanned_len: usize,
    allowed: BTreeSet<Candidate>,
    unilateral_ok: BTreeSet<Candidate>,
    dials: Vec<Dial>,
    dial_by_id: BTreeMap<DirectId, Dial>,
    known: Vec<DirectId>,
    inbound: BTreeMap<DirectId, (Candidate, Role)>,
    connected: BTreeSet<DirectId>,
    direct_rx: BTreeMap<DirectId, Vec<u8>>,
    responder_took_connect: bool,
    honest: Honest,
    outcome: Option<bool>,
    close_relay: u32,
    attempts: u8,
    spray_in_attempt: u32,
    punch_dials_in_attempt: usize,
    /// The source of the spray datagram being applied: the only address
    /// a hole-punch dial may go to without a Connect naming it.
    reflexive_source: Option<Candidate>,
    reflexive_dials_in_attempt: usize,
    unilateral_dials: usize,
    /// Every birthday transmit, in order (inputs echo them).
    birthday: Vec<Transmit>,
    /// Every IP a Connect or the observer named for the peer.
    peer_ips: BTreeSet<std::net::IpAddr>,
    /// Every output, in order, for replay comparisons.
    pub log: Vec<Output>,
}

impl Driver {
    /// Starts the upgrade and checks its first outputs.
    ///
    /// # Panics
    /// When the config is invalid (a harness bug) or an invariant breaks.
    #[must_use]
    pub fn new(setup: Setup, start: Instant) -> Self {
        let config = setup.config.clone();
        let builder = Upgrade::builder(setup.side, config.clone(), setup.seed)
            .local_addrs(setup.local.iter().copied())
            .remote_public_addrs(setup.remote_public.iter().copied());
        let builder = match setup.nat.clone() {
            Some(nat) => builder.nat_behaviour(nat),
            None => builder,
        };
        let builder = match setup.protocol {
            Protocol::Spec => builder,
            Protocol::SessionUnpinned => builder.dcutr_session_unpinned(),
            Protocol::Session => builder.dcutr_session(OWN_FINGERPRINT),
        };
        let up = builder
            .start(start)
            .expect("the harness builds valid configs");
        let unilateral_ok = setup
            .remote_public
            .iter()
            .copied()
            .filter(|c| config.address_policy.check(c).is_ok() && config.dialable.allows(c))
            .collect();
        let mut d = Driver {
            up,
            side: setup.side,
            config,
            protocol: setup.protocol,
            respect_wanted: setup.respect_wanted,
            punctual: setup.punctual,
            start,
            now: start,
            passed: start,
            hello_written: false,
            authenticated: BTreeMap::new(),
            fed: Vec::new(),
            scanned_len: 0,
            allowed: BTreeSet::new(),
            unilateral_ok,
            dials: Vec::new(),
            dial_by_id: BTreeMap::new(),
            known: Vec::new(),
            inbound: BTreeMap::new(),
            connected: BTreeSet::new(),
            direct_rx: BTreeMap::new(),
            responder_took_connect: false,
            honest: Honest::default(),
            outcome: None,
            close_relay: 0,
            attempts: 0,
            spray_in_attempt: 0,
            punch_dials_in_attempt: 0,
            reflexive_source: None,
            reflexive_dials_in_attempt: 0,
            unilateral_dials: 0,
            birthday: Vec::new(),
            peer_ips: setup.remote_public.iter().map(|c| c.addr.ip()).collect(),
            log: Vec::new(),
        };
        d.drain();
        d.check_state();
        d
    }

    /// The upgrade under test.
    #[must_use]
    pub fn upgrade(&self) -> &Upgrade {
        &self.up
    }

    /// Runs every step, then lets the timers finish the upgrade.
    pub fn run(&mut self, steps: &[Step]) {
        for step in steps {
            self.step(step);
        }
        self.finish();
        if crate::trace() {
            eprintln!("{}", self.summary());
        }
    }

    /// One line on how far the upgrade got, for [`crate::trace`].
    #[must_use]
    pub fn summary(&self) -> String {
        let count = |f: fn(&Output) -> bool| self.log.iter().filter(|o| f(o)).count().min(9);
        let outcome = match self.up.outcome() {
            Some(dcutr_core::Outcome::Upgraded(u)) => format!("upgraded/{}/{}", u.attempt, u.role),
            Some(dcutr_core::Outcome::Failed(f)) => {
                let s = format!("{f:?}");
                format!("failed/{}", s.split(['(', ' ', '{']).next().unwrap_or(""))
            }
            None => "none".to_owned(),
        };
        format!(
            "trace {} {:?} attempts={} punch={} dials={} spray={} direct_writes={} {outcome}",
            self.side,
            self.protocol,
            self.attempts,
            count(|o| matches!(o, Output::Event(Event::Punch { .. }))),
            self.dials.len().min(9),
            count(|o| matches!(o, Output::SendDatagram { .. })),
            count(|o| matches!(o, Output::WriteDirect { .. })),
        )
    }

    /// Applies one input and checks every invariant.
    pub fn step(&mut self, step: &Step) {
        // Time only moves forward; cap it far below `Instant` overflow.
        let mut target = self.now;
        if self.now.duration_since(self.start) < Duration::from_secs(100_000) {
            target += step.advance;
        }
        if self.punctual {
            while let Some(t) = self.up.poll_timeout().filter(|t| t.at <= target) {
                self.now = self.now.max(t.at);
                self.fire_timeout();
                self.check_state();
            }
        }
        self.now = target;
        self.apply(&step.input);
        self.drain();
        self.reflexive_source = None;
        self.check_state();
    }

    fn apply(&mut self, input: &Input) {
        let now = self.now;
        if !matches!(
            input,
            Input::Stream { .. } | Input::ObserveLocal(_) | Input::Honest
        ) {
            self.passed = now;
        }
        match input {
            Input::Stream { frames, chunk } => self.feed_stream(frames, *chunk),
            Input::StreamOpened => self.up.handle_stream_opened(now),
            Input::StreamClosed => self.up.handle_stream_closed(now),
            Input::DialSucceeded(t) => {
                let id = self.resolve(*t);
                if self.dial_by_id.contains_key(&id) {
                    self.connected.insert(id);
                }
                self.up.handle_dial_succeeded(now, id);
            }
            Input::DialFailed(t, err) => {
                let id = self.resolve(*t);
                self.up.handle_dial_failed(now, id, *err);
            }
            Input::Inbound(from) => {
                let role = match self.side {
                    Side::Initiator => Role::Server,
                    Side::Responder if self.responder_took_connect => Role::Client,
                    Side::Responder => Role::Server,
                };
                if let Ok(id) = self.up.handle_inbound(now, *from) {
                    assert!(
                        !self.dial_by_id.contains_key(&id) && !self.inbound.contains_key(&id),
                        "inbound connection got an id already in use: {id}"
                    );
                    self.inbound.insert(id, (*from, role));
                    self.connected.insert(id);
                    self.known.push(id);
                }
            }
            Input::PeerReflexive(from) => {
                self.reflexive_source = Some(*from);
                let _ = self.up.handle_peer_reflexive(now, *from);
            }
            Input::BirthdayDatagram(local, from, payload) => {
                let bytes = match payload {
                    BirthdayPayload::Raw(raw) => raw.clone(),
                    // Nothing to echo yet: an empty datagram (the core
                    // must still see `now`).
                    BirthdayPayload::Echo { n, at, flip } => {
                        let index = usize::from(*n) % self.birthday.len().max(1);
                        let echoed = self.birthday.get(index);
                        let mut bytes = echoed.map(|t| t.payload.to_vec()).unwrap_or_default();
                        if !bytes.is_empty() {
                            let at = usize::from(*at) % bytes.len();
                            bytes[at] ^= flip;
                        }
                        bytes
                    }
                };
                let _ = self
                    .up
                    .handle_birthday_datagram(now, *local, from.addr, &bytes);
            }
            Input::BirthdayConnected(local, remote) => {
                if let Ok(id) = self.up.handle_birthday_connected(now, *local, remote.addr) {
                    assert!(
                        !self.dial_by_id.contains_key(&id) && !self.inbound.contains_key(&id),
                        "a birthday connection got an id already in use: {id}"
                    );
                    // Ours: it counts as the hole-punch dial that connected.
                    self.connected.insert(id);
                    self.known.push(id);
                }
            }
            Input::DirectData(t, payload) => {
                let id = self.resolve(*t);
                let data = self.direct_payload(payload);
                // Only a connection that exists receives bytes.
                if self.connected.contains(&id) {
                    let rx = self.direct_rx.entry(id).or_default();
                    if rx.len() <= 1 {
                        rx.extend_from_slice(&data[..data.len().min(2 - rx.len())]);
                    }
                }
                self.up.handle_direct_data(now, id, &data);
            }
            Input::DirectClosed(t) => {
                let id = self.resolve(*t);
                self.up.handle_direct_closed(now, id);
            }
            Input::Authenticated(t, fingerprint) => {
                let id = self.resolve(*t);
                if self.connected.contains(&id) {
                    self.authenticated.entry(id).or_insert(*fingerprint);
                }
                self.up.handle_direct_authenticated(now, id, *fingerprint);
            }
            Input::HandshakeFailed(t, presented) => {
                let id = self.resolve(*t);
                self.up.handle_direct_handshake_failed(now, id, *presented);
            }
            Input::Timeout => {
                if let Some(t) = self.up.poll_timeout() {
                    self.now = self.now.max(t.at);
                }
                self.fire_timeout();
            }
            Input::ObserveLocal(c) => self.up.observe_local(*c),
            Input::Honest => {
                let next = self.honest_move();
                self.apply(&next);
            }
        }
    }

    /// What an honest peer does next, given what the core has said.
    fn honest_move(&mut self) -> Input {
        let pinned = self.protocol == Protocol::Session;
        let per_attempt = self.protocol == Protocol::Spec;
        let h = &mut self.honest;
        if pinned && !h.hello_sent {
            h.hello_sent = true;
            return Input::Stream {
                frames: vec![Frame::Hello(PEER_FINGERPRINT)],
                chunk: 0,
            };
        }
        let peer_connect = || {
            Frame::Connect(
                PEER_ADDRS
                    .iter()
                    .map(|c| c.to_multiaddr().to_vec())
                    .collect(),
            )
        };
        match self.side {
            Side::Initiator => {
                if h.open_pending > 0 {
                    h.open_pending -= 1;
                    return Input::StreamOpened;
                }
                if h.core_connects > h.connects_answered {
                    h.connects_answered = h.core_connects;
                    return Input::Stream {
                        frames: vec![peer_connect()],
                        chunk: 0,
                    };
                }
            }
            Side::Responder => {
                if per_attempt && !h.stream_open {
                    h.stream_open = true;
                    return Input::StreamOpened;
                }
                if !h.connect_sent {
                    h.connect_sent = true;
                    h.core_connects_before = h.core_connects;
                    return Input::Stream {
                        frames: vec![peer_connect()],
                        chunk: 0,
                    };
                }
                if !h.sync_sent && h.core_connects > h.core_connects_before {
                    h.sync_sent = true;
                    return Input::Stream {
                        frames: vec![Frame::Sync],
                        chunk: 0,
                    };
                }
            }
        }
        // The direct phase: connect a pending dial, then prove it.
        let next_dial = self
            .dials
            .iter()
            .find(|d| !self.connected.contains(&d.id) && !h.settled.contains(&d.id))
            .map(|d| d.id);
        if let Some(id) = next_dial {
            h.settled.insert(id);
            return Input::DialSucceeded(Target::Raw(id.0));
        }
        let unproven = self
            .connected
            .iter()
            .find(|id| !self.authenticated.contains_key(id))
            .copied();
        if let Some(id) = unproven {
            return Input::Authenticated(Target::Raw(id.0), PEER_FINGERPRINT);
        }
        // The honest server selects the first connection it proved.
        let unselected = self
            .connected
            .iter()
            .find(|id| !self.direct_rx.contains_key(id) && self.role_of(**id) == Some(Role::Client))
            .copied();
        if let Some(id) = unselected {
            return Input::DirectData(Target::Raw(id.0), DirectPayload::Select);
        }
        Input::Timeout
    }

    fn role_of(&self, id: DirectId) -> Option<Role> {
        self.dial_by_id
            .get(&id)
            .map(|d| d.role)
            .or_else(|| self.inbound.get(&id).map(|(_, role)| *role))
    }

    /// With no more input, only timers run: the upgrade must finish, in
    /// time.
    pub fn finish(&mut self) {
        for _ in 0..CLEANUP_LIMIT {
            let Some(t) = self.up.poll_timeout() else {
                break;
            };
            self.now = self.now.max(t.at);
            self.fire_timeout();
            self.check_state();
        }
        assert!(
            self.up.poll_timeout().is_none(),
            "timers still armed after {CLEANUP_LIMIT} timeouts: {:?}",
            self.up.poll_timeout()
        );
        assert!(
            self.up.outcome().is_some(),
            "no timer left but no outcome either: the upgrade hangs ({:?})",
            self.up
        );
        assert!(self.up.is_finished(), "outcome decided but not finished");
        if !self.punctual {
            return;
        }
        let decided = self.up.timeline().decided().expect("decided");
        let took = decided.duration_since(self.start);
        assert!(
            took <= self.decision_bound(),
            "decided after {took:?}, beyond the bound of {:?}",
            self.decision_bound()
        );
    }

    fn fire_timeout(&mut self) {
        let now = self.now;
        self.passed = now;
        self.up.handle_timeout(now);
        self.drain();
        if let Some(t) = self.up.poll_timeout() {
            assert!(
                t.at > now,
                "after handle_timeout({:?}) the {:?} timer is still due: a driver would spin",
                now.duration_since(self.start),
                t.kind
            );
        }
    }

    fn feed_stream(&mut self, frames: &[Frame], chunk: usize) {
        let mut bytes = Vec::new();
        for f in frames {
            match f {
                Frame::Hello(fingerprint) => {
                    let peer = match self.side {
                        Side::Initiator => Side::Responder,
                        Side::Responder => Side::Initiator,
                    };
                    bytes.extend_from_slice(&wire::encode_hello(
                        dcutr_core::settings::MAX_ATTEMPTS_LIMIT,
                        peer,
                        fingerprint,
                    ));
                }
                Frame::Connect(raw) => self.encode_connect(raw, None, &mut bytes),
                Frame::ConnectNat(raw, nat) => self.encode_connect(raw, Some(*nat), &mut bytes),
                Frame::Sync => bytes.extend_from_slice(&wire::encode_sync()),
                Frame::Raw(raw) => bytes.extend_from_slice(raw),
            }
        }
        let chunk = if chunk == 0 {
            bytes.len().max(1)
        } else {
            chunk
        };
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let mut take = chunk.min(rest.len());
            if self.respect_wanted {
                let wanted = self.up.stream_bytes_wanted();
                if wanted == 0 {
                    // The rest belongs to the application.
                    break;
                }
                take = take.min(wanted);
            }
            let (now_part, later) = rest.split_at(take);
            rest = later;
            self.fed.extend_from_slice(now_part);
            self.passed = self.now;
            self.up.handle_stream_data(self.now, now_part);
            self.drain();
            self.check_state();
        }
    }

    fn direct_payload(&self, payload: &DirectPayload) -> Vec<u8> {
        match payload {
            DirectPayload::Select => vec![SELECT],
            DirectPayload::Bytes(b) => b.clone(),
        }
    }

    fn resolve(&self, t: Target) -> DirectId {
        match t {
            Target::Dial(n) if !self.dials.is_empty() => self.dials[n % self.dials.len()].id,
            Target::Known(n) if !self.known.is_empty() => self.known[n % self.known.len()],
            Target::Dial(n) | Target::Known(n) => DirectId(n as u64),
            Target::Raw(id) => DirectId(id),
        }
    }

    /// Whether the handshake on `id` proved the certificate the core
    /// pinned from the peer's `Hello` (whatever `Hello` it took first).
    fn proven(&self, id: DirectId) -> bool {
        match (self.authenticated.get(&id), self.up.peer_fingerprint()) {
            (Some(presented), Some(pinned)) => *presented == pinned,
            _ => false,
        }
    }

    /// Makes sure `to` came from a Connect we fed: first among the frames
    /// the driver built, then by scanning every byte offset of the stream
    /// for a Connect that junk may have spelled out.
    /// Appends a Connect with `raw` (and `nat`) to `bytes`, and allows
    /// what the core will accept of it.
    fn encode_connect(&mut self, raw: &[Vec<u8>], nat: Option<NatWire>, bytes: &mut Vec<u8>) {
        let (frame, count) = wire::encode_connect_with(
            raw.iter().map(Vec::as_slice),
            nat,
            self.config.max_message_size,
        );
        let accepted = filter_remote(
            raw[..count].iter().map(Vec::as_slice),
            &self.config.address_policy,
            &self.config.dialable,
            self.config.max_remote_addrs,
        )
        .accepted;
        self.allowed.extend(accepted);
        bytes.extend_from_slice(&frame);
    }

    fn named_by_a_connect(&mut self, to: &Candidate) -> bool {
        if self.allowed.contains(to) {
            return true;
        }
        if self.scanned_len < self.fed.len() {
            for i in 0..self.fed.len() {
                let mut input = &self.fed[i..];
                let mut decoder = FrameDecoder::new(self.config.max_message_size);
                if let Ok(Some(payload)) = decoder.decode(&mut input)
                    && let Ok(Message::Connect(raw)) = wire::decode_message(&payload)
                {
                    let accepted = filter_remote(
                        raw.iter().map(Vec::as_slice),
                        &self.config.address_policy,
                        &self.config.dialable,
                        self.config.max_remote_addrs,
                    )
                    .accepted;
                    self.allowed.extend(accepted);
                }
            }
            self.scanned_len = self.fed.len();
        }
        self.allowed.contains(to)
    }

    fn drain(&mut self) {
        while let Some(out) = self.up.poll_output() {
            self.check_output(&out);
            self.log.push(out);
        }
    }

    #[allow(clippy::too_many_lines)]
    fn check_output(&mut self, out: &Output) {
        let cfg = self.config.clone();
        let cfg = &cfg;
        if self.outcome.is_some() {
            assert!(
                matches!(
                    out,
                    Output::CloseDirect { .. }
                        | Output::CloseRelay
                        | Output::ResetStream
                        | Output::FinishStream
                ),
                "{out:?} after the outcome"
            );
        }
        match out {
            Output::OpenStream => {
                assert_eq!(
                    self.side,
                    Side::Initiator,
                    "only the initiator opens streams"
                );
                assert_eq!(
                    self.protocol,
                    Protocol::Spec,
                    "OpenStream on a shared stream"
                );
            }
            Output::WriteStream(bytes) => {
                let mut input = &bytes[..];
                let mut decoder = FrameDecoder::new(cfg.max_message_size);
                let payload = decoder
                    .decode(&mut input)
                    .unwrap_or_else(|e| panic!("we wrote an invalid frame: {e}"))
                    .expect("we wrote an incomplete frame");
                assert!(input.is_empty(), "one write carries exactly one frame");
                let pinned = self.protocol == Protocol::Session;
                if pinned && !self.hello_written {
                    self.hello_written = true;
                    let hello = wire::decode_hello(&payload).expect("the first write is a Hello");
                    assert_eq!(
                        hello.fingerprint, OWN_FINGERPRINT,
                        "our Hello pins our certificate"
                    );
                    assert_eq!(hello.side, Some(self.side), "our Hello names our side");
                } else {
                    let msg = wire::decode_message(&payload)
                        .unwrap_or_else(|e| panic!("we wrote an undecodable message: {e}"));
                    if let Message::Connect(raw) = &msg {
                        self.honest.core_connects += 1;
                        assert!(
                            raw.len() <= cfg.max_local_addrs,
                            "too many local addrs sent"
                        );
                    }
                }
            }
            Output::FinishStream | Output::ResetStream => {}
            Output::Dial(dial) => self.check_dial(dial),
            Output::SendDatagram { to, payload } => {
                assert_eq!(self.side, Side::Initiator, "the responder never sprays");
                let candidate = Candidate::quic(*to);
                assert!(
                    self.named_by_a_connect(&candidate),
                    "spray to {to}, which no Connect named"
                );
                self.spray_in_attempt += 1;
                assert!(
                    self.spray_in_attempt <= cfg.max_spray_packets_per_attempt,
                    "{} datagrams in attempt {}, budget {}",
                    self.spray_in_attempt,
                    self.attempts,
                    cfg.max_spray_packets_per_attempt
                );
                assert_eq!(
                    payload.bytes().len(),
                    dcutr_core::settings::SPRAY_PACKET_LEN
                );
            }
            Output::WriteDirect { id, data } => {
                assert_eq!(
                    self.protocol,
                    Protocol::Session,
                    "direct writes only happen for the pinned-TLS check"
                );
                assert!(
                    self.connected.contains(id),
                    "write to {id}, which never connected"
                );
                assert!(
                    self.proven(*id),
                    "wrote to {id} before it proved the pinned certificate"
                );
                assert_eq!(
                    self.role_of(*id),
                    Some(Role::Server),
                    "only the server selects"
                );
                assert!(
                    data[..] == [SELECT],
                    "unexpected direct write of {} bytes",
                    data.len()
                );
            }
            Output::CloseDirect { .. } => {}
            Output::CloseRelay => {
                assert_eq!(self.outcome, Some(true), "CloseRelay without an upgrade");
                self.close_relay += 1;
                assert_eq!(self.close_relay, 1, "CloseRelay twice");
            }
            Output::SendBirthday(t) => {
                // Refresh what the Connects named (the fallback scan).
                let _ = self.named_by_a_connect(&Candidate::quic(t.destination));
                let ip = t.destination.ip();
                let named = self.allowed.iter().any(|c| c.addr.ip() == ip);
                assert!(
                    named || self.peer_ips.contains(&ip),
                    "birthday packet to {}, an IP nobody named for the peer",
                    t.destination
                );
                let per_attempt = usize::from(dcutr_core::birthday::MAX_PROBES)
                    + usize::from(dcutr_core::birthday::MAX_SOCKETS)
                    + usize::from(dcutr_core::birthday::ANSWER_COPIES);
                self.birthday.push(*t);
                assert!(
                    self.birthday.len() <= per_attempt * usize::from(cfg.max_attempts),
                    "{} birthday packets",
                    self.birthday.len()
                );
            }
            Output::Prime { to, ttl } => {
                assert!(
                    self.named_by_a_connect(to),
                    "priming towards {to}, which no Connect named"
                );
                assert_eq!(Some(*ttl), cfg.prime_ttl, "the configured TTL");
                assert!(*ttl <= dcutr_core::settings::MAX_PRIME_TTL);
            }
            Output::DialFresh { dial, .. } => self.check_dial(dial),
            Output::CloseFresh { .. } => {}
            Output::Event(event) => self.check_event(event),
            other => panic!("unknown output {other:?}"),
        }
    }

    fn check_dial(&mut self, dial: &Dial) {
        let cfg = self.config.clone();
        assert!(
            !self.dial_by_id.contains_key(&dial.id) && !self.inbound.contains_key(&dial.id),
            "dial id {} reused",
            dial.id
        );
        match dial.purpose {
            DialPurpose::Unilateral => {
                assert_eq!(
                    self.side,
                    Side::Initiator,
                    "the responder dials unilaterally"
                );
                assert_eq!(dial.attempt, 0);
                assert_eq!(
                    dial.role,
                    Role::Client,
                    "the unilateral dialer is the client"
                );
                assert!(
                    self.unilateral_ok.contains(&dial.to),
                    "unilateral dial to {} which is not a usable configured address",
                    dial.to
                );
                self.unilateral_dials += 1;
                assert!(self.unilateral_dials <= cfg.max_remote_addrs);
            }
            DialPurpose::HolePunch => {
                let named = self.named_by_a_connect(&dial.to);
                if !named {
                    // Only the source of the spray datagram just applied,
                    // on an IP a Connect named, within its own budget.
                    assert_eq!(
                        self.reflexive_source,
                        Some(dial.to),
                        "hole-punch dial to {}, which no Connect named",
                        dial.to
                    );
                    assert!(
                        self.allowed.iter().any(|c| c.transport == dial.to.transport
                            && c.addr.ip() == dial.to.addr.ip()),
                        "peer-reflexive dial to {}, on an IP no Connect named",
                        dial.to
                    );
                    self.reflexive_dials_in_attempt += 1;
                    assert!(
                        self.reflexive_dials_in_attempt
                            <= dcutr_core::settings::MAX_PEER_REFLEXIVE_DIALS,
                        "{} peer-reflexive dials in one attempt",
                        self.reflexive_dials_in_attempt
                    );
                }
                assert!(
                    dial.attempt >= 1 && dial.attempt == self.attempts,
                    "dial for attempt {} during attempt {}",
                    dial.attempt,
                    self.attempts
                );
                let role = match self.side {
                    Side::Initiator => Role::Server,
                    Side::Responder => Role::Client,
                };
                assert_eq!(dial.role, role, "hole-punch role of the {}", self.side);
                assert!(
                    !(self.side == Side::Initiator && dial.to.transport == Transport::Quic),
                    "the QUIC server dialled instead of spraying"
                );
                self.punch_dials_in_attempt += 1;
                assert!(
                    self.punch_dials_in_attempt
                        <= cfg.max_remote_addrs + dcutr_core::settings::MAX_PEER_REFLEXIVE_DIALS,
                    "{} dials in one attempt",
                    self.punch_dials_in_attempt
                );
            }
        }
        assert!(cfg.address_policy.check(&dial.to).is_ok());
        assert!(cfg.dialable.allows(&dial.to));
        self.dials.push(*dial);
        self.dial_by_id.insert(dial.id, *dial);
        self.known.push(dial.id);
    }

    fn check_event(&mut self, event: &Event) {
        match event {
            Event::AttemptStarted { attempt } => {
                assert_eq!(
                    *attempt,
                    self.attempts + 1,
                    "attempts are numbered in order"
                );
                self.attempts = *attempt;
                assert!(
                    self.attempts <= self.config.max_attempts,
                    "attempt {} of at most {}",
                    self.attempts,
                    self.config.max_attempts
                );
                self.spray_in_attempt = 0;
                self.punch_dials_in_attempt = 0;
                self.reflexive_dials_in_attempt = 0;
            }
            Event::RemoteAddrs { accepted, .. } => {
                assert!(accepted.len() <= self.config.max_remote_addrs);
                if self.side == Side::Responder {
                    self.responder_took_connect = true;
                }
            }
            Event::AttemptFailed { reason, .. } => {
                if let AttemptFailure::Protocol(ProtocolError::TrailingBytes { len }) = reason {
                    assert!(
                        !self.respect_wanted,
                        "told of {len} trailing bytes though we read only what was wanted"
                    );
                }
                // The honest peer starts over: a new stream, Connect, Sync.
                self.honest.stream_open = false;
                self.honest.connect_sent = false;
                self.honest.sync_sent = false;
            }
            Event::Upgraded(up) => {
                assert!(self.outcome.is_none(), "a second outcome");
                self.outcome = Some(true);
                assert!(
                    self.connected.contains(&up.id),
                    "upgraded on {}, which never connected",
                    up.id
                );
                let (to, role) = match (self.dial_by_id.get(&up.id), self.inbound.get(&up.id)) {
                    (Some(d), _) => (d.to, d.role),
                    (None, Some((from, role))) => (*from, *role),
                    (None, None) => unreachable!("connected ids are dials or inbound"),
                };
                assert_eq!((up.transport, up.remote), (to.transport, to.addr));
                assert_eq!(up.role, role, "role on the winning connection");
                if self.protocol == Protocol::Session {
                    assert!(self.proven(up.id), "won on {} without the check", up.id);
                    if up.role == Role::Client {
                        let rx = &self.direct_rx[&up.id];
                        assert!(
                            rx.first() == Some(&SELECT),
                            "the client won without the select byte"
                        );
                    }
                }
            }
            Event::Failed(failure) => {
                if let dcutr_core::Failure::Protocol(ProtocolError::TrailingBytes { len }) = failure
                {
                    assert!(
                        !self.respect_wanted,
                        "told of {len} trailing bytes though we read only what was wanted"
                    );
                }
                assert!(self.outcome.is_none(), "a second outcome");
                self.outcome = Some(false);
            }
            _ => {}
        }
    }

    /// The latest simulated time by which the outcome must be decided.
    fn decision_bound(&self) -> Duration {
        let c = &self.config;
        let attempts = u32::from(c.max_attempts);
        2 * c.step_timeout
            + c.unilateral_timeout
            + attempts * (2 * c.step_timeout + 2 * c.direct_timeout + c.confirm_timeout)
            + c.confirm_timeout
            + Duration::from_secs(1)
    }

    /// What `heap_estimate()` may reach: every table at twice its cap
    /// (a `Vec` doubles), whatever the number of steps.
    fn heap_bound(&self) -> usize {
        /// Generous size of one entry of the core's private table of
        /// direct connections.
        const DIRECT_ENTRY: usize = 256;
        let c = &self.config;
        let attempts = usize::from(c.max_attempts) + 1;
        // The unilateral dials (up to `max_remote_addrs`) may now run
        // alongside an attempt's: their commands and entries add to it.
        // A give-up while the unilateral dial drains queues its whole
        // teardown at once: room for two bursts.
        let outputs = 2 * (attempts + 1) * (c.max_remote_addrs * 3 + 16) + 64;
        let directs = (attempts + 1) * c.max_remote_addrs + c.max_pending_inbound + 1;
        c.max_message_size
            + 2 * directs * DIRECT_ENTRY
            + 2 * c.max_local_addrs * size_of::<Candidate>()
            + 2 * attempts * size_of::<AttemptFailure>()
            + 4 * c.max_remote_addrs * size_of::<Candidate>()
            + 2 * outputs * size_of::<Output>()
            + 2 * attempts * c.max_remote_addrs * size_of::<dcutr_core::record::DialRecord>()
            // The addresses dialled, once each, for `is_peer_address`.
            + 2 * attempts * c.max_remote_addrs * size_of::<Candidate>()
            + 2 * attempts * size_of::<dcutr_core::record::AttemptRecord>()
    }

    fn check_state(&self) {
        let c = &self.config;
        if let Some(t) = self.up.poll_timeout() {
            assert!(
                t.at >= self.passed,
                "poll_timeout {:?} is before the latest now passed in",
                t.kind
            );
        }
        let wanted = self.up.stream_bytes_wanted();
        assert!(
            wanted <= c.max_message_size,
            "stream_bytes_wanted {wanted} beyond the frame limit"
        );
        for id in &self.known {
            assert!(
                self.up.direct_bytes_wanted(*id) <= 1,
                "only the select byte is read"
            );
        }
        let heap = self.up.heap_estimate();
        assert!(
            heap <= self.heap_bound(),
            "heap estimate {heap} beyond {}",
            self.heap_bound()
        );
        let timeline = self.up.timeline();
        assert!(timeline.attempts().len() <= usize::from(c.max_attempts));
        for a in timeline.attempts() {
            assert!(a.spray_packets() <= c.max_spray_packets_per_attempt);
        }
        let elapsed = self.now.duration_since(self.start);
        if self.punctual && elapsed > self.decision_bound() {
            assert!(
                self.up.outcome().is_some(),
                "undecided after {elapsed:?}, beyond the bound of {:?}",
                self.decision_bound()
            );
        }
    }
}
