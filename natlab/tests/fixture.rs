//! `lab-dcutr` on loopback (no root): its relay and peers speak the `dcutr`
//! contract, and its runtime switch upgrades on smol and async-std, with
//! each other and with tokio (what `dcutr peer` runs).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// Bound on any single wait: far above what loopback needs, so a hang
/// fails the test instead of blocking the suite.
const STEP: Duration = Duration::from_secs(60);

/// A `lab-dcutr` process and its stdout, one JSON value per line.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<Value>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lab-dcutr"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("lab-dcutr runs");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).expect("every line is JSON");
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// The next line whose event is `event`.
    fn wait_for(&mut self, event: &str) -> Value {
        loop {
            let value = self.lines.recv_timeout(STEP).expect("output in time");
            if value["event"] == event {
                return value;
            }
        }
    }

    /// The exit code, once the process ended (its reader joined).
    fn exit(mut self) -> i32 {
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        self.reader.take().unwrap().join().unwrap();
        code
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lab-dcutr peer` on loopback through the relay at `relay`, then `extra`.
fn peer(relay: &str, transport: &str, extra: &[&str]) -> Proc {
    let flag = format!("--{transport}");
    let common = [
        "peer",
        "--relay",
        relay,
        "--bind",
        "127.0.0.1",
        &flag,
        "0",
        "--json",
        "--allow-loopback",
        "--no-unilateral",
    ];
    Proc::spawn(&[&common[..], extra].concat())
}

/// `lab-dcutr relay` on loopback with `extra`, and its `listening` line.
fn relay(extra: &[&str]) -> (Proc, Value) {
    let mut relay = Proc::spawn(&[&["relay", "--listen", "127.0.0.1:0", "--json"], extra].concat());
    let listening = relay.wait_for("listening");
    (relay, listening)
}

/// B on `b_rt`, A on `a_rt`, through a relay that adds `delay_ms` each
/// way: both results and exit codes.
fn pair(transport: &str, b_rt: &str, a_rt: &str, delay_ms: u64) -> [(Value, i32); 2] {
    let (_relay, listening) = relay(&["--delay-ms", &delay_ms.to_string()]);
    assert_eq!(listening["delay_ms"], delay_ms, "{listening}");
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let peer = |pairing: &str, runtime: &str| {
        peer(
            &addr,
            transport,
            &[pairing, "31-lab-fixture", "--runtime", runtime],
        )
    };
    let mut b = peer("--code", b_rt);
    b.wait_for("registered");
    let mut a = peer("--connect", a_rt);
    let (ra, rb) = (a.wait_for("result"), b.wait_for("result"));
    [(ra, a.exit()), (rb, b.exit())]
}

#[test]
fn peers_on_smol_and_async_std_upgrade_with_each_other_and_with_tokio() {
    for transport in ["tcp", "quic"] {
        for (b_rt, a_rt) in [
            ("smol", "smol"),
            ("async-std", "async-std"),
            ("tokio", "smol"),
            ("smol", "tokio"),
        ] {
            let [(ra, ca), (rb, cb)] = pair(transport, b_rt, a_rt, 20);
            let case = format!("{transport} B={b_rt} A={a_rt}: {ra} {rb}");
            assert_eq!((ca, cb), (0, 0), "{case}");
            for (r, role) in [(&ra, "client"), (&rb, "server")] {
                assert_eq!(r["ok"], true, "{case}");
                assert_eq!(r["transport"], transport, "{case}");
                assert_eq!(r["role"], role, "{case}");
            }
            let rtt = rb["rtt_ms"].as_f64().unwrap();
            assert!(rtt >= 40.0, "the relay adds 20 ms each way: {case}");
        }
    }
}

#[test]
fn the_relay_cut_ends_both_peers_cleanly_on_the_relay() {
    let (mut relay, listening) = relay(&["--cut-after-bytes", "0"]);
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let peer = |pairing: &str| peer(&addr, "tcp", &[pairing, "32-lab-cut"]);
    let mut b = peer("--code");
    b.wait_for("registered");
    let mut a = peer("--connect");
    let closed = relay.wait_for("splice_closed");
    assert_eq!(
        (&closed["to_initiator"], &closed["to_responder"]),
        (&Value::from(0), &Value::from(0)),
        "{closed}"
    );
    for p in [a.wait_for("result"), b.wait_for("result")] {
        assert_eq!(p["ok"], false, "{p}");
    }
    // The pairing itself needs the relayed stream: both end with a result
    // saying so, not with an error.
    assert_eq!((a.exit(), b.exit()), (1, 1));
}
