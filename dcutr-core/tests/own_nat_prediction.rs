//! Our own sequential NAT, as discovery saw it, makes the core predict its
//! next mappings in our Connect, with no predictor from the caller: the
//! guesses follow the last mapping an observer saw, not the (older)
//! address we advertise. Fake clock throughout.

mod common;

use std::net::SocketAddr;

use common::*;
use dcutr_core::filter::NoPrediction;
use dcutr_core::nat::{NatBehaviour, NatObservations, OWN_NAT_PREDICTED_PORTS, Observation};
use dcutr_core::wire::{FrameDecoder, MAX_MESSAGE_SIZE, Message, decode_message};
use dcutr_core::{Candidate, Config, Output, Side, Upgrade};

/// Our punch socket, and our NAT's public IP.
const LOCAL: &str = "10.0.1.2:5000";

/// What three STUN servers saw of our punch socket: these ports, in order.
fn behind_nat(ports: &[u16]) -> NatBehaviour {
    let mut obs = NatObservations::new(LOCAL.parse().unwrap());
    for (i, port) in ports.iter().enumerate() {
        let observer: SocketAddr = format!("203.0.113.1:{}", 3478 + i).parse().unwrap();
        let mapped: SocketAddr = format!("203.0.113.11:{port}").parse().unwrap();
        obs.observe(Observation::new(observer, mapped)).unwrap();
    }
    obs.classify()
}

/// The addresses of the first Connect an initiator with `builder` sends.
fn first_connect(up: &mut Upgrade) -> Vec<String> {
    drain(up);
    up.handle_stream_opened(at(0));
    let out = drain(up);
    let Some(Output::WriteStream(frame)) = out.iter().find(|o| matches!(o, Output::WriteStream(_)))
    else {
        panic!("no Connect: {out:?}");
    };
    let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
    let payload = decoder.decode(&mut &frame[..]).unwrap().unwrap();
    let Message::Connect(addrs) = decode_message(&payload).unwrap() else {
        panic!("not a Connect");
    };
    addrs
        .iter()
        .map(|a| Candidate::from_bytes(a).unwrap().to_string())
        .collect()
}

fn initiator(nat: NatBehaviour) -> dcutr_core::UpgradeBuilder {
    // The relay saw an older mapping of the same socket.
    Upgrade::builder(Side::Initiator, Config::default(), [3; 32])
        .local_addrs([quic("203.0.113.11:20000")])
        .nat_behaviour(nat)
}

#[test]
fn a_sequential_nat_has_its_next_mappings_predicted_after_the_last_one_seen() {
    let mut up = initiator(behind_nat(&[20_001, 20_002, 20_003]))
        .start(t0())
        .unwrap();
    let sent = first_connect(&mut up);
    assert_eq!(
        sent,
        [
            "/ip4/203.0.113.11/udp/20000/quic-v1",
            "/ip4/203.0.113.11/udp/20004/quic-v1",
            "/ip4/203.0.113.11/udp/20005/quic-v1",
            "/ip4/203.0.113.11/udp/20006/quic-v1",
        ]
    );
    assert_eq!(sent.len(), 1 + usize::from(OWN_NAT_PREDICTED_PORTS));
}

#[test]
fn other_nats_and_a_callers_own_predictor_get_no_guesses() {
    for ports in [[20_001, 20_001, 20_001], [20_001, 41_000, 3_170]] {
        let mut up = initiator(behind_nat(&ports)).start(t0()).unwrap();
        assert_eq!(
            first_connect(&mut up),
            ["/ip4/203.0.113.11/udp/20000/quic-v1"]
        );
    }
    let mut up = initiator(behind_nat(&[20_001, 20_002, 20_003]))
        .predictor(Box::new(NoPrediction))
        .start(t0())
        .unwrap();
    assert_eq!(
        first_connect(&mut up),
        ["/ip4/203.0.113.11/udp/20000/quic-v1"]
    );
}
