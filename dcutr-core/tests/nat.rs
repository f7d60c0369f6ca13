//! NAT behaviour discovery: exact expectations for each classification,
//! the bounds on input, the strategy table, and properties over generated
//! observations.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use dcutr_core::filter::{ObservedAddrs, local_addrs_to_send};
use dcutr_core::nat::{
    EPHEMERAL_PORTS, FilteringProbe, HardSide, MAX_FILTERING_PROBES, MAX_OBSERVATIONS,
    MAX_PREDICTED_PORTS, MAX_SEQUENTIAL_DELTA, MIN_PATTERN_PORTS, Observation, ObserveError,
    ProbeChange, SequentialPredictor, birthday_success,
};
use dcutr_core::{AddressPolicy, Candidate, Transport, filter::AddressPredictor};
use dcutr_core::{
    nat::Allocation, nat::Filtering, nat::Mapping, nat::NatBehaviour, nat::NatObservations,
    nat::Strategy,
};
use proptest::prelude::*;

const LOCAL_PORT: u16 = 4001;

fn local() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 2], LOCAL_PORT))
}

/// Observer `i`: its own IP address, port 3478.
fn observer(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, i], 3478))
}

fn mapped(port: u16) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 7], port))
}

/// Observations by distinct observers (distinct IPs) of the given mapped
/// ports, in order.
fn observed(ports: &[u16]) -> NatObservations {
    let mut o = NatObservations::new(local());
    for (i, port) in ports.iter().enumerate() {
        let i = u8::try_from(i + 1).unwrap();
        o.observe(Observation::new(observer(i), mapped(*port)))
            .unwrap();
    }
    o
}

fn classify(ports: &[u16]) -> (Mapping, Allocation) {
    let b = observed(ports).classify();
    (b.mapping, b.allocation)
}

#[test]
fn one_observer_tells_nothing_about_mapping() {
    assert_eq!(classify(&[40_000]), (Mapping::Unknown, Allocation::Unknown));
    // ... but it does show a preserved port.
    assert_eq!(
        classify(&[LOCAL_PORT]),
        (Mapping::Unknown, Allocation::Preserving)
    );
    assert_eq!(
        NatObservations::new(local()).classify().mapping,
        Mapping::Unknown
    );
}

#[test]
fn two_observers_that_agree_show_an_endpoint_independent_mapping() {
    assert_eq!(
        classify(&[40_000, 40_000]),
        (Mapping::EndpointIndependent, Allocation::Unknown)
    );
}

#[test]
fn an_endpoint_independent_mapping_of_the_local_port_is_preserving() {
    assert_eq!(
        classify(&[LOCAL_PORT, LOCAL_PORT, LOCAL_PORT]),
        (Mapping::EndpointIndependent, Allocation::Preserving)
    );
}

#[test]
fn observers_on_one_ip_that_agree_do_not_prove_independence() {
    // An address-dependent NAT keeps one mapping for every port of an IP.
    let mut o = NatObservations::new(local());
    let ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
    o.observe(Observation::new(SocketAddr::new(ip, 3478), mapped(40_000)))
        .unwrap();
    o.observe(Observation::other_address(
        SocketAddr::new(ip, 3479),
        mapped(40_000),
    ))
    .unwrap();
    assert_eq!(o.classify().mapping, Mapping::Unknown);
    // A third observer on another IP settles it.
    o.observe(Observation::new(observer(2), mapped(40_000)))
        .unwrap();
    assert_eq!(o.classify().mapping, Mapping::EndpointIndependent);
}

#[test]
fn two_different_ports_are_endpoint_dependent_with_unknown_allocation() {
    assert_eq!(
        classify(&[40_000, 52_113]),
        (Mapping::EndpointDependent, Allocation::Unknown)
    );
}

#[test]
fn three_unrelated_ports_are_endpoint_dependent_and_random() {
    assert_eq!(
        classify(&[40_000, 52_113, 1_377]),
        (Mapping::EndpointDependent, Allocation::Random)
    );
    // The Linux pattern: the local port first, then random ones.
    assert_eq!(
        classify(&[LOCAL_PORT, 52_113, 33_001]),
        (Mapping::EndpointDependent, Allocation::Random)
    );
}

#[test]
fn ports_stepping_by_one_are_sequential() {
    assert_eq!(
        classify(&[40_000, 40_001, 40_002]),
        (
            Mapping::EndpointDependent,
            Allocation::Sequential { delta: 1 }
        )
    );
    // Starting from the preserved local port.
    assert_eq!(
        classify(&[LOCAL_PORT, LOCAL_PORT + 1, LOCAL_PORT + 2, LOCAL_PORT + 3]).1,
        Allocation::Sequential { delta: 1 }
    );
}

#[test]
fn ports_stepping_by_two_are_sequential_with_delta_two() {
    assert_eq!(
        classify(&[40_000, 40_002, 40_004, 40_006]),
        (
            Mapping::EndpointDependent,
            Allocation::Sequential { delta: 2 }
        )
    );
}

#[test]
fn ports_stepping_down_are_sequential_with_a_negative_delta() {
    assert_eq!(
        classify(&[40_010, 40_007, 40_004]).1,
        Allocation::Sequential { delta: -3 }
    );
}

#[test]
fn steps_beyond_the_largest_delta_or_uneven_steps_are_random() {
    let big = 40_000 + MAX_SEQUENTIAL_DELTA;
    assert_eq!(
        classify(&[40_000, big, 40_000 + 2 * MAX_SEQUENTIAL_DELTA]).1,
        Allocation::Sequential {
            delta: i32::from(MAX_SEQUENTIAL_DELTA)
        }
    );
    let over = MAX_SEQUENTIAL_DELTA + 1;
    assert_eq!(
        classify(&[40_000, 40_000 + over, 40_000 + 2 * over]).1,
        Allocation::Random
    );
    assert_eq!(classify(&[40_000, 40_001, 40_003]).1, Allocation::Random);
}

#[test]
fn observations_are_bounded_and_refusals_counted() {
    let ports: Vec<u16> = (0..MAX_OBSERVATIONS)
        .map(|i| 40_000 + u16::try_from(i).unwrap())
        .collect();
    let mut o = observed(&ports);
    assert_eq!(o.observations().len(), MAX_OBSERVATIONS);
    let extra = Observation::new(SocketAddr::from(([192, 0, 2, 200], 3478)), mapped(1));
    assert_eq!(
        o.observe(extra),
        Err(ObserveError::Full {
            max: MAX_OBSERVATIONS
        })
    );
    assert_eq!(o.observations().len(), MAX_OBSERVATIONS);
    // A repeat of a known observer is refused before the limit is.
    assert_eq!(
        o.observe(Observation::new(observer(1), mapped(2))),
        Err(ObserveError::DuplicateObserver(observer(1)))
    );
    let b = o.classify();
    assert_eq!(b.evidence.refused, 2);
    assert_eq!(b.evidence.observations.len(), MAX_OBSERVATIONS);
    assert_eq!(b.allocation, Allocation::Sequential { delta: 1 });
}

#[test]
fn malformed_observations_are_refused_with_a_reason() {
    let mut o = NatObservations::new(local());
    let v6 = SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 3478));
    assert_eq!(
        o.observe(Observation::new(
            observer(1),
            SocketAddr::new(v6.ip(), 5000)
        )),
        Err(ObserveError::FamilyMismatch)
    );
    assert_eq!(
        o.observe(Observation::new(observer(1), mapped(0))),
        Err(ObserveError::PortZero)
    );
    o.observe(Observation::new(observer(1), mapped(5000)))
        .unwrap();
    assert_eq!(
        o.observe(Observation::new(v6, SocketAddr::new(v6.ip(), 5000))),
        Err(ObserveError::FamilyMismatch),
        "an IPv6 observation of an IPv4 socket"
    );
    assert_eq!(o.refused(), 3);
    assert_eq!(o.observations().len(), 1);
}

fn filtering(probes: &[(ProbeChange, bool)]) -> Filtering {
    let mut o = observed(&[40_000, 40_000]);
    for (change, received) in probes {
        o.probe(FilteringProbe {
            change: *change,
            received: *received,
        })
        .unwrap();
    }
    o.classify().filtering
}

#[test]
fn filtering_follows_rfc_5780_tests_two_and_three() {
    use ProbeChange::{IpAndPort, Port};
    let cases: [(&[(ProbeChange, bool)], Filtering); 10] = [
        (&[], Filtering::Unknown),
        (&[(IpAndPort, true)], Filtering::EndpointIndependent),
        (
            &[(IpAndPort, true), (Port, true)],
            Filtering::EndpointIndependent,
        ),
        (
            &[(IpAndPort, false), (Port, true)],
            Filtering::AddressDependent,
        ),
        (
            &[(IpAndPort, false), (Port, false)],
            Filtering::AddressAndPortDependent,
        ),
        // A port change lost: not even address-dependent.
        (&[(Port, false)], Filtering::AddressAndPortDependent),
        // Not enough to tell.
        (&[(IpAndPort, false)], Filtering::Unknown),
        (&[(Port, true)], Filtering::Unknown),
        // Contradiction (loss of the port-changed answer): no verdict.
        (&[(IpAndPort, true), (Port, false)], Filtering::Unknown),
        // A retry that came through outweighs a lost one.
        (
            &[(IpAndPort, false), (IpAndPort, true)],
            Filtering::EndpointIndependent,
        ),
    ];
    for (probes, want) in cases {
        assert_eq!(filtering(probes), want, "{probes:?}");
    }
}

#[test]
fn filtering_probes_are_bounded() {
    let mut o = NatObservations::new(local());
    let p = FilteringProbe {
        change: ProbeChange::Port,
        received: false,
    };
    for _ in 0..MAX_FILTERING_PROBES {
        o.probe(p).unwrap();
    }
    assert_eq!(
        o.probe(p),
        Err(ObserveError::Full {
            max: MAX_FILTERING_PROBES
        })
    );
    let b = o.classify();
    assert_eq!(b.evidence.probes.len(), MAX_FILTERING_PROBES);
    assert_eq!(b.evidence.refused, 1);
}

fn declared(mapping: Mapping, allocation: Allocation) -> NatBehaviour {
    NatBehaviour::declared(mapping, allocation, Filtering::Unknown, local())
}

#[test]
fn strategies_follow_both_behaviours() {
    let eim = declared(Mapping::EndpointIndependent, Allocation::Preserving);
    let unknown = declared(Mapping::Unknown, Allocation::Unknown);
    let seq1 = declared(
        Mapping::EndpointDependent,
        Allocation::Sequential { delta: 1 },
    );
    let seq2 = declared(
        Mapping::EndpointDependent,
        Allocation::Sequential { delta: -2 },
    );
    let random = declared(Mapping::EndpointDependent, Allocation::Random);
    let edm_unknown = declared(Mapping::EndpointDependent, Allocation::Unknown);
    let edm_preserving = declared(Mapping::EndpointDependent, Allocation::Preserving);
    let cases = [
        (&eim, &eim, Strategy::Direct),
        (&eim, &unknown, Strategy::Direct),
        (&edm_preserving, &eim, Strategy::Direct),
        (
            &seq1,
            &eim,
            Strategy::PredictSequential {
                ours: Some(1),
                peer: None,
            },
        ),
        (
            &eim,
            &seq2,
            Strategy::PredictSequential {
                ours: None,
                peer: Some(-2),
            },
        ),
        (
            &seq1,
            &seq2,
            Strategy::PredictSequential {
                ours: Some(1),
                peer: Some(-2),
            },
        ),
        (
            &random,
            &eim,
            Strategy::Birthday {
                hard_side: HardSide::Ours,
            },
        ),
        (
            &eim,
            &random,
            Strategy::Birthday {
                hard_side: HardSide::Peer,
            },
        ),
        (
            &unknown,
            &edm_unknown,
            Strategy::Birthday {
                hard_side: HardSide::Peer,
            },
        ),
        (
            &random,
            &random,
            Strategy::Impossible {
                ours: Allocation::Random,
                peer: Allocation::Random,
            },
        ),
        (
            &seq1,
            &random,
            Strategy::Impossible {
                ours: Allocation::Sequential { delta: 1 },
                peer: Allocation::Random,
            },
        ),
        (
            &edm_unknown,
            &random,
            Strategy::Impossible {
                ours: Allocation::Unknown,
                peer: Allocation::Random,
            },
        ),
    ];
    for (ours, peer, want) in cases {
        assert_eq!(
            Strategy::choose(ours, peer),
            want,
            "ours {ours}, peer {peer}"
        );
    }
}

#[test]
fn the_birthday_formula_gives_the_published_figures() {
    let p = birthday_success(256, 1024, EPHEMERAL_PORTS);
    assert!((p - 0.983).abs() < 0.001, "{p}");
    let p = birthday_success(256, 2048, EPHEMERAL_PORTS);
    assert!((p - 0.9997).abs() < 0.0001, "{p}");
    assert!(birthday_success(0, 1000, EPHEMERAL_PORTS).abs() < f64::EPSILON);
    assert!(birthday_success(256, 0, EPHEMERAL_PORTS).abs() < f64::EPSILON);
    assert!((birthday_success(EPHEMERAL_PORTS, 1, EPHEMERAL_PORTS) - 1.0).abs() < f64::EPSILON);
    assert!(birthday_success(1, 1, 0).abs() < f64::EPSILON);
}

#[test]
fn behaviours_and_strategies_print_for_people() {
    let mut o = observed(&[40_000, 40_001, 40_002]);
    o.probe(FilteringProbe {
        change: ProbeChange::Port,
        received: false,
    })
    .unwrap();
    let b = o.classify();
    assert_eq!(
        b.to_string(),
        "mapping endpoint-dependent, allocation sequential (+1), filtering \
         address-and-port-dependent (local 10.0.0.2:4001; 198.51.100.1:3478 saw \
         203.0.113.7:40000; 198.51.100.2:3478 saw 203.0.113.7:40001; 198.51.100.3:3478 \
         saw 203.0.113.7:40002; answer from other port: lost)"
    );
    let eim = declared(Mapping::EndpointIndependent, Allocation::Preserving);
    assert_eq!(
        eim.to_string(),
        "mapping endpoint-independent, allocation port-preserving, filtering unknown"
    );
    assert_eq!(
        Strategy::choose(&b, &eim).to_string(),
        "predict sequential ports, ours +1"
    );
    let random = declared(Mapping::EndpointDependent, Allocation::Random);
    assert_eq!(
        Strategy::choose(&eim, &random).to_string(),
        "birthday punch, hard side peer's"
    );
    assert_eq!(
        Strategy::choose(&random, &b).to_string(),
        "impossible: both endpoint-dependent (ours random, peer's sequential (+1))"
    );
}

#[test]
fn a_sequential_nat_gets_its_next_ports_predicted() {
    let b = observed(&[40_000, 40_002, 40_004]).classify();
    let mut p = SequentialPredictor::for_behaviour(&b, Transport::Quic, 3).unwrap();
    let mut o = ObservedAddrs::default();
    o.observe(Candidate::tcp(mapped(7_000)));
    o.observe(Candidate::quic(mapped(40_000)));
    o.observe(Candidate::quic(mapped(40_004)));
    let sent = local_addrs_to_send(&o, &mut p, &AddressPolicy::public_only(), 16);
    let got: Vec<String> = sent.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            // Observed, most recent first.
            "/ip4/203.0.113.7/udp/40004/quic-v1",
            "/ip4/203.0.113.7/udp/40000/quic-v1",
            "/ip4/203.0.113.7/tcp/7000",
            // Predicted from the most recent QUIC address, +2 each.
            "/ip4/203.0.113.7/udp/40006/quic-v1",
            "/ip4/203.0.113.7/udp/40008/quic-v1",
            "/ip4/203.0.113.7/udp/40010/quic-v1",
        ]
    );
    // Nothing to predict for other behaviours.
    let random = observed(&[40_000, 52_113, 1_377]).classify();
    assert!(SequentialPredictor::for_behaviour(&random, Transport::Quic, 3).is_none());
    let eim = observed(&[40_000, 40_000]).classify();
    assert!(SequentialPredictor::for_behaviour(&eim, Transport::Tcp, 3).is_none());
}

#[test]
fn predictions_are_capped_and_stay_in_the_port_range() {
    let mut out = Vec::new();
    SequentialPredictor::new(Transport::Tcp, 1, u8::MAX)
        .predict(&[Candidate::tcp(mapped(1_000))], &mut out);
    assert_eq!(out.len(), usize::from(MAX_PREDICTED_PORTS));
    out.clear();
    SequentialPredictor::new(Transport::Tcp, 2, 6)
        .predict(&[Candidate::tcp(mapped(65_531))], &mut out);
    let ports: Vec<u16> = out.iter().map(|c| c.addr.port()).collect();
    assert_eq!(ports, [65_533, 65_535]);
    out.clear();
    SequentialPredictor::new(Transport::Tcp, -3, 6).predict(&[Candidate::tcp(mapped(7))], &mut out);
    let ports: Vec<u16> = out.iter().map(|c| c.addr.port()).collect();
    assert_eq!(ports, [4, 1]);
    out.clear();
    // No address of its transport: no guesses.
    SequentialPredictor::new(Transport::Quic, 1, 6).predict(&[Candidate::tcp(mapped(7))], &mut out);
    assert!(out.is_empty());
}

fn any_behaviour() -> impl proptest::strategy::Strategy<Value = NatBehaviour> {
    let mapping = prop_oneof![
        Just(Mapping::EndpointIndependent),
        Just(Mapping::EndpointDependent),
        Just(Mapping::Unknown),
    ];
    let allocation = prop_oneof![
        Just(Allocation::Preserving),
        (-16i32..=16)
            .prop_filter("non-zero", |d| *d != 0)
            .prop_map(|delta| Allocation::Sequential { delta }),
        Just(Allocation::Random),
        Just(Allocation::Unknown),
    ];
    (mapping, allocation).prop_map(|(m, a)| declared(m, a))
}

fn swapped(s: Strategy) -> Strategy {
    match s {
        Strategy::PredictSequential { ours, peer } => Strategy::PredictSequential {
            ours: peer,
            peer: ours,
        },
        Strategy::Birthday { hard_side } => Strategy::Birthday {
            hard_side: match hard_side {
                HardSide::Ours => HardSide::Peer,
                HardSide::Peer => HardSide::Ours,
            },
        },
        Strategy::Impossible { ours, peer } => Strategy::Impossible {
            ours: peer,
            peer: ours,
        },
        other => other,
    }
}

// `Strategy` the trait (proptest) and the enum share a name; the tests
// above use the enum, the generators the trait through the prelude.
use proptest::strategy::Strategy as _;

proptest! {
    #[test]
    fn strategy_is_symmetric(a in any_behaviour(), b in any_behaviour()) {
        prop_assert_eq!(Strategy::choose(&b, &a), swapped(Strategy::choose(&a, &b)));
    }

    #[test]
    fn only_two_endpoint_dependent_sides_are_impossible(a in any_behaviour(), b in any_behaviour()) {
        let impossible = matches!(Strategy::choose(&a, &b), Strategy::Impossible { .. });
        if impossible {
            prop_assert_eq!(a.mapping, Mapping::EndpointDependent);
            prop_assert_eq!(b.mapping, Mapping::EndpointDependent);
        }
        if a.mapping != Mapping::EndpointDependent && b.mapping != Mapping::EndpointDependent {
            prop_assert_eq!(Strategy::choose(&a, &b), Strategy::Direct);
        }
    }

    #[test]
    fn any_arithmetic_progression_of_small_step_is_sequential(
        start in 1024u16..30_000,
        delta in 1i32..=i32::from(MAX_SEQUENTIAL_DELTA),
        down in any::<bool>(),
        len in MIN_PATTERN_PORTS..=MAX_OBSERVATIONS,
    ) {
        let delta = if down { -delta } else { delta };
        let base = i32::from(start) + if down { 20_000 } else { 0 };
        let ports: Vec<u16> = (0..len)
            .map(|i| u16::try_from(base + delta * i32::try_from(i).unwrap()).unwrap())
            .collect();
        prop_assume!(ports.iter().all(|p| *p != LOCAL_PORT));
        prop_assert_eq!(
            classify(&ports),
            (Mapping::EndpointDependent, Allocation::Sequential { delta })
        );
        // The same ports out of order are no progression.
        let mut shuffled = ports.clone();
        shuffled.swap(0, 1);
        prop_assert_eq!(classify(&shuffled).1, Allocation::Random);
    }

    #[test]
    fn classification_is_a_function_of_the_observations(
        ports in prop::collection::vec(1u16.., 0..=MAX_OBSERVATIONS + 4),
    ) {
        let mut a = NatObservations::new(local());
        let mut b = NatObservations::new(local());
        for (i, port) in ports.iter().enumerate() {
            let obs = Observation::new(
                SocketAddr::from(([198, 51, 100, u8::try_from(i % 250 + 1).unwrap()], 3478)),
                mapped(*port),
            );
            let (ra, rb) = (a.observe(obs), b.observe(obs));
            prop_assert_eq!(ra, rb);
        }
        let (x, y) = (a.classify(), b.classify());
        prop_assert_eq!(&x, &y);
        prop_assert!(x.evidence.observations.len() <= MAX_OBSERVATIONS);
        prop_assert_eq!(
            x.evidence.observations.len() + usize::try_from(x.evidence.refused).unwrap(),
            ports.len()
        );
        // Whatever the verdict, it agrees with the ports it rests on.
        let mut distinct: Vec<u16> = Vec::new();
        for o in &x.evidence.observations {
            if !distinct.contains(&o.mapped.port()) {
                distinct.push(o.mapped.port());
            }
        }
        match x.mapping {
            Mapping::EndpointIndependent => prop_assert_eq!(distinct.len(), 1),
            Mapping::EndpointDependent => prop_assert!(distinct.len() >= 2),
            Mapping::Unknown => prop_assert!(x.evidence.observations.len() < 2),
        }
        if matches!(x.allocation, Allocation::Random | Allocation::Sequential { .. }) {
            prop_assert!(distinct.len() >= MIN_PATTERN_PORTS);
        }
    }
}
