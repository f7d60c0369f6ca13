//! The slot attack on the QUIC punch port: half-open Initials (from
//! sources that never answer, as forged ones would) and silent connections
//! that never start the identity check fill every pending slot before the
//! real peer arrives. The real peer must still upgrade.

mod common;
mod strangers;

use std::time::Duration;

use common::*;
use dcutr_tokio::{Direct, Side, Transport};
use strangers::*;

const TEST_LIMIT: Duration = Duration::from_secs(30);

/// Half-open Initials and silent connections: each as many as there are
/// pending slots.
const HALF_OPEN: usize = 8;
const SILENT: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_and_silent_strangers_do_not_keep_the_peer_out() {
    init_tracing();
    let config = loopback_config();
    assert_eq!(
        config.max_pending_inbound, SILENT,
        "the attack fills every slot"
    );
    let (relay_b, relay_a) = relayed_pair().await;
    let (b, b_addr) = peer(Side::Initiator, Transport::Quic, config.clone());
    let (a, a_addr) = peer(Side::Responder, Transport::Quic, config.clone());
    let b = tokio::spawn(dcutr_tokio::upgrade(relay_b, b));

    // Half-open Initials, each from its own socket that never answers.
    let mut dead_sources = Vec::new();
    for _ in 0..HALF_OPEN {
        let initial = captured_initial().await;
        let source = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        source.send_to(&initial, b_addr).await.unwrap();
        dead_sources.push(source);
    }
    // Silent connections: the handshake completes (each stranger has a
    // certificate, and B no pin yet), no stream ever opens.
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        let endpoint = stranger_endpoint_with_certificate();
        let conn = connect(&endpoint, b_addr, Duration::from_secs(5)).await;
        silent.push((endpoint, conn));
    }
    let connected = silent.iter().filter(|(_, c)| c.is_some()).count();
    assert_eq!(connected, SILENT, "every silent stranger got in first");
    // Let B take them all in before the peer shows up.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = tokio::time::Instant::now();
    let a = dcutr_tokio::upgrade(relay_a, a);
    let (b, a) = tokio::time::timeout(TEST_LIMIT, async { tokio::join!(b, a) })
        .await
        .expect("both upgrades end");
    let elapsed = started.elapsed();
    let (b, a) = (b.unwrap().expect("B upgrades"), a.expect("A upgrades"));
    assert_eq!(b.remote, a_addr, "B kept the real peer");
    assert_eq!(a.remote, b_addr);
    assert!(matches!(b.connection, Direct::Quic(_)));
    assert_eq!(
        b.report.timeline.attempts().len(),
        1,
        "the first attempt went through"
    );
    // The strangers did not time out of their slots: one was made room for.
    assert!(
        elapsed < config.confirm_timeout,
        "the peer got in after {elapsed:?}, while the strangers still held their slots"
    );
    let evicted = silent
        .iter()
        .filter_map(|(_, c)| c.as_ref())
        .filter(|c| c.close_reason().is_some())
        .count();
    assert!(evicted >= 1, "a stranger made room for the peer");
    drop(dead_sources);
}

/// Bytes written on each stream after the upgrade: more than the whole
/// connection may carry before the check.
const AFTER_CHECK_BYTES: usize = 4 * dcutr_driver::quic::PUNCH_RECEIVE_WINDOW as usize;

/// Streams each side opens after the upgrade: more than the check allows.
const AFTER_CHECK_STREAMS: usize = 4;

/// Opens streams on `from` and sends `AFTER_CHECK_BYTES` on each; `to`
/// reads them all.
async fn streams_flow(from: &quinn::Connection, to: &quinn::Connection) {
    let data = vec![7u8; AFTER_CHECK_BYTES];
    let send = async {
        let mut sends = Vec::new();
        for _ in 0..AFTER_CHECK_STREAMS {
            let (mut s, r) = from.open_bi().await.unwrap();
            s.write_all(&data).await.unwrap();
            s.finish().unwrap();
            sends.push((s, r));
        }
        let mut u = from.open_uni().await.unwrap();
        u.write_all(&data).await.unwrap();
        u.finish().unwrap();
        for (s, _) in sends {
            let _ = s.stopped().await;
        }
        let _ = u.stopped().await;
    };
    let receive = async {
        for _ in 0..AFTER_CHECK_STREAMS {
            let (_s, mut r) = to.accept_bi().await.unwrap();
            let got = r.read_to_end(AFTER_CHECK_BYTES).await.unwrap();
            assert_eq!(got.len(), AFTER_CHECK_BYTES);
        }
        let mut u = to.accept_uni().await.unwrap();
        assert_eq!(
            u.read_to_end(AFTER_CHECK_BYTES).await.unwrap().len(),
            AFTER_CHECK_BYTES
        );
    };
    tokio::join!(send, receive);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_winning_connection_gets_the_application_limits() {
    init_tracing();
    let (b, _) = peer(Side::Initiator, Transport::Quic, loopback_config());
    let (a, _) = peer(Side::Responder, Transport::Quic, loopback_config());
    let (b, a) = upgrade_pair(b, a, TEST_LIMIT).await;
    let (Direct::Quic(b), Direct::Quic(a)) = (b.unwrap().connection, a.unwrap().connection) else {
        panic!("QUIC on both sides");
    };
    // Both ways: each side raised what the other may open and send.
    tokio::time::timeout(TEST_LIMIT, async {
        streams_flow(&a, &b).await;
        streams_flow(&b, &a).await;
    })
    .await
    .expect("streams and bytes beyond the punch limits flow after the upgrade");
}
