//! One small future per connection (the relayed stream, each direct
//! connection or dial), owned by the driver's future: no task is spawned,
//! so dropping the upgrade cancels everything.
//!
//! An actor reads only as many bytes as the driver allows ([`Cmd::Want`],
//! mirroring the core's `*_bytes_wanted`), so bytes meant for the
//! application are never consumed.

use std::io;

use bytes::Bytes;
use dcutr_core::{DialError, DirectId};
use futures_channel::mpsc;
use futures_util::future::{BoxFuture, Either, select};
use futures_util::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};

/// Largest read an actor makes at once: a whole frame of the core.
const READ_CHUNK: usize = dcutr_core::settings::MAX_FRAME_LEN;

/// A byte pipe an actor can drive.
pub(crate) trait Duplex: Send + 'static {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>>;
    fn write_all<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, io::Result<()>>;
    fn shutdown(&mut self) -> BoxFuture<'_, ()>;
    /// Called before the connection is handed to the application.
    fn release(&mut self) -> BoxFuture<'_, ()>;
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

/// A QUIC connection; the identity check runs on one bidirectional stream
/// that the side which dialled opens (it speaks first) and the other side
/// accepts.
pub(crate) struct QuicDirect {
    pub conn: quinn::Connection,
    dialled: bool,
    check: Option<(quinn::SendStream, quinn::RecvStream)>,
}

impl QuicDirect {
    pub fn new(conn: quinn::Connection, dialled: bool) -> Self {
        QuicDirect {
            conn,
            dialled,
            check: None,
        }
    }

    async fn check_stream(&mut self) -> io::Result<&mut (quinn::SendStream, quinn::RecvStream)> {
        if self.check.is_none() {
            let pair = if self.dialled {
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
            let (_, recv) = self.check_stream().await?;
            Ok(recv.read(buf).await.map_err(io::Error::other)?.unwrap_or(0))
        }
        .boxed()
    }

    fn write_all<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        async move {
            let (send, _) = self.check_stream().await?;
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
}

/// A direct connection of either transport.
pub(crate) enum DirectConn<T> {
    Tcp(Stream<T>),
    Quic(QuicDirect),
}

impl<T> Duplex for DirectConn<T>
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        match self {
            DirectConn::Tcp(s) => s.read(buf),
            DirectConn::Quic(q) => q.read(buf),
        }
    }

    fn write_all<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        match self {
            DirectConn::Tcp(s) => s.write_all(data),
            DirectConn::Quic(q) => q.write_all(data),
        }
    }

    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        match self {
            DirectConn::Tcp(s) => s.shutdown(),
            DirectConn::Quic(q) => q.shutdown(),
        }
    }

    fn release(&mut self) -> BoxFuture<'_, ()> {
        match self {
            DirectConn::Tcp(s) => s.release(),
            DirectConn::Quic(q) => q.release(),
        }
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
}

/// What an actor tells the driver.
#[derive(Debug)]
pub(crate) enum ActorEvent {
    Connected,
    DialFailed(DialError),
    Data(Vec<u8>),
    Closed,
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
