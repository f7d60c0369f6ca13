//! `Upgrade::is_peer_address`, which the driver uses to keep the peer's
//! connections over strangers' when slots run short: true for what the
//! peer named, through the punch, and false for anything else.

use std::time::{Duration, Instant};

use dcutr_core::wire::{MAX_MESSAGE_SIZE, encode_connect, encode_hello};
use dcutr_tokio::{AddressPolicy, Candidate, Config, Side};

#[test]
fn only_addresses_the_peer_named_count_as_the_peers() {
    let config = Config {
        address_policy: AddressPolicy::permissive(),
        ..Config::default()
    };
    let start = Instant::now();
    let ours = Candidate::quic("127.0.0.1:4000".parse().unwrap());
    let mut b = dcutr_core::Upgrade::builder(Side::Initiator, config, [7; 32])
        .dcutr_session([7; 32])
        .local_addrs([ours])
        .start(start)
        .unwrap();
    let named = Candidate::quic("127.0.0.1:5000".parse().unwrap());
    let stranger = Candidate::quic("127.0.0.1:5001".parse().unwrap());
    let same_port_over_tcp = Candidate::tcp(named.addr);
    while b.poll_output().is_some() {}
    assert!(!b.is_peer_address(&named), "nothing named yet");

    let mut now = start + Duration::from_millis(1);
    b.handle_stream_data(now, &encode_hello(3, Side::Responder, &[1; 32]));
    while b.poll_output().is_some() {}
    now += Duration::from_millis(10);
    let raw = named.to_multiaddr().to_vec();
    let (connect, _) = encode_connect([raw.as_slice()], MAX_MESSAGE_SIZE);
    b.handle_stream_data(now, &connect);
    while b.poll_output().is_some() {}
    assert!(b.is_peer_address(&named), "named in its Connect");
    assert!(!b.is_peer_address(&stranger));
    assert!(
        !b.is_peer_address(&same_port_over_tcp),
        "the transport counts"
    );

    // Through the punch (B sprays the QUIC address) it stays the peer's.
    let mut punched = false;
    for _ in 0..100 {
        let Some(timeout) = b.poll_timeout() else {
            break;
        };
        now = timeout.at;
        b.handle_timeout(now);
        while let Some(output) = b.poll_output() {
            punched |= matches!(output, dcutr_core::Output::SendDatagram { .. });
        }
        if punched {
            break;
        }
    }
    assert!(punched, "B punched");
    assert!(b.is_peer_address(&named), "a spray target");
    assert!(!b.is_peer_address(&stranger));
}
