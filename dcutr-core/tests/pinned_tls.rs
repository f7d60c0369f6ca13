//! The pinned-TLS identity check, on a fake clock: the `Hello` carries our
//! fingerprint, and a direct connection counts only once the carrier
//! reports a handshake with the certificate the peer pinned.

mod common;

use std::time::{Duration, Instant};

use common::t0;

use dcutr_core::wire::{
    CodecError, FINGERPRINT_LEN, FrameDecoder, Hello, MAX_MESSAGE_SIZE, decode_hello, encode_hello,
};
use dcutr_core::{
    AddressPolicy, Candidate, Config, ConfigError, DirectId, Event, Failure, Output, ProtocolError,
    Role, Side, Upgrade, reason::DirectRejection, settings::Capabilities,
    settings::QuicServerPunch,
};

const OURS: [u8; FINGERPRINT_LEN] = [0x11; FINGERPRINT_LEN];
const PEERS: [u8; FINGERPRINT_LEN] = [0x22; FINGERPRINT_LEN];
const STRANGERS: [u8; FINGERPRINT_LEN] = [0x33; FINGERPRINT_LEN];

fn config() -> Config {
    Config {
        address_policy: AddressPolicy::permissive(),
        ..Config::default()
    }
}

fn responder(start: Instant) -> Upgrade {
    Upgrade::builder(Side::Responder, config(), [3; 32])
        .dcutr_session(OURS)
        .local_addrs([Candidate::tcp("127.0.0.1:4001".parse().unwrap())])
        .start(start)
        .unwrap()
}

fn drain(up: &mut Upgrade) -> Vec<Output> {
    std::iter::from_fn(|| up.poll_output()).collect()
}

fn rejections(outputs: &[Output]) -> Vec<(DirectId, DirectRejection)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event(Event::DirectRejected { id, reason, .. }) => Some((*id, *reason)),
            _ => None,
        })
        .collect()
}

fn peer_hello() -> bytes::Bytes {
    encode_hello(3, Side::Initiator, &PEERS)
}

#[test]
fn our_hello_carries_our_fingerprint() {
    let mut up = responder(t0());
    let outputs = drain(&mut up);
    let Some(Output::WriteStream(hello)) = outputs.first() else {
        panic!("the Hello goes out first: {outputs:?}");
    };
    let payload = FrameDecoder::new(MAX_MESSAGE_SIZE)
        .decode(&mut &hello[..])
        .unwrap()
        .unwrap();
    assert_eq!(decode_hello(&payload).unwrap().fingerprint, OURS);
}

/// The session needs our fingerprint by construction
/// (`dcutr_session(fingerprint)`); a carrier of the spec only (libp2p)
/// refuses a session build at the start, naming the fix.
#[test]
fn a_session_on_a_carrier_of_the_spec_only_is_refused_naming_the_fix() {
    let config = Config {
        quic_server_punch: QuicServerPunch::DialAsServer,
        ..config()
    };
    let build = |caps: Capabilities| {
        Upgrade::builder(Side::Responder, config.clone(), [3; 32]).capabilities(caps)
    };
    let refused = build(Capabilities::LIBP2P).dcutr_session(OURS).start(t0());
    assert_eq!(refused.err(), Some(ConfigError::SessionUnsupported));
    let refused = build(Capabilities::LIBP2P)
        .dcutr_session_unpinned()
        .start(t0());
    assert_eq!(refused.err(), Some(ConfigError::SessionUnsupported));
    assert!(build(Capabilities::LIBP2P).start(t0()).is_ok(), "the spec");
    assert!(
        build(Capabilities::STANDALONE)
            .dcutr_session(OURS)
            .start(t0())
            .is_ok()
    );
    assert!(
        ConfigError::SessionUnsupported
            .to_string()
            .contains("without `dcutr_session`")
    );
}

/// Two different sessions asked of one builder are refused, whichever
/// came last, instead of the later one silently winning; the same one
/// twice is fine.
#[test]
fn two_different_sessions_on_one_builder_are_refused_naming_the_fix() {
    let build = || Upgrade::builder(Side::Initiator, config(), [3; 32]);
    let conflicts = [
        build().dcutr_session(OURS).dcutr_session_unpinned(),
        build().dcutr_session_unpinned().dcutr_session(OURS),
        build()
            .dcutr_session(OURS)
            .dcutr_session([0x22; FINGERPRINT_LEN]),
    ];
    for builder in conflicts {
        assert_eq!(
            builder.start(t0()).err(),
            Some(ConfigError::SessionConflict)
        );
    }
    assert!(
        build()
            .dcutr_session(OURS)
            .dcutr_session(OURS)
            .start(t0())
            .is_ok()
    );
    assert!(
        build()
            .dcutr_session_unpinned()
            .dcutr_session_unpinned()
            .start(t0())
            .is_ok()
    );
    assert!(
        ConfigError::SessionConflict
            .to_string()
            .contains("call `dcutr_session(fingerprint)` or `dcutr_session_unpinned()` once")
    );
}

#[test]
fn a_hello_without_a_fingerprint_is_a_protocol_error() {
    let start = t0();
    let mut up = responder(start);
    drain(&mut up);
    let no_fingerprint = Hello {
        max_attempts: Some(3),
        side: Some(1),
        fingerprint: None,
        version: Some(dcutr_core::wire::HELLO_VERSION),
    };
    let mut frame = Vec::new();
    prost::Message::encode_length_delimited(&no_fingerprint, &mut frame).unwrap();
    up.handle_stream_data(start, &frame);
    let outputs = drain(&mut up);
    assert!(
        outputs.iter().any(|o| matches!(
            o,
            Output::Event(Event::Failed(Failure::Protocol(ProtocolError::Codec(
                CodecError::BadFingerprint { len: 0 }
            ))))
        )),
        "{outputs:?}"
    );
}

#[test]
fn handshakes_before_the_hello_are_judged_by_the_pin_it_brings() {
    let start = t0();
    let mut up = responder(start);
    drain(&mut up);
    let now = start + Duration::from_millis(5);
    // Before any Connect, an inbound connection is the initiator's
    // unilateral dial: we are its server.
    let stranger = up
        .handle_inbound(now, Candidate::tcp("127.0.0.1:6000".parse().unwrap()))
        .unwrap();
    let peer = up
        .handle_inbound(now, Candidate::tcp("127.0.0.1:7000".parse().unwrap()))
        .unwrap();
    assert_eq!(up.direct_role(peer), Some(Role::Server));
    drain(&mut up);
    // Nothing is read or written on them while TLS runs.
    assert_eq!(up.direct_bytes_wanted(peer), 0);
    assert_eq!(up.peer_fingerprint(), None);
    up.handle_direct_authenticated(now, stranger, STRANGERS);
    up.handle_direct_authenticated(now, peer, PEERS);
    let outputs = drain(&mut up);
    assert!(rejections(&outputs).is_empty(), "no pin yet: {outputs:?}");
    assert!(up.outcome().is_none());

    up.handle_stream_data(now, &peer_hello());
    assert_eq!(up.peer_fingerprint(), Some(PEERS));
    let outputs = drain(&mut up);
    assert_eq!(
        rejections(&outputs),
        [(stranger, DirectRejection::IdentityMismatch)]
    );
    assert!(
        outputs.iter().any(|o| matches!(
            o,
            Output::WriteDirect { id, data } if *id == peer && data[..] == [0x01]
        )),
        "the server selects the peer's connection: {outputs:?}"
    );
    assert!(
        matches!(up.outcome(), Some(dcutr_core::Outcome::Upgraded(u)) if u.id == peer),
        "{:?}",
        up.outcome()
    );
}

#[test]
fn a_wrong_certificate_or_a_failed_handshake_is_refused_with_its_reason() {
    let start = t0();
    let mut up = responder(start);
    drain(&mut up);
    up.handle_stream_data(start, &peer_hello());
    drain(&mut up);
    let from = |port: u16| Candidate::tcp(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let wrong = up.handle_inbound(start, from(6001)).unwrap();
    let broken = up.handle_inbound(start, from(6002)).unwrap();
    let refused = up.handle_inbound(start, from(6003)).unwrap();
    drain(&mut up);
    up.handle_direct_authenticated(start, wrong, STRANGERS);
    up.handle_direct_handshake_failed(start, broken, None);
    // The carrier's pinned verifier refused the certificate itself.
    up.handle_direct_handshake_failed(start, refused, Some(STRANGERS));
    let outputs = drain(&mut up);
    assert_eq!(
        rejections(&outputs),
        [
            (wrong, DirectRejection::IdentityMismatch),
            (broken, DirectRejection::HandshakeFailed),
            (refused, DirectRejection::IdentityMismatch),
        ]
    );
    assert!(up.outcome().is_none(), "strangers decide nothing");
    assert_eq!(up.timeline().inbound_rejected(), 3);
}

#[test]
fn a_client_waits_for_the_select_byte_inside_tls() {
    let start = t0();
    let mut up = responder(start);
    drain(&mut up);
    up.handle_stream_data(start, &peer_hello());
    drain(&mut up);
    // The initiator's Connect makes later inbound connections the punch,
    // where the responder is the client.
    let addr = Candidate::tcp("127.0.0.1:7000".parse().unwrap());
    let raw = addr.to_multiaddr().to_vec();
    let (connect, _) = dcutr_core::wire::encode_connect([raw.as_slice()], MAX_MESSAGE_SIZE);
    up.handle_stream_data(start, &connect);
    drain(&mut up);
    let id = up.handle_inbound(start, addr).unwrap();
    assert_eq!(up.direct_role(id), Some(Role::Client));
    drain(&mut up);
    up.handle_direct_authenticated(start, id, PEERS);
    assert_eq!(up.direct_bytes_wanted(id), 1, "the select byte");
    assert!(up.outcome().is_none());
    up.handle_direct_data(start, id, &[0x01]);
    assert!(
        matches!(up.outcome(), Some(dcutr_core::Outcome::Upgraded(u)) if u.id == id && u.role == Role::Client),
        "{:?}",
        up.outcome()
    );
}
