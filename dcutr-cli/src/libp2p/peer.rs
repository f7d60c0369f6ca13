//! `dcutr libp2p listen` (the spec's B) and `dcutr libp2p dial` (A).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcutr_libp2p as ours;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, Swarm, SwarmEvent};
use libp2p::{Multiaddr, PeerId, dcutr as stock, identify, ping, relay};
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::{Value, json};

use super::http::MetricsServer;
use super::node::{self, Impl, PeerNode, PeerNodeEvent};
use super::stats::Summary;
use super::{EXIT_NO_DIRECT, EXIT_SETUP, Out, PeerOpts, ms};

/// How long setup may take: listening, reaching the relay, the
/// reservation, our observed address from identify. A few round trips to
/// the relay, with room for a slow one.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// After the ping over the direct connection, how long to wait for the
/// DCUtR behaviour's own outcome (stock B reports nothing when the peer's
/// dial won).
pub const DCUTR_OUTCOME_WAIT: Duration = Duration::from_secs(2);

/// After a run, how long we stay connected so that the peer's ping over
/// the same direct connection can finish; we move on earlier once the
/// peer has closed every connection of the run.
pub const RUN_LINGER: Duration = Duration::from_secs(1);

/// Between runs, how long the dialer waits for the closed connections of
/// the last run to be gone.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Between runs, a pause after the close, so that the listener has seen
/// it before the next relayed connection arrives.
pub const RUN_PAUSE: Duration = Duration::from_millis(200);

/// Appended to ours' failures that the address policy caused: the flags
/// that widen it.
const POLICY_FLAGS_HINT: &str = "with `dcutr libp2p`, pass --allow-loopback (peers on one host) \
    or --allow-private (peers in one LAN)";

/// How often the event loops look at their clocks when no event comes.
const TICK: Duration = Duration::from_millis(50);

/// What the peer does.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// Hold a reservation and upgrade the relayed connections that come.
    Listen {
        /// Wait for each relayed connection at most this long, seconds.
        wait_s: f64,
    },
    /// Dial `peer` through the relay.
    Dial {
        /// The listener.
        peer: PeerId,
    },
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Listen { .. } => "listen",
            Role::Dial { .. } => "dial",
        }
    }
}

/// One upgrade as the result line and the `run` lines report it.
#[derive(Debug, Clone, Default, Serialize)]
struct RunReport {
    /// 1-based.
    run: u32,
    /// A direct connection came up and a ping went over it.
    ok: bool,
    /// A non-relayed connection to the peer came up.
    direct: bool,
    /// Why not ok.
    reason: Option<String>,
    remote_peer_id: Option<String>,
    /// The first direct connection's remote address.
    remote: Option<String>,
    /// `dialer` or `listener` at the transport level.
    endpoint: Option<&'static str>,
    /// `client` or `server` in security and muxer negotiation.
    role: Option<&'static str>,
    direct_connections: u32,
    /// From the relayed connection to the first direct one.
    time_to_direct_ms: Option<f64>,
    /// A ping went over the first direct connection.
    ping: bool,
    ping_rtt_ms: Option<f64>,
    /// The relayed connection's ping RTT.
    relayed_rtt_ms: Option<f64>,
    /// From the relayed connection to this result (success, failure or
    /// timeout): the time to learn the outcome.
    time_to_outcome_ms: Option<f64>,
    /// The DCUtR behaviour's own outcome: `ok`, `error`, or none.
    dcutr_outcome: Option<&'static str>,
    dcutr_error: Option<String>,
    timed_out: bool,
}

/// What one upgrade saw.
#[derive(Debug)]
struct Run {
    index: u32,
    deadline: tokio::time::Instant,
    /// The peer (the listener learns it from the relayed connection).
    peer: Option<PeerId>,
    /// Connections to the peer that came up during this run, and how many
    /// of them are open.
    conns: Vec<ConnectionId>,
    open: u32,
    relayed_at: Option<Instant>,
    /// The run's relayed connection (the first, if several).
    relayed: Option<ConnectionId>,
    relayed_dial: Option<ConnectionId>,
    relayed_dial_error: Option<String>,
    relayed_rtt: Option<Duration>,
    /// The first direct connection: id, remote, endpoint kind, role.
    direct: Option<(ConnectionId, Multiaddr, &'static str, &'static str)>,
    direct_connections: u32,
    time_to_direct: Option<Duration>,
    ping: Option<Result<Duration, String>>,
    ping_at: Option<Instant>,
    /// The DCUtR behaviour's outcome: Ok(names the first direct?) or its error.
    dcutr: Option<Result<bool, String>>,
}

impl Run {
    fn new(index: u32, timeout: Duration, peer: Option<PeerId>) -> Self {
        Run {
            index,
            deadline: tokio::time::Instant::now() + timeout,
            peer,
            conns: Vec::new(),
            open: 0,
            relayed_at: None,
            relayed: None,
            relayed_dial: None,
            relayed_dial_error: None,
            relayed_rtt: None,
            direct: None,
            direct_connections: 0,
            time_to_direct: None,
            ping: None,
            ping_at: None,
            dcutr: None,
        }
    }

    /// Nothing more can change the run's outcome.
    fn finished(&self) -> bool {
        if self.relayed_dial_error.is_some() {
            return true;
        }
        if self.direct.is_none() {
            // Failed for good, or every connection of the run is gone.
            return matches!(self.dcutr, Some(Err(_)))
                || (!self.conns.is_empty() && self.open == 0);
        }
        self.ping.is_some()
            && (self.dcutr.is_some()
                || self
                    .ping_at
                    .is_some_and(|t| t.elapsed() >= DCUTR_OUTCOME_WAIT))
    }

    fn report(&self, timed_out: bool, timeout: Duration) -> RunReport {
        let ping_ok = matches!(self.ping, Some(Ok(_)));
        let ok = self.direct.is_some() && ping_ok;
        let reason = if ok {
            None
        } else if let Some(e) = &self.relayed_dial_error {
            Some(format!(
                "the dial through the relay failed: {e} (is the listener running and reserved at this relay, with this peer id?)"
            ))
        } else if self.relayed_at.is_none() {
            Some(format!(
                "no relayed connection to the peer within {timeout:?}"
            ))
        } else if self.direct.is_none() {
            Some(match &self.dcutr {
                Some(Err(e)) => format!("no direct connection; dcutr: {e}"),
                _ if timed_out => format!("no direct connection within {timeout:?}"),
                _ => "no direct connection; the relayed connection closed".to_owned(),
            })
        } else {
            Some(match &self.ping {
                Some(Err(e)) => format!("the ping over the direct connection failed: {e}"),
                _ => format!("no ping over the direct connection within {timeout:?}"),
            })
        };
        let direct = self.direct.as_ref();
        RunReport {
            run: self.index,
            ok,
            direct: direct.is_some(),
            reason,
            remote_peer_id: self.peer.map(|p| p.to_string()),
            remote: direct.map(|d| d.1.to_string()),
            endpoint: direct.map(|d| d.2),
            role: direct.map(|d| d.3),
            direct_connections: self.direct_connections,
            time_to_direct_ms: self.time_to_direct.map(ms),
            ping: ping_ok,
            ping_rtt_ms: match self.ping {
                Some(Ok(rtt)) => Some(ms(rtt)),
                _ => None,
            },
            relayed_rtt_ms: self.relayed_rtt.map(ms),
            time_to_outcome_ms: self.relayed_at.map(|t| ms(t.elapsed())),
            dcutr_outcome: self
                .dcutr
                .as_ref()
                .map(|d| if d.is_ok() { "ok" } else { "error" }),
            dcutr_error: self.dcutr.as_ref().and_then(|d| d.as_ref().err().cloned()),
            timed_out,
        }
    }

    /// Takes one swarm event about the peer; `relay` is the relay's id.
    fn handle(&mut self, event: SwarmEvent<PeerNodeEvent>, relay: PeerId, out: &Out) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } if peer_id != relay => {
                let expected = *self.peer.get_or_insert(peer_id);
                if peer_id != expected {
                    out.emit("unexpected-peer", json!({"peer_id": peer_id.to_string()}));
                    return;
                }
                self.conns.push(connection_id);
                self.open += 1;
                let (remote, kind, role) = endpoint_parts(&endpoint);
                if endpoint.is_relayed() {
                    self.relayed_at.get_or_insert_with(Instant::now);
                    self.relayed.get_or_insert(connection_id);
                    out.emit(
                        "relayed-connection",
                        json!({"run": self.index, "remote_peer_id": peer_id.to_string(),
                               "remote_addr": remote.to_string(), "endpoint": kind}),
                    );
                    return;
                }
                self.direct_connections += 1;
                let since = self.relayed_at.map(|t| t.elapsed());
                out.emit(
                    "direct-connection",
                    json!({"run": self.index, "remote_addr": remote.to_string(), "endpoint": kind,
                           "role": role, "ms_since_relayed": since.map(ms),
                           "first": self.direct.is_none()}),
                );
                if self.direct.is_none() {
                    self.direct = Some((connection_id, remote, kind, role));
                    self.time_to_direct = since;
                }
            }
            SwarmEvent::ConnectionClosed {
                connection_id,
                endpoint,
                cause,
                ..
            } if self.conns.contains(&connection_id) => {
                self.open = self.open.saturating_sub(1);
                let first = self.direct.as_ref().is_some_and(|d| d.0 == connection_id);
                if first && self.ping.is_none() {
                    self.ping = Some(Err("the connection closed first".to_owned()));
                }
                out.emit(
                    "connection-closed",
                    json!({"run": self.index, "relayed": endpoint.is_relayed(), "first_direct": first,
                           "cause": cause.map(|c| c.to_string())}),
                );
            }
            SwarmEvent::Behaviour(PeerNodeEvent::Ping(ping::Event {
                connection,
                result,
                ..
            })) if self.conns.contains(&connection) => {
                let over_direct = self.direct.as_ref().is_some_and(|d| d.0 == connection);
                let over_relayed = self.relayed == Some(connection);
                if let (true, None, Ok(rtt)) = (over_relayed, self.relayed_rtt, &result) {
                    self.relayed_rtt = Some(*rtt);
                }
                if over_direct && self.ping.is_none() {
                    self.ping = Some(result.as_ref().map(|d| *d).map_err(ToString::to_string));
                    self.ping_at = Some(Instant::now());
                }
                if over_direct || over_relayed {
                    out.emit(
                        "ping",
                        json!({"run": self.index, "over": if over_direct { "direct" } else { "relayed" },
                               "rtt_ms": result.as_ref().ok().map(|d| ms(*d)),
                               "error": result.as_ref().err().map(ToString::to_string)}),
                    );
                }
            }
            SwarmEvent::Behaviour(PeerNodeEvent::Stock(stock::Event {
                remote_peer_id,
                result,
            })) if Some(remote_peer_id) == self.peer => {
                let outcome = result
                    .map(|id| self.direct.as_ref().is_some_and(|d| d.0 == id))
                    .map_err(|e| format!("{e}: {e:?}"));
                self.outcome("stock", None, outcome, out);
            }
            SwarmEvent::Behaviour(PeerNodeEvent::Ours(report)) => match report {
                ours::Report::Outcome { event, side, .. } if Some(event.remote_peer_id) == self.peer => {
                    let outcome = event
                        .result
                        .map(|id| self.direct.as_ref().is_some_and(|d| d.0 == id))
                        .map_err(|e| match e.hint() {
                            Some(_) => format!("{e}; {POLICY_FLAGS_HINT}"),
                            None => e.to_string(),
                        });
                    self.outcome("ours", Some(side), outcome, out);
                }
                ours::Report::Progress(p) if Some(p.remote_peer_id) == self.peer => out.emit(
                    "dcutr-progress",
                    json!({"run": self.index, "side": p.side.to_string(), "detail": format!("{:?}", p.event)}),
                ),
                _ => {}
            },
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                connection_id,
                error,
            } => {
                if self.relayed_dial == Some(connection_id) {
                    self.relayed_dial_error = Some(error.to_string());
                }
                if peer_id.is_none() || peer_id == self.peer {
                    out.emit(
                        "dial-error",
                        json!({"run": self.index, "error": error.to_string()}),
                    );
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => out.emit(
                "incoming-error",
                json!({"run": self.index, "from": send_back_addr.to_string(), "error": error.to_string()}),
            ),
            other => idle_event(&other, out),
        }
    }

    fn outcome(
        &mut self,
        which: &str,
        side: Option<dcutr_libp2p::Side>,
        outcome: Result<bool, String>,
        out: &Out,
    ) {
        out.emit(
            "dcutr",
            json!({"run": self.index, "impl": which, "side": side.map(|s| s.to_string()),
                   "ok": outcome.is_ok(), "error": outcome.as_ref().err(),
                   "names_first_direct": outcome.as_ref().ok()}),
        );
        self.dcutr.get_or_insert(outcome);
    }
}

/// Events worth a line outside of any run.
fn idle_event(event: &SwarmEvent<PeerNodeEvent>, out: &Out) {
    match event {
        SwarmEvent::NewExternalAddrCandidate { address } => {
            out.emit("observed", json!({"addr": address.to_string()}));
        }
        SwarmEvent::Behaviour(PeerNodeEvent::Relay(
            relay::client::Event::ReservationReqAccepted { renewal: true, .. },
        )) => {}
        SwarmEvent::ListenerError { error, .. } => {
            out.emit("listener-error", json!({"error": error.to_string()}));
        }
        SwarmEvent::ListenerClosed { reason, .. } => {
            out.emit("listener-closed", json!({"reason": format!("{reason:?}")}));
        }
        _ => {}
    }
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

fn endpoint_parts(endpoint: &ConnectedPoint) -> (Multiaddr, &'static str, &'static str) {
    match endpoint {
        ConnectedPoint::Dialer {
            address,
            role_override,
            ..
        } => (
            address.clone(),
            "dialer",
            if *role_override == Endpoint::Dialer {
                "client"
            } else {
                "server"
            },
        ),
        ConnectedPoint::Listener { send_back_addr, .. } => {
            (send_back_addr.clone(), "listener", "server")
        }
    }
}

/// Ours' config from the flags: the default address policy, widened by
/// `--allow-private` and `--allow-loopback`; the unilateral dial unless
/// `--no-unilateral`.
fn ours_config(opts: &PeerOpts) -> ours::Config {
    let policy = opts.reach.widen(ours::AddressPolicy::public_only());
    ours::Config::default()
        .with_address_policy(policy)
        .with_unilateral(!opts.reach.no_unilateral)
}

/// The listening addresses: `--listen`, or TCP and QUIC on every interface.
fn listen_addrs(opts: &PeerOpts) -> Vec<Multiaddr> {
    if !opts.listen.is_empty() {
        return opts.listen.clone();
    }
    ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]
        .iter()
        .map(|a| a.parse().expect("a valid multiaddr"))
        .collect()
}

/// Setup: listening, the relay connection, the reservation (listener),
/// our observed address. Returns the observed address.
async fn setup(
    swarm: &mut Swarm<PeerNode>,
    opts: &PeerOpts,
    reserve: bool,
    out: &Out,
) -> Result<Multiaddr, String> {
    let listen = listen_addrs(opts);
    // Our listeners first: every later dial (the relay's included) leaves
    // from their ports.
    for addr in &listen {
        swarm.listen_on(addr.clone()).map_err(|e| {
            format!("--listen {addr}: {e} (expected e.g. /ip4/0.0.0.0/tcp/4001 or /ip4/0.0.0.0/udp/4001/quic-v1)")
        })?;
    }
    let mut listening = 0;
    while listening < listen.len() {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                out.emit("listening", json!({"addr": address.to_string()}));
                listening += 1;
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                return Err(format!("a listener closed: {reason:?}"));
            }
            _ => {}
        }
    }
    // Learn our observed address from the relay before any relayed
    // connection exists: stock fixes the addresses it sends in Connect
    // when the relayed connection is made.
    let relay = opts.relay.clone();
    let reached = if reserve {
        swarm
            .listen_on(relay.clone().with(Protocol::P2pCircuit))
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        swarm.dial(relay.clone()).map_err(|e| e.to_string())
    };
    reached.map_err(|e| format!("reaching the relay {relay}: {e}"))?;
    // Identify from the relay and each other observer, fed to ours.
    let mut unidentified: Vec<PeerId> = Vec::new();
    if let Some(Protocol::P2p(id)) = relay.iter().last() {
        unidentified.push(id);
    }
    for o in &opts.observer {
        swarm
            .dial(o.clone())
            .map_err(|e| format!("--observer {o}: {e}"))?;
        if let Some(Protocol::P2p(id)) = o.iter().last() {
            unidentified.push(id);
        }
    }
    let (mut reserved, mut relayed_listen, mut observed) = (!reserve, !reserve, None);
    while !(reserved && relayed_listen && observed.is_some() && unidentified.is_empty()) {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(PeerNodeEvent::Identify(identify::Event::Received {
                connection_id,
                peer_id,
                info,
            })) => {
                unidentified.retain(|p| *p != peer_id);
                if let Some(ours) = swarm.behaviour_mut().ours.as_mut() {
                    match ours.observe_identify(connection_id, &info.observed_addr) {
                        Ok(nat) => out.emit(
                            "nat-observation",
                            json!({"observer": peer_id.to_string(),
                                   "observed": info.observed_addr.to_string(),
                                   "socket": nat_json(&nat)}),
                        ),
                        Err(e) => out.emit(
                            "nat-observation",
                            json!({"observer": peer_id.to_string(),
                                   "observed": info.observed_addr.to_string(),
                                   "unused": e.to_string()}),
                        ),
                    }
                }
            }
            SwarmEvent::Behaviour(PeerNodeEvent::Relay(
                relay::client::Event::ReservationReqAccepted { .. },
            )) => reserved = true,
            SwarmEvent::NewListenAddr { address, .. } if is_relayed(&address) => {
                relayed_listen = true;
            }
            SwarmEvent::NewExternalAddrCandidate { address } if !is_relayed(&address) => {
                out.emit("observed", json!({"addr": address.to_string()}));
                observed = Some(address);
            }
            SwarmEvent::OutgoingConnectionError {
                error,
                peer_id: Some(peer),
                ..
            } if opts
                .observer
                .iter()
                .any(|o| o.iter().last() == Some(Protocol::P2p(peer))) =>
            {
                return Err(format!(
                    "reaching the observer {peer}: {error} (is it running, over this transport?)"
                ));
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                return Err(format!(
                    "reaching the relay {relay}: {error} (is `dcutr libp2p relay` running there, with this peer id, over this transport?)"
                ));
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                return Err(format!(
                    "the reservation at {relay} failed: {reason:?} (is it a circuit relay v2?)"
                ));
            }
            _ => {}
        }
    }
    Ok(observed.expect("loop condition"))
}

/// A NAT behaviour for the JSON and human output.
fn nat_json(nat: &ours::core::nat::NatBehaviour) -> Value {
    json!({"mapping": nat.mapping.to_string(), "allocation": nat.allocation.to_string(),
           "filtering": nat.filtering.to_string(),
           "observers": nat.evidence.observations.len(), "detail": nat.to_string()})
}

/// What ours detected of our NAT after setup: what the next Connect
/// declares (null: nothing, the spec's Connect) and each socket observed.
/// Null with `--stock`, which has no classifier.
fn nat_summary(swarm: &Swarm<PeerNode>) -> Value {
    let Some(ours) = swarm.behaviour().ours.as_ref() else {
        return Value::Null;
    };
    let sockets: Vec<Value> = ours
        .nat_behaviours()
        .map(|(t, b)| {
            let mut v = nat_json(&b);
            merge(&mut v, json!({"transport": t.to_string()}));
            v
        })
        .collect();
    json!({"declared": ours.nat_behaviour().as_ref().map(nat_json), "sockets": sockets})
}

/// Runs `listen` or `dial`.
pub async fn run(opts: &PeerOpts, role: Role, runs: u32) -> anyhow::Result<ExitCode> {
    let out = Out::new(opts.json);
    let dcutr = if opts.stock { Impl::Stock } else { Impl::Ours };
    let key = node::keypair(opts.seed);
    let me = key.public().to_peer_id();
    let timeout = Duration::from_secs_f64(opts.timeout_s);
    let mut registry = Registry::default();
    let mut swarm = node::peer_swarm(
        &key,
        dcutr,
        ours_config(opts),
        opts.metrics.is_some().then_some(&mut registry),
    )?;
    let base = json!({"mode": role.name(), "dcutr": dcutr.name(), "peer_id": me.to_string()});
    let result_line = |report: &RunReport, summary: &Summary| {
        let mut v = base.clone();
        merge(&mut v, json!(report));
        merge(&mut v, json!(summary));
        v
    };
    let fail_setup = |what: String| {
        out.emit("error", json!({"error": what.clone()}));
        let report = RunReport {
            reason: Some(what),
            ..RunReport::default()
        };
        out.emit("result", result_line(&report, &Summary::new(0, &[])));
        Ok(ExitCode::from(EXIT_SETUP))
    };
    let server = match opts.metrics {
        Some(addr) => match MetricsServer::start(addr, Arc::new(registry)).await {
            Ok(server) => {
                out.emit(
                    "metrics",
                    json!({"url": format!("http://{}/metrics", server.addr())}),
                );
                Some(server)
            }
            Err(e) => return fail_setup(format!("{e:#}")),
        },
        None => None,
    };
    let reserve = matches!(role, Role::Listen { .. });
    let observed = match tokio::time::timeout(SETUP_TIMEOUT, setup(&mut swarm, opts, reserve, &out))
        .await
    {
        Ok(Ok(observed)) => observed,
        Ok(Err(e)) => return fail_setup(e),
        Err(_) => {
            return fail_setup(format!(
                "setup (listening, relay {}, reservation, observed address) took over {SETUP_TIMEOUT:?}: is the relay reachable over this transport?",
                opts.relay
            ));
        }
    };
    let nat = nat_summary(&swarm);
    out.emit("nat", json!({"nat": nat.clone()}));
    let relay = match opts.relay.iter().last() {
        Some(Protocol::P2p(id)) => id,
        _ => unreachable!("checked by the argument parser"),
    };
    let reports = match role {
        Role::Listen { wait_s } => {
            let relayed = opts
                .relay
                .clone()
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(me));
            out.emit(
                "reserved",
                json!({"peer_id": me.to_string(), "relayed_addr": relayed.to_string(),
                       "observed": observed.to_string(), "dcutr": dcutr.name()}),
            );
            let wait = Duration::from_secs_f64(wait_s);
            listen(&mut swarm, relay, (runs, timeout, wait), &out).await
        }
        Role::Dial { peer } => {
            out.emit(
                "ready",
                json!({"peer_id": me.to_string(), "observed": observed.to_string(), "dcutr": dcutr.name()}),
            );
            dial(
                &mut swarm,
                (relay, &opts.relay, peer),
                (runs, timeout),
                &out,
            )
            .await
        }
    };
    let times: Vec<f64> = reports
        .iter()
        .filter(|r| r.ok)
        .filter_map(|r| r.time_to_direct_ms)
        .collect();
    let summary = Summary::new(u32::try_from(reports.len()).unwrap_or(u32::MAX), &times);
    let all_ok =
        !reports.is_empty() && reports.iter().all(|r| r.ok) && reports.len() == runs as usize;
    let last = reports.last().cloned().unwrap_or_default();
    let scrapes = server.as_ref().map(MetricsServer::scrapes);
    let mut result = result_line(&last, &summary);
    merge(&mut result, json!({"nat": nat}));
    out.emit("result", result);
    out.human(&human_summary(&last, &summary));
    if let (Some(server), Some(before)) = (&server, scrapes) {
        hold_metrics(
            &mut swarm,
            server,
            before,
            Duration::from_secs_f64(opts.metrics_hold_s),
        )
        .await;
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NO_DIRECT)
    })
}

/// The last lines of the human output: the last run's outcome and, for a
/// campaign, its statistics.
fn human_summary(last: &RunReport, summary: &Summary) -> String {
    let mut text = match (&last.reason, &last.remote, last.time_to_direct_ms) {
        (None, Some(remote), Some(ttd)) => {
            format!("direct connection to {remote} {ttd:.1} ms after the relayed one")
        }
        (None, Some(remote), None) => format!("direct connection to {remote}"),
        (Some(reason), ..) => format!("no direct connection: {reason}"),
        (None, None, _) => "no direct connection".to_owned(),
    };
    if summary.runs > 1 {
        let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
        text.push_str(&format!(
            "\n{}/{} runs direct ({:.0} %); time to direct p50 {}, p90 {}, max {}",
            summary.successes,
            summary.runs,
            summary.success_rate * 100.0,
            fmt(summary.time_to_direct_p50_ms),
            fmt(summary.time_to_direct_p90_ms),
            fmt(summary.time_to_direct_max_ms),
        ));
    }
    text
}

/// Adds the fields of object `extra` to object `v`.
fn merge(v: &mut Value, extra: Value) {
    if let (Value::Object(v), Value::Object(extra)) = (v, extra) {
        v.extend(extra);
    }
}

/// Serves the metrics until one more scrape than `before` was answered or
/// `hold` passed, keeping the swarm polled.
async fn hold_metrics(
    swarm: &mut Swarm<PeerNode>,
    server: &MetricsServer,
    before: u64,
    hold: Duration,
) {
    let until = tokio::time::Instant::now() + hold;
    while server.scrapes() <= before && tokio::time::Instant::now() < until {
        tokio::select! {
            _ = swarm.select_next_some() => {}
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// The listener: upgrades `runs` relayed connections, each bounded by
/// `timeout`, waiting at most `wait` for each.
async fn listen(
    swarm: &mut Swarm<PeerNode>,
    relay: PeerId,
    (runs, timeout, wait): (u32, Duration, Duration),
    out: &Out,
) -> Vec<RunReport> {
    let mut reports = Vec::new();
    let mut current: Option<Run> = None;
    let mut waiting_until = tokio::time::Instant::now() + wait;
    let mut peer = None;
    loop {
        let active = current.as_ref().filter(|_| reports.len() < runs as usize);
        let deadline = active.map_or(waiting_until, |r| r.deadline);
        let event = tokio::select! {
            e = swarm.select_next_some() => Some(e),
            () = tokio::time::sleep(TICK) => None,
            () = tokio::time::sleep_until(deadline) => {
                match current.take() {
                    Some(run) => {
                        let r = run.report(true, timeout);
                        emit_run(out, &r, runs);
                        reports.push(r);
                        if reports.len() >= runs as usize {
                            return reports;
                        }
                        waiting_until = tokio::time::Instant::now() + wait;
                        continue;
                    }
                    None => {
                        let mut r = Run::new(reports.len() as u32 + 1, wait, peer).report(true, wait);
                        r.reason = Some(format!(
                            "no relayed connection within {wait:?} (--wait-s): start `dcutr libp2p dial` with this relay and our peer id"
                        ));
                        reports.push(r);
                        return reports;
                    }
                }
            }
        };
        if let Some(event) = event {
            let starts_run = matches!(&event,
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. }
                    if *peer_id != relay && endpoint.is_relayed()
                        && peer.is_none_or(|p| p == *peer_id));
            if starts_run && current.is_none() {
                current = Some(Run::new(reports.len() as u32 + 1, timeout, None));
            }
            match current.as_mut() {
                Some(run) => {
                    run.handle(event, relay, out);
                    peer = peer.or(run.peer);
                }
                None => idle_event(&event, out),
            }
        }
        if let Some(run) = current.as_ref().filter(|r| r.finished()) {
            let r = run.report(false, timeout);
            emit_run(out, &r, runs);
            reports.push(r);
            let mut run = current.take().expect("just checked");
            linger(swarm, &mut run, relay, out).await;
            if reports.len() >= runs as usize {
                return reports;
            }
            waiting_until = tokio::time::Instant::now() + wait;
        }
    }
}

/// The dialer: `runs` upgrades over fresh relayed connections to `peer`.
async fn dial(
    swarm: &mut Swarm<PeerNode>,
    (relay, relay_addr, peer): (PeerId, &Multiaddr, PeerId),
    (runs, timeout): (u32, Duration),
    out: &Out,
) -> Vec<RunReport> {
    let target = relay_addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(peer));
    let mut reports = Vec::new();
    for index in 1..=runs {
        let mut run = Run::new(index, timeout, Some(peer));
        out.emit("dialing", json!({"run": index, "to": target.to_string()}));
        let opts = DialOpts::from(target.clone());
        run.relayed_dial = Some(opts.connection_id());
        if let Err(e) = swarm.dial(opts) {
            run.relayed_dial_error = Some(e.to_string());
        }
        let mut timed_out = false;
        while !run.finished() {
            let event = tokio::select! {
                e = swarm.select_next_some() => e,
                () = tokio::time::sleep(TICK) => continue,
                () = tokio::time::sleep_until(run.deadline) => { timed_out = true; break; }
            };
            run.handle(event, relay, out);
        }
        let r = run.report(timed_out, timeout);
        emit_run(out, &r, runs);
        reports.push(r);
        linger(swarm, &mut run, relay, out).await;
        if index < runs {
            // A fresh relayed connection next time: close every one of
            // this run (the relay connection stays).
            let _ = swarm.disconnect_peer_id(peer);
            let until = tokio::time::Instant::now() + CLOSE_TIMEOUT;
            drive_until(swarm, &mut run, relay, out, until, |r| r.open == 0).await;
            let pause = tokio::time::Instant::now() + RUN_PAUSE;
            drive_until(swarm, &mut run, relay, out, pause, |_| false).await;
        }
    }
    reports
}

/// After a run: stay up to [`RUN_LINGER`] for the peer's own ping, or
/// until the peer has closed every connection of the run.
async fn linger(swarm: &mut Swarm<PeerNode>, run: &mut Run, relay: PeerId, out: &Out) {
    let until = tokio::time::Instant::now() + RUN_LINGER;
    drive_until(swarm, run, relay, out, until, |r| r.open == 0).await;
}

/// Polls the swarm for `run` until `done` holds or `until` passes.
async fn drive_until(
    swarm: &mut Swarm<PeerNode>,
    run: &mut Run,
    relay: PeerId,
    out: &Out,
    until: tokio::time::Instant,
    done: impl Fn(&Run) -> bool,
) {
    while !done(run) {
        let event = tokio::select! {
            e = swarm.select_next_some() => e,
            () = tokio::time::sleep(TICK) => continue,
            () = tokio::time::sleep_until(until) => return,
        };
        run.handle(event, relay, out);
    }
}

/// A `run` line, when there are several runs.
fn emit_run(out: &Out, report: &RunReport, runs: u32) {
    if runs > 1 {
        out.emit("run", json!(report));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_ok_only_with_a_ping_over_its_first_direct_connection() {
        let mut run = Run::new(1, Duration::from_secs(1), None);
        run.relayed_at = Some(Instant::now());
        assert!(!run.finished());
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/5000".parse().unwrap();
        run.direct = Some((ConnectionId::new_unchecked(7), addr, "dialer", "client"));
        run.conns.push(ConnectionId::new_unchecked(7));
        run.open = 1;
        assert!(!run.finished(), "no ping yet");
        run.ping = Some(Err("closed".into()));
        run.ping_at = Some(Instant::now());
        assert!(!run.finished(), "the dcutr outcome may still come");
        run.dcutr = Some(Ok(true));
        assert!(run.finished());
        let r = run.report(false, Duration::from_secs(1));
        assert!(!r.ok && r.direct && !r.ping);
        assert!(
            r.reason
                .unwrap()
                .contains("ping over the direct connection failed")
        );
        run.ping = Some(Ok(Duration::from_millis(3)));
        let r = run.report(false, Duration::from_secs(1));
        assert!(r.ok && r.reason.is_none());
        assert_eq!((r.ping_rtt_ms, r.dcutr_outcome), (Some(3.0), Some("ok")));
    }

    #[test]
    fn a_failed_upgrade_or_a_failed_relayed_dial_ends_the_run_with_its_reason() {
        let mut run = Run::new(2, Duration::from_secs(1), None);
        run.relayed_at = Some(Instant::now());
        run.dcutr = Some(Err("no usable address".into()));
        assert!(run.finished());
        let r = run.report(false, Duration::from_secs(1));
        assert_eq!(r.run, 2);
        assert!(!r.ok && r.reason.unwrap().contains("dcutr: no usable address"));
        let mut dial = Run::new(1, Duration::from_secs(1), None);
        dial.relayed_dial_error = Some("no reservation".into());
        assert!(dial.finished());
        let reason = dial.report(false, Duration::from_secs(1)).reason.unwrap();
        assert!(reason.contains("the dial through the relay failed: no reservation"));
        assert!(
            reason.contains("is the listener running"),
            "names the fix: {reason}"
        );
        let silent = Run::new(1, Duration::from_secs(3), None);
        assert!(!silent.finished());
        let r = silent.report(true, Duration::from_secs(3));
        assert!(r.timed_out && r.reason.unwrap().contains("no relayed connection"));
    }

    #[test]
    fn the_human_summary_gives_the_outcome_and_the_campaign_figures() {
        let ok = RunReport {
            ok: true,
            remote: Some("/ip4/203.0.113.12/tcp/5000".into()),
            time_to_direct_ms: Some(12.5),
            ..RunReport::default()
        };
        let one = human_summary(&ok, &Summary::new(1, &[12.5]));
        assert_eq!(
            one,
            "direct connection to /ip4/203.0.113.12/tcp/5000 12.5 ms after the relayed one"
        );
        let failed = RunReport {
            reason: Some("no direct connection within 35s".into()),
            ..RunReport::default()
        };
        let many = human_summary(&failed, &Summary::new(4, &[10.0, 20.0, 30.0]));
        assert_eq!(
            many,
            "no direct connection: no direct connection within 35s\n\
             3/4 runs direct (75 %); time to direct p50 20.0 ms, p90 30.0 ms, max 30.0 ms"
        );
    }

    #[test]
    fn the_flags_widen_ours_address_policy() {
        use clap::Parser;
        #[derive(Parser)]
        struct P {
            #[command(flatten)]
            o: PeerOpts,
        }
        let relay = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        let plain = P::try_parse_from(["p", "--relay", relay]).unwrap().o;
        let policy = ours_config(&plain).core.address_policy;
        assert!(!policy.allow_loopback && !policy.allow_private);
        assert_eq!(listen_addrs(&plain).len(), 2, "TCP and QUIC by default");
        let wide =
            P::try_parse_from(["p", "--relay", relay, "--allow-loopback", "--allow-private"])
                .unwrap()
                .o;
        let policy = ours_config(&wide).core.address_policy;
        assert!(policy.allow_loopback && policy.allow_private);
        assert!(ours_config(&plain).core.unilateral);
        let direct_off = P::try_parse_from(["p", "--relay", relay, "--no-unilateral"])
            .unwrap()
            .o;
        assert!(!ours_config(&direct_off).core.unilateral);
    }
}
