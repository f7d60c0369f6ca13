//! Every protocol violation, fed as the exact hostile bytes or events: the
//! typed error comes out, nothing panics, nothing is buffered past the
//! limit.

mod common;

use std::time::Duration;

use common::*;
use dcutr_core::{
    AttemptFailure, Config, Event, Failure, Outcome, Output, ProtocolError, Side,
    reason::CodecError, reason::Step,
};

/// The first attempt failure among the events, or the final failure's.
fn protocol_error(outputs: &[Output], up: &dcutr_core::Upgrade) -> ProtocolError {
    for e in events(outputs) {
        if let Event::AttemptFailed {
            reason: AttemptFailure::Protocol(err),
            ..
        } = e
        {
            return err;
        }
    }
    match up.outcome() {
        Some(Outcome::Failed(Failure::Protocol(err))) => err.clone(),
        other => panic!("no protocol error; outcome {other:?}, outputs {outputs:?}"),
    }
}

/// A responder on per-attempt streams with one stream open.
fn responder() -> dcutr_core::Upgrade {
    let mut up = start(Side::Responder, Config::default());
    up.handle_stream_opened(t0());
    drain(&mut up);
    up
}

/// An initiator on per-attempt streams that has sent its Connect.
fn initiator() -> dcutr_core::Upgrade {
    let mut up = start(Side::Initiator, Config::default());
    assert_eq!(drain(&mut up).last(), Some(&Output::OpenStream));
    up.handle_stream_opened(t0());
    drain(&mut up);
    up
}

fn feed(up: &mut dcutr_core::Upgrade, bytes: &[u8]) -> Vec<Output> {
    up.handle_stream_data(at(10), bytes);
    drain(up)
}

#[test]
fn oversize_frame_is_refused_before_buffering() {
    let mut up = responder();
    let before = up.heap_estimate();
    // Length prefix 1 MiB (0x80 0x80 0x40), then some of the payload.
    let out = feed(&mut up, &[0x80, 0x80, 0x40, 1, 2, 3, 4]);
    assert_eq!(
        protocol_error(&out, &up),
        ProtocolError::Codec(CodecError::FrameTooLarge {
            len: 1 << 20,
            max: 4096
        })
    );
    assert!(out.contains(&Output::ResetStream));
    assert!(
        up.heap_estimate() <= before + 1024,
        "no payload buffer was allocated"
    );
}

#[test]
fn undecodable_protobuf_is_refused() {
    let mut up = responder();
    // Field 2 announces 8 bytes, only 1 follows.
    let out = feed(&mut up, &[4, 0x08, 100, 0x12, 8]);
    assert!(matches!(
        protocol_error(&out, &up),
        ProtocolError::Codec(CodecError::Protobuf(_))
    ));
}

#[test]
fn unknown_type_is_refused() {
    let mut up = responder();
    let out = feed(&mut up, &[2, 0x08, 101]);
    assert_eq!(
        protocol_error(&out, &up),
        ProtocolError::Codec(CodecError::UnknownType(101))
    );
}

#[test]
fn missing_type_is_refused() {
    let mut up = responder();
    let out = feed(&mut up, &[0]);
    assert_eq!(
        protocol_error(&out, &up),
        ProtocolError::Codec(CodecError::MissingType)
    );
}

#[test]
fn sync_before_connect_is_refused() {
    let mut up = responder();
    let out = feed(&mut up, &sync_frame());
    assert_eq!(
        protocol_error(&out, &up),
        ProtocolError::UnexpectedMessage {
            step: Step::Connect,
            got: dcutr_core::wire::MessageType::Sync
        }
    );
}

#[test]
fn a_second_connect_is_refused() {
    let mut up = responder();
    let connect = connect_frame(&[tcp("203.0.113.5:1")]);
    let twice = [&connect[..], &connect[..]].concat();
    let out = feed(&mut up, &twice);
    assert_eq!(
        protocol_error(&out, &up),
        ProtocolError::UnexpectedMessage {
            step: Step::Sync,
            got: dcutr_core::wire::MessageType::Connect
        }
    );
}

#[test]
fn a_sync_from_the_responder_is_refused() {
    let mut up = initiator();
    let out = feed(&mut up, &sync_frame());
    assert_eq!(
        protocol_error(&out, &up),
        ProtocolError::UnexpectedMessage {
            step: Step::Connect,
            got: dcutr_core::wire::MessageType::Sync
        }
    );
    // The initiator retries on a fresh stream.
    assert!(out.contains(&Output::OpenStream));
}

#[test]
fn bytes_after_sync_are_trailing_bytes() {
    let mut up = responder();
    let connect = connect_frame(&[tcp("203.0.113.5:1")]);
    let sync = sync_frame();
    let stream = [&connect[..], &sync[..], &[1, 2, 3]].concat();
    let out = feed(&mut up, &stream);
    assert_eq!(
        protocol_error(&out, &up),
        ProtocolError::TrailingBytes { len: 3 }
    );
}

#[test]
fn bytes_after_the_responders_connect_are_trailing_bytes() {
    let mut up = initiator();
    let connect = connect_frame(&[tcp("203.0.113.5:1")]);
    let out = feed(&mut up, &[&connect[..], &[9]].concat());
    assert_eq!(
        protocol_error(&out, &up),
        ProtocolError::TrailingBytes { len: 1 }
    );
}

#[test]
fn a_stream_closed_early_ends_the_attempt_and_the_initiator_retries() {
    let mut up = initiator();
    up.handle_stream_closed(at(10));
    let out = drain(&mut up);
    assert_eq!(
        protocol_error(&out, &up),
        ProtocolError::StreamClosed {
            step: Step::Connect
        }
    );
    assert!(
        out.contains(&Output::OpenStream),
        "attempt 2 opens a new stream"
    );
}

#[test]
fn a_shared_stream_closed_early_fails_the_upgrade_cleanly() {
    let mut up = start_session(Side::Initiator, Config::default());
    drain(&mut up);
    up.handle_stream_closed(at(10));
    drain(&mut up);
    assert_eq!(
        up.outcome(),
        Some(&Outcome::Failed(Failure::RelayClosed { step: Step::Hello }))
    );
    assert!(up.is_finished());
}

#[test]
fn a_silent_peer_hits_the_step_timeout() {
    let mut up = initiator();
    let timeout = up.poll_timeout().unwrap();
    assert_eq!(
        timeout.at,
        t0() + Duration::from_secs(10),
        "step timeout armed"
    );
    up.handle_timeout(timeout.at);
    let out = drain(&mut up);
    assert_eq!(
        protocol_error(&out, &up),
        ProtocolError::StepTimeout {
            step: Step::Connect,
            after: Duration::from_secs(10)
        }
    );
    assert!(out.contains(&Output::ResetStream));
}

#[test]
fn on_a_shared_stream_a_protocol_error_ends_the_upgrade() {
    let mut up = start_session(Side::Responder, Config::default());
    drain(&mut up);
    // A valid Hello, then a Sync where a Connect must come.
    let hello = peer_hello(Side::Responder, 3);
    let out = feed(&mut up, &[&hello[..], &sync_frame()[..]].concat());
    assert!(matches!(
        up.outcome(),
        Some(Outcome::Failed(Failure::Protocol(
            ProtocolError::UnexpectedMessage { .. }
        )))
    ));
    assert!(out.contains(&Output::ResetStream));
    assert_eq!(up.stream_bytes_wanted(), 0);
}

#[test]
fn a_hello_of_an_older_wire_version_is_refused() {
    let mut up = start_session(Side::Responder, Config::default());
    drain(&mut up);
    // A v2 Hello: a 3-byte token (tag 1), and no version field.
    let out = feed(&mut up, &[5, 0x0a, 3, 1, 2, 3]);
    assert_eq!(
        protocol_error(&out, &up),
        ProtocolError::Codec(CodecError::UnsupportedHelloVersion { version: None })
    );
}

#[test]
fn a_connect_with_thousands_of_addresses_yields_at_most_the_cap() {
    let mut up = responder();
    // 400 distinct public addresses fit into 4 KiB.
    let addrs: Vec<_> = (1..=400u16)
        .map(|p| tcp(&format!("203.0.113.5:{p}")))
        .collect();
    let out = feed(&mut up, &connect_frame(&addrs));
    let accepted = events(&out)
        .into_iter()
        .find_map(|e| match e {
            Event::RemoteAddrs {
                accepted, rejected, ..
            } => Some((accepted.len(), rejected.total())),
            _ => None,
        })
        .unwrap();
    assert_eq!(accepted.0, 16);
    assert!(accepted.1 > 300, "the rest were dropped: {}", accepted.1);
    up.handle_stream_data(at(20), &sync_frame());
    let dials = drain(&mut up)
        .iter()
        .filter(|o| matches!(o, Output::Dial(_)))
        .count();
    // All 16 are on one IP: the per-IP budget lets 4 of them be dialled.
    assert_eq!(dials, dcutr_core::settings::MAX_PUNCHES_PER_IP);
}

/// A peer that names 16 ports on each of many IPs, attempt after attempt,
/// gets at most 4 punches per IP per attempt and 24 dials per upgrade.
#[test]
fn punches_stay_within_the_per_ip_and_per_upgrade_budgets() {
    use dcutr_core::settings::{MAX_DIALS_PER_UPGRADE, MAX_PUNCHES_PER_IP};
    let mut up = responder();
    let mut per_attempt = Vec::new();
    for attempt in 0..3u64 {
        // Four IPs of 16 ports each, 16 addresses kept by the Connect cap.
        let addrs: Vec<_> = (0..4u8)
            .flat_map(|ip| (1..=4u16).map(move |p| tcp(&format!("203.0.113.{}:{p}", 10 + ip))))
            .chain((0..4u8).flat_map(|ip| {
                (5..=16u16).map(move |p| tcp(&format!("203.0.113.{}:{p}", 10 + ip)))
            }))
            .collect();
        let t = 10_000 * (attempt + 1);
        if attempt > 0 {
            up.handle_stream_closed(at(t - 1));
            up.handle_stream_opened(at(t - 1));
        }
        feed(&mut up, &connect_frame(&addrs));
        up.handle_stream_data(at(t), &sync_frame());
        let dials: Vec<_> = drain(&mut up)
            .into_iter()
            .filter_map(|o| match o {
                Output::Dial(d) => Some(d.to),
                _ => None,
            })
            .collect();
        for ip in 10..14u8 {
            let on_ip = dials
                .iter()
                .filter(|c| c.addr.ip() == std::net::IpAddr::from([203, 0, 113, ip]))
                .count();
            assert!(
                on_ip <= MAX_PUNCHES_PER_IP,
                "attempt {attempt}: {on_ip} on .{ip}"
            );
        }
        per_attempt.push(dials.len());
        // End the attempt so the next Connect starts a new one.
        up.handle_timeout(at(t + 6_000));
        drain(&mut up);
    }
    assert_eq!(per_attempt[0], 16, "4 IPs × 4 ports: {per_attempt:?}");
    assert_eq!(
        per_attempt.iter().sum::<usize>(),
        MAX_DIALS_PER_UPGRADE,
        "{per_attempt:?}"
    );
}

#[test]
fn after_three_attempts_the_responder_reads_no_more() {
    let mut up = start_unpinned(Side::Responder, Config::default());
    drain(&mut up);
    // Three exchanges whose punches get nowhere (no usable address).
    let connect = connect_frame(&[]);
    for i in 0..3u64 {
        up.handle_stream_data(at(10 * i), &[&connect[..], &sync_frame()[..]].concat());
        drain(&mut up);
    }
    assert!(matches!(
        up.outcome(),
        Some(Outcome::Failed(Failure::AllAttemptsFailed { attempts })) if attempts.len() == 3
    ));
    assert_eq!(
        up.stream_bytes_wanted(),
        0,
        "nothing more is read from the stream"
    );
}

#[test]
fn a_fourth_attempt_is_refused() {
    let mut up = start_unpinned(Side::Responder, Config::default());
    drain(&mut up);
    // Each Connect arrives while the previous punch is still dialling, so
    // it supersedes it; the fourth is one too many.
    let connect = connect_frame(&[tcp("203.0.113.5:1")]);
    for i in 0..3u64 {
        up.handle_stream_data(at(10 * i), &[&connect[..], &sync_frame()[..]].concat());
        drain(&mut up);
        assert_eq!(up.outcome(), None);
    }
    up.handle_stream_data(at(40), &connect);
    let out = drain(&mut up);
    assert_eq!(
        up.outcome(),
        Some(&Outcome::Failed(Failure::Protocol(
            ProtocolError::TooManyAttempts { attempt: 4, max: 3 }
        )))
    );
    assert!(out.contains(&Output::ResetStream));
    assert!(
        out.iter().any(|o| matches!(o, Output::CloseDirect { .. })),
        "pending dials cancelled"
    );
}

#[test]
fn streams_that_never_carry_a_connect_count_as_attempts() {
    let mut up = start(Side::Responder, Config::default());
    drain(&mut up);
    // A new empty stream every 9 s, just inside the step timeout.
    for i in 0..10u64 {
        up.handle_stream_opened(at(9_000 * i));
        drain(&mut up);
    }
    assert!(
        matches!(
            up.outcome(),
            Some(Outcome::Failed(Failure::AllAttemptsFailed { attempts })) if attempts.len() == 3
        ),
        "{:?}",
        up.outcome()
    );
    assert!(up.is_finished());
}
