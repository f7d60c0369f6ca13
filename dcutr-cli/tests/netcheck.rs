//! `dcutr netcheck` and the STUN client against servers on loopback: fake
//! ones written here (an answering one and a silent one), and coturn's
//! `turnserver` from Debian when it is installed (`#[ignore]`d: run
//! `scripts/install-coturn.sh`, then `cargo test -p dcutr-cli --test
//! netcheck -- --ignored`).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::stun::{Answer, FakeServer, SERVER_LIFETIME, success};

use dcutr_cli::netcheck::{self, TokioUdp};
use dcutr_driver::stun::{self, DiscoverOptions, MAX_REQUESTS, Test, TestOutcome, Timing};
use serde_json::Value;

/// Slack allowed past a computed time bound for a loaded machine (two
/// cores shared by several builds).
const SLACK: Duration = Duration::from_secs(5);

#[tokio::test]
async fn two_servers_on_two_loopback_ips_see_no_nat() {
    let a = FakeServer::start("127.0.0.1", Answer::Truthfully);
    let b = FakeServer::start("127.0.0.2", Answer::Truthfully);
    let servers = [a.addr.to_string(), b.addr.to_string()];
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let report = netcheck::netcheck(&servers, Some(bind), false, DiscoverOptions::default())
        .await
        .unwrap();
    println!("{report}");
    assert_eq!(report.public, [report.local], "loopback has no NAT");
    assert!(report.no_nat);
    assert_eq!(report.mapping, "endpoint-independent");
    assert_eq!(report.allocation, "port-preserving");
    assert_eq!(report.filtering, "unknown", "no RFC 5780 server");
    assert_eq!(report.tests.len(), 2, "one Binding each, nothing more");
    for s in &report.servers {
        assert_eq!(s.mapped, Some(report.local), "{s:?}");
        assert_eq!(s.other_address, None);
    }
    assert_eq!(report.strategies[0].kind, "direct");
    assert_eq!(report.strategies[2].kind, "birthday");
    // Each server saw one request from the socket the report names.
    for server in [a, b] {
        let got = server.stop();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].1, report.local);
    }
}

#[tokio::test]
async fn two_servers_that_see_different_ports_tell_an_endpoint_dependent_mapping() {
    let a = FakeServer::start("127.0.0.1", Answer::PortOffset(7));
    let b = FakeServer::start("127.0.0.2", Answer::PortOffset(4099));
    let servers = [a.addr.to_string(), b.addr.to_string()];
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let report = netcheck::netcheck(&servers, Some(bind), false, DiscoverOptions::default())
        .await
        .unwrap();
    assert!(!report.no_nat, "{report}");
    assert_eq!(report.public.len(), 2, "{report}");
    assert_eq!(report.mapping, "endpoint-dependent", "{report}");
    let against_cone = &report.strategies[0];
    assert_eq!(against_cone.kind, "birthday", "{against_cone:?}");
}

#[tokio::test]
async fn a_std_socket_is_observed_through_a_clone() {
    let a = FakeServer::start("127.0.0.1", Answer::Truthfully);
    let socket = dcutr_driver::net::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let local = socket.local_addr().unwrap();
    let report = netcheck::discover_std(&socket, local, &[a.addr], DiscoverOptions::default())
        .await
        .unwrap();
    assert_eq!(report.mapped_addresses(), [local]);
    // The socket itself is still ours, open and usable.
    socket.send_to(b"still here", a.addr).unwrap();
    let got = a.stop();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1].2, b"still here");
}

#[tokio::test]
async fn a_silent_server_gets_the_bounded_retransmissions_then_a_timeout() {
    let silent = FakeServer::start("127.0.0.1", Answer::Silent);
    let timing = Timing {
        initial_rto: Duration::from_millis(50),
        ..Timing::default()
    };
    let bound = timing.transaction_timeout(timing.initial_rto);
    assert_eq!(bound, Duration::from_millis(550));
    let socket = TokioUdp(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let local = socket.0.local_addr().unwrap();
    let options = DiscoverOptions {
        timing,
        seed: Some([3; 32]),
    };
    let started = Instant::now();
    let report = stun::discover(
        &socket,
        &dcutr_tokio::TokioRuntime,
        local,
        &[silent.addr],
        options,
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(took >= bound, "gave up after {took:?}, before {bound:?}");
    assert!(took < bound + SLACK, "gave up after {took:?}");
    assert_eq!(report.answered(), 0);
    assert_eq!(report.tests.len(), 1);
    let t = &report.tests[0];
    assert_eq!(t.test, Test::Binding);
    assert_eq!(t.requests, MAX_REQUESTS);
    assert!(matches!(t.outcome, TestOutcome::TimedOut { .. }), "{t:?}");
    // The server got exactly the requests, one transaction, with the
    // backoff between them (timers never fire early: lower bounds hold).
    let got = silent.stop();
    assert_eq!(got.len(), MAX_REQUESTS as usize, "{got:?}");
    for (_, from, datagram) in &got {
        assert_eq!(*from, local);
        assert_eq!(datagram, &got[0].2, "retransmissions repeat the request");
    }
    // The receiving thread timestamps on its own clock, and a loaded
    // machine may wake it late for one datagram: check the whole span
    // (rto + 2 rto + 4 rto) with a margin, and that the last gap is the
    // longest. The exact schedule is pinned on a fake clock in the
    // driver's unit tests.
    let span = got[got.len() - 1].0 - got[0].0;
    let backoff = timing.initial_rto * 7;
    let margin = Duration::from_millis(40);
    assert!(span + margin >= backoff, "span {span:?} < {backoff:?}");
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps[2] + margin >= timing.initial_rto * 4,
        "last gap too short: {gaps:?}"
    );
}

#[test]
fn netcheck_names_the_fix_when_no_server_answers() {
    let silent = FakeServer::start("127.0.0.1", Answer::Silent);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_dcutr"))
        .args(["netcheck", "--stun", &silent.addr.to_string()])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no STUN server answered within 5.5 s"),
        "{stderr}"
    );
    assert!(stderr.contains("firewall"), "{stderr}");
    assert!(stderr.contains(&silent.addr.to_string()), "{stderr}");
    let bound = Timing::default().transaction_timeout(stun::INITIAL_RTO);
    assert!(took < bound + SLACK, "took {took:?}");
    assert!(silent.stop().len() == MAX_REQUESTS as usize);
}

#[test]
fn netcheck_refuses_bad_arguments() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dcutr"))
            .arg("netcheck")
            .args(args)
            .output()
            .unwrap()
    };
    let none = run(&[]);
    assert_eq!(none.status.code(), Some(2));
    let many = run(&[
        "--stun",
        "127.0.0.1:1",
        "--stun",
        "127.0.0.1:2",
        "--stun",
        "127.0.0.1:3",
        "--stun",
        "127.0.0.1:4",
        "--stun",
        "127.0.0.1:5",
    ]);
    assert_eq!(many.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&many.stderr);
    assert!(stderr.contains("at most 4"), "{stderr}");
}

/// How a fake TCP STUN server behaves.
#[derive(Clone, Copy)]
enum TcpMode {
    /// Answers the Binding.
    Answer,
    /// Reads and never answers.
    Silent,
    /// Answers with a header that announces 65 535 bytes.
    Huge,
}

/// A fake STUN server over TCP on `ip`, one connection at a time, on its
/// own thread; ends after `SERVER_LIFETIME` or `connections` connections.
fn tcp_server(ip: &str, mode: TcpMode, connections: usize) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let started = Instant::now();
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(SERVER_LIFETIME));
            let Ok(from) = stream.peer_addr() else {
                continue;
            };
            let mut header = [0u8; 20];
            if stream.read_exact(&mut header).is_err() {
                continue;
            }
            match mode {
                TcpMode::Answer => {
                    let _ = stream.write_all(&success(&header, from));
                }
                TcpMode::Silent => {
                    let mut rest = [0u8; 1];
                    let _ = stream.read(&mut rest);
                }
                TcpMode::Huge => {
                    let mut answer = success(&header, from);
                    answer[2..4].copy_from_slice(&[0xff, 0xff]);
                    let _ = stream.write_all(&answer);
                }
            }
            if started.elapsed() > SERVER_LIFETIME {
                break;
            }
        }
    });
    addr
}

#[tokio::test]
async fn tcp_observations_leave_from_one_port_and_see_no_nat() {
    let a = tcp_server("127.0.0.1", TcpMode::Answer, 1);
    let b = tcp_server("127.0.0.2", TcpMode::Answer, 1);
    let listener = dcutr_driver::net::reuse_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let local = listener.local_addr().unwrap();
    let report = stun::observe_tcp(
        &dcutr_tokio::TokioRuntime,
        local,
        local,
        &[a],
        &[b],
        Some([5; 32]),
    )
    .await
    .unwrap();
    for r in &report.results {
        let (mapped, _) = r.outcome.as_ref().unwrap();
        assert_eq!(*mapped, local, "both connections left from the punch port");
    }
    assert_eq!(report.results.len(), 2);
    assert!(!report.results[0].other_address && report.results[1].other_address);
    assert_eq!(
        report.behaviour.mapping,
        dcutr_core::nat::Mapping::EndpointIndependent
    );
    assert_eq!(
        report.behaviour.allocation,
        dcutr_core::nat::Allocation::Preserving
    );
}

#[tokio::test]
async fn tcp_servers_that_stall_or_overflow_are_bounded() {
    let silent = tcp_server("127.0.0.1", TcpMode::Silent, 1);
    let huge = tcp_server("127.0.0.1", TcpMode::Huge, 1);
    let listener = dcutr_driver::net::reuse_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let local = listener.local_addr().unwrap();
    let started = Instant::now();
    let report = stun::observe_tcp(
        &dcutr_tokio::TokioRuntime,
        local,
        local,
        &[silent, huge],
        &[],
        Some([5; 32]),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(
        took >= stun::TCP_TIMEOUT && took < stun::TCP_TIMEOUT + SLACK,
        "took {took:?}"
    );
    assert!(
        matches!(
            report.results[0].outcome,
            Err(stun::TcpBindingError::TimedOut)
        ),
        "{:?}",
        report.results[0]
    );
    assert!(
        matches!(
            report.results[1].outcome,
            Err(stun::TcpBindingError::TooLong(65_555))
        ),
        "{:?}",
        report.results[1]
    );
    assert_eq!(report.behaviour.mapping, dcutr_core::nat::Mapping::Unknown);
}

/// `turnserver` on `PATH`, if installed.
fn turnserver() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("turnserver"))
        .find(|p| p.is_file())
}

/// Most attempts at finding free ports for coturn.
const COTURN_PORT_TRIES: usize = 10;

/// How long coturn may take to answer its first Binding.
const COTURN_START: Duration = Duration::from_secs(10);

/// coturn as a plain STUN server (UDP with RFC 5780, and TCP) on
/// 127.0.0.1 and 127.0.0.2, ports `port` and `port + 1`; killed on drop.
struct Coturn {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port `p` with `p` and `p + 1` free for UDP on both loopback IPs.
fn free_port_pair() -> Option<u16> {
    let first = UdpSocket::bind("127.0.0.1:0").ok()?;
    let p = first.local_addr().ok()?.port();
    let next = p.checked_add(1)?;
    let _held = [
        UdpSocket::bind(("127.0.0.1", next)).ok()?,
        UdpSocket::bind(("127.0.0.2", p)).ok()?,
        UdpSocket::bind(("127.0.0.2", next)).ok()?,
    ];
    Some(p)
}

/// Whether a STUN server answers a Binding at `to` within `wait`.
fn answers(to: SocketAddr, wait: Duration) -> bool {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(wait));
    let request = stun::binding_request([9; 12], None);
    if socket.send_to(&request, to).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    matches!(socket.recv_from(&mut buf), Ok((n, _)) if stun::parse_response(&buf[..n]).is_ok())
}

impl Coturn {
    fn start(binary: &PathBuf) -> Coturn {
        for attempt in 0..COTURN_PORT_TRIES {
            let Some(port) = free_port_pair() else {
                continue;
            };
            let dir = std::env::temp_dir().join(format!(
                "dcutr-netcheck-coturn-{}-{attempt}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
            let child = Command::new(binary)
                .args(["-n", "--stun-only", "--no-auth", "--no-cli"])
                .args(["--no-tls", "--no-dtls"])
                .args(["--listening-ip", "127.0.0.1", "--listening-ip", "127.0.0.2"])
                .args(["--relay-ip", "127.0.0.1"])
                .args(["-p", &port.to_string()])
                .args(["--alt-listening-port", &(port + 1).to_string()])
                .args([
                    "--log-file",
                    &file("turn.log"),
                    "--simple-log",
                    "--no-stdout-log",
                ])
                .args(["--pidfile", &file("turn.pid"), "--db", &file("turndb")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("turnserver starts");
            let mut coturn = Coturn { child, port, dir };
            let deadline = Instant::now() + COTURN_START;
            let primary = SocketAddr::from(([127, 0, 0, 1], port));
            let other = SocketAddr::from(([127, 0, 0, 2], port + 1));
            while Instant::now() < deadline {
                if let Ok(Some(status)) = coturn.child.try_wait() {
                    eprintln!("turnserver exited with {status} on port {port}; trying others");
                    break;
                }
                let wait = Duration::from_millis(200);
                if answers(primary, wait) && answers(other, wait) {
                    return coturn;
                }
            }
            let log = std::fs::read_to_string(coturn.dir.join("turn.log")).unwrap_or_default();
            eprintln!("turnserver on port {port} not ready; log:\n{log}");
        }
        panic!("turnserver did not start in {COTURN_PORT_TRIES} tries");
    }
}

#[test]
#[ignore = "needs coturn"]
fn coturn_on_loopback_sees_no_nat_and_open_filtering() {
    let Some(binary) = turnserver() else {
        println!(
            "skipped: turnserver (Debian package coturn) is not installed; \
             run scripts/install-coturn.sh as root"
        );
        return;
    };
    let coturn = Coturn::start(&binary);
    let server = format!("127.0.0.1:{}", coturn.port);
    let human = Command::new(env!("CARGO_BIN_EXE_dcutr"))
        .args(["netcheck", "--stun", &server, "--bind", "127.0.0.1:0"])
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&human.stdout));
    assert!(
        human.status.success(),
        "{}",
        String::from_utf8_lossy(&human.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_dcutr"))
        .args(["netcheck", "--stun", &server, "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object: {stdout}");
    let report: Value = serde_json::from_str(lines[0]).unwrap();
    println!("{report:#}");
    assert_eq!(report["event"], "netcheck");
    // Bound to any address: the report names the route's IP, 127.0.0.1.
    let local = report["local"].as_str().unwrap();
    assert!(local.starts_with("127.0.0.1:"), "{local}");
    assert_eq!(report["public"], serde_json::json!([local]), "no NAT");
    assert_eq!(report["no_nat"], true);
    assert_eq!(report["mapping"], "endpoint-independent");
    assert_eq!(report["allocation"], "port-preserving");
    assert_eq!(report["filtering"], "endpoint-independent");
    let other = format!("127.0.0.2:{}", coturn.port + 1);
    assert_eq!(report["servers"][0]["other_address"], other.as_str());
    let tests = report["tests"].as_array().unwrap();
    let names: Vec<&str> = tests.iter().map(|t| t["test"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "binding",
            "change-ip-and-port",
            "change-port",
            "other-ip",
            "other-address"
        ]
    );
    for t in tests {
        assert_eq!(t["result"], "answered", "{t}");
        assert_eq!(t["mapped"], local, "{t}");
    }
    assert_eq!(
        tests[1]["from"],
        other.as_str(),
        "answer from the other IP and port"
    );
    assert_eq!(tests[1]["filtering_received"], true);
    assert_eq!(
        tests[2]["from"],
        format!("127.0.0.1:{}", coturn.port + 1).as_str(),
        "answer from the other port"
    );
    assert_eq!(tests[2]["filtering_received"], true);
    assert_eq!(report["strategies"][0]["kind"], "direct");
    assert_eq!(report["tcp"], Value::Null, "no TCP without --tcp");

    // TCP, to both of coturn's IPs (the second from OTHER-ADDRESS), from
    // one port.
    let out = Command::new(env!("CARGO_BIN_EXE_dcutr"))
        .args(["netcheck", "--stun", &server, "--tcp", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tcp = &report["tcp"];
    println!("{tcp:#}");
    let local = tcp["local"].as_str().unwrap();
    assert!(local.starts_with("127.0.0.1:"), "{local}");
    assert_eq!(tcp["public"], serde_json::json!([local]), "no NAT");
    assert_eq!(tcp["mapping"], "endpoint-independent");
    assert_eq!(tcp["allocation"], "port-preserving");
    let servers = tcp["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{tcp}");
    let other_ip = format!("127.0.0.2:{}", coturn.port);
    assert_eq!(servers[1]["addr"], other_ip.as_str());
    for s in servers {
        assert_eq!(s["mapped"], local, "{s}");
    }
}
