//! Whole upgrades between two honest cores in [`dcutr_sim::Sim`], with
//! chosen delays, NATs, transports, blocked attempts and strangers, and the
//! checks that both sides end the same way.

use std::net::SocketAddr;
use std::time::Duration;

use dcutr_core::{Candidate, Config, Outcome, Output, Role, Side, Transport};
use dcutr_sim::{Block, INITIATOR, Nat, Protocol, RESPONDER, Sim, SimConfig};

/// A stranger that connects to one side's punch port.
#[derive(Clone, Debug)]
pub struct Stranger {
    /// Which side it reaches ([`INITIATOR`] or [`RESPONDER`]).
    pub to: usize,
    /// When, from the start.
    pub after: Duration,
    /// From where (never one of the peers' addresses).
    pub from: Candidate,
    /// What it does on the connection.
    pub kind: dcutr_sim::Stranger,
}

/// One simulated world.
#[derive(Clone, Debug)]
pub struct World {
    /// The simulation's own config.
    pub sim: SimConfig,
    /// Strangers to inject.
    pub strangers: Vec<Stranger>,
}

/// What the run produced, for further checks.
pub struct Run {
    /// The simulation after the run.
    pub sim: Sim,
    /// Simulated time the run took.
    pub took: Duration,
}

/// The time within which both sides must be finished (outcome, cleanup and
/// grace period), computed from the configs and the delays.
#[must_use]
pub fn time_bound(world: &World) -> Duration {
    let per_side = |c: &Config| {
        let attempts = u32::from(c.max_attempts);
        2 * c.step_timeout
            + c.unilateral_timeout
            + attempts * (3 * c.step_timeout + 2 * c.direct_timeout + c.confirm_timeout)
            + c.confirm_timeout
            + c.relay_grace_period
    };
    let a = per_side(&world.sim.initiator.config);
    let b = per_side(&world.sim.responder.config);
    let delays = 8 * (world.sim.relay_one_way + world.sim.direct_one_way);
    a.max(b) + delays + Duration::from_secs(1)
}

/// Whether each side may keep a different connection: without the
/// identity check nothing on the wire makes the sides agree when TCP and QUIC both
/// connect, so the core leaves the connections it did not pick to the
/// caller instead of closing them (since 129c654; see
/// `fuzz_regressions::both_transports_without_identity_check_upgrade_on_different_connections`).
fn independent_winners(world: &World) -> bool {
    let transports = |addrs: &[Candidate]| {
        addrs.iter().any(|c| c.transport == Transport::Tcp)
            && addrs.iter().any(|c| c.transport == Transport::Quic)
    };
    world.sim.initiator.protocol != Protocol::Session
        && transports(&world.sim.initiator.addrs)
        && transports(&world.sim.responder.addrs)
}

/// Whether the initiator's unilateral dial may run alongside its first
/// attempt: the spec's mode (no identity check) with public addresses of
/// the peer to dial.
fn unilateral_alongside(world: &World) -> bool {
    let b = &world.sim.initiator;
    b.protocol == Protocol::Spec && b.config.unilateral && !b.remote_public.is_empty()
}

/// Runs `world` and checks termination, agreement and roles.
///
/// # Panics
/// When an invariant breaks.
#[must_use]
pub fn run(world: &World) -> Run {
    let bound = time_bound(world);
    let mut sim = Sim::new(world.sim.clone());
    for s in &world.strangers {
        sim.inject_stranger(s.to, s.after, s.from, s.kind);
    }
    let finished = sim.run(bound);
    let took = sim.elapsed();
    assert!(
        finished,
        "not finished after {took:?} (bound {bound:?}): {:?}",
        sim.outcomes()
    );
    check(world, &sim);
    if crate::trace() {
        let kind = |o: Option<&Outcome>| match o {
            Some(Outcome::Upgraded(u)) => format!("upgraded/{}/{}", u.attempt, u.transport),
            Some(Outcome::Failed(_)) => "failed".to_owned(),
            None => "none".to_owned(),
        };
        let (b, a) = sim.outcomes();
        eprintln!(
            "trace {:?} strangers={} {} {}",
            world.sim.initiator.protocol,
            world.strangers.len().min(3),
            kind(b),
            kind(a)
        );
    }
    Run { sim, took }
}

fn addr_of(spec: &dcutr_sim::PeerSpec, transport: Transport) -> Option<SocketAddr> {
    spec.addrs
        .iter()
        .find(|c| c.transport == transport)
        .map(|c| c.addr)
}

/// Each side's winning connection goes to the other peer, not to a
/// stranger at an address the peer named.
fn assert_winners_are_each_other(
    world: &World,
    b: &dcutr_core::Upgraded,
    a: &dcutr_core::Upgraded,
) {
    assert_eq!(
        Some(b.remote),
        addr_of(&world.sim.responder, b.transport),
        "the initiator's winner is the responder, not a stranger"
    );
    assert_eq!(
        Some(a.remote),
        addr_of(&world.sim.initiator, a.transport),
        "the responder's winner is the initiator, not a stranger"
    );
}

fn check(world: &World, sim: &Sim) {
    let (b, a) = sim.outcomes();
    match (b, a) {
        (Some(Outcome::Upgraded(b)), Some(Outcome::Upgraded(a)))
            if unilateral_alongside(world) && (b.attempt == 0) != (a.attempt == 0) =>
        {
            // In the spec's mode the initiator's unilateral dial runs
            // alongside the punch, and the responder cannot tell the one
            // from the other: it names the attempt it is in. Both still
            // won the connection to each other.
            assert_winners_are_each_other(world, b, a);
        }
        (Some(Outcome::Upgraded(b)), Some(Outcome::Upgraded(a))) => {
            assert_eq!(b.attempt, a.attempt, "both sides name the same attempt");
            let (b_role, a_role) = if b.attempt == 0 {
                (Role::Client, Role::Server)
            } else {
                (Role::Server, Role::Client)
            };
            assert_eq!(
                b.role, b_role,
                "initiator (B) role in attempt {}",
                b.attempt
            );
            assert_eq!(
                a.role, a_role,
                "responder (A) role in attempt {}",
                a.attempt
            );
            if independent_winners(world) {
                // Each may keep its own, but neither closes anything once
                // it has won, so the connection the other kept survives.
                for side in [Side::Initiator, Side::Responder] {
                    let won = sim
                        .log
                        .iter()
                        .position(|r| {
                            r.side == side
                                && matches!(r.output, Output::Event(dcutr_core::Event::Upgraded(_)))
                        })
                        .expect("upgraded");
                    let late_close = sim.log[won..]
                        .iter()
                        .find(|r| r.side == side && matches!(r.output, Output::CloseDirect { .. }));
                    assert!(
                        late_close.is_none(),
                        "{side} closed a connection after its outcome: {late_close:?}"
                    );
                }
            } else {
                assert_eq!(b.transport, a.transport, "both sides on one transport");
            }
            assert_winners_are_each_other(world, b, a);
        }
        (Some(Outcome::Failed(_)), Some(Outcome::Failed(_))) => {}
        other => panic!(
            "the sides disagree: {other:?} (relay {:?}, direct {:?} one way)",
            world.sim.relay_one_way, world.sim.direct_one_way
        ),
    }
    // The sides punch only each other, within budget.
    for (side, target) in &sim.dialled {
        let other = if *side == INITIATOR {
            &world.sim.responder
        } else {
            &world.sim.initiator
        };
        assert!(
            other.addrs.contains(target) || world.sim.initiator.remote_public.contains(target),
            "side {side} dialled {target}, which the peer never named"
        );
    }
    let cfg = &world.sim.initiator.config;
    let sprayed = sim
        .datagrams
        .iter()
        .filter(|(s, _)| *s == INITIATOR)
        .count();
    assert!(
        sim.datagrams.iter().all(|(s, _)| *s == INITIATOR),
        "the responder sprayed"
    );
    let budget = u64::from(cfg.max_attempts) * u64::from(cfg.max_spray_packets_per_attempt);
    assert!(
        sprayed as u64 <= budget,
        "{sprayed} datagrams, budget {budget}"
    );
    for (side, spec) in [
        (INITIATOR, &world.sim.initiator),
        (RESPONDER, &world.sim.responder),
    ] {
        let started = sim
            .log
            .iter()
            .filter(|r| r.side == side_of(side))
            .filter(|r| {
                matches!(
                    r.output,
                    Output::Event(dcutr_core::Event::AttemptStarted { .. })
                )
            })
            .count();
        assert!(started <= usize::from(spec.config.max_attempts));
    }
    // A shared stream may carry application bytes after a failure: neither
    // side may reset it.
    let shared = world.sim.initiator.protocol != Protocol::Spec;
    if shared && matches!(b, Some(Outcome::Failed(_))) && world.strangers.is_empty() {
        let nat_free = world.sim.blocked_attempts.is_empty();
        if nat_free && world.sim.relay_one_way * 2 < cfg.step_timeout {
            assert!(
                !sim.log.iter().any(|r| r.output == Output::ResetStream),
                "an honest failed upgrade reset the shared stream"
            );
        }
    }
}

fn side_of(index: usize) -> Side {
    if index == INITIATOR {
        Side::Initiator
    } else {
        Side::Responder
    }
}

/// Builds a world from plain choices (the fuzz input and the property
/// tests both use it).
#[must_use]
#[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
pub fn world(
    config: &Config,
    protocol: Protocol,
    relay_one_way: Duration,
    direct_one_way: Duration,
    transports: (bool, bool),
    nats: (Nat, Nat),
    unilateral_known: bool,
    blocked_attempts: Vec<u8>,
    block: Block,
    seed: u64,
) -> SimConfig {
    let mut sim = SimConfig::two_nats(config, relay_one_way, direct_one_way).protocol(protocol);
    match transports {
        (true, false) => sim = sim.only(Transport::Tcp),
        (false, true) => sim = sim.only(Transport::Quic),
        _ => {}
    }
    sim.initiator.nat = nats.0;
    sim.responder.nat = nats.1;
    if unilateral_known {
        sim.initiator.remote_public = sim.responder.addrs.clone();
    }
    sim.blocked_attempts = blocked_attempts;
    sim.block = block;
    sim.seed = seed;
    sim
}
