//! `dcutr peer`: registers at the relay, runs DCUtR over the relayed
//! stream with the addresses the relay observed, prints a timeline, then
//! proves the direct path with a round trip of data (or, after a failure,
//! proves that the relayed stream still works).

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use dcutr_core::nat::NatBehaviour;
use dcutr_driver::{DirectConnection, Report};
use dcutr_tokio::{AddressPolicy, Candidate, Config, Event, Role, Side, Transport, UpgradeFailure};
use futures_util::{AsyncReadExt, AsyncWriteExt};

use crate::PeerArgs;
use crate::netcheck;
use crate::pairing;
use crate::rendezvous::{self, PairedSide};
use crate::report::{Line, PeerResult, Progress, Reporter};

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
    run_on(args, upgrade_on_tokio).await
}

/// [`run`] with the upgrade and its proof run by `upgrade` (dcutr's own is
/// on tokio; the NAT lab's fixture runs them on smol or async-std too).
///
/// # Errors
/// As [`run`].
pub async fn run_on<U, F>(args: PeerArgs, upgrade: U) -> anyhow::Result<ExitCode>
where
    U: FnOnce(Plan, RelayedStream) -> F,
    F: Future<Output = anyhow::Result<Finished>>,
{
    let reporter = Reporter::new(args.json);
    let result = session_on(args, reporter, upgrade).await?;
    reporter.result(&result);
    Ok(result.exit_code())
}

/// The relayed stream as the rendezvous hands it over: tokio's, with the
/// bytes that already arrived behind the `paired` line in its buffer.
pub type RelayedStream = tokio::io::BufReader<tokio::net::TcpStream>;

/// What the upgrade needs besides the relayed stream, runtime-neutral:
/// the punch sockets are plain std sockets until the chosen runtime takes
/// them ([`Plan::options`]).
pub struct Plan {
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
    /// Our NAT's behaviour, with `--stun`.
    nat: Option<NatBehaviour>,
    reporter: Reporter,
}

/// How the upgrade and its proof ended ([`conclude`] makes it).
pub struct Finished(Done);

enum Done {
    /// A direct connection carried the proof's data.
    Upgraded {
        transport: Transport,
        role: Role,
        remote: SocketAddr,
        report: Report,
        direct_rtt: Duration,
    },
    /// The upgrade failed cleanly; `relay_usable` if the relayed stream
    /// still carried a round trip.
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
    session_on(args, reporter, upgrade_on_tokio).await
}

/// [`session`] with the upgrade run by `upgrade` (see [`run_on`]).
///
/// # Errors
/// As [`run`].
pub async fn session_on<U, F>(
    args: PeerArgs,
    reporter: Reporter,
    upgrade: U,
) -> anyhow::Result<PeerResult>
where
    U: FnOnce(Plan, RelayedStream) -> F,
    F: Future<Output = anyhow::Result<Finished>>,
{
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
    let given = args.connect.clone().or_else(|| args.code.clone());
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
            &Line::Code {
                code: code.to_string(),
            },
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
    let nat = match (args.stun.is_empty(), &tcp, &udp) {
        (true, _, _) | (false, None, None) => None,
        (false, Some(listener), _) => {
            let socket = netcheck::PunchSocket::Tcp(listener);
            observe_nat(&args.stun, socket, Transport::Tcp, route_ip, reporter).await?
        }
        (false, None, Some(udp)) => {
            let socket = netcheck::PunchSocket::Udp(udp);
            observe_nat(&args.stun, socket, Transport::Quic, route_ip, reporter).await?
        }
    };
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
        Transport::Tcp
    } else {
        Transport::Quic
    };
    // A is the client of the direct connection, B the server.
    let our_role = match side {
        Side::Initiator => Role::Server,
        Side::Responder => Role::Client,
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
            let reason = error.to_string();
            reporter.event(&Line::PairingFailed { reason }, format_args!("{error}"));
            return Ok(PeerResult {
                ok: false,
                transport: tried,
                role: our_role,
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
        &Line::Authenticated {
            peer_fingerprint: hex(&peer_fingerprint),
        },
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
    let config = Config {
        address_policy: policy(&args),
        unilateral: !args.reach.no_unilateral,
        ..Config::default()
    };
    let plan = Plan {
        side,
        config,
        local_addrs,
        remote_public,
        tcp,
        udp,
        identity,
        peer_fingerprint,
        nat,
        reporter,
    };

    let Finished(finished) = upgrade(plan, paired.stream).await?;

    Ok(match finished {
        Done::Upgraded {
            transport,
            role,
            remote,
            report,
            direct_rtt,
        } => {
            reporter.event(
                &Line::DirectRtt { ms: ms(direct_rtt) },
                format_args!(
                    "direct path proven: {DIRECT_PINGS} round trips each way, median {:.2} ms",
                    ms(direct_rtt)
                ),
            );
            PeerResult {
                ok: true,
                transport,
                role,
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
        Done::ProofFailed {
            transport,
            role,
            report,
            error,
        } => {
            reporter.event(
                &Line::ProofFailed { reason: &error },
                format_args!("the direct connection did not carry data: {error}"),
            );
            PeerResult {
                ok: false,
                transport,
                role,
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
        Done::Failed {
            reason,
            report,
            relay_usable,
        } => {
            reporter.event(
                &Line::Relay {
                    usable: relay_usable,
                },
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
                role: our_role,
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
    /// Our side of the relayed stream.
    #[must_use]
    pub fn side(&self) -> Side {
        self.side
    }

    /// Where progress goes.
    #[must_use]
    pub fn reporter(&self) -> Reporter {
        self.reporter
    }

    /// Makes at most `max` hole-punch attempts instead of the default
    /// (the session handshake agrees on the smaller of both sides'
    /// limits). For test fixtures such as natlab's `lab-dcutr`, which
    /// gives a report-only lab case one attempt; `dcutr peer` keeps the
    /// default.
    pub fn limit_attempts(&mut self, max: u8) {
        self.config.max_attempts = max;
    }

    /// The upgrade's options for any adapter: `listener` hands the punch
    /// listener to the runtime, `quic` builds the endpoint on it. Also
    /// returns a handle on the endpoint, for [`conclude`] to drain.
    ///
    /// # Errors
    /// When `listener` or `quic` fails.
    pub fn options<L>(
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
        if let Some(nat) = self.nat {
            options = options.nat_behaviour(nat);
        }
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

/// The upgrade and its proof on tokio (what `dcutr peer` runs).
///
/// # Errors
/// When the sockets cannot join tokio, or the upgrade could not run.
pub async fn upgrade_on_tokio(plan: Plan, relay: RelayedStream) -> anyhow::Result<Finished> {
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

/// After the upgrade, on any runtime: prove the direct path, or check
/// that the relayed stream still works.
///
/// # Errors
/// When the upgrade could not run at all (not a clean failure).
pub async fn conclude<T, S>(
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
            Ok(Finished(match proof {
                Ok(direct_rtt) => Done::Upgraded {
                    transport: up.transport,
                    role: up.role,
                    remote: up.remote,
                    report: up.report,
                    direct_rtt,
                },
                Err(error) => Done::ProofFailed {
                    transport: up.transport,
                    role: up.role,
                    report: up.report,
                    error: format!("{error:#}"),
                },
            }))
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
    Ok(Finished(Done::Failed {
        reason,
        report,
        relay_usable,
    }))
}

/// Lets quinn send its close frames before the runtime stops; otherwise
/// the peer waits for its idle timeout.
async fn drain(endpoint: Option<quinn::Endpoint>) {
    if let Some(endpoint) = endpoint {
        let _ = with_timeout(QUIC_DRAIN_LIMIT, endpoint.wait_idle()).await;
    }
}

/// `fut`, or `None` after `limit`. Uses futures-timer, which works on
/// every runtime (it has a timer thread of its own): [`conclude`] runs on
/// the NAT lab's other runtimes too.
async fn with_timeout<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    use futures_util::future::{Either, select};
    match select(std::pin::pin!(fut), futures_timer::Delay::new(limit)).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

/// `--stun`: our NAT's behaviour from the punch socket, reported. A
/// server that does not answer is not fatal: the upgrade goes on without
/// it, as without `--stun`.
///
/// # Errors
/// Only when the report cannot be written; a server that does not resolve
/// or answer is reported as `nat_unknown`.
async fn observe_nat(
    servers: &[String],
    socket: netcheck::PunchSocket<'_>,
    transport: Transport,
    route_ip: IpAddr,
    reporter: Reporter,
) -> anyhow::Result<Option<NatBehaviour>> {
    match netcheck::observe_punch_socket(servers, socket, route_ip).await {
        Ok(found) => {
            let b = &found.behaviour;
            let (allocation, allocation_delta) = netcheck::allocation_of(b);
            reporter.event(
                &Line::NatObserved {
                    transport,
                    public: found.public.clone(),
                    mapping: b.mapping.to_string(),
                    allocation,
                    allocation_delta,
                    filtering: b.filtering.to_string(),
                },
                format_args!("our NAT over {transport}, by STUN: {b}"),
            );
            Ok(Some(found.behaviour))
        }
        Err(error) => {
            let reason = format!("{error:#}");
            reporter.event(
                &Line::NatUnknown {
                    reason: reason.clone(),
                },
                format_args!("our NAT stays unknown: {reason}"),
            );
            Ok(None)
        }
    }
}

fn policy(args: &PeerArgs) -> AddressPolicy {
    args.reach.widen(AddressPolicy::public_only())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One progress line per step of the protocol, as it happens: the
/// core's event in its own JSON, or a line of text.
fn progress(reporter: Reporter, event: &Event, at: Duration) {
    let t = ms(at);
    let text = match event {
        Event::UnilateralStarted { dials } => {
            format!("dialling the peer's public address directly ({dials} dials)")
        }
        Event::UnilateralFailed => "direct dial failed; hole punching".to_owned(),
        Event::AttemptStarted { attempt } => format!("attempt {attempt}"),
        Event::RemoteAddrs {
            accepted, rejected, ..
        } => {
            let list: Vec<String> = accepted.iter().map(ToString::to_string).collect();
            format!(
                "peer's addresses: {} ({} dropped)",
                if list.is_empty() {
                    "none usable".to_owned()
                } else {
                    list.join(" ")
                },
                rejected.total()
            )
        }
        Event::RttMeasured { rtt, .. } => format!("relayed RTT {:.1} ms", ms(*rtt)),
        Event::SyncSent { .. } => "Sync sent; punching in RTT/2".to_owned(),
        Event::SyncReceived { .. } => "Sync received; punching now".to_owned(),
        Event::Punch {
            dials,
            spray_targets,
            ..
        } => format!("punch: {dials} dials, spraying {spray_targets} addresses"),
        Event::DialFailed { to, error, .. } => format!("dial to {to} failed: {error}"),
        Event::DirectRejected { remote, reason, .. } => {
            format!("refused a direct connection from {remote}: {reason:?}")
        }
        Event::AttemptFailed { attempt, reason } => format!("attempt {attempt} failed: {reason}"),
        Event::Upgraded(up) => format!(
            "UPGRADED: direct {} connection to {} as {}",
            up.transport, up.remote, up.role
        ),
        Event::Failed(failure) => format!("upgrade failed: {failure}"),
        _ => return,
    };
    reporter.event(
        &Progress { event, t_ms: t },
        format_args!("t={t:8.1} ms  {text}"),
    );
}

/// The timeline in a few lines, once the outcome is known.
fn print_timeline(reporter: Reporter, report: &Report) {
    let line = Line::Timeline {
        attempts: report.attempts(),
        rtt_ms: report.rtt().map(ms),
        time_to_direct_ms: report.time_to_direct().map(ms),
        total_ms: report.total().map(ms),
        timeline: &report.timeline,
    };
    reporter.event(
        &line,
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
