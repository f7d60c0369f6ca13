//! Attempts, retries and the unilateral dial, on the simulated network.

mod common;

use std::time::Duration;

use dcutr_core::{AttemptFailure, Config, Event, Failure, Outcome, Output, Role, Side, Transport};
use dcutr_sim::{Block, INITIATOR, Nat, Protocol, RESPONDER, Sim, SimConfig};

const RELAY_ONE_WAY: Duration = Duration::from_millis(50);
const DIRECT_ONE_WAY: Duration = Duration::from_millis(10);
const LIMIT: Duration = Duration::from_secs(300);

fn world(protocol: Protocol, transport: Transport) -> SimConfig {
    SimConfig::two_nats(&Config::default(), RELAY_ONE_WAY, DIRECT_ONE_WAY)
        .protocol(protocol)
        .only(transport)
}

fn attempt_failures(outcome: Option<&Outcome>) -> Vec<AttemptFailure> {
    match outcome {
        Some(Outcome::Failed(Failure::AllAttemptsFailed { attempts })) => attempts.clone(),
        other => panic!("expected all attempts to fail, got {other:?}"),
    }
}

#[test]
fn attempts_one_and_two_fail_and_the_third_succeeds() {
    for protocol in [Protocol::Spec, Protocol::Session] {
        for transport in [Transport::Tcp, Transport::Quic] {
            let mut cfg = world(protocol, transport);
            cfg.blocked_attempts = vec![1, 2];
            let mut sim = Sim::new(cfg);
            assert!(sim.run(LIMIT));
            let (Some(Outcome::Upgraded(b)), Some(Outcome::Upgraded(a))) = sim.outcomes() else {
                panic!("{transport}: {:?}", sim.outcomes());
            };
            assert_eq!((b.attempt, a.attempt), (3, 3), "{transport}");
            let timeline = sim.upgrade(INITIATOR).timeline();
            assert_eq!(timeline.attempts().len(), 3);
            for record in &timeline.attempts()[..2] {
                assert_eq!(
                    record.failure(),
                    Some(&AttemptFailure::DirectTimeout {
                        after: Duration::from_secs(5)
                    }),
                    "{transport}"
                );
            }
            assert_eq!(timeline.attempts()[2].failure(), None);
        }
    }
}

#[test]
fn three_failed_attempts_end_the_upgrade_after_the_expected_time() {
    let rtt = 2 * RELAY_ONE_WAY;
    let direct_timeout = Config::default().direct_timeout;
    for protocol in [Protocol::Spec, Protocol::Session] {
        let mut cfg = world(protocol, Transport::Tcp);
        cfg.blocked_attempts = vec![1, 2, 3];
        let mut sim = Sim::new(cfg);
        assert!(sim.run(LIMIT));
        let b = attempt_failures(sim.upgrade(INITIATOR).outcome());
        let a = attempt_failures(sim.upgrade(RESPONDER).outcome());
        assert_eq!(b.len(), 3);
        assert_eq!(a.len(), 3);
        // Each attempt: Connect, one RTT to the answer, RTT/2 to the punch,
        // then the whole direct window.
        let per_attempt = rtt + rtt / 2 + direct_timeout;
        let decided = sim.upgrade(INITIATOR).timeline().duration().unwrap();
        assert_eq!(decided, 3 * per_attempt, "{protocol:?}");
        // The relay stays in use: nobody reset or closed it.
        assert!(
            !sim.log
                .iter()
                .any(|r| matches!(r.output, Output::ResetStream | Output::CloseRelay)),
            "a failed upgrade leaves the relayed stream alone"
        );
        assert_eq!(sim.upgrade(INITIATOR).stream_bytes_wanted(), 0);
        assert_eq!(sim.upgrade(RESPONDER).stream_bytes_wanted(), 0);
    }
}

#[test]
fn refused_dials_end_an_attempt_early() {
    let mut cfg = world(Protocol::Session, Transport::Tcp);
    cfg.blocked_attempts = vec![1, 2, 3];
    cfg.block = Block::Refuse;
    let mut sim = Sim::new(cfg);
    assert!(sim.run(LIMIT));
    let failures = attempt_failures(sim.upgrade(INITIATOR).outcome());
    assert_eq!(
        failures,
        vec![AttemptFailure::AllDialsFailed { dials: 1 }; 3]
    );
    // Three exchanges of 1.5 RTT plus one direct round trip each.
    let expected = 3 * (3 * RELAY_ONE_WAY + 2 * DIRECT_ONE_WAY);
    assert_eq!(sim.upgrade(INITIATOR).timeline().duration(), Some(expected));
}

#[test]
fn a_unilateral_dial_that_works_wins_in_both_modes() {
    for protocol in [Protocol::Spec, Protocol::Session] {
        let mut cfg = world(protocol, Transport::Tcp);
        cfg.responder.nat = Nat::Public;
        cfg.initiator.remote_public = cfg.responder.addrs.clone();
        let mut sim = Sim::new(cfg);
        assert!(sim.run(LIMIT));
        let (Some(Outcome::Upgraded(b)), Some(Outcome::Upgraded(a))) = sim.outcomes() else {
            panic!("{:?}", sim.outcomes());
        };
        assert_eq!((b.attempt, a.attempt), (0, 0));
        assert_eq!(
            (b.role, a.role),
            (Role::Client, Role::Server),
            "B dials, so B is the client"
        );
    }
}

#[test]
fn in_the_spec_mode_the_unilateral_dial_runs_alongside_the_first_attempt() {
    let mut cfg = world(Protocol::Spec, Transport::Tcp);
    cfg.responder.nat = Nat::Public;
    cfg.initiator.remote_public = cfg.responder.addrs.clone();
    let mut sim = Sim::new(cfg);
    assert!(sim.run(LIMIT));
    let dial = |o: &Output| matches!(o, Output::Dial(_));
    let opened = |o: &Output| matches!(o, Output::OpenStream);
    // Both leave at the start: nothing waits for the other.
    assert_eq!(sim.first(Side::Initiator, dial), Some(Duration::ZERO));
    assert_eq!(sim.first(Side::Initiator, opened), Some(Duration::ZERO));
    // The direct connection is up after one direct round trip, before
    // the relayed exchange (1.5 relayed round trips) could have punched.
    assert_eq!(
        sim.upgrade(INITIATOR).timeline().duration(),
        Some(2 * DIRECT_ONE_WAY)
    );
}

#[test]
fn with_the_identity_check_a_unilateral_dial_comes_before_any_attempt() {
    let mut cfg = world(Protocol::Session, Transport::Tcp);
    cfg.responder.nat = Nat::Public;
    cfg.initiator.remote_public = cfg.responder.addrs.clone();
    let mut sim = Sim::new(cfg);
    assert!(sim.run(LIMIT));
    assert!(
        !sim.log
            .iter()
            .any(|r| matches!(r.output, Output::Event(Event::AttemptStarted { .. }))),
        "no hole-punch attempt was started"
    );
}

#[test]
fn public_addresses_that_arrive_during_the_exchange_are_dialled_at_once() {
    let mut cfg = world(Protocol::Spec, Transport::Tcp);
    cfg.responder.nat = Nat::Public;
    let addrs = cfg.responder.addrs.clone();
    let mut sim = Sim::new(cfg);
    // Half a relayed round trip in, identify tells us the peer's address.
    let learnt_at = RELAY_ONE_WAY;
    sim.run_until(learnt_at);
    sim.add_remote_public(INITIATOR, addrs.clone());
    sim.add_remote_public(INITIATOR, addrs);
    assert!(sim.run(LIMIT));
    let unilateral = |o: &Output| matches!(o, Output::Dial(d) if d.purpose == dcutr_core::DialPurpose::Unilateral);
    assert_eq!(sim.first(Side::Initiator, unilateral), Some(learnt_at));
    let dials = sim
        .log
        .iter()
        .filter(|r| r.side == Side::Initiator && unilateral(&r.output))
        .count();
    assert_eq!(dials, 1, "an address learnt twice is dialled once");
    let Some(Outcome::Upgraded(b)) = sim.outcomes().0 else {
        panic!("{:?}", sim.outcomes());
    };
    assert_eq!(b.attempt, 0, "the unilateral dial won");
    assert_eq!(
        sim.upgrade(INITIATOR).timeline().duration(),
        Some(learnt_at + 2 * DIRECT_ONE_WAY)
    );
}

#[test]
fn a_unilateral_dial_that_fails_falls_back_to_hole_punching() {
    let config = Config::default();
    let mut cfg = world(Protocol::Session, Transport::Tcp);
    cfg.initiator.remote_public = cfg.responder.addrs.clone();
    // The responder is firewalled: the unilateral SYNs are dropped.
    let mut sim = Sim::new(cfg);
    assert!(sim.run(LIMIT));
    let (Some(Outcome::Upgraded(b)), Some(Outcome::Upgraded(a))) = sim.outcomes() else {
        panic!("{:?}", sim.outcomes());
    };
    assert_eq!((b.attempt, a.attempt), (1, 1));
    assert_eq!((b.role, a.role), (Role::Server, Role::Client));
    let failed_at = sim
        .first(Side::Initiator, |o| {
            matches!(o, Output::Event(Event::UnilateralFailed))
        })
        .unwrap();
    // Hello first (one way), then the whole unilateral timeout.
    assert_eq!(failed_at, RELAY_ONE_WAY + config.unilateral_timeout);
}

#[test]
fn in_the_spec_mode_a_failing_unilateral_dial_costs_the_hole_punch_nothing() {
    let plain = world(Protocol::Spec, Transport::Tcp);
    let mut with_dial = plain.clone();
    // The responder is firewalled: the unilateral SYNs are dropped.
    with_dial.initiator.remote_public = with_dial.responder.addrs.clone();
    let mut runs = [Sim::new(plain), Sim::new(with_dial)];
    for sim in &mut runs {
        assert!(sim.run(LIMIT));
    }
    let [plain, with_dial] = &runs;
    // Both the punch and the unilateral dial (whose SYNs cross the
    // peer's punch once the peer's firewall opens) may be the connection.
    let Some(Outcome::Upgraded(_)) = with_dial.outcomes().0 else {
        panic!("{:?}", with_dial.outcomes());
    };
    let decided = |sim: &Sim| sim.upgrade(INITIATOR).timeline().decided();
    assert_eq!(
        decided(with_dial).map(|t| t - with_dial.start()),
        decided(plain).map(|t| t - plain.start()),
        "the punch is not delayed by the unilateral dial"
    );
    assert!(
        with_dial
            .first(
                Side::Initiator,
                |o| matches!(o, Output::Dial(d) if d.purpose == dcutr_core::DialPurpose::Unilateral)
            )
            .is_some()
    );
}
