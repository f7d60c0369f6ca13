//! One rust-libp2p node for the NAT lab (`natlab libp2p`): a circuit relay,
//! the peer that holds a reservation there (`listen`, the spec's B), or the
//! peer that dials it through the relay (`dial`, the spec's A), running
//! either stock `libp2p::dcutr` or ours (`--dcutr stock|ours`).
//!
//! ```text
//! lab_node relay  --seed 1 --listen /ip4/203.0.113.1/tcp/4000
//! lab_node listen --seed 2 --dcutr stock --listen /ip4/0.0.0.0/tcp/5000 \
//!                 --relay /ip4/203.0.113.1/tcp/4000/p2p/<relay id>
//! lab_node dial   --seed 3 --dcutr ours  --listen /ip4/0.0.0.0/tcp/5000 \
//!                 --relay /ip4/203.0.113.1/tcp/4000/p2p/<relay id> --peer <listener id>
//! lab_node id     --seed 2          # prints the peer id of a seed
//! ```
//!
//! The same commands with `/udp/PORT/quic-v1` addresses run everything
//! over QUIC. The swarms are the ones of this crate's swarm tests: TCP
//! (dials reuse the listening port, libp2p-tcp's `PortUse::Reuse`) with
//! plaintext and yamux, or QUIC (dials leave from the listening socket),
//! identify, the relay client. Ours runs with `Config::default()`, whose
//! address policy accepts the lab's 203.0.113.0/24 (a documentation range
//! counts as public in the core) and drops the private LAN addresses.
//!
//! stdout: one JSON object per line, each with an `"event"` and `"t_ms"`
//! (milliseconds since start). The relay prints `listening` (with its
//! `peer_id`), the listener `reserved` once it can be dialled, both peers
//! `relayed-connection`, `direct-connection` (with `"relayed":false`), the
//! DCUtR outcome (`dcutr`, and `dcutr-progress` for ours), the `echo` over
//! the direct connection, and last a `result`:
//!
//! ```text
//! {"event":"result","ok":bool,"direct":bool,"reason":string|null,
//!  "mode":"listen"|"dial","dcutr":"stock"|"ours","remote":multiaddr|null,
//!  "endpoint":"dialer"|"listener"|null,"role":"client"|"server"|null,
//!  "time_to_direct_ms":float|null,"echo":bool,
//!  "dcutr_outcome":"ok"|"error"|null,"dcutr_error":string|null, ...}
//! ```
//!
//! `ok` means a non-relayed connection to the peer came up and bytes were
//! echoed over exactly that connection. Exit code 0 when ok, 1 when not
//! (no direct connection in time, echo failed), 2 on a setup error (no
//! relay, bad arguments). Logs go to stderr (`RUST_LOG`).

#![allow(clippy::large_enum_variant)] // identify's `Info` in the derived event

// The swarm tests' echo behaviour: sends bytes over one chosen connection.
#[allow(dead_code)]
#[path = "../tests/swarm/common/echo.rs"]
mod echo;

use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use dcutr_libp2p as ours;
use futures::StreamExt;
use futures::future::Either;
use libp2p::core::multiaddr::Protocol;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport as _};
use libp2p::core::upgrade::Version;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, dcutr as stock, identify, identity, plaintext, quic, relay, tcp, yamux,
};
use serde_json::{Value, json};

/// Default limit for the whole run of a peer, from start to its result:
/// three failing attempts of ours take about 30 s (10 s per step).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(35);

/// How long setup may take: reaching the relay, the reservation, the
/// observed address from identify. A few relayed round trips.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// After the echo succeeded, how long to wait for the DCUtR behaviour's
/// own outcome event (stock B reports nothing when the peer's dial won).
const DCUTR_OUTCOME_WAIT: Duration = Duration::from_secs(2);

/// After we are done, how long we stay up so that the peer's echo over
/// the same connection can finish; we leave earlier once the peer has
/// closed every connection to us.
const EXIT_LINGER: Duration = Duration::from_secs(1);

/// Connections stay open while idle for this long: longer than a run.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Identify's protocol version string.
const IDENTIFY_PROTOCOL: &str = "/dcutr-lab/1.0.0";

#[derive(NetworkBehaviour)]
struct RelayNode {
    relay: relay::Behaviour,
    identify: identify::Behaviour,
}

#[derive(NetworkBehaviour)]
struct PeerNode {
    relay: relay::client::Behaviour,
    identify: identify::Behaviour,
    stock: Toggle<stock::Behaviour>,
    ours: Toggle<ours::Behaviour<ours::Report>>,
    echo: echo::Behaviour,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Relay,
    Listen,
    Dial,
    Id,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Stock,
    Ours,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Stock => "stock",
            Impl::Ours => "ours",
        }
    }
}

struct Args {
    mode: Mode,
    dcutr: Impl,
    seed: u64,
    listen: Option<Multiaddr>,
    relay: Option<Multiaddr>,
    peer: Option<PeerId>,
    timeout: Duration,
}

const USAGE: &str = "usage: lab_node relay|listen|dial|id --seed N [--dcutr stock|ours] \
[--listen MULTIADDR] [--relay MULTIADDR/p2p/ID] [--peer PEER_ID] [--timeout-s S]";

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mode = match argv.next().as_deref() {
        Some("relay") => Mode::Relay,
        Some("listen") => Mode::Listen,
        Some("dial") => Mode::Dial,
        Some("id") => Mode::Id,
        other => return Err(format!("unknown mode {other:?}")),
    };
    let mut args = Args {
        mode,
        dcutr: Impl::Ours,
        seed: 0,
        listen: None,
        relay: None,
        peer: None,
        timeout: DEFAULT_TIMEOUT,
    };
    while let Some(flag) = argv.next() {
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--dcutr" => {
                args.dcutr = match value.as_str() {
                    "stock" => Impl::Stock,
                    "ours" => Impl::Ours,
                    _ => return Err(bad(&"expected stock or ours")),
                }
            }
            "--seed" => args.seed = value.parse().map_err(|e| bad(&e))?,
            "--listen" => args.listen = Some(value.parse().map_err(|e| bad(&e))?),
            "--relay" => args.relay = Some(value.parse().map_err(|e| bad(&e))?),
            "--peer" => args.peer = Some(PeerId::from_str(&value).map_err(|e| bad(&e))?),
            "--timeout-s" => {
                let s: f64 = value.parse().map_err(|e| bad(&e))?;
                args.timeout = Duration::try_from_secs_f64(s).map_err(|e| bad(&e))?;
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let needs = |what: &str, missing: bool| {
        if missing {
            Err(format!("{mode:?} needs {what}"))
        } else {
            Ok(())
        }
    };
    match mode {
        Mode::Relay => needs("--listen", args.listen.is_none())?,
        Mode::Listen => {
            needs("--listen", args.listen.is_none())?;
            needs("--relay", args.relay.is_none())?;
        }
        Mode::Dial => {
            needs("--listen", args.listen.is_none())?;
            needs("--relay", args.relay.is_none())?;
            needs("--peer", args.peer.is_none())?;
        }
        Mode::Id => {}
    }
    if let Some(relay) = &args.relay
        && !matches!(relay.iter().last(), Some(Protocol::P2p(_)))
    {
        return Err(format!("--relay {relay} must end in /p2p/<relay id>"));
    }
    Ok(args)
}

/// The node's key: a fixed function of the seed, so every peer id is known
/// in advance (`lab_node id --seed N`).
fn keypair(seed: u64) -> identity::Keypair {
    let mut secret = [0x6c_u8; 32];
    secret[..8].copy_from_slice(&seed.to_le_bytes());
    identity::Keypair::ed25519_from_bytes(secret).expect("any 32 bytes are an ed25519 secret")
}

/// Prints JSON lines with the time since start.
struct Out {
    start: Instant,
}

impl Out {
    fn emit(&self, event: &str, mut fields: Value) {
        let ms = self.start.elapsed().as_secs_f64() * 1e3;
        if let Value::Object(map) = &mut fields {
            map.insert("event".into(), event.into());
            map.insert("t_ms".into(), json!((ms * 10.0).round() / 10.0));
        }
        println!("{fields}");
    }
}

fn swarm_config() -> libp2p::swarm::Config {
    libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
}

fn tcp_config() -> tcp::Config {
    tcp::Config::default().nodelay(true)
}

/// `upgraded` (secured and multiplexed) or QUIC, which brings its own.
fn or_quic(
    upgraded: Boxed<(PeerId, StreamMuxerBox)>,
    key: &identity::Keypair,
) -> Boxed<(PeerId, StreamMuxerBox)> {
    upgraded
        .or_transport(quic::tokio::Transport::new(quic::Config::new(key)))
        .map(|either, _| match either {
            Either::Left(out) => out,
            Either::Right((peer, conn)) => (peer, StreamMuxerBox::new(conn)),
        })
        .boxed()
}

fn build_relay(key: &identity::Keypair) -> Swarm<RelayNode> {
    let peer = key.public().to_peer_id();
    let tcp = tcp::tokio::Transport::new(tcp_config())
        .upgrade(Version::V1)
        .authenticate(plaintext::Config::new(key))
        .multiplex(yamux::Config::default())
        .boxed();
    Swarm::new(
        or_quic(tcp, key),
        RelayNode {
            relay: relay::Behaviour::new(peer, relay::Config::default()),
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.to_owned(),
                key.public(),
            )),
        },
        peer,
        swarm_config(),
    )
}

fn build_peer(key: &identity::Keypair, dcutr: Impl) -> Swarm<PeerNode> {
    let peer = key.public().to_peer_id();
    let (relay_transport, relay_client) = relay::client::new(peer);
    let relay_or_tcp = relay_transport
        .or_transport(tcp::tokio::Transport::new(tcp_config()))
        .upgrade(Version::V1)
        .authenticate(plaintext::Config::new(key))
        .multiplex(yamux::Config::default())
        .boxed();
    let (stock, ours) = match dcutr {
        Impl::Stock => (Some(stock::Behaviour::new(peer)), None),
        Impl::Ours => (
            None,
            // The default config: public addresses only (203.0.113.0/24
            // included), unilateral dial on, three attempts.
            Some(
                ours::Behaviour::with_config(peer, ours::Config::default())
                    .expect("the default config is valid"),
            ),
        ),
    };
    Swarm::new(
        or_quic(relay_or_tcp, key),
        PeerNode {
            relay: relay_client,
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.to_owned(),
                key.public(),
            )),
            stock: stock.into(),
            ours: ours.into(),
            echo: echo::Behaviour::default(),
        },
        peer,
        swarm_config(),
    )
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

fn endpoint_json(endpoint: &ConnectedPoint) -> (Multiaddr, &'static str, &'static str) {
    match endpoint {
        ConnectedPoint::Dialer {
            address,
            role_override,
            ..
        } => (
            address.clone(),
            "dialer",
            // The role in security and muxer negotiation.
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,dcutr_libp2p=debug,libp2p_dcutr=debug")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("lab_node: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let out = Out {
        start: Instant::now(),
    };
    let key = keypair(args.seed);
    match args.mode {
        Mode::Id => {
            println!("{}", key.public().to_peer_id());
            ExitCode::SUCCESS
        }
        Mode::Relay => run_relay(&args, &key, &out).await,
        Mode::Listen | Mode::Dial => run_peer(&args, &key, &out).await,
    }
}

async fn run_relay(args: &Args, key: &identity::Keypair, out: &Out) -> ExitCode {
    let mut swarm = build_relay(key);
    let listen = args.listen.clone().expect("checked by parse_args");
    if let Err(e) = swarm.listen_on(listen.clone()) {
        out.emit(
            "error",
            json!({"error": format!("listen on {listen}: {e}")}),
        );
        return ExitCode::from(2);
    }
    // Reservations hand out the relay's external addresses.
    swarm.add_external_address(listen);
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => out.emit(
                "listening",
                json!({"addr": address.to_string(), "peer_id": swarm.local_peer_id().to_string()}),
            ),
            SwarmEvent::Behaviour(RelayNodeEvent::Relay(e)) => {
                out.emit("relay", json!({"detail": format!("{e:?}")}));
            }
            SwarmEvent::ListenerError { error, .. } => {
                out.emit("error", json!({"error": error.to_string()}));
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                out.emit(
                    "error",
                    json!({"error": format!("listener closed: {reason:?}")}),
                );
                return ExitCode::from(2);
            }
            _ => {}
        }
    }
}

/// What a peer saw, for its result line.
#[derive(Default)]
struct State {
    relayed_at: Option<Instant>,
    /// The first direct connection: id, remote, endpoint kind, role.
    direct: Option<(ConnectionId, Multiaddr, &'static str, &'static str)>,
    direct_connections: u32,
    time_to_direct: Option<Duration>,
    /// Echo payload sent over the direct connection, and when.
    echo_sent: Option<(Vec<u8>, Instant)>,
    echo_ok: Option<bool>,
    echo_done_at: Option<Instant>,
    /// The DCUtR behaviour's outcome: Ok(direct connection?) or the error.
    dcutr: Option<Result<bool, String>>,
    /// Connections to the peer that are open now.
    open: u32,
    /// When we finished and started lingering.
    lingering_since: Option<Instant>,
    /// The dialer's dial of the peer's relayed address, and its error.
    relayed_dial: Option<ConnectionId>,
    relayed_dial_error: Option<String>,
}

impl State {
    fn finished(&self) -> bool {
        self.echo_ok.is_some()
            && (self.dcutr.is_some()
                || self
                    .echo_done_at
                    .is_some_and(|t| t.elapsed() >= DCUTR_OUTCOME_WAIT))
    }
}

async fn run_peer(args: &Args, key: &identity::Keypair, out: &Out) -> ExitCode {
    let mut swarm = build_peer(key, args.dcutr);
    let me = *swarm.local_peer_id();
    let mode = if args.mode == Mode::Listen {
        "listen"
    } else {
        "dial"
    };
    let relay_addr = args.relay.clone().expect("checked by parse_args");
    let listen = args.listen.clone().expect("checked by parse_args");
    let deadline = tokio::time::Instant::now() + args.timeout;
    let setup_deadline = tokio::time::Instant::now() + SETUP_TIMEOUT.min(args.timeout);
    let fail_setup = |what: String| {
        out.emit("error", json!({"error": what.clone()}));
        out.emit(
            "result",
            json!({"ok": false, "direct": false, "reason": what, "mode": mode,
                   "dcutr": args.dcutr.name(), "peer_id": me.to_string(),
                   "remote": null, "endpoint": null, "role": null,
                   "time_to_direct_ms": null, "echo": false,
                   "dcutr_outcome": null, "dcutr_error": null}),
        );
        ExitCode::from(2)
    };

    // Our TCP listener first: every later dial (relay included) leaves
    // from its port.
    if let Err(e) = swarm.listen_on(listen.clone()) {
        return fail_setup(format!("listen on {listen}: {e}"));
    }
    let setup = async {
        let mut listening = false;
        while !listening {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                out.emit("listening", json!({"addr": address.to_string()}));
                listening = true;
            }
        }
        // Connect to the relay and learn our observed address from it,
        // before any relayed connection exists: stock fixes the addresses
        // it sends in Connect when the relayed connection is made.
        let reserve = args.mode == Mode::Listen;
        let circuit = relay_addr.clone().with(Protocol::P2pCircuit);
        let result = if reserve {
            swarm
                .listen_on(circuit.clone())
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            swarm.dial(relay_addr.clone()).map_err(|e| e.to_string())
        };
        if let Err(e) = result {
            return Err(format!("reaching the relay {relay_addr}: {e}"));
        }
        let (mut reserved, mut relayed_listen, mut observed) = (!reserve, !reserve, None);
        while !(reserved && relayed_listen && observed.is_some()) {
            match swarm.select_next_some().await {
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
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    return Err(format!("reaching the relay: {error}"));
                }
                SwarmEvent::ListenerClosed { reason, .. } => {
                    return Err(format!("relayed listener closed: {reason:?}"));
                }
                _ => {}
            }
        }
        Ok(observed.expect("loop condition"))
    };
    let observed = match tokio::time::timeout_at(setup_deadline, setup).await {
        Ok(Ok(observed)) => observed,
        Ok(Err(e)) => return fail_setup(e),
        Err(_) => {
            return fail_setup(format!(
                "setup (relay, reservation, observed address) took over {SETUP_TIMEOUT:?}"
            ));
        }
    };
    let relayed_addr = relay_addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(me));
    let mut relayed_dial = None;
    let peer = match args.mode {
        Mode::Listen => {
            out.emit(
                "reserved",
                json!({"peer_id": me.to_string(), "relayed_addr": relayed_addr.to_string(),
                       "observed": observed.to_string()}),
            );
            None
        }
        _ => {
            let peer = args.peer.expect("checked by parse_args");
            let target = relay_addr
                .clone()
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(peer));
            out.emit(
                "dialing",
                json!({"peer_id": me.to_string(), "to": target.to_string(),
                       "observed": observed.to_string()}),
            );
            let opts = DialOpts::from(target.clone());
            relayed_dial = Some(opts.connection_id());
            if let Err(e) = swarm.dial(opts) {
                return fail_setup(format!("dialling {target}: {e}"));
            }
            Some(peer)
        }
    };

    let mut st = State {
        relayed_dial,
        ..State::default()
    };
    let mut peer = peer;
    let relay_peer = match relay_addr.iter().last() {
        Some(Protocol::P2p(id)) => id,
        _ => unreachable!("checked by parse_args"),
    };
    let timed_out = loop {
        if st.relayed_dial_error.is_some() {
            break false;
        }
        if st.finished() {
            let since = *st.lingering_since.get_or_insert_with(Instant::now);
            if st.open == 0 || since.elapsed() >= EXIT_LINGER {
                break false;
            }
        }
        let tick = tokio::time::sleep(Duration::from_millis(100));
        let event = tokio::select! {
            e = swarm.select_next_some() => e,
            () = tick => continue,
            () = tokio::time::sleep_until(deadline) => break true,
        };
        handle_event(&mut swarm, event, &mut st, &mut peer, relay_peer, out);
    };

    let ok = st.direct.is_some() && st.echo_ok == Some(true);
    let reason = if ok {
        None
    } else if let Some(e) = &st.relayed_dial_error {
        Some(format!("the dial through the relay failed: {e}"))
    } else if st.relayed_at.is_none() {
        Some("no relayed connection to the peer".to_owned())
    } else if st.direct.is_none() {
        Some(match &st.dcutr {
            Some(Err(e)) => format!("no direct connection; dcutr: {e}"),
            _ if timed_out => format!("no direct connection within {:?}", args.timeout),
            _ => "no direct connection".to_owned(),
        })
    } else if st.echo_ok == Some(false) {
        Some("the echo over the direct connection came back wrong".to_owned())
    } else {
        Some(format!(
            "no echo over the direct connection within {:?}",
            args.timeout
        ))
    };
    let (remote, endpoint, role) = match &st.direct {
        Some((_, remote, endpoint, role)) => {
            (json!(remote.to_string()), json!(endpoint), json!(role))
        }
        None => (Value::Null, Value::Null, Value::Null),
    };
    out.emit(
        "result",
        json!({
            "ok": ok,
            "direct": st.direct.is_some(),
            "reason": reason,
            "mode": mode,
            "dcutr": args.dcutr.name(),
            "peer_id": me.to_string(),
            "remote_peer_id": peer.map(|p| p.to_string()),
            "remote": remote,
            "endpoint": endpoint,
            "role": role,
            "direct_connections": st.direct_connections,
            "time_to_direct_ms": st.time_to_direct.map(|d| d.as_secs_f64() * 1e3),
            "echo": st.echo_ok == Some(true),
            "dcutr_outcome": match &st.dcutr { Some(Ok(_)) => json!("ok"), Some(Err(_)) => json!("error"), None => Value::Null },
            "dcutr_error": match &st.dcutr { Some(Err(e)) => json!(e), _ => Value::Null },
            "dcutr_connection_direct": match &st.dcutr { Some(Ok(d)) => json!(d), _ => Value::Null },
            "timed_out": timed_out,
        }),
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn handle_event(
    swarm: &mut Swarm<PeerNode>,
    event: SwarmEvent<PeerNodeEvent>,
    st: &mut State,
    peer: &mut Option<PeerId>,
    relay_peer: PeerId,
    out: &Out,
) {
    match event {
        SwarmEvent::ConnectionEstablished {
            peer_id,
            connection_id,
            endpoint,
            ..
        } if peer_id != relay_peer => {
            // The listener learns its peer from the relayed connection.
            let expected = *peer.get_or_insert(peer_id);
            if peer_id != expected {
                out.emit("unexpected-peer", json!({"peer_id": peer_id.to_string()}));
                return;
            }
            st.open += 1;
            let (remote, kind, role) = endpoint_json(&endpoint);
            if endpoint.is_relayed() {
                st.relayed_at.get_or_insert_with(Instant::now);
                out.emit(
                    "relayed-connection",
                    json!({"remote_peer_id": peer_id.to_string(), "remote_addr": remote.to_string(),
                           "endpoint": kind, "relayed": true}),
                );
                return;
            }
            st.direct_connections += 1;
            let since_relayed = st.relayed_at.map(|t| t.elapsed());
            out.emit(
                "direct-connection",
                json!({"remote_peer_id": peer_id.to_string(), "remote_addr": remote.to_string(),
                       "endpoint": kind, "role": role, "relayed": false,
                       "ms_since_relayed": since_relayed.map(|d| d.as_secs_f64() * 1e3),
                       "first": st.direct.is_none()}),
            );
            if st.direct.is_none() {
                st.direct = Some((connection_id, remote, kind, role));
                st.time_to_direct = since_relayed;
                let payload = format!(
                    "hello over the direct connection from {}",
                    swarm.local_peer_id()
                )
                .into_bytes();
                swarm
                    .behaviour_mut()
                    .echo
                    .send(peer_id, connection_id, payload.clone());
                st.echo_sent = Some((payload, Instant::now()));
            }
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            connection_id,
            endpoint,
            cause,
            ..
        } if peer_id != relay_peer && Some(peer_id) == *peer => {
            st.open = st.open.saturating_sub(1);
            out.emit(
                "connection-closed",
                json!({"relayed": endpoint.is_relayed(),
                       "direct_first": st.direct.as_ref().is_some_and(|d| d.0 == connection_id),
                       "cause": cause.map(|c| c.to_string())}),
            );
        }
        SwarmEvent::Behaviour(PeerNodeEvent::Echo(e)) => {
            let is_direct = st.direct.as_ref().is_some_and(|d| d.0 == e.connection_id);
            let ok = is_direct
                && st
                    .echo_sent
                    .as_ref()
                    .is_some_and(|(payload, _)| *payload == e.reply);
            let rtt = st.echo_sent.as_ref().map(|(_, t)| t.elapsed());
            out.emit(
                "echo",
                json!({"ok": ok, "bytes": e.reply.len(), "over_direct": is_direct,
                       "rtt_ms": rtt.map(|d| d.as_secs_f64() * 1e3)}),
            );
            if is_direct && st.echo_ok.is_none() {
                st.echo_ok = Some(ok);
                st.echo_done_at = Some(Instant::now());
            }
        }
        SwarmEvent::Behaviour(PeerNodeEvent::Stock(stock::Event {
            remote_peer_id,
            result,
        })) => {
            let outcome = result
                .map(|id| st.direct.as_ref().is_some_and(|d| d.0 == id))
                .map_err(|e| format!("{e}: {e:?}"));
            out.emit(
                "dcutr",
                json!({"impl": "stock", "remote_peer_id": remote_peer_id.to_string(),
                       "ok": outcome.is_ok(), "error": outcome.as_ref().err(),
                       "names_first_direct": outcome.as_ref().ok()}),
            );
            st.dcutr.get_or_insert(outcome);
        }
        SwarmEvent::Behaviour(PeerNodeEvent::Ours(ours::Report::Outcome {
            event, side, ..
        })) => {
            let outcome = event
                .result
                .map(|id| st.direct.as_ref().is_some_and(|d| d.0 == id))
                .map_err(|e| e.to_string());
            out.emit(
                "dcutr",
                json!({"impl": "ours", "remote_peer_id": event.remote_peer_id.to_string(),
                       "side": side.to_string(), "ok": outcome.is_ok(),
                       "error": outcome.as_ref().err(), "names_first_direct": outcome.as_ref().ok()}),
            );
            st.dcutr.get_or_insert(outcome);
        }
        SwarmEvent::Behaviour(PeerNodeEvent::Ours(ours::Report::Progress(p))) => {
            out.emit(
                "dcutr-progress",
                json!({"side": p.side.to_string(), "detail": format!("{:?}", p.event)}),
            );
        }
        SwarmEvent::OutgoingConnectionError {
            peer_id,
            connection_id,
            error,
        } => {
            out.emit(
                "dial-error",
                json!({"peer_id": peer_id.map(|p| p.to_string()), "error": error.to_string()}),
            );
            if st.relayed_dial == Some(connection_id) {
                st.relayed_dial_error = Some(error.to_string());
            }
        }
        SwarmEvent::IncomingConnectionError {
            send_back_addr,
            error,
            ..
        } => out.emit(
            "incoming-error",
            json!({"from": send_back_addr.to_string(), "error": error.to_string()}),
        ),
        SwarmEvent::NewExternalAddrCandidate { address } => {
            out.emit("observed", json!({"addr": address.to_string()}));
        }
        _ => {}
    }
}
