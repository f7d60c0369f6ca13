//! The memory flood against the dialling side: a hostile peer names an
//! address where its own QUIC server waits; when we dial it, that server
//! opens every stream it may and writes on each. The client's memory,
//! measured, stays under a stated bound.
//!
//! One test in its own binary, so the process's memory is ours.

mod common;
mod strangers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use dcutr_core::wire::{FrameDecoder, MAX_MESSAGE_SIZE, encode_connect, encode_hello, encode_sync};
use dcutr_tokio::{Candidate, Side, Transport};
use strangers::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEST_LIMIT: Duration = Duration::from_secs(30);

/// How long the hostile server floods once we connected.
const FLOOD_FOR: Duration = Duration::from_secs(2);

/// The bound on our growth in resident memory under the flood.
const FLOOD_MEMORY_BOUND: u64 = 32 << 20;

async fn next_frame(stream: &mut TcpStream, decoder: &mut FrameDecoder) -> Vec<u8> {
    loop {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("we talk");
        if let Some(frame) = decoder.decode(&mut &byte[..]).unwrap() {
            return frame;
        }
    }
}

/// Plays B on the relayed stream: Hello (pinning the certificate of its
/// server), a Connect naming only `server`, Sync once our Connect came;
/// then holds the stream open.
async fn hostile_initiator(
    mut stream: TcpStream,
    server: SocketAddr,
    fingerprint: [u8; 32],
) -> TcpStream {
    let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
    let hello = encode_hello(1, Side::Initiator, &fingerprint);
    stream.write_all(&hello).await.unwrap();
    let _hello = next_frame(&mut stream, &mut decoder).await;
    let server = Candidate::quic(server).to_multiaddr().to_vec();
    let (connect, _) = encode_connect([server.as_slice()], MAX_MESSAGE_SIZE);
    stream.write_all(&connect).await.unwrap();
    let _connect = next_frame(&mut stream, &mut decoder).await;
    stream.write_all(&encode_sync()).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_server_we_dial_cannot_grow_us_past_the_bound() {
    init_tracing();
    let (server_config, fingerprint) = pinned_server_config();
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let server_addr = server.local_addr().unwrap();
    let (ours, theirs) = relayed_pair().await;
    let (a, _) = peer(Side::Responder, Transport::Quic, loopback_config());
    let victim = tokio::spawn(dcutr_tokio::upgrade(ours, a));
    let hostile = tokio::spawn(hostile_initiator(theirs, server_addr, fingerprint));

    let incoming = tokio::time::timeout(TEST_LIMIT, server.accept())
        .await
        .expect("we dial the address the peer named")
        .unwrap();
    let conn = incoming.await.expect("the QUIC handshake completes");
    let before = rss_bytes();
    let accepted = Arc::new(AtomicU64::new(0));
    let until = tokio::time::Instant::now() + FLOOD_FOR;
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        while tokio::time::Instant::now() < until + Duration::from_millis(300) {
            peak = peak.max(rss_bytes());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak.max(rss_bytes())
    });
    let streams = flood(&conn, accepted.clone(), until).await;
    let peak = sampler.await.unwrap();
    let accepted = accepted.load(Ordering::Relaxed);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "client flood: {streams} streams, {accepted} bytes accepted by us; RSS {} KiB -> peak \
         {} KiB (+{} KiB)",
        before >> 10,
        peak >> 10,
        growth >> 10
    );
    let _relay = hostile.await.unwrap();
    victim.abort();
    assert!(
        streams <= dcutr_driver::quic::PUNCH_BIDI_STREAMS as usize,
        "the server opened {streams} streams to us before the check"
    );
    assert!(
        accepted <= dcutr_driver::quic::PUNCH_RECEIVE_WINDOW,
        "we buffered {accepted} bytes for a server that never passed the check"
    );
    assert!(
        growth < FLOOD_MEMORY_BOUND,
        "we grew by {} KiB under the flood (bound {} KiB)",
        growth >> 10,
        FLOOD_MEMORY_BOUND >> 10
    );
}
