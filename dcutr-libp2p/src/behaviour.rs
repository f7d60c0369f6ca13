//! The [`NetworkBehaviour`]: one [`Upgrade`] per relayed connection, driven
//! by swarm events, handler events and one timer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::marker::PhantomData;
use std::task::{Context, Poll};
use std::time::Instant;

use std::net::SocketAddr;

use bytes::Bytes;
use dcutr_core::admission::Admission;
use dcutr_core::{
    Candidate, Carrier, Dial, DialError, DirectId, Event as CoreEvent, Role, Side, SprayPayload,
    Transport, Upgrade, filter::ObservedAddrs, reason::StreamUnavailable, record::Timeline,
};
use either::Either;
use futures::FutureExt;
use futures_timer::Delay;
use libp2p_core::connection::ConnectedPoint;
use libp2p_core::multiaddr::Protocol;
use libp2p_core::transport::{PortUse, TransportError};
use libp2p_core::{Endpoint, Multiaddr};
use libp2p_identity::PeerId;
use libp2p_swarm::behaviour::{
    ConnectionClosed, ConnectionEstablished, DialFailure, ExpiredListenAddr, FromSwarm,
    NewExternalAddrCandidate, NewExternalAddrOfPeer, NewListenAddr,
};
use libp2p_swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p_swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, NetworkBehaviour, NotifyHandler, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};

use crate::config::{Config, ConfigError};
use crate::event::{AttemptAddrs, Error, Event, FromReport, Progress, Report};
use crate::handler::{self, Command, HandlerEvent, Opener};
use crate::log as tracing;
use crate::nat::{NatTracker, NotObserved};

/// Most peers whose advertised addresses are remembered for the unilateral
/// dial; the least recently updated peer is forgotten first.
const MAX_PEERS_REMEMBERED: usize = 256;

/// Most advertised addresses remembered per peer, most recent first.
const MAX_ADDRS_PER_PEER: usize = 16;

type ToSwarmEvent<E> = ToSwarm<E, Either<Command, std::convert::Infallible>>;

/// DCUtR hole punching for rust-libp2p, driven by the `dcutr-core` state
/// machine; a drop-in replacement for `libp2p::dcutr::Behaviour`.
///
/// On every relayed connection it runs one upgrade:
/// * the side that **accepted** the relayed connection (holds the
///   reservation; the spec's B, [`Side::Initiator`]) first dials the
///   peer's advertised public addresses if it knows any (the spec's
///   unilateral upgrade), then opens a `/libp2p/dcutr` stream per attempt,
///   measures the RTT, sends Sync and dials half a round trip later with
///   `override_role()` (it is the listener for security and muxer
///   negotiation) and port reuse over TCP; over QUIC its dial also
///   carries `allocate_new_port()`, which libp2p-quic runs as the spec's
///   server punch (spray from the listening socket, accept the client);
/// * the side that **dialled** it (the spec's A, [`Side::Responder`])
///   accepts `/libp2p/dcutr` streams on relayed connections only, answers,
///   and dials on Sync as a normal dialer.
///
/// Every dial uses [`PeerCondition::Always`]. Our addresses come from
/// [`FromSwarm::NewExternalAddrCandidate`] (identify), relayed ones
/// dropped, the 20 most recent kept and read afresh for each attempt; the
/// peer's advertised addresses from [`FromSwarm::NewExternalAddrOfPeer`].
///
/// The first direct connection to the peer wins (our dial, or one the peer
/// made to us) and both sides report it. After the grace period the
/// relayed connection is closed.
///
/// `E` is the event type: [`Event`] (default, stock-shaped outcomes) or
/// [`Report`] (outcomes with their timeline plus per-attempt progress).
pub struct Behaviour<E = Event> {
    local_peer_id: PeerId,
    config: Config,
    /// Our observed addresses, most recent first.
    own_addrs: ObservedAddrs,
    /// Peers' advertised addresses, for the unilateral dial.
    peer_addrs: PeerAddrs,
    /// One entry per relayed connection, in connection order.
    upgrades: BTreeMap<ConnectionId, Relayed>,
    /// Our dials in flight: direct connection → (relayed connection, dial).
    dials: HashMap<ConnectionId, (ConnectionId, DirectId)>,
    queued: VecDeque<ToSwarmEvent<E>>,
    timer: Option<(Instant, Delay)>,
    upgrades_started: u64,
    /// One upgrade per peer, a cooldown after a failure, a cap on all.
    admission: Admission<PeerId>,
    /// Our NAT, as identify's observers saw it.
    nat: NatTracker,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
    _event: PhantomData<fn() -> E>,
}

/// One relayed connection and its upgrade.
struct Relayed {
    peer: PeerId,
    side: Side,
    up: Box<Upgrade>,
    /// The handler's number of the current stream.
    stream: Option<u64>,
    /// The core's dials and inbound connections, by their libp2p id.
    directs: HashMap<DirectId, ConnectionId>,
    /// The relayed connection is gone.
    closed: bool,
    /// The addresses of the last attempt that exchanged them.
    addrs: AttemptAddrs,
}

impl Behaviour<Event> {
    /// A behaviour with [`Config::default`], reporting stock-shaped
    /// [`Event`]s: the same signature as `libp2p::dcutr::Behaviour::new`.
    #[must_use]
    pub fn new(local_peer_id: PeerId) -> Self {
        Self::with_valid_config(local_peer_id, Config::default())
    }
}

impl<E: FromReport> Behaviour<E> {
    /// A behaviour with `config`.
    ///
    /// # Errors
    /// [`ConfigError`] when the config cannot work.
    pub fn with_config(local_peer_id: PeerId, config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self::with_valid_config(local_peer_id, config))
    }

    fn with_valid_config(local_peer_id: PeerId, config: Config) -> Self {
        Behaviour {
            local_peer_id,
            own_addrs: ObservedAddrs::new(config.core.max_local_addrs),
            config,
            peer_addrs: PeerAddrs::default(),
            upgrades: BTreeMap::new(),
            dials: HashMap::new(),
            queued: VecDeque::new(),
            timer: None,
            upgrades_started: 0,
            admission: Admission::default(),
            nat: NatTracker::default(),
            #[cfg(feature = "metrics")]
            metrics: None,
            _event: PhantomData,
        }
    }

    /// Records every outcome into `metrics` (see [`crate::metrics`]), with
    /// either event type.
    #[cfg(feature = "metrics")]
    #[must_use]
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Records a public address of `peer` learnt elsewhere (a rendezvous
    /// server, a DHT): spec B dials it directly before hole punching.
    pub fn add_peer_address(&mut self, peer: PeerId, address: &Multiaddr) {
        if let Some(candidate) = candidate(address) {
            self.peer_addrs.add(peer, candidate);
        }
    }

    /// Our observed addresses as they will be sent in the next Connect
    /// (before the core's policy filter), most recent first.
    pub fn observed_addresses(&self) -> impl Iterator<Item = Multiaddr> + '_ {
        self.own_addrs.as_slice().iter().filter_map(to_libp2p)
    }

    /// Feeds what identify observed on `connection` (identify's
    /// `Event::Received { connection_id, info, .. }`: pass
    /// `info.observed_addr`) to the NAT classifier of
    /// [`dcutr_core::nat`], and returns the classification of the local
    /// socket it describes.
    ///
    /// Call it for every identify `Received` event: this behaviour does
    /// not see identify's events, only the swarm's. With observations of
    /// one listening socket from two or more peers the behaviour knows
    /// whether our NAT maps each destination to a new port
    /// (endpoint-dependent, "symmetric"), and every later upgrade declares
    /// that in its Connect (an optional field that stock peers skip). Two
    /// dcutr-rs peers that both declare endpoint-dependent NATs with
    /// unpredictable ports then fail at once, both sides, with
    /// [`AttemptFailure::NatsCannotMeet`](dcutr_core::AttemptFailure),
    /// instead of three attempts that time out.
    ///
    /// Observations are kept per transport and IP family: TCP dials leave
    /// from the listening port (port reuse) and QUIC dials from the
    /// listening socket, so one transport's observations describe one
    /// socket. What a Connect declares is the easiest to punch of the
    /// transports whose mapping is known, since every transport is punched
    /// at once; nothing is declared (and the Connect is the spec's, byte
    /// for byte) until some mapping is known. A behaviour set with
    /// [`Config::with_nat_behaviour`] takes precedence.
    ///
    /// # Errors
    /// [`NotObserved`] when the observation tells nothing about a
    /// listening socket: a relayed or unknown connection, one dialled from
    /// a fresh port, an address of another transport, no listener of that
    /// transport, or the classifier's own refusal (bounded by
    /// [`dcutr_core::nat::MAX_OBSERVATIONS`]).
    pub fn observe_identify(
        &mut self,
        connection: ConnectionId,
        observed_addr: &Multiaddr,
    ) -> Result<dcutr_core::nat::NatBehaviour, NotObserved> {
        let result = self.nat.observe(connection, observed_addr);
        match &result {
            Ok(b) => tracing::debug!(%connection, %observed_addr, nat = %b, "NAT observation"),
            Err(reason) => {
                tracing::debug!(%connection, %observed_addr, %reason, "NAT observation not used");
            }
        }
        result
    }

    /// The NAT behaviour the next upgrade declares in its Connect: the
    /// configured one, else the one classified from
    /// [`Behaviour::observe_identify`], else none.
    #[must_use]
    pub fn nat_behaviour(&self) -> Option<dcutr_core::nat::NatBehaviour> {
        self.config
            .nat_behaviour
            .clone()
            .or_else(|| self.nat.declared())
    }

    /// The classification of each local socket observed so far, by
    /// transport (one per transport and IP family).
    pub fn nat_behaviours(
        &self,
    ) -> impl Iterator<Item = (Transport, dcutr_core::nat::NatBehaviour)> + '_ {
        self.nat.behaviours()
    }

    fn seed(&mut self) -> [u8; 32] {
        self.upgrades_started += 1;
        let mut seed = [0u8; 32];
        match self.config.seed {
            Some(base) => {
                seed = base;
                for (s, c) in seed.iter_mut().zip(self.upgrades_started.to_le_bytes()) {
                    *s ^= c;
                }
            }
            None => {
                if let Err(err) = getrandom::fill(&mut seed) {
                    // Only spray payloads and pauses depend on it (the
                    // token check is off under libp2p): degrade, not fail.
                    tracing::warn!(%err, "no OS randomness; seeding from the hasher");
                    use std::hash::{BuildHasher, RandomState};
                    let state = RandomState::new();
                    for (i, chunk) in seed.chunks_mut(8).enumerate() {
                        let v = state.hash_one((self.upgrades_started, i));
                        chunk.copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        seed
    }

    /// Starts the upgrade of a new relayed connection at once: the
    /// peer's public addresses, known now or learnt later from identify,
    /// are the core's input whenever they arrive.
    fn on_relayed_established(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        endpoint: &ConnectedPoint,
    ) {
        let side = match endpoint {
            ConnectedPoint::Listener { .. } => Side::Initiator,
            ConnectedPoint::Dialer { .. } => Side::Responder,
        };
        let now = Instant::now();
        if let Err(reason) = self.admission.admit(peer, now) {
            tracing::debug!(%peer, relayed = %id, %reason, "no dcutr upgrade on this relayed connection");
            self.queued.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(id),
                event: Either::Left(Command::Done),
            });
            return;
        }
        let seed = self.seed();
        let mut builder = Upgrade::builder(side, self.config.core.clone(), seed)
            .capabilities(dcutr_core::settings::Capabilities::LIBP2P)
            .local_addrs(self.own_addrs.as_slice().iter().copied());
        if side == Side::Initiator {
            builder = builder.remote_public_addrs(self.peer_addrs.get(&peer).iter().copied());
        }
        if let Some(nat) = self.nat_behaviour() {
            builder = builder.nat_behaviour(nat);
        }
        match builder.start(now) {
            Ok(up) => {
                tracing::debug!(%peer, %side, relayed = %id, "dcutr upgrade started");
                let rel = Relayed {
                    peer,
                    side,
                    up: Box::new(up),
                    stream: None,
                    directs: HashMap::new(),
                    closed: false,
                    addrs: AttemptAddrs::default(),
                };
                self.upgrades.insert(id, rel);
                self.drain(id, now);
            }
            // The config was validated at construction.
            Err(err) => {
                self.admission.finish(&peer, now, true);
                tracing::error!(%err, "dcutr upgrade could not start");
            }
        }
    }

    /// Runs `input` on the core of relayed connection `id`, then carries
    /// out its outputs.
    fn with_upgrade(&mut self, id: ConnectionId, now: Instant, input: impl FnOnce(&mut Upgrade)) {
        let Some(Relayed { up, .. }) = self.upgrades.get_mut(&id) else {
            return;
        };
        input(up);
        self.drain(id, now);
    }

    /// Drains the core's outputs (the str0m rule: after every input),
    /// through the core's one exhaustive dispatch.
    fn drain(&mut self, id: ConnectionId, now: Instant) {
        let Some(Relayed {
            peer,
            side,
            up,
            stream,
            directs,
            closed,
            addrs,
        }) = self.upgrades.get_mut(&id)
        else {
            return;
        };
        let mut carrier = SwarmSide {
            relayed: id,
            peer: *peer,
            side: *side,
            stream,
            directs,
            closed: *closed,
            addrs,
            own_addrs: &self.own_addrs,
            core_config: &self.config.core,
            #[cfg(feature = "metrics")]
            metrics: self.metrics.as_ref(),
            dials: &mut self.dials,
            queued: &mut self.queued,
        };
        up.drain(now, &mut carrier);
        self.retire(id);
    }

    /// Forgets an upgrade that has nothing left to do.
    fn retire(&mut self, id: ConnectionId) {
        let Some(rel) = self.upgrades.get(&id) else {
            return;
        };
        let done = rel.up.is_finished() || (rel.closed && rel.up.outcome().is_some());
        if !done {
            return;
        }
        let rel = self.upgrades.remove(&id).expect("just found");
        let failed = matches!(rel.up.outcome(), Some(dcutr_core::Outcome::Failed(_)));
        self.admission.finish(&rel.peer, Instant::now(), !failed);
        self.dials.retain(|_, (relayed, _)| *relayed != id);
        if !rel.closed {
            self.queued.push_back(ToSwarm::NotifyHandler {
                peer_id: rel.peer,
                handler: NotifyHandler::One(id),
                event: Either::Left(Command::Done),
            });
        }
    }

    fn on_direct_established(&mut self, e: &ConnectionEstablished<'_>, now: Instant) {
        if let Some((relayed, dial)) = self.dials.remove(&e.connection_id) {
            self.with_upgrade(relayed, now, |up| up.handle_dial_succeeded(now, dial));
            return;
        }
        let ConnectedPoint::Listener { send_back_addr, .. } = e.endpoint else {
            return;
        };
        // A direct connection the peer made to us: its unilateral dial, a
        // punch of ours that the other side's dial met, or the winner of a
        // TCP simultaneous open seen from the listening socket.
        let Some(from) = candidate(send_back_addr) else {
            tracing::debug!(%send_back_addr, "inbound direct connection over a transport the core does not know");
            return;
        };
        let relayed = self.upgrades.iter().find_map(|(id, rel)| {
            let running = rel.up.outcome().is_none();
            (rel.peer == e.peer_id && running).then_some(*id)
        });
        let Some(relayed) = relayed else {
            return;
        };
        let Some(Relayed { up, directs, .. }) = self.upgrades.get_mut(&relayed) else {
            return;
        };
        // Under `CallerAuthenticates` the core may declare this connection
        // the winner right away: map its id before draining the outputs.
        if let Ok(direct) = up.handle_inbound(now, from) {
            directs.insert(direct, e.connection_id);
        }
        self.drain(relayed, now);
    }

    fn on_connection_closed(&mut self, e: &ConnectionClosed<'_>, now: Instant) {
        if let Some(rel) = self.upgrades.get_mut(&e.connection_id) {
            rel.closed = true;
            rel.stream = None;
            if rel.up.outcome().is_none() {
                // No further attempt can happen; a punch in flight may
                // still win, and the core ends the upgrade after it.
                self.with_upgrade(e.connection_id, now, |up| up.handle_relay_closed(now));
            }
            self.retire(e.connection_id);
            return;
        }
        let found = self.upgrades.iter().find_map(|(relayed, rel)| {
            rel.directs
                .iter()
                .find(|(_, c)| **c == e.connection_id)
                .map(|(d, _)| (*relayed, *d))
        });
        if let Some((relayed, direct)) = found {
            self.with_upgrade(relayed, now, |up| up.handle_direct_closed(now, direct));
        }
    }

    fn on_dial_failure(&mut self, e: &DialFailure<'_>, now: Instant) {
        let Some((relayed, dial)) = self.dials.remove(&e.connection_id) else {
            return;
        };
        let error = dial_error(e.error);
        tracing::debug!(conn = %e.connection_id, %error, "direct dial failed");
        self.with_upgrade(relayed, now, |up| up.handle_dial_failed(now, dial, error));
    }

    fn on_own_candidate(&mut self, addr: &Multiaddr, now: Instant) {
        let Some(c) = candidate(addr) else {
            return;
        };
        if !self.config.core.dialable.allows(&c) {
            // A transport we cannot punch on (QUIC by default): telling the
            // peer would only make it dial in vain.
            return;
        }
        self.own_addrs.observe(c);
        let ids: Vec<ConnectionId> = self.upgrades.keys().copied().collect();
        for id in ids {
            self.with_upgrade(id, now, |up| up.observe_local(c));
        }
    }

    fn on_peer_address(&mut self, peer: PeerId, addr: &Multiaddr) {
        if peer == self.local_peer_id {
            return;
        }
        let Some(c) = candidate(addr) else {
            return;
        };
        self.peer_addrs.add(peer, c);
        let now = Instant::now();
        let ids: Vec<ConnectionId> = self
            .upgrades
            .iter()
            .filter(|(_, rel)| rel.peer == peer && rel.side == Side::Initiator)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.with_upgrade(id, now, |up| up.handle_remote_public_addrs(now, [c]));
        }
    }

    /// Handles expired core timers, and arms the timer for the next
    /// deadline.
    fn tick(&mut self, cx: &mut Context<'_>) {
        loop {
            let now = Instant::now();
            let mut expired = Vec::new();
            let mut next: Option<Instant> = None;
            for (id, rel) in &self.upgrades {
                match rel.up.poll_timeout() {
                    Some(t) if t.at <= now => expired.push(*id),
                    Some(t) => next = Some(next.map_or(t.at, |n| n.min(t.at))),
                    None => {}
                }
            }
            for id in &expired {
                self.with_upgrade(*id, now, |up| up.handle_timeout(now));
            }
            if !expired.is_empty() {
                // Work done may have armed earlier deadlines.
                continue;
            }
            let Some(at) = next else {
                self.timer = None;
                return;
            };
            match &mut self.timer {
                Some((armed, _)) if *armed == at => {}
                slot => *slot = Some((at, Delay::new(at.saturating_duration_since(now)))),
            }
            let (_, delay) = self.timer.as_mut().expect("just armed");
            if delay.poll_unpin(cx).is_pending() {
                return;
            }
            self.timer = None;
        }
    }
}

impl<E: FromReport> NetworkBehaviour for Behaviour<E> {
    type ConnectionHandler = Either<handler::Handler, dummy::ConnectionHandler>;
    type ToSwarm = E;

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if is_relayed(local_addr) {
            return Ok(Either::Left(handler::Handler::new(Opener::Us)));
        }
        Ok(Either::Right(dummy::ConnectionHandler))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if is_relayed(addr) {
            return Ok(Either::Left(handler::Handler::new(Opener::Peer)));
        }
        Ok(Either::Right(dummy::ConnectionHandler))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        let now = Instant::now();
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.nat.on_connection(e.connection_id, e.endpoint);
                if e.endpoint.is_relayed() {
                    self.on_relayed_established(e.connection_id, e.peer_id, e.endpoint);
                } else {
                    self.on_direct_established(&e, now);
                }
            }
            FromSwarm::ConnectionClosed(e) => {
                self.nat.on_closed(e.connection_id);
                self.on_connection_closed(&e, now);
            }
            FromSwarm::NewListenAddr(NewListenAddr { addr, .. }) => self.nat.on_listen_addr(addr),
            FromSwarm::ExpiredListenAddr(ExpiredListenAddr { addr, .. }) => {
                self.nat.on_expired_listen_addr(addr);
            }
            FromSwarm::DialFailure(e) => self.on_dial_failure(&e, now),
            FromSwarm::NewExternalAddrCandidate(NewExternalAddrCandidate { addr }) => {
                self.on_own_candidate(addr, now);
            }
            FromSwarm::NewExternalAddrOfPeer(NewExternalAddrOfPeer { peer_id, addr }) => {
                self.on_peer_address(peer_id, addr);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        let event = match event {
            Either::Left(event) => event,
            Either::Right(never) => libp2p_core::util::unreachable(never),
        };
        let now = Instant::now();
        let Some(rel) = self.upgrades.get_mut(&connection_id) else {
            return;
        };
        match event {
            HandlerEvent::Opened { stream } => {
                rel.stream = Some(stream);
                self.with_upgrade(connection_id, now, |up| up.handle_stream_opened(now));
            }
            HandlerEvent::OpenFailed { unsupported } => {
                tracing::debug!(unsupported, "dcutr stream could not be opened");
                self.with_upgrade(connection_id, now, |up| up.handle_stream_closed(now));
            }
            HandlerEvent::Data { stream, data } => {
                if rel.stream == Some(stream) {
                    self.with_upgrade(connection_id, now, |up| up.handle_stream_data(now, &data));
                }
            }
            HandlerEvent::Closed { stream } => {
                if rel.stream == Some(stream) {
                    rel.stream = None;
                    self.with_upgrade(connection_id, now, |up| up.handle_stream_closed(now));
                }
            }
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(event) = self.queued.pop_front() {
            return Poll::Ready(event);
        }
        self.tick(cx);
        match self.queued.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

/// The advertised addresses of peers, bounded in peers and per peer.
#[derive(Default)]
struct PeerAddrs {
    by_peer: HashMap<PeerId, ObservedAddrs>,
    /// Least recently updated first.
    order: VecDeque<PeerId>,
}

impl PeerAddrs {
    fn add(&mut self, peer: PeerId, c: Candidate) {
        if let Some(pos) = self.order.iter().position(|p| *p == peer) {
            self.order.remove(pos);
        }
        self.order.push_back(peer);
        self.by_peer
            .entry(peer)
            .or_insert_with(|| ObservedAddrs::new(MAX_ADDRS_PER_PEER))
            .observe(c);
        while self.order.len() > MAX_PEERS_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.by_peer.remove(&old);
            }
        }
    }

    fn get(&self, peer: &PeerId) -> &[Candidate] {
        self.by_peer.get(peer).map_or(&[], ObservedAddrs::as_slice)
    }
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// A libp2p address as the core's typed candidate; `None` for relayed
/// addresses and transports the core does not punch. Goes through bytes,
/// so the two crates' `multiaddr` versions need not match.
pub(crate) fn candidate(addr: &Multiaddr) -> Option<Candidate> {
    Candidate::from_bytes(&addr.to_vec()).ok()
}

fn to_libp2p(c: &Candidate) -> Option<Multiaddr> {
    Multiaddr::try_from(c.to_multiaddr().to_vec()).ok()
}

/// The dial a core event names, if any.
fn direct_of(event: &CoreEvent) -> Option<DirectId> {
    match event {
        CoreEvent::DialFailed { id, .. } | CoreEvent::DirectRejected { id, .. } => Some(*id),
        CoreEvent::Upgraded(up) => Some(up.id),
        _ => None,
    }
}

/// libp2p's dial error in the core's terms.
fn dial_error(error: &libp2p_swarm::DialError) -> DialError {
    use libp2p_swarm::DialError as E;
    match error {
        E::WrongPeerId { .. } => DialError::IdentityMismatch,
        E::Transport(errors) => errors
            .iter()
            .find_map(|(_, e)| match e {
                TransportError::Other(io) => Some(DialError::from(io.kind())),
                TransportError::MultiaddrNotSupported(_) => None,
            })
            .unwrap_or(DialError::Unreachable),
        E::Aborted => DialError::Io(std::io::ErrorKind::Interrupted),
        _ => DialError::Io(std::io::ErrorKind::Other),
    }
}

/// One relayed connection, as the carrier of its core's commands: what it
/// asks for becomes swarm events and handler commands.
struct SwarmSide<'a, E> {
    relayed: ConnectionId,
    peer: PeerId,
    side: Side,
    stream: &'a mut Option<u64>,
    directs: &'a mut HashMap<DirectId, ConnectionId>,
    closed: bool,
    addrs: &'a mut AttemptAddrs,
    own_addrs: &'a ObservedAddrs,
    core_config: &'a dcutr_core::Config,
    #[cfg(feature = "metrics")]
    metrics: Option<&'a crate::metrics::Metrics>,
    dials: &'a mut HashMap<ConnectionId, (ConnectionId, DirectId)>,
    queued: &'a mut VecDeque<ToSwarmEvent<E>>,
}

impl<E> SwarmSide<'_, E> {
    fn notify(&mut self, command: Command) {
        self.queued.push_back(ToSwarm::NotifyHandler {
            peer_id: self.peer,
            handler: NotifyHandler::One(self.relayed),
            event: Either::Left(command),
        });
    }
}

impl<E: FromReport> Carrier for SwarmSide<'_, E> {
    fn open_stream(&mut self) -> Result<(), StreamUnavailable> {
        if self.closed {
            return Err(StreamUnavailable);
        }
        self.notify(Command::Open);
        Ok(())
    }

    fn write_stream(&mut self, data: Bytes) {
        match *self.stream {
            Some(stream) if !self.closed => self.notify(Command::Write { stream, data }),
            _ => tracing::trace!("write for a stream that is gone"),
        }
    }

    fn finish_stream(&mut self) {
        // The core is done with this stream: its later close (the peer
        // finishing too) must not be taken for the next attempt's stream.
        if let (Some(stream), false) = (self.stream.take(), self.closed) {
            self.notify(Command::Finish { stream });
        }
    }

    fn reset_stream(&mut self) {
        if let (Some(stream), false) = (self.stream.take(), self.closed) {
            self.notify(Command::Reset { stream });
        }
    }

    fn dial(&mut self, dial: Dial) -> Result<(), DialError> {
        let address = to_libp2p(&dial.to).ok_or(DialError::Unreachable)?;
        let address = address.with(Protocol::P2p(self.peer));
        let mut opts = DialOpts::peer_id(self.peer)
            .addresses(vec![address])
            .condition(PeerCondition::Always);
        match (dial.role, dial.to.transport) {
            (Role::Client, _) => {}
            (Role::Server, Transport::Tcp) => {
                // Spec B is the listener for everything on top of the TCP
                // connection; the dial keeps port reuse so it leaves from
                // the port the peer was told.
                opts = opts.override_role();
            }
            (Role::Server, _) => {
                // libp2p-quic turns a dial as listener on a new port into
                // the spec's QUIC server punch: random datagrams from its
                // listening socket, then it accepts the client's
                // connection from that address and hands it to this dial.
                opts = opts.override_role().allocate_new_port();
            }
        }
        let opts = opts.build();
        let conn = opts.connection_id();
        tracing::debug!(to = %dial.to, role = %dial.role, attempt = dial.attempt, %conn, "direct dial");
        self.dials.insert(conn, (self.relayed, dial.id));
        self.directs.insert(dial.id, conn);
        self.queued.push_back(ToSwarm::Dial { opts });
        Ok(())
    }

    fn send_birthday(&mut self, transmit: dcutr_core::birthday::Transmit) {
        // The birthday punch needs raw UDP sockets next to the QUIC
        // endpoint, which libp2p's transports do not expose; the
        // behaviour runs the spec only.
        tracing::warn!(to = %transmit.destination, "birthday punch datagrams are not available through libp2p; skipped");
    }

    fn close_fresh(&mut self, _keep: Option<u16>) {
        // No fresh sockets are ever opened here (see `send_birthday`).
    }

    fn dial_fresh(&mut self, socket: u16, dial: Dial) -> Result<(), DialError> {
        tracing::warn!(socket, to = %dial.to, "dial from a birthday socket is not available through libp2p");
        Err(DialError::Io(std::io::ErrorKind::Unsupported))
    }

    fn prime(&mut self, to: Candidate, ttl: u8) {
        // libp2p's transports (libp2p-tcp, libp2p-quic) own their sockets
        // and offer no per-packet TTL, nor a way to send a bare SYN or
        // datagram from the listening port: the priming packet cannot be
        // sent through a swarm. The punch works as stock libp2p's does.
        tracing::debug!(%to, ttl, "no priming through libp2p's transports; skipped");
    }

    fn send_datagram(&mut self, to: SocketAddr, _payload: SprayPayload) {
        // Unreachable: `Config::validate` refuses `Spray`.
        tracing::warn!(%to, "UDP spray is not available through libp2p; skipped");
    }

    fn write_direct(&mut self, id: DirectId, _data: Bytes) {
        // Unreachable: the core writes to a direct connection only in the
        // dcutr-rs session (`UpgradeBuilder::dcutr_session`), which this
        // behaviour never builds (libp2p's own Noise/TLS authenticates
        // direct connections).
        tracing::warn!(direct = %id, "bytes for a direct connection (pinned TLS) are not available through libp2p; skipped");
    }

    fn close_direct(&mut self, id: DirectId) {
        // libp2p cannot abort a pending dial, and a connection that lost
        // here may be the one the peer picked: both are authenticated
        // connections to the right peer, so they are left to the
        // application's keep-alive.
        if let Some(conn) = self.directs.get(&id) {
            self.dials.remove(conn);
        }
    }

    fn close_relay(&mut self) {
        if !self.closed {
            tracing::debug!(relayed = %self.relayed, "grace period over; closing the relayed connection");
            self.queued.push_back(ToSwarm::CloseConnection {
                peer_id: self.peer,
                connection: CloseConnection::One(self.relayed),
            });
        }
    }

    fn event(&mut self, event: CoreEvent, timeline: &Timeline) {
        let (peer, relayed, side) = (self.peer, self.relayed, self.side);
        tracing::debug!(%peer, %relayed, ?event, "dcutr event");
        if let CoreEvent::RemoteAddrs { accepted, .. } = &event {
            *self.addrs = AttemptAddrs::new(
                sent_addrs(self.own_addrs, self.core_config),
                accepted.clone(),
            );
        }
        let direct = direct_of(&event).and_then(|d| self.directs.get(&d).copied());
        let report = match event {
            CoreEvent::Upgraded(up_event) => {
                let Some(conn) = self.directs.get(&up_event.id).copied() else {
                    tracing::error!(id = %up_event.id, "winner unknown to the adapter");
                    return;
                };
                Report::Outcome {
                    event: Event {
                        remote_peer_id: peer,
                        result: Ok(conn),
                    },
                    relayed_connection_id: relayed,
                    side,
                    timeline: Some(Box::new(timeline.clone())),
                    upgraded: Some(up_event),
                    addrs: std::mem::take(self.addrs),
                }
            }
            CoreEvent::Failed(failure) => {
                let error = Error::Failed(failure);
                if let Some(hint) = error.hint() {
                    // Our configuration, not the network: say so at the
                    // level applications show.
                    tracing::warn!(%peer, "hole punch failed: {hint}");
                }
                Report::Outcome {
                    event: Event {
                        remote_peer_id: peer,
                        result: Err(error),
                    },
                    relayed_connection_id: relayed,
                    side,
                    timeline: Some(Box::new(timeline.clone())),
                    upgraded: None,
                    addrs: std::mem::take(self.addrs),
                }
            }
            event => Report::Progress(Progress {
                remote_peer_id: peer,
                relayed_connection_id: relayed,
                side,
                event,
                direct_connection_id: direct,
            }),
        };
        #[cfg(feature = "metrics")]
        if let Some(m) = self.metrics {
            m.record(&report);
        }
        if let Some(e) = E::from_report(report) {
            self.queued.push_back(ToSwarm::GenerateEvent(e));
        }
    }
}

/// Our addresses as the core puts them into a Connect: the policy, the
/// size limit and the transport filter applied (no address predictor is
/// set here, so none are predicted).
fn sent_addrs(own: &ObservedAddrs, core: &dcutr_core::Config) -> Vec<Candidate> {
    let mut addrs = dcutr_core::filter::local_addrs_to_send(
        own,
        &mut dcutr_core::filter::NoPrediction,
        &core.address_policy,
        core.max_local_addrs,
    );
    addrs.retain(|c| core.dialable.allows(c));
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcutr_core::Dialable;

    fn tcp(port: u16) -> Multiaddr {
        format!("/ip4/198.51.100.7/tcp/{port}").parse().unwrap()
    }

    /// The behaviour puts the core's `Admission` in front of every upgrade
    /// (its own tests cover the rules); this shows it is wired in: a
    /// second relayed connection of a running peer gets none, a failed
    /// upgrade starts the peer's cooldown, other peers are unaffected.
    #[test]
    fn one_upgrade_per_peer_and_a_cooldown_after_a_failure() {
        let mut b = Behaviour::new(PeerId::random());
        b.on_swarm_event(FromSwarm::NewExternalAddrCandidate(
            NewExternalAddrCandidate { addr: &tcp(4001) },
        ));
        let peer = PeerId::random();
        let relayed = ConnectedPoint::Dialer {
            address: format!("{}/p2p/{}/p2p-circuit/p2p/{peer}", tcp(9), PeerId::random())
                .parse()
                .unwrap(),
            role_override: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        };
        let (first, second) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        b.on_relayed_established(first, peer, &relayed);
        b.on_relayed_established(second, peer, &relayed);
        assert_eq!(b.upgrades.keys().collect::<Vec<_>>(), [&first]);
        let rel = b.upgrades.get_mut(&first).unwrap();
        rel.up.handle_relay_closed(Instant::now());
        rel.closed = true;
        assert!(matches!(
            rel.up.outcome(),
            Some(dcutr_core::Outcome::Failed(_))
        ));
        b.retire(first);
        assert!(b.upgrades.is_empty());
        b.on_relayed_established(ConnectionId::new_unchecked(3), peer, &relayed);
        assert!(b.upgrades.is_empty(), "the peer is cooling down");
        let other = ConnectionId::new_unchecked(4);
        b.on_relayed_established(other, PeerId::random(), &relayed);
        assert_eq!(b.upgrades.keys().collect::<Vec<_>>(), [&other]);
    }

    #[test]
    fn own_candidates_keep_the_20_most_recent_without_relayed_ones() {
        let mut b = Behaviour::new(PeerId::random());
        for port in 1..=25 {
            let addr = tcp(port);
            b.on_swarm_event(FromSwarm::NewExternalAddrCandidate(
                NewExternalAddrCandidate { addr: &addr },
            ));
        }
        let relayed: Multiaddr = format!("{}/p2p/{}/p2p-circuit", tcp(9), PeerId::random())
            .parse()
            .unwrap();
        b.on_swarm_event(FromSwarm::NewExternalAddrCandidate(
            NewExternalAddrCandidate { addr: &relayed },
        ));
        // Seen again: moves to the front.
        let again = tcp(10);
        b.on_swarm_event(FromSwarm::NewExternalAddrCandidate(
            NewExternalAddrCandidate { addr: &again },
        ));
        let kept: Vec<Multiaddr> = b.observed_addresses().collect();
        assert_eq!(kept.len(), 20);
        assert_eq!(kept[0], tcp(10));
        assert_eq!(kept[1], tcp(25));
        assert!(!kept.contains(&tcp(5)), "the oldest fell out");
        assert!(!kept.iter().any(is_relayed));
        // QUIC is dialable by default, so it is advertised too.
        let quic: Multiaddr = "/ip4/198.51.100.7/udp/4001/quic-v1".parse().unwrap();
        b.on_swarm_event(FromSwarm::NewExternalAddrCandidate(
            NewExternalAddrCandidate { addr: &quic },
        ));
        assert_eq!(b.observed_addresses().next(), Some(quic.clone()));
    }

    #[test]
    fn transports_we_do_not_dial_are_not_advertised() {
        let tcp_only = Dialable::none()
            .with(Transport::Tcp, false)
            .with(Transport::Tcp, true);
        let config = Config::default().with_dialable(tcp_only);
        let mut b = Behaviour::<Event>::with_config(PeerId::random(), config).unwrap();
        let quic: Multiaddr = "/ip4/198.51.100.7/udp/4001/quic-v1".parse().unwrap();
        for addr in [tcp(7), quic] {
            b.on_swarm_event(FromSwarm::NewExternalAddrCandidate(
                NewExternalAddrCandidate { addr: &addr },
            ));
        }
        let kept: Vec<Multiaddr> = b.observed_addresses().collect();
        assert_eq!(kept, vec![tcp(7)]);
    }

    #[test]
    fn peer_addresses_are_bounded_per_peer_and_in_peers() {
        let mut book = PeerAddrs::default();
        let first = PeerId::random();
        for port in 1..=40 {
            book.add(first, candidate(&tcp(port)).unwrap());
        }
        assert_eq!(book.get(&first).len(), MAX_ADDRS_PER_PEER);
        assert_eq!(book.get(&first)[0], candidate(&tcp(40)).unwrap());
        for _ in 0..MAX_PEERS_REMEMBERED {
            book.add(PeerId::random(), candidate(&tcp(1)).unwrap());
        }
        assert!(
            book.get(&first).is_empty(),
            "the least recent peer is forgotten"
        );
        assert_eq!(book.by_peer.len(), MAX_PEERS_REMEMBERED);
    }

    #[test]
    fn addresses_convert_through_bytes_and_keep_p2p_suffixes_out() {
        let peer = PeerId::random();
        let with_peer = tcp(4001).with(Protocol::P2p(peer));
        let c = candidate(&with_peer).unwrap();
        assert_eq!(to_libp2p(&c), Some(tcp(4001)));
        let quic: Multiaddr = "/ip4/198.51.100.7/udp/4001/quic-v1".parse().unwrap();
        assert_eq!(to_libp2p(&candidate(&quic).unwrap()), Some(quic));
        let ws: Multiaddr = "/ip4/198.51.100.7/tcp/4001/ws".parse().unwrap();
        assert_eq!(candidate(&ws), None);
    }

    #[test]
    fn an_invalid_config_is_refused() {
        // The dcutr-rs session is not a config field: the behaviour
        // builds plain spec upgrades, so it cannot be asked for one.
        let mut config = Config::default();
        config.core.max_attempts = 0;
        let err = Behaviour::<Event>::with_config(PeerId::random(), config).err();
        assert!(
            matches!(
                err,
                Some(ConfigError::Core(dcutr_core::ConfigError::OutOfRange {
                    field: "max_attempts",
                    ..
                }))
            ),
            "{err:?}"
        );
        let spray =
            Config::default().with_quic_server_punch(dcutr_core::settings::QuicServerPunch::Spray);
        let err = Behaviour::<Event>::with_config(PeerId::random(), spray).err();
        assert_eq!(
            err,
            Some(ConfigError::Core(dcutr_core::ConfigError::SprayUnsupported))
        );
    }
}
