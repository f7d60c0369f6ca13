//! `dcutr libp2p relay`: a circuit relay v2 with identify.

use std::process::ExitCode;

use libp2p::futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, relay};
use serde_json::json;

use super::node::{self, RelayNodeEvent};
use super::{EXIT_SETUP, Out, RelayArgs};

/// Whether the listening address `addr` can be handed out as it is: a
/// concrete IP, not `0.0.0.0` or `::`.
fn is_concrete(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) => true,
        _ => false,
    })
}

/// Runs the relay until it is killed or its listeners fail.
pub async fn run(args: RelayArgs) -> anyhow::Result<ExitCode> {
    let out = Out::new(args.json);
    let key = node::keypair(args.seed);
    let mut swarm = node::relay_swarm(&key)?;
    let me = *swarm.local_peer_id();
    for listen in &args.listen {
        if let Err(e) = swarm.listen_on(listen.clone()) {
            out.emit(
                "error",
                json!({"error": format!("--listen {listen}: {e} (expected e.g. /ip4/0.0.0.0/tcp/4001 or /ip4/0.0.0.0/udp/4001/quic-v1)")}),
            );
            return Ok(ExitCode::from(EXIT_SETUP));
        }
    }
    // Reservations hand out the relay's external addresses.
    for addr in &args.external {
        swarm.add_external_address(addr.clone());
    }
    let mut listeners = args.listen.len();
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                if args.external.is_empty() && is_concrete(&address) {
                    swarm.add_external_address(address.clone());
                }
                let full = address.clone().with(Protocol::P2p(me));
                out.emit(
                    "listening",
                    json!({"addr": full.to_string(), "peer_id": me.to_string()}),
                );
            }
            SwarmEvent::Behaviour(RelayNodeEvent::Relay(e)) => {
                let (what, peer) = match &e {
                    relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                        ("reservation", Some(src_peer_id))
                    }
                    relay::Event::ReservationTimedOut { src_peer_id } => {
                        ("reservation-expired", Some(src_peer_id))
                    }
                    relay::Event::CircuitReqAccepted { src_peer_id, .. } => {
                        ("circuit", Some(src_peer_id))
                    }
                    relay::Event::CircuitClosed { src_peer_id, .. } => {
                        ("circuit-closed", Some(src_peer_id))
                    }
                    _ => ("relay", None),
                };
                out.emit(
                    what,
                    json!({"peer_id": peer.map(ToString::to_string), "detail": format!("{e:?}")}),
                );
            }
            SwarmEvent::ListenerError { error, .. } => {
                out.emit("listener-error", json!({"error": error.to_string()}));
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                out.emit("listener-closed", json!({"error": format!("{reason:?}")}));
                listeners = listeners.saturating_sub(1);
                if listeners == 0 {
                    return Ok(ExitCode::from(EXIT_SETUP));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_concrete_listening_addresses_are_handed_out() {
        let concrete: Multiaddr = "/ip4/203.0.113.1/tcp/4001".parse().unwrap();
        let any: Multiaddr = "/ip4/0.0.0.0/udp/4001/quic-v1".parse().unwrap();
        let any6: Multiaddr = "/ip6/::/tcp/4001".parse().unwrap();
        assert!(is_concrete(&concrete));
        assert!(!is_concrete(&any) && !is_concrete(&any6));
    }
}
