//! Failure paths over real sockets: unreachable peers, garbage, a relay
//! that drops, strangers on the punch port.

mod common;
mod strangers;

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
    let (options, _) = peer(Side::Responder, Transport::Tcp, loopback_config());
    upgrade_against_garbage(options).await;
}

#[tokio::test]
async fn a_relay_that_drops_mid_protocol_is_a_clean_error() {
    init_tracing();
    let (ours, mut theirs) = relayed_pair().await;
    let (options, _) = peer(Side::Initiator, Transport::Tcp, loopback_config());
    // The peer says Hello, then the relay drops the stream.
    let hello = encode_hello(3, Side::Responder, &[6; 32]);
    theirs.write_all(&hello).await.unwrap();
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
    // No priming: on loopback A's priming SYN reaches B's listener itself
    // (no NAT on the way to stop it) and would be a second stranger.
    let config = dcutr_core::Config {
        prime_ttl: None,
        ..loopback_config()
    };
    let (b, b_addr) = peer(Side::Initiator, Transport::Tcp, config.clone());
    let (b, rejected) = with_rejection_signal(b);
    let (a, a_addr) = peer(Side::Responder, Transport::Tcp, config);
    // The stranger connects first and sends 24 bytes that are no TLS handshake.
    let mut stranger = tokio::net::TcpStream::connect(b_addr).await.unwrap();
    stranger.write_all(&[0x42; 24]).await.unwrap();
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
    assert_eq!(b.report.timeline.inbound_rejected(), 1);
    // The stranger's connection was closed with at most a TLS alert: one
    // record of content type 21 (alert) whose body is two bytes.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(TEST_LIMIT, stranger.read_to_end(&mut got)).await;
    assert!(
        got.is_empty() || (got.len() == 7 && got[0] == 0x15 && got[3..5] == [0, 2]),
        "the stranger got more than an alert: {got:?}"
    );
}

#[tokio::test]
async fn a_quic_stranger_on_the_punch_port_is_refused_and_the_peer_still_wins() {
    init_tracing();
    let (relay_b, relay_a) = relayed_pair().await;
    let (b, b_addr) = peer(Side::Initiator, Transport::Quic, loopback_config());
    let reasons = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = reasons.clone();
    let b = b.on_event(move |event, _| {
        if let dcutr_tokio::Event::DirectRejected { reason, remote, .. } = event {
            seen.lock().unwrap().push((*reason, *remote));
        }
    });
    let (a, _) = peer(Side::Responder, Transport::Quic, loopback_config());
    // A stranger with a certificate of its own reaches B before A's Hello
    // (and so A's pin) has arrived: its handshake completes...
    let stranger = strangers::stranger_endpoint_with_certificate();
    let b = tokio::spawn(dcutr_tokio::upgrade(relay_b, b));
    let conn = strangers::connect(&stranger, b_addr, TEST_LIMIT)
        .await
        .expect("the stranger's handshake completes while B has no pin");
    let stranger_addr = stranger.local_addr().unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(&[0x42; 24]).await;
    // ...but once A's Hello pins A's certificate, B refuses it.
    let a = dcutr_tokio::upgrade(relay_a, a);
    let (b, a) = tokio::time::timeout(TEST_LIMIT, async { tokio::join!(b, a) })
        .await
        .unwrap();
    let (b, a) = (b.unwrap().expect("B upgrades"), a.expect("A upgrades"));
    assert_eq!((a.role, b.role), (Role::Client, Role::Server));
    assert!(matches!(b.connection, Direct::Quic(_)));
    assert_eq!(
        reasons.lock().unwrap().as_slice(),
        [(
            dcutr_core::reason::DirectRejection::IdentityMismatch,
            stranger_addr
        )],
        "B refused the stranger for its certificate"
    );
    assert_eq!(b.report.timeline.inbound_rejected(), 1);
    // B answered nothing and closed the stranger's connection.
    let answer = tokio::time::timeout(TEST_LIMIT, recv.read_to_end(64))
        .await
        .unwrap();
    assert!(answer.map(|a| a.is_empty()).unwrap_or(true));
}

#[tokio::test]
async fn a_hello_that_pins_another_certificate_than_the_authenticated_one_fails_at_once() {
    init_tracing();
    let (ours, mut theirs) = relayed_pair().await;
    let (options, _) = peer(Side::Initiator, Transport::Tcp, loopback_config());
    // The caller learnt the peer's fingerprint over its own authenticated
    // channel; the relay hands us a Hello with another one.
    let options = options.peer_fingerprint([7; 32]);
    let hello = encode_hello(3, Side::Responder, &[8; 32]);
    theirs.write_all(&hello).await.unwrap();
    let error = tokio::time::timeout(TEST_LIMIT, dcutr_tokio::upgrade(ours, options))
        .await
        .unwrap()
        .expect_err("a swapped fingerprint cannot upgrade");
    assert!(
        matches!(error.reason, UpgradeFailure::FingerprintMismatch),
        "{:?}",
        error.reason
    );
    assert!(
        error.relay.is_none(),
        "the tampered stream is not handed back"
    );
    assert!(
        error.report.timeline.dials().is_empty(),
        "nothing was dialled"
    );
}

/// `caller_authenticates` with a pinned identity or peer fingerprint is a
/// typed error before anything is sent: neither setting is dropped.
#[tokio::test]
async fn caller_authenticates_with_a_pin_is_refused_before_anything_is_sent() {
    init_tracing();
    for pin in ["identity", "peer_fingerprint"] {
        let (ours, _theirs) = relayed_pair().await;
        let (options, _) = peer(Side::Responder, Transport::Tcp, loopback_config());
        let options = options.caller_authenticates(true);
        let options = match pin {
            "identity" => options.identity(dcutr_driver::Identity::generate().unwrap()),
            _ => options.peer_fingerprint([7; 32]),
        };
        let error = tokio::time::timeout(TEST_LIMIT, dcutr_tokio::upgrade(ours, options))
            .await
            .unwrap()
            .expect_err("contradicting options");
        assert!(
            matches!(error.reason, UpgradeFailure::CallerAuthenticatesWithPin),
            "{pin}: {:?}",
            error.reason
        );
        assert!(
            error.relay.is_some(),
            "{pin}: the relayed stream comes back"
        );
        assert!(error.report.timeline.dials().is_empty(), "{pin}");
    }
}

/// A config whose `dialable` allows none of the sockets given is a typed
/// error before anything is sent, not a silent replacement.
#[tokio::test]
async fn a_dialable_that_allows_none_of_the_sockets_is_a_config_error() {
    init_tracing();
    let (ours, _theirs) = relayed_pair().await;
    let mut config = loopback_config();
    config.dialable = dcutr_core::Dialable::none().with(Transport::Quic, false);
    let (options, _) = peer(Side::Responder, Transport::Tcp, config);
    let error = tokio::time::timeout(TEST_LIMIT, dcutr_tokio::upgrade(ours, options))
        .await
        .unwrap()
        .expect_err("no socket is allowed");
    match error.reason {
        UpgradeFailure::Config(dcutr_core::ConfigError::OutOfRange { field, .. }) => {
            assert_eq!(field, "dialable");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        error.relay.is_some(),
        "the relayed stream comes back untouched"
    );
}
