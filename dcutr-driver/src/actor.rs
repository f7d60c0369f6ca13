//! One small future per connection (the relayed stream, each direct
//! connection or dial), owned by the driver's future: no task is spawned,
//! so dropping the upgrade cancels everything.
//!
//! An actor reads only as many bytes as the driver allows ([`Cmd::Want`],
//! mirroring the core's `*_bytes_wanted`), so bytes meant for the
//! application are never consumed.

use std::io;

use bytes::Bytes;
use dcutr_core::{DialError, DirectId, Role};
use futures_channel::mpsc;
use futures_util::future::{BoxFuture, Either, select};
use futures_util::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};

use crate::tls::{Fingerprint, Pinned, SERVER_NAME};

/// How a pinned handshake ended: the fingerprint of the certificate the
/// other end proved it holds, or (on failure) the one it presented.
pub(crate) type HandshakeResult = Result<Fingerprint, Option<Fingerprint>>;

/// What an actor needs to run the pinned TLS handshake.
pub(crate) struct Handshake {
    /// Our role on the connection: the client is the TLS client.
    pub role: Role,
    pub pinned: Pinned,
}

/// Largest read an actor makes at once: a whole frame of the core.
const READ_CHUNK: usize = dcutr_core::settings::MAX_FRAME_LEN;

/// A byte pipe an actor can drive.
pub(crate) trait Duplex: Send + 'static {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>>;
    fn write_all<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, io::Result<()>>;
    fn shutdown(&mut self) -> BoxFuture<'_, ()>;
    /// Called before the connection is handed to the application.
    fn release(&mut self) -> BoxFuture<'_, ()>;
    /// Runs the pinned TLS handshake (TCP) or reads the certificate its
    /// own handshake verified (QUIC).
    fn handshake(&mut self, _setup: Handshake) -> BoxFuture<'_, HandshakeResult> {
        async { Err(None) }.boxed()
    }
}

/// A stream-oriented connection (the relayed stream, TCP).
pub(crate) struct Stream<T>(pub T);

impl<T> Duplex for Stream<T>
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        self.0.read(buf).boxed()
    }

    fn write_all<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        async move {
            self.0.write_all(data).await?;
            self.0.flush().await
        }
        .boxed()
    }

    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        async move {
            let _ = self.0.close().await;
        }
        .boxed()
    }

    fn release(&mut self) -> BoxFuture<'_, ()> {
        async move {
            let _ = self.0.flush().await;
        }
        .boxed()
    }
}

/// A QUIC connection; the select byte travels on one bidirectional
/// stream.
///
/// The side that writes first opens the stream (with pinned TLS, the
/// server, which writes the select byte); the side that reads first
/// accepts it.
pub(crate) struct QuicDirect {
    pub conn: quinn::Connection,
    check: Option<(quinn::SendStream, quinn::RecvStream)>,
}

impl QuicDirect {
    pub fn new(conn: quinn::Connection) -> Self {
        QuicDirect { conn, check: None }
    }

    async fn check_stream(
        &mut self,
        writing: bool,
    ) -> io::Result<&mut (quinn::SendStream, quinn::RecvStream)> {
        if self.check.is_none() {
            let pair = if writing {
                self.conn.open_bi().await
            } else {
                self.conn.accept_bi().await
            };
            self.check = Some(pair.map_err(io::Error::other)?);
        }
        Ok(self.check.as_mut().expect("just set"))
    }
}

impl Duplex for QuicDirect {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        async move {
            let (_, recv) = self.check_stream(false).await?;
            Ok(recv.read(buf).await.map_err(io::Error::other)?.unwrap_or(0))
        }
        .boxed()
    }

    fn write_all<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        async move {
            let (send, _) = self.check_stream(true).await?;
            send.write_all(data).await.map_err(io::Error::other)
        }
        .boxed()
    }

    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        self.conn.close(0u32.into(), b"not selected");
        async {}.boxed()
    }

    fn release(&mut self) -> BoxFuture<'_, ()> {
        // The check stream is done; the connection belongs to the
        // application now.
        if let Some((mut send, _)) = self.check.take() {
            let _ = send.finish();
        }
        async {}.boxed()
    }

    fn handshake(&mut self, _setup: Handshake) -> BoxFuture<'_, HandshakeResult> {
        // QUIC's own handshake ran with the pinned configs already.
        let presented = self
            .conn
            .peer_identity()
            .and_then(|id| {
                id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|chain| chain.first().map(|c| crate::tls::fingerprint(c)));
        async move { presented.ok_or(None) }.boxed()
    }
}

/// A TCP connection inside pinned TLS.
pub(crate) struct TlsDirect<T>(pub futures_rustls::TlsStream<T>);

impl<T> Duplex for TlsDirect<T>
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        self.0.read(buf).boxed()
    }

    fn write_all<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        async move {
            self.0.write_all(data).await?;
            self.0.flush().await
        }
        .boxed()
    }

    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        async move {
            let _ = self.0.close().await;
        }
        .boxed()
    }

    fn release(&mut self) -> BoxFuture<'_, ()> {
        async move {
            let _ = self.0.flush().await;
        }
        .boxed()
    }
}

/// Runs the TLS handshake of `setup` over `tcp`.
async fn tls_handshake<T>(
    tcp: T,
    setup: Handshake,
) -> (Option<futures_rustls::TlsStream<T>>, HandshakeResult)
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    let presented = setup.pinned.presented.clone();
    let stream = match setup.role {
        Role::Client => {
            let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)
                .expect("a valid DNS name")
                .to_owned();
            futures_rustls::TlsConnector::from(setup.pinned.client)
                .connect(name, tcp)
                .await
                .map(futures_rustls::TlsStream::Client)
        }
        Role::Server => futures_rustls::TlsAcceptor::from(setup.pinned.server)
            .accept(tcp)
            .await
            .map(futures_rustls::TlsStream::Server),
    };
    match (stream, presented.get()) {
        (Ok(stream), Some(fp)) => (Some(stream), Ok(fp)),
        (Ok(_), None) => (None, Err(None)),
        (Err(error), seen) => {
            tracing::debug!(%error, "pinned TLS handshake failed");
            (None, Err(seen))
        }
    }
}

/// A direct connection of either transport.
pub(crate) enum DirectConn<T> {
    Tcp(Stream<T>),
    Tls(Box<TlsDirect<T>>),
    Quic(QuicDirect),
    /// A TCP connection whose TLS handshake failed or is in progress.
    Gone,
}

fn gone<T>() -> io::Result<T> {
    Err(io::Error::from(io::ErrorKind::NotConnected))
}

impl<T> Duplex for DirectConn<T>
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        match self {
            DirectConn::Tcp(s) => s.read(buf),
            DirectConn::Tls(s) => s.read(buf),
            DirectConn::Quic(q) => q.read(buf),
            DirectConn::Gone => async { gone() }.boxed(),
        }
    }

    fn write_all<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        match self {
            DirectConn::Tcp(s) => s.write_all(data),
            DirectConn::Tls(s) => s.write_all(data),
            DirectConn::Quic(q) => q.write_all(data),
            DirectConn::Gone => async { gone() }.boxed(),
        }
    }

    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        match self {
            DirectConn::Tcp(s) => s.shutdown(),
            DirectConn::Tls(s) => s.shutdown(),
            DirectConn::Quic(q) => q.shutdown(),
            DirectConn::Gone => async {}.boxed(),
        }
    }

    fn release(&mut self) -> BoxFuture<'_, ()> {
        match self {
            DirectConn::Tcp(s) => s.release(),
            DirectConn::Tls(s) => s.release(),
            DirectConn::Quic(q) => q.release(),
            DirectConn::Gone => async {}.boxed(),
        }
    }

    fn handshake(&mut self, setup: Handshake) -> BoxFuture<'_, HandshakeResult> {
        async move {
            match std::mem::replace(self, DirectConn::Gone) {
                DirectConn::Tcp(Stream(tcp)) => {
                    let (stream, result) = tls_handshake(tcp, setup).await;
                    if let Some(stream) = stream {
                        *self = DirectConn::Tls(Box::new(TlsDirect(stream)));
                    }
                    result
                }
                DirectConn::Quic(mut q) => {
                    let result = q.handshake(setup).await;
                    *self = DirectConn::Quic(q);
                    result
                }
                other => {
                    *self = other;
                    Err(None)
                }
            }
        }
        .boxed()
    }
}

/// What the driver tells an actor.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// Write and flush these bytes.
    Write(Bytes),
    /// You may read up to this many bytes in all, from now on.
    Want(usize),
    /// Shut the connection down and end.
    Close,
    /// End and hand the connection back.
    Release,
    /// Run the pinned TLS handshake.
    Handshake(Handshake),
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// What an actor tells the driver.
#[derive(Debug)]
pub(crate) enum ActorEvent {
    Connected,
    DialFailed(DialError),
    Data(Vec<u8>),
    Closed,
    /// The pinned handshake ended.
    Handshake(HandshakeResult),
}

/// Which connection an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Relay,
    Direct(DirectId),
}

/// How an actor starts.
pub(crate) enum Start<D> {
    Ready(D),
    Dial(BoxFuture<'static, Result<D, DialError>>),
}

/// Runs one connection until the driver closes or releases it, or it
/// closes itself. Returns the connection when released.
pub(crate) async fn run<D: Duplex>(
    key: Key,
    start: Start<D>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<(Key, ActorEvent)>,
) -> (Key, Option<D>) {
    let emit = |event| {
        // The driver may be gone (upgrade over): nothing to tell then.
        let _ = events.unbounded_send((key, event));
    };
    let mut conn = match start {
        Start::Ready(conn) => conn,
        Start::Dial(dial) => {
            // Only Close or Release can come before the dial is reported.
            match select(dial, cmds.next()).await {
                Either::Left((Ok(conn), _)) => {
                    emit(ActorEvent::Connected);
                    conn
                }
                Either::Left((Err(error), _)) => {
                    emit(ActorEvent::DialFailed(error));
                    return (key, None);
                }
                Either::Right(_) => return (key, None),
            }
        }
    };
    let mut want = 0usize;
    let mut buf = vec![0u8; 0];
    loop {
        let cmd = if want > 0 {
            let len = want.min(READ_CHUNK);
            buf.resize(len, 0);
            let read = match select(conn.read(&mut buf[..len]), cmds.next()).await {
                Either::Left((read, _)) => Ok(read),
                Either::Right((cmd, _)) => Err(cmd),
            };
            match read {
                Ok(Ok(0) | Err(_)) => {
                    emit(ActorEvent::Closed);
                    return (key, None);
                }
                Ok(Ok(n)) => {
                    want -= n;
                    emit(ActorEvent::Data(buf[..n].to_vec()));
                    continue;
                }
                Err(cmd) => cmd,
            }
        } else {
            cmds.next().await
        };
        match cmd {
            Some(Cmd::Want(n)) => want = n,
            Some(Cmd::Write(data)) => {
                if conn.write_all(&data).await.is_err() {
                    emit(ActorEvent::Closed);
                    return (key, None);
                }
            }
            Some(Cmd::Handshake(setup)) => {
                let result = match select(conn.handshake(setup), cmds.next()).await {
                    Either::Left((result, _)) => Some(result),
                    // Closed (or the driver is gone) mid-handshake.
                    Either::Right(_) => None,
                };
                let Some(result) = result else {
                    conn.shutdown().await;
                    return (key, None);
                };
                let failed = result.is_err();
                emit(ActorEvent::Handshake(result));
                if failed {
                    conn.shutdown().await;
                    return (key, None);
                }
            }
            Some(Cmd::Release) => {
                conn.release().await;
                return (key, Some(conn));
            }
            Some(Cmd::Close) | None => {
                conn.shutdown().await;
                return (key, None);
            }
        }
    }
}
