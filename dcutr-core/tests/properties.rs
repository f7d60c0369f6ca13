//! Properties that hold for every input, checked with proptest:
//!
//! * the codec round-trips any valid message (Connect with any address
//!   list, cut to fit 4 KiB; Sync; Hello), whatever the chunking;
//! * two honest state machines in `dcutr-sim`, with any relayed delay up to
//!   2 s one way and any seed, reach the same outcome on both sides, and
//!   their punches (the initiator's first dial or spray, the responder's
//!   first dial) start within 1 ms of simulated time of each other;
//! * the same seed and inputs give identical output logs.
//!
//! Case counts keep the whole file well under 30 s in a debug build.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use common::{t0, tcp};
use dcutr_core::wire::{
    FrameDecoder, HolePunch, MAX_MESSAGE_SIZE, Message, MessageType, decode_hello, decode_message,
    encode_connect, encode_hello, encode_sync,
};
use dcutr_core::{Candidate, Config, DirectId, Outcome, Output, Role, Side, Transport, Upgrade};
use dcutr_sim::{Block, INITIATOR, Protocol, Record, Sim, SimConfig, Stranger};
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message as _;

// ----- codec ---------------------------------------------------------------

fn candidate() -> impl Strategy<Value = Candidate> {
    let ip = prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ];
    (any::<bool>(), ip, any::<u16>()).prop_map(|(quic, ip, port)| {
        let addr = SocketAddr::new(ip, port);
        if quic {
            Candidate::quic(addr)
        } else {
            Candidate::tcp(addr)
        }
    })
}

/// An `ObsAddrs` entry: mostly real multiaddrs, sometimes any bytes (the
/// codec carries them opaquely; filtering is the `addr` module's job).
fn obs_addr() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => candidate().prop_map(|c| c.to_multiaddr().to_vec()),
        1 => vec(any::<u8>(), 0..48),
    ]
}

/// Feeds `stream` to a decoder in pieces of the given sizes (cycled) and
/// returns the frames.
fn decode_chunked(stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
    let mut frames = Vec::new();
    let mut sizes = cuts.iter().copied().cycle();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (mut piece, later) = rest.split_at(n);
        rest = later;
        while !piece.is_empty() {
            if let Some(frame) = decoder.decode(&mut piece).expect("valid frames") {
                frames.push(frame);
            }
        }
    }
    assert_eq!(decoder.buffered(), 0, "nothing left over");
    frames
}

fn connect_payload_len(addrs: &[Vec<u8>]) -> usize {
    HolePunch {
        r#type: Some(MessageType::Connect as i32),
        obs_addrs: addrs.to_vec(),
        nat: None,
    }
    .encoded_len()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn connect_round_trips_in_any_chunking(
        addrs in vec(obs_addr(), 0..300),
        cuts in vec(1usize..80, 0..24),
    ) {
        let (frame, count) = encode_connect(addrs.iter().map(Vec::as_slice), MAX_MESSAGE_SIZE);
        // Exactly the longest prefix of the list that fits goes out.
        prop_assert!(connect_payload_len(&addrs[..count]) <= MAX_MESSAGE_SIZE);
        if count < addrs.len() {
            prop_assert!(connect_payload_len(&addrs[..=count]) > MAX_MESSAGE_SIZE);
        }
        let frames = decode_chunked(&frame, &cuts);
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(
            decode_message(&frames[0]),
            Ok(Message::Connect(addrs[..count].to_vec()))
        );
    }

    #[test]
    fn a_whole_exchange_decodes_the_same_in_any_chunking(
        fingerprint in any::<[u8; 32]>(),
        addrs in vec(candidate(), 0..20),
        cuts in vec(1usize..40, 0..24),
    ) {
        let raw: Vec<Vec<u8>> = addrs.iter().map(|c| c.to_multiaddr().to_vec()).collect();
        let (connect, count) = encode_connect(raw.iter().map(Vec::as_slice), MAX_MESSAGE_SIZE);
        prop_assert_eq!(count, raw.len(), "20 candidates always fit");
        let stream = [&encode_hello(3, Side::Initiator, &fingerprint)[..], &connect[..], &encode_sync()[..]].concat();
        let one_go = decode_chunked(&stream, &[]);
        let chunked = decode_chunked(&stream, &cuts);
        prop_assert_eq!(&one_go, &chunked);
        prop_assert_eq!(one_go.len(), 3);
        prop_assert_eq!(decode_hello(&one_go[0]).map(|h| h.fingerprint), Ok(fingerprint));
        prop_assert_eq!(decode_message(&one_go[1]), Ok(Message::Connect(raw)));
        prop_assert_eq!(decode_message(&one_go[2]), Ok(Message::Sync));
        // The parsed addresses are the candidates we started from.
        let Ok(Message::Connect(back)) = decode_message(&one_go[1]) else { unreachable!() };
        let parsed: Vec<Candidate> = back
            .iter()
            .map(|b| Candidate::from_bytes(b).expect("a candidate's own multiaddr"))
            .collect();
        prop_assert_eq!(parsed, addrs);
    }
}

// ----- two honest state machines -------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// libp2p: a stream per attempt, the caller authenticates.
    Libp2p,
    /// One shared stream, the caller authenticates.
    Shared,
    /// One shared stream with the pinned-TLS check.
    Pinned,
}

impl Mode {
    fn protocol(self) -> Protocol {
        match self {
            Mode::Libp2p => Protocol::Spec,
            Mode::Shared => Protocol::SessionUnpinned,
            Mode::Pinned => Protocol::Session,
        }
    }
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Libp2p), Just(Mode::Shared), Just(Mode::Pinned)]
}

/// TCP only, QUIC only, or both. Both transports only with the identity
/// check: without it the two sides can pick different connections, a known
/// bug kept in `fuzz_regressions.rs`
/// (`both_transports_without_identity_check_upgrade_on_different_connections`).
fn transports(mode: Mode) -> BoxedStrategy<Option<Transport>> {
    match mode {
        Mode::Pinned => prop_oneof![
            Just(Some(Transport::Tcp)),
            Just(Some(Transport::Quic)),
            Just(None)
        ]
        .boxed(),
        _ => prop_oneof![Just(Some(Transport::Tcp)), Just(Some(Transport::Quic))].boxed(),
    }
}

/// What a stranger on the punch port does.
fn stranger_kind() -> impl Strategy<Value = Stranger> {
    prop_oneof![
        Just(Stranger::Silent),
        Just(Stranger::Garbage),
        any::<[u8; 32]>().prop_map(Stranger::Certificate),
    ]
}

fn honest_world(
    mode: Mode,
    transport: Option<Transport>,
    relay_one_way: Duration,
    direct_one_way: Duration,
    seed: u64,
) -> SimConfig {
    let mut world = SimConfig::two_nats(&Config::default(), relay_one_way, direct_one_way)
        .protocol(mode.protocol());
    if let Some(t) = transport {
        world = world.only(t);
    }
    world.seed = seed;
    world
}

const LIMIT: Duration = Duration::from_secs(600);

fn is_punch(o: &Output) -> bool {
    matches!(o, Output::Dial(_) | Output::SendDatagram { .. })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn honest_peers_agree_and_punch_within_a_millisecond(
        (mode, transport) in mode().prop_flat_map(|m| (Just(m), transports(m))),
        relay_ms in 0u64..=2000,
        direct_ms in 0u64..=300,
        seed in any::<u64>(),
    ) {
        let mut world = honest_world(
            mode,
            transport,
            Duration::from_millis(relay_ms),
            Duration::from_millis(direct_ms),
            seed,
        );
        // This property is about when the two punches leave. With priming
        // on, the initiator's NAT is open before its punch, so with no
        // direct delay the responder's dial can connect before the
        // initiator's punch timer fires and it never punches at all.
        world.initiator.config.prime_ttl = None;
        world.responder.config.prime_ttl = None;
        let b_addrs = world.initiator.addrs.clone();
        let a_addrs = world.responder.addrs.clone();
        let mut sim = Sim::new(world);
        prop_assert!(sim.run(LIMIT), "both sides finish: {:?}", sim.outcomes());
        let (Some(Outcome::Upgraded(b)), Some(Outcome::Upgraded(a))) = sim.outcomes() else {
            return Err(TestCaseError::fail(format!("both upgrade: {:?}", sim.outcomes())));
        };
        prop_assert_eq!(b.transport, a.transport, "one transport on both sides");
        prop_assert_eq!((b.attempt, a.attempt), (1, 1), "honest peers need one attempt");
        prop_assert_eq!((b.role, a.role), (Role::Server, Role::Client), "B serves, A is the client");
        let b_reached = Candidate { transport: b.transport, addr: b.remote };
        let a_reached = Candidate { transport: a.transport, addr: a.remote };
        prop_assert!(a_addrs.contains(&b_reached), "the initiator reached the responder");
        prop_assert!(b_addrs.contains(&a_reached), "the responder reached the initiator");

        let b_punch = sim.first(Side::Initiator, is_punch).expect("the initiator punched");
        let a_punch = sim
            .first(Side::Responder, |o| matches!(o, Output::Dial(_)))
            .expect("the responder dialled");
        let gap = b_punch.abs_diff(a_punch);
        prop_assert!(
            gap <= Duration::from_millis(1),
            "punches {:?} apart (initiator {:?}, responder {:?})", gap, b_punch, a_punch
        );
    }

    #[test]
    fn the_same_seed_and_inputs_replay_the_same_log(
        mode in mode(),
        quic in any::<bool>(),
        relay_ms in 0u64..=2000,
        direct_ms in 0u64..=300,
        seed in any::<u64>(),
        blocked in vec(1u8..=3, 0..3),
        refuse in any::<bool>(),
        stranger in proptest::option::of((0u64..3000, stranger_kind())),
    ) {
        let run = || {
            let mut world = honest_world(
                mode,
                Some(if quic { Transport::Quic } else { Transport::Tcp }),
                Duration::from_millis(relay_ms),
                Duration::from_millis(direct_ms),
                seed,
            );
            world.blocked_attempts.clone_from(&blocked);
            world.block = if refuse { Block::Refuse } else { Block::Drop };
            let mut sim = Sim::new(world);
            if let (Mode::Pinned, Some((after, kind))) = (mode, stranger) {
                let from = Candidate {
                    transport: if quic { Transport::Quic } else { Transport::Tcp },
                    addr: "192.0.2.66:40000".parse().unwrap(),
                };
                sim.inject_stranger(INITIATOR, Duration::from_millis(after), from, kind);
            }
            let finished = sim.run(LIMIT);
            (finished, sim.log, sim.datagrams, sim.dialled)
        };
        let first = run();
        let second = run();
        prop_assert!(first.0, "the run finishes");
        prop_assert!(first.1.len() > 5, "a real run: {} records", first.1.len());
        prop_assert_eq!(&first.1, &second.1, "output logs differ");
        prop_assert_eq!(&first.2, &second.2);
        prop_assert_eq!(&first.3, &second.3);
    }
}

// ----- replay of one upgrade driven by hand --------------------------------

/// What a scripted peer does at one step.
#[derive(Clone, Debug)]
enum Poke {
    Bytes(Vec<u8>),
    Connect(Vec<Candidate>),
    Sync,
    Opened,
    Closed,
    Inbound(u16),
    DialOk(u8),
    Timeout,
}

fn poke() -> impl Strategy<Value = Poke> {
    prop_oneof![
        vec(any::<u8>(), 0..24).prop_map(Poke::Bytes),
        vec(candidate(), 0..6).prop_map(Poke::Connect),
        Just(Poke::Sync),
        Just(Poke::Opened),
        Just(Poke::Closed),
        any::<u16>().prop_map(Poke::Inbound),
        any::<u8>().prop_map(Poke::DialOk),
        Just(Poke::Timeout),
    ]
}

/// Logs every output and the next wakeup, and remembers the dials.
fn drain(up: &mut Upgrade, log: &mut Vec<String>, dials: &mut Vec<DirectId>) {
    while let Some(o) = up.poll_output() {
        if let Output::Dial(d) = &o {
            dials.push(d.id);
        }
        log.push(format!("{o:?}"));
    }
    log.push(format!("{:?}", up.poll_timeout()));
}

/// Every output and every wakeup of one upgrade under `script`.
fn scripted(side: Side, seed: [u8; 32], shared: bool, script: &[(u16, Poke)]) -> Vec<String> {
    let config = Config {
        address_policy: dcutr_core::AddressPolicy::permissive(),
        ..Config::default()
    };
    let mut builder = Upgrade::builder(side, config, seed)
        .local_addrs([tcp("198.51.100.9:4001"), common::quic("198.51.100.9:4001")])
        .remote_public_addrs([tcp("203.0.113.1:4001")]);
    if shared {
        builder = builder.dcutr_session_unpinned();
    }
    let mut up = builder.start(t0()).unwrap();
    let mut log = Vec::new();
    let mut now = t0();
    let mut dials = Vec::new();
    drain(&mut up, &mut log, &mut dials);
    for (advance, p) in script {
        now += Duration::from_millis(u64::from(*advance));
        match p {
            Poke::Bytes(b) => up.handle_stream_data(now, b),
            Poke::Connect(addrs) => up.handle_stream_data(now, &common::connect_frame(addrs)),
            Poke::Sync => up.handle_stream_data(now, &encode_sync()),
            Poke::Opened => up.handle_stream_opened(now),
            Poke::Closed => up.handle_stream_closed(now),
            Poke::Inbound(port) => {
                let r = up.handle_inbound(now, tcp(&format!("203.0.113.9:{}", (*port).max(1))));
                log.push(format!("{r:?}"));
            }
            Poke::DialOk(n) => {
                if !dials.is_empty() {
                    up.handle_dial_succeeded(now, dials[usize::from(*n) % dials.len()]);
                }
            }
            Poke::Timeout => {
                if let Some(t) = up.poll_timeout() {
                    now = now.max(t.at);
                }
                up.handle_timeout(now);
            }
        }
        drain(&mut up, &mut log, &mut dials);
    }
    log
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_scripted_upgrade_replays_identically(
        initiator in any::<bool>(),
        shared in any::<bool>(),
        seed in any::<[u8; 32]>(),
        script in vec((0u16..3000, poke()), 0..40),
    ) {
        let side = if initiator { Side::Initiator } else { Side::Responder };
        let first = scripted(side, seed, shared, &script);
        let second = scripted(side, seed, shared, &script);
        prop_assert_eq!(first, second);
    }
}

/// The replay property can fail: a different seed changes the log of an
/// upgrade that sprays (the payloads come from the seed).
#[test]
fn a_different_seed_changes_the_spray() {
    let world = |seed| {
        honest_world(
            Mode::Libp2p,
            Some(Transport::Quic),
            Duration::from_millis(30),
            Duration::from_millis(5),
            seed,
        )
    };
    let log = |seed| {
        let mut sim = Sim::new(world(seed));
        assert!(sim.run(LIMIT));
        sim.log
            .into_iter()
            .filter(|r: &Record| matches!(r.output, Output::SendDatagram { .. }))
            .collect::<Vec<_>>()
    };
    let (a, b) = (log(1), log(2));
    assert!(!a.is_empty());
    assert_ne!(a, b);
}

/// The agreement property can fail: a direct path that drops every dial of
/// every attempt ends in failure on both sides (the same outcome), which
/// the property above would report as "both upgrade" failing.
#[test]
fn blocked_paths_fail_on_both_sides() {
    let mut world = honest_world(
        Mode::Libp2p,
        Some(Transport::Tcp),
        Duration::from_millis(30),
        Duration::from_millis(5),
        1,
    );
    world.blocked_attempts = vec![1, 2, 3];
    let mut sim = Sim::new(world);
    assert!(sim.run(LIMIT));
    assert!(matches!(
        sim.outcomes(),
        (Some(Outcome::Failed(_)), Some(Outcome::Failed(_)))
    ));
}

// ----- amplification budget ------------------------------------------------

/// Drives an initiator against a hostile responder that answers every
/// attempt with `connect` and never lets a direct connection form.
/// Returns every datagram (attempt, destination) and every dial.
fn against_a_hostile_responder(
    config: Config,
    connect: &Bytes,
) -> (
    Vec<(u8, SocketAddr)>,
    Vec<dcutr_core::Dial>,
    Option<Outcome>,
) {
    let mut up = Upgrade::builder(Side::Initiator, config, [5; 32])
        .local_addrs([common::quic("198.51.100.9:4001")])
        .start(t0())
        .unwrap();
    let mut now = t0();
    let mut attempt = 0;
    let mut datagrams = Vec::new();
    let mut dials = Vec::new();
    // The first write on each new stream is our Connect; the next is Sync.
    let mut connect_due = false;
    for _ in 0..100_000 {
        let outputs: Vec<Output> = std::iter::from_fn(|| up.poll_output()).collect();
        let mut open = false;
        let mut answer = false;
        for out in outputs {
            match out {
                Output::OpenStream => open = true,
                // Our Connect went out: the hostile peer answers at once.
                Output::WriteStream(_) if connect_due => {
                    answer = true;
                    connect_due = false;
                }
                Output::SendDatagram { to, .. } => datagrams.push((attempt, to)),
                // A QUIC priming datagram counts against the same budget.
                Output::Prime { to, .. } if to.transport == Transport::Quic => {
                    datagrams.push((attempt, to.addr));
                }
                Output::Dial(d) => dials.push(d),
                Output::Event(dcutr_core::Event::AttemptStarted { attempt: a }) => attempt = a,
                _ => {}
            }
        }
        if open {
            connect_due = true;
            up.handle_stream_opened(now);
        } else if answer {
            now += Duration::from_millis(40);
            up.handle_stream_data(now, connect);
        } else if let Some(t) = up.poll_timeout() {
            now = now.max(t.at);
            up.handle_timeout(now);
        } else {
            break;
        }
    }
    (datagrams, dials, up.outcome().cloned())
}

/// Victims: a few public QUIC and TCP addresses, named many times over,
/// among addresses that must never be reached.
fn hostile_entry() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => (0u8..24, any::<bool>()).prop_map(|(i, q)| {
            let addr = SocketAddr::from(([203, 0, 113, 100 + i], 443));
            let c = if q { Candidate::quic(addr) } else { Candidate::tcp(addr) };
            c.to_multiaddr().to_vec()
        }),
        1 => candidate().prop_map(|c| c.to_multiaddr().to_vec()),
        1 => vec(any::<u8>(), 0..16),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever a hostile responder names, the initiator sprays at most
    /// `max_spray_packets_per_attempt` datagrams per attempt and
    /// `max_attempts` times that per upgrade, only to distinct QUIC
    /// addresses that pass the filter, round-robin; and it dials no more
    /// than `max_remote_addrs` per attempt.
    #[test]
    fn a_hostile_connect_cannot_exceed_the_packet_budget(
        entries in vec(hostile_entry(), 0..400),
        max_spray in 1u32..=300,
        max_remote in 1usize..=32,
        attempts in 1u8..=3,
    ) {
        let config = Config {
            max_spray_packets_per_attempt: max_spray,
            max_remote_addrs: max_remote,
            max_attempts: attempts,
            ..Config::default()
        };
        let (connect, count) = encode_connect(entries.iter().map(Vec::as_slice), MAX_MESSAGE_SIZE);
        let allowed = dcutr_core::filter::filter_remote(
            entries[..count].iter().map(Vec::as_slice),
            &config.address_policy,
            &config.dialable,
            max_remote,
        )
        .accepted;
        let (datagrams, dials, outcome) = against_a_hostile_responder(config.clone(), &connect);
        prop_assert!(
            matches!(outcome, Some(Outcome::Failed(_))),
            "no connection can form: {:?}", outcome
        );
        let total_budget = u64::from(attempts) * u64::from(max_spray);
        prop_assert!(datagrams.len() as u64 <= total_budget);
        let bytes = datagrams.len() * dcutr_core::settings::SPRAY_PACKET_LEN;
        prop_assert!(bytes as u64 <= total_budget * 64, "{} bytes", bytes);
        for a in 1..=attempts {
            let mine: Vec<SocketAddr> =
                datagrams.iter().filter(|(n, _)| *n == a).map(|(_, to)| *to).collect();
            prop_assert!(mine.len() as u64 <= u64::from(max_spray), "attempt {}: {}", a, mine.len());
            let mut per_target = std::collections::BTreeMap::<SocketAddr, usize>::new();
            for to in &mine {
                prop_assert!(allowed.contains(&Candidate::quic(*to)), "sprayed {} unnamed", to);
                *per_target.entry(*to).or_default() += 1;
            }
            prop_assert!(per_target.len() <= max_remote);
            let (lo, hi) = (per_target.values().min(), per_target.values().max());
            if let (Some(lo), Some(hi)) = (lo, hi) {
                prop_assert!(hi - lo <= 1, "targets are sprayed round-robin: {:?}", per_target);
            }
            let punch_dials = dials.iter().filter(|d| d.attempt == a).count();
            prop_assert!(punch_dials <= max_remote);
        }
        // The initiator never dials QUIC in a punch (it is the server), and
        // every dial target was named and passed the filter.
        for d in &dials {
            prop_assert_eq!(d.to.transport, Transport::Tcp);
            prop_assert!(allowed.contains(&d.to));
        }
        // With victims named, the budget is used, so the bound is the one
        // that holds (the assertions above can trip).
        let quic_named = allowed.iter().any(|c| c.transport == Transport::Quic);
        prop_assert_eq!(!datagrams.is_empty(), quic_named);
    }
}
