//! Low-TTL priming ([`Output::Prime`]): as soon as the peer's Connect
//! arrives, each side sends one packet with [`Config::prime_ttl`] to every
//! address its punch will aim at, so that its own NAT maps the flow before
//! the peer's first punch packet reaches it. Fake clock throughout.

mod common;

use common::*;
use dcutr_core::settings::{DEFAULT_PRIME_TTL, MAX_PUNCHES_PER_IP};
use dcutr_core::{Candidate, Config, Output, Side, TimerKind, Transport, Upgrade};

/// The priming commands among `outputs`, in order.
fn primes(outputs: &[Output]) -> Vec<(Candidate, u8)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Prime { to, ttl } => Some((*to, *ttl)),
            _ => None,
        })
        .collect()
}

fn position(outputs: &[Output], pred: impl Fn(&Output) -> bool) -> usize {
    outputs
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("not found in {outputs:?}"))
}

fn peer() -> [Candidate; 3] {
    [
        tcp("203.0.113.5:4001"),
        quic("203.0.113.5:4002"),
        quic("203.0.113.6:4003"),
    ]
}

/// An initiator (spec streams) that sent its Connect at 0 ms; returns it
/// and what it output when the peer's Connect naming `addrs` arrived at
/// `rtt_ms`.
fn initiator_on_connect(
    config: Config,
    addrs: &[Candidate],
    rtt_ms: u64,
) -> (Upgrade, Vec<Output>) {
    let mut up = start(Side::Initiator, config);
    drain(&mut up);
    up.handle_stream_opened(at(0));
    drain(&mut up);
    up.handle_stream_data(at(rtt_ms), &connect_frame(addrs));
    let out = drain(&mut up);
    (up, out)
}

/// A responder (spec streams) whose stream opened at 0 ms; returns it and
/// what it output when the initiator's Connect naming `addrs` arrived at
/// 5 ms.
fn responder_on_connect(config: Config, addrs: &[Candidate]) -> (Upgrade, Vec<Output>) {
    let mut up = start(Side::Responder, config);
    drain(&mut up);
    up.handle_stream_opened(at(0));
    drain(&mut up);
    up.handle_stream_data(at(5), &connect_frame(addrs));
    let out = drain(&mut up);
    (up, out)
}

#[test]
fn the_initiator_primes_every_quic_punch_target_on_the_peers_connect_before_sync() {
    let (up, out) = initiator_on_connect(Config::default(), &peer(), 40);
    // QUIC targets only: a TCP priming SYN would pin the NAT's conntrack
    // entry to a sequence number the punch's SYN-ACK does not continue.
    assert_eq!(
        primes(&out),
        vec![
            (peer()[1], DEFAULT_PRIME_TTL),
            (peer()[2], DEFAULT_PRIME_TTL)
        ]
    );
    // At the Connect's arrival (40 ms), before Sync leaves: the punch is
    // still half a round trip away.
    let prime = position(&out, |o| matches!(o, Output::Prime { .. }));
    let sync = position(&out, |o| *o == Output::WriteStream(sync_frame()));
    assert!(prime < sync, "{out:?}");
    assert!(dials(&out).is_empty(), "{out:?}");
    assert_eq!(
        up.poll_timeout().map(|t| (t.at, t.kind)),
        Some((at(60), TimerKind::SyncDelay))
    );
}

#[test]
fn the_responder_primes_on_the_initiators_connect_before_its_sync() {
    let (up, out) = responder_on_connect(Config::default(), &peer());
    assert_eq!(
        primes(&out),
        vec![
            (peer()[1], DEFAULT_PRIME_TTL),
            (peer()[2], DEFAULT_PRIME_TTL)
        ]
    );
    // Our own Connect goes out first, then the priming packets; the punch
    // waits for Sync.
    let connect = position(&out, |o| matches!(o, Output::WriteStream(_)));
    let prime = position(&out, |o| matches!(o, Output::Prime { .. }));
    assert!(connect < prime, "{out:?}");
    assert!(dials(&out).is_empty(), "{out:?}");
    assert_eq!(
        up.timeline().attempts().last().unwrap().connect_received(),
        Some(at(5))
    );
}

#[test]
fn the_configured_ttl_is_used_and_none_turns_priming_off() {
    let three = Config {
        prime_ttl: Some(3),
        ..Config::default()
    };
    let (_, out) = initiator_on_connect(three, &peer(), 10);
    assert!(primes(&out).iter().all(|(_, ttl)| *ttl == 3), "{out:?}");
    assert_eq!(primes(&out).len(), 2);

    let off = Config {
        prime_ttl: None,
        ..Config::default()
    };
    let (_, out) = initiator_on_connect(off.clone(), &peer(), 10);
    assert!(primes(&out).is_empty(), "{out:?}");
    let (_, out) = responder_on_connect(off, &peer());
    assert!(primes(&out).is_empty(), "{out:?}");
}

#[test]
fn nothing_to_punch_means_nothing_to_prime() {
    // Only private addresses: the default policy accepts none of them.
    let private = [tcp("192.168.1.5:4001"), quic("10.0.0.7:4001")];
    let (_, out) = initiator_on_connect(Config::default(), &private, 10);
    assert!(primes(&out).is_empty(), "{out:?}");
    let (_, out) = responder_on_connect(Config::default(), &private);
    assert!(primes(&out).is_empty(), "{out:?}");
}

#[test]
fn priming_stays_within_the_per_ip_punch_budget() {
    // A peer naming ten QUIC ports of one IP: the punch aims at
    // MAX_PUNCHES_PER_IP of them, and so does the priming.
    let many: Vec<Candidate> = (0..10)
        .map(|i| quic(&format!("203.0.113.9:{}", 5000 + i)))
        .collect();
    let (_, out) = responder_on_connect(Config::default(), &many);
    let primed = primes(&out);
    assert_eq!(primed.len(), MAX_PUNCHES_PER_IP, "{primed:?}");
    assert_eq!(
        primed.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        many[..MAX_PUNCHES_PER_IP].to_vec()
    );
}

#[test]
fn the_initiators_quic_priming_counts_against_the_spray_budget() {
    let config = Config {
        max_spray_packets_per_attempt: 3,
        ..Config::default()
    };
    let targets = [quic("203.0.113.5:4002"), quic("203.0.113.6:4002")];
    let (mut up, out) = initiator_on_connect(config, &targets, 20);
    assert_eq!(primes(&out).len(), 2);
    up.handle_timeout(at(30));
    let punch = drain(&mut up);
    let sprayed: Vec<_> = punch
        .iter()
        .filter(|o| matches!(o, Output::SendDatagram { .. }))
        .collect();
    // Three datagrams per attempt: two priming ones, one spray datagram.
    assert_eq!(sprayed.len(), 1, "{punch:?}");
    let attempt = up.timeline().attempts().last().unwrap();
    assert_eq!(attempt.spray_packets(), 3);
    // The budget is spent: no further spray round is scheduled.
    assert_ne!(
        up.poll_timeout().map(|t| t.kind),
        Some(TimerKind::SprayTick)
    );
}

#[test]
fn priming_changes_nothing_else_the_core_outputs() {
    // The same inputs with and without priming: the outputs differ only
    // by the priming commands (and the spray's budget, which is far away).
    let off = Config {
        prime_ttl: None,
        ..Config::default()
    };
    let run = |config: Config| {
        let (mut up, mut out) = initiator_on_connect(config, &peer(), 40);
        up.handle_timeout(at(60));
        out.extend(drain(&mut up));
        for ms in [70, 100, 300] {
            up.handle_timeout(at(ms));
            out.extend(drain(&mut up));
        }
        out
    };
    let with: Vec<Output> = run(Config::default())
        .into_iter()
        .filter(|o| !matches!(o, Output::Prime { .. }))
        .collect();
    let without = run(off);
    assert!(primes(&without).is_empty());
    assert_eq!(with, without);
    assert!(
        with.iter()
            .any(|o| matches!(o, Output::Dial(d) if d.to.transport == Transport::Tcp)),
        "a real punch: {with:?}"
    );
}

#[test]
fn tcp_targets_are_not_primed() {
    let tcp_only = [tcp("203.0.113.5:4001"), tcp("203.0.113.6:4001")];
    let (_, out) = initiator_on_connect(Config::default(), &tcp_only, 10);
    assert!(primes(&out).is_empty(), "{out:?}");
    let (mut up, out) = responder_on_connect(Config::default(), &tcp_only);
    assert!(primes(&out).is_empty(), "{out:?}");
    // The punch itself still dials both.
    up.handle_stream_data(at(10), &sync_frame());
    assert_eq!(dials(&drain(&mut up)).len(), 2);
}
