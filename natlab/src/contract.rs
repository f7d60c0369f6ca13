//! The `dcutr` CLI contract as natlab reads it: one JSON object per stdout
//! line, each with a string `"event"`; the last one is the `result`.
//!
//! ```text
//! {"event":"result","ok":bool,"transport":"tcp"|"quic","role":"client"|"server",
//!  "remote":"ip:port"|null,"attempts":n,"unilateral":bool,"rtt_ms":float|null,
//!  "time_to_direct_ms":float|null,"direct_rtt_ms":float|null,
//!  "relay_usable":bool,"reason":string|null}
//! ```
//! Exit code 0 = upgraded, 1 = upgrade failed cleanly, anything else = error.
//! Unknown fields and unknown events are accepted (forward compatible).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Event the relay prints once it accepts connections.
pub const RELAY_LISTENING_EVENT: &str = "listening";

/// Event peer B prints once its reservation at the relay is in place; A is
/// started after it (or after a timeout, see the matrix).
pub const PEER_REGISTERED_EVENT: &str = "registered";

/// Event name of the final line.
pub const RESULT_EVENT: &str = "result";

/// The final `result` object of a peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerResult {
    /// Whether a direct connection replaced the relayed one.
    pub ok: bool,
    /// `tcp` or `quic`.
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
    /// Why the upgrade failed.
    pub reason: Option<String>,
}

/// The event name of one stdout line, and the parsed object.
pub fn parse_event(line: &str) -> Result<(String, Value), String> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line:?}"))?;
    let name = value
        .get("event")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("JSON line without a string \"event\": {line:?}"))?
        .to_owned();
    Ok((name, value))
}

/// Whether `line` is the JSON event `name`.
pub fn is_event(line: &str, name: &str) -> bool {
    matches!(parse_event(line), Ok((n, _)) if n == name)
}

/// Everything natlab takes from one peer's stdout.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeerOutput {
    /// Event names in order.
    pub events: Vec<String>,
    /// The result, if a valid one was printed.
    pub result: Option<PeerResult>,
    /// Contract violations found in the output.
    pub problems: Vec<String>,
}

/// Read a peer's stdout lines against the contract.
pub fn parse_output(lines: &[String]) -> PeerOutput {
    let mut out = PeerOutput::default();
    for line in lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        let (name, value) = match parse_event(line) {
            Ok(x) => x,
            Err(e) => {
                out.problems.push(e);
                continue;
            }
        };
        if out.result.is_some() {
            out.problems.push(format!(
                "event {name:?} after the result (the result must be last)"
            ));
        }
        if name == RESULT_EVENT {
            match serde_json::from_value::<PeerResult>(value) {
                Ok(r) if out.result.is_none() => out.result = Some(r),
                Ok(_) => out.problems.push("more than one result".into()),
                Err(e) => out.problems.push(format!("malformed result ({e}): {line}")),
            }
        }
        out.events.push(name);
    }
    if out.result.is_none() && !out.problems.iter().any(|p| p.contains("result")) {
        out.problems.push("no result line".into());
    }
    if let Some(r) = &out.result {
        if !matches!(r.transport.as_str(), "tcp" | "quic") {
            out.problems.push(format!(
                "result transport {:?} is neither tcp nor quic",
                r.transport
            ));
        }
        if !matches!(r.role.as_str(), "client" | "server") {
            out.problems.push(format!(
                "result role {:?} is neither client nor server",
                r.role
            ));
        }
        if r.ok && r.remote.is_none() {
            out.problems
                .push("ok result without a remote address".into());
        }
        if !r.ok && r.reason.as_deref().is_none_or(str::is_empty) {
            out.problems.push("failed result without a reason".into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const OK: &str = r#"{"event":"result","ok":true,"transport":"tcp","role":"client","remote":"203.0.113.12:5000","attempts":1,"unilateral":false,"rtt_ms":101.5,"time_to_direct_ms":160.2,"direct_rtt_ms":0.3,"relay_usable":true,"reason":null}"#;
    const FAILED: &str = r#"{"event":"result","ok":false,"transport":"quic","role":"server","remote":null,"attempts":3,"unilateral":false,"rtt_ms":100.0,"time_to_direct_ms":null,"direct_rtt_ms":null,"relay_usable":true,"reason":"all attempts failed","extra":1}"#;

    #[test]
    fn a_successful_run_parses_with_its_events_in_order() {
        let out = parse_output(&lines(&[
            r#"{"event":"registered"}"#,
            "",
            r#"{"event":"rtt","ms":1}"#,
            OK,
        ]));
        assert_eq!(out.events, ["registered", "rtt", "result"]);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let r = out.result.unwrap();
        assert!(r.ok);
        assert_eq!(r.rtt_ms, Some(101.5));
        assert_eq!(r.remote.as_deref(), Some("203.0.113.12:5000"));
    }

    #[test]
    fn a_clean_failure_parses_and_unknown_fields_are_ignored() {
        let out = parse_output(&lines(&[FAILED]));
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let r = out.result.unwrap();
        assert_eq!((r.ok, r.attempts, r.relay_usable), (false, 3, true));
    }

    #[test]
    fn missing_result_and_noise_are_reported() {
        let out = parse_output(&lines(&["hello world", r#"{"no_event":1}"#]));
        assert!(out.result.is_none());
        assert_eq!(out.problems.len(), 3, "{:?}", out.problems);
        assert!(out.problems[0].starts_with("not JSON"));
        assert!(out.problems[1].contains("without a string \"event\""));
        assert_eq!(out.problems[2], "no result line");
    }

    #[test]
    fn events_after_the_result_and_second_results_are_reported() {
        let out = parse_output(&lines(&[OK, r#"{"event":"late"}"#, OK]));
        assert!(out.result.is_some());
        assert!(out.problems.iter().any(|p| p.contains("after the result")));
        assert!(out.problems.iter().any(|p| p == "more than one result"));
    }

    #[test]
    fn a_result_missing_a_field_is_malformed() {
        let out = parse_output(&lines(&[r#"{"event":"result","ok":true}"#]));
        assert!(out.result.is_none());
        assert!(
            out.problems[0].starts_with("malformed result"),
            "{:?}",
            out.problems
        );
    }

    #[test]
    fn results_that_break_the_value_rules_are_reported() {
        let bad = OK
            .replace("\"client\"", "\"dialer\"")
            .replace("\"203.0.113.12:5000\"", "null");
        let out = parse_output(&lines(&[&bad]));
        assert!(
            out.problems
                .iter()
                .any(|p| p.contains("neither client nor server"))
        );
        assert!(out.problems.iter().any(|p| p.contains("without a remote")));
        let no_reason = FAILED.replace("\"all attempts failed\"", "null");
        assert!(
            parse_output(&lines(&[&no_reason]))
                .problems
                .iter()
                .any(|p| p.contains("without a reason"))
        );
    }

    #[test]
    fn event_detection() {
        assert!(is_event(
            r#"{"event":"listening","addr":"203.0.113.1:4000"}"#,
            RELAY_LISTENING_EVENT
        ));
        assert!(!is_event(
            r#"{"event":"listening2"}"#,
            RELAY_LISTENING_EVENT
        ));
        assert!(!is_event("listening", RELAY_LISTENING_EVENT));
    }
}
