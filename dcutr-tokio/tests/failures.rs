//! Failure paths over real sockets: unreachable peers, garbage, a relay
//! that drops, strangers on the punch port.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use dcutr_core::wire::encode_hello;
use dcutr_tokio::{
    AttemptFailure, Candidate, Direct, Failure, Options, Role, Side, Transport, UpgradeFailure,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEST_LIMIT: Duration = Duration::from_secs(60);

/// A loopback port with nothing listening on it.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A peer that punches from a real listener but advertises a closed port.
fn peer_with_closed_address(side: Side) -> Options {
    let listener = dcutr_tokio::tcp_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    Options::new(side)
        .config(loopback_config())
        .local_addrs([Candidate::tcp(closed_port())])
        .tcp(listener)
}

#[tokio::test]
async fn unreachable_addresses_fail_after_three_attempts_and_the_relay_stays_usable() {
    init_tracing();
    let (relay_b, relay_a) = relayed_pair().await;
    let started = tokio::time::Instant::now();
    let (b, a) = tokio::time::timeout(TEST_LIMIT, async {
        tokio::join!(
            dcutr_tokio::upgrade(relay_b, peer_with_closed_address(Side::Initiator)),
            dcutr_tokio::upgrade(relay_a, peer_with_closed_address(Side::Responder)),
        )
    })
    .await
    .expect("both give up in time");
    let elapsed = started.elapsed();
    for (name, result) in [("B", &b), ("A", &a)] {
        let error = result.as_ref().expect_err("no direct connection");
        let UpgradeFailure::Failed(Failure::AllAttemptsFailed { attempts }) = &error.reason else {
            panic!("{name}: {:?}", error.reason);
        };
        assert_eq!(attempts.len(), 3, "{name}");
        assert!(
            attempts
                .iter()
                .all(|a| matches!(a, AttemptFailure::AllDialsFailed { .. })),
            "{name}: every dial was refused: {attempts:?}"
        );
    }
    // Three exchanges on loopback and refused dials: well under the
    // configured bound of 3 x (step timeout + direct timeout).
    let config = loopback_config();
    assert!(elapsed < 3 * (config.step_timeout + config.direct_timeout));
    // The relayed stream is handed back, clean, to the application.
    let mut relay_b = b.unwrap_err().relay.expect("relay returned");
    let mut relay_a = a.unwrap_err().relay.expect("relay returned");
    relay_b.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    relay_a.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
}

#[tokio::test]
async fn garbage_from_the_peer_is_a_protocol_error() {
    init_tracing();
    let (ours, mut theirs) = relayed_pair().await;
    let (options, _) = peer(Side::Responder, Transport::Tcp, loopback_config());
    theirs.write_all(&[0xff; 64]).await.unwrap();
    let error = tokio::time::timeout(TEST_LIMIT, dcutr_tokio::upgrade(ours, options))
        .await
        .unwrap()
        .expect_err("garbage cannot upgrade");
    assert!(
        matches!(error.reason, UpgradeFailure::Failed(Failure::Protocol(_))),
        "{:?}",
        error.reason
    );
}

#[tokio::test]
async fn a_relay_that_drops_mid_protocol_is_a_clean_error() {
    init_tracing();
    let (ours, mut theirs) = relayed_pair().await;
    let (options, _) = peer(Side::Initiator, Transport::Tcp, loopback_config());
    // The peer says Hello, then the relay drops the stream.
    theirs.write_all(&encode_hello(&[5; 16], 3)).await.unwrap();
    drop(theirs);
    let error = tokio::time::timeout(TEST_LIMIT, dcutr_tokio::upgrade(ours, options))
        .await
        .unwrap()
        .expect_err("no relay, no upgrade");
    assert!(
        matches!(
            error.reason,
            UpgradeFailure::Failed(Failure::RelayClosed { .. })
        ),
        "{:?}",
        error.reason
    );
}

/// B's options with a signal that fires when B rejects a direct
/// connection, so a test can let the real peer in only afterwards.
fn with_rejection_signal(options: Options) -> (Options, tokio::sync::oneshot::Receiver<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let options = options.on_event(move |event, _| {
        if matches!(event, dcutr_tokio::Event::DirectRejected { .. })
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(());
        }
    });
    (options, rx)
}

#[tokio::test]
async fn a_tcp_stranger_on_the_punch_port_is_refused_and_the_peer_still_wins() {
    init_tracing();
    let (relay_b, relay_a) = relayed_pair().await;
    let (b, b_addr) = peer(Side::Initiator, Transport::Tcp, loopback_config());
    let (b, rejected) = with_rejection_signal(b);
    let (a, a_addr) = peer(Side::Responder, Transport::Tcp, loopback_config());
    // The stranger connects first and sends what looks like a check.
    let mut stranger = tokio::net::TcpStream::connect(b_addr).await.unwrap();
    stranger
        .write_all(&[0x42; dcutr_core::settings::CHECK_LEN])
        .await
        .unwrap();
    let b = tokio::spawn(dcutr_tokio::upgrade(relay_b, b));
    // Only once B has thrown the stranger out does A start.
    tokio::time::timeout(TEST_LIMIT, rejected)
        .await
        .unwrap()
        .unwrap();
    let a = dcutr_tokio::upgrade(relay_a, a);
    let (b, a) = tokio::time::timeout(TEST_LIMIT, async { tokio::join!(b, a) })
        .await
        .unwrap();
    let (b, a) = (b.unwrap().expect("B upgrades"), a.expect("A upgrades"));
    assert_eq!(b.remote, a_addr, "B kept the real peer");
    assert_eq!(a.remote, b_addr);
    assert_eq!(b.report.timeline.inbound_rejected, 1);
    // The stranger's connection was closed without a word.
    let mut buf = [0u8; 64];
    let n = stranger.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "nothing sent to the stranger");
}

#[tokio::test]
async fn a_quic_stranger_on_the_punch_port_is_refused_and_the_peer_still_wins() {
    init_tracing();
    let (relay_b, relay_a) = relayed_pair().await;
    let (b, b_addr) = peer(Side::Initiator, Transport::Quic, loopback_config());
    let (b, rejected) = with_rejection_signal(b);
    let (a, _) = peer(Side::Responder, Transport::Quic, loopback_config());
    let stranger = {
        let socket = dcutr_tokio::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let (server, client) = dcutr_tokio::self_signed_configs();
        dcutr_tokio::quic_socket(socket, server, client).unwrap()
    };
    let b = tokio::spawn(dcutr_tokio::upgrade(relay_b, b));
    let conn = stranger
        .endpoint
        .connect_with(
            stranger.client_config.clone(),
            b_addr,
            dcutr_tokio::SERVER_NAME,
        )
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0x42; dcutr_core::settings::CHECK_LEN])
        .await
        .unwrap();
    tokio::time::timeout(TEST_LIMIT, rejected)
        .await
        .unwrap()
        .unwrap();
    // B answered nothing and closed the stranger's connection.
    let answer = recv.read_to_end(64).await;
    assert!(answer.map(|a| a.is_empty()).unwrap_or(true));
    let a = dcutr_tokio::upgrade(relay_a, a);
    let (b, a) = tokio::time::timeout(TEST_LIMIT, async { tokio::join!(b, a) })
        .await
        .unwrap();
    let (b, a) = (b.unwrap().expect("B upgrades"), a.expect("A upgrades"));
    assert_eq!((a.role, b.role), (Role::Client, Role::Server));
    assert!(matches!(b.connection, Direct::Quic(_)));
    assert_eq!(b.report.timeline.inbound_rejected, 1);
}
