//! `dcutr libp2p relay|listen|dial` on loopback (127.0.0.1 only): three
//! processes of the real binary, `--json` lines and `--metrics` scraped
//! over HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Limit of each wait for a line: setup, or a whole campaign on loopback
/// (a run takes well under a second plus the 1 s linger).
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long each node keeps its metrics up after its result for our
/// scrape (it leaves as soon as we scraped).
const METRICS_HOLD_S: &str = "30";

/// A running `dcutr`, killed on drop, with its stdout as JSON lines.
struct Node {
    child: Child,
    lines: Receiver<Value>,
    seen: Vec<Value>,
}

impl Node {
    fn start(args: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dcutr"))
            .arg("libp2p")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dcutr");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Node {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line whose `event` is `event` (every line is kept).
    fn wait_for(&mut self, event: &str) -> Value {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no {event:?} line ({e}); saw {:?}", self.seen));
            self.seen.push(v.clone());
            if v["event"] == event {
                return v;
            }
        }
    }

    /// The exit code, waiting at most [`LINE_TIMEOUT`].
    fn exit_code(&mut self) -> i32 {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().expect("exited, not killed");
            }
            assert!(Instant::now() < deadline, "did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every line after the last one read, until stdout closes.
    fn rest(&mut self) -> Vec<Value> {
        let more: Vec<Value> = self.lines.iter().collect();
        self.seen.extend(more.iter().cloned());
        more
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /metrics` from the `url` a `metrics` line printed.
fn scrape(url: &str) -> String {
    let addr = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/metrics"))
        .expect("http://ADDR/metrics");
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The sum of the samples of `family` whose labels contain each of
/// `labels` (`None`: no such sample).
fn sum(body: &str, family: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(family)?;
            let (labels_part, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|w| labels_part.contains(w))
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .reduce(|a, b| a + b)
}

fn relay(listen: &str) -> (Node, String) {
    let mut relay = Node::start(&["relay", "--listen", listen, "--json"]);
    let addr = relay.wait_for("listening")["addr"]
        .as_str()
        .expect("addr")
        .to_owned();
    assert!(addr.contains("/p2p/12D3"), "the full address: {addr}");
    (relay, addr)
}

/// Relay, listener and dialer over `listen` (a loopback multiaddr with
/// port 0), `runs` upgrades, `extra` flags on both peers; returns the
/// result lines and metrics bodies of the dialer and the listener.
fn campaign(listen: &str, runs: u32, extra: &[&str]) -> [(Value, String, Vec<Value>); 2] {
    let (_relay, relay_addr) = relay(listen);
    let runs = runs.to_string();
    let common = [
        "--relay",
        &relay_addr,
        "--listen",
        listen,
        "--json",
        "--runs",
        &runs,
        "--metrics",
        "127.0.0.1:0",
        "--metrics-hold-s",
        METRICS_HOLD_S,
    ];
    let mut b_args = vec!["listen"];
    b_args.extend(common);
    b_args.extend(extra);
    let mut b = Node::start(&b_args);
    let b_metrics = b.wait_for("metrics")["url"].as_str().unwrap().to_owned();
    let reserved = b.wait_for("reserved");
    let b_id = reserved["peer_id"].as_str().unwrap().to_owned();
    let relayed = reserved["relayed_addr"].as_str().unwrap();
    assert!(
        relayed.starts_with(&relay_addr) && relayed.ends_with(&format!("/p2p-circuit/p2p/{b_id}")),
        "{relayed}"
    );
    let mut a_args = vec!["dial", "--peer", &b_id];
    a_args.extend(common);
    a_args.extend(extra);
    let mut a = Node::start(&a_args);
    let a_metrics = a.wait_for("metrics")["url"].as_str().unwrap().to_owned();
    let mut out = Vec::new();
    for (node, url) in [(&mut a, a_metrics), (&mut b, b_metrics)] {
        let result = node.wait_for("result");
        let body = scrape(&url);
        assert!(node.rest().is_empty(), "the result is the last line");
        assert_eq!(node.exit_code(), 0, "{result}");
        out.push((result, body, node.seen.clone()));
    }
    out.try_into().expect("two nodes")
}

fn assert_direct(result: &Value, runs: u64) {
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["direct"], true, "{result}");
    assert_eq!(result["ping"], true, "{result}");
    assert_eq!(result["runs"], runs, "{result}");
    assert_eq!(result["successes"], runs, "{result}");
    assert_eq!(result["success_rate"], 1.0, "{result}");
    let remote = result["remote"].as_str().expect("a remote");
    assert!(
        remote.starts_with("/ip4/127.0.0.1/") && !remote.contains("p2p-circuit"),
        "{remote}"
    );
    let p50 = result["time_to_direct_p50_ms"].as_f64().expect("p50");
    let p90 = result["time_to_direct_p90_ms"].as_f64().expect("p90");
    let max = result["time_to_direct_max_ms"].as_f64().expect("max");
    assert!(0.0 < p50 && p50 <= p90 && p90 <= max, "{result}");
}

#[test]
fn ours_upgrades_twice_over_tcp_on_loopback_with_json_and_metrics() {
    let [(a, a_body, a_lines), (b, b_body, _)] = campaign(
        "/ip4/127.0.0.1/tcp/0",
        2,
        &["--allow-loopback", "--no-unilateral"],
    );
    assert_direct(&a, 2);
    assert_direct(&b, 2);
    assert_eq!(
        (a["mode"].as_str(), a["dcutr"].as_str()),
        (Some("dial"), Some("ours"))
    );
    assert_eq!(a["dcutr_outcome"], "ok", "{a}");
    let run_lines: Vec<&Value> = a_lines.iter().filter(|v| v["event"] == "run").collect();
    assert_eq!(run_lines.len(), 2, "one line per run");
    assert!(run_lines.iter().all(|r| r["ok"] == true), "{run_lines:?}");
    let relayed = a_lines
        .iter()
        .filter(|v| v["event"] == "relayed-connection")
        .count();
    assert_eq!(relayed, 2, "a fresh relayed connection per run");
    // Both sides counted both upgrades as hole-punch successes (A is
    // go-libp2p's receiver, B the initiator), with two times to direct
    // each and no failure. (`--no-unilateral`: on loopback B's direct dial
    // would otherwise win before any attempt, and such an upgrade does not
    // count in libp2p_holepunch_outcomes_total.)
    for (body, side) in [(&a_body, "receiver"), (&b_body, "initiator")] {
        let side = format!("side=\"{side}\"");
        let success = [side.as_str(), "num_attempts=\"1\"", "outcome=\"success\""];
        let ok = sum(body, "libp2p_holepunch_outcomes_total", &success);
        assert_eq!(ok, Some(2.0), "{body}\n{a_lines:#?}");
        let ttd = sum(
            body,
            "libp2p_holepunch_time_to_direct_seconds_count",
            &[&side],
        );
        assert_eq!(ttd, Some(2.0), "{body}");
        let failed = sum(
            body,
            "libp2p_holepunch_outcomes_total",
            &[&side, "outcome=\"failed\""],
        );
        assert_eq!(failed, Some(0.0), "{body}");
        assert_eq!(
            sum(body, "libp2p_holepunch_failures_total", &[]),
            None,
            "{body}"
        );
        let unilateral = sum(body, "libp2p_holepunch_direct_dials_total", &[]);
        assert_eq!(unilateral.unwrap_or(0.0), 0.0, "no unilateral dial: {body}");
    }
}

#[test]
fn stock_upgrades_over_quic_on_loopback_and_records_no_holepunch_metrics() {
    let [(a, a_body, _), (b, b_body, _)] =
        campaign("/ip4/127.0.0.1/udp/0/quic-v1", 1, &["--stock"]);
    assert_direct(&a, 1);
    assert_direct(&b, 1);
    assert_eq!(a["dcutr"], "stock");
    assert!(a["remote"].as_str().unwrap().contains("/udp/"), "{a}");
    for body in [&a_body, &b_body] {
        assert!(!body.contains("libp2p_holepunch"), "{body}");
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
    }
}

#[test]
fn ours_on_loopback_without_the_flag_fails_fast_and_names_it() {
    let (_relay, relay_addr) = relay("/ip4/127.0.0.1/tcp/0");
    let listen = "/ip4/127.0.0.1/tcp/0";
    let mut b = Node::start(&[
        "listen",
        "--relay",
        &relay_addr,
        "--listen",
        listen,
        "--json",
    ]);
    let b_id = b.wait_for("reserved")["peer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut a = Node::start(&[
        "dial",
        "--relay",
        &relay_addr,
        "--peer",
        &b_id,
        "--listen",
        listen,
        "--json",
    ]);
    let result = a.wait_for("result");
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(result["dcutr_outcome"], "error", "{result}");
    let reason = result["reason"].as_str().unwrap();
    assert!(reason.contains("--allow-loopback"), "{reason}");
    assert!(
        result["t_ms"].as_f64().unwrap() < 10_000.0,
        "fails locally, not after the timeout: {result}"
    );
    assert_eq!(a.exit_code(), 1);
}

#[test]
fn a_dial_to_a_peer_without_a_reservation_fails_with_the_fix() {
    let (_relay, relay_addr) = relay("/ip4/127.0.0.1/tcp/0");
    let nobody = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    let mut a = Node::start(&[
        "dial",
        "--relay",
        &relay_addr,
        "--peer",
        nobody,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--json",
    ]);
    let result = a.wait_for("result");
    assert_eq!(result["ok"], false, "{result}");
    let reason = result["reason"].as_str().unwrap();
    assert!(
        reason.contains("the dial through the relay failed"),
        "{reason}"
    );
    assert!(reason.contains("is the listener running"), "{reason}");
    assert_eq!(a.exit_code(), 1);
}

#[test]
fn an_unreachable_relay_is_a_setup_error() {
    // A port nothing listens on: bind one and drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay = format!(
        "/ip4/127.0.0.1/tcp/{port}/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
    );
    let mut b = Node::start(&[
        "listen",
        "--relay",
        &relay,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--json",
    ]);
    let result = b.wait_for("result");
    assert_eq!(result["ok"], false);
    let reason = result["reason"].as_str().unwrap();
    assert!(
        reason.contains("reaching the relay") || reason.contains("reservation"),
        "{reason}"
    );
    assert_eq!(b.exit_code(), 2);
}

#[test]
fn an_observer_and_the_relay_both_observe_each_peer_and_the_nat_line_and_result_say_so() {
    let (_observer, observer_addr) = relay("/ip4/127.0.0.1/tcp/0");
    let [(a, _, a_lines), (b, _, b_lines)] = campaign(
        "/ip4/127.0.0.1/tcp/0",
        1,
        &["--allow-loopback", "--observer", &observer_addr],
    );
    assert_direct(&a, 1);
    assert_direct(&b, 1);
    for (result, lines) in [(&a, &a_lines), (&b, &b_lines)] {
        let observations = lines
            .iter()
            .filter(|l| l["event"] == "nat-observation")
            .count();
        assert_eq!(observations, 2, "the relay and the observer: {lines:?}");
        let nat = &result["nat"];
        let sockets = nat["sockets"].as_array().expect("sockets");
        assert_eq!(sockets.len(), 1, "{nat}");
        assert_eq!(sockets[0]["transport"], "tcp", "{nat}");
        assert_eq!(sockets[0]["observers"], 2, "{nat}");
        // Loopback: both observers share one IP and saw the same
        // address, which cannot tell independent from address-dependent.
        assert_eq!(sockets[0]["mapping"], "unknown", "{nat}");
        assert!(nat["declared"].is_null(), "{nat}");
        let line = lines
            .iter()
            .find(|l| l["event"] == "nat")
            .expect("a nat line");
        assert_eq!(&line["nat"], nat);
    }
}
