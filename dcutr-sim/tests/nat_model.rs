//! The simulator's NAT model as seen through whole upgrades.

use dcutr_core::{DialError, Event, Output, Side, Transport};
use dcutr_sim::sweep::{NatKind, TODAY, World, run_one, world};
use dcutr_sim::{INITIATOR, Nat, NatModel, PortRange, RESPONDER, Sim};

const BOTH: [Transport; 2] = [Transport::Tcp, Transport::Quic];

#[test]
fn firewalled_is_the_legacy_model_plus_its_unilateral_rule() {
    for t in BOTH {
        for seed in 0..40 {
            let mut legacy = world(
                TODAY,
                NatKind::PortRestricted,
                NatKind::PortRestricted,
                t,
                seed,
            );
            legacy.initiator.nat = Nat::Firewalled;
            legacy.responder.nat = Nat::Firewalled;
            let mut modelled = legacy.clone();
            modelled.initiator.nat = Nat::Model(NatModel::legacy_firewalled());
            modelled.responder.nat = Nat::Model(NatModel::legacy_firewalled());
            let mut a = Sim::new(legacy);
            let mut b = Sim::new(modelled);
            assert!(a.run(dcutr_sim::sweep::RUN_LIMIT) && b.run(dcutr_sim::sweep::RUN_LIMIT));
            assert_eq!(a.log, b.log, "{t:?} seed {seed}");
            assert_eq!(a.advertised(INITIATOR), b.advertised(INITIATOR));
        }
    }
}

#[test]
fn peers_advertise_their_mapping_towards_the_relay() {
    let mut moved = 0;
    for seed in 0..50 {
        let cfg = world(
            TODAY,
            NatKind::SymmetricRandom,
            NatKind::PortRestricted,
            Transport::Quic,
            seed,
        );
        let socket = cfg.initiator.addrs[0];
        let cone = cfg.responder.addrs.clone();
        let sim = Sim::new(cfg);
        let seen = sim.advertised(INITIATOR);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].addr.ip(), socket.addr.ip(), "the NAT's external IP");
        assert!(PortRange::EPHEMERAL.contains(seen[0].addr.port()));
        moved += u32::from(seen[0].addr.port() != socket.addr.port());
        // A port-preserving cone advertises its socket's port.
        assert_eq!(sim.advertised(RESPONDER), cone.as_slice());
    }
    assert!(
        moved >= 49,
        "random allocation keeps the port by chance only"
    );
}

#[test]
fn runs_replay_exactly() {
    for (b, a) in [
        (NatKind::ConeNoFirewall, NatKind::PortRestricted),
        (NatKind::SymmetricRandom, NatKind::FullCone),
    ] {
        for t in BOTH {
            for seed in 0..10 {
                let log = || {
                    let mut sim = Sim::new(world(TODAY, b, a, t, seed));
                    sim.run(dcutr_sim::sweep::RUN_LIMIT);
                    let stats = sim.nat_stats(INITIATOR);
                    (sim.log, sim.datagrams, sim.dialled, stats)
                };
                assert_eq!(log(), log());
                assert_eq!(run_one(TODAY, b, a, t, seed), run_one(TODAY, b, a, t, seed));
            }
        }
    }
}

/// `world`, with low-TTL priming off on both sides (the spec's punch).
fn unprimed(b: NatKind, a: NatKind, t: Transport, seed: u64) -> dcutr_sim::SimConfig {
    let mut w = world(TODAY, b, a, t, seed);
    w.initiator.config.prime_ttl = None;
    w.responder.config.prime_ttl = None;
    w
}

#[test]
fn a_router_without_firewall_resets_an_early_syn() {
    // Find a seed where the initiator's SYN reaches the responder's
    // no-firewall router before the responder punched.
    let seed = (0..200)
        .find(|&s| {
            let w = World::for_seed(s);
            w.direct_one_way < w.responder_lag()
        })
        .expect("some seed makes the responder late");
    let mut sim = Sim::new(unprimed(
        NatKind::PortRestricted,
        NatKind::ConeNoFirewall,
        Transport::Tcp,
        seed,
    ));
    sim.run(dcutr_sim::sweep::RUN_LIMIT);
    let refused = sim.first(Side::Initiator, |o| {
        matches!(
            o,
            Output::Event(Event::DialFailed {
                error: DialError::Refused,
                ..
            })
        )
    });
    assert!(refused.is_some(), "the router's reset fails the dial");
    let stats = sim.nat_stats(RESPONDER).expect("behind a NAT");
    assert!(stats.router >= 1 && stats.remaps >= 1, "{stats:?}");
    assert!(
        sim.first(Side::Initiator, |o| matches!(
            o,
            Output::Event(Event::Upgraded(_))
        ))
        .is_none()
    );
    // TCP is not primed (dcutr-core primes QUIC only), so the default
    // world loses the same way.
    let mut sim = Sim::new(world(
        TODAY,
        NatKind::PortRestricted,
        NatKind::ConeNoFirewall,
        Transport::Tcp,
        seed,
    ));
    sim.run(dcutr_sim::sweep::RUN_LIMIT);
    assert!(
        sim.first(Side::Responder, |o| matches!(o, Output::Prime { .. }))
            .is_none()
    );
    assert!(sim.nat_stats(RESPONDER).expect("behind a NAT").remaps >= 1);
    // The same world with a firewall drops the SYN instead, and the punch
    // goes through.
    let mut sim = Sim::new(unprimed(
        NatKind::PortRestricted,
        NatKind::PortRestricted,
        Transport::Tcp,
        seed,
    ));
    sim.run(dcutr_sim::sweep::RUN_LIMIT);
    let stats = sim.nat_stats(RESPONDER).expect("behind a NAT");
    assert!(stats.dropped >= 1 && stats.remaps == 0, "{stats:?}");
    assert!(
        sim.first(Side::Responder, |o| matches!(
            o,
            Output::Event(Event::Upgraded(_))
        ))
        .is_some()
    );
}
