//! The process-wide guard in front of standalone upgrades, over real
//! loopback sockets: one upgrade per named peer at a time, and a cooldown
//! after a failed one, each refused before anything is sent.

mod common;

use std::time::Duration;

use common::*;
use dcutr_tokio::{Side, Transport, UpgradeFailure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEST_LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_second_upgrade_with_a_running_peer_is_refused_and_sends_nothing() {
    init_tracing();
    // The first upgrade's peer stays silent, so it keeps running.
    let (first_relay, _silent) = relayed_pair().await;
    let (options, _) = peer(Side::Responder, Transport::Tcp, loopback_config());
    let first = tokio::spawn(dcutr_tokio::upgrade(first_relay, options.peer("carol")));
    let until = tokio::time::Instant::now() + TEST_LIMIT;
    while dcutr_tokio::running_upgrades() == 0 {
        assert!(tokio::time::Instant::now() < until, "the first never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (relay, mut other_end) = relayed_pair().await;
    let (options, _) = peer(Side::Initiator, Transport::Tcp, loopback_config());
    let error = tokio::time::timeout(
        TEST_LIMIT,
        dcutr_tokio::upgrade(relay, options.peer("carol")),
    )
    .await
    .unwrap()
    .expect_err("refused");
    assert!(
        matches!(
            error.reason,
            UpgradeFailure::Refused(dcutr_tokio::dcutr_core::admission::Refusal::AlreadyRunning)
        ),
        "{:?}",
        error.reason
    );
    // Nothing was written: the stream comes back untouched, and an initiator
    // would have said Hello at once.
    let mut relay = error.relay.expect("the relayed stream comes back");
    relay.write_all(b"app").await.unwrap();
    let mut buf = [0u8; 3];
    other_end.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"app");
    first.abort();
}

#[tokio::test]
async fn a_peer_whose_upgrade_failed_gets_none_during_the_cooldown() {
    init_tracing();
    let (options, _) = peer(Side::Responder, Transport::Tcp, loopback_config());
    upgrade_against_garbage(options.peer("mallory")).await;
    let (ours, _theirs) = relayed_pair().await;
    let (options, _) = peer(Side::Responder, Transport::Tcp, loopback_config());
    let again = tokio::time::timeout(
        TEST_LIMIT,
        dcutr_tokio::upgrade(ours, options.peer("mallory")),
    )
    .await
    .unwrap()
    .expect_err("cooling down");
    assert!(
        matches!(
            again.reason,
            UpgradeFailure::Refused(dcutr_tokio::dcutr_core::admission::Refusal::CoolingDown)
        ),
        "{:?}",
        again.reason
    );
    assert!(again.relay.is_some(), "the relayed stream comes back");
}
