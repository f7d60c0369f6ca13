//! The connection handler of a relayed connection: a byte pump between
//! `/libp2p/dcutr` streams and the [`Behaviour`](crate::Behaviour), where
//! the core runs.
//!
//! It makes no protocol decision. It opens a stream when told to, hands
//! every byte it reads to the behaviour, writes what it is given, and says
//! when a stream ends. Streams are numbered so that a command meant for an
//! older stream never touches a newer one.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use either::Either;
use futures::{AsyncRead, AsyncWrite};
use libp2p_core::upgrade::{DeniedUpgrade, ReadyUpgrade};
use libp2p_swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p_swarm::{
    ConnectionHandler, ConnectionHandlerEvent, Stream, StreamProtocol, StreamUpgradeError,
    SubstreamProtocol,
};

use crate::PROTOCOL_NAME;
use crate::log as tracing;

/// Bytes read from a stream in one go. A DCUtR message is at most 4 KiB;
/// the core's decoder accepts any chunking, so this only sets how many
/// events a large message becomes.
const READ_CHUNK: usize = 4096;

/// Which end of the relayed connection the handler serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opener {
    /// We accepted the relayed connection (spec B): we open streams and
    /// refuse inbound ones, as stock libp2p does.
    Us,
    /// We dialled the relayed connection (spec A): we accept streams.
    Peer,
}

/// A command from the behaviour.
#[derive(Debug)]
pub enum Command {
    /// Open a new outbound `/libp2p/dcutr` stream.
    Open,
    /// Write bytes to stream `stream`.
    Write {
        /// The handler's number of the stream.
        stream: u64,
        /// The bytes.
        data: Bytes,
    },
    /// Half-close stream `stream` once the queued bytes are written.
    Finish {
        /// The handler's number of the stream.
        stream: u64,
    },
    /// Drop stream `stream` without finishing it.
    Reset {
        /// The handler's number of the stream.
        stream: u64,
    },
    /// The upgrade is over: drop any stream and stop keeping the
    /// connection alive.
    Done,
}

/// An event for the behaviour.
#[derive(Debug)]
pub enum HandlerEvent {
    /// A stream is open (ours after [`Command::Open`], or the peer's).
    Opened {
        /// The handler's number of the stream, new for each stream.
        stream: u64,
    },
    /// The stream we asked for could not be opened.
    OpenFailed {
        /// The peer does not speak `/libp2p/dcutr`.
        unsupported: bool,
    },
    /// Bytes arrived.
    Data {
        /// The handler's number of the stream.
        stream: u64,
        /// The bytes, as read.
        data: Bytes,
    },
    /// The stream ended: EOF, reset or I/O error.
    Closed {
        /// The handler's number of the stream.
        stream: u64,
    },
}

struct Active {
    id: u64,
    stream: Stream,
    outgoing: BytesMut,
    finish: bool,
    write_closed: bool,
    read_closed: bool,
}

/// The handler of one relayed connection.
pub struct Handler {
    opener: Opener,
    active: Option<Active>,
    next_stream: u64,
    events: VecDeque<HandlerEvent>,
    pending_open: usize,
    keep_alive: bool,
    /// The upgrade is over: the active stream only delivers what is
    /// still queued (a last Sync), is finished, then dropped.
    done: bool,
}

impl Handler {
    pub(crate) fn new(opener: Opener) -> Self {
        Handler {
            opener,
            active: None,
            next_stream: 0,
            events: VecDeque::new(),
            pending_open: 0,
            keep_alive: true,
            done: false,
        }
    }

    fn adopt(&mut self, stream: Stream) {
        if self.done {
            // A stream the peer opened after the upgrade ended: nobody
            // would answer it.
            return;
        }
        self.next_stream += 1;
        let id = self.next_stream;
        if let Some(old) = self.active.take() {
            // One exchange at a time: the newer stream replaces the older
            // one, which is dropped (reset). The core has the same rule.
            tracing::debug!(
                old = old.id,
                new = id,
                "a new dcutr stream replaces the old one"
            );
        }
        self.active = Some(Active {
            id,
            stream,
            outgoing: BytesMut::new(),
            finish: false,
            write_closed: false,
            read_closed: false,
        });
        self.events.push_back(HandlerEvent::Opened { stream: id });
    }

    fn active_mut(&mut self, stream: u64) -> Option<&mut Active> {
        self.active.as_mut().filter(|a| a.id == stream)
    }

    /// Drives the active stream's I/O; queues the events it produces.
    fn drive(&mut self, cx: &mut Context<'_>) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut ended = false;
        // Writes first, so a Sync queued with a finish leaves before EOF.
        while !active.outgoing.is_empty() && !active.write_closed {
            match Pin::new(&mut active.stream).poll_write(cx, &active.outgoing) {
                Poll::Ready(Ok(0)) => {
                    ended = true;
                    break;
                }
                Poll::Ready(Ok(n)) => active.outgoing.advance(n),
                Poll::Ready(Err(err)) => {
                    tracing::debug!(%err, "dcutr stream write failed");
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !ended && active.outgoing.is_empty() && !active.write_closed {
            let res = if active.finish {
                Pin::new(&mut active.stream).poll_close(cx)
            } else {
                Pin::new(&mut active.stream).poll_flush(cx)
            };
            match res {
                Poll::Ready(Ok(())) if active.finish => active.write_closed = true,
                Poll::Ready(Ok(())) | Poll::Pending => {}
                Poll::Ready(Err(err)) => {
                    tracing::debug!(%err, "dcutr stream flush failed");
                    ended = true;
                }
            }
        }
        if self.done {
            // Nobody reads any more: drop the stream once what was queued
            // is out and our side is finished, or the stream broke.
            if ended || active.write_closed {
                self.active = None;
            }
            return;
        }
        let mut buf = [0u8; READ_CHUNK];
        while !ended && !active.read_closed {
            match Pin::new(&mut active.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(0)) => active.read_closed = true,
                Poll::Ready(Ok(n)) => self.events.push_back(HandlerEvent::Data {
                    stream: active.id,
                    data: Bytes::copy_from_slice(&buf[..n]),
                }),
                Poll::Ready(Err(err)) => {
                    tracing::debug!(%err, "dcutr stream read failed");
                    ended = true;
                }
                Poll::Pending => break,
            }
        }
        // The peer finished its side: report it. Our own side is either
        // finished already or never will be (the spec's A keeps nothing to
        // say after its Connect), so the stream is of no further use.
        if ended || active.read_closed {
            let id = active.id;
            self.active = None;
            self.events.push_back(HandlerEvent::Closed { stream: id });
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Command;
    type ToBehaviour = HandlerEvent;
    type InboundProtocol = Either<ReadyUpgrade<StreamProtocol>, DeniedUpgrade>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        match self.opener {
            // The spec's A answers streams, and only on relayed connections
            // (this handler only runs on those).
            Opener::Peer => {
                SubstreamProtocol::new(Either::Left(ReadyUpgrade::new(PROTOCOL_NAME)), ())
            }
            Opener::Us => SubstreamProtocol::new(Either::Right(DeniedUpgrade), ()),
        }
    }

    fn on_behaviour_event(&mut self, command: Command) {
        match command {
            Command::Open => self.pending_open += 1,
            Command::Write { stream, data } => {
                if let Some(a) = self.active_mut(stream) {
                    a.outgoing.extend_from_slice(&data);
                }
            }
            Command::Finish { stream } => {
                if let Some(a) = self.active_mut(stream) {
                    a.finish = true;
                }
            }
            Command::Reset { stream } => {
                if self.active.as_ref().is_some_and(|a| a.id == stream) {
                    self.active = None;
                }
            }
            Command::Done => {
                // Dropping the stream now would reset it under bytes still
                // queued, such as the last attempt's Sync: the peer would
                // see its exchange fail for the wrong reason. Deliver them,
                // finish the stream, then drop it (`drive`).
                self.done = true;
                self.pending_open = 0;
                self.keep_alive = false;
                if let Some(a) = self.active.as_mut() {
                    a.finish = true;
                }
            }
        }
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep_alive
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        if self.pending_open > 0 {
            self.pending_open -= 1;
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL_NAME), ()),
            });
        }
        if self.events.is_empty() {
            self.drive(cx);
        }
        match self.events.pop_front() {
            Some(event) => Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event)),
            None => Poll::Pending,
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol, ..
            }) => match protocol {
                futures::future::Either::Left(stream) => self.adopt(stream),
                futures::future::Either::Right(never) => libp2p_core::util::unreachable(never),
            },
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => self.adopt(stream),
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                let unsupported = matches!(error, StreamUpgradeError::NegotiationFailed);
                tracing::debug!(?error, "opening a dcutr stream failed");
                self.events
                    .push_back(HandlerEvent::OpenFailed { unsupported });
            }
            _ => {}
        }
    }
}
