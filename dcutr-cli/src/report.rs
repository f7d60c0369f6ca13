//! What the `dcutr` commands print on stdout: a human-readable line per
//! event by default, or with `--json` one JSON object per line, always with
//! a string `"event"` key first (the contract the NAT lab reads, see
//! `natlab/src/contract.rs`). Logs go to stderr through `tracing`, never
//! here.
//!
//! Every JSON line is a `serde::Serialize` value: [`Line`] for the peer's
//! own steps, [`RelayEvent`] for the relay's, [`Progress`] for the core's
//! events (their JSON is dcutr-core's, feature `serde`) and [`PeerResult`]
//! for the last line.
//!
//! Every line is written and flushed at once, so a reader on a pipe sees
//! progress (`registered`, waiting...) as it happens. Write errors (a closed
//! stdout) are ignored: output must never crash the program.

use std::fmt::{self, Display};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use dcutr_core::record::Timeline;
use dcutr_core::{Event, Role, Transport};
use serde::Serialize;

use crate::relay::RelayEvent;
use crate::rendezvous::{Paired, PairedSide, Registration};

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

/// A JSON line of the commands' own (the core's events are [`Progress`],
/// the relay's [`RelayEvent`]).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Line<'a> {
    /// The relay is ready.
    Listening {
        /// Where it listens, TCP and UDP.
        addr: SocketAddr,
        /// The one-way delay it adds to every chunk.
        delay_ms: u64,
        /// Always `true`: it listens on TCP.
        tcp: bool,
        /// Always `true`: it answers on UDP.
        udp: bool,
    },
    /// B made a pairing code: give it to the peer.
    Code {
        /// The code.
        code: String,
    },
    /// We are registered at the relay.
    Registered {
        /// Our name at the relay.
        name: &'a str,
        /// Our TCP address as the relay saw it.
        observed_tcp: SocketAddr,
        /// Our UDP address as the relay saw it (with `--quic`).
        observed_udp: Option<SocketAddr>,
        /// The relay name of the peer we ask for (A), or null (B waits).
        connect: Option<&'a str>,
    },
    /// The relay paired us with the peer.
    Paired {
        /// The peer's name at the relay.
        peer: &'a str,
        /// Our side.
        side: PairedSide,
        /// The peer's addresses it believes public.
        peer_public: &'a [String],
        /// The peer's observed addresses.
        peer_addrs: &'a [String],
    },
    /// The PAKE failed: a wrong code, or not a peer of ours.
    PairingFailed {
        /// Why.
        reason: String,
    },
    /// The PAKE proved the code: the peer's certificate is pinned.
    Authenticated {
        /// The peer's certificate fingerprint, hex.
        peer_fingerprint: String,
    },
    /// STUN (`--stun`) found our NAT's behaviour from the punch socket;
    /// it goes to the peer in our Connect.
    NatObserved {
        /// The punch socket's transport.
        transport: Transport,
        /// Our public addresses as the servers saw them.
        public: Vec<SocketAddr>,
        /// `endpoint-independent`, `endpoint-dependent` or `unknown`.
        mapping: String,
        /// `port-preserving`, `sequential`, `random` or `unknown`.
        allocation: String,
        /// The step of a sequential allocation.
        allocation_delta: Option<i32>,
        /// UDP only: `endpoint-independent`, `address-dependent`,
        /// `address-and-port-dependent` or `unknown`.
        filtering: String,
    },
    /// `--stun` was given, but no server answered: the upgrade goes on
    /// without our NAT's behaviour.
    NatUnknown {
        /// Why.
        reason: String,
    },
    /// The upgrade is over: its timeline.
    Timeline {
        /// Hole-punch attempts made.
        attempts: usize,
        /// Relayed RTT measured by the protocol.
        rtt_ms: Option<f64>,
        /// From B's Connect leaving to the direct connection.
        time_to_direct_ms: Option<f64>,
        /// From the start to the outcome.
        total_ms: Option<f64>,
        /// The core's record of the upgrade.
        timeline: &'a Timeline,
    },
    /// The direct path carried the proof's round trips.
    DirectRtt {
        /// Their median round-trip time.
        ms: f64,
    },
    /// The direct connection did not carry the proof's data.
    ProofFailed {
        /// Why.
        reason: &'a str,
    },
    /// After a failed upgrade: whether the relayed stream still works.
    Relay {
        /// It carried a round trip.
        usable: bool,
    },
    /// An error that ends the command.
    Error {
        /// Why.
        reason: String,
    },
}

/// One of the core's events as a JSON line: the core's own serialization
/// (`{"event":"rtt_measured",...}`) and `t_ms`, when it happened since the
/// upgrade started.
#[derive(Debug, Clone, Serialize)]
pub struct Progress<'a> {
    /// The event.
    #[serde(flatten)]
    pub event: &'a Event,
    /// Milliseconds since the upgrade started.
    pub t_ms: f64,
}

/// One JSON output line (without the newline), or a `serialization_failed`
/// error line if `value` cannot be serialized (it always can: our types
/// have string keys only).
pub fn json_line(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        serde_json::to_string(&Line::Error {
            reason: format!("serialization failed: {e}"),
        })
        .unwrap_or_default()
    })
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

    /// Print one event: `value` (whose JSON carries the `"event"` key
    /// first) with `--json`, else the `human` text (nothing if it is
    /// empty).
    pub fn event(&self, value: &impl Serialize, human: impl Display) {
        if self.json {
            print_line(&json_line(value));
        } else {
            let text = human.to_string();
            if !text.is_empty() {
                print_line(&format!("{}{text}", self.prefix));
            }
        }
    }

    /// The relay is ready: `{"event":"listening","addr":"IP:PORT"}`.
    pub fn listening(&self, addr: SocketAddr, delay_ms: u64) {
        let line = Line::Listening {
            addr,
            delay_ms,
            tcp: true,
            udp: true,
        };
        self.event(
            &line,
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
        self.event(event, human);
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
        let line = Line::Registered {
            name,
            observed_tcp: tcp,
            observed_udp,
            connect: waiting_for,
        };
        self.event(
            &line,
            format_args!("registered as {name} (relay sees TCP {tcp}{udp_text}), {next}"),
        );
    }

    /// The relay paired us.
    pub fn paired(&self, paired: &Paired) {
        let role = match paired.side {
            PairedSide::Initiator => "B, opens the DCUtR exchange",
            PairedSide::Responder => "A, answers the DCUtR exchange",
        };
        let line = Line::Paired {
            peer: &paired.peer,
            side: paired.side,
            peer_public: &paired.peer_public,
            peer_addrs: &paired.peer_addrs,
        };
        self.event(
            &line,
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
        self.event(result, result);
    }

    /// An error that ends the command (exit code [`EXIT_ERROR`]). With
    /// `--json` also an `{"event":"error"}` line on stdout; always a line on
    /// stderr.
    pub fn error(&self, error: &anyhow::Error) {
        if self.json {
            print_line(&json_line(&Line::Error {
                reason: format!("{error:#}"),
            }));
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

/// The final `{"event":"result",...}` of `dcutr peer`, exactly the fields the
/// NAT lab's contract reads (`natlab/src/contract.rs`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename = "result")]
pub struct PeerResult {
    /// Whether a direct connection replaced the relayed one.
    pub ok: bool,
    /// The transport tried (dcutr-core's, `tcp` or `quic`).
    pub transport: Transport,
    /// Our role on the direct connection (dcutr-core's, `client` or
    /// `server`).
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
        let transport = self.transport.to_string().to_uppercase();
        let role = self.role;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_put_the_event_first_and_escape() {
        let line = Line::PairingFailed {
            reason: "a \"quoted\" reason".into(),
        };
        assert_eq!(
            json_line(&line),
            r#"{"event":"pairing_failed","reason":"a \"quoted\" reason"}"#
        );
        let registered = Line::Registered {
            name: "b",
            observed_tcp: "1.2.3.4:5".parse().unwrap(),
            observed_udp: None,
            connect: None,
        };
        assert_eq!(
            json_line(&registered),
            r#"{"event":"registered","name":"b","observed_tcp":"1.2.3.4:5","observed_udp":null,"connect":null}"#
        );
    }

    #[test]
    fn core_events_keep_the_cores_json_and_gain_their_time() {
        let event = Event::RttMeasured {
            attempt: 2,
            rtt: std::time::Duration::from_millis(40),
        };
        let line = json_line(&Progress {
            event: &event,
            t_ms: 12.5,
        });
        assert_eq!(
            line,
            r#"{"event":"rtt_measured","attempt":2,"rtt_ms":40.0,"t_ms":12.5}"#
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
        assert_eq!(value["ok"], false);
        assert_eq!(value["transport"], "quic");
        assert_eq!(value["role"], "server");
        assert!(value["remote"].is_null());
        assert_eq!(value["attempts"], 3);
        let line = json_line(&result);
        assert!(
            line.starts_with(r#"{"event":"result","ok":false,"#),
            "{line}"
        );
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
        let event = RelayEvent::Paired {
            initiator: "b".into(),
            responder: "a".into(),
        };
        assert_eq!(
            json_line(&event),
            r#"{"event":"paired","initiator":"b","responder":"a"}"#
        );
    }
}
