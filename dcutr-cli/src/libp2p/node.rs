//! The rust-libp2p swarms of `dcutr libp2p`: TCP (noise, yamux; dials
//! leave from the listening port) and QUIC v1, identify, and either a
//! circuit relay v2 server or a relay client with ping and one DCUtR.

#![allow(clippy::large_enum_variant)] // identify's `Info` in the derived events

use std::time::Duration;

use dcutr_libp2p as ours;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport as _};
use libp2p::core::upgrade::Version;
use libp2p::futures::future::Either;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    PeerId, Swarm, dcutr as stock, identify, identity, noise, ping, quic, relay, tcp, yamux,
};
use prometheus_client::registry::Registry;

/// Connections stay open while idle for this long: longer than any run,
/// so only we (or the peer) close them.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Identify's protocol version string.
const IDENTIFY_PROTOCOL: &str = "/dcutr-cli/1.0.0";

/// The relay's behaviours.
#[derive(NetworkBehaviour)]
pub struct RelayNode {
    /// Circuit relay v2, the server side.
    pub relay: relay::Behaviour,
    /// Tells peers the address we observed for them.
    pub identify: identify::Behaviour,
    /// Keeps the peers' round trips visible.
    pub ping: ping::Behaviour,
}

/// A peer's behaviours: relay client, identify, ping, and one DCUtR.
#[derive(NetworkBehaviour)]
pub struct PeerNode {
    /// Reservations and relayed connections.
    pub relay: relay::client::Behaviour,
    /// Our observed address (from the relay) and the peer's addresses.
    pub identify: identify::Behaviour,
    /// Proves each connection carries bytes (and measures its RTT).
    pub ping: ping::Behaviour,
    /// `libp2p::dcutr`, with `--stock`.
    pub stock: Toggle<stock::Behaviour>,
    /// dcutr-libp2p, the default.
    pub ours: Toggle<ours::Behaviour<ours::Report>>,
}

/// Which DCUtR a peer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// `libp2p::dcutr` (the reference).
    Stock,
    /// `dcutr_libp2p`.
    Ours,
}

impl Impl {
    /// `stock` or `ours`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Impl::Stock => "stock",
            Impl::Ours => "ours",
        }
    }
}

/// The node's key: a fixed function of `seed` (so that every peer id of a
/// lab is known in advance), or a fresh one.
#[must_use]
pub fn keypair(seed: Option<u64>) -> identity::Keypair {
    match seed {
        Some(seed) => {
            let mut secret = [0x6c_u8; 32];
            secret[..8].copy_from_slice(&seed.to_le_bytes());
            identity::Keypair::ed25519_from_bytes(secret)
                .expect("any 32 bytes are an ed25519 secret")
        }
        None => identity::Keypair::generate_ed25519(),
    }
}

fn swarm_config() -> libp2p::swarm::Config {
    libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
}

fn tcp_config() -> tcp::Config {
    tcp::Config::default().nodelay(true)
}

fn identify(key: &identity::Keypair) -> identify::Behaviour {
    identify::Behaviour::new(identify::Config::new(
        IDENTIFY_PROTOCOL.to_owned(),
        key.public(),
    ))
}

/// `upgraded` (secured and multiplexed) or QUIC, which brings its own.
fn or_quic(
    upgraded: Boxed<(PeerId, StreamMuxerBox)>,
    key: &identity::Keypair,
) -> Boxed<(PeerId, StreamMuxerBox)> {
    upgraded
        .or_transport(quic::tokio::Transport::new(quic::Config::new(key)))
        .map(|either, _| match either {
            Either::Left(out) => out,
            Either::Right((peer, conn)) => (peer, StreamMuxerBox::new(conn)),
        })
        .boxed()
}

/// The relay's swarm.
///
/// # Errors
/// When noise cannot be set up with `key`.
pub fn relay_swarm(key: &identity::Keypair) -> anyhow::Result<Swarm<RelayNode>> {
    let peer = key.public().to_peer_id();
    let tcp = tcp::tokio::Transport::new(tcp_config())
        .upgrade(Version::V1)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .boxed();
    Ok(Swarm::new(
        or_quic(tcp, key),
        RelayNode {
            relay: relay::Behaviour::new(peer, relay::Config::default()),
            identify: identify(key),
            ping: ping::Behaviour::default(),
        },
        peer,
        swarm_config(),
    ))
}

/// A peer's swarm with `dcutr`; ours gets `config`, and records into
/// `registry` when one is given.
///
/// # Errors
/// When noise cannot be set up or ours rejects `config`.
pub fn peer_swarm(
    key: &identity::Keypair,
    dcutr: Impl,
    config: ours::Config,
    registry: Option<&mut Registry>,
) -> anyhow::Result<Swarm<PeerNode>> {
    let peer = key.public().to_peer_id();
    let (relay_transport, relay_client) = relay::client::new(peer);
    let relay_or_tcp = relay_transport
        .or_transport(tcp::tokio::Transport::new(tcp_config()))
        .upgrade(Version::V1)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .boxed();
    let (stock, ours) = match dcutr {
        Impl::Stock => (Some(stock::Behaviour::new(peer)), None),
        Impl::Ours => {
            let mut b = ours::Behaviour::with_config(peer, config)?;
            if let Some(registry) = registry {
                b = b.with_metrics(ours::Metrics::new(registry));
            }
            (None, Some(b))
        }
    };
    Ok(Swarm::new(
        or_quic(relay_or_tcp, key),
        PeerNode {
            relay: relay_client,
            identify: identify(key),
            ping: ping::Behaviour::default(),
            stock: stock.into(),
            ours: ours.into(),
        },
        peer,
        swarm_config(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_peer_id_every_time_and_none_a_fresh_one() {
        let a = keypair(Some(2)).public().to_peer_id();
        assert_eq!(a, keypair(Some(2)).public().to_peer_id());
        assert_ne!(a, keypair(Some(3)).public().to_peer_id());
        assert_ne!(
            keypair(None).public().to_peer_id(),
            keypair(None).public().to_peer_id()
        );
    }
}
