//! The swap of the README, on a client shaped like rust-libp2p's
//! `examples/dcutr`: the same imports (with `dcutr` taken out of
//! `use libp2p::{..}` and `use dcutr_libp2p as dcutr;` added), the same
//! behaviour struct and `SwarmBuilder` chain (TCP with noise and yamux,
//! QUIC, DNS, the relay client), and the same three phases (listen, learn
//! our observed address from the relay, then listen or dial through it).
//! Written for this test, on loopback: the relay runs in-process and
//! everything listens on 127.0.0.1.
//!
//! On loopback the swapped behaviour either connects directly, or fails
//! with a message that names the fix.

use std::error::Error;

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm,
    core::multiaddr::Protocol,
    identify, identity, noise, ping, relay,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux,
};
// The swap: `dcutr` left the `use libp2p::{..}` list above.
use dcutr_libp2p as dcutr;

use crate::common::TEST_TIMEOUT;

#[derive(NetworkBehaviour)]
struct Behaviour {
    relay_client: relay::client::Behaviour,
    ping: ping::Behaviour,
    identify: identify::Behaviour,
    dcutr: dcutr::Behaviour,
}

#[derive(NetworkBehaviour)]
struct RelayServer {
    relay: relay::Behaviour,
    ping: ping::Behaviour,
    identify: identify::Behaviour,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Dial,
    Listen,
}

fn key(seed: u8) -> identity::Keypair {
    let mut bytes = [0u8; 32];
    bytes[0] = seed;
    identity::Keypair::ed25519_from_bytes(bytes).expect("32 bytes")
}

/// The client of the example; `dcutr` builds its DCUtR behaviour.
fn client(
    seed: u8,
    dcutr: impl FnOnce(PeerId) -> dcutr::Behaviour,
) -> Result<Swarm<Behaviour>, Box<dyn Error>> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(key(seed))
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_dns()?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|keypair, relay_behaviour| Behaviour {
            relay_client: relay_behaviour,
            ping: ping::Behaviour::new(ping::Config::new()),
            identify: identify::Behaviour::new(identify::Config::new(
                "/TODO/0.0.1".to_string(),
                keypair.public(),
            )),
            dcutr: dcutr(keypair.public().to_peer_id()),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(TEST_TIMEOUT))
        .build())
}

/// A relay server on loopback TCP, driven in the background; its address.
async fn relay_server() -> Result<Multiaddr, Box<dyn Error>> {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key(200))
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|keypair| RelayServer {
            relay: relay::Behaviour::new(keypair.public().to_peer_id(), Default::default()),
            ping: ping::Behaviour::new(ping::Config::new()),
            identify: identify::Behaviour::new(identify::Config::new(
                "/TODO/0.0.1".to_string(),
                keypair.public(),
            )),
        })?
        .build();
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    swarm.add_external_address(addr.clone());
    let id = *swarm.local_peer_id();
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    Ok(addr.with(Protocol::P2p(id)))
}

/// The example's first two phases: listen, then learn our observed
/// address from the relay (and tell the relay its own).
async fn prepare(swarm: &mut Swarm<Behaviour>, relay_address: &Multiaddr) {
    swarm
        .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
        .unwrap();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let mut listening = 0;
    while listening < 2 {
        if let SwarmEvent::NewListenAddr { .. } = swarm.select_next_some().await {
            listening += 1;
        }
    }
    swarm.dial(relay_address.clone()).unwrap();
    let (mut learned_observed_addr, mut told_relay_observed_addr) = (false, false);
    while !(learned_observed_addr && told_relay_observed_addr) {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Sent { .. })) => {
                told_relay_observed_addr = true;
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                ..
            })) => learned_observed_addr = true,
            _ => {}
        }
    }
}

/// The example's last phase, for both clients at once: listen or dial
/// through the relay, then log events until each has its DCUtR event.
async fn run(
    mut listener: Swarm<Behaviour>,
    mut dialer: Swarm<Behaviour>,
    relay_address: Multiaddr,
) -> Vec<(Mode, dcutr::Event)> {
    listener
        .listen_on(relay_address.clone().with(Protocol::P2pCircuit))
        .unwrap();
    loop {
        if let SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
            relay::client::Event::ReservationReqAccepted { .. },
        )) = listener.select_next_some().await
        {
            break;
        }
    }
    let remote_peer_id = *listener.local_peer_id();
    dialer
        .dial(
            relay_address
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(remote_peer_id)),
        )
        .unwrap();
    let mut events = Vec::new();
    while events.len() < 2 {
        let (mode, event) = tokio::select! {
            e = listener.select_next_some() => (Mode::Listen, e),
            e = dialer.select_next_some() => (Mode::Dial, e),
        };
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => {
                tracing::info!(?mode, ?event);
                events.push((mode, event));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                tracing::info!(?mode, peer = %peer_id, ?endpoint, "Established new connection");
            }
            _ => {}
        }
    }
    events
}

async fn swap(
    dcutr: impl Fn(PeerId) -> dcutr::Behaviour,
) -> Result<Vec<(Mode, dcutr::Event)>, Box<dyn Error>> {
    let relay_address = relay_server().await?;
    let mut listener = client(1, &dcutr)?;
    let mut dialer = client(2, &dcutr)?;
    prepare(&mut listener, &relay_address).await;
    prepare(&mut dialer, &relay_address).await;
    Ok(run(listener, dialer, relay_address).await)
}

/// What the swap promises on loopback: a direct connection, or a failure
/// whose message names the one call that changes it.
fn connected_or_names_the_fix(events: &[(Mode, dcutr::Event)]) -> usize {
    let mut connected = 0;
    for (mode, event) in events {
        match &event.result {
            Ok(_) => connected += 1,
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains("with_address_policy(AddressPolicy::permissive())"),
                    "{mode:?}: {message}"
                );
            }
        }
    }
    connected
}

#[tokio::test]
async fn the_swapped_example_on_loopback_connects_or_names_the_fix() {
    crate::common::init_tracing();
    let events = tokio::time::timeout(TEST_TIMEOUT, swap(dcutr::Behaviour::new))
        .await
        .expect("in time")
        .expect("swarms build");
    connected_or_names_the_fix(&events);
}

#[tokio::test]
async fn the_swapped_example_with_the_named_fix_connects_on_loopback() {
    crate::common::init_tracing();
    let permissive = |peer| {
        let config =
            dcutr::Config::default().with_address_policy(dcutr::AddressPolicy::permissive());
        dcutr::Behaviour::with_config(peer, config).expect("valid config")
    };
    let events = tokio::time::timeout(TEST_TIMEOUT, swap(permissive))
        .await
        .expect("in time")
        .expect("swarms build");
    assert_eq!(connected_or_names_the_fix(&events), 2, "{events:?}");
}
