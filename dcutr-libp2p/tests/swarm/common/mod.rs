//! Swarms built by hand, as upstream's own dcutr test does: a relay, and
//! two clients on loopback TCP (plaintext, yamux, identify, the relay
//! client) or loopback QUIC (the relay is reached over QUIC too, so that
//! identify reports the clients' QUIC listening ports), each running
//! either stock `libp2p-dcutr` or ours.
//!
//! Loopback needs `AddressPolicy::permissive()` in our config: the default
//! policy refuses loopback addresses, rightly, outside tests.

#![allow(dead_code)]
// The derived `ClientEvent` carries identify's large `Info`: fine in tests.
#![allow(clippy::large_enum_variant)]

pub mod echo;

use std::time::Duration;

use dcutr_core::AddressPolicy;
use futures::StreamExt;
use futures::future::Either;
use libp2p::core::multiaddr::Protocol;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Transport as _;
use libp2p::core::upgrade::Version;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, dcutr as stock, identify, identity, plaintext, quic, relay, tcp, yamux,
};

pub use dcutr_libp2p as ours;

/// Every test finishes or fails within this, counted from `setup`.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(NetworkBehaviour)]
pub struct Relay {
    relay: relay::Behaviour,
    identify: identify::Behaviour,
}

#[derive(NetworkBehaviour)]
pub struct Client {
    pub relay: relay::client::Behaviour,
    pub identify: identify::Behaviour,
    pub stock: Toggle<stock::Behaviour>,
    pub ours: Toggle<ours::Behaviour<ours::Report>>,
    pub echo: echo::Behaviour,
    pub raw: Toggle<libp2p_stream::Behaviour>,
}

/// The transport of the direct connections, and of the way to the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    Tcp,
    Quic,
}

impl Net {
    fn listen_addr(self) -> Multiaddr {
        match self {
            Net::Tcp => "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
            Net::Quic => "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
        }
    }
}

/// Which DCUtR a client runs.
pub enum Dcutr {
    Stock,
    Ours(ours::Config),
    /// Ours, recording its outcomes into these metrics.
    #[cfg(feature = "metrics")]
    OursWithMetrics(ours::Config, ours::Metrics),
    /// None: a scripted peer drives `/libp2p/dcutr` by hand.
    Scripted,
}

/// Our config for loopback tests: loopback allowed, a fixed seed.
pub fn loopback_config() -> ours::Config {
    ours::Config::default()
        .with_address_policy(AddressPolicy::permissive())
        .with_seed([7; 32])
}

fn swarm_config() -> libp2p::swarm::Config {
    libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(TEST_TIMEOUT)
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn build_relay(net: Net) -> Swarm<Relay> {
    let key = identity::Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let transport = match net {
        Net::Tcp => tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .upgrade(Version::V1)
            .authenticate(plaintext::Config::new(&key))
            .multiplex(yamux::Config::default())
            .boxed(),
        Net::Quic => quic::tokio::Transport::new(quic::Config::new(&key))
            .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
            .boxed(),
    };
    Swarm::new(
        transport,
        Relay {
            relay: relay::Behaviour::new(peer, relay::Config::default()),
            identify: identify::Behaviour::new(identify::Config::new(
                "/relay".to_owned(),
                key.public(),
            )),
        },
        peer,
        swarm_config(),
    )
}

/// A client on loopback TCP.
pub fn build_client(dcutr: Dcutr) -> Swarm<Client> {
    build_client_on(Net::Tcp, dcutr)
}

pub fn build_client_on(net: Net, dcutr: Dcutr) -> Swarm<Client> {
    let key = identity::Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let (relay_transport, relay_client) = relay::client::new(peer);
    let transport = match net {
        Net::Tcp => relay_transport
            .or_transport(tcp::tokio::Transport::new(
                tcp::Config::default().nodelay(true),
            ))
            .upgrade(Version::V1)
            .authenticate(plaintext::Config::new(&key))
            .multiplex(yamux::Config::default())
            .boxed(),
        // The relayed connection still needs a security and muxer upgrade;
        // QUIC brings its own.
        Net::Quic => relay_transport
            .upgrade(Version::V1)
            .authenticate(plaintext::Config::new(&key))
            .multiplex(yamux::Config::default())
            .or_transport(quic::tokio::Transport::new(quic::Config::new(&key)))
            .map(|either, _| match either {
                Either::Left((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
                Either::Right((peer, conn)) => (peer, StreamMuxerBox::new(conn)),
            })
            .boxed(),
    };
    let (stock, ours, raw) = match dcutr {
        Dcutr::Stock => (Some(stock::Behaviour::new(peer)), None, None),
        Dcutr::Ours(config) => (
            None,
            Some(ours::Behaviour::with_config(peer, config).expect("valid config")),
            None,
        ),
        #[cfg(feature = "metrics")]
        Dcutr::OursWithMetrics(config, metrics) => (
            None,
            Some(
                ours::Behaviour::with_config(peer, config)
                    .expect("valid config")
                    .with_metrics(metrics),
            ),
            None,
        ),
        Dcutr::Scripted => (None, None, Some(libp2p_stream::Behaviour::new())),
    };
    Swarm::new(
        transport,
        Client {
            relay: relay_client,
            identify: identify::Behaviour::new(identify::Config::new(
                "/client".to_owned(),
                key.public(),
            )),
            stock: stock.into(),
            ours: ours.into(),
            echo: echo::Behaviour::default(),
            raw: raw.into(),
        },
        peer,
        swarm_config(),
    )
}

/// Listens on a fresh loopback port and returns the address.
pub async fn listen<B: NetworkBehaviour>(swarm: &mut Swarm<B>, net: Net) -> Multiaddr {
    swarm.listen_on(net.listen_addr()).unwrap();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return address;
        }
    }
}

/// The two clients, connected through a relay: A dialled B's relayed
/// address, B holds the reservation.
pub struct Pair {
    pub a: Swarm<Client>,
    pub b: Swarm<Client>,
    pub a_id: PeerId,
    pub b_id: PeerId,
    /// The clients' direct listening addresses.
    pub a_listen: Multiaddr,
    pub b_listen: Multiaddr,
    pub relay_id: PeerId,
    /// B's relayed address.
    pub b_relayed: Multiaddr,
    /// When the test must be over.
    pub deadline: tokio::time::Instant,
}

/// Builds the relay (spawned), makes B reserve a slot and learn its
/// observed address, makes A learn its own from the relay, and returns
/// before A dials B through the relay (see [`Pair::dial_relayed`]).
pub async fn setup(a: Swarm<Client>, b: Swarm<Client>) -> Pair {
    setup_on(Net::Tcp, a, b).await
}

/// [`setup`] for clients built with [`build_client_on`]`(net, ..)`.
pub async fn setup_on(net: Net, a: Swarm<Client>, b: Swarm<Client>) -> Pair {
    let deadline = tokio::time::Instant::now() + TEST_TIMEOUT;
    let mut trail = SetupTrail::default();
    match tokio::time::timeout_at(deadline, connect(net, a, b, deadline, &mut trail)).await {
        Ok(pair) => pair,
        Err(_) => panic!("setup took longer than {TEST_TIMEOUT:?}; {trail:#?}"),
    }
}

/// What setup saw, so that a stalled setup names the step it stalled in
/// and the events that led there.
#[derive(Default, Debug)]
struct SetupTrail {
    step: &'static str,
    events: Vec<String>,
}

impl SetupTrail {
    /// The most events a trail keeps: enough to show a stall's cause,
    /// few enough to read in a CI log.
    const MAX_EVENTS: usize = 64;

    fn step(&mut self, step: &'static str) {
        self.step = step;
        self.note(format!("step: {step}"));
    }

    fn saw<E: std::fmt::Debug>(&mut self, who: &str, event: &E) {
        let mut line = format!("{who}: {event:?}");
        line.truncate(300);
        self.note(line);
    }

    fn note(&mut self, line: String) {
        if self.events.len() == Self::MAX_EVENTS {
            self.events.remove(0);
        }
        self.events.push(line);
    }
}

async fn connect(
    net: Net,
    mut a: Swarm<Client>,
    mut b: Swarm<Client>,
    deadline: tokio::time::Instant,
    trail: &mut SetupTrail,
) -> Pair {
    trail.step("relay listening");
    let mut relay = build_relay(net);
    let relay_listen = listen(&mut relay, net).await;
    relay.add_external_address(relay_listen.clone());
    let relay_id = *relay.local_peer_id();
    tokio::spawn(async move {
        loop {
            relay.select_next_some().await;
        }
    });
    let relay_addr = relay_listen.with(Protocol::P2p(relay_id));

    trail.step("A and B listening");
    let b_listen = listen(&mut b, net).await;
    let a_listen = listen(&mut a, net).await;
    let b_id = *b.local_peer_id();
    let a_id = *a.local_peer_id();

    // B: reservation accepted, relayed address listening, and its own
    // address observed by the relay (identify), so its first Connect
    // carries it.
    let b_relayed = relay_addr.clone().with(Protocol::P2pCircuit);
    trail.step("B reserving, listening on the circuit and observed");
    b.listen_on(b_relayed.clone()).unwrap();
    let (mut reserved, mut listening, mut observed) = (false, false, false);
    while !(reserved && listening && observed) {
        let event = b.select_next_some().await;
        trail.saw("B", &event);
        match event {
            SwarmEvent::Behaviour(ClientEvent::Relay(
                relay::client::Event::ReservationReqAccepted { .. },
            )) => reserved = true,
            SwarmEvent::NewListenAddr { address, .. }
                if address.iter().any(|p| p == Protocol::P2pCircuit) =>
            {
                listening = true;
            }
            SwarmEvent::NewExternalAddrCandidate { .. } => observed = true,
            _ => {}
        }
    }
    // A: connected to the relay, own address observed.
    trail.step("A connected to the relay and observed");
    a.dial(relay_addr.clone()).unwrap();
    loop {
        let event = a.select_next_some().await;
        trail.saw("A", &event);
        if let SwarmEvent::NewExternalAddrCandidate { .. } = event {
            break;
        }
    }
    Pair {
        a,
        b,
        a_id,
        b_id,
        a_listen,
        b_listen,
        relay_id,
        b_relayed: relay_addr
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(b_id)),
        deadline,
    }
}

/// Which client an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    A,
    B,
}

/// What the tests look at, gathered from both swarms.
#[derive(Default, Debug)]
pub struct Seen {
    /// Non-relayed connections between A and B: (who, id, endpoint).
    pub direct: Vec<(Who, ConnectionId, libp2p::core::ConnectedPoint)>,
    /// Relayed connections between A and B.
    pub relayed: Vec<(Who, ConnectionId)>,
    /// Closed connections.
    pub closed: Vec<(Who, ConnectionId)>,
    /// Our outcomes.
    pub ours: Vec<(Who, ours::Report)>,
    /// Our progress reports.
    pub progress: Vec<(Who, ours::Progress)>,
    /// Stock outcomes: (who, Ok(id) or the error's text).
    pub stock: Vec<(Who, Result<ConnectionId, String>)>,
    /// Echo replies.
    pub echoed: Vec<(Who, echo::Echoed)>,
    /// New candidates for our external address, as the swarm reported them.
    pub candidates: Vec<(Who, Multiaddr)>,
}

impl Seen {
    /// Our successful outcome on `who`: the direct connection id.
    pub fn ours_ok(&self, who: Who) -> Option<ConnectionId> {
        self.ours.iter().find_map(|(w, r)| match r {
            ours::Report::Outcome { event, .. } if *w == who => event.result.as_ref().ok().copied(),
            _ => None,
        })
    }

    /// Our failed outcome on `who`.
    pub fn ours_err(&self, who: Who) -> Option<&ours::Error> {
        self.ours.iter().find_map(|(w, r)| match r {
            ours::Report::Outcome { event, .. } if *w == who => event.result.as_ref().err(),
            _ => None,
        })
    }

    /// Our full outcome report on `who`.
    pub fn ours_outcome(&self, who: Who) -> Option<&ours::Report> {
        self.ours
            .iter()
            .find(|(w, r)| *w == who && matches!(r, ours::Report::Outcome { .. }))
            .map(|(_, r)| r)
    }

    pub fn stock_ok(&self, who: Who) -> Option<ConnectionId> {
        self.stock
            .iter()
            .find_map(|(w, r)| (*w == who).then(|| r.as_ref().ok().copied()).flatten())
    }

    /// Whether `id` on `who` is a direct (not relayed) connection.
    pub fn is_direct(&self, who: Who, id: ConnectionId) -> bool {
        self.direct.iter().any(|(w, c, _)| *w == who && *c == id)
    }

    pub fn is_closed(&self, who: Who, id: ConnectionId) -> bool {
        self.closed.iter().any(|(w, c)| *w == who && *c == id)
    }

    pub fn echo_on(&self, who: Who, id: ConnectionId) -> Option<&[u8]> {
        self.echoed
            .iter()
            .find(|(w, e)| *w == who && e.connection_id == id)
            .map(|(_, e)| e.reply.as_slice())
    }
}

impl Pair {
    /// A dials B's relayed address.
    pub fn dial_relayed(&mut self) {
        self.a.dial(self.b_relayed.clone()).unwrap();
    }

    pub fn swarm(&mut self, who: Who) -> &mut Swarm<Client> {
        match who {
            Who::A => &mut self.a,
            Who::B => &mut self.b,
        }
    }

    pub fn peer(&self, who: Who) -> PeerId {
        match who {
            Who::A => self.b_id,
            Who::B => self.a_id,
        }
    }

    /// Drives both swarms, recording into `seen`, until `done` holds.
    /// Panics with what was seen if the test's deadline passes first.
    pub async fn run_until(
        &mut self,
        seen: &mut Seen,
        what: &str,
        mut done: impl FnMut(&Seen) -> bool,
    ) {
        let result = tokio::time::timeout_at(self.deadline, async {
            while !done(seen) {
                let (who, event) = tokio::select! {
                    e = self.a.select_next_some() => (Who::A, e),
                    e = self.b.select_next_some() => (Who::B, e),
                };
                let peer = self.peer(who);
                record(seen, who, peer, event);
            }
        })
        .await;
        if result.is_err() {
            panic!("timed out waiting for {what}; seen: {seen:#?}");
        }
    }
}

impl Pair {
    /// Drives both swarms, recording into `seen`, until `until` completes;
    /// returns its output. Panics if the test's deadline passes first.
    pub async fn drive_until<F: std::future::Future>(
        &mut self,
        seen: &mut Seen,
        what: &str,
        until: F,
    ) -> F::Output {
        let mut until = std::pin::pin!(until);
        let result = tokio::time::timeout_at(self.deadline, async {
            loop {
                let (who, event) = tokio::select! {
                    out = &mut until => return out,
                    e = self.a.select_next_some() => (Who::A, e),
                    e = self.b.select_next_some() => (Who::B, e),
                };
                let peer = self.peer(who);
                record(seen, who, peer, event);
            }
        })
        .await;
        match result {
            Ok(out) => out,
            Err(_) => panic!("timed out waiting for {what}; seen: {seen:#?}"),
        }
    }
}

fn record(seen: &mut Seen, who: Who, peer: PeerId, event: SwarmEvent<ClientEvent>) {
    match event {
        SwarmEvent::ConnectionEstablished {
            peer_id,
            connection_id,
            endpoint,
            ..
        } if peer_id == peer => {
            if endpoint.is_relayed() {
                seen.relayed.push((who, connection_id));
            } else {
                tracing::info!(?who, %connection_id, ?endpoint, "direct connection");
                seen.direct.push((who, connection_id, endpoint));
            }
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            connection_id,
            ..
        } if peer_id == peer => seen.closed.push((who, connection_id)),
        SwarmEvent::Behaviour(ClientEvent::Ours(ours::Report::Progress(p))) => {
            tracing::info!(?who, event = ?p.event, "progress");
            seen.progress.push((who, p));
        }
        SwarmEvent::Behaviour(ClientEvent::Ours(report)) => {
            tracing::info!(?who, ?report, "our outcome");
            seen.ours.push((who, report));
        }
        SwarmEvent::Behaviour(ClientEvent::Stock(stock::Event {
            remote_peer_id,
            result,
        })) if remote_peer_id == peer => {
            tracing::info!(?who, ?result, "stock outcome");
            seen.stock
                .push((who, result.map_err(|e| format!("{e}: {e:?}"))));
        }
        SwarmEvent::Behaviour(ClientEvent::Echo(e)) => seen.echoed.push((who, e)),
        SwarmEvent::NewExternalAddrCandidate { address } => seen.candidates.push((who, address)),
        _ => {}
    }
}
