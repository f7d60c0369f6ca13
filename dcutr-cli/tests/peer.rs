//! Two `dcutr peer` processes on loopback, as a user (or the NAT lab) runs
//! them: JSON lines, exit codes, roles, data over the direct path. Their
//! relay runs in the test, from dcutr-cli's library, with a delay that
//! `dcutr relay` does not offer (the NAT lab's lab-dcutr has it).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::stun::{Answer, FakeServer};

use dcutr_cli::relay::{self, RelayConfig, RelayEvent, RelayListener};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;

const TEST_LIMIT: Duration = Duration::from_secs(60);

struct Proc {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dcutr"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the dcutr binary runs");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Proc { child, lines }
    }

    /// The next JSON line.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(TEST_LIMIT, self.lines.next_line())
            .await
            .expect("output in time")
            .unwrap()
            .expect("stdout ended early");
        serde_json::from_str(&line).expect("every line is JSON")
    }

    /// The next JSON line whose event is `event`, showing every line on
    /// the way to `seen`.
    async fn wait_for_seeing(&mut self, event: &str, mut seen: impl FnMut(&Value)) -> Value {
        loop {
            let value = self.next().await;
            seen(&value);
            if value["event"] == event {
                return value;
            }
        }
    }
}

/// How the two peers find each other.
#[derive(Clone, Copy)]
enum Pairing<'a> {
    /// B makes a code and prints it first; A connects with it.
    Generated,
    /// B waits with this code, A connects with that one.
    Codes(&'a str, &'a str),
}

struct Run {
    ra: Value,
    rb: Value,
    ca: i32,
    cb: i32,
    /// Every line the relay printed.
    relay_lines: Vec<Value>,
    /// The code A connected with.
    code: Option<String>,
    /// Every line A and B printed, the results included.
    a_lines: Vec<Value>,
    b_lines: Vec<Value>,
}

async fn punch(transport_flag: &str) -> (Value, Value, i32, i32) {
    let run = pair(transport_flag, Pairing::Generated).await;
    (run.ra, run.rb, run.ca, run.cb)
}

/// One-way delay of the test's relay: the relayed RTT is at least twice it.
const RELAY_DELAY: Duration = Duration::from_millis(20);

/// A relay with [`RELAY_DELAY`] on a free loopback port, serving on this
/// test's runtime; its events as the JSON `dcutr relay --json` prints.
async fn relay() -> (String, mpsc::Receiver<RelayEvent>) {
    let listener = RelayListener::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, events) = mpsc::channel(1024);
    let config = RelayConfig {
        delay: RELAY_DELAY,
        events: Some(tx),
        ..RelayConfig::default()
    };
    tokio::spawn(relay::run(listener, config));
    (addr, events)
}

async fn pair(transport_flag: &str, pairing: Pairing<'_>) -> Run {
    pair_with(transport_flag, pairing, &[]).await
}

/// [`pair`], with `extra` arguments for both peers.
async fn pair_with(transport_flag: &str, pairing: Pairing<'_>, extra: &[&str]) -> Run {
    let (addr, mut relay_events) = relay().await;
    let common = [
        "peer",
        "--relay",
        &addr,
        "--bind",
        "127.0.0.1",
        transport_flag,
        "0",
        "--json",
        "--allow-loopback",
        "--no-unilateral",
    ];
    let common = [&common[..], extra].concat();
    let (b_args, mut code): (Vec<&str>, Option<String>) = match pairing {
        Pairing::Generated => (vec![], None),
        Pairing::Codes(b_code, _) => (vec!["--code", b_code], None),
    };
    let mut b = Proc::spawn(&[&common[..], &b_args].concat());
    let (mut a_lines, mut b_lines) = (Vec::new(), Vec::new());
    if let Pairing::Generated = pairing {
        let first = b.next().await;
        b_lines.push(first.clone());
        assert_eq!(
            first["event"], "code",
            "the code is the first event: {first}"
        );
        code = Some(first["code"].as_str().unwrap().to_owned());
    }
    b.wait_for_seeing("registered", |v| b_lines.push(v.clone()))
        .await;
    let a_code = match pairing {
        Pairing::Codes(_, a_code) => a_code.to_owned(),
        _ => code.clone().unwrap(),
    };
    let mut a = Proc::spawn(&[&common[..], &["--connect", &a_code]].concat());
    let mut relay_lines = Vec::new();
    loop {
        let event = tokio::time::timeout(TEST_LIMIT, relay_events.recv())
            .await
            .expect("the relay pairs in time")
            .expect("the relay runs");
        let value = serde_json::to_value(&event).unwrap();
        relay_lines.push(value);
        if matches!(event, RelayEvent::Paired { .. }) {
            break;
        }
    }
    let ra = a
        .wait_for_seeing("result", |v| a_lines.push(v.clone()))
        .await;
    let rb = b
        .wait_for_seeing("result", |v| b_lines.push(v.clone()))
        .await;
    let ca = a.child.wait().await.unwrap().code().unwrap();
    let cb = b.child.wait().await.unwrap().code().unwrap();
    Run {
        ra,
        rb,
        ca,
        cb,
        relay_lines,
        code: Some(a_code),
        a_lines,
        b_lines,
    }
}

fn assert_upgraded(ra: &Value, rb: &Value, ca: i32, cb: i32, transport: &str) {
    assert_eq!((ca, cb), (0, 0), "exit codes: {ra} {rb}");
    for (r, role) in [(ra, "client"), (rb, "server")] {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["transport"], transport);
        assert_eq!(r["role"], role, "A is the client, B the server: {r}");
        assert_eq!(r["attempts"], 1);
        assert_eq!(r["unilateral"], false);
        assert!(
            r["direct_rtt_ms"].as_f64().unwrap() > 0.0,
            "the direct path carried data"
        );
        assert!(r["remote"].is_string());
    }
    let rtt = rb["rtt_ms"].as_f64().expect("B measured the relayed RTT");
    let min = 2.0 * RELAY_DELAY.as_secs_f64() * 1e3;
    assert!(rtt >= min, "the relay adds {RELAY_DELAY:?} each way: {rtt}");
    let ttd = rb["time_to_direct_ms"].as_f64().unwrap();
    assert!(
        ttd >= 1.5 * min,
        "no direct connection before the protocol allows: {ttd}"
    );
}

#[tokio::test]
async fn two_peer_processes_upgrade_over_tcp() {
    let (ra, rb, ca, cb) = punch("--tcp").await;
    assert_upgraded(&ra, &rb, ca, cb, "tcp");
}

#[tokio::test]
async fn two_peer_processes_upgrade_over_quic() {
    let (ra, rb, ca, cb) = punch("--quic").await;
    assert_upgraded(&ra, &rb, ca, cb, "quic");
}

#[tokio::test]
async fn the_relay_pairs_by_a_name_that_does_not_reveal_the_code() {
    let run = pair("--tcp", Pairing::Generated).await;
    assert_upgraded(&run.ra, &run.rb, run.ca, run.cb, "tcp");
    let code = run.code.unwrap();
    let secret = &code[code.find('-').unwrap() + 1..];
    assert!(secret.len() >= 8, "{code}");
    let relay_saw = serde_json::to_string(&run.relay_lines).unwrap();
    assert!(relay_saw.contains("\"paired\""), "{relay_saw}");
    assert!(
        !relay_saw.contains(&code) && !relay_saw.contains(secret),
        "{relay_saw}"
    );
}

#[tokio::test]
async fn a_wrong_code_fails_pairing_on_both_sides_with_a_clear_error() {
    let run = pair("--tcp", Pairing::Codes("4242-abcd-efgh", "4242-abcd-efgj")).await;
    for (r, code) in [(&run.ra, run.ca), (&run.rb, run.cb)] {
        assert_eq!(r["ok"], false, "{r}");
        assert_ne!(code, 0);
        let reason = r["reason"].as_str().unwrap();
        assert!(reason.contains("did not prove the code"), "{reason}");
        assert!(r["remote"].is_null(), "no direct connection: {r}");
    }
}

/// The `nat_observed` line of a peer's output.
fn nat_line(lines: &[Value]) -> &Value {
    lines
        .iter()
        .find(|l| l["event"] == "nat_observed")
        .unwrap_or_else(|| panic!("a nat_observed line: {lines:?}"))
}

#[tokio::test]
async fn stun_from_the_punch_socket_sees_no_nat_on_loopback_and_the_upgrade_goes_on() {
    let (s1, s2) = (
        FakeServer::start("127.0.0.1", Answer::Truthfully),
        FakeServer::start("127.0.0.2", Answer::Truthfully),
    );
    let (s1_addr, s2_addr) = (s1.addr.to_string(), s2.addr.to_string());
    let extra = ["--stun", &s1_addr, "--stun", &s2_addr];
    let run = pair_with("--quic", Pairing::Generated, &extra).await;
    assert_upgraded(&run.ra, &run.rb, run.ca, run.cb, "quic");
    for lines in [&run.a_lines, &run.b_lines] {
        let nat = nat_line(lines);
        assert_eq!(nat["transport"], "quic", "{nat}");
        assert_eq!(nat["mapping"], "endpoint-independent", "{nat}");
        assert_eq!(nat["allocation"], "port-preserving", "{nat}");
        assert_eq!(nat["public"].as_array().unwrap().len(), 1, "{nat}");
    }
    // Each server was asked from both punch sockets, and only those.
    for server in [s1, s2] {
        let got = server.stop();
        let mut sources: Vec<_> = got.iter().map(|(_, from, _)| *from).collect();
        sources.dedup();
        assert_eq!(sources.len(), 2, "one socket per peer: {got:?}");
    }
}

#[tokio::test]
async fn two_nats_that_map_per_destination_fail_at_once_on_both_sides_and_say_why() {
    // Each server sees another port: both peers look endpoint-dependent
    // with ports that follow no pattern, which no punch can meet.
    let (s1, s2) = (
        FakeServer::start("127.0.0.1", Answer::PortOffset(1000)),
        FakeServer::start("127.0.0.2", Answer::PortOffset(3001)),
    );
    let (s1_addr, s2_addr) = (s1.addr.to_string(), s2.addr.to_string());
    let extra = ["--stun", &s1_addr, "--stun", &s2_addr];
    let run = pair_with("--quic", Pairing::Generated, &extra).await;
    for (lines, result, code) in [
        (&run.a_lines, &run.ra, run.ca),
        (&run.b_lines, &run.rb, run.cb),
    ] {
        let nat = nat_line(lines);
        assert_eq!(nat["mapping"], "endpoint-dependent", "{nat}");
        assert_eq!(result["ok"], false, "{result}");
        assert_eq!(code, 1, "a clean upgrade failure: {result}");
        assert_eq!(
            result["attempts"], 1,
            "no retry can change the NATs: {result}"
        );
        let reason = result["reason"].as_str().unwrap();
        assert!(
            reason.contains("endpoint-independent NAT"),
            "names the fix: {reason}"
        );
        assert_eq!(
            result["relay_usable"], true,
            "the relay still works: {result}"
        );
        let punches = lines.iter().filter(|l| l["event"] == "punch").count();
        assert_eq!(punches, 0, "nothing punched into nothing: {lines:?}");
    }
}

#[tokio::test]
async fn the_demo_upgrades_both_transports() {
    let output = tokio::time::timeout(
        TEST_LIMIT,
        Command::new(env!("CARGO_BIN_EXE_dcutr"))
            .args(["demo", "--rtt-ms", "40"])
            .stderr(Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    for transport in ["tcp", "quic"] {
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{transport} ")))
            .unwrap_or_else(|| panic!("summary row for {transport}: {text}"));
        assert!(row.contains(" yes "), "{row}");
    }
    assert_eq!(text.matches("direct path proven").count(), 4, "{text}");
}
