//! # dcutr-driver
//!
//! The one async loop that binds [`dcutr_core`]'s commands to real
//! sockets, written once for every runtime. A runtime adapter
//! (`dcutr-tokio`, `dcutr-async-std`) implements the small [`Runtime`]
//! trait (clock, timers, TCP connect and accept) and wraps the types; the
//! loop itself, [`drive`], lives here.
//!
//! The driver holds **no protocol logic**: it reads what the core wants,
//! feeds it what happened with a timestamp from the runtime's clock, and
//! carries out the commands. It spawns no task: every connection is a
//! small future owned by the upgrade's future, so dropping the upgrade
//! cancels every dial and closes every socket it opened.
//!
//! ## Identity of the direct connection
//! The driver always runs the core's dcutr-rs session
//! ([`UpgradeBuilder::dcutr_session`](dcutr_core::UpgradeBuilder::dcutr_session)):
//! every attempt on the one relayed stream you hand it, and by default the
//! session's pinned TLS, with a fresh [`Identity`] (ECDSA P-256 key, self-signed certificate) per
//! upgrade, whose [`fingerprint`] the core sends in its `Hello`; mutual
//! TLS 1.3 on every direct connection, accepting exactly the certificate
//! the peer pinned (QUIC in its own handshake, with per-upgrade configs;
//! TCP wrapped with `futures-rustls`, the TLS client being the side whose
//! core role is the client). The winner comes back as
//! [`DirectConnection::Tls`] or [`DirectConnection::Quic`]. Pass
//! [`Options::identity`] and [`Options::peer_fingerprint`] when you
//! authenticate the fingerprints yourself (a relay could swap them), or
//! [`Options::caller_authenticates`] when your own handshake authenticates
//! the peer.

#![forbid(unsafe_code)]

mod actor;
mod admission;
pub mod fdlimit;
pub mod net;
pub mod quic;
mod report;
pub mod stun;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dcutr_core::{
    Candidate, Carrier, Config, ConfigError, DialError, DirectId, Event, Failure, Outcome, Role,
    Side, Transport, Upgrade, reason::StreamUnavailable,
};
use futures_channel::mpsc;
use futures_util::future::{AbortHandle, BoxFuture, Either};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};

use actor::{ActorEvent, Cmd, DirectConn, Handshake as TlsSetup, Key, QuicDirect, Start, Stream};
pub use admission::running_upgrades;
pub use quic::{
    HOLE_PUNCH_INITIAL_RTT, QuicLimits, QuicSocket, SERVER_NAME, hole_punch_transport,
    insecure_self_signed_configs, punch_transport,
};
pub use report::Report;
use tls::Pinned;
pub use tls::{ALPN as DIRECT_ALPN, Fingerprint, Identity, fingerprint};

/// What a runtime adapter provides: a clock, timers, and TCP.
///
/// Streams use the `futures-io` traits; an adapter whose runtime has its
/// own traits wraps its streams (tokio: `tokio_util::compat`).
pub trait Runtime: Send + Sync + 'static {
    /// A connected TCP stream.
    type TcpStream: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static;
    /// A TCP listener with port reuse (see [`net::reuse_listener`]).
    type TcpListener: Send + 'static;

    /// The runtime's monotonic clock (a paused test clock counts).
    fn now(&self) -> Instant;

    /// A future that completes at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()>;

    /// Connects to `remote` from `local`, with port reuse, so the dial
    /// leaves from the port the peer observed (see
    /// [`net::reuse_stream_socket`]). Adapters set `TCP_NODELAY` on direct
    /// connections (dialled and accepted): the TLS handshake and the
    /// select byte are small writes in turn, which Nagle's algorithm
    /// against delayed ACKs would hold back by 40 ms.
    fn connect_from(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> BoxFuture<'static, io::Result<Self::TcpStream>>;

    /// Polls the listener for an inbound connection.
    fn poll_accept(
        &self,
        listener: &mut Self::TcpListener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Self::TcpStream, SocketAddr)>>;

    /// The listener's local address.
    ///
    /// # Errors
    /// When the socket has none.
    fn listener_addr(&self, listener: &Self::TcpListener) -> io::Result<SocketAddr>;
}

/// Called with every event of the core and the time since the start.
pub type EventCallback = Box<dyn FnMut(&Event, Duration) + Send>;

/// Everything an upgrade needs besides the relayed stream.
#[must_use]
pub struct Options<L> {
    side: Side,
    config: Config,
    local_addrs: Vec<Candidate>,
    remote_public_addrs: Vec<Candidate>,
    tcp: Option<L>,
    quic: Option<QuicSocket>,
    caller_authenticates: bool,
    identity: Option<Identity>,
    peer_fingerprint: Option<Fingerprint>,
    seed: Option<[u8; 32]>,
    nat: Option<dcutr_core::nat::NatBehaviour>,
    on_event: Option<EventCallback>,
    peer: Option<[u8; 32]>,
}

impl<L> Options<L> {
    /// Options for `side`, with `Config::default()` and the pinned mutual
    /// TLS identity check of the dcutr-rs session (all attempts on the one
    /// relayed stream, see
    /// [`UpgradeBuilder::dcutr_session`](dcutr_core::UpgradeBuilder::dcutr_session)).
    pub fn new(side: Side) -> Self {
        Options {
            side,
            config: Config::default(),
            local_addrs: Vec::new(),
            remote_public_addrs: Vec::new(),
            tcp: None,
            quic: None,
            caller_authenticates: false,
            identity: None,
            peer_fingerprint: None,
            seed: None,
            nat: None,
            on_event: None,
            peer: None,
        }
    }

    /// Names the peer for the process-wide guard in front of every
    /// upgrade: at most one upgrade per named peer at a time, none for
    /// [`FAILURE_COOLDOWN`](dcutr_core::admission::FAILURE_COOLDOWN) after
    /// its last one failed, and at most
    /// [`MAX_CONCURRENT_UPGRADES`](dcutr_core::admission::MAX_CONCURRENT_UPGRADES)
    /// upgrades at once in this process (named or not). Use a name the
    /// peer cannot change at will, such as the account or pairing it
    /// authenticated with; a refused upgrade fails with
    /// [`UpgradeFailure::Refused`] before anything is sent.
    pub fn peer(mut self, name: impl AsRef<[u8]>) -> Self {
        self.peer = Some(admission::name_digest(name.as_ref()));
        self
    }

    /// Replaces the config (default: `Config::default()`); start from it
    /// with struct update syntax, `Config { .., ..Config::default() }`.
    /// The config holds only the spec's limits and timeouts: the driver
    /// itself runs the dcutr-rs session on the relayed stream, with pinned
    /// TLS unless [`Options::caller_authenticates`] says otherwise.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Our observed addresses, most recently observed first.
    pub fn local_addrs(mut self, addrs: impl IntoIterator<Item = Candidate>) -> Self {
        self.local_addrs.extend(addrs);
        self
    }

    /// The peer's public addresses, for the unilateral dial (initiator).
    pub fn remote_public_addrs(mut self, addrs: impl IntoIterator<Item = Candidate>) -> Self {
        self.remote_public_addrs.extend(addrs);
        self
    }

    /// The TCP listener to punch from (bound with port reuse).
    pub fn tcp(mut self, listener: L) -> Self {
        self.tcp = Some(listener);
        self
    }

    /// The QUIC endpoint to punch from.
    pub fn quic(mut self, socket: QuicSocket) -> Self {
        self.quic = Some(socket);
        self
    }

    /// Declares that the caller's own handshake on the direct connection
    /// authenticates the peer (for example TLS with known certificates):
    /// skips the pinned TLS of the driver, and the winner comes back as a
    /// plain [`DirectConnection::Tcp`] stream or a QUIC connection of the
    /// endpoint's own configs ([`QuicSocket::with_tls`]). Off by default;
    /// together with [`Options::identity`] or [`Options::peer_fingerprint`]
    /// the upgrade fails at once with
    /// [`UpgradeFailure::CallerAuthenticatesWithPin`].
    pub fn caller_authenticates(mut self, yes: bool) -> Self {
        self.caller_authenticates = yes;
        self
    }

    /// Presents `identity`'s certificate on direct connections instead of
    /// a fresh one, so its fingerprint can be sent to the peer over a
    /// channel you authenticate (the `dcutr` CLI does it under a PAKE).
    /// Use an identity for one upgrade only.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The peer's certificate fingerprint, learnt over a channel you
    /// authenticate. The verifiers pin it from the start, and the peer's
    /// `Hello` must carry the same one, or the upgrade fails at once with
    /// [`UpgradeFailure::FingerprintMismatch`] (the relay swapped it).
    pub fn peer_fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.peer_fingerprint = Some(fingerprint);
        self
    }

    /// Fixes the seed of the core's RNG (spray). By default 32
    /// bytes come from the OS; fix it only in tests.
    pub fn seed(mut self, seed: [u8; 32]) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Our NAT's behaviour, as STUN found it from the punch socket (see
    /// [`stun::discover`] and [`stun::observe_tcp`]): it travels in our
    /// Connect, and when both sides' behaviours leave no strategy that can
    /// work, both fail at once with
    /// [`AttemptFailure::NatsCannotMeet`](dcutr_core::AttemptFailure::NatsCannotMeet)
    /// instead of punching into nothing. Unknown by default.
    pub fn nat_behaviour(mut self, behaviour: dcutr_core::nat::NatBehaviour) -> Self {
        self.nat = Some(behaviour);
        self
    }

    /// Calls `callback` with every event of the core, as it happens.
    pub fn on_event(mut self, callback: impl FnMut(&Event, Duration) + Send + 'static) -> Self {
        self.on_event = Some(Box::new(callback));
        self
    }
}

/// The TLS stream of a pinned TCP direct connection, over the runtime's
/// TCP stream `T`.
pub type TlsStream<T> = futures_rustls::TlsStream<T>;

/// The direct connection that won.
#[derive(Debug)]
#[non_exhaustive]
pub enum DirectConnection<T, L = TlsStream<T>> {
    /// A TCP stream (from a simultaneous open, our dial, or our listener)
    /// inside mutual TLS 1.3, authenticated as the peer by the
    /// certificate it pinned over the relayed stream: the default.
    Tls(L),
    /// A plain TCP stream: only with
    /// [`Options::caller_authenticates`], whose handshake must
    /// authenticate the peer.
    Tcp(T),
    /// A QUIC connection; with the default identity check its TLS
    /// authenticated the peer's pinned certificate.
    Quic(quinn::Connection),
}

/// A successful upgrade.
#[derive(Debug)]
#[non_exhaustive]
pub struct Upgraded<T, S, L = TlsStream<T>> {
    /// The direct connection; the identity check's bytes are consumed, the
    /// next byte is the peer application's.
    pub connection: DirectConnection<T, L>,
    /// Transport of the connection.
    pub transport: Transport,
    /// Our role on it: the spec's A is the client, B the server (in the
    /// unilateral dial, B dials and is the client).
    pub role: Role,
    /// The peer's address on it.
    pub remote: SocketAddr,
    /// What happened when.
    pub report: Report,
    /// The relayed stream, still open: data in flight may drain during the
    /// grace period. Close it by [`Upgraded::relay_close_at`].
    pub relay: S,
    /// End of the grace period after which the relayed stream should be
    /// closed ([`Config::relay_grace_period`] after the upgrade).
    pub relay_close_at: Instant,
}

impl<T, S, L> Upgraded<T, S, L> {
    /// Converts the stream types, for adapters that wrap their runtime's
    /// streams while driving.
    pub fn map<T2, S2, L2>(
        self,
        tcp: impl FnOnce(T) -> T2,
        tls: impl FnOnce(L) -> L2,
        relay: impl FnOnce(S) -> S2,
    ) -> Upgraded<T2, S2, L2> {
        Upgraded {
            connection: match self.connection {
                DirectConnection::Tcp(t) => DirectConnection::Tcp(tcp(t)),
                DirectConnection::Tls(t) => DirectConnection::Tls(tls(t)),
                DirectConnection::Quic(q) => DirectConnection::Quic(q),
            },
            transport: self.transport,
            role: self.role,
            remote: self.remote,
            report: self.report,
            relay: relay(self.relay),
            relay_close_at: self.relay_close_at,
        }
    }
}

/// Why an upgrade did not produce a direct connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeFailure {
    /// The protocol ended without a direct connection (all attempts
    /// failed, the peer broke the protocol, the relay closed...). The
    /// report's timeline has the reason of every attempt and dial.
    #[error(transparent)]
    Failed(Failure),
    /// The options cannot work.
    #[error(transparent)]
    Config(ConfigError),
    /// Neither a TCP listener nor a QUIC endpoint was given.
    #[error("neither a TCP listener nor a QUIC endpoint was given")]
    NoTransport,
    /// [`Options::caller_authenticates`] skips the pinned TLS that
    /// [`Options::identity`] or [`Options::peer_fingerprint`] configure:
    /// the options contradict each other, and neither is dropped silently.
    #[error(
        "caller_authenticates skips the pinned TLS that identity / peer_fingerprint configure: set one or the other"
    )]
    CallerAuthenticatesWithPin,
    /// A local socket failed.
    #[error("local socket error: {0}")]
    Io(io::Error),
    /// The peer's `Hello` pinned another certificate than the fingerprint
    /// given with [`Options::peer_fingerprint`]: whoever relays the stream
    /// tampered with it. The relayed stream was closed.
    #[error("the peer's Hello pins another certificate than the one authenticated beforehand")]
    FingerprintMismatch,
    /// The process-wide guard let no upgrade start (see [`Options::peer`]):
    /// one with this peer is running, its last one failed moments ago, or
    /// too many run at once. Nothing was sent; the relayed stream is
    /// returned untouched.
    #[error("no upgrade started: {0}")]
    Refused(dcutr_core::admission::Refusal),
}

/// A failed upgrade. The relayed stream comes back when it is still
/// usable (a clean failure); after a protocol error it was reset.
#[derive(Debug)]
#[non_exhaustive]
pub struct UpgradeError<S> {
    /// Why.
    pub reason: UpgradeFailure,
    /// What happened when.
    pub report: Report,
    /// The relayed stream, if still usable.
    pub relay: Option<S>,
}

impl<S> UpgradeError<S> {
    /// Converts the relayed stream's type.
    pub fn map<S2>(self, relay: impl FnOnce(S) -> S2) -> UpgradeError<S2> {
        UpgradeError {
            reason: self.reason,
            report: self.report,
            relay: self.relay.map(relay),
        }
    }
}

impl<S> std::fmt::Display for UpgradeError<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upgrade failed: {}", self.reason)
    }
}

impl<S: std::fmt::Debug> std::error::Error for UpgradeError<S> {}

/// Runs one upgrade over `relay` until its outcome.
///
/// # Errors
/// [`UpgradeError`] with the reason, the report and (when usable) the
/// relayed stream.
pub async fn drive<R, S>(
    runtime: &R,
    relay: S,
    options: Options<R::TcpListener>,
) -> Result<Upgraded<R::TcpStream, S>, UpgradeError<S>>
where
    R: Runtime,
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    let start = runtime.now();
    let side = options.side;
    let fail = |reason, relay| UpgradeError {
        reason,
        report: Report::empty(side, start),
        relay: Some(relay),
    };
    if options.tcp.is_none() && options.quic.is_none() {
        return Err(fail(UpgradeFailure::NoTransport, relay));
    }
    if options.caller_authenticates
        && (options.identity.is_some() || options.peer_fingerprint.is_some())
    {
        return Err(fail(UpgradeFailure::CallerAuthenticatesWithPin, relay));
    }
    let ticket = match admission::admit(options.peer) {
        Ok(ticket) => ticket,
        Err(refusal) => return Err(fail(UpgradeFailure::Refused(refusal), relay)),
    };
    // The relayed stream's actor takes its commands from here: the core's
    // writes, wants and close, sent from the first output on.
    let (relay_cmds, relay_rx) = mpsc::unbounded();
    let result = match Driver::new(runtime, options, start, relay_cmds) {
        Ok(driver) => driver.run(relay, relay_rx).await,
        Err(reason) => Err(fail(reason, relay)),
    };
    // Only what the peer (or its relay) did starts a cooldown: a failed
    // protocol or a tampered Hello, not a local socket or config error.
    let peer_failed = matches!(&result, Err(e) if matches!(e.reason, UpgradeFailure::Failed(_) | UpgradeFailure::FingerprintMismatch));
    ticket.finish(!peer_failed);
    result
}

type ActorFuture<D> = BoxFuture<'static, (Key, Option<D>)>;

/// A TCP connect of the birthday punch: the stream when it completed
/// before its expiry, `None` when it failed or expired (the socket is
/// closed with the future).
type BirthdayConnect<T> = BoxFuture<'static, Option<(dcutr_core::birthday::Local, SocketAddr, T)>>;

/// The birthday punch's TCP connects in flight.
struct BirthdayConnects<T> {
    pending: FuturesUnordered<BirthdayConnect<T>>,
    /// The descriptor limit was checked for this punch: `Err` when it
    /// cannot hold the budget (its connects are then not made).
    fds: Option<Result<(), fdlimit::FdLimitError>>,
}

impl<T> Default for BirthdayConnects<T> {
    fn default() -> Self {
        BirthdayConnects {
            pending: FuturesUnordered::new(),
            fds: None,
        }
    }
}

struct DirectActor {
    cmds: mpsc::UnboundedSender<Cmd>,
    /// Bytes the actor may still read, as we last told it minus what it
    /// delivered since.
    want: usize,
    /// A pinned QUIC dial: what the other end presented, when its
    /// handshake fails.
    presented: Option<tls::Presented>,
}

struct Driver<'r, R: Runtime> {
    runtime: &'r R,
    core: Upgrade,
    start: Instant,
    tcp: Option<R::TcpListener>,
    tcp_local: Option<SocketAddr>,
    quic: Option<QuicSocket>,
    /// The birthday punch's fresh sockets (hard side).
    fresh: quic::FreshSockets,
    /// The birthday punch's pending TCP connects (fresh sockets or
    /// probes), each ending at its expiry.
    birthday_tcp: BirthdayConnects<R::TcpStream>,
    on_event: Option<EventCallback>,
    events_tx: mpsc::UnboundedSender<(Key, ActorEvent)>,
    events_rx: mpsc::UnboundedReceiver<(Key, ActorEvent)>,
    directs: Vec<(DirectId, DirectActor)>,
    actors: FuturesUnordered<ActorFuture<DirectConn<R::TcpStream>>>,
    quic_accept: Option<BoxFuture<'static, Option<quinn::Incoming>>>,
    /// Inbound QUIC handshakes in flight, each ending with its number
    /// and, if it completed in time, the connection.
    quic_handshakes: FuturesUnordered<BoxFuture<'static, (u64, Option<quinn::Connection>)>>,
    /// The same handshakes, oldest first, to choose one to evict.
    handshakes: Vec<Handshake>,
    next_handshake: u64,
    /// Inbound connections handed to the core, oldest first; pruned of
    /// those that are gone when room is needed.
    inbound: Vec<InboundSlot>,
    relay_cmds: mpsc::UnboundedSender<Cmd>,
    relay_want: usize,
    relay_reset: bool,
    sleep: Option<(Instant, BoxFuture<'static, ()>)>,
    /// Our ephemeral certificate, with pinned TLS.
    identity: Option<Identity>,
    /// The peer's fingerprint, authenticated by the caller.
    expected_peer: Option<Fingerprint>,
    /// The peer's Hello pinned another fingerprint than `expected_peer`.
    tampered: bool,
}

/// An inbound QUIC handshake in flight.
struct Handshake {
    number: u64,
    from: SocketAddr,
    /// With pinned TLS: what the other end presented.
    presented: Option<tls::Presented>,
    /// Whether the peer named the source address (see
    /// [`Upgrade::is_peer_address`]).
    peer_named: bool,
    abort: AbortHandle,
}

/// An inbound connection handed to the core.
struct InboundSlot {
    id: DirectId,
    peer_named: bool,
    /// Its pinned TLS handshake proved the peer's certificate.
    authenticated: bool,
}

/// One thing that happened, for the core.
enum Wake<T> {
    Timer,
    Actor(Key, ActorEvent),
    ActorEnded,
    Inbound(DirectConn<T>, Candidate),
    QuicIncoming(Box<quinn::Incoming>),
    /// A pinned inbound QUIC handshake failed after the other end
    /// presented a certificate.
    QuicRefused(SocketAddr, Option<Fingerprint>),
    /// A spray datagram of a dcutr-rs peer arrived at the QUIC socket
    /// from this address: maybe a peer-reflexive candidate.
    PunchSource(SocketAddr),
    /// A birthday-punch datagram arrived at the QUIC socket.
    Birthday(SocketAddr, [u8; dcutr_core::birthday::DATAGRAM_LEN]),
    /// A birthday-punch datagram arrived on fresh socket `.0`.
    Fresh(u16, SocketAddr, [u8; dcutr_core::birthday::DATAGRAM_LEN]),
    /// A birthday-punch TCP connect from `.0` to `.1` completed.
    BirthdayConnected(dcutr_core::birthday::Local, SocketAddr, DirectConn<T>),
    ListenerFailed(io::Error),
}

impl<'r, R: Runtime> Driver<'r, R> {
    fn new(
        runtime: &'r R,
        options: Options<R::TcpListener>,
        start: Instant,
        relay_cmds: mpsc::UnboundedSender<Cmd>,
    ) -> Result<Self, UpgradeFailure> {
        let mut config = options.config;
        // Pinned TLS, with our certificate, unless the caller's own
        // handshake authenticates the peer.
        // (`drive` refused caller_authenticates with an identity.)
        let identity = match (options.caller_authenticates, options.identity) {
            (true, _) => None,
            (false, Some(identity)) => Some(identity),
            (false, None) => Some(
                Identity::generate()
                    .map_err(|e| UpgradeFailure::Io(io::Error::other(e.to_string())))?,
            ),
        };
        let tcp_local = match &options.tcp {
            Some(listener) => Some(
                runtime
                    .listener_addr(listener)
                    .map_err(UpgradeFailure::Io)?,
            ),
            None => None,
        };
        let quic_local = match &options.quic {
            Some(q) => Some(q.local_addr().map_err(UpgradeFailure::Io)?),
            None => None,
        };
        // We can only dial what we have sockets for, in their families,
        // and only what the caller's config allows of that: the two are
        // intersected, and an empty intersection is an error rather than
        // an upgrade that can only fail.
        let mut dialable = dcutr_core::Dialable::none();
        for (transport, local) in [(Transport::Tcp, tcp_local), (Transport::Quic, quic_local)] {
            if let Some(addr) = local
                && config.dialable.allows(&Candidate { transport, addr })
            {
                dialable = dialable.with(transport, addr.is_ipv6());
            }
        }
        if dialable == dcutr_core::Dialable::none() {
            return Err(UpgradeFailure::Config(ConfigError::OutOfRange {
                field: "dialable",
                reason: "allows none of the sockets given (TCP listener, QUIC endpoint): \
                         allow their transport and family, or give a socket it allows",
            }));
        }
        config.dialable = dialable;
        let seed = match options.seed {
            Some(seed) => seed,
            None => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed)
                    .map_err(|e| UpgradeFailure::Io(io::Error::other(e.to_string())))?;
                seed
            }
        };
        let mut builder = Upgrade::builder(options.side, config, seed)
            .capabilities(dcutr_core::settings::Capabilities::STANDALONE)
            .local_addrs(options.local_addrs)
            .remote_public_addrs(options.remote_public_addrs);
        // The driver carries one relayed byte stream: always the session.
        builder = match &identity {
            Some(identity) => builder.dcutr_session(identity.fingerprint()),
            None => builder.dcutr_session_unpinned(),
        };
        if let Some(nat) = options.nat {
            builder = builder.nat_behaviour(nat);
        }
        let core = builder.start(start).map_err(UpgradeFailure::Config)?;
        let (events_tx, events_rx) = mpsc::unbounded();
        let quic_accept = options.quic.as_ref().map(|q| accept_next(&q.endpoint));
        if let Some(quic) = &options.quic {
            quic.clear_punch_sources();
        }
        Ok(Driver {
            runtime,
            core,
            start,
            tcp: options.tcp,
            tcp_local,
            quic: options.quic,
            fresh: quic::FreshSockets::default(),
            birthday_tcp: BirthdayConnects::default(),
            on_event: options.on_event,
            events_tx,
            events_rx,
            directs: Vec::new(),
            actors: FuturesUnordered::new(),
            quic_accept,
            quic_handshakes: FuturesUnordered::new(),
            handshakes: Vec::new(),
            next_handshake: 0,
            inbound: Vec::new(),
            relay_cmds,
            relay_want: 0,
            relay_reset: false,
            sleep: None,
            identity,
            expected_peer: options.peer_fingerprint,
            tampered: false,
        })
    }

    async fn run<S>(
        mut self,
        relay: S,
        relay_rx: mpsc::UnboundedReceiver<Cmd>,
    ) -> Result<Upgraded<R::TcpStream, S>, UpgradeError<S>>
    where
        S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
    {
        let span = tracing::info_span!("dcutr", side = %self.core.side());
        let _enter = span.enter();
        let mut relay_actor = actor::run(
            Key::Relay,
            Start::Ready(Stream(relay)),
            relay_rx,
            self.events_tx.clone(),
        )
        .boxed();
        let mut relay_done: Option<Option<Stream<S>>> = None;

        loop {
            self.carry_out_outputs();
            if self.core.outcome().is_some() {
                break;
            }
            self.update_wants();
            self.arm_timer();
            let wake = std::future::poll_fn(|cx| {
                if relay_done.is_none()
                    && let Poll::Ready((_, stream)) = relay_actor.poll_unpin(cx)
                {
                    relay_done = Some(stream);
                }
                self.poll_wake(cx)
            })
            .await;
            self.handle(wake);
            if self.tampered {
                break;
            }
        }

        // The outcome is decided: hand the relayed stream back, release
        // the winner, close everything else.
        let winner = match self.core.outcome() {
            Some(Outcome::Upgraded(up)) => Some(*up),
            _ => None,
        };
        for (id, actor) in &self.directs {
            let cmd = if Some(*id) == winner.map(|w| w.id) {
                Cmd::Release
            } else {
                Cmd::Close
            };
            let _ = actor.cmds.unbounded_send(cmd);
        }
        let _ = self.relay_cmds.unbounded_send(if self.relay_reset {
            Cmd::Close
        } else {
            Cmd::Release
        });
        let relay = match relay_done {
            Some(stream) => stream,
            None => relay_actor.await.1,
        }
        .map(|Stream(s)| s);
        let mut won = None;
        while let Some((key, conn)) = self.actors.next().await {
            if let (Key::Direct(id), Some(conn)) = (key, conn)
                && Some(id) == winner.map(|w| w.id)
            {
                won = Some(conn);
            }
        }
        let report = Report::new(
            self.core.side(),
            self.start,
            self.core.timeline().clone(),
            self.core.outcome().cloned(),
        );
        if self.tampered {
            return Err(UpgradeError {
                reason: UpgradeFailure::FingerprintMismatch,
                report,
                relay: None,
            });
        }
        match (self.core.outcome().cloned(), won, relay) {
            (Some(Outcome::Upgraded(up)), Some(conn), Some(relay)) => {
                let connection = match conn {
                    DirectConn::Tcp(Stream(t)) => DirectConnection::Tcp(t),
                    DirectConn::Tls(t) => DirectConnection::Tls(t.0),
                    DirectConn::Quic(q) => {
                        if let Some(quic) = &self.quic {
                            quic.open_up(&q.conn);
                        }
                        DirectConnection::Quic(q.conn)
                    }
                    DirectConn::Gone => {
                        return Err(UpgradeError {
                            reason: UpgradeFailure::Io(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                "the winning connection lost its TLS session",
                            )),
                            report,
                            relay: Some(relay),
                        });
                    }
                };
                let decided = self.core.timeline().decided().unwrap_or(self.start);
                Ok(Upgraded {
                    connection,
                    transport: up.transport,
                    role: up.role,
                    remote: up.remote,
                    report,
                    relay,
                    relay_close_at: self.core.relay_close_at().unwrap_or(decided),
                })
            }
            (Some(Outcome::Upgraded(_)), _, relay) => Err(UpgradeError {
                reason: UpgradeFailure::Io(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the winning connection closed before it was handed over",
                )),
                report,
                relay,
            }),
            (Some(Outcome::Failed(failure)), _, relay) => Err(UpgradeError {
                reason: UpgradeFailure::Failed(failure),
                report,
                relay,
            }),
            (None, _, relay) => Err(UpgradeError {
                reason: UpgradeFailure::Io(io::Error::other("upgrade ended without an outcome")),
                report,
                relay,
            }),
        }
    }

    fn now(&self) -> Instant {
        self.runtime.now()
    }

    /// Polls every source once; the first ready one wakes the loop.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake<R::TcpStream>> {
        if let Some((at, sleep)) = self.sleep.as_mut()
            && sleep.poll_unpin(cx).is_ready()
        {
            if self.runtime.now() < *at {
                // A precise timer woke early on purpose: yield to the
                // runtime until the deadline itself.
                *sleep = yield_once().boxed();
                cx.waker().wake_by_ref();
            } else {
                self.sleep = None;
                return Poll::Ready(Wake::Timer);
            }
        }
        if let Poll::Ready(Some((key, event))) = self.events_rx.poll_next_unpin(cx) {
            return Poll::Ready(Wake::Actor(key, event));
        }
        if let Poll::Ready(Some(_)) = self.actors.poll_next_unpin(cx) {
            return Poll::Ready(Wake::ActorEnded);
        }
        if let Some(listener) = self.tcp.as_mut() {
            match self.runtime.poll_accept(listener, cx) {
                Poll::Ready(Ok((stream, from))) => {
                    return Poll::Ready(Wake::Inbound(
                        DirectConn::Tcp(Stream(stream)),
                        Candidate::tcp(from),
                    ));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Wake::ListenerFailed(e)),
                Poll::Pending => {}
            }
        }
        if let Some(accept) = self.quic_accept.as_mut()
            && let Poll::Ready(incoming) = accept.poll_unpin(cx)
        {
            match incoming {
                Some(incoming) => {
                    let endpoint = &self.quic.as_ref().expect("accepting needs it").endpoint;
                    self.quic_accept = Some(accept_next(endpoint));
                    return Poll::Ready(Wake::QuicIncoming(Box::new(incoming)));
                }
                None => self.quic_accept = None,
            }
        }
        if let Some(quic) = &self.quic
            && let Poll::Ready(from) = quic.poll_punch_source(cx)
        {
            return Poll::Ready(Wake::PunchSource(from));
        }
        if let Some(quic) = &self.quic
            && let Poll::Ready((from, bytes)) = quic.poll_birthday(cx)
        {
            return Poll::Ready(Wake::Birthday(from, bytes));
        }
        if let Poll::Ready((i, (from, bytes))) = self.fresh.poll_recv(cx) {
            return Poll::Ready(Wake::Fresh(i, from, bytes));
        }
        while let Poll::Ready(Some(done)) = self.birthday_tcp.pending.poll_next_unpin(cx) {
            if let Some((local, to, stream)) = done {
                return Poll::Ready(Wake::BirthdayConnected(
                    local,
                    to,
                    DirectConn::Tcp(Stream(stream)),
                ));
            }
        }
        while let Poll::Ready(Some((number, conn))) = self.quic_handshakes.poll_next_unpin(cx) {
            let Some(pos) = self.handshakes.iter().position(|h| h.number == number) else {
                continue; // evicted
            };
            let handshake = self.handshakes.remove(pos);
            let from = handshake.from;
            match conn {
                Some(conn) => {
                    return Poll::Ready(Wake::Inbound(
                        DirectConn::Quic(QuicDirect::new(conn)),
                        Candidate::quic(from),
                    ));
                }
                None => {
                    tracing::debug!(%from, "inbound QUIC handshake failed or timed out");
                    if let Some(seen) = handshake.presented.and_then(|p| p.get()) {
                        return Poll::Ready(Wake::QuicRefused(from, Some(seen)));
                    }
                }
            }
        }
        Poll::Pending
    }

    fn handle(&mut self, wake: Wake<R::TcpStream>) {
        let now = self.now();
        match wake {
            Wake::Timer => self.core.handle_timeout(now),
            Wake::Actor(Key::Relay, ActorEvent::Data(data)) => {
                self.relay_want = self.relay_want.saturating_sub(data.len());
                self.core.handle_stream_data(now, &data);
                if let (Some(expected), Some(pinned)) =
                    (self.expected_peer, self.core.peer_fingerprint())
                    && expected != pinned
                {
                    tracing::debug!("the peer's Hello pins another certificate: tampered relay");
                    self.tampered = true;
                    self.relay_reset = true;
                }
            }
            Wake::Actor(Key::Relay, _) => self.core.handle_stream_closed(now),
            Wake::Actor(Key::Direct(id), event) => match event {
                ActorEvent::Connected => {
                    self.core.handle_dial_succeeded(now, id);
                    self.start_handshake(id);
                }
                ActorEvent::DialFailed(error) => {
                    let presented = self
                        .actor_mut(id)
                        .and_then(|a| a.presented.as_ref())
                        .and_then(tls::Presented::get);
                    self.forget(id);
                    match presented {
                        // The pinned QUIC handshake refused a certificate.
                        Some(seen) => self
                            .core
                            .handle_direct_handshake_failed(now, id, Some(seen)),
                        None => self.core.handle_dial_failed(now, id, error),
                    }
                }
                ActorEvent::Handshake(result) => match result {
                    Ok(fp) => {
                        if self.core.peer_fingerprint() == Some(fp)
                            && let Some(slot) = self.inbound.iter_mut().find(|s| s.id == id)
                        {
                            slot.authenticated = true;
                        }
                        self.core.handle_direct_authenticated(now, id, fp);
                    }
                    Err(presented) => {
                        self.forget(id);
                        self.core.handle_direct_handshake_failed(now, id, presented);
                    }
                },
                ActorEvent::Data(data) => {
                    if let Some(actor) = self.actor_mut(id) {
                        actor.want = actor.want.saturating_sub(data.len());
                    }
                    self.core.handle_direct_data(now, id, &data);
                }
                ActorEvent::Closed => {
                    self.forget(id);
                    self.core.handle_direct_closed(now, id);
                }
            },
            Wake::ActorEnded => {}
            Wake::Inbound(conn, from) => {
                let peer_named = self.core.is_peer_address(&from);
                self.make_room_for_inbound(now, peer_named);
                match self.core.handle_inbound(now, from) {
                    Ok(id) => {
                        self.inbound.push(InboundSlot {
                            id,
                            peer_named,
                            authenticated: false,
                        });
                        self.start_actor(id, Start::Ready(conn));
                        self.start_handshake(id);
                    }
                    Err(reason) => {
                        tracing::debug!(%from, %reason, "inbound connection refused");
                        if let DirectConn::Quic(q) = conn {
                            q.conn.close(0u32.into(), b"refused");
                        }
                    }
                }
            }
            Wake::QuicIncoming(incoming) => self.quic_incoming(now, *incoming),
            Wake::QuicRefused(from, presented) => {
                // Tell the core, so the refusal is typed and counted.
                if let Ok(id) = self.core.handle_inbound(now, Candidate::quic(from)) {
                    self.core.handle_direct_handshake_failed(now, id, presented);
                }
            }
            Wake::PunchSource(from) => {
                // The core decides, logs and counts; a dial it makes is
                // carried out with the other outputs.
                if let Err(reason) = self.core.handle_peer_reflexive(now, Candidate::quic(from)) {
                    tracing::trace!(%from, %reason, "punch source not dialled");
                }
            }
            Wake::Birthday(from, bytes) => {
                // The core checks IP, token and kind, and counts refusals.
                let local = dcutr_core::birthday::Local::Punch;
                if let Err(reason) = self.core.handle_birthday_datagram(now, local, from, &bytes) {
                    tracing::trace!(%from, %reason, "birthday datagram refused");
                }
            }
            Wake::Fresh(i, from, bytes) => {
                let local = dcutr_core::birthday::Local::Fresh(i);
                if let Err(reason) = self.core.handle_birthday_datagram(now, local, from, &bytes) {
                    tracing::trace!(i, %from, %reason, "birthday datagram refused");
                }
            }
            Wake::BirthdayConnected(local, to, conn) => {
                // The core checks IP, socket and port; the first it takes
                // is the attempt's direct connection, a refused one is
                // dropped (closed) here.
                match self.core.handle_birthday_connected(now, local, to) {
                    Ok(id) => {
                        self.start_actor(id, Start::Ready(conn));
                        self.start_handshake(id);
                    }
                    Err(reason) => {
                        tracing::debug!(%local, %to, %reason, "birthday connection refused");
                    }
                }
            }
            Wake::ListenerFailed(error) => {
                tracing::warn!(%error, "TCP listener failed; no more inbound connections");
                self.tcp = None;
            }
        }
    }

    /// Decides on a QUIC connection attempt: Retry when handshakes pile
    /// up, make room by evicting the oldest stranger's handshake, or
    /// refuse when every slot holds one from an address the peer named.
    fn quic_incoming(&mut self, now: Instant, incoming: quinn::Incoming) {
        let from = incoming.remote_address();
        if self.handshakes.len() >= quic::PUNCH_RETRY_ABOVE_HANDSHAKES
            && !incoming.remote_address_validated()
        {
            // Only a source that receives our Retry comes back: forged
            // Initials take no slot. A Retry is smaller than the Initial
            // it answers.
            tracing::debug!(%from, "QUIC handshakes pile up: Retry");
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            return;
        }
        let peer_named = self.core.is_peer_address(&Candidate::quic(from));
        if self.handshakes.len() >= self.core.config().max_pending_inbound {
            let Some(pos) = oldest_stranger(&self.handshakes) else {
                tracing::debug!(%from, "every QUIC handshake slot holds the peer's; refusing");
                incoming.refuse();
                return;
            };
            let evicted = self.handshakes.remove(pos);
            tracing::debug!(from = %evicted.from, "evicting the oldest stranger's QUIC handshake");
            evicted.abort.abort();
        }
        let (accepted, presented) = match (&self.identity, &self.quic) {
            (Some(identity), Some(quic)) => {
                let pinned = Pinned::new(identity, self.pin(), &[tls::ALPN]);
                let config = quic.pinned_server(&pinned);
                (incoming.accept_with(config), Some(pinned.presented))
            }
            _ => (incoming.accept(), None),
        };
        let Ok(connecting) = accepted else {
            return;
        };
        let number = self.next_handshake;
        self.next_handshake += 1;
        let timeout = self
            .runtime
            .sleep_until(now + quic::PUNCH_HANDSHAKE_TIMEOUT);
        let (handshake, abort) = futures_util::future::abortable(async move {
            match futures_util::future::select(connecting, timeout).await {
                Either::Left((Ok(conn), _)) => Some(conn),
                // Failed, or timed out: dropping the handshake closes it.
                Either::Left((Err(_), _)) | Either::Right(_) => None,
            }
        });
        self.handshakes.push(Handshake {
            number,
            from,
            presented,
            peer_named,
            abort,
        });
        self.quic_handshakes
            .push(async move { (number, handshake.await.ok().flatten()) }.boxed());
    }

    /// When every pending slot of the identity check is taken, closes the
    /// oldest inbound connection that has not passed the check and comes
    /// from an address the peer did not name, so that a newcomer (which
    /// may be the peer) is not refused.
    fn make_room_for_inbound(&mut self, now: Instant, newcomer_peer_named: bool) {
        if self.identity.is_none() {
            return; // no pending slots to run out of
        }
        let directs = &self.directs;
        self.inbound
            .retain(|slot| directs.iter().any(|(id, _)| *id == slot.id));
        if self.inbound.len() < self.core.config().max_pending_inbound {
            return;
        }
        let Some(pos) = oldest_unverified_stranger(&self.inbound) else {
            return;
        };
        let evicted = self.inbound.remove(pos);
        tracing::debug!(
            id = %evicted.id,
            newcomer_peer_named,
            "pending slots full: evicting the oldest unverified stranger"
        );
        if let Some(actor) = self.actor_mut(evicted.id) {
            let _ = actor.cmds.unbounded_send(Cmd::Close);
        }
        self.forget(evicted.id);
        self.core.handle_direct_closed(now, evicted.id);
    }

    /// The certificate the verifiers accept: the one the caller
    /// authenticated, else the one the peer's Hello pinned (if it came).
    fn pin(&self) -> Option<Fingerprint> {
        self.expected_peer.or(self.core.peer_fingerprint())
    }

    fn actor_mut(&mut self, id: DirectId) -> Option<&mut DirectActor> {
        self.directs
            .iter_mut()
            .find(|(i, _)| *i == id)
            .map(|(_, a)| a)
    }

    fn forget(&mut self, id: DirectId) {
        self.directs.retain(|(i, _)| *i != id);
    }

    fn start_actor(&mut self, id: DirectId, start: Start<DirectConn<R::TcpStream>>) {
        spawn_actor(
            &mut self.directs,
            &self.actors,
            &self.events_tx,
            id,
            start,
            None,
        );
    }

    /// With pinned TLS, starts the handshake of a connection the core
    /// just took: the TLS client where the core's role is the client,
    /// pinned to the peer's certificate once its `Hello` told us which.
    fn start_handshake(&mut self, id: DirectId) {
        let Some(identity) = &self.identity else {
            return;
        };
        let Some(role) = self.core.direct_role(id) else {
            return; // already decided on
        };
        let pinned = Pinned::new(identity, self.pin(), &[tls::ALPN]);
        if let Some(actor) = self.actor_mut(id) {
            let _ = actor
                .cmds
                .unbounded_send(Cmd::Handshake(TlsSetup { role, pinned }));
        }
    }

    /// Carries out every command of the core (the one exhaustive dispatch
    /// is the core's; see [`Carrier`]).
    fn carry_out_outputs(&mut self) {
        let now = self.now();
        let Driver {
            runtime,
            core,
            start,
            tcp_local,
            quic,
            on_event,
            events_tx,
            directs,
            actors,
            relay_cmds,
            relay_reset,
            identity,
            expected_peer,
            fresh,
            birthday_tcp,
            ..
        } = self;
        let mut io = Io {
            runtime: *runtime,
            start: *start,
            tcp_local: *tcp_local,
            quic: quic.as_ref(),
            fresh,
            birthday_tcp,
            identity: identity.as_ref(),
            peer_fingerprint: expected_peer.or(core.peer_fingerprint()),
            on_event,
            events_tx,
            directs,
            actors,
            relay_cmds,
            relay_reset,
        };
        core.drain(now, &mut io);
    }

    /// Tells the relay and every direct actor how much they may read.
    fn update_wants(&mut self) {
        let relay_want = self.core.stream_bytes_wanted();
        if relay_want != self.relay_want {
            self.relay_want = relay_want;
            let _ = self.relay_cmds.unbounded_send(Cmd::Want(relay_want));
        }
        for (id, actor) in &mut self.directs {
            let want = self.core.direct_bytes_wanted(*id);
            if want != actor.want {
                actor.want = want;
                let _ = actor.cmds.unbounded_send(Cmd::Want(want));
            }
        }
    }

    fn arm_timer(&mut self) {
        match self.core.poll_timeout() {
            Some(timeout) => {
                if self.sleep.as_ref().map(|(at, _)| *at) != Some(timeout.at) {
                    // Runtime timers round up by about a millisecond; a
                    // precise deadline wakes early and yields up to it.
                    let wake_at = if timeout.is_precise() {
                        timeout
                            .at
                            .checked_sub(PRECISE_TIMER_SLACK)
                            .unwrap_or(timeout.at)
                    } else {
                        timeout.at
                    };
                    let sleep = self.runtime.sleep_until(wake_at);
                    self.sleep = Some((timeout.at, sleep));
                }
            }
            None => self.sleep = None,
        }
    }
}

/// The driver's side of the [`Carrier`] contract: the sockets, actors and
/// channels of one upgrade, borrowed from the [`Driver`] while the core
/// drains.
struct Io<'a, R: Runtime> {
    runtime: &'a R,
    start: Instant,
    tcp_local: Option<SocketAddr>,
    quic: Option<&'a QuicSocket>,
    fresh: &'a mut quic::FreshSockets,
    birthday_tcp: &'a mut BirthdayConnects<R::TcpStream>,
    identity: Option<&'a Identity>,
    peer_fingerprint: Option<Fingerprint>,
    on_event: &'a mut Option<EventCallback>,
    events_tx: &'a mpsc::UnboundedSender<(Key, ActorEvent)>,
    directs: &'a mut Vec<(DirectId, DirectActor)>,
    actors: &'a FuturesUnordered<ActorFuture<DirectConn<R::TcpStream>>>,
    relay_cmds: &'a mpsc::UnboundedSender<Cmd>,
    relay_reset: &'a mut bool,
}

impl<R: Runtime> Io<'_, R> {
    fn actor(&self, id: DirectId) -> Option<&DirectActor> {
        self.directs.iter().find(|(i, _)| *i == id).map(|(_, a)| a)
    }

    /// The client config of one QUIC dial: pinned TLS (and what it
    /// presents) when the driver authenticates, else the caller's.
    fn quic_client_config(
        &self,
        quic: &QuicSocket,
    ) -> (quinn::ClientConfig, Option<tls::Presented>) {
        match self.identity {
            Some(identity) => {
                let pinned = Pinned::new(identity, self.peer_fingerprint, &[tls::ALPN]);
                let config = quic.pinned_client(&pinned);
                (config, Some(pinned.presented))
            }
            None => (quic.client_config.clone(), None),
        }
    }
}

impl<R: Runtime> Io<'_, R> {
    /// A TCP connect of the birthday punch (see
    /// [`dcutr_core::Output::SendBirthday`]): from the TCP punch port with
    /// port reuse, or from a fresh socket at an ephemeral port of its IP;
    /// dropped at its expiry unless it completed first.
    fn connect_birthday(&mut self, transmit: dcutr_core::birthday::Transmit) {
        use dcutr_core::birthday::Local;
        let to = transmit.destination;
        // Fresh sockets need no punch port: an ephemeral port on the
        // punch socket's IP, or on any when there is no TCP listener.
        let from = match (transmit.local, self.tcp_local) {
            (Local::Punch, Some(punch)) => punch,
            (Local::Fresh(_), Some(punch)) => SocketAddr::new(punch.ip(), 0),
            (Local::Fresh(_), None) if to.is_ipv4() => {
                SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
            }
            (Local::Fresh(_), None) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
            (Local::Punch, None) => {
                tracing::debug!(to = %to, "birthday probe not made: no TCP punch socket");
                return;
            }
        };
        let fds = self
            .birthday_tcp
            .fds
            .get_or_insert_with(|| fdlimit::ensure(fdlimit::tcp_birthday_fd_budget()).map(|_| ()));
        if let Err(error) = fds {
            tracing::warn!(%error, "birthday punch over TCP skipped its connects");
            return;
        }
        let local = transmit.local;
        let connecting = self.runtime.connect_from(from, to);
        let expiry = transmit
            .expires
            .map(|at| self.runtime.sleep_until(at))
            .unwrap_or_else(|| std::future::pending().boxed());
        self.birthday_tcp.pending.push(
            async move {
                match futures_util::future::select(connecting, expiry).await {
                    futures_util::future::Either::Left((Ok(stream), _)) => {
                        Some((local, to, stream))
                    }
                    _ => None,
                }
            }
            .boxed(),
        );
    }
}

impl<R: Runtime> Carrier for Io<'_, R> {
    fn open_stream(&mut self) -> Result<(), StreamUnavailable> {
        // One shared stream carries every attempt: there is no other.
        Err(StreamUnavailable)
    }

    fn write_stream(&mut self, data: Bytes) {
        let _ = self.relay_cmds.unbounded_send(Cmd::Write(data));
    }

    fn finish_stream(&mut self) {
        // The shared stream outlives the exchange: it is handed back.
    }

    fn reset_stream(&mut self) {
        *self.relay_reset = true;
        let _ = self.relay_cmds.unbounded_send(Cmd::Close);
    }

    fn prime(&mut self, to: dcutr_core::Candidate, ttl: u8) {
        match to.transport {
            Transport::Quic => match self.quic {
                Some(quic) => quic.prime(to.addr, ttl),
                None => tracing::debug!(%to, "no priming: no QUIC socket"),
            },
            // Where the TTL does reach the peer (same LAN, loopback) the
            // priming SYN can complete a handshake that its abortive close
            // then resets. With pinned TLS the peer's identity check drops
            // that connection like a stranger's; a caller who
            // authenticates itself gets plain TCP, where the peer would
            // take the first connection, this one: no TCP priming then.
            Transport::Tcp if self.identity.is_none() => {
                tracing::debug!(%to, "no TCP priming: the caller authenticates the connection");
            }
            Transport::Tcp => match self.tcp_local {
                Some(local) => {
                    let sent = net::prime_tcp(local, to.addr, ttl);
                    tracing::debug!(%to, ttl, ?sent, "priming SYN");
                }
                None => tracing::debug!(%to, "no priming: no TCP punch port"),
            },
        }
    }

    fn dial(&mut self, dial: dcutr_core::Dial) -> Result<(), DialError> {
        let mut presented = None;
        let start = match dial.to.transport {
            Transport::Tcp => {
                let local = self.tcp_local.ok_or(DialError::Unreachable)?;
                let connecting = self.runtime.connect_from(local, dial.to.addr);
                Start::Dial(
                    async move {
                        connecting
                            .await
                            .map(|s| DirectConn::Tcp(Stream(s)))
                            .map_err(|e| DialError::from(e.kind()))
                    }
                    .boxed(),
                )
            }
            Transport::Quic => {
                let quic = self.quic.ok_or(DialError::Unreachable)?;
                let (config, shown) = self.quic_client_config(quic);
                presented = shown;
                let connecting = quic
                    .endpoint
                    .connect_with(config, dial.to.addr, SERVER_NAME);
                Start::Dial(
                    async move {
                        let conn = connecting
                            .map_err(|_| DialError::Unreachable)?
                            .await
                            .map_err(quic_dial_error)?;
                        Ok(DirectConn::Quic(QuicDirect::new(conn)))
                    }
                    .boxed(),
                )
            }
        };
        tracing::debug!(id = %dial.id, to = %dial.to, role = %dial.role, "dial");
        spawn_actor(
            self.directs,
            self.actors,
            self.events_tx,
            dial.id,
            start,
            presented,
        );
        Ok(())
    }

    fn send_birthday(&mut self, transmit: dcutr_core::birthday::Transmit) {
        // Every birthday packet, a TCP connect's SYN as a datagram,
        // counts against the process's budget first.
        let to = transmit.destination;
        if let Err(refusal) = admission::admit_birthday(self.runtime.now(), to.ip()) {
            tracing::debug!(%to, %refusal, "birthday packet not sent");
            return;
        }
        if transmit.transport == Transport::Tcp {
            self.connect_birthday(transmit);
            return;
        }
        match (transmit.local, self.quic) {
            // The easy side's probes leave from the QUIC punch socket,
            // whose mapping the peer observed; its answers come back
            // there (`Wake::Birthday`).
            (dcutr_core::birthday::Local::Punch, Some(quic)) => {
                quic.spray(&transmit.payload, transmit.destination);
            }
            // The hard side's fresh socket `i`: opened on its first
            // (priming) datagram, read into `Wake::Fresh`.
            (dcutr_core::birthday::Local::Fresh(i), Some(quic)) => {
                self.fresh
                    .send(quic, i, transmit.destination, &transmit.payload);
            }
            (local, None) => {
                tracing::debug!(%local, to = %transmit.destination, "birthday datagram not sent: no QUIC socket");
            }
        }
    }

    fn close_fresh(&mut self, keep: Option<u16>) {
        self.fresh.close_all_but(keep);
        // Over TCP the core keeps none: the connect that met was handed
        // over already. Dropping the futures closes their sockets.
        if keep.is_none() {
            *self.birthday_tcp = BirthdayConnects::default();
        }
    }

    fn dial_fresh(&mut self, socket: u16, dial: dcutr_core::Dial) -> Result<(), DialError> {
        let quic = self.quic.ok_or(DialError::Unreachable)?;
        let fresh = self.fresh.take(socket).ok_or(DialError::Unreachable)?;
        let endpoint = quic
            .fresh_endpoint(fresh)
            .map_err(|e| DialError::Io(e.kind()))?;
        let (config, presented) = self.quic_client_config(quic);
        let connecting = endpoint.connect_with(config, dial.to.addr, SERVER_NAME);
        let start = Start::Dial(
            async move {
                let conn = connecting
                    .map_err(|_| DialError::Unreachable)?
                    .await
                    .map_err(quic_dial_error)?;
                // The connection keeps the endpoint's driver running.
                drop(endpoint);
                Ok(DirectConn::Quic(QuicDirect::new(conn)))
            }
            .boxed(),
        );
        tracing::debug!(id = %dial.id, to = %dial.to, socket, "dial from the birthday socket that met");
        spawn_actor(
            self.directs,
            self.actors,
            self.events_tx,
            dial.id,
            start,
            presented,
        );
        Ok(())
    }

    fn send_datagram(&mut self, to: SocketAddr, payload: dcutr_core::SprayPayload) {
        if let Some(quic) = self.quic {
            quic.spray(&payload.bytes(), to);
        }
    }

    fn write_direct(&mut self, id: DirectId, data: Bytes) {
        if let Some(actor) = self.actor(id) {
            let _ = actor.cmds.unbounded_send(Cmd::Write(data));
        }
    }

    fn close_direct(&mut self, id: DirectId) {
        if let Some(actor) = self.actor(id) {
            let _ = actor.cmds.unbounded_send(Cmd::Close);
        }
        self.directs.retain(|(i, _)| *i != id);
    }

    fn close_relay(&mut self) {
        let _ = self.relay_cmds.unbounded_send(Cmd::Close);
    }

    fn event(&mut self, event: Event, _timeline: &dcutr_core::record::Timeline) {
        tracing::debug!(?event, "dcutr event");
        let elapsed = self.runtime.now().saturating_duration_since(self.start);
        if let Some(callback) = self.on_event.as_mut() {
            callback(&event, elapsed);
        }
    }
}

fn quic_dial_error(e: quinn::ConnectionError) -> DialError {
    match e {
        quinn::ConnectionError::TimedOut => DialError::TimedOut,
        quinn::ConnectionError::ConnectionClosed(_)
        | quinn::ConnectionError::ApplicationClosed(_)
        | quinn::ConnectionError::Reset => DialError::Refused,
        _ => DialError::Handshake,
    }
}

fn spawn_actor<T>(
    directs: &mut Vec<(DirectId, DirectActor)>,
    actors: &FuturesUnordered<ActorFuture<DirectConn<T>>>,
    events_tx: &mpsc::UnboundedSender<(Key, ActorEvent)>,
    id: DirectId,
    start: Start<DirectConn<T>>,
    presented: Option<tls::Presented>,
) where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    let (cmds, rx) = mpsc::unbounded();
    directs.push((
        id,
        DirectActor {
            cmds,
            want: 0,
            presented,
        },
    ));
    actors.push(actor::run(Key::Direct(id), start, rx, events_tx.clone()).boxed());
}

/// How early a precise timer (the Sync delay) wakes before yielding up to
/// its deadline: more than the runtime timers' rounding (1 ms for tokio and
/// async-io), little enough to cost nothing.
const PRECISE_TIMER_SLACK: Duration = Duration::from_millis(2);

/// Pending once (after asking to be polled again), then ready.
fn yield_once() -> impl std::future::Future<Output = ()> + Send {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
}

fn accept_next(endpoint: &quinn::Endpoint) -> BoxFuture<'static, Option<quinn::Incoming>> {
    let endpoint = endpoint.clone();
    async move { endpoint.accept().await }.boxed()
}

/// The oldest handshake from an address the peer did not name.
fn oldest_stranger(handshakes: &[Handshake]) -> Option<usize> {
    handshakes.iter().position(|h| !h.peer_named)
}

/// The oldest inbound connection that has not passed the check and comes
/// from an address the peer did not name.
fn oldest_unverified_stranger(inbound: &[InboundSlot]) -> Option<usize> {
    inbound
        .iter()
        .position(|s| !s.peer_named && !s.authenticated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(number: u64, peer_named: bool) -> Handshake {
        Handshake {
            number,
            from: "127.0.0.1:1".parse().unwrap(),
            presented: None,
            peer_named,
            abort: AbortHandle::new_pair().0,
        }
    }

    #[test]
    fn the_oldest_strangers_handshake_is_evicted_never_the_peers() {
        let list = [handshake(0, true), handshake(1, false), handshake(2, false)];
        assert_eq!(oldest_stranger(&list), Some(1));
        let peers_only = [handshake(0, true), handshake(1, true)];
        assert_eq!(oldest_stranger(&peers_only), None);
    }

    #[test]
    fn the_oldest_unverified_stranger_is_evicted_never_the_peer_or_a_verified_one() {
        let slot = |id, peer_named, authenticated| InboundSlot {
            id: DirectId(id),
            peer_named,
            authenticated,
        };
        let list = [
            slot(0, true, false),
            slot(1, false, true),
            slot(2, false, false),
            slot(3, false, false),
        ];
        assert_eq!(oldest_unverified_stranger(&list), Some(2));
        let none = [slot(0, true, false), slot(1, false, true)];
        assert_eq!(oldest_unverified_stranger(&none), None);
    }
}
