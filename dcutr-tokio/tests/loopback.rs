//! End to end on loopback: real sockets, real tokio, both roles.

mod common;

use std::time::Duration;

use common::*;
use dcutr_tokio::{Direct, Role, Side, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bounds every test: a broken upgrade fails instead of hanging.
const TEST_LIMIT: Duration = Duration::from_secs(30);

async fn upgrade_both(
    transport: Transport,
) -> (
    dcutr_tokio::Upgraded<tokio::net::TcpStream>,
    dcutr_tokio::Upgraded<tokio::net::TcpStream>,
) {
    init_tracing();
    let (b, _) = peer(Side::Initiator, transport, loopback_config());
    let (a, _) = peer(Side::Responder, transport, loopback_config());
    let (b, a) = upgrade_pair(b, a, TEST_LIMIT).await;
    (
        b.expect("initiator upgrades"),
        a.expect("responder upgrades"),
    )
}

async fn round_trip(client: &mut Direct, server: &mut Direct) {
    match (client, server) {
        (Direct::Tls(c), Direct::Tls(s)) => {
            c.write_all(b"ping from A").await.unwrap();
            let mut buf = [0u8; 11];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping from A");
            s.write_all(b"pong from B").await.unwrap();
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong from B");
        }
        (Direct::Tcp(c), Direct::Tcp(s)) => {
            c.write_all(b"ping from A").await.unwrap();
            let mut buf = [0u8; 11];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping from A");
            s.write_all(b"pong from B").await.unwrap();
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong from B");
        }
        (Direct::Quic(c), Direct::Quic(s)) => {
            let (mut send, mut recv) = c.open_bi().await.unwrap();
            send.write_all(b"ping from A").await.unwrap();
            send.finish().unwrap();
            let (mut s_send, mut s_recv) = s.accept_bi().await.unwrap();
            assert_eq!(s_recv.read_to_end(64).await.unwrap(), b"ping from A");
            s_send.write_all(b"pong from B").await.unwrap();
            s_send.finish().unwrap();
            assert_eq!(recv.read_to_end(64).await.unwrap(), b"pong from B");
        }
        _ => panic!("both sides must hold the same transport"),
    }
}

#[tokio::test]
async fn tcp_upgrade_carries_data_both_ways_in_the_spec_roles() {
    let (mut b, mut a) = upgrade_both(Transport::Tcp).await;
    assert_eq!((a.transport, b.transport), (Transport::Tcp, Transport::Tcp));
    assert_eq!((a.role, b.role), (Role::Client, Role::Server));
    assert_eq!(a.report.attempts(), 1);
    assert!(b.report.rtt().is_some(), "the initiator measured the RTT");
    round_trip(&mut a.connection, &mut b.connection).await;
}

#[tokio::test]
async fn quic_upgrade_carries_data_both_ways_in_the_spec_roles() {
    let (mut b, mut a) = upgrade_both(Transport::Quic).await;
    assert_eq!(
        (a.transport, b.transport),
        (Transport::Quic, Transport::Quic)
    );
    assert_eq!((a.role, b.role), (Role::Client, Role::Server));
    round_trip(&mut a.connection, &mut b.connection).await;
}

#[tokio::test]
async fn the_relayed_stream_is_released_after_the_grace_period() {
    let (b, a) = upgrade_both(Transport::Tcp).await;
    let grace = loopback_config().relay_grace_period;
    let close_at = b.relay_close_at;
    assert!(close_at >= b.report.timeline.decided().unwrap() + grace);
    // B releases its end at the deadline; A sees the end of the stream.
    let release = tokio::spawn(dcutr_tokio::close_relay_at(b.relay, close_at));
    let mut relay_a = a.relay;
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(TEST_LIMIT, relay_a.read(&mut buf))
        .await
        .expect("released in time")
        .unwrap();
    assert_eq!(n, 0, "end of stream");
    let seen_at = tokio::time::Instant::now().into_std();
    assert!(seen_at >= close_at, "not before the grace period ended");
    release.await.unwrap();
}

#[tokio::test]
async fn a_public_responder_is_dialled_directly_without_a_hole_punch() {
    init_tracing();
    for transport in [Transport::Tcp, Transport::Quic] {
        let (relay_b, relay_a) = relayed_pair().await;
        let (a, a_addr) = peer(Side::Responder, transport, loopback_config());
        let (b, _) = peer(Side::Initiator, transport, loopback_config());
        let a_public = dcutr_tokio::Candidate {
            transport,
            addr: a_addr,
        };
        let b = b.remote_public_addrs([a_public]);
        let (b, a) = tokio::time::timeout(TEST_LIMIT, async {
            tokio::join!(
                dcutr_tokio::upgrade(relay_b, b),
                dcutr_tokio::upgrade(relay_a, a)
            )
        })
        .await
        .unwrap();
        let (mut b, mut a) = (b.unwrap(), a.unwrap());
        assert!(
            b.report.unilateral() && a.report.unilateral(),
            "{transport}"
        );
        assert_eq!(b.report.attempts(), 0, "no hole punch ({transport})");
        // B dialled, so B is the client here.
        assert_eq!(
            (b.role, a.role),
            (Role::Client, Role::Server),
            "{transport}"
        );
        round_trip(&mut b.connection, &mut a.connection).await;
    }
}

#[tokio::test]
async fn callers_who_authenticate_themselves_get_plain_tcp_and_their_own_quic_tls() {
    init_tracing();
    for transport in [Transport::Tcp, Transport::Quic] {
        let (relay_b, relay_a) = relayed_pair().await;
        let side = |side: Side| {
            let options = dcutr_tokio::Options::new(side)
                .config(loopback_config())
                .caller_authenticates(true);
            let any = "127.0.0.1:0".parse().unwrap();
            match transport {
                Transport::Tcp => {
                    let listener = dcutr_tokio::tcp_listener(any).unwrap();
                    let addr = listener.local_addr().unwrap();
                    options
                        .local_addrs([dcutr_tokio::Candidate::tcp(addr)])
                        .tcp(listener)
                }
                Transport::Quic => {
                    let (server, client) = dcutr_tokio::insecure_self_signed_configs();
                    let socket = dcutr_tokio::udp_socket(any).unwrap();
                    let quic = dcutr_tokio::quic_socket_with_tls(socket, server, client).unwrap();
                    let addr = quic.local_addr().unwrap();
                    options
                        .local_addrs([dcutr_tokio::Candidate::quic(addr)])
                        .quic(quic)
                }
            }
        };
        let (b, a) = tokio::time::timeout(TEST_LIMIT, async {
            tokio::join!(
                dcutr_tokio::upgrade(relay_b, side(Side::Initiator)),
                dcutr_tokio::upgrade(relay_a, side(Side::Responder))
            )
        })
        .await
        .unwrap();
        let (mut b, mut a) = (b.unwrap(), a.unwrap());
        match transport {
            Transport::Tcp => assert!(
                matches!(a.connection, Direct::Tcp(_)),
                "no TLS of ours when the caller authenticates"
            ),
            Transport::Quic => assert!(matches!(a.connection, Direct::Quic(_))),
        }
        round_trip(&mut a.connection, &mut b.connection).await;
    }
}
