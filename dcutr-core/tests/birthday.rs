//! The birthday punch machine (`dcutr_core::birthday`) on a fake clock:
//! pacing, port draws, bounds, refusals and determinism.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dcutr_core::birthday::{
    ANSWER_COPIES, ANSWER_GRACE, ANSWER_INTERVAL, Accepted, Birthday, BirthdayConfig,
    BirthdayError, DATAGRAM_LEN, DEFAULT_DEADLINE, DEFAULT_PROBE_INTERVAL, DEFAULT_PROBES,
    DEFAULT_SOCKETS, DatagramKind, Local, MAX_DEADLINE, MAX_PROBE_BURST, MAX_PROBES, MAX_SOCKETS,
    MIN_PROBE_INTERVAL, Outcome, Refusal, Transmit,
};
use proptest::prelude::*;

const TOKEN: u64 = 0x0123_4567_89ab_cdef;

/// The fake clock's origin (read once by dcutr-sim); tests only add
/// durations to it.
fn t0() -> Instant {
    dcutr_sim::epoch()
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const EASY: &str = "203.0.113.7:4001";
const HARD_IP: &str = "198.51.100.2";

fn hard_ip() -> IpAddr {
    HARD_IP.parse().unwrap()
}

fn config() -> BirthdayConfig {
    BirthdayConfig::new(TOKEN)
}

fn easy(seed: u8) -> Birthday {
    Birthday::easy(config(), hard_ip(), [seed; 32]).unwrap()
}

fn hard() -> Birthday {
    Birthday::hard(config(), addr(EASY)).unwrap()
}

/// A datagram of the documented layout: "DCBP", version 1, kind,
/// index, token.
fn dgram(kind: u8, index: u16, token: u64) -> [u8; DATAGRAM_LEN] {
    let mut p = [0u8; DATAGRAM_LEN];
    p[..4].copy_from_slice(b"DCBP");
    p[4] = 1;
    p[5] = kind;
    p[6..8].copy_from_slice(&index.to_be_bytes());
    p[8..].copy_from_slice(&token.to_be_bytes());
    p
}

const PRIMING: u8 = 1;
const PROBE: u8 = 2;
const ANSWER: u8 = 3;

fn drain(b: &mut Birthday) -> Vec<Transmit> {
    std::iter::from_fn(|| b.poll_transmit()).collect()
}

#[test]
fn the_easy_side_paces_its_probes_exactly_then_gives_up_after_the_grace() {
    let mut b = easy(1);
    assert_eq!(b.poll_timeout(), None, "nothing before start");
    b.start(t0()).unwrap();
    let mut probes = drain(&mut b);
    assert_eq!(probes.len(), 1, "the first probe leaves at start");
    for k in 1..u32::from(DEFAULT_PROBES) {
        let due = t0() + DEFAULT_PROBE_INTERVAL * k;
        assert_eq!(b.poll_timeout(), Some(due), "probe {k}");
        // A moment early changes nothing.
        b.handle_timeout(due - Duration::from_micros(1));
        assert!(b.poll_transmit().is_none());
        b.handle_timeout(due);
        let sent = drain(&mut b);
        assert_eq!(sent.len(), 1, "one probe at {k} ms");
        probes.extend(sent);
    }
    assert_eq!(b.probes_sent(), DEFAULT_PROBES);
    let last = t0() + DEFAULT_PROBE_INTERVAL * (u32::from(DEFAULT_PROBES) - 1);
    assert_eq!(b.poll_timeout(), Some(last + ANSWER_GRACE));
    b.handle_timeout(last + ANSWER_GRACE - Duration::from_micros(1));
    assert_eq!(b.outcome(), None);
    b.handle_timeout(last + ANSWER_GRACE);
    assert_eq!(b.outcome(), Some(Outcome::Exhausted));
    assert_eq!(b.poll_timeout(), None);
    assert!(b.poll_transmit().is_none());
    for (i, p) in probes.iter().enumerate() {
        assert_eq!(p.local, Local::Punch);
        assert_eq!(p.kind, DatagramKind::Probe);
        assert_eq!(p.destination.ip(), hard_ip());
        assert_eq!(p.payload, dgram(PROBE, u16::try_from(i).unwrap(), TOKEN));
    }
    // What a silent victim at the hard side's IP gets from one punch:
    // the documented worst case, each port once.
    let bytes: usize = probes.iter().map(|p| p.payload.len()).sum();
    assert_eq!(bytes, usize::from(DEFAULT_PROBES) * DATAGRAM_LEN);
    assert_eq!(bytes, 16_384);
    let ports: BTreeSet<u16> = probes.iter().map(|p| p.destination.port()).collect();
    assert_eq!(ports.len(), probes.len());
    // And nothing more, whatever arrives or however long it runs.
    let from = SocketAddr::new(hard_ip(), probes[0].destination.port());
    assert_eq!(
        b.handle_datagram(last + ms(600), Local::Punch, from, &dgram(ANSWER, 0, TOKEN)),
        Err(Refusal::Finished)
    );
    b.handle_timeout(last + Duration::from_secs(60));
    assert!(b.poll_transmit().is_none());
}

#[test]
fn probed_ports_never_repeat_and_stay_in_the_range() {
    for seed in 0..8 {
        let mut b = easy(seed);
        b.start(t0()).unwrap();
        let mut ports: Vec<u16> = drain(&mut b).iter().map(|t| t.destination.port()).collect();
        while let Some(at) = b.poll_timeout() {
            b.handle_timeout(at);
            ports.extend(drain(&mut b).iter().map(|t| t.destination.port()));
        }
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(ports.len(), usize::from(DEFAULT_PROBES), "seed {seed}");
        assert_eq!(distinct.len(), ports.len(), "seed {seed}: a port repeated");
        assert!(ports.iter().all(|p| *p >= 1024), "seed {seed}");
    }
    // A range exactly as large as the budget: every port once.
    let mut c = config();
    c.first_port = 2000;
    c.last_port = 2009;
    c.probes = 10;
    let mut b = Birthday::easy(c, hard_ip(), [9; 32]).unwrap();
    b.start(t0()).unwrap();
    let mut ports: Vec<u16> = drain(&mut b).iter().map(|t| t.destination.port()).collect();
    while let Some(at) = b.poll_timeout() {
        b.handle_timeout(at);
        ports.extend(drain(&mut b).iter().map(|t| t.destination.port()));
    }
    ports.sort_unstable();
    assert_eq!(ports, (2000..=2009).collect::<Vec<_>>());
}

#[test]
fn a_late_timer_releases_at_most_a_burst_and_restarts_the_schedule() {
    let mut b = easy(2);
    b.start(t0()).unwrap();
    assert_eq!(drain(&mut b).len(), 1);
    let late = t0() + ms(500);
    b.handle_timeout(late);
    assert_eq!(drain(&mut b).len(), usize::from(MAX_PROBE_BURST));
    assert_eq!(b.poll_timeout(), Some(late + DEFAULT_PROBE_INTERVAL));
    b.handle_timeout(late);
    assert!(
        b.poll_transmit().is_none(),
        "no second burst at the same instant"
    );
    // Time going backwards sends nothing either.
    b.handle_timeout(t0());
    assert!(b.poll_transmit().is_none());
}

#[test]
fn the_hard_side_primes_every_socket_once_and_times_out_at_the_deadline() {
    let mut b = hard();
    b.start(t0()).unwrap();
    let primes = drain(&mut b);
    assert_eq!(primes.len(), usize::from(DEFAULT_SOCKETS));
    for (i, t) in primes.iter().enumerate() {
        let i = u16::try_from(i).unwrap();
        assert_eq!(t.local, Local::Fresh(i));
        assert_eq!(t.destination, addr(EASY));
        assert_eq!(t.kind, DatagramKind::Priming);
        assert_eq!(t.payload, dgram(PRIMING, i, TOKEN));
    }
    assert_eq!(b.sockets_opened(), DEFAULT_SOCKETS);
    assert_eq!(b.poll_timeout(), Some(t0() + DEFAULT_DEADLINE));
    b.handle_timeout(t0() + DEFAULT_DEADLINE - Duration::from_micros(1));
    assert_eq!(b.outcome(), None);
    assert!(b.poll_transmit().is_none());
    b.handle_timeout(t0() + DEFAULT_DEADLINE);
    assert_eq!(b.outcome(), Some(Outcome::TimedOut));
    assert_eq!(b.poll_timeout(), None);
}

#[test]
fn a_probe_that_lands_is_answered_and_both_sides_meet() {
    let mut e = easy(3);
    let mut h = hard();
    e.start(t0()).unwrap();
    h.start(t0()).unwrap();
    drain(&mut h);
    let probe = drain(&mut e).remove(0);
    // The hard NAT's mapping of fresh socket 7 happens to be the probed
    // port: deliver the probe there, from the easy side's address.
    let at = t0() + ms(30);
    assert_eq!(
        h.handle_datagram(at, Local::Fresh(7), addr(EASY), &probe.payload),
        Ok(Accepted::Met)
    );
    assert_eq!(
        h.outcome(),
        Some(Outcome::Met {
            local: Local::Fresh(7),
            remote: addr(EASY)
        })
    );
    let mut answers = drain(&mut h);
    let mut when = vec![at; answers.len()];
    while let Some(next) = h.poll_timeout() {
        h.handle_timeout(next);
        let got = drain(&mut h);
        when.extend(std::iter::repeat_n(next, got.len()));
        answers.extend(got);
    }
    assert_eq!(answers.len(), usize::from(ANSWER_COPIES));
    for (k, (a, w)) in answers.iter().zip(&when).enumerate() {
        assert_eq!(a.local, Local::Fresh(7));
        assert_eq!(a.destination, addr(EASY));
        assert_eq!(a.kind, DatagramKind::Answer);
        assert_eq!(a.payload, dgram(ANSWER, 7, TOKEN));
        assert_eq!(*w, at + ANSWER_INTERVAL * u32::try_from(k).unwrap());
    }
    // A second probe in flight on another socket no longer counts.
    assert_eq!(
        h.handle_datagram(at, Local::Fresh(9), addr(EASY), &probe.payload),
        Err(Refusal::Finished)
    );
    // The answer, from the probed port, meets on the easy side.
    let hard_mapped = probe.destination;
    assert_eq!(
        e.handle_datagram(at + ms(30), Local::Punch, hard_mapped, &answers[0].payload),
        Ok(Accepted::Met)
    );
    assert_eq!(
        e.outcome(),
        Some(Outcome::Met {
            local: Local::Punch,
            remote: hard_mapped
        })
    );
    // Probing stopped.
    assert_eq!(e.poll_timeout(), None);
    e.handle_timeout(t0() + ms(900));
    assert!(e.poll_transmit().is_none());
    assert_eq!(e.probes_sent(), 1);
}

#[test]
fn an_answer_from_a_port_never_probed_is_refused() {
    let mut e = easy(4);
    e.start(t0()).unwrap();
    let probed = drain(&mut e).remove(0).destination.port();
    let other = if probed == 65535 { 1024 } else { probed + 1 };
    let from = SocketAddr::new(hard_ip(), other);
    assert_eq!(
        e.handle_datagram(t0(), Local::Punch, from, &dgram(ANSWER, 0, TOKEN)),
        Err(Refusal::NotProbed(other))
    );
    assert_eq!(e.refusals().unexpected, 1);
    assert_eq!(e.outcome(), None);
}

#[test]
fn datagrams_from_another_ip_are_refused_and_counted() {
    let stranger = addr("192.0.2.66:40000");
    let mut h = hard();
    h.start(t0()).unwrap();
    drain(&mut h);
    for _ in 0..3 {
        assert_eq!(
            h.handle_datagram(t0(), Local::Fresh(0), stranger, &dgram(PROBE, 0, TOKEN)),
            Err(Refusal::WrongIp {
                from: stranger,
                expected: addr(EASY).ip()
            })
        );
    }
    assert_eq!(h.refusals().wrong_ip, 3);
    assert_eq!(h.refusals().total(), 3);
    assert_eq!(h.outcome(), None);
    assert!(h.poll_transmit().is_none(), "nothing answers a stranger");

    let mut e = easy(5);
    e.start(t0()).unwrap();
    let probed = drain(&mut e).remove(0).destination;
    let spoof = SocketAddr::new(stranger.ip(), probed.port());
    assert!(matches!(
        e.handle_datagram(t0(), Local::Punch, spoof, &dgram(ANSWER, 0, TOKEN)),
        Err(Refusal::WrongIp { .. })
    ));
    assert_eq!(e.refusals().wrong_ip, 1);
    assert_eq!(e.outcome(), None);
}

#[test]
fn foreign_malformed_and_misdirected_datagrams_are_refused() {
    let mut h = hard();
    assert_eq!(
        h.handle_datagram(t0(), Local::Fresh(0), addr(EASY), &dgram(PROBE, 0, TOKEN)),
        Err(Refusal::NotStarted)
    );
    h.start(t0()).unwrap();
    assert_eq!(h.start(t0()), Err(BirthdayError::AlreadyStarted));
    assert_eq!(
        drain(&mut h).len(),
        usize::from(DEFAULT_SOCKETS),
        "primed once"
    );
    let from = addr(EASY);
    let cases: [(&[u8], Local, Refusal); 7] = [
        (
            &dgram(PROBE, 0, TOKEN + 1),
            Local::Fresh(0),
            Refusal::WrongToken,
        ),
        (&dgram(9, 0, TOKEN), Local::Fresh(0), Refusal::Malformed),
        (
            &dgram(PROBE, 0, TOKEN)[..15],
            Local::Fresh(0),
            Refusal::Malformed,
        ),
        (b"", Local::Fresh(0), Refusal::Malformed),
        (
            &dgram(PROBE, 0, TOKEN),
            Local::Fresh(DEFAULT_SOCKETS),
            Refusal::UnknownSocket(Local::Fresh(DEFAULT_SOCKETS)),
        ),
        (
            &dgram(PROBE, 0, TOKEN),
            Local::Punch,
            Refusal::UnknownSocket(Local::Punch),
        ),
        (
            &dgram(ANSWER, 0, TOKEN),
            Local::Fresh(1),
            Refusal::UnexpectedKind(DatagramKind::Answer),
        ),
    ];
    for (payload, local, want) in cases {
        assert_eq!(h.handle_datagram(t0(), local, from, payload), Err(want));
    }
    let r = h.refusals();
    assert_eq!(
        (r.not_running, r.malformed, r.unknown_socket, r.unexpected),
        (1, 4, 2, 1)
    );
    assert_eq!(h.outcome(), None);
    assert!(h.poll_transmit().is_none());
}

#[test]
fn a_priming_datagram_through_an_open_filter_is_probed_back_inside_the_budget() {
    let mut c = config();
    c.probes = 3;
    let mut e = Birthday::easy(c, hard_ip(), [6; 32]).unwrap();
    e.start(t0()).unwrap();
    drain(&mut e);
    let from = SocketAddr::new(hard_ip(), 50_000);
    assert_eq!(
        e.handle_datagram(t0(), Local::Punch, from, &dgram(PRIMING, 4, TOKEN)),
        Ok(Accepted::Reflexive)
    );
    let back = drain(&mut e);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].destination, from);
    // Once per port.
    assert_eq!(
        e.handle_datagram(t0(), Local::Punch, from, &dgram(PRIMING, 4, TOKEN)),
        Err(Refusal::Redundant(50_000))
    );
    // The budget holds: one drawn probe, one reflexive, one left.
    e.handle_timeout(t0() + ms(1));
    assert_eq!(drain(&mut e).len(), 1);
    assert_eq!(e.probes_sent(), 3);
    let more = SocketAddr::new(hard_ip(), 50_001);
    assert_eq!(
        e.handle_datagram(t0() + ms(1), Local::Punch, more, &dgram(PRIMING, 5, TOKEN)),
        Err(Refusal::Redundant(50_001)),
        "budget spent"
    );
    assert!(e.poll_transmit().is_none());
    // Its answer meets.
    assert_eq!(
        e.handle_datagram(t0() + ms(2), Local::Punch, from, &dgram(ANSWER, 4, TOKEN)),
        Ok(Accepted::Met)
    );
}

/// Everything one easy side sends for `seed`, in order, driven to its
/// end.
fn transcript(seed: u8) -> Vec<(Duration, Transmit)> {
    let mut b = easy(seed);
    b.start(t0()).unwrap();
    let mut out: Vec<_> = drain(&mut b)
        .into_iter()
        .map(|t| (Duration::ZERO, t))
        .collect();
    while let Some(at) = b.poll_timeout() {
        b.handle_timeout(at);
        out.extend(drain(&mut b).into_iter().map(|t| (at - t0(), t)));
    }
    out
}

#[test]
fn the_same_seed_and_inputs_give_byte_identical_outputs() {
    let a = transcript(7);
    assert_eq!(a, transcript(7));
    assert_eq!(a.len(), usize::from(DEFAULT_PROBES));
    let b = transcript(8);
    let ports =
        |t: &[(Duration, Transmit)]| t.iter().map(|(_, t)| t.destination).collect::<Vec<_>>();
    assert_ne!(ports(&a), ports(&b), "another seed, other ports");
}

#[test]
fn configs_out_of_bounds_are_typed_errors() {
    let ok = config();
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(ok.range(), dcutr_core::nat::EPHEMERAL_PORTS);
    let mut c = ok;
    c.sockets = 0;
    assert_eq!(c.validate(), Err(BirthdayError::Sockets(0)));
    c.sockets = MAX_SOCKETS + 1;
    assert_eq!(c.validate(), Err(BirthdayError::Sockets(MAX_SOCKETS + 1)));
    let mut c = ok;
    c.probes = MAX_PROBES + 1;
    assert_eq!(c.validate(), Err(BirthdayError::Probes(MAX_PROBES + 1)));
    c.probes = 0;
    assert_eq!(c.validate(), Err(BirthdayError::Probes(0)));
    let mut c = ok;
    (c.first_port, c.last_port, c.probes) = (100, 104, 6);
    assert_eq!(
        c.validate(),
        Err(BirthdayError::Probes(6)),
        "more probes than ports"
    );
    (c.first_port, c.last_port) = (200, 100);
    assert!(matches!(c.validate(), Err(BirthdayError::PortRange { .. })));
    (c.first_port, c.last_port) = (0, 100);
    assert!(matches!(c.validate(), Err(BirthdayError::PortRange { .. })));
    let mut c = ok;
    c.probe_interval = MIN_PROBE_INTERVAL - Duration::from_nanos(1);
    assert!(matches!(c.validate(), Err(BirthdayError::ProbeInterval(_))));
    let mut c = ok;
    c.deadline = c.probing_time();
    assert!(matches!(c.validate(), Err(BirthdayError::Deadline { .. })));
    c.deadline = MAX_DEADLINE + ms(1);
    assert!(matches!(c.validate(), Err(BirthdayError::Deadline { .. })));
    let mut bad = ok;
    bad.sockets = 0;
    assert!(Birthday::hard(bad, addr(EASY)).is_err());
    assert!(Birthday::easy(bad, hard_ip(), [0; 32]).is_err());
    for peer in [
        "0.0.0.0:4001",
        "203.0.113.7:0",
        "224.0.0.1:4001",
        "255.255.255.255:1",
    ] {
        assert_eq!(
            Birthday::hard(ok, addr(peer)).err(),
            Some(BirthdayError::PeerAddress(addr(peer))),
            "{peer}"
        );
    }
    assert!(Birthday::easy(ok, "::".parse().unwrap(), [0; 32]).is_err());
}

/// One input of the proptest.
#[derive(Clone, Debug)]
enum Input {
    /// Time moves by this many µs (possibly backwards).
    Time(i32),
    /// A datagram on socket `local` (`u16::MAX` for the punch socket),
    /// from the peer's IP or a stranger's, from this port, with this
    /// payload.
    Datagram {
        local: u16,
        peer_ip: bool,
        port: u16,
        payload: Vec<u8>,
    },
    /// Drain the queue.
    Poll,
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (
            1u8..=4,
            any::<u16>(),
            prop_oneof![Just(TOKEN), any::<u64>()]
        )
            .prop_map(|(k, i, t)| dgram(k, i, t).to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        (-2_000i32..200_000).prop_map(Input::Time),
        (
            prop_oneof![0u16..300, Just(u16::MAX)],
            any::<bool>(),
            any::<u16>(),
            payload()
        )
            .prop_map(|(local, peer_ip, port, payload)| Input::Datagram {
                local,
                peer_ip,
                port,
                payload
            }),
        Just(Input::Poll),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_inputs_never_panic_and_stay_bounded(
        hard_role in any::<bool>(),
        sockets in 1u16..300,
        probes in 1u16..1200,
        seed in any::<u8>(),
        inputs in proptest::collection::vec(input(), 0..400),
    ) {
        let mut c = config();
        c.sockets = sockets;
        c.probes = probes;
        let mut b = if hard_role {
            Birthday::hard(c, addr(EASY)).unwrap()
        } else {
            Birthday::easy(c, hard_ip(), [seed; 32]).unwrap()
        };
        let peer_ip = if hard_role { addr(EASY).ip() } else { hard_ip() };
        let mut now = t0() + Duration::from_secs(1);
        let end = now + c.deadline;
        let mut latest = now;
        b.start(now).unwrap();
        let bound = if hard_role {
            usize::from(sockets) + usize::from(ANSWER_COPIES)
        } else {
            usize::from(probes)
        };
        let (mut counted, mut refused) = (0u32, 0u32);
        let mut sent = 0usize;
        for input in inputs {
            match input {
                Input::Time(us) => {
                    let d = Duration::from_micros(u64::from(us.unsigned_abs()));
                    now = if us < 0 { now.checked_sub(d).unwrap_or(now) } else { now + d };
                    latest = latest.max(now);
                    b.handle_timeout(now);
                }
                Input::Datagram { local, peer_ip: from_peer, port, payload } => {
                    let local = if local == u16::MAX { Local::Punch } else { Local::Fresh(local) };
                    let ip = if from_peer { peer_ip } else { "192.0.2.66".parse().unwrap() };
                    match b.handle_datagram(now, local, SocketAddr::new(ip, port), &payload) {
                        Ok(_) => counted += 1,
                        Err(_) => refused += 1,
                    }
                }
                Input::Poll => sent += drain(&mut b).len(),
            }
            prop_assert!(b.queued() <= bound, "{} queued, bound {bound}", b.queued());
            prop_assert!(b.probes_sent() <= probes);
            prop_assert!(b.sockets_opened() <= sockets);
            if let Some(t) = b.poll_timeout() {
                prop_assert!(t <= latest.max(end) + ANSWER_INTERVAL.max(c.probe_interval));
            }
        }
        sent += drain(&mut b).len();
        prop_assert_eq!(b.refusals().total(), refused);
        prop_assert!(counted <= 1 + u32::from(probes), "at most one meeting plus reflexive probes");
        let most = if hard_role {
            usize::from(sockets) + usize::from(ANSWER_COPIES)
        } else {
            usize::from(probes)
        };
        prop_assert!(sent <= most, "{sent} sent, at most {most}");
    }
}

#[test]
fn reflexive_probes_outside_the_range_do_not_disturb_the_draws() {
    // A range of 10 ports and a budget of 10: a priming datagram from a
    // port outside the range takes one probe, the other 9 are drawn. As
    // the range fills up, draws fall back to picking among the free ports
    // directly, and the outside port must not shift that pick onto a
    // port already probed or out of the range.
    let mut c = config();
    (c.first_port, c.last_port, c.probes) = (3000, 3009, 10);
    for seed in 0..32 {
        let mut e = Birthday::easy(c, hard_ip(), [seed; 32]).unwrap();
        e.start(t0()).unwrap();
        let mut ports: Vec<u16> = drain(&mut e).iter().map(|t| t.destination.port()).collect();
        let from = SocketAddr::new(hard_ip(), 80);
        assert_eq!(
            e.handle_datagram(t0(), Local::Punch, from, &dgram(PRIMING, 0, TOKEN)),
            Ok(Accepted::Reflexive)
        );
        while let Some(at) = e.poll_timeout() {
            e.handle_timeout(at);
            ports.extend(drain(&mut e).iter().map(|t| t.destination.port()));
        }
        assert_eq!(e.probes_sent(), 10, "seed {seed}");
        assert_eq!(ports.len(), 10, "seed {seed}");
        let mut drawn: Vec<u16> = ports.iter().copied().filter(|p| *p != 80).collect();
        drawn.sort_unstable();
        drawn.dedup();
        assert_eq!(drawn.len(), 9, "seed {seed}: {ports:?}");
        assert!(drawn.iter().all(|p| (3000..=3009).contains(p)), "{ports:?}");
    }
}
