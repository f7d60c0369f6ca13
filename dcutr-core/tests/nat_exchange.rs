//! Two dcutr-rs peers that know their NATs say so in Connect (an
//! extension stock peers skip): when the pair cannot punch, both give up
//! at once with a reason naming both NATs, instead of three timed-out
//! attempts; otherwise the exchange is unchanged.

use std::time::Duration;

use dcutr_core::nat::Allocation;
use dcutr_core::wire::{decode_connect_nat, encode_connect};
use dcutr_core::{AttemptFailure, Config, Failure, Outcome, Transport};
use dcutr_sim::nat::NatModel;
use dcutr_sim::{INITIATOR, Nat, RESPONDER, Sim, SimConfig};

const RELAY_ONE_WAY: Duration = Duration::from_millis(50);
const DIRECT_ONE_WAY: Duration = Duration::from_millis(10);

fn world(b: NatModel, a: NatModel, declare: bool, transport: Transport) -> SimConfig {
    let mut cfg =
        SimConfig::two_nats(&Config::default(), RELAY_ONE_WAY, DIRECT_ONE_WAY).only(transport);
    for (spec, model) in [(&mut cfg.initiator, b), (&mut cfg.responder, a)] {
        spec.nat = Nat::Model(model);
        if declare {
            spec.nat_behaviour = Some(model.behaviour(spec.addrs[0].addr));
        }
    }
    cfg
}

fn decided_after(sim: &Sim, side: usize) -> Duration {
    sim.upgrade(side).timeline().decided().unwrap() - sim.start()
}

#[test]
fn two_random_symmetric_nats_give_up_at_once_on_both_sides() {
    for transport in [Transport::Tcp, Transport::Quic] {
        let sym = NatModel::symmetric_random();
        let mut sim = Sim::new(world(sym, sym, true, transport));
        assert!(sim.run(Duration::from_secs(120)));
        for side in [INITIATOR, RESPONDER] {
            let Some(Outcome::Failed(Failure::GaveUp { attempts })) = sim.upgrade(side).outcome()
            else {
                panic!("{transport}: {:?}", sim.outcomes());
            };
            let [AttemptFailure::NatsCannotMeet { ours, peer }] = attempts.as_slice() else {
                panic!("{attempts:?}");
            };
            assert_eq!((*ours, *peer), (Allocation::Random, Allocation::Random));
            assert!(attempts[0].to_string().contains("cannot meet"));
        }
        // One relayed round trip: B's Connect out, A's back.
        assert_eq!(decided_after(&sim, RESPONDER), RELAY_ONE_WAY);
        assert_eq!(decided_after(&sim, INITIATOR), 2 * RELAY_ONE_WAY);
        assert!(decided_after(&sim, INITIATOR) <= Duration::from_secs(2));
    }
}

#[test]
fn without_declared_behaviours_the_same_pair_spends_every_attempt() {
    let sym = NatModel::symmetric_random();
    let mut sim = Sim::new(world(sym, sym, false, Transport::Tcp));
    assert!(sim.run(Duration::from_secs(120)));
    let Some(Outcome::Failed(Failure::AllAttemptsFailed { attempts })) = sim.outcomes().0 else {
        panic!("{:?}", sim.outcomes());
    };
    assert_eq!(attempts.len(), 3);
    assert!(decided_after(&sim, INITIATOR) > Duration::from_secs(10));
}

#[test]
fn pairs_that_can_meet_still_upgrade_with_behaviours_declared() {
    let cone = NatModel::port_restricted();
    let mut sim = Sim::new(world(cone, cone, true, Transport::Tcp));
    assert!(sim.run(Duration::from_secs(120)));
    assert!(matches!(
        sim.outcomes(),
        (Some(Outcome::Upgraded(_)), Some(Outcome::Upgraded(_)))
    ));
}

#[test]
fn a_connect_without_a_behaviour_is_byte_for_byte_the_specs() {
    let raw = [Transport::Tcp]
        .iter()
        .map(|_| {
            dcutr_core::Candidate::tcp("198.51.100.2:4001".parse().unwrap())
                .to_multiaddr()
                .to_vec()
        })
        .collect::<Vec<_>>();
    let (frame, _) = encode_connect(raw.iter().map(Vec::as_slice), 4096);
    // Length prefix, then type 100 and the one address: no tag-100 field.
    assert_eq!(frame[1..3], [0x08, 100]);
    assert_eq!(decode_connect_nat(&frame[1..]), None);
}
