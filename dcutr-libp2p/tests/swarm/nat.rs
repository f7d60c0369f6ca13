//! NAT behaviour from identify (`Behaviour::observe_identify`): the
//! classification travels in Connect, and two endpoint-dependent peers
//! fail at once on both sides.
//!
//! On loopback there is no NAT, so each client connects to two extra
//! identify peers (the observers) and hands the behaviour, for each
//! observer's real connection, a mapped address that differs per observer:
//! what two observers report of a symmetric NAT.

use dcutr_core::nat::{Allocation, Mapping};
use dcutr_core::{AttemptFailure, Failure};
use futures::StreamExt;
use libp2p::core::multiaddr::Protocol;
use libp2p::identify;
use libp2p::swarm::{Swarm, SwarmEvent};

use crate::common::{
    Client, ClientEvent, Dcutr, Net, Pair, Seen, Who, build_client_on, build_relay, init_tracing,
    listen, loopback_config, ours, setup_on,
};

/// Starts an identify peer (a relay swarm, which runs identify) on
/// loopback; returns its address with `/p2p/`.
async fn observer(net: Net) -> libp2p::Multiaddr {
    let mut swarm = build_relay(net);
    let addr = listen(&mut swarm, net).await;
    let id = *swarm.local_peer_id();
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    addr.with(Protocol::P2p(id))
}

/// The mapped address a symmetric NAT would show the `n`th observer.
fn mapped(net: Net, n: u16) -> libp2p::Multiaddr {
    let port = 40_000 + 17 * n;
    match net {
        Net::Tcp => format!("/ip4/127.0.0.1/tcp/{port}"),
        Net::Quic => format!("/ip4/127.0.0.1/udp/{port}/quic-v1"),
    }
    .parse()
    .unwrap()
}

/// Connects `swarm` to two observers and feeds what each "saw" to ours.
async fn observed_as_symmetric(
    swarm: &mut Swarm<Client>,
    net: Net,
) -> ours::core::nat::NatBehaviour {
    let observers = [observer(net).await, observer(net).await];
    for o in &observers {
        swarm.dial(o.clone()).unwrap();
    }
    let mut fed = 0;
    let mut last = None;
    let deadline = tokio::time::Instant::now() + crate::common::TEST_TIMEOUT;
    while fed < observers.len() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .expect("identify from both observers in time");
        if let SwarmEvent::Behaviour(ClientEvent::Identify(identify::Event::Received {
            connection_id,
            peer_id,
            ..
        })) = event
        {
            let Some(n) = observers
                .iter()
                .position(|o| o.iter().last() == Some(Protocol::P2p(peer_id)))
            else {
                continue;
            };
            let ours = swarm.behaviour_mut().ours.as_mut().unwrap();
            let fake = mapped(net, u16::try_from(n).unwrap());
            last = Some(ours.observe_identify(connection_id, &fake).unwrap());
            fed += 1;
        }
    }
    last.unwrap()
}

/// The failure of every attempt, whatever ended the upgrade.
fn attempts(error: &ours::Error) -> &[AttemptFailure] {
    match error {
        ours::Error::Failed(
            Failure::AllAttemptsFailed { attempts }
            | Failure::GaveUp { attempts }
            | Failure::PeerGaveUp { attempts },
        ) => attempts,
        other => panic!("not an attempt failure: {other:?}"),
    }
}

#[tokio::test]
async fn two_peers_observed_as_symmetric_fail_at_once_on_both_sides() {
    symmetric_pair(Net::Tcp).await;
}

#[tokio::test]
async fn quic_two_peers_observed_as_symmetric_fail_at_once_on_both_sides() {
    symmetric_pair(Net::Quic).await;
}

async fn symmetric_pair(net: Net) {
    init_tracing();
    let a = build_client_on(net, Dcutr::Ours(loopback_config()));
    let b = build_client_on(net, Dcutr::Ours(loopback_config().with_unilateral(false)));
    let mut pair: Pair = setup_on(net, a, b).await;
    for who in [Who::A, Who::B] {
        let nat = observed_as_symmetric(pair.swarm(who), net).await;
        assert_eq!(nat.mapping, Mapping::EndpointDependent);
        let declared = pair
            .swarm(who)
            .behaviour()
            .ours
            .as_ref()
            .unwrap()
            .nat_behaviour();
        assert_eq!(
            declared.map(|d| d.mapping),
            Some(Mapping::EndpointDependent)
        );
    }
    pair.dial_relayed();
    let mut seen = Seen::default();
    pair.run_until(&mut seen, "both sides' failure", |s| {
        s.ours_err(Who::A).is_some() && s.ours_err(Who::B).is_some()
    })
    .await;
    for who in [Who::A, Who::B] {
        let tried = attempts(seen.ours_err(who).unwrap());
        // One attempt, ended by the two behaviours: A only knows B's from
        // B's Connect, and B only knows A's from A's.
        assert_eq!(tried.len(), 1, "{who:?}: {tried:?}");
        assert_eq!(
            tried[0],
            AttemptFailure::NatsCannotMeet {
                ours: Allocation::Unknown,
                peer: Allocation::Unknown,
            },
            "{who:?}"
        );
    }
    assert!(seen.direct.is_empty(), "no punch was tried: {seen:#?}");
}

#[tokio::test]
async fn one_peer_observed_as_symmetric_still_punches() {
    init_tracing();
    let net = Net::Tcp;
    let a = build_client_on(net, Dcutr::Ours(loopback_config()));
    let b = build_client_on(net, Dcutr::Ours(loopback_config().with_unilateral(false)));
    let mut pair = setup_on(net, a, b).await;
    observed_as_symmetric(pair.swarm(Who::B), net).await;
    assert_eq!(
        pair.swarm(Who::A)
            .behaviour()
            .ours
            .as_ref()
            .unwrap()
            .nat_behaviour(),
        None
    );
    pair.dial_relayed();
    let mut seen = Seen::default();
    pair.run_until(&mut seen, "both sides' outcome", |s| {
        s.ours_outcome(Who::A).is_some() && s.ours_outcome(Who::B).is_some()
    })
    .await;
    assert!(seen.ours_ok(Who::A).is_some(), "{seen:#?}");
    assert!(seen.ours_ok(Who::B).is_some(), "{seen:#?}");
}
