//! The QUIC side: one endpoint whose UDP socket also sends the spray.
//!
//! The peer was told the address its relay (or identify) observed for our
//! QUIC socket: the NAT mapping of that socket. The spray must open that
//! same mapping, so it leaves from the endpoint's own socket: we keep a
//! clone of the file descriptor and send the datagrams through it.
//!
//! ## Limits before and after the identity check
//! Anyone who knows the punch port can open QUIC connections to it, and
//! until the identity check passes every one of them may be a stranger.
//! The check reads one bidirectional stream, so that is all a punch
//! connection gets at first: [`PUNCH_BIDI_STREAMS`] stream opened by the
//! other side, no unidirectional stream, [`PUNCH_RECEIVE_WINDOW`] bytes
//! of receive window for the whole connection, and no datagrams unless
//! the application asks for them. A stranger holding the check stream
//! empty can thus make us buffer no more than the window. When the
//! connection wins, the driver raises the stream counts and the window
//! to the application's [`QuicLimits`] before handing it over.
//!
//! quinn fixes some parameters at the handshake (the per-stream window,
//! datagram support, the idle timeout): those are the application's from
//! the start, and the connection-wide window is what bounds them until
//! the check passes.
//!
//! ## Peer-reflexive sources
//! A symmetric NAT in front of the peer sends its spray from a fresh port
//! that the peer could not advertise. quinn drops spray datagrams (they
//! are not QUIC), so the endpoint's socket is wrapped (`PunchSocket`): it
//! hands every datagram to quinn unchanged and notes the source of each
//! one that carries the spray marker
//! ([`dcutr_core::SprayPayload::is_spray`]), at most
//! [`PUNCH_SOURCES_QUEUED`] at a time, for the driver to pass to the core
//! ([`dcutr_core::Upgrade::handle_peer_reflexive`]), which decides whether
//! to dial it.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use dcutr_core::SprayPayload;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

pub use crate::tls::SERVER_NAME;
use crate::tls::{Identity, Pinned};

/// Streams the other side may open on a punch connection before the
/// identity check passes: the one bidirectional stream the check runs on.
pub const PUNCH_BIDI_STREAMS: u32 = 1;

/// Unidirectional streams the other side may open before the check: none,
/// the check does not use them.
pub const PUNCH_UNI_STREAMS: u32 = 0;

/// Bytes the other side may have in flight to us on a punch connection,
/// all streams together, before the check passes. Default 16 KiB: the
/// check itself is one select byte inside TLS; the rest is room for a peer that writes its first application bytes a moment
/// early. A stranger can make us buffer at most this much per connection,
/// and [`dcutr_core::Config::max_pending_inbound`] connections are held.
pub const PUNCH_RECEIVE_WINDOW: u64 = 16 << 10;

/// How long an inbound QUIC handshake on the punch port may take. Default
/// 5 s, the length of a punch window ([`dcutr_core::Config::direct_timeout`]):
/// a handshake that works takes one or two round trips, plus retransmits
/// on a lossy path. quinn's own limit, the 30 s idle timeout, would let a
/// half-open Initial hold a slot six times longer.
pub const PUNCH_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Inbound handshakes in flight from which a new one must first prove its
/// source address with a Retry (one extra round trip). Default 2: the
/// peer's one connection (and one spare) never pays for it, and a flood of
/// Initials from forged sources takes no more than these slots.
pub const PUNCH_RETRY_ABOVE_HANDSHAKES: usize = 2;

/// Connection attempts quinn may queue on the punch port before the driver
/// decides on them. Default 32: the driver decides on each at once; the
/// queue only grows while no upgrade runs, and then holds no more than
/// this.
pub const PUNCH_MAX_INCOMING: usize = 32;

/// Bytes quinn may buffer for one queued connection attempt, beyond its
/// first datagram (early data). Default 4 KiB: punch connections send no
/// early data.
pub const PUNCH_INCOMING_BUFFER: u64 = 4 << 10;

/// Bytes quinn may buffer for all queued connection attempts together.
/// Default 64 KiB.
pub const PUNCH_INCOMING_BUFFER_TOTAL: u64 = 64 << 10;

/// Sources of marked spray datagrams the punch socket holds for the
/// driver; more are dropped until it takes some. Default 16: a real peer
/// sprays from one or two ports, and the core dials at most
/// [`MAX_PEER_REFLEXIVE_DIALS`](dcutr_core::settings::MAX_PEER_REFLEXIVE_DIALS)
/// of them per attempt, so a flood of marked datagrams costs 16 addresses
/// of memory and no dial the core did not allow.
pub const PUNCH_SOURCES_QUEUED: usize = 16;

/// Birthday-punch datagrams
/// ([`is_birthday_datagram`](dcutr_core::birthday::is_birthday_datagram))
/// the punch socket holds for the driver; more are dropped until it takes
/// some. Default 64: the easy side waits for at most
/// [`ANSWER_COPIES`](dcutr_core::birthday::ANSWER_COPIES) answers, and a
/// hard side's priming datagrams that get through (up to its
/// [`DEFAULT_SOCKETS`](dcutr_core::birthday::DEFAULT_SOCKETS)) each only
/// add a probe the core budgets anyway, so dropping some loses little.
/// 64 × 16 bytes plus addresses is all a flood can hold.
pub const BIRTHDAY_DATAGRAMS_QUEUED: usize = 64;

// quinn answers an unknown short-header packet with a stateless reset only
// when it can pad one at least 1 byte shorter than the packet: its 16-byte
// reset token plus at least 5 bytes of padding. A birthday datagram (whose
// first byte has the QUIC fixed bit set) leaves no room, so quinn drops it
// silently and the core alone handles it.
const _: () = assert!(dcutr_core::birthday::DATAGRAM_LEN <= 16 + 5);

/// One birthday datagram taken from the punch socket: its source and bytes.
pub(crate) type BirthdayDatagram = (SocketAddr, [u8; dcutr_core::birthday::DATAGRAM_LEN]);

/// What a QUIC connection allows once it won the upgrade, or, for what
/// quinn fixes at the handshake, from the start.
///
/// The defaults are quinn's, except that datagrams are off: a stranger
/// could fill a datagram buffer before the check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuicLimits {
    /// Bidirectional streams the peer may open at once, after the check.
    /// Default 100.
    pub bidi_streams: u32,
    /// Unidirectional streams the peer may open at once, after the check.
    /// Default 100.
    pub uni_streams: u32,
    /// Bytes the peer may have in flight to us, all streams together,
    /// after the check. Default: no limit but the per-stream window
    /// (quinn's default).
    pub receive_window: u64,
    /// Bytes the peer may have in flight on one stream. Fixed at the
    /// handshake; until the check, [`PUNCH_RECEIVE_WINDOW`] bounds it.
    /// Default 1.25 MB.
    pub stream_receive_window: u64,
    /// Bytes of incoming datagrams buffered, or `None` for no datagrams.
    /// Fixed at the handshake, so a stranger may fill it before the check:
    /// enable it only if the application uses datagrams. Default `None`.
    pub datagram_receive_buffer: Option<usize>,
    /// Idle timeout of the connection. Fixed at the handshake; the driver
    /// ends punch connections that stall sooner
    /// ([`PUNCH_HANDSHAKE_TIMEOUT`], then
    /// [`dcutr_core::Config::confirm_timeout`]). Default 30 s.
    pub idle_timeout: Duration,
}

impl Default for QuicLimits {
    fn default() -> Self {
        QuicLimits {
            bidi_streams: 100,
            uni_streams: 100,
            receive_window: quinn::VarInt::MAX.into_inner(),
            stream_receive_window: 1_250_000,
            datagram_receive_buffer: None,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// A QUIC endpoint for hole punching, with the clone of its socket that
/// sprays.
#[derive(Debug)]
pub struct QuicSocket {
    /// The endpoint: dials (client side) and accepts (server side).
    pub endpoint: quinn::Endpoint,
    /// Used for our dials when the caller authenticates the peer itself;
    /// [`QuicSocket::with_tls`] gave it the punch transport
    /// ([`punch_transport`]). With the pinned TLS of the driver, every
    /// upgrade dials with configs of its own.
    pub client_config: quinn::ClientConfig,
    server_config: quinn::ServerConfig,
    limits: QuicLimits,
    spray: UdpSocket,
    sources: Arc<PunchSources>,
    /// The runtime, for the birthday punch's fresh sockets and endpoint.
    runtime: Arc<dyn quinn::Runtime>,
}

impl QuicSocket {
    /// Builds an endpoint on `socket`, on `runtime`, for upgrades with the
    /// driver's pinned mutual TLS (the default): each upgrade brings its
    /// own certificate and accepts exactly the peer's, so the endpoint
    /// needs none. Outside an upgrade its server config refuses every
    /// handshake, and it dials nothing.
    ///
    /// # Errors
    /// When the socket cannot be cloned, no key can be generated, or the
    /// endpoint cannot start.
    pub fn new(socket: UdpSocket, runtime: Arc<dyn quinn::Runtime>) -> io::Result<Self> {
        let identity = Identity::generate().map_err(|e| io::Error::other(e.to_string()))?;
        // A pin no certificate has: outside an upgrade, nobody gets in.
        let refuse_all = Pinned::new(
            &identity,
            Some([0; dcutr_core::settings::FINGERPRINT_LEN]),
            &[],
        );
        let server = quinn::ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from((*refuse_all.server).clone())
                .expect("TLS 1.3 with an initial suite"),
        ));
        let client = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from((*refuse_all.client).clone())
                .expect("TLS 1.3 with an initial suite"),
        ));
        Self::with_tls(socket, server, client, runtime)
    }

    /// Builds an endpoint on `socket` that serves with `server_config` and
    /// dials with `client_config`, on `runtime`: for callers whose own TLS
    /// authenticates the peer
    /// ([`Options::caller_authenticates`](crate::Options::caller_authenticates)).
    /// With the driver's pinned TLS these configs are not used for punch
    /// connections.
    ///
    /// Both configs get the punch transport ([`punch_transport`] of the
    /// default [`QuicLimits`]; change them with [`QuicSocket::limits`]),
    /// replacing any transport config they carried, and the server config
    /// gets small queues for connection attempts
    /// ([`PUNCH_MAX_INCOMING`]).
    ///
    /// # Errors
    /// When the socket cannot be cloned or the endpoint cannot start.
    pub fn with_tls(
        socket: UdpSocket,
        mut server_config: quinn::ServerConfig,
        mut client_config: quinn::ClientConfig,
        runtime: Arc<dyn quinn::Runtime>,
    ) -> io::Result<Self> {
        let limits = QuicLimits::default();
        let spray = socket.try_clone()?;
        spray.set_nonblocking(true)?;
        harden(&mut server_config, &mut client_config, &limits);
        let sources = Arc::new(PunchSources::default());
        let wrapped = Arc::new(PunchSocket {
            inner: runtime.wrap_udp_socket(socket)?,
            sources: sources.clone(),
        });
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            Some(server_config.clone()),
            wrapped,
            runtime.clone(),
        )?;
        Ok(QuicSocket {
            endpoint,
            client_config,
            server_config,
            limits,
            spray,
            sources,
            runtime,
        })
    }

    /// Sets what a connection allows once it won (and what quinn fixes at
    /// the handshake). Connections already open keep their limits.
    #[must_use]
    pub fn limits(mut self, limits: QuicLimits) -> Self {
        self.limits = limits;
        harden(&mut self.server_config, &mut self.client_config, &limits);
        self.endpoint
            .set_server_config(Some(self.server_config.clone()));
        self
    }

    /// The client config of one pinned dial: `pinned`'s TLS and the punch
    /// transport.
    pub(crate) fn pinned_client(&self, pinned: &Pinned) -> quinn::ClientConfig {
        let mut client = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from((*pinned.client).clone())
                .expect("TLS 1.3 with an initial suite"),
        ));
        client.transport_config(Arc::new(punch_transport(&self.limits)));
        client
    }

    /// The server config of one pinned inbound handshake: `pinned`'s TLS
    /// (which requires the client's certificate) and the punch transport.
    pub(crate) fn pinned_server(&self, pinned: &Pinned) -> Arc<quinn::ServerConfig> {
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from((*pinned.server).clone())
                .expect("TLS 1.3 with an initial suite"),
        ));
        let mut client = self.client_config.clone();
        harden(&mut server, &mut client, &self.limits);
        Arc::new(server)
    }

    /// Raises a connection that won from the punch limits to the
    /// application's.
    pub(crate) fn open_up(&self, conn: &quinn::Connection) {
        let l = &self.limits;
        conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(l.bidi_streams));
        conn.set_max_concurrent_uni_streams(quinn::VarInt::from_u32(l.uni_streams));
        conn.set_receive_window(varint(l.receive_window));
    }

    /// The local address of the endpoint.
    ///
    /// # Errors
    /// When the socket has no address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The source of the next marked spray datagram that arrived, or
    /// `Pending` (and a wake-up when one arrives).
    pub(crate) fn poll_punch_source(&self, cx: &mut Context<'_>) -> Poll<SocketAddr> {
        self.sources.poll_next(cx)
    }

    /// The next birthday datagram that arrived at the punch socket, or
    /// `Pending` (and a wake-up when one arrives).
    pub(crate) fn poll_birthday(&self, cx: &mut Context<'_>) -> Poll<BirthdayDatagram> {
        self.sources.poll_birthday(cx)
    }

    /// A fresh UDP socket on the punch socket's IP, at an ephemeral port,
    /// on the endpoint's runtime.
    fn fresh_socket(&self) -> io::Result<(UdpSocket, Arc<dyn AsyncUdpSocket>)> {
        let ip = self.endpoint.local_addr()?.ip();
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        let send = socket.try_clone()?;
        send.set_nonblocking(true)?;
        Ok((send, self.runtime.wrap_udp_socket(socket)?))
    }

    /// A client-only endpoint on fresh socket `socket`: the birthday
    /// punch's hard side dials from the socket that met.
    ///
    /// # Errors
    /// When the endpoint cannot start.
    pub(crate) fn fresh_endpoint(
        &self,
        socket: Arc<dyn AsyncUdpSocket>,
    ) -> io::Result<quinn::Endpoint> {
        quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            socket,
            self.runtime.clone(),
        )
    }

    /// Forgets the sources noted so far: they arrived before this
    /// upgrade started and belong to no punch of it.
    pub(crate) fn clear_punch_sources(&self) {
        self.sources.clear();
    }

    /// Sends one spray datagram, without waiting: a full send buffer drops
    /// it, which a spray tolerates.
    pub(crate) fn spray(&self, payload: &[u8], to: SocketAddr) {
        match self.spray.send_to(payload, to) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tracing::debug!(%to, "spray datagram dropped: socket buffer full");
            }
            Err(e) => tracing::debug!(%to, error = %e, "spray datagram failed"),
        }
    }

    /// Sends one priming datagram ([`dcutr_core::Output::Prime`]) from
    /// the punch socket with IP TTL (IPv6 hop limit) `ttl` on this packet
    /// alone, in an `IP_TTL` / `IPV6_HOPLIMIT` control message: the
    /// socket's own TTL, which quinn's packets use, is never touched, so
    /// nothing races quinn's sends. The payload is a spray datagram's
    /// ([`SPRAY_MARKER`](dcutr_core::settings::SPRAY_MARKER), then
    /// zeros): should it reach the peer after all, the peer's endpoint
    /// drops it like any spray datagram, and its peer-reflexive logic sees
    /// an address we advertised, which it already punches (refused as
    /// already known). Best effort: a failure is only logged.
    pub(crate) fn prime(&self, to: SocketAddr, ttl: u8) {
        let mut payload = [0u8; dcutr_core::settings::SPRAY_PACKET_LEN];
        payload[..dcutr_core::settings::SPRAY_MARKER.len()]
            .copy_from_slice(&dcutr_core::settings::SPRAY_MARKER);
        let sent = crate::net::send_with_ttl(&self.spray, &payload, to, ttl);
        tracing::debug!(%to, ttl, ?sent, "priming datagram");
    }
}

/// The hard side's fresh sockets of one birthday punch
/// ([`dcutr_core::Output::SendBirthday`]): UDP sockets on the punch
/// socket's IP at ephemeral ports, at most
/// [`MAX_SOCKETS`](dcutr_core::birthday::MAX_SOCKETS) (the core's bound),
/// closed on [`dcutr_core::Output::CloseFresh`] or with the upgrade.
#[derive(Default)]
pub(crate) struct FreshSockets {
    /// Socket number, a clone that sends at once (as the spray does: the
    /// runtime's socket refuses a send before it polled writable), and
    /// the runtime's socket that receives.
    open: Vec<(u16, UdpSocket, Arc<dyn AsyncUdpSocket>)>,
    /// Where the next receive poll starts, so that no socket starves.
    next: usize,
}

impl fmt::Debug for FreshSockets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FreshSockets")
            .field("open", &self.open.len())
            .finish_non_exhaustive()
    }
}

impl FreshSockets {
    /// Sends `payload` to `to` from fresh socket `i`, opening it first
    /// when it is new. A send that fails is dropped: the punch tolerates
    /// lost datagrams.
    pub(crate) fn send(&mut self, quic: &QuicSocket, i: u16, to: SocketAddr, payload: &[u8]) {
        if !self.open.iter().any(|(n, _, _)| *n == i) {
            if self.open.len() >= usize::from(dcutr_core::birthday::MAX_SOCKETS) {
                return;
            }
            match quic.fresh_socket() {
                Ok((send, recv)) => self.open.push((i, send, recv)),
                Err(error) => {
                    tracing::debug!(i, %error, "fresh socket not opened");
                    return;
                }
            }
        }
        let Some((_, socket, _)) = self.open.iter().find(|(n, _, _)| *n == i) else {
            return;
        };
        if let Err(error) = socket.send_to(payload, to) {
            tracing::debug!(i, %to, %error, "birthday datagram from a fresh socket dropped");
        }
    }

    /// Closes every fresh socket but `keep`.
    pub(crate) fn close_all_but(&mut self, keep: Option<u16>) {
        self.open.retain(|(n, _, _)| Some(*n) == keep);
    }

    /// Takes fresh socket `i` out (for the dial from it).
    pub(crate) fn take(&mut self, i: u16) -> Option<Arc<dyn AsyncUdpSocket>> {
        let pos = self.open.iter().position(|(n, _, _)| *n == i)?;
        Some(self.open.swap_remove(pos).2)
    }

    /// The next birthday datagram that arrived on a fresh socket; other
    /// datagrams are read and dropped (at most one per socket per call).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<(u16, BirthdayDatagram)> {
        let count = self.open.len();
        for k in 0..count {
            let idx = (self.next + k) % count;
            let (i, _, socket) = &self.open[idx];
            let mut buf = [0u8; 64];
            let mut meta = [RecvMeta::default()];
            let mut bufs = [IoSliceMut::new(&mut buf)];
            if let Poll::Ready(Ok(n)) = socket.poll_recv(cx, &mut bufs, &mut meta)
                && n > 0
            {
                let m = &meta[0];
                let len = m.len.min(buf.len());
                self.next = (idx + 1) % count;
                if let Ok(bytes) = <[u8; dcutr_core::birthday::DATAGRAM_LEN]>::try_from(&buf[..len])
                    && dcutr_core::birthday::is_birthday_datagram(&bytes)
                {
                    return Poll::Ready((*i, (m.addr, bytes)));
                }
                // Not ours: dropped; wake again to read on.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        Poll::Pending
    }
}

/// The sources of marked spray datagrams, between the socket and the
/// driver: a bounded queue and the waker of the task that waits on it.
#[derive(Debug, Default)]
struct PunchSources {
    inner: Mutex<SourcesInner>,
}

#[derive(Debug, Default)]
struct SourcesInner {
    queue: VecDeque<SocketAddr>,
    /// Birthday datagrams, at most [`BIRTHDAY_DATAGRAMS_QUEUED`].
    birthday: VecDeque<BirthdayDatagram>,
    /// Marked datagrams whose source did not fit in the queue.
    dropped: u64,
    waker: Option<Waker>,
}

impl PunchSources {
    fn lock(&self) -> std::sync::MutexGuard<'_, SourcesInner> {
        // Nothing panics while holding the lock; recover anyway.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, from: SocketAddr) {
        let mut inner = self.lock();
        if inner.queue.len() >= PUNCH_SOURCES_QUEUED {
            inner.dropped = inner.dropped.saturating_add(1);
            tracing::debug!(%from, dropped = inner.dropped, "punch source queue full: dropped");
            return;
        }
        tracing::debug!(%from, "marked punch datagram");
        inner.queue.push_back(from);
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<SocketAddr> {
        let mut inner = self.lock();
        match inner.queue.pop_front() {
            Some(from) => Poll::Ready(from),
            None => {
                inner.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn push_birthday(&self, from: SocketAddr, datagram: &[u8]) {
        let Ok(bytes) = <[u8; dcutr_core::birthday::DATAGRAM_LEN]>::try_from(datagram) else {
            return;
        };
        let mut inner = self.lock();
        if inner.birthday.len() >= BIRTHDAY_DATAGRAMS_QUEUED {
            inner.dropped = inner.dropped.saturating_add(1);
            tracing::debug!(%from, "birthday datagram queue full: dropped");
            return;
        }
        inner.birthday.push_back((from, bytes));
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
    }

    fn poll_birthday(&self, cx: &mut Context<'_>) -> Poll<BirthdayDatagram> {
        let mut inner = self.lock();
        match inner.birthday.pop_front() {
            Some(d) => Poll::Ready(d),
            None => {
                inner.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn clear(&self) {
        let mut inner = self.lock();
        inner.queue.clear();
        inner.birthday.clear();
    }
}

/// The QUIC endpoint's socket: everything goes to and from quinn
/// unchanged, and the sources of received spray datagrams
/// ([`SprayPayload::is_spray`]) are noted for the driver.
struct PunchSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    sources: Arc<PunchSources>,
}

impl fmt::Debug for PunchSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PunchSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for PunchSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let received = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(count)) = &received {
            for (buf, m) in bufs.iter().zip(meta.iter()).take(*count) {
                if m.stride == 0 {
                    continue;
                }
                let len = m.len.min(buf.len());
                // With GRO one buffer holds several datagrams, `stride`
                // bytes apart.
                if buf[..len].chunks(m.stride).any(SprayPayload::is_spray) {
                    self.sources.push(m.addr);
                }
                // Birthday datagrams are 16 bytes: too short for quinn to
                // answer (no stateless reset), so it drops them; the core
                // gets a copy.
                for d in buf[..len]
                    .chunks(m.stride)
                    .filter(|d| dcutr_core::birthday::is_birthday_datagram(d))
                {
                    self.sources.push_birthday(m.addr, d);
                }
            }
        }
        received
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// **Insecure:** server and client configs with a fresh self-signed
/// certificate whose client accepts **any** server certificate, for tests
/// and demos of [`QuicSocket::with_tls`] where something else
/// authenticates the peer.
///
/// The connection is encrypted to whoever answered, which may be anyone at
/// the address dialled: a man in the middle goes unnoticed. The driver's
/// default, pinned mutual TLS ([`QuicSocket::new`]), needs no configs and
/// authenticates the peer; use this only when your own handshake on top
/// does.
///
/// # Panics
/// Only if rcgen or rustls reject their own freshly generated key, which
/// does not happen with the ring provider.
#[must_use]
pub fn insecure_self_signed_configs() -> (quinn::ServerConfig, quinn::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
        .expect("rcgen signs a fresh key");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("a fresh self-signed certificate is valid");
    let server = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(server_tls).expect("TLS 1.3 with an initial suite"),
    ));
    let client_tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    let mut client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(client_tls).expect("TLS 1.3 with an initial suite"),
    ));
    client.transport_config(Arc::new(hole_punch_transport()));
    (server, client)
}

/// The initial RTT estimate of a hole-punching QUIC client.
///
/// A client's first Initial often reaches the peer's NAT a moment before
/// the peer's spray has opened it (the two sides' clocks agree only to
/// within the relay's jitter), and is dropped; the client re-sends it after
/// a probe timeout of about three initial RTTs. quinn's default estimate of
/// 333 ms makes that a one-second stall; 33 ms makes it about 0.1 s, at the
/// cost of a spurious re-send or two on slower paths until the first
/// acknowledgement sets the real RTT.
pub const HOLE_PUNCH_INITIAL_RTT: std::time::Duration = std::time::Duration::from_millis(33);

/// Most datagrams one punch QUIC dial sends to an address that never
/// answers, within `lifetime` (the attempt's
/// [`direct_timeout`](dcutr_core::Config::direct_timeout), after which the
/// driver drops the dial): the first Initial; two probe datagrams per probe
/// timeout, which starts at three [`HOLE_PUNCH_INITIAL_RTT`]s (quinn's
/// smoothed RTT plus four times half of it, with no acknowledgement yet)
/// and doubles each time; the close the endpoint may send when the dial is
/// dropped; and [`PROBE_SLACK_DATAGRAMS`] for timers that fire a little
/// early. For the default 5 s: 1 + 2 × 5 + 1 + 2 = 14 (the lab measures
/// 12). This is what a hostile peer can make one QUIC dial cost a victim.
#[must_use]
pub fn max_datagrams_per_quic_dial(lifetime: std::time::Duration) -> u64 {
    let mut probes = 0;
    let mut timeout = 3 * HOLE_PUNCH_INITIAL_RTT;
    let mut at = timeout;
    // The probe timeout doubles, so this runs about log2(lifetime / 99 ms)
    // times: 16 for the one-hour ceiling on configured durations.
    while at <= lifetime {
        probes += 1;
        timeout *= 2;
        at += timeout;
    }
    1 + 2 * probes + 1 + PROBE_SLACK_DATAGRAMS
}

/// The slack in [`max_datagrams_per_quic_dial`]: one probe's two datagrams,
/// for a probe timer that fires a little before its nominal time.
pub const PROBE_SLACK_DATAGRAMS: u64 = 2;

/// The punch transport of the default [`QuicLimits`]; see
/// [`punch_transport`].
#[must_use]
pub fn hole_punch_transport() -> quinn::TransportConfig {
    punch_transport(&QuicLimits::default())
}

/// The transport of a punch connection, dialled or accepted, until it
/// wins: [`HOLE_PUNCH_INITIAL_RTT`], the stream counts and the window the
/// identity check needs ([`PUNCH_BIDI_STREAMS`], [`PUNCH_UNI_STREAMS`],
/// [`PUNCH_RECEIVE_WINDOW`]), and what quinn fixes at the handshake from
/// `limits`. [`QuicSocket::new`] installs it on both of its configs.
#[must_use]
pub fn punch_transport(limits: &QuicLimits) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .initial_rtt(HOLE_PUNCH_INITIAL_RTT)
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(PUNCH_BIDI_STREAMS))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(PUNCH_UNI_STREAMS))
        .receive_window(varint(PUNCH_RECEIVE_WINDOW))
        .stream_receive_window(varint(limits.stream_receive_window))
        .datagram_receive_buffer_size(limits.datagram_receive_buffer)
        .max_idle_timeout(
            quinn::IdleTimeout::try_from(limits.idle_timeout)
                .ok()
                .or(Some(quinn::IdleTimeout::from(quinn::VarInt::MAX))),
        );
    transport
}

/// Installs the punch transport and the small queues of connection
/// attempts.
fn harden(server: &mut quinn::ServerConfig, client: &mut quinn::ClientConfig, limits: &QuicLimits) {
    let transport = Arc::new(punch_transport(limits));
    server
        .transport_config(transport.clone())
        .max_incoming(PUNCH_MAX_INCOMING)
        .incoming_buffer_size(PUNCH_INCOMING_BUFFER)
        .incoming_buffer_size_total(PUNCH_INCOMING_BUFFER_TOTAL);
    client.transport_config(transport);
}

/// `value` as a QUIC integer, saturating.
fn varint(value: u64) -> quinn::VarInt {
    quinn::VarInt::from_u64(value).unwrap_or(quinn::VarInt::MAX)
}

/// Accepts any certificate but still checks the handshake signatures, so
/// the connection is encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_quic_dial_to_a_silent_address_sends_at_most_its_probes_a_close_and_slack() {
        // Probes at 99, 297, 693, 1485 and 3069 ms; the next, at 6237 ms,
        // is past the default 5 s direct phase.
        assert_eq!(max_datagrams_per_quic_dial(Duration::from_secs(5)), 14);
        assert_eq!(max_datagrams_per_quic_dial(Duration::from_millis(98)), 4);
        assert_eq!(max_datagrams_per_quic_dial(Duration::from_millis(99)), 6);
        assert_eq!(
            max_datagrams_per_quic_dial(dcutr_core::settings::MAX_DURATION),
            1 + 2 * 15 + 1 + PROBE_SLACK_DATAGRAMS,
            "bounded for the longest configurable phase"
        );
    }

    #[test]
    fn birthday_datagrams_queue_in_order_up_to_their_bound() {
        let sources = PunchSources::default();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(sources.poll_birthday(&mut cx).is_pending());
        let from = |i: u16| SocketAddr::from(([192, 0, 2, 1], i));
        // Not 16 bytes: never queued (the socket filters on
        // `is_birthday_datagram` first; this is the second guard).
        sources.push_birthday(from(1), &[0u8; 17]);
        assert!(sources.poll_birthday(&mut cx).is_pending());
        for i in 0..=BIRTHDAY_DATAGRAMS_QUEUED {
            let mut d = [0u8; dcutr_core::birthday::DATAGRAM_LEN];
            d[15] = u8::try_from(i % 256).unwrap();
            sources.push_birthday(from(u16::try_from(i).unwrap() + 10), &d);
        }
        assert_eq!(sources.lock().dropped, 1, "one past the bound is dropped");
        for i in 0..BIRTHDAY_DATAGRAMS_QUEUED {
            let Poll::Ready((src, d)) = sources.poll_birthday(&mut cx) else {
                panic!("datagram {i} missing");
            };
            assert_eq!(src, from(u16::try_from(i).unwrap() + 10));
            assert_eq!(usize::from(d[15]), i % 256);
        }
        assert!(sources.poll_birthday(&mut cx).is_pending());
        // Clearing at the start of an upgrade forgets them too.
        sources.push_birthday(from(2), &[0u8; 16]);
        sources.clear();
        assert!(sources.poll_birthday(&mut cx).is_pending());
    }
}
