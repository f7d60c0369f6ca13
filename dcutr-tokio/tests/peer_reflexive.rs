//! Peer-reflexive learning over loopback: the initiator (the QUIC server)
//! advertises an address where nothing answers, as a symmetric NAT's
//! mapping towards the relay would be, and sprays from its real socket.
//! The responder learns that socket's address from the spray and dials
//! it, but only when its IP is one the initiator named.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use dcutr_tokio::{Candidate, Config, Options, Side, Transport};

/// Bounds every test: a broken upgrade fails instead of hanging.
const TEST_LIMIT: Duration = Duration::from_secs(30);

/// A UDP socket on `ip` that never answers (kept open so that no ICMP
/// "port unreachable" ends the dial early): what the peer's symmetric NAT
/// does with a packet to its relay mapping from a new source.
fn silent(ip: &str) -> UdpSocket {
    UdpSocket::bind(format!("{ip}:0")).unwrap()
}

/// The initiator: a QUIC endpoint on 127.0.0.1 that advertises `advertised`.
fn initiator(config: Config, advertised: SocketAddr) -> (Options, SocketAddr) {
    let socket = dcutr_tokio::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let quic = dcutr_tokio::quic_socket(socket).unwrap();
    let real = quic.local_addr().unwrap();
    let options = Options::new(Side::Initiator)
        .config(config)
        .local_addrs([Candidate::quic(advertised)])
        .quic(quic);
    (options, real)
}

#[tokio::test]
async fn the_responder_dials_the_spray_source_its_peer_never_advertised() {
    init_tracing();
    let hole = silent("127.0.0.1");
    let (b, b_real) = initiator(loopback_config(), hole.local_addr().unwrap());
    let (a, _) = peer(Side::Responder, Transport::Quic, loopback_config());
    let (b, a) = upgrade_pair(b, a, TEST_LIMIT).await;
    let (b, a) = (
        b.expect("initiator upgrades"),
        a.expect("responder upgrades"),
    );
    assert_eq!(
        (a.transport, b.transport),
        (Transport::Quic, Transport::Quic)
    );
    assert_eq!(a.remote, b_real, "A reached B's real socket");
    assert_eq!(a.report.attempts(), 1);
    let dials = a.report.timeline.dials();
    let learnt: Vec<_> = dials.iter().filter(|d| d.is_peer_reflexive()).collect();
    assert_eq!(learnt.len(), 1, "one peer-reflexive dial: {dials:?}");
    assert_eq!(learnt[0].to(), Candidate::quic(b_real));
    assert_eq!(
        learnt[0].result(),
        Some(dcutr_core::record::DialResult::Won),
        "{dials:?}"
    );
    assert!(
        dials.iter().any(
            |d| d.to() == Candidate::quic(hole.local_addr().unwrap()) && !d.is_peer_reflexive()
        ),
        "A dialled the advertised address too: {dials:?}"
    );
}

#[tokio::test]
async fn a_spray_from_an_ip_the_peer_did_not_name_is_not_dialled() {
    init_tracing();
    // B names 127.0.0.2 but sprays from 127.0.0.1: a stranger's IP as
    // far as A can tell.
    let hole = silent("127.0.0.2");
    let config = Config {
        max_attempts: 1,
        ..loopback_config()
    };
    let (b, b_real) = initiator(config.clone(), hole.local_addr().unwrap());
    let (a, _) = peer(Side::Responder, Transport::Quic, config);
    let (b, a) = upgrade_pair(b, a, TEST_LIMIT).await;
    let a = a.expect_err("nothing answers at the named address");
    b.expect_err("and B's spray alone makes no connection");
    let dials = a.report.timeline.dials();
    assert!(
        dials
            .iter()
            .all(|d| !d.is_peer_reflexive() && d.to() != Candidate::quic(b_real)),
        "{dials:?}"
    );
    assert!(
        a.report.timeline.peer_reflexive_refused() >= 1,
        "the spray arrived and was refused"
    );
}
