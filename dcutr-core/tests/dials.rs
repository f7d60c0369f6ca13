//! How dial results end (or do not end) an attempt.

mod common;

use common::*;
use dcutr_core::{AttemptFailure, Config, DialError, Event, Outcome, Output, Side};

/// A responder on a shared stream, caller-authenticated, that has just
/// punched: one TCP dial in flight. Returns it with the dial's id.
fn punching_responder() -> (dcutr_core::Upgrade, dcutr_core::DirectId) {
    let mut up = start_unpinned(Side::Responder, Config::default());
    drain(&mut up);
    let connect = connect_frame(&[tcp("203.0.113.5:4001")]);
    up.handle_stream_data(at(10), &[&connect[..], &sync_frame()[..]].concat());
    let dial = drain(&mut up)
        .into_iter()
        .find_map(|o| match o {
            Output::Dial(d) => Some(d.id),
            _ => None,
        })
        .expect("the punch dials");
    (up, dial)
}

fn attempt_failed(outputs: &[Output]) -> Option<AttemptFailure> {
    events(outputs).into_iter().find_map(|e| match e {
        Event::AttemptFailed { reason, .. } => Some(reason),
        _ => None,
    })
}

#[test]
fn a_refused_dial_ends_the_attempt_at_once() {
    let (mut up, dial) = punching_responder();
    up.handle_dial_failed(at(20), dial, DialError::Refused);
    assert_eq!(
        attempt_failed(&drain(&mut up)),
        Some(AttemptFailure::AllDialsFailed { dials: 1 })
    );
}

#[test]
fn a_dial_whose_address_pair_is_taken_waits_for_the_inbound_connection() {
    let (mut up, dial) = punching_responder();
    // The peer's SYN reached our listener first, so our own connect finds
    // the 4-tuple taken...
    up.handle_dial_failed(at(20), dial, DialError::AddrInUse);
    assert_eq!(attempt_failed(&drain(&mut up)), None, "the attempt goes on");
    // ...and the accepted connection is what wins.
    let id = up
        .handle_inbound(at(21), tcp("203.0.113.5:4001"))
        .expect("accepted");
    drain(&mut up);
    assert!(matches!(up.outcome(), Some(Outcome::Upgraded(u)) if u.id == id));
}

#[test]
fn io_errors_of_a_taken_address_pair_map_to_addr_in_use() {
    assert_eq!(
        DialError::from(std::io::ErrorKind::AddrNotAvailable),
        DialError::AddrInUse
    );
}

/// An address the peer had us dial stays the peer's after its attempt is
/// over and the next Connect names another one: the driver still prefers
/// a late connection from there over a stranger's.
#[test]
fn an_address_dialled_in_an_earlier_attempt_stays_the_peers() {
    let (mut up, dial) = punching_responder();
    let first = tcp("203.0.113.5:4001");
    up.handle_dial_failed(at(20), dial, DialError::Refused);
    drain(&mut up);
    let second = tcp("203.0.113.6:4001");
    let connect = connect_frame(&[second]);
    up.handle_stream_data(at(30), &[&connect[..], &sync_frame()[..]].concat());
    let dialled: Vec<_> = drain(&mut up)
        .into_iter()
        .filter_map(|o| match o {
            Output::Dial(d) => Some(d.to),
            _ => None,
        })
        .collect();
    assert_eq!(
        dialled,
        [second],
        "the second attempt dials its own address"
    );
    assert!(up.is_peer_address(&first), "dialled in attempt 1");
    assert!(up.is_peer_address(&second));
    assert!(!up.is_peer_address(&tcp("203.0.113.7:4001")));
}
