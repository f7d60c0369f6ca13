//! A hostile peer names a victim's address as its own: the spray it gets
//! out of us is capped by the attempt budget, counted at the victim over
//! real sockets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use dcutr_core::wire::{
    FrameDecoder, MAX_MESSAGE_SIZE, Message, decode_message, encode_connect, encode_hello,
};
use dcutr_tokio::{Candidate, Side, Transport, UpgradeFailure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEST_LIMIT: Duration = Duration::from_secs(30);

/// Datagrams the spray may send per attempt in this test.
const BUDGET: u32 = 5;

/// The next frame on `stream`, read byte by byte as the core's peer would.
async fn next_frame(stream: &mut TcpStream, decoder: &mut FrameDecoder) -> Vec<u8> {
    loop {
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .expect("the initiator talks");
        if let Some(frame) = decoder.decode(&mut &byte[..]).unwrap() {
            return frame;
        }
    }
}

/// Plays A: answers every Connect with one that names only `victim`.
async fn hostile_responder(mut stream: TcpStream, victim: SocketAddr) -> usize {
    let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
    // B's Hello, then ours.
    let _hello = next_frame(&mut stream, &mut decoder).await;
    let hello = encode_hello(3, dcutr_tokio::Side::Responder, &[9; 32]);
    stream.write_all(&hello).await.unwrap();
    let victim = Candidate::quic(victim).to_multiaddr().to_vec();
    let mut exchanges = 0;
    loop {
        let frame = tokio::select! {
            f = next_frame(&mut stream, &mut decoder) => f,
            // B gave up: the stream stays silent.
            () = tokio::time::sleep(Duration::from_secs(2)) => return exchanges,
        };
        match decode_message(&frame).unwrap() {
            Message::Connect(_) => {
                let (connect, _) = encode_connect([victim.as_slice()], MAX_MESSAGE_SIZE);
                stream.write_all(&connect).await.unwrap();
                exchanges += 1;
            }
            Message::Sync => {}
        }
    }
}

#[tokio::test]
async fn a_peer_naming_a_victim_gets_at_most_the_spray_budget_per_attempt() {
    init_tracing();
    let victim = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let victim_addr = victim.local_addr().unwrap();
    let counter = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        let mut datagrams = 0u32;
        let mut bytes = 0usize;
        while let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_secs(2), victim.recv_from(&mut buf)).await
        {
            datagrams += 1;
            bytes += n;
        }
        (datagrams, bytes)
    });

    let (ours, theirs) = relayed_pair().await;
    let mut config = loopback_config();
    config.max_spray_packets_per_attempt = BUDGET;
    // Rounds as fast as allowed: the budget, not the window, must be what
    // stops the spray.
    config.spray_interval_min = Duration::from_millis(1);
    config.spray_interval_max = Duration::from_millis(1);
    config.direct_timeout = Duration::from_millis(500);
    let (b, _) = peer(Side::Initiator, Transport::Quic, config.clone());
    let attacker = tokio::spawn(hostile_responder(theirs, victim_addr));
    let result = tokio::time::timeout(TEST_LIMIT, dcutr_tokio::upgrade(ours, b))
        .await
        .expect("the upgrade ends");
    let error = result.expect_err("nobody answers at the victim's address");
    assert!(
        matches!(
            error.reason,
            UpgradeFailure::Failed(dcutr_core::Failure::AllAttemptsFailed { .. })
        ),
        "{:?}",
        error.reason
    );
    let exchanges = attacker.await.unwrap();
    let (datagrams, bytes) = counter.await.unwrap();
    let attempts = u32::from(config.max_attempts);
    assert_eq!(exchanges, 3, "one exchange per attempt");
    // Exactly the budget per attempt reaches the victim: no more (the cap
    // holds over real sockets), and no fewer (so the cap is what stopped
    // it).
    assert_eq!(datagrams, attempts * BUDGET);
    assert_eq!(
        bytes,
        (attempts * BUDGET) as usize * dcutr_core::settings::SPRAY_PACKET_LEN
    );
    let sprayed: u32 = error
        .report
        .timeline
        .attempts()
        .iter()
        .map(|a| a.spray_packets())
        .sum();
    assert_eq!(sprayed, datagrams, "the report counts what was sent");
}
