//! The initiator's QUIC client fallback: when its QUIC server punch
//! ([`QuicServerPunch::DialAsServer`], the libp2p mode) has no direct
//! connection after [`QUIC_CLIENT_FALLBACK`] (or
//! [`QUIC_CLIENT_FALLBACK_RTTS`] relayed round trips), it dials each QUIC
//! target still waiting once as a client. Fake clock throughout.

mod common;

use std::time::Duration;

use common::*;
use dcutr_core::settings::{QUIC_CLIENT_FALLBACK, QUIC_CLIENT_FALLBACK_RTTS, QuicServerPunch};
use dcutr_core::{
    Candidate, Config, Dial, DialError, DialPurpose, Outcome, Output, Role, Side, TimerKind,
    Transport, Upgrade,
};

fn config(mode: QuicServerPunch) -> Config {
    Config {
        quic_server_punch: mode,
        ..Config::default()
    }
}

/// An initiator with `config` that sent its Connect at 0 ms, got the
/// peer's Connect naming `peer` at `rtt_ms` and punched at
/// `rtt_ms + rtt_ms / 2`; returns it and the punch's dials.
fn punched(config: Config, peer: &[Candidate], rtt_ms: u64) -> (Upgrade, Vec<Dial>) {
    let mut up = start(Side::Initiator, config);
    drain(&mut up);
    up.handle_stream_opened(at(0));
    drain(&mut up);
    up.handle_stream_data(at(rtt_ms), &connect_frame(peer));
    let mut out = drain(&mut up);
    let punch_at = at(rtt_ms + rtt_ms / 2);
    assert_eq!(
        up.poll_timeout().map(|t| (t.at, t.kind)),
        Some((punch_at, TimerKind::SyncDelay))
    );
    up.handle_timeout(punch_at);
    out.extend(drain(&mut up));
    let dials = dials(&out);
    (up, dials)
}

/// Runs the upgrade's timers up to `until_ms`, one due timer at a time;
/// returns the dials it made.
fn run_until(up: &mut Upgrade, until_ms: u64) -> Vec<Dial> {
    let mut made = Vec::new();
    for _ in 0..10_000 {
        let Some(t) = up.poll_timeout() else { break };
        if t.at > at(until_ms) {
            break;
        }
        up.handle_timeout(t.at);
        made.extend(dials(&drain(up)));
    }
    made
}

fn fallback_wait(rtt_ms: u64) -> Duration {
    Duration::from_millis(rtt_ms) * QUIC_CLIENT_FALLBACK_RTTS + QUIC_CLIENT_FALLBACK
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap()
}

#[test]
fn an_unanswered_quic_server_punch_dials_each_quic_target_once_as_a_client() {
    let peer = [
        quic("203.0.113.5:4001"),
        tcp("203.0.113.5:4001"),
        quic("203.0.113.6:4002"),
    ];
    // 6 ms relayed round trip, punch at 9 ms.
    let (mut up, punch) = punched(config(QuicServerPunch::DialAsServer), &peer, 6);
    assert_eq!(punch.len(), 3, "{punch:?}");
    assert!(punch.iter().all(|d| d.role == Role::Server), "{punch:?}");
    let fire = at(9) + fallback_wait(6);
    assert_eq!(
        up.poll_timeout().map(|t| (t.at, t.kind)),
        Some((fire, TimerKind::QuicClientFallback))
    );
    // Not a moment early.
    up.handle_timeout(fire - Duration::from_millis(1));
    assert!(dials(&drain(&mut up)).is_empty());
    up.handle_timeout(fire);
    let fallback = dials(&drain(&mut up));
    let to: Vec<Candidate> = fallback.iter().map(|d| d.to).collect();
    assert_eq!(to, [peer[0], peer[2]], "QUIC targets only: {fallback:?}");
    for d in &fallback {
        assert_eq!(
            (d.role, d.purpose, d.attempt),
            (Role::Client, DialPurpose::HolePunch, 1)
        );
    }
    // Once: nothing more for the rest of the punch window.
    let later = run_until(&mut up, 4_000);
    assert!(later.is_empty(), "{later:?}");
    // The timeline knows the fallback dials as client dials.
    let client_dials = up
        .timeline()
        .dials()
        .iter()
        .filter(|d| d.role() == Role::Client && d.to().transport == Transport::Quic)
        .count();
    assert_eq!(client_dials, 2);
}

#[test]
fn the_fallback_waits_longer_on_a_slow_relay() {
    let peer = [quic("203.0.113.5:4001")];
    let (mut up, _) = punched(config(QuicServerPunch::DialAsServer), &peer, 100);
    // Punch at 150 ms; two round trips more than on a fast relay.
    let fire = 150 + ms(fallback_wait(100));
    assert_eq!(
        fallback_wait(100),
        fallback_wait(0) + Duration::from_millis(200)
    );
    assert!(run_until(&mut up, fire - 1).is_empty());
    let fallback = run_until(&mut up, fire);
    assert_eq!(fallback.len(), 1, "{fallback:?}");
    assert_eq!(fallback[0].role, Role::Client);
}

#[test]
fn no_fallback_once_the_punch_connected() {
    let peer = [quic("203.0.113.5:4001"), quic("203.0.113.6:4001")];
    let (mut up, punch) = punched(config(QuicServerPunch::DialAsServer), &peer, 6);
    up.handle_dial_succeeded(at(10), punch[0].id);
    drain(&mut up);
    assert!(matches!(up.outcome(), Some(Outcome::Upgraded(_))));
    let later = run_until(&mut up, 10_000);
    assert!(later.is_empty(), "{later:?}");
}

#[test]
fn no_fallback_to_a_target_whose_server_dial_already_failed() {
    let peer = [quic("203.0.113.5:4001"), quic("203.0.113.6:4001")];
    let (mut up, punch) = punched(config(QuicServerPunch::DialAsServer), &peer, 6);
    up.handle_dial_failed(at(10), punch[0].id, DialError::Unreachable);
    drain(&mut up);
    let fallback = run_until(&mut up, 1_000);
    let to: Vec<Candidate> = fallback.iter().map(|d| d.to).collect();
    assert_eq!(to, [peer[1]]);
}

#[test]
fn no_fallback_for_tcp_or_when_the_quic_punch_is_no_server_dial() {
    // TCP only, in the libp2p mode.
    let (mut up, punch) = punched(
        config(QuicServerPunch::DialAsServer),
        &[tcp("203.0.113.5:4001")],
        6,
    );
    assert_eq!(punch.len(), 1);
    assert!(run_until(&mut up, 4_000).is_empty());
    // Already a client dial, as stock.
    let (mut up, punch) = punched(
        config(QuicServerPunch::DialAsClient),
        &[quic("203.0.113.5:4001")],
        6,
    );
    assert_eq!(punch.len(), 1);
    assert!(run_until(&mut up, 4_000).is_empty());
    // The standalone spray: datagrams, and the client (ours) re-sends its
    // Initial after the driver's short initial RTT.
    let (mut up, punch) = punched(
        config(QuicServerPunch::Spray),
        &[quic("203.0.113.5:4001")],
        6,
    );
    assert!(punch.is_empty());
    assert!(run_until(&mut up, 4_000).is_empty());
}

#[test]
fn the_fallback_stays_within_the_per_ip_punch_budget() {
    // Four QUIC ports of one IP fill its budget: no fallback there; the
    // other IP's target still gets one.
    let mut peer: Vec<Candidate> = (0..4)
        .map(|i| quic(&format!("203.0.113.5:{}", 4001 + i)))
        .collect();
    peer.push(quic("203.0.113.6:4001"));
    let max = dcutr_core::settings::MAX_PUNCHES_PER_IP;
    assert_eq!(max, 4, "the test names four ports of one IP");
    let (mut up, punch) = punched(config(QuicServerPunch::DialAsServer), &peer, 6);
    assert_eq!(punch.len(), 5);
    let fallback = run_until(&mut up, 1_000);
    let to: Vec<Candidate> = fallback.iter().map(|d| d.to).collect();
    assert_eq!(to, [peer[4]]);
    // Three ports: one fallback dial on that IP brings it to four.
    let (mut up, _) = punched(config(QuicServerPunch::DialAsServer), &peer[..3], 6);
    let fallback = run_until(&mut up, 1_000);
    let to: Vec<Candidate> = fallback.iter().map(|d| d.to).collect();
    assert_eq!(to, [peer[0]]);
}

#[test]
fn the_fallback_stays_within_the_per_upgrade_dial_budget() {
    let config = Config {
        max_dials_per_upgrade: 3,
        ..config(QuicServerPunch::DialAsServer)
    };
    let peer = [quic("203.0.113.5:4001"), quic("203.0.113.6:4001")];
    let (mut up, punch) = punched(config, &peer, 6);
    assert_eq!(punch.len(), 2);
    let fallback = run_until(&mut up, 1_000);
    let to: Vec<Candidate> = fallback.iter().map(|d| d.to).collect();
    assert_eq!(to, [peer[0]], "one dial of three left");
    assert_eq!(up.timeline().dials().len(), 3);
}

#[test]
fn the_next_attempt_gets_its_own_fallback_and_no_stale_one() {
    let peer = [quic("203.0.113.5:4001")];
    let (mut up, punch) = punched(config(QuicServerPunch::DialAsServer), &peer, 6);
    // The server dial fails before the fallback: the attempt is over (no
    // dial left) and attempt 2 starts at once.
    up.handle_dial_failed(at(10), punch[0].id, DialError::Refused);
    let out = drain(&mut up);
    assert!(out.contains(&Output::OpenStream), "{out:?}");
    assert!(dials(&out).is_empty());
    assert_ne!(
        up.poll_timeout().map(|t| t.kind),
        Some(TimerKind::QuicClientFallback),
        "attempt 1's fallback is gone"
    );
    up.handle_stream_opened(at(11));
    drain(&mut up);
    up.handle_stream_data(at(21), &connect_frame(&peer));
    drain(&mut up);
    let mut made = run_until(&mut up, 26);
    assert_eq!(made.len(), 1, "attempt 2's server dial: {made:?}");
    assert_eq!((made[0].role, made[0].attempt), (Role::Server, 2));
    assert!(run_until(&mut up, 26 + ms(fallback_wait(10)) - 1).is_empty());
    made = run_until(&mut up, 26 + ms(fallback_wait(10)));
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!((made[0].role, made[0].attempt), (Role::Client, 2));
}

#[test]
fn the_responder_never_falls_back() {
    let mut up = start(Side::Responder, config(QuicServerPunch::DialAsServer));
    drain(&mut up);
    up.handle_stream_opened(at(1));
    let connect = connect_frame(&[quic("203.0.113.5:4001")]);
    up.handle_stream_data(at(2), &[&connect[..], &sync_frame()[..]].concat());
    let punch = dials(&drain(&mut up));
    assert_eq!(punch.len(), 1);
    assert_eq!(punch[0].role, Role::Client);
    assert!(run_until(&mut up, 4_000).is_empty());
}
