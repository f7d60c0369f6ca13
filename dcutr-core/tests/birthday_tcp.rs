//! The birthday punch over TCP (`BirthdayConfig::tcp`): connects instead
//! of datagrams, probe lifetimes and the in-flight cap, the typed
//! refusals of a stray connection, and inside an [`Upgrade`] the winner
//! becoming the attempt's direct connection while every other connect is
//! closed. Fake clock throughout.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use dcutr_core::birthday::{
    Accepted, Birthday, BirthdayConfig, BirthdayError, DEFAULT_DEADLINE, DEFAULT_PROBES,
    DEFAULT_SOCKETS, DatagramKind, Local, Outcome as BOutcome, Refusal, Role as BRole,
    TCP_DEFAULT_MAX_IN_FLIGHT, TCP_DEFAULT_PROBE_LIFETIME, TCP_MAX_IN_FLIGHT,
    TCP_MAX_PROBE_LIFETIME, TCP_MIN_PROBE_LIFETIME, Transmit,
};
use dcutr_core::nat::{HardSide, NatBehaviour, Strategy};
use dcutr_core::{AttemptFailure, Config, Event, Outcome, Output, Side, Transport, Upgrade};
use proptest::prelude::*;

const TOKEN: u64 = 0x0123_4567_89ab_cdef;
const EASY: &str = "203.0.113.7:4001";
const HARD_IP: &str = "198.51.100.2";

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn hard_ip() -> IpAddr {
    HARD_IP.parse().unwrap()
}

fn take(b: &mut Birthday) -> Vec<Transmit> {
    std::iter::from_fn(|| b.poll_transmit()).collect()
}

fn tcp_easy(config: BirthdayConfig, seed: u8) -> Birthday {
    Birthday::easy(config, hard_ip(), [seed; 32]).unwrap()
}

#[test]
fn tcp_hard_side_connects_every_fresh_socket_until_the_deadline() {
    let mut b = Birthday::hard(BirthdayConfig::tcp(TOKEN), addr(EASY)).unwrap();
    b.start(t0()).unwrap();
    let out = take(&mut b);
    assert_eq!(out.len(), usize::from(DEFAULT_SOCKETS));
    for (i, t) in out.iter().enumerate() {
        assert_eq!(t.local, Local::Fresh(u16::try_from(i).unwrap()));
        assert_eq!(t.destination, addr(EASY));
        assert_eq!(t.kind, DatagramKind::Priming);
        assert_eq!(t.transport, Transport::Tcp);
        assert_eq!(t.expires, Some(t0() + DEFAULT_DEADLINE));
    }
    // No answers over TCP: nothing more until the deadline.
    assert_eq!(b.poll_timeout(), Some(t0() + DEFAULT_DEADLINE));
    b.handle_timeout(t0() + DEFAULT_DEADLINE);
    assert_eq!(b.outcome(), Some(BOutcome::TimedOut));
    assert!(take(&mut b).is_empty());
}

#[test]
fn quic_transmits_stay_datagrams_without_expiry() {
    let mut b = Birthday::hard(BirthdayConfig::new(TOKEN), addr(EASY)).unwrap();
    b.start(t0()).unwrap();
    assert!(
        take(&mut b)
            .iter()
            .all(|t| t.transport == Transport::Quic && t.expires.is_none())
    );
}

#[test]
fn tcp_easy_side_probes_live_their_lifetime_and_end_exhausted_after_the_last() {
    let mut b = tcp_easy(BirthdayConfig::tcp(TOKEN), 3);
    b.start(t0()).unwrap();
    let mut probes = Vec::new();
    let mut last = t0();
    for _ in 0..5000 {
        probes.extend(take(&mut b));
        if b.outcome().is_some() {
            break;
        }
        let Some(at) = b.poll_timeout() else { break };
        last = at;
        b.handle_timeout(at);
    }
    assert_eq!(probes.len(), usize::from(DEFAULT_PROBES));
    for (k, t) in probes.iter().enumerate() {
        let sent = t0() + ms(u64::try_from(k).unwrap());
        assert_eq!(t.local, Local::Punch);
        assert_eq!(t.kind, DatagramKind::Probe);
        assert_eq!(t.transport, Transport::Tcp);
        assert_eq!(t.destination.ip(), hard_ip());
        assert_eq!(t.expires, Some(sent + TCP_DEFAULT_PROBE_LIFETIME));
    }
    // Exhausted once the last probe's lifetime is over, not ANSWER_GRACE.
    assert_eq!(b.outcome(), Some(BOutcome::Exhausted));
    assert_eq!(last, t0() + ms(1023) + TCP_DEFAULT_PROBE_LIFETIME);
}

#[test]
fn tcp_in_flight_cap_holds_probes_back_until_the_oldest_expires() {
    let mut config = BirthdayConfig::tcp(TOKEN);
    config.probe_lifetime = ms(10);
    config.max_in_flight = 10;
    config.probes = 100;
    let mut b = tcp_easy(config, 1);
    b.start(t0()).unwrap();
    assert_eq!(take(&mut b).len(), 1);
    // A stalled timer: everything expired, a burst of 4 goes at 20 ms.
    b.handle_timeout(t0() + ms(20));
    assert_eq!(take(&mut b).len(), 4);
    // Then one per ms until 10 are alive (6 more, 21..=26 ms).
    for t in 21..=26 {
        b.handle_timeout(t0() + ms(t));
        assert_eq!(take(&mut b).len(), 1, "at {t} ms");
    }
    // Full: the next probe waits for the burst's expiry at 30 ms.
    b.handle_timeout(t0() + ms(27));
    assert!(take(&mut b).is_empty());
    assert_eq!(b.poll_timeout(), Some(t0() + ms(30)));
    b.handle_timeout(t0() + ms(30));
    assert_eq!(take(&mut b).len(), 4, "the four expired slots, one burst");
}

proptest! {
    /// However late the timer fires, never more than `max_in_flight`
    /// probe connects are unexpired, and never more than `probes` go.
    #[test]
    fn tcp_budget_holds_under_any_timer_lateness(
        seed in any::<u8>(),
        lateness in proptest::collection::vec(0u64..40, 1..400),
    ) {
        let mut config = BirthdayConfig::tcp(TOKEN);
        config.probe_lifetime = ms(20);
        config.max_in_flight = 20;
        config.probes = 200;
        let mut b = tcp_easy(config, seed);
        b.start(t0()).unwrap();
        let mut sent: Vec<Transmit> = take(&mut b);
        let mut now = t0();
        for late in lateness {
            let Some(at) = b.poll_timeout() else { break };
            now = now.max(at) + ms(late);
            b.handle_timeout(now);
            sent.extend(take(&mut b));
            let alive = sent.iter().filter(|t| t.expires.unwrap() > now).count();
            prop_assert!(alive <= 20, "{alive} alive at {:?}", now - t0());
        }
        prop_assert!(sent.len() <= 200);
        prop_assert!(sent.iter().all(|t| t.expires.is_some()));
    }
}

#[test]
fn tcp_same_seed_same_probes() {
    let run = |seed| {
        let mut b = tcp_easy(BirthdayConfig::tcp(TOKEN), seed);
        b.start(t0()).unwrap();
        let mut all = take(&mut b);
        for _ in 0..300 {
            let at = b.poll_timeout().unwrap();
            b.handle_timeout(at);
            all.extend(take(&mut b));
        }
        all
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}

#[test]
fn tcp_first_connection_meets_and_later_ones_are_refused() {
    let mut b = tcp_easy(BirthdayConfig::tcp(TOKEN), 4);
    b.start(t0()).unwrap();
    let first = take(&mut b)[0].destination;
    let at = b.poll_timeout().unwrap();
    b.handle_timeout(at);
    let second = take(&mut b)[0].destination;
    assert_eq!(
        b.handle_connected(at, Local::Punch, first),
        Ok(Accepted::Met)
    );
    assert_eq!(
        b.outcome(),
        Some(BOutcome::Met {
            local: Local::Punch,
            remote: first
        })
    );
    assert_eq!(
        b.handle_connected(at, Local::Punch, second),
        Err(Refusal::Finished)
    );
    // Nothing more goes out after the meeting.
    assert_eq!(b.poll_timeout(), None);
    b.handle_timeout(at + ms(100));
    assert!(take(&mut b).is_empty());
    assert_eq!(b.refusals().not_running, 1);
}

#[test]
fn tcp_stray_connections_are_refused_typed_and_change_nothing() {
    let mut easy = tcp_easy(BirthdayConfig::tcp(TOKEN), 5);
    assert_eq!(
        easy.handle_connected(t0(), Local::Punch, addr("198.51.100.2:2000")),
        Err(Refusal::NotStarted)
    );
    easy.start(t0()).unwrap();
    let probed = take(&mut easy)[0].destination;
    let other_ip = SocketAddr::new("192.0.2.1".parse().unwrap(), probed.port());
    assert_eq!(
        easy.handle_connected(t0(), Local::Punch, other_ip),
        Err(Refusal::WrongIp {
            from: other_ip,
            expected: hard_ip()
        })
    );
    let unprobed = SocketAddr::new(hard_ip(), if probed.port() == 2000 { 2001 } else { 2000 });
    assert_eq!(
        easy.handle_connected(t0(), Local::Punch, unprobed),
        Err(Refusal::NotProbed(unprobed.port()))
    );
    assert_eq!(
        easy.handle_connected(t0(), Local::Fresh(0), probed),
        Err(Refusal::UnknownSocket(Local::Fresh(0)))
    );
    let mut dgram = [0u8; 16];
    dgram[..4].copy_from_slice(b"DCBP");
    assert_eq!(
        easy.handle_datagram(t0(), Local::Punch, probed, &dgram),
        Err(Refusal::WrongTransport)
    );
    assert_eq!(easy.outcome(), None);
    let r = easy.refusals();
    assert_eq!(
        (r.not_running, r.wrong_ip, r.unexpected, r.unknown_socket),
        (1, 1, 2, 1)
    );

    let mut hard = Birthday::hard(BirthdayConfig::tcp(TOKEN), addr(EASY)).unwrap();
    hard.start(t0()).unwrap();
    let wrong_port = addr("203.0.113.7:4002");
    assert_eq!(
        hard.handle_connected(t0(), Local::Fresh(3), wrong_port),
        Err(Refusal::NotProbed(4002))
    );
    assert_eq!(
        hard.handle_connected(t0(), Local::Fresh(DEFAULT_SOCKETS), addr(EASY)),
        Err(Refusal::UnknownSocket(Local::Fresh(DEFAULT_SOCKETS)))
    );
    assert_eq!(
        hard.handle_connected(t0(), Local::Fresh(3), addr(EASY)),
        Ok(Accepted::Met)
    );

    let mut quic = Birthday::hard(BirthdayConfig::new(TOKEN), addr(EASY)).unwrap();
    quic.start(t0()).unwrap();
    assert_eq!(
        quic.handle_connected(t0(), Local::Fresh(3), addr(EASY)),
        Err(Refusal::WrongTransport)
    );
}

#[test]
fn tcp_config_bounds_are_typed() {
    let mut c = BirthdayConfig::tcp(TOKEN);
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(c.probe_lifetime, TCP_DEFAULT_PROBE_LIFETIME);
    assert_eq!(c.max_in_flight, TCP_DEFAULT_MAX_IN_FLIGHT);
    for bad in [
        TCP_MIN_PROBE_LIFETIME - Duration::from_micros(1),
        TCP_MAX_PROBE_LIFETIME + Duration::from_micros(1),
    ] {
        c.probe_lifetime = bad;
        assert_eq!(c.validate(), Err(BirthdayError::ProbeLifetime(bad)));
    }
    c.probe_lifetime = TCP_DEFAULT_PROBE_LIFETIME;
    // 500 ms of 1 ms probes are 500 alive: a cap below that is refused.
    for bad in [0, 499, TCP_MAX_IN_FLIGHT + 1] {
        c.max_in_flight = bad;
        assert_eq!(c.validate(), Err(BirthdayError::InFlight(bad)));
    }
    c.max_in_flight = 500;
    assert_eq!(c.validate(), Ok(()));
    // Over QUIC these fields are not checked.
    let mut q = BirthdayConfig::new(TOKEN);
    q.max_in_flight = 0;
    assert_eq!(q.validate(), Ok(()));
}

// ---- inside an Upgrade ----

/// The peer's one advertised TCP address.
const PEER: &str = "203.0.113.5:4001";
/// Our punch address as the peer sees it.
const OURS: &str = "198.51.100.9:4001";

fn random() -> NatBehaviour {
    random_nat(OURS)
}

fn cone() -> NatBehaviour {
    cone_nat(OURS)
}

/// A responder behind `ours` that got the peer's Connect (naming only
/// `PEER` over TCP and declaring `peer`) and its Sync at 10 ms.
fn punching_tcp(ours: NatBehaviour, peer: &NatBehaviour) -> (Upgrade, Vec<Output>) {
    let mut up = Upgrade::builder(Side::Responder, Config::default(), [7; 32])
        .local_addrs([tcp(OURS), quic(OURS)])
        .nat_behaviour(ours)
        .start(t0())
        .unwrap();
    drain(&mut up);
    up.handle_stream_opened(at(0));
    drain(&mut up);
    up.handle_stream_data(at(5), &connect_with_nat(&[tcp(PEER)], peer));
    drain(&mut up);
    up.handle_stream_data(at(10), &sync_frame());
    let out = drain(&mut up);
    (up, out)
}

#[test]
fn upgrade_hard_side_over_tcp_keeps_the_fresh_socket_that_connected() {
    let (mut up, out) = punching_tcp(random(), &cone());
    assert!(events(&out).contains(&Event::StrategyChosen {
        attempt: 1,
        strategy: Strategy::Birthday {
            hard_side: HardSide::Ours
        }
    }));
    let connects = transmits(&out);
    assert_eq!(connects.len(), usize::from(DEFAULT_SOCKETS));
    assert!(connects.iter().all(|t| t.transport == Transport::Tcp
        && t.destination == addr(PEER)
        && t.kind == DatagramKind::Priming
        && t.expires == Some(at(10) + DEFAULT_DEADLINE)));
    // A stray connection first: refused, no direct connection.
    let stray = addr("192.0.2.9:4001");
    assert!(matches!(
        up.handle_birthday_connected(at(200), Local::Fresh(7), stray),
        Err(Refusal::WrongIp { .. })
    ));
    assert!(drain(&mut up).is_empty());
    // Socket 7 completes its simultaneous open.
    let id = up
        .handle_birthday_connected(at(250), Local::Fresh(7), addr(PEER))
        .unwrap();
    let after = drain(&mut up);
    assert_eq!(closes(&after), vec![None], "every other connect closed");
    assert!(events(&after).contains(&Event::BirthdayEnded {
        attempt: 1,
        outcome: BOutcome::Met {
            local: Local::Fresh(7),
            remote: addr(PEER)
        },
        probes_sent: 0,
        sockets_opened: DEFAULT_SOCKETS,
    }));
    // Recorded as a hole-punch dial that connected, with no dial output.
    assert!(dials(&after).is_empty());
    let record = up.timeline().dials().iter().find(|d| d.id() == id).unwrap();
    assert_eq!(record.to(), tcp(PEER));
    // Without the identity check (the spec's mode) it wins at once.
    assert!(matches!(up.outcome(), Some(Outcome::Upgraded(u)) if u.id == id));
    // A second completion is refused: the carrier closes it.
    assert_eq!(
        up.handle_birthday_connected(at(260), Local::Fresh(8), addr(PEER)),
        Err(Refusal::NotStarted)
    );
}

#[test]
fn upgrade_easy_side_over_tcp_probes_and_fails_typed_when_nothing_connects() {
    let (mut up, out) = punching_tcp(cone(), &random());
    assert!(events(&out).contains(&Event::BirthdayStarted {
        attempt: 1,
        role: BRole::Easy,
        peer: SocketAddr::new(addr(PEER).ip(), 0)
    }));
    let mut all = out;
    for _ in 0..20_000 {
        let Some(t) = up.poll_timeout() else { break };
        up.handle_timeout(t.at);
        all.extend(drain(&mut up));
        if events(&all)
            .iter()
            .any(|e| matches!(e, Event::AttemptFailed { attempt: 1, .. }))
        {
            break;
        }
    }
    let probes = transmits(&all);
    assert_eq!(probes.len(), usize::from(DEFAULT_PROBES));
    assert!(probes.iter().all(|t| t.transport == Transport::Tcp
        && t.local == Local::Punch
        && t.destination.ip() == addr(PEER).ip()
        && t.expires.is_some()));
    assert_eq!(closes(&all), vec![None], "pending probes closed at the end");
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
            probes_sent: DEFAULT_PROBES
        }
    );
}

#[test]
fn upgrade_easy_side_over_tcp_takes_a_probe_that_connected() {
    let (mut up, out) = punching_tcp(cone(), &random());
    let first = transmits(&out)[0].destination;
    let id = up
        .handle_birthday_connected(at(40), Local::Punch, first)
        .unwrap();
    let after = drain(&mut up);
    assert_eq!(closes(&after), vec![None]);
    assert!(matches!(up.outcome(), Some(Outcome::Upgraded(u)) if u.id == id));
    // No more probes once met.
    let mut later = Vec::new();
    for _ in 0..50 {
        let Some(t) = up.poll_timeout() else { break };
        up.handle_timeout(t.at);
        later.extend(drain(&mut up));
    }
    assert!(transmits(&later).is_empty());
}
