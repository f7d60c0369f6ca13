//! A test behaviour that sends bytes over one chosen connection and reports
//! the echo, so a test can prove data flows over the direct connection
//! (and not over any other connection to the same peer).

use std::collections::VecDeque;
use std::io;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound, FullyNegotiatedOutbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, Stream, StreamProtocol, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/dcutr-libp2p-test/echo/1");
const MAX_ECHO: usize = 1024;

/// An echo came back.
#[derive(Debug)]
pub struct Echoed {
    pub peer: PeerId,
    pub connection_id: ConnectionId,
    pub reply: Vec<u8>,
}

#[derive(Default)]
pub struct Behaviour {
    queued: VecDeque<ToSwarm<Echoed, Vec<u8>>>,
}

impl Behaviour {
    /// Reports `addr` to the swarm as a new candidate for our external
    /// address, as identify does when a peer tells us what it observed.
    pub fn announce(&mut self, addr: Multiaddr) {
        self.queued
            .push_back(ToSwarm::NewExternalAddrCandidate(addr));
    }

    /// Sends `payload` over `connection` (and nothing else) to `peer`.
    pub fn send(&mut self, peer: PeerId, connection: ConnectionId, payload: Vec<u8>) {
        self.queued.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::One(connection),
            event: payload,
        });
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Echoed;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        reply: THandlerOutEvent<Self>,
    ) {
        self.queued.push_back(ToSwarm::GenerateEvent(Echoed {
            peer,
            connection_id,
            reply,
        }));
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Echoed, THandlerInEvent<Self>>> {
        match self.queued.pop_front() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        }
    }
}

#[derive(Default)]
pub struct Handler {
    to_send: VecDeque<Vec<u8>>,
    running: FuturesUnordered<BoxFuture<'static, io::Result<Option<Vec<u8>>>>>,
}

async fn ask(mut stream: Stream, payload: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    stream.write_all(&payload).await?;
    stream.close().await?;
    let mut reply = Vec::new();
    (&mut stream)
        .take(MAX_ECHO as u64)
        .read_to_end(&mut reply)
        .await?;
    Ok(Some(reply))
}

async fn answer(mut stream: Stream) -> io::Result<Option<Vec<u8>>> {
    let mut request = Vec::new();
    (&mut stream)
        .take(MAX_ECHO as u64)
        .read_to_end(&mut request)
        .await?;
    stream.write_all(&request).await?;
    stream.close().await?;
    Ok(None)
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Vec<u8>;
    type ToBehaviour = Vec<u8>;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Vec<u8>;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn on_behaviour_event(&mut self, payload: Vec<u8>) {
        self.to_send.push_back(payload);
    }

    fn connection_keep_alive(&self) -> bool {
        !self.to_send.is_empty() || !self.running.is_empty()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Vec<u8>, Vec<u8>>> {
        if let Some(payload) = self.to_send.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), payload),
            });
        }
        while let Poll::Ready(Some(result)) = self.running.poll_next_unpin(cx) {
            match result {
                Ok(Some(reply)) => {
                    return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(reply));
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(%err, "echo stream failed"),
            }
        }
        Poll::Pending
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), Vec<u8>>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => self.running.push(answer(stream).boxed()),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info,
            }) => self.running.push(ask(stream, info).boxed()),
            ConnectionEvent::DialUpgradeError(e) => {
                tracing::warn!(error = ?e.error, "echo stream could not be opened");
            }
            _ => {}
        }
    }
}
