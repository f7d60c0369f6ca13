//! Per-attempt streams, the end of the relayed connection, the QUIC server
//! punch modes, and what we advertise.

mod common;

use common::*;
use dcutr_core::wire::{FrameDecoder, Message, decode_message};
use dcutr_core::{
    Config, Dialable, Event, Failure, Outcome, Output, Role, Side, Transport, reason::Step,
    settings::QuicServerPunch,
};

fn failures(outputs: &[Output]) -> usize {
    events(outputs)
        .iter()
        .filter(|e| matches!(e, Event::AttemptFailed { .. }))
        .count()
}

#[test]
fn the_responder_finishes_its_stream_on_sync_so_the_close_is_no_failure() {
    let mut up = start(Side::Responder, Config::default());
    drain(&mut up);
    up.handle_stream_opened(at(1));
    let connect = connect_frame(&[tcp("203.0.113.5:4001")]);
    up.handle_stream_data(at(2), &[&connect[..], &sync_frame()[..]].concat());
    let out = drain(&mut up);
    assert!(out.contains(&Output::FinishStream), "{out:?}");
    // The initiator finishes its end too: nothing failed.
    up.handle_stream_closed(at(3));
    assert_eq!(failures(&drain(&mut up)), 0);
    // The initiator gives up on this punch and opens attempt 2: it is the
    // second attempt, not the third.
    up.handle_stream_opened(at(4));
    up.handle_stream_data(at(5), &connect);
    let out = drain(&mut up);
    assert!(
        events(&out).contains(&Event::AttemptStarted { attempt: 2 }),
        "{out:?}"
    );
}

#[test]
fn a_closed_relay_connection_ends_the_exchange_at_once() {
    let mut up = start(Side::Initiator, Config::default());
    drain(&mut up);
    up.handle_stream_opened(at(1));
    drain(&mut up);
    up.handle_relay_closed(at(2));
    drain(&mut up);
    assert_eq!(
        up.outcome(),
        Some(&Outcome::Failed(Failure::RelayClosed {
            step: Step::Connect
        }))
    );
}

#[test]
fn a_closed_relay_connection_lets_the_punch_in_flight_finish_then_fails() {
    let mut up = start(Side::Responder, Config::default());
    drain(&mut up);
    up.handle_stream_opened(at(1));
    let connect = connect_frame(&[tcp("203.0.113.5:4001")]);
    up.handle_stream_data(at(2), &[&connect[..], &sync_frame()[..]].concat());
    let dial = drain(&mut up)
        .into_iter()
        .find_map(|o| match o {
            Output::Dial(d) => Some(d.id),
            _ => None,
        })
        .unwrap();
    up.handle_relay_closed(at(3));
    assert_eq!(up.outcome(), None, "the punch may still win");
    up.handle_dial_failed(at(4), dial, dcutr_core::DialError::Refused);
    drain(&mut up);
    assert_eq!(
        up.outcome(),
        Some(&Outcome::Failed(Failure::RelayClosed {
            step: Step::NextAttempt
        }))
    );
}

/// The initiator's punch over QUIC in `mode`: its dials and datagrams.
fn initiator_quic_punch(mode: QuicServerPunch) -> Vec<Output> {
    let config = Config {
        quic_server_punch: mode,
        ..Config::default()
    };
    let mut up = start(Side::Initiator, config);
    drain(&mut up);
    up.handle_stream_opened(at(1));
    drain(&mut up);
    up.handle_stream_data(at(1), &connect_frame(&[quic("203.0.113.5:4001")]));
    let mut out = drain(&mut up);
    up.handle_timeout(at(1));
    out.extend(drain(&mut up));
    out.retain(|o| matches!(o, Output::Dial(_) | Output::SendDatagram { .. }));
    out
}

#[test]
fn the_quic_server_sprays_by_default_and_dials_only_when_told() {
    let spray = initiator_quic_punch(QuicServerPunch::Spray);
    assert!(
        matches!(spray.as_slice(), [Output::SendDatagram { .. }]),
        "{spray:?}"
    );
    for (mode, role) in [
        (QuicServerPunch::DialAsServer, Role::Server),
        (QuicServerPunch::DialAsClient, Role::Client),
    ] {
        let out = initiator_quic_punch(mode);
        let [Output::Dial(dial)] = out.as_slice() else {
            panic!("{mode:?}: {out:?}");
        };
        assert_eq!(
            (dial.to.transport, dial.role),
            (Transport::Quic, role),
            "{mode:?}"
        );
    }
}

#[test]
fn only_transports_we_can_dial_are_advertised() {
    let config = Config {
        dialable: Dialable::none().with(Transport::Tcp, false),
        ..Config::default()
    };
    let mut up = start(Side::Initiator, config);
    drain(&mut up);
    up.handle_stream_opened(at(1));
    let frame = drain(&mut up)
        .into_iter()
        .find_map(|o| match o {
            Output::WriteStream(b) => Some(b),
            _ => None,
        })
        .unwrap();
    let payload = FrameDecoder::new(4096)
        .decode(&mut &frame[..])
        .unwrap()
        .unwrap();
    let Ok(Message::Connect(addrs)) = decode_message(&payload) else {
        panic!("a Connect");
    };
    // `start` observes one TCP and one QUIC address; only TCP is sent.
    assert_eq!(addrs.len(), 1);
    let sent = dcutr_core::Candidate::from_bytes(&addrs[0]).unwrap();
    assert_eq!(sent.transport, Transport::Tcp);
}
