//! `dcutr relay` and two `dcutr peer` processes on loopback, as a user (or
//! the NAT lab) runs them: JSON lines, exit codes, roles, data over the
//! direct path.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

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

    /// The next JSON line whose event is `event`.
    async fn wait_for(&mut self, event: &str) -> Value {
        loop {
            let line = tokio::time::timeout(TEST_LIMIT, self.lines.next_line())
                .await
                .expect("output in time")
                .unwrap()
                .unwrap_or_else(|| panic!("stdout ended before {event}"));
            let value: Value = serde_json::from_str(&line).expect("every line is JSON");
            if value["event"] == event {
                return value;
            }
        }
    }
}

async fn punch(transport_flag: &str) -> (Value, Value, i32, i32) {
    punch_on(transport_flag, "tokio", "tokio").await
}

/// B on `b_rt` and A on `a_rt` (tokio, smol, async-std).
async fn punch_on(transport_flag: &str, b_rt: &str, a_rt: &str) -> (Value, Value, i32, i32) {
    let mut relay = Proc::spawn(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--json",
        "--delay-ms",
        "20",
    ]);
    let listening = relay.wait_for("listening").await;
    let addr = listening["addr"].as_str().unwrap().to_owned();
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
    let mut b = Proc::spawn(&[&common[..], &["--name", "b", "--runtime", b_rt]].concat());
    b.wait_for("registered").await;
    let mut a = Proc::spawn(
        &[
            &common[..],
            &["--name", "a", "--connect", "b", "--runtime", a_rt],
        ]
        .concat(),
    );
    let ra = a.wait_for("result").await;
    let rb = b.wait_for("result").await;
    let ca = a.child.wait().await.unwrap().code().unwrap();
    let cb = b.child.wait().await.unwrap().code().unwrap();
    (ra, rb, ca, cb)
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
    assert!(rtt >= 40.0, "the relay adds 20 ms each way: {rtt}");
    let ttd = rb["time_to_direct_ms"].as_f64().unwrap();
    assert!(
        ttd >= 1.5 * 40.0,
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
async fn peers_on_smol_and_async_std_upgrade_with_each_other_and_with_tokio() {
    for (transport, flag) in [("tcp", "--tcp"), ("quic", "--quic")] {
        for (b_rt, a_rt) in [
            ("smol", "smol"),
            ("async-std", "async-std"),
            ("tokio", "smol"),
            ("smol", "tokio"),
        ] {
            let (ra, rb, ca, cb) = punch_on(flag, b_rt, a_rt).await;
            assert_upgraded(&ra, &rb, ca, cb, transport);
        }
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
