//! `dcutr peer`: registers at the relay, runs DCUtR over the relayed
//! stream with the addresses the relay observed, prints a timeline, then
//! proves the direct path with a round trip of data (or, after a failure,
//! proves that the relayed stream still works).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use dcutr_driver::{DirectConnection, Report};
use dcutr_tokio::{AddressPolicy, Candidate, Config, Event, Role, Side, Transport, UpgradeFailure};
use futures_util::{AsyncReadExt, AsyncWriteExt};
use serde_json::json;

use crate::pairing;
use crate::rendezvous::{self, PairedSide};
use crate::report::{self, PeerResult, Reporter};
use crate::{PeerArgs, Runtime};

/// How many fresh codes B draws when the relay says a nameplate is taken.
pub const CODE_TRIES: usize = 5;

async fn register(
    args: &PeerArgs,
    name: &str,
    tcp_local: Option<SocketAddr>,
) -> anyhow::Result<rendezvous::Registration> {
    rendezvous::register(args.relay, name, tcp_local)
        .await
        .with_context(|| format!("registering at the relay {}", args.relay))
}

/// B without a code: draws one whose nameplate is free at the relay.
async fn register_fresh(
    args: &PeerArgs,
    tcp_local: Option<SocketAddr>,
) -> anyhow::Result<(pairing::Code, rendezvous::Registration)> {
    let mut last = None;
    for _ in 0..CODE_TRIES {
        let code = pairing::Code::generate()?;
        match register(args, &code.relay_name(), tcp_local).await {
            Ok(registration) => return Ok((code, registration)),
            Err(error) => last = Some(error),
        }
    }
    Err(last.expect("tried at least once"))
}

fn random_hex() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no OS randomness"))?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Round trips on the direct connection; the median is the direct RTT.
pub const DIRECT_PINGS: usize = 5;

/// How long the proof after the upgrade (5 round trips each way on the
/// direct connection, or one on the relayed stream after a failure) may
/// take. Two round trips suffice on a clean path; the margin is for TCP's
/// retransmission backoff on a lossy one (the NAT lab's 30 % loss cases).
pub const PROOF_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for the QUIC endpoint to send its last close frames.
pub const QUIC_DRAIN_LIMIT: Duration = Duration::from_secs(2);

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

/// What the upgrade needs besides the relayed stream, runtime-neutral:
/// the punch sockets are plain std sockets until the chosen runtime takes
/// them.
struct Plan {
    side: Side,
    config: Config,
    local_addrs: Vec<Candidate>,
    remote_public: Vec<Candidate>,
    tcp: Option<std::net::TcpListener>,
    udp: Option<std::net::UdpSocket>,
    /// Our certificate, whose fingerprint the PAKE sent.
    identity: dcutr_driver::Identity,
    /// The peer's fingerprint, authenticated by the PAKE.
    peer_fingerprint: dcutr_driver::Fingerprint,
    reporter: Reporter,
}

/// How the upgrade and its proof ended.
enum Finished {
    Upgraded {
        transport: Transport,
        role: Role,
        remote: SocketAddr,
        report: Report,
        direct_rtt: Duration,
    },
    Failed {
        reason: UpgradeFailure,
        report: Report,
        relay_usable: bool,
    },
    /// The core upgraded, but the direct connection did not carry the
    /// proof's data in time (a path too lossy to use).
    ProofFailed {
        transport: Transport,
        role: Role,
        report: Report,
        error: String,
    },
}

/// One whole peer session; returns the result line without printing it.
///
/// # Errors
/// As [`run`].
pub async fn session(args: PeerArgs, reporter: Reporter) -> anyhow::Result<PeerResult> {
    let tcp = match args.tcp {
        Some(port) => {
            let addr = SocketAddr::new(args.bind, port);
            Some(
                dcutr_driver::net::reuse_listener(addr)
                    .with_context(|| format!("binding the TCP punch listener on {addr}"))?,
            )
        }
        None => None,
    };
    let tcp_local = tcp
        .as_ref()
        .map(std::net::TcpListener::local_addr)
        .transpose()?;
    // B waits under the code's relay name; A takes a random one and asks
    // for B's. The relay never sees a code.
    let given = args
        .connect
        .clone()
        .or_else(|| args.code.clone())
        .or_else(|| {
            args.name
                .as_deref()
                .and_then(|n| pairing::Code::parse(n).ok())
        });
    let generated = given.is_none();
    let (code, mut registration) = if args.connect.is_some() {
        let code = given.expect("connect gives the code");
        let ours = format!("a-{}", random_hex()?);
        (code, register(&args, &ours, tcp_local).await?)
    } else if let Some(code) = given {
        let registration = register(&args, &code.relay_name(), tcp_local).await?;
        (code, registration)
    } else {
        register_fresh(&args, tcp_local).await?
    };
    if generated {
        reporter.event(
            "code",
            json!({ "code": code.to_string() }),
            format_args!("pairing code: {code}  (the peer runs: dcutr peer --connect {code} ...)"),
        );
    }

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
    let mut udp = None;
    let mut observed_udp = None;
    if let Some(port) = args.quic {
        let addr = SocketAddr::new(args.bind, port);
        let socket = dcutr_driver::net::udp_socket(addr)
            .with_context(|| format!("binding the QUIC socket on {addr}"))?;
        let local = socket.local_addr()?;
        // Ask through a clone registered with tokio; the socket itself
        // goes to the runtime that punches.
        let probe = tokio::net::UdpSocket::from_std(socket.try_clone()?)?;
        let observed = rendezvous::observe_udp(&probe, args.relay, registration.name())
            .await
            .context("asking the relay for our UDP address")?;
        drop(probe);
        observed_udp = Some(observed);
        local_addrs.push(Candidate::quic(observed));
        if rendezvous::is_public(observed, local, route_ip) {
            public.push(rendezvous::quic_multiaddr(observed));
        }
        udp = Some(socket);
    }
    let addrs: Vec<String> = local_addrs
        .iter()
        .map(|c| c.to_multiaddr().to_string())
        .collect();
    registration.ready(&addrs, &public).await?;
    let asking_for = args.connect.as_ref().map(|c| c.relay_name());
    reporter.registered(&registration, observed_udp, asking_for.as_deref());

    let mut paired = match &asking_for {
        Some(other) => registration.connect(other).await?,
        None => registration.wait_paired().await?,
    };
    reporter.paired(&paired);
    let side = match paired.side {
        PairedSide::Initiator => Side::Initiator,
        PairedSide::Responder => Side::Responder,
    };
    let tried = if args.tcp.is_some() {
        report::Transport::Tcp
    } else {
        report::Transport::Quic
    };
    // The PAKE over the relayed stream: the code authenticates each side's
    // certificate fingerprint, which the upgrade then pins.
    let identity = dcutr_driver::Identity::generate().context("making our TLS certificate")?;
    let peer_fingerprint = match pairing::authenticate(
        &mut paired.stream,
        &code,
        paired.side,
        identity.fingerprint(),
    )
    .await
    {
        Ok(fp) => fp,
        Err(error) => {
            reporter.event(
                "pairing_failed",
                json!({ "reason": error.to_string() }),
                format_args!("{error}"),
            );
            return Ok(PeerResult {
                ok: false,
                transport: tried,
                role: match side {
                    Side::Initiator => report::Role::Server,
                    Side::Responder => report::Role::Client,
                },
                remote: None,
                attempts: 0,
                unilateral: false,
                rtt_ms: None,
                time_to_direct_ms: None,
                direct_rtt_ms: None,
                relay_usable: false,
                reason: Some(error.to_string()),
            });
        }
    };
    reporter.event(
        "authenticated",
        json!({ "peer_fingerprint": hex(&peer_fingerprint) }),
        format_args!(
            "the code checks out: the peer's certificate is {}",
            hex(&peer_fingerprint[..8])
        ),
    );
    drop(code);
    let remote_public: Vec<Candidate> = paired
        .peer_public
        .iter()
        .filter_map(|s| s.parse::<dcutr_core::filter::Multiaddr>().ok())
        .filter_map(|m| Candidate::from_multiaddr(&m).ok())
        .collect();
    let mut config = Config::shared_stream();
    config.address_policy = policy(&args);
    config.unilateral = !args.no_unilateral;
    let plan = Plan {
        side,
        config,
        local_addrs,
        remote_public,
        tcp,
        udp,
        identity,
        peer_fingerprint,
        reporter,
    };

    let finished = match args.runtime {
        Runtime::Tokio => upgrade_on_tokio(plan, paired.stream).await?,
        rt @ (Runtime::Smol | Runtime::AsyncStd) => {
            // The relayed stream moves to the other runtime with the bytes
            // that already arrived behind the `paired` line.
            let buffered = paired.stream.buffer().to_vec();
            let stream = paired.stream.into_inner().into_std()?;
            tokio::task::spawn_blocking(move || upgrade_on_async_io(rt, plan, stream, buffered))
                .await??
        }
    };

    Ok(match finished {
        Finished::Upgraded {
            transport,
            role,
            remote,
            report,
            direct_rtt,
        } => {
            reporter.event(
                "direct_rtt",
                json!({ "ms": ms(direct_rtt) }),
                format_args!(
                    "direct path proven: {DIRECT_PINGS} round trips each way, median {:.2} ms",
                    ms(direct_rtt)
                ),
            );
            PeerResult {
                ok: true,
                transport: wire_transport(transport),
                role: wire_role(role),
                remote: Some(remote),
                attempts: report.attempts() as u32,
                unilateral: report.unilateral(),
                rtt_ms: report.rtt().map(ms),
                time_to_direct_ms: report.time_to_direct().map(ms),
                direct_rtt_ms: Some(ms(direct_rtt)),
                relay_usable: true,
                reason: None,
            }
        }
        Finished::ProofFailed {
            transport,
            role,
            report,
            error,
        } => {
            reporter.event(
                "proof_failed",
                json!({ "reason": error }),
                format_args!("the direct connection did not carry data: {error}"),
            );
            PeerResult {
                ok: false,
                transport: wire_transport(transport),
                role: wire_role(role),
                remote: None,
                attempts: report.attempts() as u32,
                unilateral: report.unilateral(),
                rtt_ms: report.rtt().map(ms),
                time_to_direct_ms: None,
                direct_rtt_ms: None,
                relay_usable: false,
                reason: Some(format!(
                    "upgraded, but the direct connection failed the data proof: {error}"
                )),
            }
        }
        Finished::Failed {
            reason,
            report,
            relay_usable,
        } => {
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
            PeerResult {
                ok: false,
                transport: tried,
                role: match side {
                    Side::Initiator => report::Role::Server,
                    Side::Responder => report::Role::Client,
                },
                remote: None,
                attempts: report.attempts() as u32,
                unilateral: false,
                rtt_ms: report.rtt().map(ms),
                time_to_direct_ms: None,
                direct_rtt_ms: None,
                relay_usable,
                reason: Some(reason.to_string()),
            }
        }
    })
}

impl Plan {
    /// The upgrade's options for any adapter: `listener` hands the punch
    /// listener to the runtime, `quic` builds the endpoint on it. Also
    /// returns a handle on the endpoint, to drain it at the end.
    fn options<L>(
        self,
        listener: impl FnOnce(std::net::TcpListener) -> std::io::Result<L>,
        quic: impl FnOnce(std::net::UdpSocket) -> std::io::Result<dcutr_driver::QuicSocket>,
    ) -> anyhow::Result<(dcutr_driver::Options<L>, Option<quinn::Endpoint>)> {
        let reporter = self.reporter;
        let mut options = dcutr_driver::Options::new(self.side)
            .config(self.config)
            .local_addrs(self.local_addrs)
            .remote_public_addrs(self.remote_public)
            .identity(self.identity)
            .peer_fingerprint(self.peer_fingerprint)
            .on_event(move |event, at| progress(reporter, event, at));
        if let Some(tcp) = self.tcp {
            options = options.tcp(listener(tcp)?);
        }
        let mut endpoint = None;
        if let Some(udp) = self.udp {
            let socket = quic(udp)?;
            endpoint = Some(socket.endpoint.clone());
            options = options.quic(socket);
        }
        Ok((options, endpoint))
    }
}

/// The upgrade and its proof on tokio.
async fn upgrade_on_tokio(
    plan: Plan,
    relay: tokio::io::BufReader<tokio::net::TcpStream>,
) -> anyhow::Result<Finished> {
    use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
    let (reporter, side) = (plan.reporter, plan.side);
    let (options, endpoint) = plan.options(tokio::net::TcpListener::from_std, |udp| {
        dcutr_tokio::quic_socket(udp)
    })?;
    let result = dcutr_tokio::upgrade(relay, options)
        .await
        .map(|up| {
            up.map(
                |tcp| {
                    let _ = tcp.set_nodelay(true);
                    tcp.compat_write()
                },
                |tls| {
                    let tls = tls.into_inner();
                    let _ = tls.get_ref().0.get_ref().set_nodelay(true);
                    tls
                },
                TokioAsyncReadCompatExt::compat,
            )
        })
        .map_err(|e| e.map(TokioAsyncReadCompatExt::compat));
    conclude(result, endpoint, reporter, side).await
}

/// The upgrade and its proof on smol or async-std (blocking: runs on a
/// thread of its own).
fn upgrade_on_async_io(
    rt: Runtime,
    plan: Plan,
    relay: std::net::TcpStream,
    buffered: Vec<u8>,
) -> anyhow::Result<Finished> {
    let run = async move {
        let (reporter, side) = (plan.reporter, plan.side);
        let relay = Prefixed::new(buffered, async_net::TcpStream::try_from(relay)?);
        let (options, endpoint) = plan.options(async_io::Async::new, |udp| match rt {
            Runtime::AsyncStd => dcutr_async_std::quic_socket_async_std(udp),
            _ => dcutr_async_std::quic_socket_smol(udp),
        })?;
        let result = dcutr_async_std::upgrade(relay, options).await.map(|up| {
            up.map(
                |tcp| {
                    let _ = tcp.set_nodelay(true);
                    tcp
                },
                |tls| {
                    let _ = tls.get_ref().0.set_nodelay(true);
                    tls
                },
                |relay| relay,
            )
        });
        conclude(result, endpoint, reporter, side).await
    };
    match rt {
        Runtime::AsyncStd => async_std::task::block_on(run),
        _ => smol::block_on(run),
    }
}

/// After the upgrade, on any runtime: prove the direct path, or check
/// that the relayed stream still works.
async fn conclude<T, S>(
    result: Result<dcutr_driver::Upgraded<T, S>, dcutr_driver::UpgradeError<S>>,
    endpoint: Option<quinn::Endpoint>,
    reporter: Reporter,
    side: Side,
) -> anyhow::Result<Finished>
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
{
    match result {
        Ok(up) => {
            print_timeline(reporter, &up.report);
            let proof = prove_direct(up.connection, up.role).await;
            drain(endpoint).await;
            Ok(match proof {
                Ok(direct_rtt) => Finished::Upgraded {
                    transport: up.transport,
                    role: up.role,
                    remote: up.remote,
                    report: up.report,
                    direct_rtt,
                },
                Err(error) => Finished::ProofFailed {
                    transport: up.transport,
                    role: up.role,
                    report: up.report,
                    error: format!("{error:#}"),
                },
            })
        }
        Err(error) => {
            print_timeline(reporter, &error.report);
            failed(error.reason, error.report, error.relay, side).await
        }
    }
}

async fn failed<T>(
    reason: UpgradeFailure,
    report: Report,
    relay: Option<T>,
    side: Side,
) -> anyhow::Result<Finished>
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
{
    if !matches!(reason, UpgradeFailure::Failed(_)) {
        return Err(anyhow::Error::new(reason).context("the upgrade could not run"));
    }
    let relay_usable = match relay {
        Some(relay) => prove_relay(relay, side).await,
        None => false,
    };
    Ok(Finished::Failed {
        reason,
        report,
        relay_usable,
    })
}

/// Lets quinn send its close frames before the runtime stops; otherwise
/// the peer waits for its idle timeout.
async fn drain(endpoint: Option<quinn::Endpoint>) {
    if let Some(endpoint) = endpoint {
        let _ = with_timeout(QUIC_DRAIN_LIMIT, endpoint.wait_idle()).await;
    }
}

/// `fut`, or `None` after `limit`. Uses async-io's timer, which works on
/// every runtime (it has its own reactor thread).
async fn with_timeout<F: std::future::Future>(limit: Duration, fut: F) -> Option<F::Output> {
    use futures_util::future::{Either, select};
    match select(std::pin::pin!(fut), async_io::Timer::after(limit)).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
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
fn print_timeline(reporter: Reporter, report: &Report) {
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

/// A few round trips of data on the direct connection each way; returns
/// the median round-trip time we measured. The client (A) pings first.
async fn prove_direct<T>(connection: DirectConnection<T>, role: Role) -> anyhow::Result<Duration>
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
{
    let run = async {
        match connection {
            DirectConnection::Tls(mut stream) => {
                let (mut read, mut write) = futures_util::AsyncReadExt::split(&mut stream);
                ping_pong(&mut read, &mut write, role).await
            }
            DirectConnection::Tcp(mut stream) => {
                let (mut read, mut write) = futures_util::AsyncReadExt::split(&mut stream);
                ping_pong(&mut read, &mut write, role).await
            }
            DirectConnection::Quic(conn) => {
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
                        // Our data is through once the server closes; if
                        // its close frame is lost (the peer process may end
                        // first), that changes nothing about the proof.
                        let _ = with_timeout(QUIC_DRAIN_LIMIT, conn.closed()).await;
                    }
                }
                Ok(rtt)
            }
            _ => anyhow::bail!("unknown connection kind"),
        }
    };
    with_timeout(PROOF_TIMEOUT, run)
        .await
        .context("the peer did not answer on the direct connection")?
        .context("the round trip on the direct connection")
}

async fn ping_pong<R, W>(read: &mut R, write: &mut W, role: Role) -> anyhow::Result<Duration>
where
    R: futures_io::AsyncRead + Unpin,
    W: futures_io::AsyncWrite + Unpin,
{
    // The client pings first and the server echoes; then the other way
    // round, so that each side measures the direct RTT itself.
    Ok(match role {
        Role::Client => {
            let rtt = ping(read, write).await?;
            echo(read, write).await?;
            rtt
        }
        Role::Server => {
            echo(read, write).await?;
            ping(read, write).await?
        }
    })
}

/// [`DIRECT_PINGS`] round trips; the median.
async fn ping<R, W>(read: &mut R, write: &mut W) -> anyhow::Result<Duration>
where
    R: futures_io::AsyncRead + Unpin,
    W: futures_io::AsyncWrite + Unpin,
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
    R: futures_io::AsyncRead + Unpin,
    W: futures_io::AsyncWrite + Unpin,
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
async fn prove_relay<T>(mut relay: T, side: Side) -> bool
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
{
    let run = async {
        let mut line = [0u8; RELAY_PING.len()];
        match side {
            Side::Responder => {
                relay.write_all(RELAY_PING).await?;
                relay.flush().await?;
                relay.read_exact(&mut line).await?;
                Ok::<_, std::io::Error>(line == RELAY_PONG)
            }
            Side::Initiator => {
                relay.read_exact(&mut line).await?;
                if line != RELAY_PING {
                    return Ok(false);
                }
                relay.write_all(RELAY_PONG).await?;
                relay.flush().await?;
                Ok(true)
            }
        }
    };
    matches!(with_timeout(PROOF_TIMEOUT, run).await, Some(Ok(true)))
}

/// A stream whose first bytes were already read into a buffer elsewhere
/// (behind the rendezvous `paired` line): serves them first.
struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: futures_io::AsyncRead + Unpin> futures_io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.offset < this.prefix.len() {
            let n = buf.len().min(this.prefix.len() - this.offset);
            buf[..n].copy_from_slice(&this.prefix[this.offset..this.offset + n]);
            this.offset += n;
            return std::task::Poll::Ready(Ok(n));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: futures_io::AsyncWrite + Unpin> futures_io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}
