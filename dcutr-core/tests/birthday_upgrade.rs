//! The birthday punch inside an [`Upgrade`]: when both sides' NAT
//! behaviours are known and one maps at random, the attempt runs a
//! [`Birthday`] machine from the spec's punch time. Its datagrams leave
//! as outputs, what arrives goes in through one input, and a meeting
//! becomes the normal QUIC dial from the socket that met (hard side) or
//! waits for the peer's dial (easy side). Fake clock throughout.

mod common;

use std::net::SocketAddr;

use common::*;
use dcutr_core::birthday::{
    Birthday, BirthdayConfig, DatagramKind, Local, Outcome as BOutcome, Refusal, Role as BRole,
    is_birthday_datagram,
};
use dcutr_core::nat::{HardSide, NatBehaviour, Strategy};
use dcutr_core::settings::BIRTHDAY_TOKEN;
use dcutr_core::{
    AttemptFailure, Candidate, Config, Dial, Event, Outcome, Output, Role, Side, Upgrade,
};

/// The peer's one advertised QUIC address.
const PEER: &str = "203.0.113.5:4001";
/// Our punch address as the peer sees it (the common helpers' local one).
const OURS: &str = "198.51.100.9:4001";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn random() -> NatBehaviour {
    random_nat(OURS)
}

fn cone() -> NatBehaviour {
    cone_nat(OURS)
}

/// A spec responder behind `ours` that got the peer's Connect (declaring
/// `peer`) and its Sync at 10 ms, and punched.
fn punching(ours: Option<NatBehaviour>, peer: &NatBehaviour) -> (Upgrade, Vec<Output>) {
    punching_seen(ours, peer, &[], &[quic(PEER)])
}

/// [`punching`], with the relay having seen the peer at `observed`, and
/// the peer's Connect naming `named`.
fn punching_seen(
    ours: Option<NatBehaviour>,
    peer: &NatBehaviour,
    observed: &[Candidate],
    named: &[Candidate],
) -> (Upgrade, Vec<Output>) {
    let mut b = Upgrade::builder(Side::Responder, Config::default(), [7; 32])
        .local_addrs([tcp(OURS), quic(OURS)])
        .remote_public_addrs(observed.iter().copied());
    if let Some(ours) = ours {
        b = b.nat_behaviour(ours);
    }
    let mut up = b.start(t0()).unwrap();
    drain(&mut up);
    up.handle_stream_opened(at(0));
    drain(&mut up);
    up.handle_stream_data(at(5), &connect_with_nat(named, peer));
    drain(&mut up);
    up.handle_stream_data(at(10), &sync_frame());
    let out = drain(&mut up);
    (up, out)
}

/// A spec initiator behind `ours` that got the peer's Connect (declaring
/// `peer`) at 10 ms and punched after its Sync delay (rtt/2).
fn punching_initiator(ours: NatBehaviour, peer: &NatBehaviour) -> (Upgrade, Vec<Output>) {
    let mut up = Upgrade::builder(Side::Initiator, Config::default(), [7; 32])
        .local_addrs([tcp(OURS), quic(OURS)])
        .nat_behaviour(ours)
        .start(t0())
        .unwrap();
    drain(&mut up);
    up.handle_stream_opened(at(0));
    drain(&mut up);
    up.handle_stream_data(at(10), &connect_with_nat(&[quic(PEER)], peer));
    let mut out = drain(&mut up);
    let t = up.poll_timeout().unwrap();
    assert_eq!(t.kind, dcutr_core::TimerKind::SyncDelay);
    assert!(transmits(&out).is_empty(), "nothing before the punch time");
    up.handle_timeout(t.at);
    out.extend(drain(&mut up));
    (up, out)
}

fn fresh_dials(out: &[Output]) -> Vec<(u16, Dial)> {
    out.iter()
        .filter_map(|o| match o {
            Output::DialFresh { socket, dial } => Some((*socket, *dial)),
            _ => None,
        })
        .collect()
}

/// Runs `up`'s timers until `done` holds for its outputs or `limit`
/// timeouts passed; returns every output.
fn run_timers(up: &mut Upgrade, limit: usize, done: impl Fn(&[Output]) -> bool) -> Vec<Output> {
    let mut all = Vec::new();
    for _ in 0..limit {
        let Some(t) = up.poll_timeout() else { break };
        up.handle_timeout(t.at);
        all.extend(drain(up));
        if done(&all) {
            break;
        }
    }
    all
}

fn token() -> u64 {
    BIRTHDAY_TOKEN ^ 1
}

#[test]
fn hard_side_primes_every_fresh_socket_and_dials_from_the_one_that_met() {
    let (mut up, out) = punching(Some(random()), &cone());
    let ev = events(&out);
    assert!(
        ev.contains(&Event::StrategyChosen {
            attempt: 1,
            strategy: Strategy::Birthday {
                hard_side: HardSide::Ours
            }
        }),
        "{ev:?}"
    );
    assert!(ev.contains(&Event::BirthdayStarted {
        attempt: 1,
        role: BRole::Hard,
        peer: addr(PEER)
    }));
    let primes = transmits(&out);
    assert_eq!(primes.len(), 256, "one priming datagram per fresh socket");
    for (i, t) in primes.iter().enumerate() {
        assert_eq!(t.local, Local::Fresh(u16::try_from(i).unwrap()));
        assert_eq!((t.destination, t.kind), (addr(PEER), DatagramKind::Priming));
        assert!(is_birthday_datagram(&t.payload));
    }

    // The easy side's probe, made by a real easy machine with the token.
    let mut easy = Birthday::easy(BirthdayConfig::new(token()), addr(OURS).ip(), [3; 32]).unwrap();
    easy.start(at(10)).unwrap();
    let probe = easy.poll_transmit().unwrap();
    assert_eq!(probe.kind, DatagramKind::Probe);

    // A stranger's datagram changes nothing.
    assert!(matches!(
        up.handle_birthday_datagram(
            at(20),
            Local::Fresh(7),
            addr("192.0.2.1:4001"),
            &probe.payload
        ),
        Err(Refusal::WrongIp { .. })
    ));
    assert!(drain(&mut up).is_empty());

    up.handle_birthday_datagram(at(20), Local::Fresh(7), addr(PEER), &probe.payload)
        .expect("the probe meets fresh socket 7");
    let out = drain(&mut up);
    let answers = transmits(&out);
    assert_eq!(answers.len(), 1, "{out:?}");
    assert_eq!(
        (answers[0].local, answers[0].destination, answers[0].kind),
        (Local::Fresh(7), addr(PEER), DatagramKind::Answer)
    );
    assert!(events(&out).iter().any(|e| matches!(
        e,
        Event::BirthdayEnded { outcome: BOutcome::Met { local: Local::Fresh(7), remote }, sockets_opened: 256, .. }
            if *remote == addr(PEER)
    )));
    assert_eq!(closes(&out), [Some(7)], "every other fresh socket closes");
    let dialled = fresh_dials(&out);
    assert_eq!(dialled.len(), 1, "{out:?}");
    let (socket, dial) = dialled[0];
    assert_eq!((socket, dial.to, dial.role), (7, quic(PEER), Role::Client));

    // The dial through the met mapping wins; socket 7 stays with it.
    up.handle_dial_succeeded(at(60), dial.id);
    let out = drain(&mut up);
    assert!(
        closes(&out).is_empty(),
        "the winner's socket stays: {out:?}"
    );
    let Some(Outcome::Upgraded(won)) = up.outcome() else {
        panic!("{:?}", up.outcome());
    };
    assert_eq!(won.id, dial.id);
}

#[test]
fn easy_side_probes_only_the_hard_ip_and_fails_typed_when_unanswered() {
    let (mut up, out) = punching(Some(cone()), &random());
    let ev = events(&out);
    assert!(ev.contains(&Event::StrategyChosen {
        attempt: 1,
        strategy: Strategy::Birthday {
            hard_side: HardSide::Peer
        }
    }));
    assert!(ev.contains(&Event::BirthdayStarted {
        attempt: 1,
        role: BRole::Easy,
        peer: SocketAddr::new(addr(PEER).ip(), 0)
    }));
    let mut all = out;
    all.extend(run_timers(&mut up, 20_000, |o| {
        events(o)
            .iter()
            .any(|e| matches!(e, Event::AttemptFailed { attempt: 1, .. }))
    }));
    let probes = transmits(&all);
    assert_eq!(probes.len(), 1024, "exactly the probe budget");
    let mut ports: Vec<u16> = probes.iter().map(|t| t.destination.port()).collect();
    assert!(probes.iter().all(|t| t.local == Local::Punch
        && t.kind == DatagramKind::Probe
        && t.destination.ip() == addr(PEER).ip()));
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 1024, "no port probed twice");
    assert_eq!(up.timeline().attempts()[0].birthday_datagrams(), 1024);
    let failed = events(&all)
        .into_iter()
        .find_map(|e| match e {
            Event::AttemptFailed { attempt: 1, reason } => Some(reason),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        failed,
        AttemptFailure::BirthdayMissed {
            outcome: BOutcome::Exhausted,
            probes_sent: 1024
        }
    );
    assert!(fresh_dials(&all).is_empty() && closes(&all).is_empty());
}

#[test]
fn easy_side_meets_on_the_answer_and_takes_the_hard_sides_dial() {
    let (mut up, out) = punching(Some(cone()), &random());
    let first = transmits(&out)[0];
    // The hard side's machine heard that probe on its fresh socket 0 and
    // answers from the port the probe hit.
    let mut hard = Birthday::hard(BirthdayConfig::new(token()), addr(OURS)).unwrap();
    hard.start(at(10)).unwrap();
    while hard.poll_transmit().is_some() {}
    hard.handle_datagram(at(12), Local::Fresh(0), addr(OURS), &first.payload)
        .unwrap();
    let answer = hard.poll_transmit().unwrap();
    assert_eq!(answer.kind, DatagramKind::Answer);

    up.handle_birthday_datagram(at(15), Local::Punch, first.destination, &answer.payload)
        .expect("the answer to our first probe meets");
    let out = drain(&mut up);
    assert!(events(&out).iter().any(|e| matches!(
        e,
        Event::BirthdayEnded { outcome: BOutcome::Met { local: Local::Punch, remote }, .. }
            if *remote == first.destination
    )));
    assert!(fresh_dials(&out).is_empty(), "the easy side does not dial");
    // No more probes after the meeting, and the attempt waits for the
    // hard side's dial.
    let mut later = Vec::new();
    while let Some(t) = up.poll_timeout().filter(|t| t.at < at(1_000)) {
        up.handle_timeout(t.at);
        later.extend(drain(&mut up));
    }
    assert!(transmits(&later).is_empty(), "{later:?}");
    assert!(up.outcome().is_none());

    // The hard side's QUIC dial arrives from the met address.
    let id = up
        .handle_inbound(at(40), Candidate::quic(first.destination))
        .unwrap();
    drain(&mut up);
    let Some(Outcome::Upgraded(won)) = up.outcome() else {
        panic!("{:?}", up.outcome());
    };
    assert_eq!(won.id, id);
}

#[test]
fn with_an_observed_ip_the_easy_side_probes_only_that_ip() {
    // The peer names a third party first and its observed IP second: the
    // probes go to the observed one.
    let victim = quic("198.51.100.77:4001");
    let seen = [tcp("203.0.113.5:9000")];
    let (mut up, out) = punching_seen(Some(cone()), &random(), &seen, &[victim, quic(PEER)]);
    let mut all = out;
    all.extend(run_timers(&mut up, 2_000, |o| !transmits(o).is_empty()));
    let probes = transmits(&all);
    assert!(!probes.is_empty());
    assert!(probes.iter().all(|t| t.destination.ip() == addr(PEER).ip()));
    // It names only third parties: no birthday punch at all.
    let (mut up, out) = punching_seen(Some(cone()), &random(), &seen, &[victim]);
    let mut all = out;
    all.extend(run_timers(&mut up, 2_000, |o| {
        events(o)
            .iter()
            .any(|e| matches!(e, Event::AttemptFailed { .. }))
    }));
    assert!(transmits(&all).is_empty(), "no probe at the third party");
    assert!(
        !events(&all)
            .iter()
            .any(|e| matches!(e, Event::BirthdayStarted { .. }))
    );
    // Without an observation the peer's word is all there is (the
    // process's BirthdayBudget caps it).
    let (_, out) = punching_seen(Some(cone()), &random(), &[], &[victim]);
    assert!(
        transmits(&out)
            .iter()
            .all(|t| t.destination.ip() == victim.addr.ip())
    );
    assert!(!transmits(&out).is_empty());
}

#[test]
fn a_carrier_without_fresh_sockets_punches_as_the_spec_does() {
    use dcutr_core::settings::{Capabilities, QuicServerPunch};
    // A libp2p carrier's config: its QUIC server dials rather than sprays.
    let config = Config {
        quic_server_punch: QuicServerPunch::DialAsServer,
        ..Config::default()
    };
    let mut up = Upgrade::builder(Side::Responder, config, [7; 32])
        .local_addrs([tcp(OURS), quic(OURS)])
        .nat_behaviour(cone())
        .capabilities(Capabilities::LIBP2P)
        .start(t0())
        .unwrap();
    drain(&mut up);
    up.handle_stream_opened(at(0));
    drain(&mut up);
    up.handle_stream_data(at(5), &connect_with_nat(&[quic(PEER)], &random()));
    drain(&mut up);
    up.handle_stream_data(at(10), &sync_frame());
    let out = drain(&mut up);
    assert!(transmits(&out).is_empty(), "no birthday datagram");
    assert!(
        !events(&out)
            .iter()
            .any(|e| matches!(e, Event::BirthdayStarted { .. }))
    );
    assert_eq!(
        dials(&out).len(),
        1,
        "the spec's QUIC dial to the peer: {out:?}"
    );
    // The same upgrade on a carrier that can, for contrast.
    let (_, out) = punching(Some(cone()), &random());
    assert!(!transmits(&out).is_empty());
}

#[test]
fn without_both_behaviours_no_birthday_punch_runs() {
    for ours in [None, Some(cone())] {
        let (_, out) = punching(ours.clone(), &random());
        let want_birthday = ours.is_some();
        assert_eq!(!transmits(&out).is_empty(), want_birthday);
    }
    // Two cones punch as the spec does.
    let (_, out) = punching(Some(cone()), &cone());
    assert!(transmits(&out).is_empty());
    assert!(
        !events(&out)
            .iter()
            .any(|e| matches!(e, Event::StrategyChosen { .. }))
    );
}

#[test]
fn an_initiator_runs_either_side_at_its_punch_time_and_dials_as_the_server_of_the_check() {
    // Easy initiator: probes from its punch socket.
    let (_, out) = punching_initiator(cone(), &random());
    let probes = transmits(&out);
    assert!(!probes.is_empty());
    assert!(
        probes
            .iter()
            .all(|t| t.kind == DatagramKind::Probe && t.local == Local::Punch)
    );

    // Hard initiator: primes, meets, and dials from the socket that met
    // with the initiator's role in the identity check (server), as the
    // responder labels the inbound connection.
    let (mut up, out) = punching_initiator(random(), &cone());
    assert_eq!(transmits(&out).len(), 256);
    let mut easy = Birthday::easy(BirthdayConfig::new(token()), addr(OURS).ip(), [9; 32]).unwrap();
    easy.start(at(15)).unwrap();
    let probe = easy.poll_transmit().unwrap();
    up.handle_birthday_datagram(at(20), Local::Fresh(200), addr(PEER), &probe.payload)
        .unwrap();
    let out = drain(&mut up);
    assert_eq!(closes(&out), [Some(200)]);
    let dialled = fresh_dials(&out);
    assert_eq!(dialled.len(), 1, "{out:?}");
    assert_eq!((dialled[0].0, dialled[0].1.role), (200, Role::Server));
    // The attempt ends without a winner: the met socket closes too.
    let rest = run_timers(&mut up, 10_000, |o| {
        events(o)
            .iter()
            .any(|e| matches!(e, Event::AttemptFailed { attempt: 1, .. }))
    });
    assert_eq!(closes(&rest), [None], "{rest:?}");
}
