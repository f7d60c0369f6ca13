//! The memory flood through the QUIC punch port: strangers connect, hold
//! the check stream empty and write on every other stream they can open.
//! The victim's memory, measured, stays under a stated bound.
//!
//! One test in its own binary, so the process's memory is the victim's
//! and the strangers' only.

mod common;
mod strangers;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use dcutr_tokio::{Side, Transport};
use strangers::*;

/// How many strangers flood at once: as many as the identity check has
/// pending slots.
const STRANGERS: usize = 8;

/// How long they flood. Before the hardening, 8 strangers took the victim
/// from 4 MiB to 2,029 MiB in 7 s.
const FLOOD_FOR: Duration = Duration::from_secs(3);

/// The bound: the victim process may grow by at most this much resident
/// memory under the flood. quinn's defaults let it grow by gigabytes.
const FLOOD_MEMORY_BOUND: u64 = 32 << 20;

/// One stranger: connects, opens the check stream and leaves it empty,
/// then opens every other stream it is allowed and writes on each.
/// Returns the number of extra streams it got.
async fn stranger(
    victim: std::net::SocketAddr,
    accepted: Arc<AtomicU64>,
    until: tokio::time::Instant,
) -> (quinn::Endpoint, quinn::Connection, usize) {
    // With a certificate of its own: the victim has no pin yet (the peer
    // is silent), so the handshake completes, the worst case.
    let endpoint = stranger_endpoint_with_certificate();
    let conn = connect(&endpoint, victim, Duration::from_secs(5))
        .await
        .expect("a stranger completes the QUIC handshake");
    // The check stream: opened, never written.
    let _check = conn.open_bi().await.unwrap();
    let streams = flood(&conn, accepted, until).await;
    (endpoint, conn, streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_flooding_the_punch_port_cannot_grow_the_victim_past_the_bound() {
    init_tracing();
    // The victim: B waits for the peer's Hello, its QUIC port open. The
    // peer's end of the relay stays silent, so nobody ever passes the check.
    let (relay_b, _silent_peer) = relayed_pair().await;
    let (b, b_addr) = peer(Side::Initiator, Transport::Quic, loopback_config());
    let victim = tokio::spawn(dcutr_tokio::upgrade(relay_b, b));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let before = rss_bytes();
    let accepted = Arc::new(AtomicU64::new(0));
    let until = tokio::time::Instant::now() + FLOOD_FOR;
    let sampler = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while tokio::time::Instant::now() < until + Duration::from_millis(500)
                && accepted.load(Ordering::Relaxed) < FLOOD_STOP_AT
            {
                peak = peak.max(rss_bytes());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak.max(rss_bytes())
        })
    };
    let floods: Vec<_> = (0..STRANGERS)
        .map(|_| tokio::spawn(stranger(b_addr, accepted.clone(), until)))
        .collect();
    let mut extra_streams = 0;
    let mut held = Vec::new();
    for f in floods {
        let (endpoint, conn, streams) = f.await.unwrap();
        extra_streams += streams;
        held.push((endpoint, conn));
    }
    let peak = sampler.await.unwrap();
    let accepted = accepted.load(Ordering::Relaxed);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "flood: {STRANGERS} strangers, {extra_streams} extra streams, {accepted} bytes accepted \
         by the victim; RSS {} KiB -> peak {} KiB (+{} KiB)",
        before >> 10,
        peak >> 10,
        growth >> 10
    );
    assert!(!victim.is_finished(), "the victim ran through the flood");
    victim.abort();
    assert!(
        growth < FLOOD_MEMORY_BOUND,
        "victim grew by {} KiB under the flood (bound {} KiB)",
        growth >> 10,
        FLOOD_MEMORY_BOUND >> 10
    );
    assert!(
        accepted <= STRANGERS as u64 * dcutr_driver::quic::PUNCH_RECEIVE_WINDOW,
        "the victim buffered {accepted} bytes for strangers"
    );
}
