//! # dcutr-conformance
//!
//! One set of upgrade scenarios, run against every runtime adapter:
//! `dcutr-tokio` on tokio, `dcutr-async-std` on smol and on async-std, and
//! mixed pairs (a tokio peer with a smol peer...), which shows that the
//! adapters interoperate on the wire.
//!
//! Each peer runs on its own OS thread with its own runtime, over real
//! loopback sockets. The harness here only builds each adapter's options
//! from one [`Job`] and reports what happened as a [`PeerReport`]; the
//! scenarios are in `tests/`.

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::mpsc;
use std::time::Duration;

use dcutr_core::{AddressPolicy, Candidate, Config, Event, Failure, Role, Side, Transport};
use dcutr_driver::{DirectConnection, Report, UpgradeFailure};
use futures_util::{AsyncReadExt, AsyncWriteExt};

/// A runtime adapter under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rt {
    /// `dcutr-tokio` on a tokio current-thread runtime.
    Tokio,
    /// `dcutr-async-std` on smol.
    Smol,
    /// `dcutr-async-std` on async-std.
    AsyncStd,
}

impl Rt {
    /// Every runtime.
    pub const ALL: [Rt; 3] = [Rt::Tokio, Rt::Smol, Rt::AsyncStd];
}

/// Which address a peer advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advertise {
    /// Its real punch address.
    Real,
    /// A loopback port nobody listens on: every dial to it is refused.
    ClosedPort,
}

/// What one peer is asked to do.
pub struct Job {
    /// Its side.
    pub side: Side,
    /// The transport to punch with.
    pub transport: Transport,
    /// Its end of the relayed stream.
    pub relay: StdStream,
    /// What it advertises.
    pub advertise: Advertise,
    /// Gets the punch address once it is bound, before the upgrade starts.
    pub bound: Option<mpsc::Sender<SocketAddr>>,
    /// Gets a message when the peer rejects a direct connection.
    pub rejected: Option<mpsc::Sender<()>>,
}

impl Job {
    /// A job with the real address and no signals.
    #[must_use]
    pub fn new(side: Side, transport: Transport, relay: StdStream) -> Self {
        Job {
            side,
            transport,
            relay,
            advertise: Advertise::Real,
            bound: None,
            rejected: None,
        }
    }
}

/// How an upgrade ended, in terms every adapter shares.
#[derive(Debug)]
pub enum Ended {
    /// A direct connection.
    Upgraded {
        /// Its transport.
        transport: Transport,
        /// Our role.
        role: Role,
        /// The peer's address.
        remote: SocketAddr,
    },
    /// No direct connection.
    Failed(UpgradeFailure),
}

/// What one peer saw.
#[derive(Debug)]
pub struct PeerReport {
    /// The runtime it ran on.
    pub rt: Rt,
    /// How the upgrade ended.
    pub ended: Ended,
    /// The upgrade's report.
    pub report: Report,
    /// After an upgrade: data went both ways on the direct connection.
    /// After a failure: a round trip over the relayed stream worked.
    pub data_ok: bool,
}

/// The config every scenario uses: loopback allowed, a short direct phase
/// so that failure scenarios end quickly.
#[must_use]
pub fn config() -> Config {
    Config {
        address_policy: AddressPolicy::permissive(),
        direct_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

/// A relayed stream: the two ends of one loopback TCP connection.
///
/// # Panics
/// When loopback sockets cannot be made.
#[must_use]
pub fn relayed_pair() -> (StdStream, StdStream) {
    let listener = StdListener::bind("127.0.0.1:0").expect("loopback");
    let a = StdStream::connect(listener.local_addr().unwrap()).unwrap();
    let (b, _) = listener.accept().unwrap();
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

/// A loopback port with nothing listening on it.
#[must_use]
pub fn closed_port() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("loopback")
}

/// Runs one peer on `rt` to the end (blocking: call it on its own thread).
#[must_use]
pub fn run_peer(rt: Rt, job: Job) -> PeerReport {
    match rt {
        Rt::Tokio => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(tokio_peer(job)),
        Rt::Smol => smol::block_on(async_io_peer(rt, job)),
        Rt::AsyncStd => async_std::task::block_on(async_io_peer(rt, job)),
    }
}

/// Runs two peers, B on `b_rt` and A on `a_rt`, each on its own thread.
#[must_use]
pub fn run_pair(b_rt: Rt, b: Job, a_rt: Rt, a: Job) -> (PeerReport, PeerReport) {
    let b = std::thread::spawn(move || run_peer(b_rt, b));
    let a = std::thread::spawn(move || run_peer(a_rt, a));
    (b.join().expect("B ran"), a.join().expect("A ran"))
}

fn candidate(transport: Transport, addr: SocketAddr) -> Candidate {
    Candidate { transport, addr }
}

/// The address to advertise for a punch socket bound at `bound`.
fn advertised(advertise: Advertise, transport: Transport, bound: SocketAddr) -> Candidate {
    let addr = match advertise {
        Advertise::Real => bound,
        Advertise::ClosedPort => closed_port(),
    };
    candidate(transport, addr)
}

fn signal_rejections<L>(
    options: dcutr_driver::Options<L>,
    rejected: Option<mpsc::Sender<()>>,
) -> dcutr_driver::Options<L> {
    match rejected {
        None => options,
        Some(tx) => options.on_event(move |event, _| {
            if matches!(event, Event::DirectRejected { .. }) {
                let _ = tx.send(());
            }
        }),
    }
}

fn any_loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("a literal")
}

/// Builds the options for any adapter from a job: binds the punch socket
/// (as a std socket that `tcp` or `quic` hands to the runtime), reports
/// its address, and wires the rejection signal. Returns the options and
/// the endpoint to drain at the end.
fn job_options<L>(
    job: &mut Job,
    tcp: impl FnOnce(std::net::TcpListener) -> std::io::Result<L>,
    quic: impl FnOnce(std::net::UdpSocket) -> std::io::Result<dcutr_driver::QuicSocket>,
) -> (dcutr_driver::Options<L>, Option<quinn::Endpoint>) {
    let mut options = dcutr_driver::Options::new(job.side).config(config());
    let mut endpoint = None;
    let bound = match job.transport {
        Transport::Tcp => {
            let listener = dcutr_driver::net::reuse_listener(any_loopback()).unwrap();
            let bound = listener.local_addr().unwrap();
            options = options.tcp(tcp(listener).unwrap());
            bound
        }
        Transport::Quic => {
            let socket = dcutr_driver::net::udp_socket(any_loopback()).unwrap();
            let socket = quic(socket).unwrap();
            let bound = socket.local_addr().unwrap();
            endpoint = Some(socket.endpoint.clone());
            options = options.quic(socket);
            bound
        }
    };
    options = options.local_addrs([advertised(job.advertise, job.transport, bound)]);
    options = signal_rejections(options, job.rejected.take());
    if let Some(tx) = job.bound.take() {
        let _ = tx.send(bound);
    }
    (options, endpoint)
}

async fn tokio_peer(mut job: Job) -> PeerReport {
    use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
    job.relay.set_nonblocking(true).unwrap();
    let relay = tokio::net::TcpStream::from_std(job.relay.try_clone().unwrap()).unwrap();
    let (options, endpoint) = job_options(&mut job, tokio::net::TcpListener::from_std, |udp| {
        dcutr_tokio::quic_socket(udp)
    });
    let result = dcutr_tokio::upgrade(relay, options)
        .await
        .map(|up| {
            up.map(
                TokioAsyncWriteCompatExt::compat_write,
                tokio_util::compat::Compat::into_inner,
                TokioAsyncReadCompatExt::compat,
            )
        })
        .map_err(|e| e.map(TokioAsyncReadCompatExt::compat));
    conclude(Rt::Tokio, result, endpoint, job).await
}

async fn async_io_peer(rt: Rt, mut job: Job) -> PeerReport {
    let relay = async_net::TcpStream::try_from(job.relay.try_clone().unwrap()).unwrap();
    let (options, endpoint) = job_options(&mut job, async_io::Async::new, |udp| match rt {
        Rt::AsyncStd => dcutr_async_std::quic_socket_async_std(udp),
        _ => dcutr_async_std::quic_socket_smol(udp),
    });
    let result = dcutr_async_std::upgrade(relay, options).await;
    conclude(rt, result, endpoint, job).await
}

/// After the upgrade, on any runtime: talk over the direct connection, or
/// over the relayed stream after a failure.
async fn conclude<T, S>(
    rt: Rt,
    result: Result<dcutr_driver::Upgraded<T, S>, dcutr_driver::UpgradeError<S>>,
    endpoint: Option<quinn::Endpoint>,
    job: Job,
) -> PeerReport
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
{
    // The std handle of the relayed stream was only kept to build the
    // runtime's; the runtime's own handle decides when it closes.
    drop(job.relay);
    match result {
        Ok(up) => {
            let data_ok = exchange(up.connection, up.role).await;
            drain(endpoint).await;
            upgraded(rt, up.transport, up.role, up.remote, up.report, data_ok)
        }
        Err(e) => {
            let data_ok = match e.relay {
                Some(relay) => relay_round_trip(relay, job.side).await,
                None => false,
            };
            failed(rt, e.reason, e.report, data_ok)
        }
    }
}

/// Longest wait for a QUIC endpoint to send its last close frames.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Lets the QUIC endpoint send its close frames before our runtime stops
/// (a current-thread runtime that ends takes quinn's driver with it, and
/// the peer would wait for its idle timeout).
async fn drain(endpoint: Option<quinn::Endpoint>) {
    if let Some(endpoint) = endpoint {
        let idle = Box::pin(endpoint.wait_idle());
        let limit = async_io::Timer::after(DRAIN_LIMIT);
        futures_util::future::select(idle, limit).await;
    }
}

fn upgraded(
    rt: Rt,
    transport: Transport,
    role: Role,
    remote: SocketAddr,
    report: Report,
    data_ok: bool,
) -> PeerReport {
    PeerReport {
        rt,
        ended: Ended::Upgraded {
            transport,
            role,
            remote,
        },
        report,
        data_ok,
    }
}

fn failed(rt: Rt, reason: UpgradeFailure, report: Report, data_ok: bool) -> PeerReport {
    PeerReport {
        rt,
        ended: Ended::Failed(reason),
        report,
        data_ok,
    }
}

const PING: &[u8] = b"ping from A";
const PONG: &[u8] = b"pong from B";

/// A writes a ping, B answers with a pong, each checking what it got.
async fn exchange<T>(connection: DirectConnection<T>, role: Role) -> bool
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
{
    let result: Result<bool, Box<dyn std::error::Error>> = async {
        match connection {
            DirectConnection::Tls(mut stream) => Ok(ping_pong(&mut stream, role).await?),
            DirectConnection::Tcp(mut stream) => Ok(ping_pong(&mut stream, role).await?),
            DirectConnection::Quic(conn) => {
                let ok = match role {
                    Role::Client => {
                        let (mut send, mut recv) = conn.open_bi().await?;
                        send.write_all(PING).await?;
                        send.finish()?;
                        let got = recv.read_to_end(64).await?;
                        // The server closes once it has answered.
                        let _ = conn.closed().await;
                        got == PONG
                    }
                    Role::Server => {
                        let (mut send, mut recv) = conn.accept_bi().await?;
                        let got = recv.read_to_end(64).await?;
                        send.write_all(PONG).await?;
                        send.finish()?;
                        let _ = send.stopped().await;
                        conn.close(0u32.into(), b"done");
                        got == PING
                    }
                };
                Ok(ok)
            }
            _ => Ok(false),
        }
    }
    .await;
    result.unwrap_or(false)
}

async fn ping_pong<T>(stream: &mut T, role: Role) -> std::io::Result<bool>
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
{
    let mut buf = [0u8; 11];
    match role {
        Role::Client => {
            stream.write_all(PING).await?;
            stream.flush().await?;
            stream.read_exact(&mut buf).await?;
            Ok(buf == PONG)
        }
        Role::Server => {
            stream.read_exact(&mut buf).await?;
            stream.write_all(PONG).await?;
            stream.flush().await?;
            Ok(buf == PING)
        }
    }
}

/// After a failure: A sends a line over the relayed stream, B answers.
async fn relay_round_trip<T>(mut relay: T, side: Side) -> bool
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
{
    let role = match side {
        Side::Responder => Role::Client,
        Side::Initiator => Role::Server,
    };
    ping_pong(&mut relay, role).await.unwrap_or(false)
}

/// The number of attempts of a failure that used them all.
#[must_use]
pub fn all_attempts_failed(report: &PeerReport) -> Option<usize> {
    match &report.ended {
        Ended::Failed(UpgradeFailure::Failed(Failure::AllAttemptsFailed { attempts })) => {
            Some(attempts.len())
        }
        _ => None,
    }
}
