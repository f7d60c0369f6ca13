//! `dcutr peer`: registers at the relay, runs DCUtR over the relayed
//! stream with the addresses the relay observed, prints a timeline, then
//! proves the direct path with a round trip of data (or, after a failure,
//! proves that the relayed stream still works).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use dcutr_tokio::{
    AddressPolicy, Candidate, Config, Direct, Event, Role, Side, Transport, UpgradeFailure,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::PeerArgs;
use crate::rendezvous::{self, PairedSide};
use crate::report::{self, PeerResult, Reporter};

/// Round trips on the direct connection; the median is the direct RTT.
pub const DIRECT_PINGS: usize = 5;

/// How long to wait for the peer's answer on the direct connection or on
/// the relayed stream after the upgrade.
pub const PROOF_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of one ping on the direct connection.
const PING_LEN: usize = 8;

const RELAY_PING: &[u8] = b"dcutr relay ping\n";
const RELAY_PONG: &[u8] = b"dcutr relay pong\n";

/// Runs `dcutr peer`.
///
/// # Errors
/// Anything that is not a clean upgrade failure: bad arguments, the relay
/// unreachable, local sockets that cannot be bound.
pub async fn run(args: PeerArgs) -> anyhow::Result<ExitCode> {
    let reporter = Reporter::new(args.json);
    let result = session(args, reporter).await?;
    reporter.result(&result);
    Ok(result.exit_code())
}

/// One whole peer session; returns the result line without printing it.
///
/// # Errors
/// As [`run`].
pub async fn session(args: PeerArgs, reporter: Reporter) -> anyhow::Result<PeerResult> {
    let tcp_listener = match args.tcp {
        Some(port) => {
            let addr = SocketAddr::new(args.bind, port);
            Some(
                dcutr_tokio::tcp_listener(addr)
                    .with_context(|| format!("binding the TCP punch listener on {addr}"))?,
            )
        }
        None => None,
    };
    let tcp_local = tcp_listener
        .as_ref()
        .map(tokio::net::TcpListener::local_addr)
        .transpose()?;
    let mut registration = rendezvous::register(args.relay, &args.name, tcp_local)
        .await
        .with_context(|| format!("registering at the relay {}", args.relay))?;

    let mut local_addrs = Vec::new();
    let mut public = Vec::new();
    let route_ip = registration.local_tcp().ip();
    if let Some(local) = tcp_local {
        let observed = registration.observed_tcp();
        local_addrs.push(Candidate::tcp(observed));
        if rendezvous::is_public(observed, local, route_ip) {
            public.push(rendezvous::tcp_multiaddr(observed));
        }
    }
    let mut quic = None;
    let mut observed_udp = None;
    if let Some(port) = args.quic {
        let addr = SocketAddr::new(args.bind, port);
        let socket = dcutr_tokio::udp_socket(addr)
            .with_context(|| format!("binding the QUIC socket on {addr}"))?;
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let observed = rendezvous::observe_udp(&socket, args.relay, &args.name)
            .await
            .context("asking the relay for our UDP address")?;
        observed_udp = Some(observed);
        local_addrs.push(Candidate::quic(observed));
        let local = socket.local_addr()?;
        if rendezvous::is_public(observed, local, route_ip) {
            public.push(rendezvous::quic_multiaddr(observed));
        }
        let (server, client) = dcutr_tokio::self_signed_configs();
        quic = Some(dcutr_tokio::quic_socket(
            socket.into_std()?,
            server,
            client,
        )?);
    }
    let addrs: Vec<String> = local_addrs
        .iter()
        .map(|c| c.to_multiaddr().to_string())
        .collect();
    registration.ready(&addrs, &public).await?;
    reporter.registered(&registration, observed_udp, args.connect.as_deref());

    let paired = match &args.connect {
        Some(other) => registration.connect(other).await?,
        None => registration.wait_paired().await?,
    };
    reporter.paired(&paired);
    let side = match paired.side {
        PairedSide::Initiator => Side::Initiator,
        PairedSide::Responder => Side::Responder,
    };
    let remote_public: Vec<Candidate> = paired
        .peer_public
        .iter()
        .filter_map(|s| s.parse::<dcutr_tokio::dcutr_core::Multiaddr>().ok())
        .filter_map(|m| Candidate::from_multiaddr(&m).ok())
        .collect();

    let mut config = Config::shared_stream();
    config.address_policy = policy(&args);
    config.unilateral = !args.no_unilateral;
    let mut options = dcutr_tokio::Options::new(side)
        .config(config)
        .local_addrs(local_addrs)
        .remote_public_addrs(remote_public)
        .on_event(move |event, at| progress(reporter, event, at));
    if let Some(listener) = tcp_listener {
        options = options.tcp(listener);
    }
    if let Some(quic) = quic {
        options = options.quic(quic);
    }
    let tried = if args.tcp.is_some() {
        report::Transport::Tcp
    } else {
        report::Transport::Quic
    };
    let role = match side {
        Side::Initiator => report::Role::Server,
        Side::Responder => report::Role::Client,
    };

    match dcutr_tokio::upgrade(paired.stream, options).await {
        Ok(up) => {
            print_timeline(reporter, &up.report);
            let direct_rtt = prove_direct(up.connection, up.role)
                .await
                .context("the round trip on the direct connection")?;
            reporter.event(
                "direct_rtt",
                json!({ "ms": ms(direct_rtt) }),
                format_args!(
                    "direct path proven: {DIRECT_PINGS} round trips, median {:.2} ms",
                    ms(direct_rtt)
                ),
            );
            Ok(PeerResult {
                ok: true,
                transport: wire_transport(up.transport),
                role: wire_role(up.role),
                remote: Some(up.remote),
                attempts: up.report.attempts() as u32,
                unilateral: up.report.unilateral(),
                rtt_ms: up.report.rtt().map(ms),
                time_to_direct_ms: up.report.time_to_direct().map(ms),
                direct_rtt_ms: Some(ms(direct_rtt)),
                relay_usable: true,
                reason: None,
            })
        }
        Err(error) => {
            print_timeline(reporter, &error.report);
            if !matches!(error.reason, UpgradeFailure::Failed(_)) {
                return Err(anyhow::Error::new(error.reason).context("the upgrade could not run"));
            }
            let relay_usable = match error.relay {
                Some(relay) => prove_relay(relay, side).await,
                None => false,
            };
            reporter.event(
                "relay",
                json!({ "usable": relay_usable }),
                format_args!(
                    "staying on the relay; relayed stream {}",
                    if relay_usable {
                        "still works"
                    } else {
                        "is gone"
                    }
                ),
            );
            Ok(PeerResult {
                ok: false,
                transport: tried,
                role,
                remote: None,
                attempts: error.report.attempts() as u32,
                unilateral: false,
                rtt_ms: error.report.rtt().map(ms),
                time_to_direct_ms: None,
                direct_rtt_ms: None,
                relay_usable,
                reason: Some(error.reason.to_string()),
            })
        }
    }
}

fn policy(args: &PeerArgs) -> AddressPolicy {
    let mut policy = AddressPolicy::public_only();
    policy.allow_loopback = args.allow_loopback;
    policy.allow_private = args.allow_private;
    policy
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn wire_transport(t: Transport) -> report::Transport {
    match t {
        Transport::Tcp => report::Transport::Tcp,
        Transport::Quic => report::Transport::Quic,
    }
}

fn wire_role(r: Role) -> report::Role {
    match r {
        Role::Client => report::Role::Client,
        Role::Server => report::Role::Server,
    }
}

/// One progress line per step of the protocol, as it happens.
fn progress(reporter: Reporter, event: &Event, at: Duration) {
    let t = ms(at);
    let (name, fields, text) = match event {
        Event::UnilateralStarted { dials } => (
            "unilateral",
            json!({ "t_ms": t, "dials": dials }),
            format!("t={t:8.1} ms  dialling the peer's public address directly ({dials} dials)"),
        ),
        Event::UnilateralFailed => (
            "unilateral_failed",
            json!({ "t_ms": t }),
            format!("t={t:8.1} ms  direct dial failed; hole punching"),
        ),
        Event::AttemptStarted { attempt } => (
            "attempt",
            json!({ "t_ms": t, "attempt": attempt }),
            format!("t={t:8.1} ms  attempt {attempt}"),
        ),
        Event::RemoteAddrs {
            accepted, rejected, ..
        } => {
            let list: Vec<String> = accepted.iter().map(ToString::to_string).collect();
            (
                "peer_addrs",
                json!({ "t_ms": t, "accepted": list, "rejected": rejected.total() }),
                format!(
                    "t={t:8.1} ms  peer's addresses: {} ({} dropped)",
                    if list.is_empty() {
                        "none usable".to_owned()
                    } else {
                        list.join(" ")
                    },
                    rejected.total()
                ),
            )
        }
        Event::RttMeasured { rtt, .. } => (
            "rtt",
            json!({ "t_ms": t, "rtt_ms": ms(*rtt) }),
            format!("t={t:8.1} ms  relayed RTT {:.1} ms", ms(*rtt)),
        ),
        Event::SyncSent { punch_at, .. } => {
            let _ = punch_at;
            (
                "sync",
                json!({ "t_ms": t }),
                format!("t={t:8.1} ms  Sync sent; punching in RTT/2"),
            )
        }
        Event::SyncReceived { .. } => (
            "sync",
            json!({ "t_ms": t }),
            format!("t={t:8.1} ms  Sync received; punching now"),
        ),
        Event::Punch {
            dials,
            spray_targets,
            ..
        } => (
            "punch",
            json!({ "t_ms": t, "dials": dials, "spray_targets": spray_targets }),
            format!("t={t:8.1} ms  punch: {dials} dials, spraying {spray_targets} addresses"),
        ),
        Event::DialFailed { to, error, .. } => (
            "dial_failed",
            json!({ "t_ms": t, "to": to.to_string(), "error": error.to_string() }),
            format!("t={t:8.1} ms  dial to {to} failed: {error}"),
        ),
        Event::DirectRejected { remote, reason, .. } => (
            "rejected",
            json!({ "t_ms": t, "remote": remote.to_string(), "reason": format!("{reason:?}") }),
            format!("t={t:8.1} ms  refused a direct connection from {remote}: {reason:?}"),
        ),
        Event::AttemptFailed { attempt, reason } => (
            "attempt_failed",
            json!({ "t_ms": t, "attempt": attempt, "reason": reason.to_string() }),
            format!("t={t:8.1} ms  attempt {attempt} failed: {reason}"),
        ),
        Event::Upgraded(up) => (
            "upgraded",
            json!({ "t_ms": t, "transport": up.transport.to_string(),
                    "remote": up.remote.to_string(), "role": up.role.to_string() }),
            format!(
                "t={t:8.1} ms  UPGRADED: direct {} connection to {} as {}",
                up.transport, up.remote, up.role
            ),
        ),
        Event::Failed(failure) => (
            "failed",
            json!({ "t_ms": t, "reason": failure.to_string() }),
            format!("t={t:8.1} ms  upgrade failed: {failure}"),
        ),
        _ => return,
    };
    reporter.event(name, fields, text);
}

/// The timeline in a few lines, once the outcome is known.
fn print_timeline(reporter: Reporter, report: &dcutr_tokio::Report) {
    let dials: Vec<serde_json::Value> = report
        .timeline
        .dials
        .iter()
        .map(|d| {
            json!({
                "to": d.to.to_string(),
                "attempt": d.attempt,
                "at_ms": ms(report.offset(d.started)),
                "result": d.result.map(|r| format!("{r:?}")),
            })
        })
        .collect();
    let ttd = report.time_to_direct().map(ms);
    reporter.event(
        "timeline",
        json!({
            "attempts": report.attempts(),
            "rtt_ms": report.rtt().map(ms),
            "time_to_direct_ms": ttd,
            "total_ms": report.total().map(ms),
            "dials": dials,
        }),
        format_args!(
            "timeline: {} attempt(s), relayed RTT {}, time to direct {}, total {}",
            report.attempts(),
            fmt_ms(report.rtt()),
            fmt_ms(report.time_to_direct()),
            fmt_ms(report.total()),
        ),
    );
}

fn fmt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.1} ms", ms(d)))
}

/// A few round trips of data on the direct connection; returns the median
/// round-trip time. The client (A) pings, the server (B) echoes.
async fn prove_direct(connection: Direct, role: Role) -> anyhow::Result<Duration> {
    let run = async {
        match connection {
            Direct::Tcp(stream) => {
                stream.set_nodelay(true)?;
                let (mut read, mut write) = stream.into_split();
                ping_pong(&mut read, &mut write, role).await
            }
            Direct::Quic(conn) => {
                let (mut send, mut recv) = match role {
                    Role::Client => conn.open_bi().await?,
                    Role::Server => conn.accept_bi().await?,
                };
                let rtt = ping_pong(&mut recv, &mut send, role).await?;
                // The client's echo is the last message. The server, having
                // read it, closes the connection; the client waits for that
                // close, so no byte is lost to an early drop.
                match role {
                    Role::Server => conn.close(0u32.into(), b"done"),
                    Role::Client => {
                        let _ = conn.closed().await;
                    }
                }
                Ok(rtt)
            }
            _ => anyhow::bail!("unknown connection kind"),
        }
    };
    tokio::time::timeout(PROOF_TIMEOUT, run)
        .await
        .context("the peer did not answer on the direct connection")?
}

async fn ping_pong<R, W>(read: &mut R, write: &mut W, role: Role) -> anyhow::Result<Duration>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    // The client pings first and the server echoes; then the other way
    // round, so that each side measures the direct RTT itself.
    let rtt = match role {
        Role::Client => {
            let rtt = ping(read, write).await?;
            echo(read, write).await?;
            rtt
        }
        Role::Server => {
            echo(read, write).await?;
            ping(read, write).await?
        }
    };
    Ok(rtt)
}

/// [`DIRECT_PINGS`] round trips; the median.
async fn ping<R, W>(read: &mut R, write: &mut W) -> anyhow::Result<Duration>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut rtts = Vec::with_capacity(DIRECT_PINGS);
    let mut buf = [0u8; PING_LEN];
    for seq in 0..DIRECT_PINGS as u64 {
        let sent = Instant::now();
        write.write_all(&seq.to_be_bytes()).await?;
        write.flush().await?;
        read.read_exact(&mut buf).await?;
        anyhow::ensure!(u64::from_be_bytes(buf) == seq, "echo out of order");
        rtts.push(sent.elapsed());
    }
    rtts.sort();
    Ok(rtts[rtts.len() / 2])
}

async fn echo<R, W>(read: &mut R, write: &mut W) -> anyhow::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = [0u8; PING_LEN];
    for _ in 0..DIRECT_PINGS {
        read.read_exact(&mut buf).await?;
        write.write_all(&buf).await?;
        write.flush().await?;
    }
    Ok(())
}

/// After a failed upgrade: one round trip over the relayed stream. A pings,
/// B answers.
async fn prove_relay(relay: BufReader<TcpStream>, side: Side) -> bool {
    let mut relay = relay;
    let run = async {
        let mut line = Vec::new();
        match side {
            Side::Responder => {
                relay.get_mut().write_all(RELAY_PING).await?;
                relay.read_until(b'\n', &mut line).await?;
                Ok::<_, std::io::Error>(line == RELAY_PONG)
            }
            Side::Initiator => {
                relay.read_until(b'\n', &mut line).await?;
                if line != RELAY_PING {
                    return Ok(false);
                }
                relay.get_mut().write_all(RELAY_PONG).await?;
                Ok(true)
            }
        }
    };
    matches!(tokio::time::timeout(PROOF_TIMEOUT, run).await, Ok(Ok(true)))
}
