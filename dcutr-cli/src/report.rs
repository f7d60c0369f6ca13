//! What the `dcutr` commands print on stdout: a human-readable line per
//! event by default, or with `--json` one JSON object per line, always with
//! a string `"event"` key first (the contract the NAT lab reads, see
//! `natlab/src/contract.rs`). Logs go to stderr through `tracing`, never
//! here.
//!
//! Every line is written and flushed at once, so a reader on a pipe sees
//! progress (`registered`, waiting...) as it happens. Write errors (a closed
//! stdout) are ignored: output must never crash the program.

use std::fmt::{self, Display};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::relay::RelayEvent;
use crate::rendezvous::{Paired, Registration};

/// Exit code of `dcutr peer` when the upgrade failed cleanly (the contract's
/// `1`); `0` is success.
pub const EXIT_UPGRADE_FAILED: u8 = 1;

/// Exit code for an error (bad arguments, relay unreachable, a bug): the
/// contract's "anything else". Clap also uses 2 for argument errors.
pub const EXIT_ERROR: u8 = 2;

/// Prints events as human text or JSON lines.
#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    json: bool,
    /// Put in front of every human line (the demo runs two peers in one
    /// process and tells them apart this way).
    prefix: &'static str,
}

/// One JSON output line (without the newline): `{"event":NAME, ...fields}`.
/// `fields` should be an object; anything else is put under `"value"`. A
/// field named `event` in `fields` is dropped (the name wins).
pub fn json_line(event: &str, fields: &Value) -> String {
    let mut line = String::with_capacity(64);
    line.push_str("{\"event\":");
    line.push_str(&Value::from(event).to_string());
    let mut push = |key: &str, value: &Value| {
        line.push(',');
        line.push_str(&Value::from(key).to_string());
        line.push(':');
        line.push_str(&value.to_string());
    };
    match fields {
        Value::Object(map) => {
            for (key, value) in map.iter().filter(|(k, _)| k.as_str() != "event") {
                push(key, value);
            }
        }
        Value::Null => {}
        other => push("value", other),
    }
    line.push('}');
    line
}

impl Reporter {
    /// A reporter for `--json` (`true`) or human output.
    pub fn new(json: bool) -> Self {
        Reporter { json, prefix: "" }
    }

    /// A human-text reporter that starts every line with `prefix`.
    pub fn prefixed(prefix: &'static str) -> Self {
        Reporter {
            json: false,
            prefix,
        }
    }

    /// Whether lines are JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Print one event: `{"event":name, ...fields}` with `--json`, else the
    /// `human` text (nothing if it is empty).
    pub fn event(&self, name: &str, fields: Value, human: impl Display) {
        if self.json {
            print_line(&json_line(name, &fields));
        } else {
            let text = human.to_string();
            if !text.is_empty() {
                print_line(&format!("{}{text}", self.prefix));
            }
        }
    }

    /// Print a serializable event whose JSON form already carries the
    /// `"event"` tag (like [`RelayEvent`]).
    fn tagged(&self, value: &impl Serialize, human: impl Display) {
        if self.json {
            let fields = serde_json::to_value(value).unwrap_or(Value::Null);
            let name = fields
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned();
            print_line(&json_line(&name, &fields));
        } else {
            print_line(&format!("{}{human}", self.prefix));
        }
    }

    /// The relay is ready: `{"event":"listening","addr":"IP:PORT"}`.
    pub fn listening(&self, addr: SocketAddr, delay_ms: u64) {
        self.event(
            "listening",
            json!({ "addr": addr.to_string(), "delay_ms": delay_ms, "tcp": true, "udp": true }),
            format_args!(
                "dcutr relay listening on {addr} (TCP and UDP{}). A rendezvous helper for \
                 demos and labs, not a libp2p circuit relay.",
                if delay_ms > 0 {
                    format!(", {delay_ms} ms added each way")
                } else {
                    String::new()
                }
            ),
        );
    }

    /// Something the relay did.
    pub fn relay_event(&self, event: &RelayEvent) {
        let human: String = match event {
            RelayEvent::Hello { name, tcp } => format!("{name} said hello from {tcp}"),
            RelayEvent::UdpObserved { name, udp } => format!("{name} observed over UDP at {udp}"),
            RelayEvent::Registered { name, udp } => format!(
                "{name} is registered{}, waiting for a peer",
                udp.map(|u| format!(" (UDP {u})")).unwrap_or_default()
            ),
            RelayEvent::WaitingForPeer { from, to } => {
                format!("{from} asks for {to}, waiting for {to} to register")
            }
            RelayEvent::Paired {
                initiator,
                responder,
            } => format!(
                "paired {responder} (asked: responder, DCUtR's A) with {initiator} \
                 (waited: initiator, DCUtR's B); relaying bytes"
            ),
            RelayEvent::SpliceClosed {
                initiator,
                responder,
                to_initiator,
                to_responder,
            } => format!(
                "relayed stream {responder} <-> {initiator} closed \
                 ({to_initiator} bytes to {initiator}, {to_responder} bytes to {responder})"
            ),
            RelayEvent::Left { name } => format!("{name} left before being paired"),
            RelayEvent::Refused { peer, reason } => format!("refused {peer}: {reason}"),
        };
        self.tagged(event, human);
    }

    /// We are registered at the relay (the NAT lab starts peer A when B
    /// prints this). `waiting_for` is the peer we will ask for, if any;
    /// without it we wait to be asked.
    pub fn registered(
        &self,
        registration: &Registration,
        observed_udp: Option<SocketAddr>,
        waiting_for: Option<&str>,
    ) {
        let name = registration.name();
        let tcp = registration.observed_tcp();
        let udp_text = observed_udp
            .map(|u| format!(", UDP {u}"))
            .unwrap_or_default();
        let next = match waiting_for {
            Some(peer) => format!("asking the relay for {peer}..."),
            None => "waiting for a peer...".to_owned(),
        };
        self.event(
            "registered",
            json!({
                "name": name,
                "observed_tcp": tcp.to_string(),
                "observed_udp": observed_udp.map(|u| u.to_string()),
                "connect": waiting_for,
            }),
            format_args!("registered as {name} (relay sees TCP {tcp}{udp_text}), {next}"),
        );
    }

    /// The relay paired us.
    pub fn paired(&self, paired: &Paired) {
        let role = match paired.side {
            crate::rendezvous::PairedSide::Initiator => "B, opens the DCUtR exchange",
            crate::rendezvous::PairedSide::Responder => "A, answers the DCUtR exchange",
        };
        self.event(
            "paired",
            json!({
                "peer": paired.peer,
                "side": paired.side,
                "peer_public": paired.peer_public,
                "peer_addrs": paired.peer_addrs,
            }),
            format_args!(
                "paired with {} as {} ({role}); its addresses: {}",
                paired.peer,
                paired.side,
                if paired.peer_addrs.is_empty() {
                    "none".to_owned()
                } else {
                    paired.peer_addrs.join(" ")
                }
            ),
        );
    }

    /// The final line of `dcutr peer`.
    pub fn result(&self, result: &PeerResult) {
        self.tagged(result, result);
    }

    /// An error that ends the command (exit code [`EXIT_ERROR`]). With
    /// `--json` also an `{"event":"error"}` line on stdout; always a line on
    /// stderr.
    pub fn error(&self, error: &anyhow::Error) {
        if self.json {
            print_line(&json_line(
                "error",
                &json!({ "reason": format!("{error:#}") }),
            ));
        }
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "dcutr: error: {error:#}");
    }
}

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Transport of the direct connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP (simultaneous open).
    Tcp,
    /// QUIC over UDP.
    Quic,
}

/// Our role on the direct connection: A is the client, B the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// DCUtR's A (the `responder` side at the relay).
    Client,
    /// DCUtR's B (the `initiator` side at the relay).
    Server,
}

/// The final `{"event":"result",...}` of `dcutr peer`, exactly the fields the
/// NAT lab's contract reads (`natlab/src/contract.rs`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename = "result")]
pub struct PeerResult {
    /// Whether a direct connection replaced the relayed one.
    pub ok: bool,
    /// The transport tried.
    pub transport: Transport,
    /// Our role on the direct connection.
    pub role: Role,
    /// The direct connection's remote address (required when `ok`).
    pub remote: Option<SocketAddr>,
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
    /// Why the upgrade failed (required when not `ok`).
    pub reason: Option<String>,
}

impl PeerResult {
    /// `0` if upgraded, [`EXIT_UPGRADE_FAILED`] otherwise.
    pub fn exit_code(&self) -> ExitCode {
        if self.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_UPGRADE_FAILED)
        }
    }
}

impl Display for PeerResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let transport = match self.transport {
            Transport::Tcp => "TCP",
            Transport::Quic => "QUIC",
        };
        let role = match self.role {
            Role::Client => "client",
            Role::Server => "server",
        };
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} ms"));
        if self.ok {
            write!(
                f,
                "UPGRADED: direct {transport} connection to {} as {role}{}; attempts {}, \
                 relayed RTT {}, direct RTT {}, time to direct {}",
                self.remote.map_or("?".to_owned(), |r| r.to_string()),
                if self.unilateral {
                    " (unilateral: direct dial, no hole punch)"
                } else {
                    ""
                },
                self.attempts,
                ms(self.rtt_ms),
                ms(self.direct_rtt_ms),
                ms(self.time_to_direct_ms),
            )
        } else {
            write!(
                f,
                "NOT UPGRADED ({transport}, {role}) after {} attempts: {}; relayed connection {}",
                self.attempts,
                self.reason.as_deref().unwrap_or("no reason given"),
                if self.relay_usable {
                    "still usable"
                } else {
                    "lost"
                },
            )
        }
    }
}

/// Build an object of fields from pairs, for [`Reporter::event`] callers
/// that assemble fields at run time.
pub fn fields<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v))
            .collect::<Map<_, _>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_put_the_event_first_and_escape() {
        assert_eq!(
            json_line("registered", &json!({"name": "b", "event": "ignored"})),
            r#"{"event":"registered","name":"b"}"#
        );
        assert_eq!(json_line("x\"y", &Value::Null), r#"{"event":"x\"y"}"#);
        assert_eq!(json_line("n", &json!(3)), r#"{"event":"n","value":3}"#);
        assert_eq!(
            json_line("f", &fields([("a", json!(1)), ("b", json!([]))])),
            r#"{"event":"f","a":1,"b":[]}"#
        );
    }

    #[test]
    fn the_result_matches_the_lab_contract() {
        let result = PeerResult {
            ok: false,
            transport: Transport::Quic,
            role: Role::Server,
            remote: None,
            attempts: 3,
            unilateral: false,
            rtt_ms: Some(100.0),
            time_to_direct_ms: None,
            direct_rtt_ms: None,
            relay_usable: true,
            reason: Some("all attempts failed".into()),
        };
        let value = serde_json::to_value(&result).unwrap();
        assert_eq!(value["event"], "result");
        assert_eq!(value["transport"], "quic");
        assert_eq!(value["role"], "server");
        assert_eq!(value["remote"], Value::Null);
        assert_eq!(value["attempts"], 3);
        let line = json_line("result", &value);
        assert!(line.starts_with(r#"{"event":"result","#), "{line}");
        assert!(result.to_string().starts_with("NOT UPGRADED"));
        assert_eq!(result.exit_code(), ExitCode::from(EXIT_UPGRADE_FAILED));
        let ok = PeerResult {
            ok: true,
            remote: Some("1.2.3.4:5".parse().unwrap()),
            reason: None,
            ..result
        };
        assert_eq!(ok.exit_code(), ExitCode::SUCCESS);
        assert!(ok.to_string().contains("1.2.3.4:5"), "{ok}");
    }

    #[test]
    fn relay_events_carry_their_event_tag() {
        let value = serde_json::to_value(RelayEvent::Paired {
            initiator: "b".into(),
            responder: "a".into(),
        })
        .unwrap();
        assert_eq!(
            json_line("paired", &value),
            r#"{"event":"paired","initiator":"b","responder":"a"}"#
        );
    }
}
