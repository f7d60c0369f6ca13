//! `dcutr netcheck`: what NAT this machine sits behind, found with STUN
//! (RFC 8489 Binding, RFC 5780 tests where a server offers OTHER-ADDRESS)
//! against the servers the user names, and which hole-punching strategies
//! that leaves. Like `tailscale netcheck`, for one UDP socket.
//!
//! The probing is [`dcutr_driver::stun::discover`], here on tokio; the
//! classification is [`dcutr_core::nat`].

use std::fmt::{self, Display};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use dcutr_core::nat::{Allocation, Filtering, Mapping, NatBehaviour, Strategy};
use dcutr_driver::stun::{
    self, DiscoverOptions, DiscoveryReport, STUN_PORT, TcpReport, Test, TestOutcome, TestResult,
    UdpIo,
};
use dcutr_tokio::TokioRuntime;
use serde::Serialize;

/// How long resolving one server name may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Arguments of `dcutr netcheck`.
#[derive(Debug, Clone, Args)]
pub struct NetcheckArgs {
    /// A STUN server, HOST:PORT or HOST (port 3478); repeat for more (at
    /// most 4). Two servers on different IPs, or one that offers RFC 5780
    /// (OTHER-ADDRESS), are needed to tell the mapping.
    #[arg(long = "stun", value_name = "HOST:PORT", required = true)]
    pub stun: Vec<String>,
    /// Local address of the probing socket (default: any address, a free
    /// port, of the first server's IP family).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub json: bool,
    /// Also observe the TCP mapping: connect to each server's TCP port
    /// (the same number), and to the other IP of an RFC 5780 server, from
    /// one local port, as a TCP punch does.
    #[arg(long)]
    pub tcp: bool,
}

/// A tokio UDP socket for [`dcutr_driver::stun::discover`].
#[derive(Debug)]
pub struct TokioUdp(pub tokio::net::UdpSocket);

impl UdpIo for TokioUdp {
    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        self.0.poll_send_to(cx, buf, target)
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let mut read = tokio::io::ReadBuf::new(buf);
        self.0
            .poll_recv_from(cx, &mut read)
            .map_ok(|from| (read.filled().len(), from))
    }
}

/// Runs a discovery on a clone of `socket` (a non-blocking std socket,
/// such as the one a QUIC endpoint will take over afterwards, so that the
/// mapping observed is the punch socket's own), on tokio.
///
/// # Errors
/// As [`dcutr_driver::stun::discover`], or when the socket cannot be
/// cloned.
pub async fn discover_std(
    socket: &std::net::UdpSocket,
    local: SocketAddr,
    servers: &[SocketAddr],
    options: DiscoverOptions,
) -> anyhow::Result<DiscoveryReport> {
    let clone = socket.try_clone().context("cloning the UDP socket")?;
    clone.set_nonblocking(true)?;
    let udp = TokioUdp(tokio::net::UdpSocket::from_std(clone)?);
    Ok(stun::discover(&udp, &TokioRuntime, local, servers, options).await?)
}

/// Runs `dcutr netcheck`.
///
/// # Errors
/// A server name that does not resolve, a socket that cannot be bound, or
/// no server answering.
pub async fn run(args: NetcheckArgs) -> anyhow::Result<ExitCode> {
    let report = netcheck(&args.stun, args.bind, args.tcp, DiscoverOptions::default()).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves `servers`, probes them from one UDP socket bound at `bind`
/// (and, with `tcp`, from one TCP port on its IP) and returns what was
/// found.
///
/// # Errors
/// As [`run`]; the messages name the fix.
pub async fn netcheck(
    servers: &[String],
    bind: Option<SocketAddr>,
    tcp: bool,
    options: DiscoverOptions,
) -> anyhow::Result<NetcheckReport> {
    let resolved = resolve_all(servers, bind.map(|b| b.is_ipv4())).await?;
    let Some((_, first)) = resolved.first().cloned() else {
        bail!("no STUN server given: name one with --stun HOST:PORT");
    };
    let bind = bind.unwrap_or_else(|| {
        let any = if first.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        SocketAddr::new(any, 0)
    });
    let std_socket = dcutr_driver::net::udp_socket(bind)
        .with_context(|| format!("binding UDP {bind}: pick another --bind"))?;
    let socket = TokioUdp(
        tokio::net::UdpSocket::from_std(std_socket).context("registering the UDP socket")?,
    );
    let mut local = socket.0.local_addr()?;
    if local.ip().is_unspecified() {
        // The address the route to the first server leaves from: what a
        // mapped address is compared with. Connecting a spare socket sends
        // nothing.
        if let Some(ip) = route_ip(bind, first) {
            local.set_ip(ip);
        }
    }
    let targets: Vec<SocketAddr> = resolved.iter().map(|(_, a)| *a).collect();
    let report = stun::discover(&socket, &TokioRuntime, local, &targets, options).await?;
    if report.answered() == 0 {
        let waited = options
            .timing
            .transaction_timeout(options.timing.bounded().initial_rto);
        let tried: Vec<String> = resolved
            .iter()
            .map(|(spec, a)| {
                if spec == &a.to_string() {
                    spec.clone()
                } else {
                    format!("{spec} ({a})")
                }
            })
            .collect();
        bail!(
            "no STUN server answered within {:.1} s (tried {}): check the address and port, \
             and that no firewall drops UDP to or from it",
            waited.as_secs_f64(),
            tried.join(", ")
        );
    }
    let mut summary = NetcheckReport::new(&resolved, &report);
    if tcp {
        let tcp = observe_tcp(bind, first, &targets, &report.other_ips()).await?;
        summary.tcp = Some(TcpSummary::new(&resolved, &tcp));
    }
    Ok(summary)
}

/// Resolves every server spec, each to an address of `v4`'s family (when
/// unset, of the first server's).
async fn resolve_all(
    servers: &[String],
    v4: Option<bool>,
) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    let mut resolved: Vec<(String, SocketAddr)> = Vec::new();
    for spec in servers {
        let want_v4 = v4.or_else(|| resolved.first().map(|(_, a)| a.is_ipv4()));
        resolved.push((spec.clone(), resolve(spec, want_v4).await?));
    }
    Ok(resolved)
}

/// A punch socket of `dcutr peer`, still a std socket (the runtime that
/// punches takes it afterwards).
#[derive(Debug, Clone, Copy)]
pub enum PunchSocket<'a> {
    /// The TCP punch listener, bound with port reuse: the observations
    /// connect from its port.
    Tcp(&'a std::net::TcpListener),
    /// The UDP socket the QUIC endpoint will run on.
    Udp(&'a std::net::UdpSocket),
}

/// What STUN found from a punch socket.
#[derive(Debug, Clone)]
pub struct PunchNat {
    /// The classification, with its evidence.
    pub behaviour: NatBehaviour,
    /// Our public addresses as the servers saw them, in the order seen.
    pub public: Vec<SocketAddr>,
}

/// Learns our NAT's behaviour from `socket` itself (so the mapping is the
/// punch's own), against `servers`: UDP with [`stun::discover`], TCP with
/// [`stun::observe_tcp`]. `route_ip` stands in for an unspecified local
/// IP when mapped addresses are judged.
///
/// # Errors
/// A server name that does not resolve, or no server answering: the
/// message names what to check.
pub async fn observe_punch_socket(
    servers: &[String],
    socket: PunchSocket<'_>,
    route_ip: IpAddr,
) -> anyhow::Result<PunchNat> {
    let local = match socket {
        PunchSocket::Tcp(l) => l.local_addr()?,
        PunchSocket::Udp(u) => u.local_addr()?,
    };
    let resolved = resolve_all(servers, Some(local.is_ipv4())).await?;
    if resolved.is_empty() {
        bail!("no STUN server given: name one with --stun HOST:PORT");
    }
    let targets: Vec<SocketAddr> = resolved.iter().map(|(_, a)| *a).collect();
    let mut judged_as = local;
    if judged_as.ip().is_unspecified() {
        judged_as.set_ip(route_ip);
    }
    match socket {
        PunchSocket::Udp(udp) => {
            let report = discover_std(udp, judged_as, &targets, DiscoverOptions::default()).await?;
            if report.answered() == 0 {
                bail!(
                    "no STUN server answered over UDP (tried {}): check the address and port, \
                     and that no firewall drops UDP to or from it",
                    servers.join(", ")
                );
            }
            Ok(PunchNat {
                public: report.mapped_addresses(),
                behaviour: report.behaviour,
            })
        }
        PunchSocket::Tcp(_) => {
            let report =
                stun::observe_tcp(&TokioRuntime, local, judged_as, &targets, &[], None).await?;
            let mut public: Vec<SocketAddr> = Vec::new();
            for (mapped, _) in report
                .results
                .iter()
                .filter_map(|r| r.outcome.as_ref().ok())
            {
                if !public.contains(mapped) {
                    public.push(*mapped);
                }
            }
            if public.is_empty() {
                bail!(
                    "no STUN server answered over TCP (tried {}): check that each serves \
                     STUN on TCP at the same port",
                    servers.join(", ")
                );
            }
            Ok(PunchNat {
                behaviour: report.behaviour,
                public,
            })
        }
    }
}

/// The TCP observations, from a reuse listener's port on `bind`'s IP.
async fn observe_tcp(
    bind: SocketAddr,
    first: SocketAddr,
    servers: &[SocketAddr],
    other_ips: &[SocketAddr],
) -> anyhow::Result<TcpReport> {
    let at = SocketAddr::new(bind.ip(), 0);
    let listener = dcutr_driver::net::reuse_listener(at)
        .with_context(|| format!("binding a TCP listener on {at}: pick another --bind"))?;
    let local = listener.local_addr()?;
    let mut classify_as = local;
    if local.ip().is_unspecified()
        && let Some(ip) = route_ip(bind, first)
    {
        classify_as.set_ip(ip);
    }
    let report =
        stun::observe_tcp(&TokioRuntime, local, classify_as, servers, other_ips, None).await?;
    // The listener held the port until every connection was made.
    drop(listener);
    Ok(report)
}

/// `HOST:PORT`, `HOST` (port [`STUN_PORT`]) or an IP literal, resolved to
/// one address of the wanted family (the first one, if no family is set).
async fn resolve(spec: &str, want_v4: Option<bool>) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = spec.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = spec.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, STUN_PORT));
    }
    let host_port = if spec.contains(':') {
        spec.to_owned()
    } else {
        format!("{spec}:{STUN_PORT}")
    };
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(host_port))
        .await
        .with_context(|| {
            format!(
                "resolving STUN server {spec} took over {} s: check DNS, or give an IP address",
                RESOLVE_TIMEOUT.as_secs()
            )
        })?
        .with_context(|| format!("resolving STUN server {spec}: check the name (HOST:PORT)"))?;
    let mut first = None;
    for addr in found {
        if want_v4.is_none_or(|v4| addr.is_ipv4() == v4) {
            first = Some(addr);
            break;
        }
    }
    first.with_context(|| {
        format!("STUN server {spec} has no address of the local socket's IP family")
    })
}

/// The local IP the route towards `server` uses, for a socket bound to an
/// unspecified IP.
fn route_ip(bind: SocketAddr, server: SocketAddr) -> Option<IpAddr> {
    let spare = std::net::UdpSocket::bind(SocketAddr::new(bind.ip(), 0)).ok()?;
    spare.connect(server).ok()?;
    spare.local_addr().ok().map(|a| a.ip())
}

/// What `dcutr netcheck` found, as printed (`--json` prints it as one
/// object, with `"event": "netcheck"` first like every other line the
/// tool prints).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetcheckReport {
    /// Always `"netcheck"`.
    pub event: &'static str,
    /// The probing socket (with the route's IP when bound to any address).
    pub local: SocketAddr,
    /// Our distinct public (mapped) addresses, in the order seen.
    pub public: Vec<SocketAddr>,
    /// Every mapped address equals the local one.
    pub no_nat: bool,
    /// Mapping: `endpoint-independent`, `endpoint-dependent` or `unknown`.
    pub mapping: String,
    /// Port allocation: `port-preserving`, `sequential`, `random` or
    /// `unknown`.
    pub allocation: String,
    /// The step of a sequential allocation.
    pub allocation_delta: Option<i32>,
    /// Filtering: `endpoint-independent`, `address-dependent`,
    /// `address-and-port-dependent` or `unknown`.
    pub filtering: String,
    /// Per server given.
    pub servers: Vec<ServerSummary>,
    /// Every test, in the order it started, then those skipped.
    pub tests: Vec<TestSummary>,
    /// What a hole punch could do against peers of each kind.
    pub strategies: Vec<StrategySummary>,
    /// Observations and probes the classifier refused.
    pub refused: u32,
    /// Datagrams that answered none of our requests.
    pub ignored_datagrams: u32,
    /// How long the UDP probing took, in milliseconds.
    pub elapsed_ms: u64,
    /// The TCP observations, with `--tcp`.
    pub tcp: Option<TcpSummary>,
}

/// What the TCP observations found (mapping and allocation only: RFC
/// 5780's filtering tests are UDP only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcpSummary {
    /// The local port the connections left from (with the route's IP).
    pub local: SocketAddr,
    /// Our distinct public TCP addresses, in the order seen.
    pub public: Vec<SocketAddr>,
    /// As [`NetcheckReport::mapping`].
    pub mapping: String,
    /// As [`NetcheckReport::allocation`].
    pub allocation: String,
    /// As [`NetcheckReport::allocation_delta`].
    pub allocation_delta: Option<i32>,
    /// Per server.
    pub servers: Vec<ServerSummary>,
}

impl TcpSummary {
    fn new(servers: &[(String, SocketAddr)], tcp: &TcpReport) -> Self {
        let b = &tcp.behaviour;
        let (allocation, allocation_delta) = allocation_of(b);
        let mut public: Vec<SocketAddr> = Vec::new();
        let servers = tcp
            .results
            .iter()
            .map(|r| {
                let spec = servers
                    .iter()
                    .find(|(_, a)| *a == r.server)
                    .map_or_else(|| format!("{} (other IP)", r.server), |(s, _)| s.clone());
                let (mapped, rtt_ms, error) = match &r.outcome {
                    Ok((mapped, rtt)) => {
                        if !public.contains(mapped) {
                            public.push(*mapped);
                        }
                        (Some(*mapped), Some(millis(*rtt)), None)
                    }
                    Err(e) => (None, None, Some(e.to_string())),
                };
                ServerSummary {
                    server: spec,
                    addr: r.server,
                    mapped,
                    other_address: None,
                    rtt_ms,
                    error,
                }
            })
            .collect();
        TcpSummary {
            local: tcp.local,
            public,
            mapping: b.mapping.to_string(),
            allocation,
            allocation_delta,
            servers,
        }
    }
}

/// `b`'s allocation in words, and the step of a sequential one.
pub fn allocation_of(b: &NatBehaviour) -> (String, Option<i32>) {
    match b.allocation {
        Allocation::Sequential { delta } => ("sequential".to_owned(), Some(delta)),
        other => (other.to_string(), None),
    }
}

/// One server's Binding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerSummary {
    /// As given on the command line.
    pub server: String,
    /// What it resolved to.
    pub addr: SocketAddr,
    /// Our address as it saw it.
    pub mapped: Option<SocketAddr>,
    /// Its RFC 5780 other address, if it offers one.
    pub other_address: Option<SocketAddr>,
    /// Round trip of an unretransmitted request, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Why it gave no mapped address.
    pub error: Option<String>,
}

/// One test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestSummary {
    /// The server it belongs to.
    pub server: SocketAddr,
    /// `binding`, `other-ip`, `other-address`, `change-ip-and-port` or
    /// `change-port`.
    pub test: &'static str,
    /// Where the requests went.
    pub target: SocketAddr,
    /// Requests sent.
    pub requests: u32,
    /// `answered`, `error`, `malformed`, `timed-out` or `skipped` (then
    /// `target` is the server and `detail` says why).
    pub result: &'static str,
    /// Where the answer came from.
    pub from: Option<SocketAddr>,
    /// Our address in the answer.
    pub mapped: Option<SocketAddr>,
    /// For a filtering probe that counts: whether its answer came through.
    pub filtering_received: Option<bool>,
    /// Details of an error, a malformed answer or a timeout.
    pub detail: Option<String>,
}

/// The strategy against one kind of peer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrategySummary {
    /// The peer's kind.
    pub peer: &'static str,
    /// `direct`, `predict-sequential`, `birthday` or `impossible`.
    pub kind: &'static str,
    /// In words.
    pub strategy: String,
}

/// The kinds of peer the report shows strategies for.
fn peer_kinds() -> [(&'static str, NatBehaviour); 3] {
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    [
        (
            "endpoint-independent (cone)",
            NatBehaviour::declared(
                Mapping::EndpointIndependent,
                Allocation::Unknown,
                Filtering::Unknown,
                any,
            ),
        ),
        (
            "sequential-port (+1)",
            NatBehaviour::declared(
                Mapping::EndpointDependent,
                Allocation::Sequential { delta: 1 },
                Filtering::Unknown,
                any,
            ),
        ),
        (
            "random-port (symmetric)",
            NatBehaviour::declared(
                Mapping::EndpointDependent,
                Allocation::Random,
                Filtering::Unknown,
                any,
            ),
        ),
    ]
}

fn strategy_kind(s: &Strategy) -> &'static str {
    match s {
        Strategy::Direct => "direct",
        Strategy::PredictSequential { .. } => "predict-sequential",
        Strategy::Birthday { .. } => "birthday",
        Strategy::Impossible { .. } => "impossible",
        _ => "other",
    }
}

fn test_name(t: Test) -> &'static str {
    match t {
        Test::Binding => "binding",
        Test::OtherIp => "other-ip",
        Test::OtherAddress => "other-address",
        Test::ChangeIpAndPort => "change-ip-and-port",
        Test::ChangePort => "change-port",
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl TestSummary {
    fn new(t: &TestResult) -> Self {
        let (result, from, detail) = match &t.outcome {
            TestOutcome::Answered { from, .. } => ("answered", Some(*from), None),
            TestOutcome::Error { from, code, reason } => {
                ("error", Some(*from), Some(format!("error {code} {reason}")))
            }
            TestOutcome::Malformed { from, error } => {
                ("malformed", Some(*from), Some(error.to_string()))
            }
            TestOutcome::TimedOut { after } => (
                "timed-out",
                None,
                Some(format!("no answer in {:.1} s", after.as_secs_f64())),
            ),
        };
        TestSummary {
            server: t.server,
            test: test_name(t.test),
            target: t.target,
            requests: t.requests,
            result,
            from,
            mapped: t.mapped(),
            filtering_received: t.filtering_probe().map(|p| p.received),
            detail,
        }
    }
}

impl NetcheckReport {
    /// The report of `discovery` against `servers` (as given, resolved).
    #[must_use]
    pub fn new(servers: &[(String, SocketAddr)], discovery: &DiscoveryReport) -> Self {
        let b = &discovery.behaviour;
        let servers = servers
            .iter()
            .map(|(spec, addr)| {
                let binding = discovery
                    .tests
                    .iter()
                    .find(|t| t.server == *addr && t.test == Test::Binding);
                let (mapped, other_address, rtt_ms, error) = match binding.map(|t| &t.outcome) {
                    Some(TestOutcome::Answered { response, rtt, .. }) => (
                        Some(response.mapped),
                        response.other_address,
                        rtt.map(millis),
                        None,
                    ),
                    Some(_) => (
                        None,
                        None,
                        None,
                        binding.map(|t| TestSummary::new(t).detail),
                    ),
                    None => (None, None, None, Some(Some("not probed".to_owned()))),
                };
                ServerSummary {
                    server: spec.clone(),
                    addr: *addr,
                    mapped,
                    other_address,
                    rtt_ms,
                    error: error.flatten(),
                }
            })
            .collect();
        let (allocation, allocation_delta) = allocation_of(b);
        let strategies = peer_kinds()
            .iter()
            .map(|(peer, theirs)| {
                let s = Strategy::choose(b, theirs);
                StrategySummary {
                    peer,
                    kind: strategy_kind(&s),
                    strategy: s.to_string(),
                }
            })
            .collect();
        NetcheckReport {
            event: "netcheck",
            local: discovery.local,
            public: discovery.mapped_addresses(),
            no_nat: discovery.no_nat(),
            mapping: b.mapping.to_string(),
            allocation,
            allocation_delta,
            filtering: b.filtering.to_string(),
            servers,
            tests: discovery
                .tests
                .iter()
                .map(TestSummary::new)
                .chain(discovery.skipped.iter().map(|s| TestSummary {
                    server: s.server,
                    test: test_name(s.test),
                    target: s.server,
                    requests: 0,
                    result: "skipped",
                    from: None,
                    mapped: None,
                    filtering_received: None,
                    detail: Some(s.because.to_string()),
                }))
                .collect(),
            strategies,
            refused: b.evidence.refused,
            ignored_datagrams: discovery.ignored_datagrams,
            elapsed_ms: discovery
                .elapsed
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            tcp: None,
        }
    }
}

fn opt<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

impl Display for NetcheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Report:")?;
        writeln!(f, "\t* Local UDP: {}", self.local)?;
        let public: Vec<String> = self.public.iter().map(ToString::to_string).collect();
        let note = if self.no_nat {
            " (same as local: no NAT)"
        } else {
            ""
        };
        writeln!(f, "\t* Public:    {}{note}", public.join(", "))?;
        writeln!(f, "\t* Mapping:   {}", self.mapping)?;
        match self.allocation_delta {
            Some(d) => writeln!(f, "\t* Ports:     sequential ({d:+})")?,
            None => writeln!(f, "\t* Ports:     {}", self.allocation)?,
        }
        writeln!(f, "\t* Filtering: {}", self.filtering)?;
        writeln!(f, "\t* Servers:")?;
        for s in &self.servers {
            let name = if s.server == s.addr.to_string() {
                s.server.clone()
            } else {
                format!("{} ({})", s.server, s.addr)
            };
            match (&s.mapped, &s.error) {
                (Some(m), _) => {
                    write!(f, "\t\t- {name}: sees {m}")?;
                    if let Some(rtt) = s.rtt_ms {
                        write!(f, ", {rtt:.1} ms")?;
                    }
                    match s.other_address {
                        Some(o) => writeln!(f, ", RFC 5780 other address {o}")?,
                        None => writeln!(f, ", no RFC 5780")?,
                    }
                }
                (None, e) => writeln!(f, "\t\t- {name}: {}", opt(e.as_ref()))?,
            }
        }
        writeln!(f, "\t* Tests:")?;
        for t in &self.tests {
            write!(f, "\t\t- {:<18} to {}: {}", t.test, t.target, t.result)?;
            if let Some(from) = t.from {
                write!(f, " from {from}")?;
            }
            if let Some(m) = t.mapped {
                write!(f, ", sees {m}")?;
            }
            if let Some(d) = &t.detail {
                write!(f, " ({d})")?;
            }
            writeln!(f)?;
        }
        writeln!(f, "\t* Strategies:")?;
        for s in &self.strategies {
            writeln!(f, "\t\t- {} peer: {}", s.peer, s.strategy)?;
        }
        if let Some(tcp) = &self.tcp {
            writeln!(f, "\t* TCP from {}:", tcp.local)?;
            let public: Vec<String> = tcp.public.iter().map(ToString::to_string).collect();
            writeln!(f, "\t\t- public:  {}", public.join(", "))?;
            writeln!(f, "\t\t- mapping: {}", tcp.mapping)?;
            match tcp.allocation_delta {
                Some(d) => writeln!(f, "\t\t- ports:   sequential ({d:+})")?,
                None => writeln!(f, "\t\t- ports:   {}", tcp.allocation)?,
            }
            for s in &tcp.servers {
                match (&s.mapped, &s.error) {
                    (Some(m), _) => writeln!(
                        f,
                        "\t\t- {}: sees {m}, {:.1} ms",
                        s.server,
                        s.rtt_ms.unwrap_or_default()
                    )?,
                    (None, e) => writeln!(f, "\t\t- {}: {}", s.server, opt(e.as_ref()))?,
                }
            }
        }
        writeln!(f, "\t* UDP probing took {} ms", self.elapsed_ms)
    }
}
