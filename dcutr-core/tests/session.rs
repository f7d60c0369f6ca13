//! The dcutr-rs session layer seen from outside: the `Hello` handshake on
//! a shared stream, its version and attempt limit, and the spec machine
//! that a stock peer meets instead, which never sends or expects a
//! `Hello`.

mod common;

use std::time::Duration;

use common::{PEER_FINGERPRINT, drain, events, peer_hello, start, start_session, t0};
use dcutr_core::reason::CodecError;
use dcutr_core::wire::{self, FrameDecoder, Message};
use dcutr_core::{Config, Event, Failure, Outcome, Output, ProtocolError, Side, Transport};
use dcutr_sim::{INITIATOR, Protocol, RESPONDER, Sim, SimConfig};

const RELAY_ONE_WAY: Duration = Duration::from_millis(50);
const DIRECT_ONE_WAY: Duration = Duration::from_millis(10);
const LIMIT: Duration = Duration::from_secs(300);

/// The frames (payloads) of every `WriteStream` in `outputs`, in order.
fn frames(outputs: &[Output]) -> Vec<Vec<u8>> {
    let mut decoder = FrameDecoder::new(4096);
    let mut out = Vec::new();
    for o in outputs {
        if let Output::WriteStream(bytes) = o {
            let mut input: &[u8] = bytes;
            while let Some(frame) = decoder.decode(&mut input).unwrap() {
                out.push(frame);
            }
        }
    }
    out
}

fn stream_opens(sim: &Sim, side: Side) -> bool {
    sim.first(side, |o| matches!(o, Output::OpenStream))
        .is_some()
}

fn hellos_received(sim: &Sim, side: Side) -> bool {
    sim.first(side, |o| matches!(o, Output::Event(Event::HelloReceived)))
        .is_some()
}

#[test]
fn a_hello_of_session_version_2_fails_the_upgrade_at_its_first_frame() {
    for side in [Side::Initiator, Side::Responder] {
        let mut up = start_session(side, Config::default());
        drain(&mut up);
        let payload = FrameDecoder::new(4096)
            .decode(&mut &peer_hello(side, 3)[..])
            .unwrap()
            .unwrap();
        let mut hello: wire::Hello = prost::Message::decode(&payload[..]).unwrap();
        hello.version = Some(2);
        let mut frame = Vec::new();
        prost::Message::encode_length_delimited(&hello, &mut frame).unwrap();
        up.handle_stream_data(t0(), &frame);
        let outputs = drain(&mut up);
        assert_eq!(
            up.outcome(),
            Some(&Outcome::Failed(Failure::Protocol(ProtocolError::Codec(
                CodecError::UnsupportedHelloVersion { version: Some(2) }
            )))),
            "{side}"
        );
        assert!(
            outputs.contains(&Output::ResetStream),
            "{side}: the stream is reset"
        );
        assert_eq!(up.peer_fingerprint(), None, "{side}: nothing pinned");
    }
}

#[test]
fn our_hello_is_the_first_frame_and_the_peers_pins_its_fingerprint() {
    for side in [Side::Initiator, Side::Responder] {
        let mut up = start_session(side, Config::default());
        let first = frames(&drain(&mut up));
        let ours = wire::decode_hello(&first[0]).expect("a Hello first");
        assert_eq!(ours.side, Some(side));
        assert_eq!(ours.max_attempts, Some(3));
        assert_eq!(up.peer_fingerprint(), None);
        up.handle_stream_data(t0(), &peer_hello(side, 3));
        assert!(events(&drain(&mut up)).contains(&Event::HelloReceived));
        assert_eq!(up.peer_fingerprint(), Some(PEER_FINGERPRINT), "{side}");
        assert_eq!(up.outcome(), None, "{side}");
    }
}

#[test]
fn one_shared_stream_carries_three_attempts_of_both_sides() {
    let mut cfg = SimConfig::two_nats(&Config::default(), RELAY_ONE_WAY, DIRECT_ONE_WAY)
        .protocol(Protocol::Session)
        .only(Transport::Tcp);
    cfg.blocked_attempts = vec![1, 2];
    let mut sim = Sim::new(cfg);
    assert!(sim.run(LIMIT));
    let (Some(Outcome::Upgraded(b)), Some(Outcome::Upgraded(a))) = sim.outcomes() else {
        panic!("{:?}", sim.outcomes());
    };
    assert_eq!((b.attempt, a.attempt), (3, 3));
    for (index, side) in [(INITIATOR, Side::Initiator), (RESPONDER, Side::Responder)] {
        assert_eq!(sim.upgrade(index).timeline().attempts().len(), 3, "{side}");
        assert!(
            !stream_opens(&sim, side),
            "{side}: one stream, never a new one"
        );
        assert!(
            hellos_received(&sim, side),
            "{side}: the session handshake ran"
        );
    }
}

#[test]
fn the_smaller_attempt_limit_of_the_two_ends_the_session_on_both_sides() {
    let mut config = Config::default();
    let mut cfg = SimConfig::two_nats(&config, RELAY_ONE_WAY, DIRECT_ONE_WAY)
        .protocol(Protocol::Session)
        .only(Transport::Tcp);
    config.max_attempts = 1;
    cfg.responder.config = config;
    cfg.blocked_attempts = vec![1, 2, 3];
    let mut sim = Sim::new(cfg);
    assert!(sim.run(LIMIT));
    for index in [INITIATOR, RESPONDER] {
        let up = sim.upgrade(index);
        assert_eq!(up.timeline().attempts().len(), 1, "{}", up.side());
        assert!(
            matches!(
                up.outcome(),
                Some(Outcome::Failed(Failure::AllAttemptsFailed { attempts })) if attempts.len() == 1
            ),
            "{}: {:?}",
            up.side(),
            up.outcome()
        );
    }
}

#[test]
fn the_spec_machine_a_stock_peer_meets_sends_and_expects_no_hello() {
    // The initiator's first frame on its first stream is a Connect.
    let mut b = start(Side::Initiator, Config::default());
    let before = drain(&mut b);
    assert!(before.contains(&Output::OpenStream));
    assert!(
        frames(&before).is_empty(),
        "nothing written before the stream"
    );
    b.handle_stream_opened(t0());
    let first = frames(&drain(&mut b));
    assert!(matches!(
        wire::decode_message(&first[0]),
        Ok(Message::Connect(_))
    ));
    assert!(wire::decode_hello(&first[0]).is_err(), "not a Hello");
    // A whole upgrade in the spec's mode: a stream per attempt, no Hello.
    let config = Config::default();
    let mut cfg = SimConfig::two_nats(&config, RELAY_ONE_WAY, DIRECT_ONE_WAY).only(Transport::Tcp);
    cfg.blocked_attempts = vec![1];
    let mut sim = Sim::new(cfg);
    assert!(sim.run(LIMIT));
    assert!(matches!(
        sim.outcomes(),
        (Some(Outcome::Upgraded(_)), Some(Outcome::Upgraded(_)))
    ));
    assert!(stream_opens(&sim, Side::Initiator), "a stream per attempt");
    for side in [Side::Initiator, Side::Responder] {
        assert!(!hellos_received(&sim, side), "{side}: no session handshake");
    }
}
