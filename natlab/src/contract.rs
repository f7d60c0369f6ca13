//! The `dcutr` CLI contract as `matrix` and `broken` read it. They run
//! `lab-dcutr` (natlab/src/bin/lab-dcutr.rs: dcutr-cli's own relay and
//! peer, plus the lab's relay delay, relay cut and runtime switch), or any
//! program given with `--dcutr` that takes the same arguments. Its JSON
//! lines are read as [`crate::campaign::PeerRun`], the last one the
//! `result`:
//!
//! ```text
//! {"event":"result","ok":bool,"transport":"tcp"|"quic","role":"client"|"server",
//!  "remote":"ip:port"|null,"attempts":n,"unilateral":bool,"rtt_ms":float|null,
//!  "time_to_direct_ms":float|null,"direct_rtt_ms":float|null,
//!  "relay_usable":bool,"reason":string|null}
//! ```
//! Exit code 0 = upgraded, 1 = upgrade failed cleanly, anything else = error.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::campaign::{self, PeerRun, Transport};
use crate::proc::Proc;
use crate::topo::{Lab, RELAY_IP};

/// Event the relay prints once it accepts connections.
pub const RELAY_LISTENING_EVENT: &str = "listening";

/// Event peer B prints once its reservation at the relay is in place; A is
/// started after it (or after a timeout).
pub const PEER_REGISTERED_EVENT: &str = "registered";

/// The final `result` object of a `dcutr peer`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CliResult {
    /// Whether a direct connection replaced the relayed one.
    pub ok: bool,
    pub transport: String,
    /// `client` or `server` on the direct connection.
    pub role: String,
    /// The direct connection's remote address.
    pub remote: Option<String>,
    /// Hole-punch attempts made (0 after a unilateral upgrade).
    pub attempts: u32,
    /// Whether the direct connection came from the unilateral direct dial.
    pub unilateral: bool,
    /// Relayed RTT measured by the protocol (R).
    pub rtt_ms: Option<f64>,
    /// From B's Connect leaving to the direct connection being up.
    pub time_to_direct_ms: Option<f64>,
    /// RTT on the direct connection (D).
    pub direct_rtt_ms: Option<f64>,
    /// Whether the relayed connection still works after the outcome.
    pub relay_usable: bool,
    pub reason: Option<String>,
}

impl campaign::PeerResult for CliResult {
    fn ok(&self) -> bool {
        self.ok
    }

    fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !matches!(self.transport.as_str(), "tcp" | "quic") {
            v.push(format!(
                "result transport {:?} is neither tcp nor quic",
                self.transport
            ));
        }
        if !matches!(self.role.as_str(), "client" | "server") {
            v.push(format!(
                "result role {:?} is neither client nor server",
                self.role
            ));
        }
        if self.ok && self.remote.is_none() {
            v.push("ok result without a remote address".into());
        }
        if !self.ok && self.reason.as_deref().is_none_or(str::is_empty) {
            v.push("failed result without a reason".into());
        }
        v
    }
}

/// A `dcutr peer`'s run.
pub type CliRun = PeerRun<CliResult>;

/// Test fixtures: a result and a run.
#[cfg(test)]
pub mod fixture {
    use super::*;

    /// A TCP result in `role`: an upgrade (R 100 ms, D 10 ms, 200 ms to
    /// direct) or, not `ok`, a failure for "no direct path".
    pub fn result(ok: bool, role: &str, attempts: u32) -> CliResult {
        CliResult {
            ok,
            transport: "tcp".into(),
            role: role.into(),
            remote: ok.then(|| "203.0.113.12:5000".into()),
            attempts,
            unilateral: false,
            rtt_ms: Some(100.0),
            time_to_direct_ms: ok.then_some(200.0),
            direct_rtt_ms: ok.then_some(10.0),
            relay_usable: true,
            reason: (!ok).then(|| "no direct path".into()),
        }
    }

    /// A run that exited `exit` after `events` and the result `r`.
    pub fn run(exit: i32, events: &[&str], r: CliResult) -> CliRun {
        let mut events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
        events.push("result".into());
        PeerRun {
            exit: Some(exit),
            events,
            result: Some(r),
            nat: None,
            problems: vec![],
        }
    }
}

/// The CLI the lab drives: `--dcutr`, else `lab-dcutr` next to natlab,
/// else on PATH.
pub fn locate_dcutr(explicit: Option<&Path>) -> Result<PathBuf> {
    campaign::locate(
        explicit,
        "",
        "lab-dcutr",
        "build it (cargo build -p dcutr-natlab --bins) or pass --dcutr PATH",
    )
}

/// The pairing code of every case: B waits with it, A connects with it.
/// Each case has a relay of its own, so one fixed code never collides.
pub const CASE_CODE: &str = "7-natlab-lab";

/// One of the two peers of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// DCUtR's A: connects with the code (started second).
    A,
    /// DCUtR's B: waits with the code (started first).
    B,
}

/// `relay --listen <relay> --json`, then `extra`.
pub fn relay_args(extra: &[&str]) -> Vec<String> {
    let listen = format!("{RELAY_IP}:{}", campaign::RELAY_PORT);
    let mut v = campaign::args(&["relay", "--listen", &listen, "--json"]);
    v.extend(campaign::args(extra));
    v
}

/// `peer --relay .. --code|--connect CODE --tcp|--quic 5000 --json`, then
/// `extra`.
pub fn peer_args(peer: Peer, transport: Transport, extra: &[&str]) -> Vec<String> {
    let relay = format!("{RELAY_IP}:{}", campaign::RELAY_PORT);
    let pairing = match peer {
        Peer::A => "--connect",
        Peer::B => "--code",
    };
    let mut v = campaign::args(&["peer", "--relay", &relay, pairing, CASE_CODE]);
    let port = campaign::PEER_PORT.to_string();
    v.extend(campaign::args(&[
        &format!("--{transport}"),
        &port,
        "--json",
    ]));
    v.extend(campaign::args(extra));
    v
}

/// Starts a case's relay (`relay_args(extra)`) in `lab` as `procs[0]` and
/// waits for its `listening` line; the error is the run's problem.
pub fn start_relay(
    lab: &Lab,
    procs: &mut Vec<Proc>,
    dcutr: &Path,
    extra: &[&str],
) -> Result<(), String> {
    let ready = (
        RELAY_LISTENING_EVENT,
        Instant::now() + campaign::RELAY_READY_TIMEOUT,
    );
    let args = relay_args(extra);
    campaign::start(lab, procs, ("relay", &lab.relay_ns()), dcutr, &args, ready)
        .map(drop)
        .map_err(|e| format!("relay: {e:#}"))
}

/// How [`start_peers`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// B and A run (`procs[1]`, `procs[2]`).
    Both,
    /// B exited without registering; A, which could only wait for it, was
    /// not started.
    BGone,
    /// B or A could not be started.
    Failed,
}

/// Starts B (`procs[1]`, on site 2) and, once it printed `registered` or
/// `b_ready_by` passed, A (`procs[2]`, on site 1), both with
/// `peer_args(.., extra)`. What went wrong goes to `problems`.
pub fn start_peers(
    lab: &Lab,
    procs: &mut Vec<Proc>,
    dcutr: &Path,
    (transport, extra): (Transport, &[&str]),
    b_ready_by: Instant,
    problems: &mut Vec<String>,
) -> Started {
    let b = peer_args(Peer::B, transport, extra);
    let ready = (PEER_REGISTERED_EVENT, b_ready_by);
    if let Err(e) = campaign::start(lab, procs, ("peer B", &lab.host_ns(2)), dcutr, &b, ready) {
        if procs.len() < 2 {
            problems.push(format!("peer B: {e:#}"));
            return Started::Failed;
        }
        if matches!(procs[1].try_wait(), Ok(Some(_))) {
            problems.push(format!("B: {e:#} (A not started)"));
            return Started::BGone;
        }
        // Not fatal: B's result will tell. A starts anyway.
        problems.push(format!("B: {e:#} (started A anyway)"));
    }
    let a = peer_args(Peer::A, transport, extra);
    match lab.spawn("peer A", &lab.host_ns(1), &dcutr.to_string_lossy(), &a) {
        Ok(p) => {
            procs.push(p);
            Started::Both
        }
        Err(e) => {
            problems.push(format!("peer A: {e:#}"));
            Started::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"event":"result","ok":true,"transport":"tcp","role":"client","remote":"203.0.113.12:5000","attempts":1,"unilateral":false,"rtt_ms":101.5,"time_to_direct_ms":160.2,"direct_rtt_ms":0.3,"relay_usable":true,"reason":null}"#;
    const FAILED: &str = r#"{"event":"result","ok":false,"transport":"quic","role":"server","remote":null,"attempts":3,"unilateral":false,"rtt_ms":100.0,"time_to_direct_ms":null,"direct_rtt_ms":null,"relay_usable":true,"reason":"all attempts failed","extra":1}"#;

    fn parse(line: &str) -> CliRun {
        let mut run = CliRun::parse(Some(0), &[line.to_owned()]);
        run.problems = run.violations("A");
        run
    }

    #[test]
    fn results_parse_and_unknown_fields_are_ignored() {
        let ok = parse(OK);
        assert!(ok.problems.is_empty(), "{:?}", ok.problems);
        assert_eq!(parse(FAILED).problems, ["A: exit 0 but result ok=false"]);
        let r = ok.result.unwrap();
        assert_eq!(
            (r.rtt_ms, r.remote.as_deref()),
            (Some(101.5), Some("203.0.113.12:5000"))
        );
        let failed = CliRun::parse(Some(1), &[FAILED.to_owned()]);
        assert!(failed.violations("B").is_empty(), "{:?}", failed.problems);
        let r = failed.result.unwrap();
        assert_eq!((r.ok, r.attempts, r.relay_usable), (false, 3, true));
        assert!(parse(r#"{"event":"result","ok":true}"#).problems[0].starts_with("A: malformed"));
    }

    #[test]
    fn results_that_break_the_value_rules_are_reported() {
        let bad = OK
            .replace("\"client\"", "\"dialer\"")
            .replace("\"tcp\"", "\"udp\"")
            .replace("\"203.0.113.12:5000\"", "null");
        let p = parse(&bad).problems.join("\n");
        assert!(p.contains("neither client nor server"), "{p}");
        assert!(p.contains("neither tcp nor quic"), "{p}");
        assert!(p.contains("without a remote"), "{p}");
        let no_reason = FAILED.replace("\"all attempts failed\"", "null");
        let no_reason = no_reason.replace("\"ok\":false", "\"ok\":false,\"x\":0");
        assert!(
            parse(&no_reason)
                .problems
                .iter()
                .any(|p| p.contains("without a reason"))
        );
    }

    #[test]
    fn command_lines_follow_the_cli() {
        assert_eq!(
            peer_args(Peer::A, Transport::Quic, &["--runtime", "smol"]).join(" "),
            "peer --relay 203.0.113.1:4000 --connect 7-natlab-lab --quic 5000 --json --runtime smol"
        );
        assert_eq!(
            peer_args(Peer::B, Transport::Tcp, &[]).join(" "),
            "peer --relay 203.0.113.1:4000 --code 7-natlab-lab --tcp 5000 --json"
        );
        assert_eq!(
            relay_args(&["--delay-ms", "50"]).join(" "),
            "relay --listen 203.0.113.1:4000 --json --delay-ms 50"
        );
    }
}
