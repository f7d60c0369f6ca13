//! # dcutr-tokio
//!
//! DCUtR hole punching on tokio. You already have a relayed stream to a
//! peer (any `AsyncRead + AsyncWrite`: a spliced TCP connection through a
//! rendezvous server, a libp2p circuit stream...); [`upgrade`] runs the
//! protocol over it and returns a direct connection, encrypted and
//! authenticated as the peer: a [`TlsStream`] (TLS 1.3 over the
//! [`tokio::net::TcpStream`] of a TCP simultaneous open), or a
//! [`quinn::Connection`].
//!
//! This crate holds no protocol logic: [`dcutr_core`] decides everything,
//! and the loop that carries out its commands is shared with the other
//! runtime adapters ([`dcutr_driver`]).
//!
//! ## Sockets
//! * **TCP:** bind the listener with [`tcp_listener`] (it sets
//!   `SO_REUSEADDR` and `SO_REUSEPORT`) on the port whose NAT mapping the
//!   peer was told about. Every punch dial leaves from that same port. A
//!   simultaneous open yields one connection on each side; a peer's SYN
//!   that reaches the listener instead is accepted too.
//! * **QUIC:** [`quic_socket`] builds a quinn endpoint that also keeps a
//!   clone of its UDP socket, so the server side's spray leaves from the
//!   socket the peer observed. The client side dials.
//!
//! ## Identity check: pinned mutual TLS
//! A direct connection may come from a stranger (a scanner, another host
//! behind the same NAT, a host at a stale address the peer advertised).
//! Each upgrade makes an ephemeral certificate and sends its SHA-256
//! fingerprint in the first frame of the relayed stream; on every direct
//! connection both sides run mutual TLS 1.3 and accept exactly the
//! certificate the other pinned (QUIC in its own handshake, TCP wrapped in
//! TLS). A stranger, or a man in the middle relaying both dials, cannot
//! finish the handshake and is refused with
//! [`DirectRejection::IdentityMismatch`](dcutr_core::reason::DirectRejection::IdentityMismatch);
//! the real peer still wins. The relay could swap the fingerprints:
//! authenticate the relayed stream if it is not trusted (the `dcutr` CLI
//! pairs with a PAKE). With [`Options::caller_authenticates`] your own
//! handshake authenticates the peer instead, and TCP comes back plain
//! ([`Direct::Tcp`]).
//!
//! ## Example
//! ```no_run
//! # async fn example(relayed: tokio::net::TcpStream) -> std::io::Result<()> {
//! use dcutr_tokio::{Candidate, Direct, Options, Side};
//!
//! let listener = dcutr_tokio::tcp_listener("0.0.0.0:4001".parse().unwrap())?;
//! // The address a rendezvous server (or identify) observed for port 4001.
//! let observed = Candidate::tcp("203.0.113.7:4001".parse().unwrap());
//! let options = Options::new(Side::Initiator).local_addrs([observed]).tcp(listener);
//! match dcutr_tokio::upgrade(relayed, options).await {
//!     Ok(up) => {
//!         println!("direct {} connection to {} as {}", up.transport, up.remote, up.role);
//!         if let Direct::Tls(stream) = up.connection {
//!             // talk directly; close `up.relay` by `up.relay_close_at`
//!             drop(stream);
//!         }
//!     }
//!     Err(e) => println!("staying on the relay: {e}"),
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

pub use dcutr_core::{
    self, AddressPolicy, AttemptFailure, Candidate, Config, DialError, Event, Failure, Role, Side,
    Transport,
};
pub use dcutr_driver::net::udp_socket;
pub use dcutr_driver::{
    Fingerprint, QuicLimits, QuicSocket, Report, SERVER_NAME, UpgradeFailure,
    insecure_self_signed_configs, running_upgrades,
};
/// The quinn this crate builds its endpoints with: name
/// `dcutr_tokio::quinn::Connection` and friends through it, so that the
/// versions always match.
pub use quinn;

/// Options of one upgrade; see [`dcutr_driver::Options`].
pub type Options = dcutr_driver::Options<tokio::net::TcpListener>;

/// A pinned TLS direct connection over TCP, with tokio's I/O traits.
/// `get_ref().get_ref()` reaches the `futures-rustls` stream (its
/// session: `get_ref().1`).
pub type TlsStream = Compat<dcutr_driver::TlsStream<Compat<tokio::net::TcpStream>>>;

/// The winning direct connection.
pub type Direct = dcutr_driver::DirectConnection<tokio::net::TcpStream, TlsStream>;

/// A successful upgrade, with tokio types.
pub type Upgraded<S> = dcutr_driver::Upgraded<tokio::net::TcpStream, S, TlsStream>;

/// A failed upgrade; the relayed stream comes back when still usable.
pub type UpgradeError<S> = dcutr_driver::UpgradeError<S>;

/// The tokio [`dcutr_driver::Runtime`]: tokio's clock (a paused test
/// clock counts), timers and sockets.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioRuntime;

impl dcutr_driver::Runtime for TokioRuntime {
    type TcpStream = Compat<tokio::net::TcpStream>;
    type TcpListener = tokio::net::TcpListener;

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        tokio::time::sleep_until(deadline.into()).boxed()
    }

    fn connect_from(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> BoxFuture<'static, io::Result<Self::TcpStream>> {
        async move {
            let socket = dcutr_driver::net::reuse_stream_socket(local)?;
            let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
            let stream = socket.connect(remote).await?;
            // The TLS handshake and the select byte are small writes in
            // turn: Nagle's algorithm against delayed ACKs would add 40 ms.
            let _ = stream.set_nodelay(true);
            Ok(stream.compat())
        }
        .boxed()
    }

    fn poll_accept(
        &self,
        listener: &mut Self::TcpListener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Self::TcpStream, SocketAddr)>> {
        listener.poll_accept(cx).map_ok(|(stream, from)| {
            let _ = stream.set_nodelay(true);
            (stream.compat(), from)
        })
    }

    fn listener_addr(&self, listener: &Self::TcpListener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }
}

/// A TCP listener on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`, so
/// the punch dials can leave from its port. Call inside a tokio runtime.
///
/// # Errors
/// Socket errors.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(dcutr_driver::net::reuse_listener(addr)?)
}

/// Connects from `local` (with port reuse, so it shares the listener's
/// port) to `remote`. Use it to reach a rendezvous server from the punch
/// port, so that the address it observes is the NAT mapping of that port.
///
/// # Errors
/// Socket or connect errors.
pub async fn tcp_connect_from(
    local: SocketAddr,
    remote: SocketAddr,
) -> io::Result<tokio::net::TcpStream> {
    use dcutr_driver::Runtime as _;
    Ok(TokioRuntime.connect_from(local, remote).await?.into_inner())
}

/// A QUIC endpoint on the UDP socket `socket` (bind it with
/// [`udp_socket`]) for upgrades with pinned mutual TLS: each upgrade
/// brings its own certificate. Call inside a tokio runtime.
///
/// # Errors
/// Socket or endpoint errors.
pub fn quic_socket(socket: std::net::UdpSocket) -> io::Result<QuicSocket> {
    QuicSocket::new(socket, Arc::new(quinn::TokioRuntime))
}

/// A QUIC endpoint on `socket` serving with `server` and dialling with
/// `client`, for callers whose own TLS authenticates the peer
/// ([`Options::caller_authenticates`]). Call inside a tokio runtime.
///
/// # Errors
/// Socket or endpoint errors.
pub fn quic_socket_with_tls(
    socket: std::net::UdpSocket,
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
) -> io::Result<QuicSocket> {
    QuicSocket::with_tls(socket, server, client, Arc::new(quinn::TokioRuntime))
}

/// Runs DCUtR over `relay` and returns the direct connection.
///
/// `relay` carries every attempt, one after the other; the core never
/// reads past its own messages, so after a clean failure the stream comes
/// back in [`UpgradeError::relay`] ready for the application.
///
/// # Errors
/// [`UpgradeError`] with the reason (all attempts failed, with the reason
/// of each and of every dial in the report; a protocol error from the
/// peer; the relay closed; a step timeout).
pub async fn upgrade<S>(relay: S, options: Options) -> Result<Upgraded<S>, UpgradeError<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match dcutr_driver::drive(&TokioRuntime, relay.compat(), options).await {
        Ok(up) => Ok(up.map(Compat::into_inner, |tls| tls.compat(), Compat::into_inner)),
        Err(e) => Err(e.map(Compat::into_inner)),
    }
}

/// Keeps the relayed stream open until `at` (the grace period, see
/// [`Upgraded::relay_close_at`](dcutr_driver::Upgraded::relay_close_at)),
/// then shuts it down and drops it. Spawn it, or await it, after an
/// upgrade.
pub async fn close_relay_at<S>(mut relay: S, at: Instant)
where
    S: AsyncWrite + Unpin,
{
    tokio::time::sleep_until(at.into()).await;
    if let Err(error) = relay.shutdown().await {
        tracing::debug!(%error, "relayed stream shutdown failed");
    }
    tracing::debug!("relayed stream released after the grace period");
}
