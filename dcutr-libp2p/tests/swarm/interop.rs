//! Interop on the wire with stock `libp2p-dcutr`, over loopback TCP and
//! loopback QUIC through a `libp2p-relay` relay: each case asserts a direct
//! (not relayed) `ConnectionEstablished` between the two peers, our success
//! event naming that connection, and data echoed over exactly that
//! connection.
//!
//! Over QUIC our B punches as the spec says (libp2p-quic sprays from its
//! listening socket and accepts A's connection), while stock B dials as a
//! QUIC client; on loopback every dial also simply connects, so the mixed
//! pairs show that the two QUIC behaviours meet, not that they punch.
//!
//! The unilateral dial is switched off where ours is B: on loopback A's
//! advertised listening address is reachable, so B would connect directly
//! and never hole punch (that path has its own test in `better.rs`).

use crate::common::{
    Dcutr, Net, Pair, Seen, Who, build_client_on, init_tracing, loopback_config, setup_on,
};
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::swarm::ConnectionId;

/// Asserts our success on `who` names a direct connection, then echoes
/// over it.
async fn assert_direct_and_echo(pair: &mut Pair, seen: &mut Seen, who: Who) -> ConnectionId {
    pair.run_until(seen, "our success on a direct connection", |s| {
        s.ours_ok(who).is_some_and(|c| s.is_direct(who, c))
    })
    .await;
    let conn = seen.ours_ok(who).expect("checked above");
    assert!(
        !seen.relayed.iter().any(|(w, c)| *w == who && *c == conn),
        "the reported connection must not be the relayed one"
    );
    let payload = format!("hello over {conn} from {who:?}").into_bytes();
    let peer = pair.peer(who);
    pair.swarm(who)
        .behaviour_mut()
        .echo
        .send(peer, conn, payload.clone());
    pair.run_until(seen, "the echo over the direct connection", |s| {
        s.echo_on(who, conn).is_some()
    })
    .await;
    assert_eq!(seen.echo_on(who, conn), Some(payload.as_slice()));
    conn
}

#[tokio::test]
async fn stock_dcutr_as_b_and_ours_as_a_reach_a_direct_connection() {
    stock_b_ours_a(Net::Tcp).await;
}

#[tokio::test]
async fn quic_stock_dcutr_as_b_and_ours_as_a_reach_a_direct_connection() {
    stock_b_ours_a(Net::Quic).await;
}

async fn stock_b_ours_a(net: Net) {
    init_tracing();
    // Ours declares its NAT in Connect: stock must skip the extension.
    let a = build_client_on(
        net,
        Dcutr::Ours(loopback_config().with_nat_behaviour(cone())),
    );
    let b = build_client_on(net, Dcutr::Stock);
    let mut pair = setup_on(net, a, b).await;
    pair.dial_relayed();
    let mut seen = Seen::default();
    let conn = assert_direct_and_echo(&mut pair, &mut seen, Who::A).await;
    // A is the spec's A: the client on the direct connection. Over QUIC
    // stock B (libp2p-quic 0.14) dials as a QUIC client too, so on loopback
    // both dials connect and A may report B's connection if it came first.
    if net == Net::Tcp {
        assert!(dialer_role(&seen, Who::A, conn), "{seen:#?}");
    }
    // B's listening socket accepted A's dial. Stock only reports
    // connections it dialled itself, so stock B never reports this one
    // (ours does; see the next test).
    for (_, inbound, _) in seen
        .direct
        .iter()
        .filter(|(w, _, e)| *w == Who::B && e.is_listener())
    {
        assert_ne!(seen.stock_ok(Who::B), Some(*inbound));
    }
    assert!(matches!(
        seen.ours_outcome(Who::A),
        Some(crate::common::ours::Report::Outcome {
            side: dcutr_core::Side::Responder,
            ..
        })
    ));
}

#[tokio::test]
async fn ours_as_b_and_stock_dcutr_as_a_reach_a_direct_connection() {
    ours_b_stock_a(Net::Tcp).await;
}

#[tokio::test]
async fn quic_ours_as_b_and_stock_dcutr_as_a_reach_a_direct_connection() {
    ours_b_stock_a(Net::Quic).await;
}

async fn ours_b_stock_a(net: Net) {
    init_tracing();
    let a = build_client_on(net, Dcutr::Stock);
    let b = build_client_on(
        net,
        Dcutr::Ours(
            loopback_config()
                .with_unilateral(false)
                .with_nat_behaviour(cone()),
        ),
    );
    let mut pair = setup_on(net, a, b).await;
    pair.dial_relayed();
    let mut seen = Seen::default();
    let conn = assert_direct_and_echo(&mut pair, &mut seen, Who::B).await;
    assert!(matches!(
        seen.ours_outcome(Who::B),
        Some(crate::common::ours::Report::Outcome {
            side: dcutr_core::Side::Initiator,
            ..
        })
    ));
    // Stock A reports its own dial; it is a direct connection too.
    pair.run_until(&mut seen, "stock A's success", |s| {
        s.stock_ok(Who::A).is_some()
    })
    .await;
    let stock_conn = seen.stock_ok(Who::A).unwrap();
    assert!(seen.is_direct(Who::A, stock_conn));
    // B is the spec's B: the server on the direct connection, unless its
    // QUIC client fallback won (its swarm busy past the fallback's wait).
    assert!(
        !dialer_role(&seen, Who::B, conn) || quic_client_fallback(&seen, net, Who::B, conn),
        "{seen:#?}"
    );
}

#[tokio::test]
async fn ours_against_ours_reach_a_direct_connection_and_both_report_it() {
    ours_against_ours(Net::Tcp).await;
}

#[tokio::test]
async fn quic_ours_against_ours_reach_a_direct_connection_and_both_report_it() {
    ours_against_ours(Net::Quic).await;
}

async fn ours_against_ours(net: Net) {
    init_tracing();
    let a = build_client_on(net, Dcutr::Ours(loopback_config()));
    let b = build_client_on(net, Dcutr::Ours(loopback_config().with_unilateral(false)));
    let mut pair = setup_on(net, a, b).await;
    pair.dial_relayed();
    let mut seen = Seen::default();
    let on_a = assert_direct_and_echo(&mut pair, &mut seen, Who::A).await;
    let on_b = assert_direct_and_echo(&mut pair, &mut seen, Who::B).await;
    // The spec's roles on top of the direct connection: A is the client
    // (dialer), B the server (listener): either B's listening socket
    // accepted A's dial, or B's own dial carried `override_role()`.
    let fallback_won = quic_client_fallback(&seen, net, Who::B, on_b);
    assert!(
        dialer_role(&seen, Who::A, on_a) || fallback_won,
        "{seen:#?}"
    );
    assert!(
        !dialer_role(&seen, Who::B, on_b) || fallback_won,
        "{seen:#?}"
    );
    if net == Net::Quic {
        // The spec's QUIC punch: B's listening socket sprays and accepts
        // A's connection. B's listener takes A's connection as the result
        // of B's own dial, or, when A's first packet beats B's dial on
        // loopback, as a plain inbound connection. B dials as a client
        // only in its QUIC client fallback, once, when that punch was not
        // up after the fallback's wait (on loopback only when the test
        // machine is slow): then B has that one connection more.
        let on_b_all: Vec<_> = seen.direct.iter().filter(|(w, ..)| *w == Who::B).collect();
        let (server, client): (Vec<_>, Vec<_>) =
            on_b_all.into_iter().partition(|(.., endpoint)| {
                matches!(
                    endpoint,
                    ConnectedPoint::Dialer {
                        role_override: Endpoint::Listener,
                        port_use: PortUse::New,
                        ..
                    } | ConnectedPoint::Listener { .. }
                )
            });
        assert!(server.len() <= 1, "{seen:#?}");
        assert!(client.len() <= 1, "{seen:#?}");
        assert!(
            client
                .iter()
                .all(|(_, c, _)| quic_client_fallback(&seen, net, Who::B, *c)),
            "{seen:#?}"
        );
        if fallback_won {
            assert_eq!(client.len(), 1, "{seen:#?}");
        } else {
            assert_eq!(server.len(), 1, "{seen:#?}");
        }
    }
}

/// Whether `id` on `who` is a QUIC dial as a client from the listening
/// port: what our B's QUIC client fallback makes.
fn quic_client_fallback(seen: &Seen, net: Net, who: Who, id: ConnectionId) -> bool {
    net == Net::Quic
        && seen.direct.iter().any(|(w, c, endpoint)| {
            *w == who
                && *c == id
                && matches!(
                    endpoint,
                    ConnectedPoint::Dialer {
                        role_override: Endpoint::Dialer,
                        port_use: PortUse::Reuse,
                        ..
                    }
                )
        })
}

/// Whether `who` is the dialer for security and muxer negotiation on `id`.
fn dialer_role(seen: &Seen, who: Who, id: ConnectionId) -> bool {
    let (_, _, endpoint) = seen
        .direct
        .iter()
        .find(|(w, c, _)| *w == who && *c == id)
        .expect("a direct connection");
    matches!(
        endpoint,
        ConnectedPoint::Dialer {
            role_override: Endpoint::Dialer,
            ..
        }
    )
}

/// A declared endpoint-independent NAT, as discovery would report a cone.
fn cone() -> dcutr_core::nat::NatBehaviour {
    use dcutr_core::nat::{Allocation, Filtering, Mapping, NatBehaviour};
    NatBehaviour::declared(
        Mapping::EndpointIndependent,
        Allocation::Preserving,
        Filtering::AddressAndPortDependent,
        "127.0.0.1:0".parse().unwrap(),
    )
}
