//! # dcutr-async-std
//!
//! DCUtR hole punching for the `async-io` family of runtimes: **smol**
//! and **async-std**. The same upgrade as `dcutr-tokio` (TCP simultaneous
//! open and QUIC with the UDP spray, the same identity check, the same
//! report), over the same shared driving loop ([`dcutr_driver`]); only the
//! sockets and timers are `async-io`'s.
//!
//! Tested on both runtimes by the workspace's conformance suite, including
//! mixed pairs with tokio peers. **smol is the recommended choice for new
//! code:** async-std is discontinued upstream (advisory RUSTSEC-2025-0052)
//! and quinn's main branch has dropped it. The async-std-specific part (a
//! QUIC endpoint on async-std's executor) sits behind the `async-std`
//! feature, so it can be retired without touching the smol path.
//!
//! Streams are the `futures-io` traits: the relayed stream can be any
//! `futures_io::AsyncRead + AsyncWrite` (an `async_net::TcpStream`, an
//! `async_std::net::TcpStream`...), and a TCP direct connection comes back
//! inside mutual TLS 1.3 pinned to the peer's certificate, as a
//! [`TlsStream`] over an [`async_net::TcpStream`] (see `dcutr_tokio` for
//! the identity check). With `Options::caller_authenticates` it comes back
//! plain.
//!
//! ## Example (smol)
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! smol::block_on(async {
//!     use dcutr_async_std::{Candidate, Options, Side};
//!     let relayed = async_net::TcpStream::connect("203.0.113.1:4000").await?;
//!     let listener = dcutr_async_std::tcp_listener("0.0.0.0:4001".parse().unwrap())?;
//!     let observed = Candidate::tcp("203.0.113.7:4001".parse().unwrap());
//!     let options = Options::new(Side::Initiator).local_addrs([observed]).tcp(listener);
//!     match dcutr_async_std::upgrade(relayed, options).await {
//!         Ok(up) => println!("direct {} connection to {}", up.transport, up.remote),
//!         Err(e) => println!("staying on the relay: {e}"),
//!     }
//!     Ok(())
//! })
//! # }
//! ```

#![forbid(unsafe_code)]

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use async_io::{Async, Timer};
use futures_util::future::BoxFuture;
use futures_util::{AsyncWriteExt, FutureExt};

pub use dcutr_core::{
    self, AddressPolicy, AttemptFailure, Candidate, Config, DialError, Event, Failure, Role, Side,
    Transport,
};
pub use dcutr_driver::net::udp_socket;
pub use dcutr_driver::{
    Fingerprint, QuicLimits, QuicSocket, Report, SERVER_NAME, TlsStream, UpgradeFailure,
    insecure_self_signed_configs, running_upgrades,
};
/// The quinn this crate builds its endpoints with: name
/// `dcutr_async_std::quinn::Connection` and friends through it, so that the
/// versions always match.
pub use quinn;

/// Options of one upgrade; see [`dcutr_driver::Options`].
pub type Options = dcutr_driver::Options<Async<TcpListener>>;

/// The winning direct connection.
pub type Direct = dcutr_driver::DirectConnection<async_net::TcpStream>;

/// A successful upgrade.
pub type Upgraded<S> = dcutr_driver::Upgraded<async_net::TcpStream, S>;

/// A failed upgrade; the relayed stream comes back when still usable.
pub type UpgradeError<S> = dcutr_driver::UpgradeError<S>;

/// The `async-io` [`dcutr_driver::Runtime`]: the system's monotonic
/// clock, `async-io` timers and sockets. Works under smol and async-std,
/// which both run `async-io`'s reactor.
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncIoRuntime;

impl dcutr_driver::Runtime for AsyncIoRuntime {
    type TcpStream = async_net::TcpStream;
    type TcpListener = Async<TcpListener>;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        Timer::at(deadline).map(drop).boxed()
    }

    fn connect_from(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> BoxFuture<'static, io::Result<Self::TcpStream>> {
        async move {
            let socket = dcutr_driver::net::reuse_stream_socket(local)?;
            match socket.connect(&remote.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            let stream = Async::new(TcpStream::from(socket))?;
            // Writable means the connect finished, one way or the other.
            stream.writable().await?;
            if let Some(error) = stream.get_ref().take_error()? {
                return Err(error);
            }
            stream.get_ref().peer_addr()?;
            // The TLS handshake and the select byte are small writes in
            // turn: Nagle's algorithm against delayed ACKs would add 40 ms.
            let _ = stream.get_ref().set_nodelay(true);
            Ok(async_net::TcpStream::from(stream))
        }
        .boxed()
    }

    fn poll_accept(
        &self,
        listener: &mut Self::TcpListener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Self::TcpStream, SocketAddr)>> {
        loop {
            match listener.get_ref().accept() {
                Ok((stream, from)) => {
                    let _ = stream.set_nodelay(true);
                    return Poll::Ready(async_net::TcpStream::try_from(stream).map(|s| (s, from)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match listener.poll_readable(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn listener_addr(&self, listener: &Self::TcpListener) -> io::Result<SocketAddr> {
        listener.get_ref().local_addr()
    }
}

/// `connect()` on a non-blocking socket that is still connecting (std has
/// no stable `ErrorKind` for it yet).
const EINPROGRESS: i32 = libc::EINPROGRESS;

/// A TCP listener on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`, so the
/// punch dials can leave from its port.
///
/// # Errors
/// Socket errors.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<Async<TcpListener>> {
    Async::new(dcutr_driver::net::reuse_listener(addr)?)
}

/// Connects from `local` (with port reuse, sharing the listener's port) to
/// `remote`: reach a rendezvous server from the punch port so it observes
/// that port's NAT mapping.
///
/// # Errors
/// Socket or connect errors.
pub async fn tcp_connect_from(
    local: SocketAddr,
    remote: SocketAddr,
) -> io::Result<async_net::TcpStream> {
    use dcutr_driver::Runtime as _;
    AsyncIoRuntime.connect_from(local, remote).await
}

/// A QUIC endpoint on `socket` whose background work runs on smol's
/// executor.
///
/// # Errors
/// Socket or endpoint errors.
#[cfg(feature = "smol")]
pub fn quic_socket_smol(socket: std::net::UdpSocket) -> io::Result<QuicSocket> {
    QuicSocket::new(socket, Arc::new(quinn::SmolRuntime))
}

/// A QUIC endpoint on smol's executor serving with `server` and dialling
/// with `client`, for callers whose own TLS authenticates the peer.
///
/// # Errors
/// Socket or endpoint errors.
#[cfg(feature = "smol")]
pub fn quic_socket_smol_with_tls(
    socket: std::net::UdpSocket,
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
) -> io::Result<QuicSocket> {
    QuicSocket::with_tls(socket, server, client, Arc::new(quinn::SmolRuntime))
}

/// A QUIC endpoint on `socket` whose background work runs on async-std's
/// executor.
///
/// # Errors
/// Socket or endpoint errors.
#[cfg(feature = "async-std")]
pub fn quic_socket_async_std(socket: std::net::UdpSocket) -> io::Result<QuicSocket> {
    QuicSocket::new(socket, Arc::new(quinn::AsyncStdRuntime))
}

/// Runs DCUtR over `relay` and returns the direct connection; see
/// `dcutr_tokio::upgrade` for the semantics, which are the same.
///
/// # Errors
/// [`UpgradeError`] with the reason, the report and (after a clean
/// failure) the relayed stream.
pub async fn upgrade<S>(relay: S, options: Options) -> Result<Upgraded<S>, UpgradeError<S>>
where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    dcutr_driver::drive(&AsyncIoRuntime, relay, options).await
}

/// Keeps the relayed stream open until `at` (the grace period), then
/// closes it.
pub async fn close_relay_at<S>(mut relay: S, at: Instant)
where
    S: futures_io::AsyncWrite + Unpin,
{
    Timer::at(at).await;
    if let Err(error) = relay.close().await {
        tracing::debug!(%error, "relayed stream close failed");
    }
}
