//! The pinned-TLS identity check in the simulator: strangers on the punch
//! port (another certificate, no TLS, silence) are refused and the real
//! peer still wins.

mod common;

use std::time::Duration;

use common::*;
use dcutr_core::{
    Candidate, Config, Event, Outcome, Output, Side, Transport, reason::DirectRejection,
    reason::InboundRejected,
};
use dcutr_sim::{INITIATOR, Protocol, RESPONDER, Sim, SimConfig, Stranger};

const LIMIT: Duration = Duration::from_secs(60);

fn world(transport: Transport) -> SimConfig {
    SimConfig::two_nats(
        &Config::default(),
        Duration::from_millis(50),
        Duration::from_millis(10),
    )
    .protocol(Protocol::Session)
    .only(transport)
}

fn rejections(sim: &Sim, side: Side) -> Vec<DirectRejection> {
    sim.log
        .iter()
        .filter(|r| r.side == side)
        .filter_map(|r| match &r.output {
            Output::Event(Event::DirectRejected { reason, .. }) => Some(*reason),
            _ => None,
        })
        .collect()
}

fn assert_real_peer_won(sim: &Sim, transport: Transport) {
    let (Some(Outcome::Upgraded(b)), Some(Outcome::Upgraded(a))) = sim.outcomes() else {
        panic!("{:?}", sim.outcomes());
    };
    assert_eq!(b.remote, sim_addr(RESPONDER, transport));
    assert_eq!(a.remote, sim_addr(INITIATOR, transport));
}

/// The address the simulation gives side `index` for `transport`.
fn sim_addr(index: usize, transport: Transport) -> std::net::SocketAddr {
    let cfg = world(transport);
    let spec = if index == INITIATOR {
        cfg.initiator
    } else {
        cfg.responder
    };
    spec.addrs[0].addr
}

fn stranger(transport: Transport) -> Candidate {
    Candidate {
        transport,
        addr: "192.0.2.66:40000".parse().unwrap(),
    }
}

#[test]
fn a_stranger_with_its_own_certificate_is_refused_and_the_peer_wins() {
    for transport in [Transport::Tcp, Transport::Quic] {
        let mut sim = Sim::new(world(transport));
        // The stranger reaches the initiator's punch port before the peer
        // and completes a TLS handshake with a certificate of its own.
        sim.inject_stranger(
            INITIATOR,
            Duration::from_millis(120),
            stranger(transport),
            Stranger::Certificate([0x42; 32]),
        );
        assert!(sim.run(LIMIT));
        assert_eq!(
            rejections(&sim, Side::Initiator),
            vec![DirectRejection::IdentityMismatch],
            "{transport}"
        );
        assert_real_peer_won(&sim, transport);
    }
}

#[test]
fn a_stranger_whose_handshake_fails_is_refused_and_the_peer_wins() {
    // No TLS, or the peer's certificate shown without its key: the
    // handshake fails before any certificate is proven.
    let mut sim = Sim::new(world(Transport::Tcp));
    sim.inject_stranger(
        INITIATOR,
        Duration::from_millis(120),
        stranger(Transport::Tcp),
        Stranger::Garbage,
    );
    assert!(sim.run(LIMIT));
    assert_eq!(
        rejections(&sim, Side::Initiator),
        vec![DirectRejection::HandshakeFailed]
    );
    assert_real_peer_won(&sim, Transport::Tcp);
    assert_ne!(sim.fingerprint(INITIATOR), sim.fingerprint(RESPONDER));
}

#[test]
fn a_silent_stranger_times_out_without_blocking_the_peer() {
    let mut sim = Sim::new(world(Transport::Tcp));
    sim.inject_stranger(
        INITIATOR,
        Duration::from_millis(120),
        stranger(Transport::Tcp),
        Stranger::Silent,
    );
    assert!(sim.run(LIMIT));
    assert_real_peer_won(&sim, Transport::Tcp);
}

#[test]
fn a_stranger_at_the_responder_is_sent_nothing() {
    let mut sim = Sim::new(world(Transport::Tcp));
    sim.inject_stranger(
        RESPONDER,
        Duration::from_millis(120),
        stranger(Transport::Tcp),
        Stranger::Silent,
    );
    assert!(sim.run(LIMIT));
    assert_real_peer_won(&sim, Transport::Tcp);
    // Nothing was written to the stranger's connection: only the server's
    // select byte is ever written, and only on an authenticated winner.
    let stranger_id = sim.log.iter().find_map(|r| match &r.output {
        Output::Event(Event::DirectRejected { id, remote, .. })
            if r.side == Side::Responder && remote.port() == 40000 =>
        {
            Some(*id)
        }
        _ => None,
    });
    let wrote_to_stranger = sim.log.iter().any(|r| {
        r.side == Side::Responder
            && matches!(&r.output, Output::WriteDirect { id, .. } if Some(*id) == stranger_id)
    });
    assert!(!wrote_to_stranger);
}

#[test]
fn a_flood_of_strangers_is_capped() {
    // A peer that stays silent past the confirm timeout, so that only the
    // strangers' deadlines matter here.
    let config = Config {
        step_timeout: Config::default().confirm_timeout * 2,
        ..Config::default()
    };
    let mut up = start_session(Side::Initiator, config.clone());
    drain(&mut up);
    let max = config.max_pending_inbound;
    let mut accepted = 0;
    let mut refused = 0;
    for port in 1..=(max as u16 * 4) {
        match up.handle_inbound(at(1), tcp(&format!("192.0.2.66:{port}"))) {
            Ok(_) => accepted += 1,
            Err(InboundRejected::TooManyPending) => refused += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(accepted, max);
    assert_eq!(refused, 3 * max);
    // After the confirm timeout the slots free up again.
    let later = at(1) + config.confirm_timeout;
    up.handle_timeout(later);
    drain(&mut up);
    assert!(up.handle_inbound(later, tcp("192.0.2.66:1")).is_ok());
}

/// Found by `orchestrator` (relay 159 ms, no direct delay, QUIC, pinned
/// TLS, a public responder dialled unilaterally): the responder's select
/// byte overtook the initiator's own news of its dial, the initiator
/// refused the connection the responder had kept, and the sides
/// disagreed. Bytes inside TLS come after the receiver's handshake.
#[test]
fn with_no_direct_delay_a_unilateral_dial_is_kept_by_both_sides() {
    for transport in [Transport::Tcp, Transport::Quic] {
        let mut cfg = SimConfig::two_nats(
            &Config::default(),
            Duration::from_millis(159),
            Duration::ZERO,
        )
        .protocol(Protocol::Session)
        .only(transport);
        cfg.responder.nat = dcutr_sim::Nat::Public;
        cfg.initiator.remote_public = cfg.responder.addrs.clone();
        let mut sim = Sim::new(cfg);
        assert!(sim.run(LIMIT));
        let (Some(Outcome::Upgraded(b)), Some(Outcome::Upgraded(a))) = sim.outcomes() else {
            panic!("{transport}: {:?}", sim.outcomes());
        };
        assert_eq!(
            (b.attempt, a.attempt),
            (0, 0),
            "{transport}: the unilateral dial won"
        );
        assert_eq!(b.remote, sim_addr(RESPONDER, transport));
    }
}
