//! Codec and Sans-IO tests of the STUN client, on a fake clock.

use super::*;
use dcutr_core::nat::{Allocation, Filtering, Mapping};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A Binding success response recorded from coturn 4.6.1 (Debian 12),
/// `turnserver --stun-only --listening-ip 127.0.0.1 --listening-ip
/// 127.0.0.2 -p 34780`, to a request with transaction id 01 02 … 0c from
/// 127.0.0.1:54666: XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, RESPONSE-ORIGIN
/// 127.0.0.1:34780, OTHER-ADDRESS 127.0.0.2:34781, SOFTWARE.
const COTURN_RESPONSE: &str = "010100482112a4420102030405060708090a0b0c002000080001f4985e12a443\
000100080001d58a7f000001802b0008000187dc7f000001802c0008000187dd7f000002\
80220014436f7475726e2d342e362e312027476f72737427";

const RECORDED_ID: TransactionId = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

#[test]
fn a_recorded_coturn_response_parses() {
    let datagram = hex(COTURN_RESPONSE);
    assert_eq!(response_id(&datagram), Some(RECORDED_ID));
    let (id, response) = parse_response(&datagram).unwrap();
    assert_eq!(id, RECORDED_ID);
    assert_eq!(
        response,
        Response::Success(BindingSuccess {
            mapped: addr("127.0.0.1:54666"),
            other_address: Some(addr("127.0.0.2:34781")),
            response_origin: Some(addr("127.0.0.1:34780")),
        })
    );
}

#[test]
fn the_request_is_a_plain_binding_with_an_optional_change_request() {
    let plain = binding_request(RECORDED_ID, None);
    assert_eq!(
        plain,
        hex("000100002112a4420102030405060708090a0b0c"),
        "type, length 0, cookie, id"
    );
    let both = binding_request(RECORDED_ID, Some(ProbeChange::IpAndPort));
    assert_eq!(&both[..4], &hex("00010008")[..]);
    assert_eq!(&both[20..], &hex("0003000400000006")[..]);
    let port = binding_request(RECORDED_ID, Some(ProbeChange::Port));
    assert_eq!(&port[20..], &hex("0003000400000002")[..]);
}

#[test]
fn mapped_address_alone_is_accepted() {
    // The recorded response without its XOR-MAPPED-ADDRESS: an RFC 3489
    // server's answer.
    let mut datagram = hex(COTURN_RESPONSE);
    datagram.drain(20..32);
    let len = u16::from_be_bytes([datagram[2], datagram[3]]) - 12;
    datagram[2..4].copy_from_slice(&len.to_be_bytes());
    let (_, response) = parse_response(&datagram).unwrap();
    let Response::Success(ok) = response else {
        panic!("not a success: {response:?}")
    };
    assert_eq!(ok.mapped, addr("127.0.0.1:54666"));
}

#[test]
fn an_error_response_keeps_code_and_reason() {
    // 420 Unknown Attribute to a CHANGE-REQUEST.
    let reason = b"Unknown Attribute";
    let mut value = vec![0, 0, 4, 20];
    value.extend_from_slice(reason);
    while value.len() % 4 != 0 {
        value.push(0);
    }
    let mut datagram = hex("0111");
    datagram.extend_from_slice(&((4 + value.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(&hex("2112a442"));
    datagram.extend_from_slice(&RECORDED_ID);
    datagram.extend_from_slice(&hex("0009"));
    datagram.extend_from_slice(&(4 + reason.len() as u16).to_be_bytes());
    datagram.extend_from_slice(&value);
    let (id, response) = parse_response(&datagram).unwrap();
    assert_eq!(id, RECORDED_ID);
    assert_eq!(
        response,
        Response::Error {
            code: 420,
            reason: "Unknown Attribute".into()
        }
    );
}

#[test]
fn bad_datagrams_are_typed_errors() {
    assert_eq!(parse_response(b""), Err(ParseError::NotStun));
    assert_eq!(parse_response(&[0xff; 40]), Err(ParseError::NotStun));
    // A request is not a response.
    let request = binding_request(RECORDED_ID, None);
    assert_eq!(response_id(&request), None);
    assert_eq!(
        parse_response(&request),
        Err(ParseError::NotBindingResponse)
    );
    // Truncated: the header promises more than the datagram has.
    let datagram = hex(COTURN_RESPONSE);
    assert!(matches!(
        parse_response(&datagram[..datagram.len() - 4]),
        Err(ParseError::Malformed(_))
    ));
    // A success without a mapped address.
    let mut empty = hex(COTURN_RESPONSE);
    empty.truncate(20);
    empty[2..4].copy_from_slice(&[0, 0]);
    assert_eq!(parse_response(&empty), Err(ParseError::NoMappedAddress));
    // Every prefix and every single-byte corruption: an error or a parse,
    // never a panic.
    for n in 0..datagram.len() {
        let _ = parse_response(&datagram[..n]);
        for bit in [0x01, 0x80] {
            let mut bad = datagram.clone();
            bad[n] ^= bit;
            let _ = parse_response(&bad);
        }
    }
}

const SEED: [u8; 32] = [7; 32];

/// The answer a server at `from` gives to `request`, mapping us to
/// `mapped`, with OTHER-ADDRESS `other` (built with the codec's own
/// writer, as coturn would).
fn answer(request: &[u8], mapped: SocketAddr, other: Option<SocketAddr>) -> Vec<u8> {
    let request = Message::from_bytes(request).unwrap();
    let mut msg = Message::builder_success(&request, MessageWriteVec::new());
    msg.add_attribute(&XorMappedAddress::new(mapped, request.transaction_id()))
        .unwrap();
    if let Some(other) = other {
        let other = MappedSocketAddr::new(other);
        let raw = other.to_raw(OTHER_ADDRESS);
        msg.add_attribute(&raw).unwrap();
    }
    msg.finish()
}

fn change_of(request: &[u8]) -> Option<u8> {
    let msg = Message::from_bytes(request).unwrap();
    msg.raw_attribute(CHANGE_REQUEST).map(|raw| raw.value[3])
}

/// A fake network: one RFC 5780 server with two IPs and two ports, a NAT
/// in front of us described by `nat`, run on a fake clock. `nat(dest)`
/// gives our mapped address towards `dest`; `filter(src, contacted)` says
/// whether an answer from `src` gets through.
struct Net<M, F> {
    primary: SocketAddr,
    other: SocketAddr,
    nat: M,
    filter: F,
    sent: Vec<(Duration, SocketAddr, Option<u8>)>,
}

impl<M, F> Net<M, F>
where
    M: Fn(SocketAddr) -> SocketAddr,
    F: Fn(SocketAddr, &[SocketAddr]) -> bool,
{
    fn run(&mut self, local: SocketAddr, timing: Timing) -> DiscoveryReport {
        let primary = self.primary;
        self.run_with(local, &[primary], timing)
    }

    fn run_with(
        &mut self,
        local: SocketAddr,
        servers: &[SocketAddr],
        timing: Timing,
    ) -> DiscoveryReport {
        let start = Instant::now();
        let mut now = start;
        let mut d = Discovery::new(local, servers, timing, SEED, now).unwrap();
        let mut contacted: Vec<SocketAddr> = Vec::new();
        for _ in 0..1000 {
            while let Some(t) = d.poll_transmit(now) {
                let change = change_of(&t.payload);
                self.sent.push((now - start, t.to, change));
                contacted.push(t.to);
                let server_ips = [self.primary.ip(), self.other.ip()];
                let server_ports = [self.primary.port(), self.other.port()];
                if !server_ips.contains(&t.to.ip()) || !server_ports.contains(&t.to.port()) {
                    continue;
                }
                let (a1, a2) = (self.primary.ip(), self.other.ip());
                let (p1, p2) = (self.primary.port(), self.other.port());
                let change = change.unwrap_or(0);
                let ip = match (change & CHANGE_IP != 0, t.to.ip() == a1) {
                    (false, _) => t.to.ip(),
                    (true, true) => a2,
                    (true, false) => a1,
                };
                let port = match (change & CHANGE_PORT != 0, t.to.port() == p1) {
                    (false, _) => t.to.port(),
                    (true, true) => p2,
                    (true, false) => p1,
                };
                let from = SocketAddr::new(ip, port);
                if (self.filter)(from, &contacted) {
                    let reply = answer(&t.payload, (self.nat)(t.to), Some(self.other));
                    d.handle_datagram(from, &reply, now + Duration::from_millis(10));
                }
            }
            let Some(next) = d.poll_timeout() else {
                break;
            };
            now = next.max(now);
        }
        assert!(d.is_done(), "the discovery ended within 1000 steps");
        d.report()
    }
}

fn no_nat_net(
    local: SocketAddr,
) -> Net<impl Fn(SocketAddr) -> SocketAddr, impl Fn(SocketAddr, &[SocketAddr]) -> bool> {
    Net {
        primary: addr("192.0.2.1:3478"),
        other: addr("192.0.2.2:3479"),
        nat: move |_| local,
        filter: |_: SocketAddr, _: &[SocketAddr]| true,
        sent: Vec::new(),
    }
}

#[test]
fn without_a_nat_every_test_runs_and_the_behaviour_is_open() {
    let local = addr("198.51.100.7:40000");
    let mut net = no_nat_net(local);
    let report = net.run(local, Timing::default());
    let tests: Vec<Test> = report.tests.iter().map(|t| t.test).collect();
    assert_eq!(
        tests,
        [
            Test::Binding,
            Test::ChangeIpAndPort,
            Test::ChangePort,
            Test::OtherIp,
            Test::OtherAddress
        ]
    );
    // The filtering probes went out before anything went to the other IP.
    let first_other = net
        .sent
        .iter()
        .position(|(_, to, _)| to.ip() == net.other.ip())
        .unwrap();
    let last_probe = net.sent.iter().rposition(|(_, _, c)| c.is_some()).unwrap();
    assert!(last_probe < first_other, "{:?}", net.sent);
    assert!(report.no_nat());
    assert_eq!(report.answered(), 1);
    assert_eq!(report.mapped_addresses(), [local]);
    let b = &report.behaviour;
    assert_eq!(b.mapping, Mapping::EndpointIndependent);
    assert_eq!(b.allocation, Allocation::Preserving);
    assert_eq!(b.filtering, Filtering::EndpointIndependent);
    assert_eq!(b.evidence.observations.len(), 3);
    assert_eq!(b.evidence.probes.len(), 2);
}

#[test]
fn a_symmetric_nat_with_a_port_restricted_filter_is_seen_as_such() {
    let local = addr("10.0.0.2:40000");
    let public = |port| SocketAddr::new("203.0.113.9".parse().unwrap(), port);
    let mut net = Net {
        primary: addr("192.0.2.1:3478"),
        other: addr("192.0.2.2:3479"),
        // A new port for every destination, with no pattern.
        nat: move |dest: SocketAddr| {
            let port = match (dest.ip().to_string().as_str(), dest.port()) {
                ("192.0.2.1", _) => 51_234,
                (_, 3478) => 8_311,
                _ => 60_017,
            };
            public(port)
        },
        // Address-and-port-dependent filtering.
        filter: |from: SocketAddr, contacted: &[SocketAddr]| contacted.contains(&from),
        sent: Vec::new(),
    };
    let report = net.run(local, Timing::default());
    let b = &report.behaviour;
    assert_eq!(b.mapping, Mapping::EndpointDependent);
    assert_eq!(b.allocation, Allocation::Random);
    assert_eq!(b.filtering, Filtering::AddressAndPortDependent);
    assert!(!report.no_nat());
    assert_eq!(report.mapped_addresses().len(), 3);
}

#[test]
fn an_address_restricted_filter_passes_only_the_port_change() {
    let local = addr("10.0.0.2:40000");
    let mut net = Net {
        primary: addr("192.0.2.1:3478"),
        other: addr("192.0.2.2:3479"),
        nat: |_| addr("203.0.113.9:40000"),
        filter: |from: SocketAddr, contacted: &[SocketAddr]| {
            contacted.iter().any(|c| c.ip() == from.ip())
        },
        sent: Vec::new(),
    };
    let report = net.run(local, Timing::default());
    let b = &report.behaviour;
    assert_eq!(b.mapping, Mapping::EndpointIndependent);
    assert_eq!(b.allocation, Allocation::Preserving);
    assert_eq!(b.filtering, Filtering::AddressDependent);
}

#[test]
fn retransmissions_follow_the_bounded_backoff_then_give_up() {
    let local = addr("198.51.100.7:40000");
    let server = addr("192.0.2.1:3478");
    let timing = Timing::default();
    let start = Instant::now();
    let mut d = Discovery::new(local, &[server], timing, SEED, start).unwrap();
    let mut sends = Vec::new();
    let mut now = start;
    for _ in 0..100 {
        while let Some(t) = d.poll_transmit(now) {
            assert_eq!(t.to, server);
            sends.push(now - start);
        }
        let Some(next) = d.poll_timeout() else {
            break;
        };
        assert!(next > now, "a deadline in the future, no busy loop");
        now = next;
    }
    assert!(d.is_done());
    let ms = |n| Duration::from_millis(n);
    assert_eq!(sends, [ms(0), ms(500), ms(1500), ms(3500)]);
    assert_eq!(timing.transaction_timeout(INITIAL_RTO), ms(5500));
    let report = d.report();
    assert_eq!(report.elapsed, Some(ms(5500)));
    assert_eq!(report.tests.len(), 1, "no RFC 5780 tests without an answer");
    assert_eq!(
        report.tests[0].outcome,
        TestOutcome::TimedOut { after: ms(5500) }
    );
    assert_eq!(report.tests[0].requests, MAX_REQUESTS);
    assert_eq!(report.answered(), 0);
    assert_eq!(report.behaviour.mapping, Mapping::Unknown);
}

#[test]
fn timing_is_clamped_to_its_limits() {
    let wild = Timing {
        initial_rto: Duration::from_secs(3600),
        requests: 1000,
        final_wait_factor: 0,
    }
    .bounded();
    assert_eq!(wild.initial_rto, MAX_RTO);
    assert_eq!(wild.requests, MAX_REQUESTS_LIMIT);
    assert_eq!(wild.final_wait_factor, 1);
    // RFC 8489's own example: Rc 7, Rm 16, RTO 500 ms: 39.5 s.
    let rfc = Timing {
        initial_rto: INITIAL_RTO,
        requests: 7,
        final_wait_factor: 16,
    };
    assert_eq!(
        rfc.transaction_timeout(INITIAL_RTO),
        Duration::from_millis(39_500)
    );
}

#[test]
fn answers_to_unknown_transactions_and_garbage_are_ignored() {
    let local = addr("198.51.100.7:40000");
    let server = addr("192.0.2.1:3478");
    let now = Instant::now();
    let mut d = Discovery::new(local, &[server], Timing::default(), SEED, now).unwrap();
    let request = d.poll_transmit(now).unwrap();
    // The recorded answer has another transaction id.
    d.handle_datagram(server, &hex(COTURN_RESPONSE), now);
    d.handle_datagram(server, b"hello", now);
    assert_eq!(d.report().ignored_datagrams, 2);
    assert!(d.report().tests.is_empty());
    // The right id completes the test; a duplicate answer is ignored.
    let reply = answer(&request.payload, local, None);
    d.handle_datagram(server, &reply, now);
    d.handle_datagram(server, &reply, now);
    assert!(d.is_done(), "no OTHER-ADDRESS: nothing more to test");
    let report = d.report();
    assert_eq!(report.ignored_datagrams, 3);
    assert_eq!(report.answered(), 1);
    assert_eq!(report.behaviour.mapping, Mapping::Unknown, "one observer");
}

#[test]
fn transaction_ids_come_from_the_seed() {
    let local = addr("198.51.100.7:40000");
    let servers = [addr("192.0.2.1:3478"), addr("192.0.2.9:3478")];
    let now = Instant::now();
    let ids = |seed| {
        let mut d = Discovery::new(local, &servers, Timing::default(), seed, now).unwrap();
        let a = d.poll_transmit(now).unwrap().payload;
        let b = d.poll_transmit(now).unwrap().payload;
        assert_ne!(a[8..20], b[8..20], "two transactions, two ids");
        (a, b)
    };
    assert_eq!(ids(SEED), ids(SEED));
    assert_ne!(ids(SEED), ids([8; 32]));
}

#[test]
fn bad_server_lists_are_refused() {
    let v4 = addr("198.51.100.7:40000");
    let now = Instant::now();
    let new = |servers: &[SocketAddr]| {
        Discovery::new(v4, servers, Timing::default(), SEED, now).map(|_| ())
    };
    assert_eq!(new(&[]), Err(DiscoveryError::NoServers));
    let v6 = addr("[2001:db8::1]:3478");
    assert_eq!(new(&[v6]), Err(DiscoveryError::FamilyMismatch(v6)));
    let zero = addr("192.0.2.1:0");
    assert_eq!(new(&[zero]), Err(DiscoveryError::BadServer(zero)));
    let many: Vec<SocketAddr> = (1..=5)
        .map(|i| addr(&format!("192.0.2.{i}:3478")))
        .collect();
    assert_eq!(
        new(&many),
        Err(DiscoveryError::TooManyServers {
            given: 5,
            max: MAX_SERVERS
        })
    );
    // Duplicates count once.
    let same = [addr("192.0.2.1:3478"); 6];
    assert_eq!(new(&same), Ok(()));
}

#[test]
fn a_server_that_ignores_change_request_makes_no_probe() {
    let result = TestResult {
        server: addr("192.0.2.1:3478"),
        test: Test::ChangeIpAndPort,
        target: addr("192.0.2.1:3478"),
        requests: 1,
        outcome: TestOutcome::Answered {
            from: addr("192.0.2.1:3478"),
            response: BindingSuccess {
                mapped: addr("203.0.113.9:40000"),
                other_address: None,
                response_origin: None,
            },
            rtt: None,
        },
    };
    assert_eq!(result.filtering_probe(), None);
    let lost = TestResult {
        outcome: TestOutcome::TimedOut {
            after: Duration::from_secs(1),
        },
        ..result
    };
    assert_eq!(
        lost.filtering_probe(),
        Some(FilteringProbe {
            change: ProbeChange::IpAndPort,
            received: false
        })
    );
}

#[test]
fn tests_that_another_server_spoils_or_repeats_are_skipped() {
    let local = addr("198.51.100.7:40000");
    let mut net = no_nat_net(local);
    // The second server is the first one's other IP: after the Bindings,
    // we have sent to 192.0.2.2, so an answer from there proves nothing
    // about our filter, and a Binding to 192.0.2.2:3478 is already made.
    let servers = [addr("192.0.2.1:3478"), addr("192.0.2.2:3478")];
    let report = net.run_with(local, &servers, Timing::default());
    let ran: Vec<(SocketAddr, Test)> = report.tests.iter().map(|t| (t.server, t.test)).collect();
    assert!(
        !ran.contains(&(servers[0], Test::ChangeIpAndPort)),
        "{ran:?}"
    );
    assert!(ran.contains(&(servers[0], Test::ChangePort)), "{ran:?}");
    assert!(!ran.contains(&(servers[0], Test::OtherIp)), "{ran:?}");
    assert!(report.skipped.contains(&SkippedTest {
        server: servers[0],
        test: Test::ChangeIpAndPort,
        because: Skip::Contacted(servers[1]),
    }));
    assert!(report.skipped.contains(&SkippedTest {
        server: servers[0],
        test: Test::OtherIp,
        because: Skip::AlreadyObserved(servers[1]),
    }));
    // Every target observed once: nothing refused as a duplicate.
    let targets: Vec<SocketAddr> = report
        .tests
        .iter()
        .filter(|t| t.observation().is_some())
        .map(|t| t.target)
        .collect();
    let mut distinct = targets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(targets.len(), distinct.len(), "{targets:?}");
    assert_eq!(report.behaviour.evidence.refused, 0);
    assert_eq!(report.behaviour.mapping, Mapping::EndpointIndependent);
}

#[test]
fn a_sequential_nat_is_seen_through_the_rfc_5780_tests() {
    let local = addr("10.0.0.2:40000");
    let mut net = Net {
        primary: addr("192.0.2.1:3478"),
        other: addr("192.0.2.2:3479"),
        // Each new destination takes the next port: the primary first,
        // then the other IP, then the other address, in that order.
        nat: |dest: SocketAddr| {
            let port = match (dest.ip().to_string().as_str(), dest.port()) {
                ("192.0.2.1", _) => 20_000,
                (_, 3478) => 20_001,
                _ => 20_002,
            };
            SocketAddr::new("203.0.113.9".parse().unwrap(), port)
        },
        filter: |from: SocketAddr, contacted: &[SocketAddr]| contacted.contains(&from),
        sent: Vec::new(),
    };
    let report = net.run(local, Timing::default());
    let b = &report.behaviour;
    assert_eq!(b.mapping, Mapping::EndpointDependent);
    assert_eq!(b.allocation, Allocation::Sequential { delta: 1 });
    let order: Vec<SocketAddr> = b.evidence.observations.iter().map(|o| o.observer).collect();
    assert_eq!(
        order,
        [net.primary, addr("192.0.2.2:3478"), net.other],
        "observations in the order the mappings opened"
    );
}

proptest::proptest! {
    /// Any datagram, and any mutation of a real one: a typed result, no
    /// panic; a success always carries a usable mapped address.
    #[test]
    fn parsing_never_panics(
        noise in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        edits in proptest::collection::vec((0usize..96, proptest::num::u8::ANY), 0..8),
        cut in 0usize..96,
    ) {
        for datagram in [noise.clone(), {
            let mut d = hex(COTURN_RESPONSE);
            for (i, b) in &edits {
                let n = d.len();
                d[i % n] = *b;
            }
            d.truncate(cut.max(20));
            d
        }] {
            if let Ok((_, Response::Success(ok))) = parse_response(&datagram) {
                proptest::prop_assert_ne!(ok.mapped.port(), 0);
            }
            let _ = response_id(&datagram);
        }
    }
}

#[test]
fn other_ips_are_the_rfc_5780_servers_second_addresses() {
    let local = addr("198.51.100.7:40000");
    let mut net = no_nat_net(local);
    let report = net.run(local, Timing::default());
    assert_eq!(report.other_ips(), [addr("192.0.2.2:3478")]);
    // Given as a server already: not repeated.
    let mut net = no_nat_net(local);
    let servers = [addr("192.0.2.1:3478"), addr("192.0.2.2:3478")];
    let report = net.run_with(local, &servers, Timing::default());
    assert_eq!(report.other_ips(), []);
}
