//! Peer-reflexive candidates: a punch datagram of the peer that arrives
//! from an address its Connect did not name (its symmetric NAT gave the
//! punch a fresh port) is dialled, once, within its own budget and only
//! from an IP the peer named. Fake clock throughout.

mod common;

use std::time::Duration;

use common::*;
use dcutr_core::reason::PeerReflexiveRefused;
use dcutr_core::settings::{MAX_PEER_REFLEXIVE_DIALS, SPRAY_MARKER, SPRAY_PACKET_LEN};
use dcutr_core::{
    Candidate, Config, Dial, DialPurpose, Event, Outcome, Output, Role, Side, SprayPayload, Upgrade,
};

/// The peer's one advertised QUIC address.
const PEER: &str = "203.0.113.5:4001";

/// An initiator (the QUIC server of a spray punch) that got the peer's
/// Connect naming `PEER` over QUIC and reached its punch time; what the
/// punch put out.
fn spraying_initiator() -> (Upgrade, Vec<Output>) {
    let mut up = start(Side::Initiator, Config::default());
    drain(&mut up);
    up.handle_stream_opened(at(0));
    drain(&mut up);
    up.handle_stream_data(at(6), &connect_frame(&[quic(PEER)]));
    drain(&mut up);
    up.handle_timeout(at(9));
    let punch = drain(&mut up);
    (up, punch)
}

/// A responder (the QUIC client) that got the peer's Connect naming
/// `peer` and its Sync at 10 ms, and punched; returns it and the
/// punch's dials.
fn punching_responder(config: Config, peer: &[Candidate]) -> (Upgrade, Vec<Dial>) {
    let mut up = start(Side::Responder, config);
    drain(&mut up);
    up.handle_stream_opened(at(0));
    drain(&mut up);
    up.handle_stream_data(at(5), &connect_frame(peer));
    drain(&mut up);
    up.handle_stream_data(at(10), &sync_frame());
    let punch = dials(&drain(&mut up));
    (up, punch)
}

#[test]
fn a_punch_from_a_fresh_port_of_the_peer_ip_is_dialled_exactly_once() {
    let (mut up, punch) = punching_responder(Config::default(), &[quic(PEER)]);
    assert_eq!(punch.len(), 1, "{punch:?}");
    assert_eq!(punch[0].to, quic(PEER));

    let reflexive = quic("203.0.113.5:50123");
    let id = up
        .handle_peer_reflexive(at(20), reflexive)
        .expect("a fresh port of the peer's IP is a candidate");
    let out = drain(&mut up);
    let made = dials(&out);
    assert_eq!(made.len(), 1, "exactly one dial: {out:?}");
    assert_eq!(
        (
            made[0].id,
            made[0].to,
            made[0].role,
            made[0].purpose,
            made[0].attempt
        ),
        (id, reflexive, Role::Client, DialPurpose::HolePunch, 1)
    );
    assert!(
        events(&out).contains(&Event::PeerReflexive {
            attempt: 1,
            id,
            to: reflexive
        }),
        "{out:?}"
    );

    // The same source again (every spray round sends one): no second dial.
    for ms in [30, 40, 50] {
        assert_eq!(
            up.handle_peer_reflexive(at(ms), reflexive),
            Err(PeerReflexiveRefused::AlreadyKnown)
        );
        assert!(dials(&drain(&mut up)).is_empty());
    }
    // Nor the address the punch already dials.
    assert_eq!(
        up.handle_peer_reflexive(at(55), quic(PEER)),
        Err(PeerReflexiveRefused::AlreadyKnown)
    );

    let records = up.timeline().dials();
    assert_eq!(records.len(), 2);
    assert!(!records[0].is_peer_reflexive(), "the Connect's address");
    assert!(records[1].is_peer_reflexive());
    assert_eq!(records[1].to(), reflexive);
    assert_eq!(up.timeline().peer_reflexive_refused(), 4);

    // The candidate's connection wins like any dial.
    up.handle_dial_succeeded(at(60), id);
    drain(&mut up);
    match up.outcome() {
        Some(Outcome::Upgraded(won)) => {
            assert_eq!((won.id, won.remote), (id, reflexive.addr));
        }
        other => panic!("expected the candidate to win: {other:?}"),
    }
}

#[test]
fn a_source_on_another_ip_or_transport_is_refused_and_counted() {
    let (mut up, _) = punching_responder(Config::default(), &[quic(PEER)]);
    let strangers = [
        quic("203.0.113.6:50123"),  // another IP: a third party
        quic("198.51.100.5:4001"),  // the peer's port on another IP
        tcp("203.0.113.5:50123"),   // the peer's IP, but it named no TCP address
        quic("[2001:db8::5]:4001"), // another family
    ];
    for (i, from) in strangers.iter().enumerate() {
        assert_eq!(
            up.handle_peer_reflexive(at(20 + i as u64), *from),
            Err(PeerReflexiveRefused::NotPeerIp),
            "{from}"
        );
        assert!(dials(&drain(&mut up)).is_empty(), "{from}");
    }
    assert_eq!(up.timeline().peer_reflexive_refused(), 4);
    assert_eq!(up.timeline().dials().len(), 1, "only the punch's dial");
}

#[test]
fn at_most_max_peer_reflexive_dials_per_attempt() {
    // Room in the per-IP budget for more than the peer-reflexive one.
    let config = Config {
        max_punches_per_ip: MAX_PEER_REFLEXIVE_DIALS + 4,
        ..Config::default()
    };
    let (mut up, _) = punching_responder(config, &[quic(PEER)]);
    let mut made = 0;
    let mut refused = Vec::new();
    for port in 0..(MAX_PEER_REFLEXIVE_DIALS as u16 + 5) {
        let from = Candidate::quic(format!("203.0.113.5:{}", 50_000 + port).parse().unwrap());
        match up.handle_peer_reflexive(at(20 + u64::from(port)), from) {
            Ok(_) => made += 1,
            Err(reason) => refused.push(reason),
        }
        made_dials_match(&mut up, made);
    }
    assert_eq!(made, MAX_PEER_REFLEXIVE_DIALS);
    assert_eq!(refused, vec![PeerReflexiveRefused::BudgetSpent; 5]);
    assert_eq!(up.timeline().peer_reflexive_refused(), 5);
}

/// The upgrade's peer-reflexive dials so far number `made`.
fn made_dials_match(up: &mut Upgrade, made: usize) {
    drain(up);
    let reflexive = up
        .timeline()
        .dials()
        .iter()
        .filter(|d| d.is_peer_reflexive())
        .count();
    assert_eq!(reflexive, made);
}

#[test]
fn the_per_ip_and_per_upgrade_dial_budgets_hold_for_candidates_too() {
    // The punch's own dial fills the per-IP budget.
    let per_ip = Config {
        max_punches_per_ip: 1,
        ..Config::default()
    };
    let (mut up, _) = punching_responder(per_ip, &[quic(PEER)]);
    assert_eq!(
        up.handle_peer_reflexive(at(20), quic("203.0.113.5:50123")),
        Err(PeerReflexiveRefused::BudgetSpent)
    );
    assert!(dials(&drain(&mut up)).is_empty());

    // The punch's own dial fills the per-upgrade budget.
    let per_upgrade = Config {
        max_dials_per_upgrade: 1,
        ..Config::default()
    };
    let (mut up, _) = punching_responder(per_upgrade, &[quic(PEER)]);
    assert_eq!(
        up.handle_peer_reflexive(at(20), quic("203.0.113.5:50123")),
        Err(PeerReflexiveRefused::BudgetSpent)
    );
    assert!(dials(&drain(&mut up)).is_empty());
}

#[test]
fn the_budget_is_per_attempt() {
    let config = Config {
        max_punches_per_ip: MAX_PEER_REFLEXIVE_DIALS + 1,
        ..Config::default()
    };
    let (mut up, _) = punching_responder(config, &[quic(PEER)]);
    for port in 0..MAX_PEER_REFLEXIVE_DIALS as u16 {
        let from = Candidate::quic(format!("203.0.113.5:{}", 50_000 + port).parse().unwrap());
        up.handle_peer_reflexive(at(20), from).unwrap();
    }
    let next = quic("203.0.113.5:51000");
    assert_eq!(
        up.handle_peer_reflexive(at(21), next),
        Err(PeerReflexiveRefused::BudgetSpent)
    );
    // The punch window ends: attempt 1 fails, the responder waits.
    let window = Config::default().direct_timeout;
    up.handle_timeout(at(10) + window);
    drain(&mut up);
    assert_eq!(
        up.handle_peer_reflexive(at(10) + window, next),
        Err(PeerReflexiveRefused::NotPunching),
        "between attempts"
    );
    // Attempt 2 punches: its own budget.
    let t = at(10) + window + Duration::from_millis(10);
    up.handle_stream_opened(t);
    up.handle_stream_data(t, &connect_frame(&[quic(PEER)]));
    up.handle_stream_data(t, &sync_frame());
    drain(&mut up);
    let id = up
        .handle_peer_reflexive(t, next)
        .expect("attempt 2 has its own peer-reflexive budget");
    let made = dials(&drain(&mut up));
    assert_eq!(made.len(), 1);
    assert_eq!((made[0].id, made[0].attempt), (id, 2));
}

#[test]
fn outside_the_punch_a_punch_datagram_dials_nothing() {
    let from = quic("203.0.113.5:50123");
    // Before the peer's Connect.
    let mut up = start(Side::Responder, Config::default());
    drain(&mut up);
    assert_eq!(
        up.handle_peer_reflexive(at(1), from),
        Err(PeerReflexiveRefused::NotPunching)
    );
    up.handle_stream_opened(at(2));
    up.handle_stream_data(at(5), &connect_frame(&[quic(PEER)]));
    drain(&mut up);
    // After the Connect, before the Sync.
    assert_eq!(
        up.handle_peer_reflexive(at(6), from),
        Err(PeerReflexiveRefused::NotPunching)
    );
    assert!(dials(&drain(&mut up)).is_empty());
    // After the outcome.
    up.handle_stream_data(at(10), &sync_frame());
    let punch = dials(&drain(&mut up));
    up.handle_dial_succeeded(at(12), punch[0].id);
    drain(&mut up);
    assert!(matches!(up.outcome(), Some(Outcome::Upgraded(_))));
    assert_eq!(
        up.handle_peer_reflexive(at(13), from),
        Err(PeerReflexiveRefused::NotPunching)
    );
    assert!(dials(&drain(&mut up)).is_empty());
    assert_eq!(up.timeline().peer_reflexive_refused(), 3);
}

#[test]
fn the_spraying_quic_server_leaves_the_dial_to_the_peer() {
    // The initiator is the QUIC server of a spray punch: the peer's
    // Initial arrives from whatever port its NAT picks, and is accepted.
    let (mut up, out) = spraying_initiator();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::SendDatagram { to, .. } if *to == quic(PEER).addr)),
        "the punch sprays: {out:?}"
    );
    assert_eq!(
        up.handle_peer_reflexive(at(10), quic("203.0.113.5:50123")),
        Err(PeerReflexiveRefused::PeerDials)
    );
    assert!(dials(&drain(&mut up)).is_empty());
}

#[test]
fn spray_datagrams_carry_the_marker_and_nothing_else_passes_for_one() {
    let (_, punch) = spraying_initiator();
    let payloads: Vec<SprayPayload> = punch
        .into_iter()
        .filter_map(|o| match o {
            Output::SendDatagram { payload, .. } => Some(payload),
            _ => None,
        })
        .collect();
    assert!(!payloads.is_empty());
    for p in &payloads {
        let bytes = p.bytes();
        assert!(SprayPayload::is_spray(&bytes));
        assert_eq!(&bytes[..SPRAY_MARKER.len()], &SPRAY_MARKER);
        assert_eq!(bytes[0] & 0x40, 0, "QUIC fixed bit clear");
        assert!(!SprayPayload::is_spray(&bytes[..SPRAY_PACKET_LEN - 1]));
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(!SprayPayload::is_spray(&longer));
        let mut tampered = bytes;
        tampered[3] ^= 1;
        assert!(!SprayPayload::is_spray(&tampered));
    }
    // A QUIC Initial's first byte has the fixed bit set: never a spray.
    let mut initial = [0u8; SPRAY_PACKET_LEN];
    initial[0] = 0xc0;
    initial[1..SPRAY_MARKER.len()].copy_from_slice(&SPRAY_MARKER[1..]);
    assert!(!SprayPayload::is_spray(&initial));
}

#[test]
fn the_same_inputs_give_the_same_outputs() {
    fn script() -> (Vec<Output>, Vec<Result<(), PeerReflexiveRefused>>, String) {
        let (mut up, _) = punching_responder(Config::default(), &[quic(PEER)]);
        let mut out = Vec::new();
        let mut results = Vec::new();
        for (ms, from) in [
            (20, "203.0.113.5:50123"),
            (21, "203.0.113.9:50123"),
            (22, "203.0.113.5:50123"),
            (23, "203.0.113.5:50124"),
            (24, "203.0.113.5:50125"),
        ] {
            results.push(up.handle_peer_reflexive(at(ms), quic(from)).map(|_| ()));
            out.extend(drain(&mut up));
        }
        up.handle_timeout(at(10) + Config::default().direct_timeout);
        out.extend(drain(&mut up));
        (out, results, format!("{:?}", up.timeline()))
    }
    let first = script();
    assert_eq!(first, script());
    assert_eq!(
        first.1,
        vec![
            Ok(()),
            Err(PeerReflexiveRefused::NotPeerIp),
            Err(PeerReflexiveRefused::AlreadyKnown),
            Ok(()),
            Err(PeerReflexiveRefused::BudgetSpent),
        ]
    );
}
