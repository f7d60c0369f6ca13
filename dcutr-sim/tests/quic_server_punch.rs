//! The libp2p mode's QUIC server punch
//! ([`QuicServerPunch::DialAsServer`]) and the initiator's client fallback
//! when the responder's first Initial met its NAT before the punch opened
//! it.

use std::time::Duration;

use dcutr_core::settings::{QUIC_CLIENT_FALLBACK, QUIC_CLIENT_FALLBACK_RTTS, QuicServerPunch};
use dcutr_core::{Config, Event, Outcome, Output, Role, Side, Transport, Upgraded};
use dcutr_sim::{INITIATOR, RESPONDER, Sim, SimConfig};

const LIMIT: Duration = Duration::from_secs(60);

fn libp2p_mode() -> Config {
    Config {
        quic_server_punch: QuicServerPunch::DialAsServer,
        // dcutr-libp2p cannot send priming packets (libp2p's transports
        // have no per-packet TTL), so the libp2p mode runs without them:
        // the early Initial this file is about is what priming prevents.
        prime_ttl: None,
        ..Config::default()
    }
}

fn upgraded(sim: &Sim, index: usize) -> Upgraded {
    match sim.upgrade(index).outcome() {
        Some(Outcome::Upgraded(up)) => *up,
        other => panic!("side {index}: {other:?}"),
    }
}

fn upgraded_at(sim: &Sim, side: Side) -> Duration {
    sim.first(side, |o| matches!(o, Output::Event(Event::Upgraded(_))))
        .expect("upgraded")
}

fn first_dial(sim: &Sim, side: Side, role: Role) -> Option<Duration> {
    sim.first(side, |o| matches!(o, Output::Dial(d) if d.role == role))
}

/// Relayed one way 1 ms out and `back_ms` back, direct 1 ms, QUIC only,
/// two firewalled NATs.
fn run(back_ms: u64) -> Sim {
    let one_ms = Duration::from_millis(1);
    let mut cfg = SimConfig::two_nats(&libp2p_mode(), one_ms, one_ms).only(Transport::Quic);
    cfg.relay_back = Some(Duration::from_millis(back_ms));
    let mut sim = Sim::new(cfg);
    assert!(sim.run(LIMIT), "both sides finish");
    sim
}

#[test]
fn an_early_initial_costs_the_fallback_wait_not_a_retransmission_timeout() {
    // Sync reaches the responder after 1 ms, but the initiator waits half
    // of a 22 ms round trip: the responder's Initial meets the
    // initiator's NAT 10 ms before its server punch and is dropped.
    let sim = run(21);
    let a_dials = first_dial(&sim, Side::Responder, Role::Client).expect("A dialled");
    let b_punch = first_dial(&sim, Side::Initiator, Role::Server).expect("B punched");
    assert!(
        a_dials + Duration::from_millis(1) < b_punch,
        "A's Initial {a_dials:?} + 1 ms arrives before B's punch {b_punch:?}"
    );
    // B's fallback client dial wins, its wait after the punch.
    let b = upgraded(&sim, INITIATOR);
    assert_eq!((b.role, b.transport), (Role::Client, Transport::Quic));
    let fallback = first_dial(&sim, Side::Initiator, Role::Client).expect("fallback");
    assert_eq!(
        fallback - b_punch,
        Duration::from_millis(22) * QUIC_CLIENT_FALLBACK_RTTS + QUIC_CLIENT_FALLBACK
    );
    let a = upgraded(&sim, RESPONDER);
    assert_eq!(a.transport, Transport::Quic);
    // Both sides are direct one direct round trip after the fallback,
    // not after A's re-send a second after its first Initial.
    for side in [Side::Initiator, Side::Responder] {
        let at = upgraded_at(&sim, side);
        assert!(at <= fallback + Duration::from_millis(2), "{side}: {at:?}");
        assert!(at + Duration::from_millis(500) < a_dials + Duration::from_secs(1));
    }
}

#[test]
fn a_punch_that_meets_makes_one_connection_and_no_fallback() {
    // A symmetric relay: A's Initial arrives 1 ms after B's punch opened
    // B's NAT, and B's server punch takes it.
    let sim = run(1);
    let b = upgraded(&sim, INITIATOR);
    assert_eq!((b.role, b.transport), (Role::Server, Transport::Quic));
    assert_eq!(
        first_dial(&sim, Side::Initiator, Role::Client),
        None,
        "no fallback dial"
    );
    let b_dials = sim.dialled.iter().filter(|(i, _)| *i == INITIATOR).count();
    assert_eq!(b_dials, 1);
    assert!(upgraded_at(&sim, Side::Initiator) < Duration::from_millis(10));
}
