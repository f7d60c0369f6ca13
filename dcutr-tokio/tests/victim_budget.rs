//! A silent victim, measured over real sockets: a hostile peer names a
//! third party's addresses in its Connects, and we count, at the victim,
//! every packet and byte our standalone peer sends there.
//!
//! The test makes two network namespaces of its own joined by a veth pair
//! (documentation addresses 198.51.100.0/24, nothing else is reachable):
//! the *peer* namespace, where this test re-runs itself (`ip netns exec`)
//! with our peer, the relayed stream (loopback) and the hostile peer; and
//! the *victim* namespace, with four addresses that answer ARP and nothing
//! else: nftables drops every IP packet on input (so no SYN-ACK, RST or
//! ICMP goes back) and counts it by protocol first, and drops and counts
//! everything the victim would send (it must stay at 0).
//!
//! Two hostile upgrades, one per role, with the default `Config` (only the
//! victim's addresses are chosen by the attacker):
//! * against our **initiator** (the spec's B): the hostile responder answers
//!   each of our Connects with 16 victim addresses, TCP and QUIC on four
//!   IPs; we dial TCP and spray QUIC at them, every attempt;
//! * against our **responder** (the spec's A): the hostile initiator
//!   pipelines every attempt at once (Hello, then Connect + Sync as often as
//!   our Hello allows) so that each attempt supersedes the last within
//!   milliseconds, the fastest it can make us dial.
//!
//! Three more against our initiator run the birthday punch: the hostile
//! responder declares a NAT with random ports (we are the easy side and
//! probe a victim IP), once with the relay having seen it elsewhere (then
//! nothing may reach the victim) and once without; and it declares a cone
//! while we map at random (we send priming datagrams at the victim). All
//! three aim at one victim IP within a minute, so together they get exactly
//! the process's `BIRTHDAY_PACKETS_PER_IP` there.
//!
//! Per upgrade it asserts the core's budgets on what it asked for
//! (`MAX_DIALS_PER_UPGRADE`, `MAX_PUNCHES_PER_IP` per attempt, the spray
//! budget) and on what the victim saw: at most the SYNs [`syns_within`] the direct
//! timeout gives per TCP dial, [`max_datagrams_per_quic_dial`] datagrams per QUIC dial, exactly
//! the spray the report counts, and nothing left over once the upgrade is
//! done. It prints the measured numbers (SECURITY.md quotes them):
//!
//! ```sh
//! sudo -E cargo test -p dcutr-tokio --test victim_budget -- --ignored --nocapture
//! ```

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use dcutr_core::admission::BIRTHDAY_PACKETS_PER_IP;
use dcutr_core::birthday::DATAGRAM_LEN;
use dcutr_core::nat::{Allocation, Filtering, Mapping, NatBehaviour};
use dcutr_core::settings::{MAX_DIALS_PER_UPGRADE, MAX_PUNCHES_PER_IP, SPRAY_PACKET_LEN};
use dcutr_core::wire::{
    FrameDecoder, MAX_MESSAGE_SIZE, Message, NatWire, decode_message, encode_connect_with,
    encode_hello, encode_sync,
};
use dcutr_driver::quic::max_datagrams_per_quic_dial;
use dcutr_tokio::{Candidate, Config, Options, Side, Transport, UpgradeFailure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// This test's name: the inner run is selected with it.
const TEST_NAME: &str =
    "a_hostile_peer_gets_at_most_the_named_budgets_out_of_us_at_a_silent_victim";

/// Set (to the victim namespace's name) in the inner run, inside the peer
/// namespace.
const INNER_ENV: &str = "DCUTR_VICTIM_NETNS";

/// Our peer's address in its namespace.
const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// Where the relay saw the hostile peer, in the birthday attacks that
/// have an observation (documentation space, not the victim's).
const HOSTILE_SEEN_AT: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)), 4000);

/// The victim's addresses: four, so that the per-IP cap and the
/// per-upgrade dial cap both bind.
const VICTIM_IPS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(198, 51, 100, 2),
    Ipv4Addr::new(198, 51, 100, 3),
    Ipv4Addr::new(198, 51, 100, 4),
    Ipv4Addr::new(198, 51, 100, 5),
];

/// SYNs one TCP dial sends to a silent address within `window` (the
/// attempt's `direct_timeout`, after which the dial is dropped), from this
/// namespace's kernel settings: the first SYN, then `tcp_syn_retries`
/// retransmissions, the first `tcp_syn_linear_timeouts` (Linux 6.5 and
/// later, default 4) one second apart, the rest with the timeout doubling.
/// Linux 6.x with the defaults: 0, 1, 2, 3, 4 s, then 6 s: 5 SYNs in 5 s.
fn syns_within(window: Duration) -> u64 {
    let sysctl = |name: &str, default: u32| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default)
    };
    let (retries, linear) = (
        sysctl("tcp_syn_retries", 6),
        sysctl("tcp_syn_linear_timeouts", 0),
    );
    // Half a second of slack for a dial dropped a little after the window.
    let window = window + Duration::from_millis(500);
    let (mut at, mut rto, mut syns) = (Duration::ZERO, Duration::from_secs(1), 1);
    for retry in 1..=retries {
        at += rto;
        if at > window {
            break;
        }
        syns += 1;
        if retry >= linear {
            rto *= 2;
        }
    }
    syns
}

/// Bytes of one SYN at the IP layer: 20 of IPv4 header, 40 of TCP header
/// with Linux's options (MSS, SACK, timestamps, window scale).
const SYN_IP_BYTES: u64 = 60;

/// Bytes of one client Initial at the IP layer: quinn pads it to 1200
/// bytes of UDP payload; 8 of UDP and 20 of IPv4 header.
const INITIAL_IP_BYTES: u64 = 1200 + 8 + 20;

/// How long the victim is watched after an upgrade ended: longer than the
/// gap to the next SYN retransmission (4 s), so a dial that outlived its
/// upgrade would show.
const TAIL: Duration = Duration::from_secs(5);

/// Upper bound for one hostile upgrade, from start to failure.
const UPGRADE_LIMIT: Duration = Duration::from_secs(60);

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The two namespaces; deleted on drop (which also removes the veth pair).
struct Lab {
    peer: String,
    victim: String,
}

impl Lab {
    fn create() -> Lab {
        let id = std::process::id();
        let lab = Lab {
            peer: format!("dvb{id}p"),
            victim: format!("dvb{id}v"),
        };
        let (p, v) = (lab.peer.as_str(), lab.victim.as_str());
        run("ip", &["netns", "add", p]);
        run("ip", &["netns", "add", v]);
        let (pl, vl) = (format!("vb{id}p"), format!("vb{id}v"));
        run(
            "ip",
            &[
                "link", "add", &pl, "netns", p, "type", "veth", "peer", "name", &vl, "netns", v,
            ],
        );
        for (ns, link) in [(p, &pl), (v, &vl)] {
            // IPv4 only: no router solicitations or neighbour discovery to
            // blur the counts.
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                ],
            );
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
            run("ip", &["-n", ns, "link", "set", link, "up"]);
        }
        run(
            "ip",
            &["-n", p, "addr", "add", &format!("{PEER_IP}/24"), "dev", &pl],
        );
        for ip in VICTIM_IPS {
            run(
                "ip",
                &["-n", v, "addr", "add", &format!("{ip}/24"), "dev", &vl],
            );
        }
        let rules = "table inet victim {
            counter tcp_in {}
            counter birthday_in {}
            counter spray_in {}
            counter prime_in {}
            counter quic_in {}
            counter other_in {}
            counter sent {}
            chain input {
                type filter hook input priority -300; policy drop;
                meta l4proto tcp counter name tcp_in
                udp length 24 counter name birthday_in
                ip ttl >= 16 udp length > 24 udp length < 200 counter name spray_in
                ip ttl < 16 udp length > 24 udp length < 200 counter name prime_in
                udp length >= 200 counter name quic_in
                meta l4proto != { tcp, udp } counter name other_in
            }
            chain output {
                type filter hook output priority -300; policy drop;
                counter name sent
            }
        }";
        let mut nft = Command::new("ip")
            .args(["netns", "exec", v, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        std::io::Write::write_all(&mut nft.stdin.take().unwrap(), rules.as_bytes())
            .expect("writing to nft");
        assert!(nft.wait().unwrap().success(), "nft refused the ruleset");
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.peer, &self.victim] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Packets and bytes (IP layer) per counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Count {
    packets: u64,
    bytes: u64,
}

fn counters(victim: &str) -> BTreeMap<String, Count> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", victim, "nft", "list", "counters", "table", "inet", "victim",
        ])
        .output()
        .expect("nft list counters");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut counts = BTreeMap::new();
    let mut name = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("counter ") {
            name = rest.split_whitespace().next().map(str::to_owned);
        } else if let (Some(n), Some(rest)) = (&name, line.strip_prefix("packets ")) {
            let mut it = rest.split_whitespace();
            let packets = it.next().unwrap().parse().unwrap();
            assert_eq!(it.next(), Some("bytes"));
            let bytes = it.next().unwrap().parse().unwrap();
            counts.insert(n.clone(), Count { packets, bytes });
        }
    }
    assert_eq!(counts.len(), 7, "every counter read: {text}");
    counts
}

fn delta(after: &BTreeMap<String, Count>, before: &BTreeMap<String, Count>, name: &str) -> Count {
    Count {
        packets: after[name].packets - before[name].packets,
        bytes: after[name].bytes - before[name].bytes,
    }
}

/// The Connect of the hostile peer: 16 victim addresses (the core's
/// `max_remote_addrs`), TCP and QUIC ports on each of the four IPs, or
/// (`quic_only`) four QUIC ports on each, the costliest kind of dial.
fn victim_connect(nat: Option<&NatBehaviour>, quic_only: bool) -> Vec<u8> {
    let mut addrs = Vec::new();
    for port in 0..2u16 {
        for ip in VICTIM_IPS {
            let ip = IpAddr::V4(ip);
            let pair = if quic_only {
                [
                    Candidate::quic(SocketAddr::new(ip, 3001 + port)),
                    Candidate::quic(SocketAddr::new(ip, 2001 + port)),
                ]
            } else {
                [
                    Candidate::tcp(SocketAddr::new(ip, 1001 + port)),
                    Candidate::quic(SocketAddr::new(ip, 2001 + port)),
                ]
            };
            addrs.extend(pair.iter().map(|c| c.to_multiaddr().to_vec()));
        }
    }
    let nat = nat.map(NatWire::from_behaviour);
    encode_connect_with(addrs.iter().map(Vec::as_slice), nat, MAX_MESSAGE_SIZE)
        .0
        .to_vec()
}

async fn next_frame(stream: &mut TcpStream, decoder: &mut FrameDecoder) -> Option<Vec<u8>> {
    loop {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.ok()?;
        if let Some(frame) = decoder.decode(&mut &byte[..]).expect("our peer's frames") {
            return Some(frame);
        }
    }
}

/// Against our initiator: answers each of its Connects with the victims,
/// declaring `nat` as its NAT's behaviour if given.
async fn hostile_responder(mut stream: TcpStream, nat: Option<NatBehaviour>) {
    let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
    let _hello = next_frame(&mut stream, &mut decoder).await;
    let hello = encode_hello(10, Side::Responder, &[9; 32]);
    stream.write_all(&hello).await.unwrap();
    let connect = victim_connect(nat.as_ref(), false);
    while let Some(frame) = next_frame(&mut stream, &mut decoder).await {
        if let Message::Connect(_) = decode_message(&frame).unwrap()
            && stream.write_all(&connect).await.is_err()
        {
            return;
        }
    }
}

/// Against our responder: each attempt's Connect and Sync, `pause` apart
/// (zero: every attempt at once, each superseding the last).
async fn hostile_initiator(stream: TcpStream, attempts: u8, pause: Duration, quic_only: bool) {
    let (mut read, mut write) = stream.into_split();
    // Drain what our peer says, so it never blocks on the stream.
    let drain = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    });
    let mut now = encode_hello(10, Side::Initiator, &[9; 32]).to_vec();
    for attempt in 0..attempts {
        if attempt > 0 && !pause.is_zero() {
            write.write_all(&now).await.unwrap();
            now.clear();
            tokio::time::sleep(pause).await;
        }
        now.extend_from_slice(&victim_connect(None, quic_only));
        now.extend_from_slice(&encode_sync());
    }
    let _ = write.write_all(&now).await;
    let _ = drain.await;
}

/// Who the hostile peer is and how it paces its attempts.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// A responder answering our initiator's Connects with the victims.
    OnInitiator,
    /// The same, declaring a NAT with random ports while ours is a cone:
    /// we are the birthday punch's easy side and probe the first victim
    /// IP's ports. `observed`: the relay saw the hostile peer's own
    /// address, so only that IP may be probed.
    BirthdayProbes { observed: bool },
    /// The same, declaring a cone while ours maps at random: we are the
    /// hard side and send priming datagrams at the victim address.
    BirthdayPriming,
    /// An initiator sending every attempt at once against our responder.
    SupersedingOnResponder,
    /// An initiator starting each attempt just after our responder's
    /// direct phase of the last one ended, so that no dial is cut short.
    PacedOnResponder,
    /// The same with QUIC addresses only: every dial a QUIC one, whose
    /// Initials and retransmissions cost the most.
    PacedQuicOnResponder,
}

/// What one hostile upgrade got out of us.
#[derive(Debug)]
struct Measured {
    /// Birthday datagrams the core asked for (the timeline's count).
    birthday_sent: u64,
    /// Birthday datagrams at the victim.
    birthday: Count,
    tcp_dials: u64,
    quic_dials: u64,
    sprayed: u64,
    attempts: usize,
    /// Low-TTL priming datagrams at the victim (`Config::prime_ttl`: they
    /// reach only a victim this close, one hop away).
    primed: Count,
    took: Duration,
    tcp: Count,
    spray: Count,
    quic: Count,
    other: Count,
    sent: Count,
}

/// A behaviour declared for `local`: a cone, or random ports.
fn declared(random: bool, local: SocketAddr) -> NatBehaviour {
    let (mapping, allocation, filtering) = if random {
        (
            Mapping::EndpointDependent,
            Allocation::Random,
            Filtering::AddressAndPortDependent,
        )
    } else {
        (
            Mapping::EndpointIndependent,
            Allocation::Preserving,
            Filtering::AddressAndPortDependent,
        )
    };
    NatBehaviour::declared(mapping, allocation, filtering, local)
}

async fn hostile_upgrade(victim: &str, attack: Attack) -> Measured {
    let config = Config::default();
    let side = match attack {
        Attack::OnInitiator | Attack::BirthdayProbes { .. } | Attack::BirthdayPriming => {
            Side::Initiator
        }
        Attack::SupersedingOnResponder
        | Attack::PacedOnResponder
        | Attack::PacedQuicOnResponder => Side::Responder,
    };
    let any = SocketAddr::new(IpAddr::V4(PEER_IP), 0);
    let listener = dcutr_tokio::tcp_listener(any).unwrap();
    let tcp = listener.local_addr().unwrap();
    let quic = dcutr_tokio::quic_socket(dcutr_tokio::udp_socket(any).unwrap()).unwrap();
    let udp = quic.local_addr().unwrap();
    let mut options = Options::new(side)
        .config(config.clone())
        .local_addrs([Candidate::tcp(tcp), Candidate::quic(udp)])
        .tcp(listener)
        .quic(quic);
    let (ours, theirs) = common::relayed_pair().await;
    let hostile_nat = match attack {
        Attack::BirthdayProbes { observed } => {
            options = options.nat_behaviour(declared(false, udp));
            if observed {
                // Where the relay saw the hostile peer: off this lab's
                // segment, so the unilateral dial there fails at once.
                options = options.remote_public_addrs([Candidate::tcp(HOSTILE_SEEN_AT)]);
            }
            Some(declared(true, udp))
        }
        Attack::BirthdayPriming => {
            options = options.nat_behaviour(declared(true, udp));
            Some(declared(false, udp))
        }
        _ => None,
    };
    let before = counters(victim);
    let started = std::time::Instant::now();
    let attempts = config.max_attempts;
    let paced = config.direct_timeout + Duration::from_millis(200);
    let attacker = match attack {
        Attack::OnInitiator | Attack::BirthdayProbes { .. } | Attack::BirthdayPriming => {
            tokio::spawn(hostile_responder(theirs, hostile_nat))
        }
        Attack::SupersedingOnResponder => {
            tokio::spawn(hostile_initiator(theirs, attempts, Duration::ZERO, false))
        }
        Attack::PacedOnResponder => tokio::spawn(hostile_initiator(theirs, attempts, paced, false)),
        Attack::PacedQuicOnResponder => {
            tokio::spawn(hostile_initiator(theirs, attempts, paced, true))
        }
    };
    let result = tokio::time::timeout(UPGRADE_LIMIT, dcutr_tokio::upgrade(ours, options))
        .await
        .expect("the hostile upgrade ends");
    let took = started.elapsed();
    attacker.abort();
    let error = result.expect_err("nobody answers at the victim");
    assert!(
        matches!(error.reason, UpgradeFailure::Failed(_)),
        "{:?}",
        error.reason
    );
    tokio::time::sleep(TAIL).await;
    let after = counters(victim);
    let timeline = &error.report.timeline;

    // What the core asked for, against its budgets.
    assert!(
        timeline.dials().len() <= MAX_DIALS_PER_UPGRADE,
        "{} dials in one upgrade",
        timeline.dials().len()
    );
    let mut per_ip: BTreeMap<(u8, IpAddr), usize> = BTreeMap::new();
    for d in timeline.dials() {
        let victim = VICTIM_IPS
            .iter()
            .any(|v| IpAddr::V4(*v) == d.to().addr.ip());
        // The unilateral dial goes where the relay saw the peer.
        let observed = d.to().addr == HOSTILE_SEEN_AT;
        assert!(
            victim || observed,
            "a dial to an address nobody named: {}",
            d.to()
        );
        *per_ip.entry((d.attempt(), d.to().addr.ip())).or_default() += 1;
    }
    for ((attempt, ip), n) in &per_ip {
        assert!(
            *n <= MAX_PUNCHES_PER_IP,
            "{n} dials to {ip} in attempt {attempt}"
        );
    }
    let syns_per_dial = syns_within(config.direct_timeout);
    let count = |t: Transport| {
        timeline
            .dials()
            .iter()
            .filter(|d| d.to().transport == t)
            .count() as u64
    };
    let sprayed: u64 = timeline
        .attempts()
        .iter()
        .map(|a| u64::from(a.spray_packets()))
        .sum();
    let spray_budget =
        u64::from(config.max_attempts) * u64::from(config.max_spray_packets_per_attempt);
    assert!(sprayed <= spray_budget, "{sprayed} spray datagrams");

    let birthday_sent: u64 = timeline
        .attempts()
        .iter()
        .map(|a| u64::from(a.birthday_datagrams()))
        .sum();
    let m = Measured {
        birthday_sent,
        birthday: delta(&after, &before, "birthday_in"),
        tcp_dials: count(Transport::Tcp),
        quic_dials: count(Transport::Quic),
        sprayed,
        attempts: timeline.attempts().len(),
        took,
        tcp: delta(&after, &before, "tcp_in"),
        spray: delta(&after, &before, "spray_in"),
        primed: delta(&after, &before, "prime_in"),
        quic: delta(&after, &before, "quic_in"),
        other: delta(&after, &before, "other_in"),
        sent: delta(&after, &before, "sent"),
    };
    println!("victim ({attack:?}): {m:?}");

    // What reached the victim, against what the core asked for.
    let quic_only = matches!(attack, Attack::PacedQuicOnResponder);
    assert_eq!(
        m.tcp_dials > 0,
        !quic_only,
        "the hostile Connects made us dial TCP: {m:?}"
    );
    assert!(
        m.tcp.packets >= m.tcp_dials,
        "every TCP dial reaches the victim (the lab works): {m:?}"
    );
    assert!(
        m.tcp.packets <= m.tcp_dials * syns_per_dial,
        "more SYNs than {syns_per_dial} per dial: {m:?}"
    );
    assert!(m.tcp.bytes <= m.tcp.packets * SYN_IP_BYTES, "{m:?}");
    // Priming datagrams are spray-sized, and the initiator's spray budget
    // (and report) counts them; the responder has no spray, and primes at
    // most each of its QUIC punch targets once per attempt.
    let small = m.spray.packets + m.primed.packets;
    match side {
        Side::Initiator => assert_eq!(
            small, m.sprayed,
            "the report counts every spray and priming datagram: {m:?}"
        ),
        Side::Responder => {
            assert_eq!(
                m.spray,
                Count::default(),
                "the responder never sprays: {m:?}"
            );
            assert!(
                m.primed.packets <= m.quic_dials,
                "a priming datagram per QUIC punch target at most: {m:?}"
            );
        }
    }
    assert_eq!(
        m.spray.bytes + m.primed.bytes,
        small * (SPRAY_PACKET_LEN as u64 + 28),
        "spray and priming datagrams are {SPRAY_PACKET_LEN} bytes"
    );
    // A QUIC endpoint sends its Initial a moment after the dial starts, and
    // a superseded dial may be dropped before that: only some must show.
    assert!(
        m.quic_dials == 0 || m.quic.packets > 0,
        "QUIC dials reach the victim (the lab works): {m:?}"
    );
    let per_quic_dial = max_datagrams_per_quic_dial(config.direct_timeout);
    assert!(
        m.quic.packets <= m.quic_dials * per_quic_dial,
        "more than {per_quic_dial} datagrams per QUIC dial: {m:?}"
    );
    assert!(m.quic.bytes <= m.quic.packets * 1500, "{m:?}");
    assert_eq!(
        m.other,
        Count::default(),
        "only TCP and UDP reach the victim"
    );
    assert_eq!(m.sent, Count::default(), "the victim stays silent");
    let birthday_ip_bytes = DATAGRAM_LEN as u64 + 28;
    assert_eq!(
        m.birthday.bytes,
        m.birthday.packets * birthday_ip_bytes,
        "{m:?}"
    );
    match attack {
        Attack::BirthdayProbes { observed: true } => {
            assert_eq!(
                m.birthday,
                Count::default(),
                "the observed IP is not the victim's"
            );
        }
        Attack::BirthdayPriming => {
            // The first birthday packets of the process at this IP: the
            // budget lets every one through (the lab works).
            assert!(m.birthday_sent > 0, "{m:?}");
            assert_eq!(m.birthday.packets, m.birthday_sent, "{m:?}");
        }
        Attack::BirthdayProbes { observed: false } => {
            assert!(
                m.birthday.packets > 0,
                "the birthday punch ran (the lab works): {m:?}"
            );
            assert!(
                m.birthday.packets < m.birthday_sent,
                "the budget held some back: {m:?}"
            );
        }
        _ => assert_eq!(m.birthday, Count::default(), "{m:?}"),
    }
    m
}

/// The worst case one hostile upgrade can get out of us, from the named
/// budgets: every dial the costlier kind, plus the whole spray budget,
/// plus the process's birthday budget for one IP, plus a priming
/// datagram per dial.
fn worst_case_bytes(config: &Config) -> u64 {
    let syns_per_dial = syns_within(config.direct_timeout);
    let per_dial = (syns_per_dial * SYN_IP_BYTES)
        .max(max_datagrams_per_quic_dial(config.direct_timeout) * INITIAL_IP_BYTES);
    let spray = u64::from(config.max_attempts)
        * u64::from(config.max_spray_packets_per_attempt)
        * (SPRAY_PACKET_LEN as u64 + 28);
    let birthday = u64::from(BIRTHDAY_PACKETS_PER_IP) * (DATAGRAM_LEN as u64 + 28);
    // The responder's priming datagrams, one per punch target, outside a
    // spray budget (the initiator's count against its spray's).
    let priming = config.max_dials_per_upgrade as u64 * (SPRAY_PACKET_LEN as u64 + 28);
    config.max_dials_per_upgrade as u64 * per_dial + spray + birthday + priming
}

fn inner(victim: &str) {
    common::init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = Config::default();
    let bound = worst_case_bytes(&config);
    // The birthday attacks come last, within one BIRTHDAY_WINDOW (about
    // 45 s), all aimed at the first victim IP: the process's budget for
    // that IP carries over from one upgrade to the next, so together they
    // get exactly BIRTHDAY_PACKETS_PER_IP there, whatever they ask for.
    let mut birthday = (0, 0);
    for attack in [
        Attack::OnInitiator,
        Attack::SupersedingOnResponder,
        Attack::PacedOnResponder,
        Attack::PacedQuicOnResponder,
        Attack::BirthdayProbes { observed: true },
        Attack::BirthdayPriming,
        Attack::BirthdayProbes { observed: false },
    ] {
        let m = rt.block_on(hostile_upgrade(victim, attack));
        birthday.0 += m.birthday_sent;
        birthday.1 += m.birthday.packets;
        let counted = [m.tcp, m.spray, m.primed, m.quic, m.birthday];
        let total: u64 = counted.iter().map(|c| c.bytes).sum();
        let packets: u64 = counted.iter().map(|c| c.packets).sum();
        println!(
            "victim ({attack:?}): {packets} packets, {total} bytes in {:.1} s over {} attempts \
             (worst case from the budgets: {bound} bytes)",
            m.took.as_secs_f64(),
            m.attempts
        );
        assert!(total <= bound, "{total} bytes at the victim, bound {bound}");
    }
    let (asked, arrived) = birthday;
    println!(
        "birthday packets at {}: {arrived} of the {asked} asked for (BIRTHDAY_PACKETS_PER_IP {})",
        VICTIM_IPS[0], BIRTHDAY_PACKETS_PER_IP
    );
    assert!(
        asked > u64::from(BIRTHDAY_PACKETS_PER_IP),
        "the attacks ask for more than the budget"
    );
    assert_eq!(
        arrived,
        u64::from(BIRTHDAY_PACKETS_PER_IP),
        "the budget per IP holds exactly"
    );
}

#[test]
#[ignore = "needs root"]
fn a_hostile_peer_gets_at_most_the_named_budgets_out_of_us_at_a_silent_victim() {
    if let Ok(victim) = std::env::var(INNER_ENV) {
        inner(&victim);
        return;
    }
    let lab = Lab::create();
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("ip")
        .args(["netns", "exec", &lab.peer])
        .arg(exe)
        .args([
            "--exact",
            TEST_NAME,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_ENV, &lab.victim)
        .status()
        .expect("the inner run starts");
    assert!(status.success(), "the run inside the namespace failed");
}
