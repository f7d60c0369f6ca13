//! `natlab selftest`: build topologies and check, with real traffic, that
//! they behave as the matrix assumes. Every check compares what packets did
//! with what the configuration should make them do, so each one fails when
//! the lab is wrong.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::birthday;
use crate::names::{self, RunNames};
use crate::nat::Site;
use crate::probe::{ConnectReport, PingReport};
use crate::proc::Proc;
use crate::topo::{self, DelaySpec, Lab, RELAY_IP, TopologySpec};
use crate::{ms, self_exe};

/// Topology build and teardown must each stay under this (the brief: "well
/// under a second"), or a 20-case matrix spends its budget on plumbing.
pub const SETUP_TEARDOWN_BUDGET: Duration = Duration::from_secs(1);

/// Extra RTT the delay line may add beyond twice its one-way delay: thread
/// wake-up latency, twice per direction, on a loaded 2-core machine.
pub const DELAY_TOLERANCE_MS: f64 = 5.0;

/// Extra time a TCP handshake through the delay line may take beyond
/// twice its one-way delay. The handshake is not judged against a
/// baseline as the UDP check is, and it pays more wake-ups (SYN and
/// SYN-ACK each read and written by the delay line, plus both ends'
/// scheduling): on this 2-core machine under CI load three connects took
/// 105.9, 108.4 and 114.4 ms for 100 ms. 15 ms is still far below a
/// second delay (50 ms), the fault this bound catches.
pub const TCP_DELAY_TOLERANCE_MS: f64 = 15.0;

/// How long a probe server may take to print `ready`.
const PROBE_READY_TIMEOUT: Duration = Duration::from_secs(3);

/// Probes of the birthday check: with 256 sockets, 2048 probes meet with
/// probability 1 - (1 - 256/64512)^2048 = 99.97 %, so the check that must
/// meet fails by chance about once in 3,400 runs.
const BIRTHDAY_CHECK_PROBES: u32 = 2048;
/// Gap between the check's probes: 2048 of them in about 1 s.
const BIRTHDAY_CHECK_INTERVAL_US: u64 = 500;

/// UDP port of the echo servers.
const ECHO_PORT: u16 = 3478;
/// TCP port of the echo servers.
const TCP_ECHO_PORT: u16 = 3479;
/// Inside source port used by the NAT checks (free on a fresh host, so cone
/// masquerade keeps it).
const INSIDE_PORT: u16 = 40_000;
/// Port of the public peer in the early-packet checks.
const PEER_PORT: u16 = 7_000;

/// `natlab selftest` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One-way delay of the delay-line check, ms.
    #[arg(long, default_value_t = 50.0)]
    pub delay_ms: f64,
    /// Topologies built for the timing check.
    #[arg(long, default_value_t = 5)]
    pub timing_iterations: u32,
    /// Only run checks whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
}

struct Outcome {
    name: String,
    passed: bool,
    detail: String,
}

struct Checks {
    filter: Option<String>,
    results: Vec<Outcome>,
}

impl Checks {
    fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    /// Run one check; an error counts as FAIL with the error as detail.
    fn check(&mut self, name: &str, f: impl FnOnce() -> Result<(bool, String)>) {
        if !self.wants(name) {
            return;
        }
        let started = Instant::now();
        let (passed, detail) = match f() {
            Ok(x) => x,
            Err(e) => (false, format!("error: {e:#}")),
        };
        println!(
            "{} {name} ({:.2} s): {detail}",
            if passed { "PASS" } else { "FAIL" },
            started.elapsed().as_secs_f64()
        );
        self.results.push(Outcome {
            name: name.into(),
            passed,
            detail,
        });
    }
}

fn sa(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// Start the echo server `kind` (`udp-echo`, `tcp-echo`) on `listen` in
/// `ns` (`who` names it in the logs), first sending `hello` (UDP), and wait
/// for its ready line.
fn echo(
    lab: &Lab,
    kind: &str,
    who: (&str, &str),
    listen: SocketAddr,
    hello: Option<SocketAddr>,
) -> Result<Proc> {
    echo_with(lab, kind, who, listen, hello, &[])
}

/// [`echo`], with `extra` arguments for the probe.
fn echo_with(
    lab: &Lab,
    kind: &str,
    (who, ns): (&str, &str),
    listen: SocketAddr,
    hello: Option<SocketAddr>,
    extra: &[String],
) -> Result<Proc> {
    let mut args = vec![
        "probe".to_owned(),
        kind.to_owned(),
        "--listen".into(),
        listen.to_string(),
    ];
    args.extend(
        hello
            .iter()
            .flat_map(|h| ["--hello".to_owned(), h.to_string()]),
    );
    args.extend_from_slice(extra);
    let p = lab.spawn(
        &format!("{kind} {who}"),
        ns,
        &self_exe()?.to_string_lossy(),
        &args,
    )?;
    p.wait_for_line(Instant::now() + PROBE_READY_TIMEOUT, "ready line", |l| {
        l.contains("\"event\":\"ready\"")
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", p.dump()))?;
    Ok(p)
}

/// Run the probe `kind` in `ns` from `bind` to each of `to` (then `extra`
/// arguments); its JSON lines.
fn probe<T: serde::de::DeserializeOwned>(
    lab: &Lab,
    ns: &str,
    kind: &str,
    bind: SocketAddr,
    to: &[SocketAddr],
    extra: &[String],
) -> Result<Vec<T>> {
    let mut args = vec![
        "probe".to_owned(),
        kind.to_owned(),
        "--bind".into(),
        bind.to_string(),
    ];
    args.extend(to.iter().flat_map(|t| ["--to".to_owned(), t.to_string()]));
    args.extend_from_slice(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.run(ns, &self_exe()?.to_string_lossy(), &args)?;
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("probe output {l:?}")))
        .collect()
}

/// `count` UDP pings, `interval_ms` apart, from `bind` to each of `to`.
fn udp_ping(
    lab: &Lab,
    ns: &str,
    bind: SocketAddr,
    to: &[SocketAddr],
    count: u32,
    interval_ms: u64,
) -> Result<Vec<PingReport>> {
    let extra = [
        ("--count", count.to_string()),
        ("--interval-ms", interval_ms.to_string()),
    ];
    let extra: Vec<String> = extra
        .into_iter()
        .flat_map(|(k, v)| [k.to_owned(), v])
        .collect();
    probe(lab, ns, "udp-ping", bind, to, &extra)
}

/// One TCP connection from `bind` to each of `to`.
fn tcp_connect(
    lab: &Lab,
    ns: &str,
    bind: SocketAddr,
    to: &[SocketAddr],
) -> Result<Vec<ConnectReport>> {
    probe(lab, ns, "tcp-connect", bind, to, &[])
}

/// The single NAT mapping a ping report shows, or an error saying why not.
fn single_mapping(r: &PingReport) -> Result<SocketAddr> {
    ensure!(r.received > 0, "no reply from {} ({} sent)", r.to, r.sent);
    ensure!(
        r.observed.len() == 1,
        "{} saw several mappings: {:?}",
        r.to,
        r.observed
    );
    Ok(r.observed[0])
}

fn build(names: &mut RunNames, site1: Site, site2: Site, delay1: Option<DelaySpec>) -> Result<Lab> {
    let mut spec = TopologySpec::new(site1, site2);
    spec.delay[0] = delay1;
    Lab::build(&names.next_topology(), spec)
}

/// Mapping checks: the inside host talks to two destinations (the relay,
/// site 2's public host) from one port, over UDP and over TCP. Returns
/// the mappings they saw, per protocol, and the median UDP RTT to the
/// relay.
fn mappings(lab: &Lab) -> Result<([[SocketAddr; 2]; 2], f64)> {
    let hosts = [
        ("relay", lab.relay_ns(), RELAY_IP),
        ("p2", lab.host_ns(2), lab.host_ip(2)),
    ];
    let mut servers = Vec::new();
    for (kind, port) in [("udp-echo", ECHO_PORT), ("tcp-echo", TCP_ECHO_PORT)] {
        for (who, ns, ip) in &hosts {
            servers.push(echo(lab, kind, (who, ns), sa(*ip, port), None)?);
        }
    }
    let to = |port| hosts.each_ref().map(|h| sa(h.2, port));
    let (h1, bind) = (lab.host_ns(1), sa(lab.host_ip(1), INSIDE_PORT));
    let reports = udp_ping(lab, &h1, bind, &to(ECHO_PORT), 10, 10)?;
    let udp = [single_mapping(&reports[0])?, single_mapping(&reports[1])?];
    let rtt = reports[0].median_ms().context("no RTT")?;
    let bind = sa(lab.host_ip(1), INSIDE_PORT + 1);
    let conns = tcp_connect(lab, &h1, bind, &to(TCP_ECHO_PORT))?;
    let mut tcp = Vec::new();
    for c in &conns {
        match (c.ok, c.observed) {
            (true, Some(o)) => tcp.push(o),
            _ => bail!(
                "TCP to {} failed: {}",
                c.to,
                c.error.as_deref().unwrap_or("?")
            ),
        }
    }
    Ok(([udp, [tcp[0], tcp[1]]], rtt))
}

/// Send from `p2` to the inside host's address directly (routed via the
/// router, no NAT involved) while it runs an echo server: does it answer?
fn unsolicited_direct(lab: &Lab) -> Result<PingReport> {
    let h1 = sa(lab.host_ip(1), INSIDE_PORT);
    let _echo = echo(lab, "udp-echo", ("h1", &lab.host_ns(1)), h1, None)?;
    let p2 = lab.host_ns(2);
    // An attacker on the public segment routing the LAN prefix via the router.
    let via = lab.public_ip(1).to_string();
    lab.run(&p2, "ip", &["route", "add", "10.0.1.0/24", "via", &via])?;
    let r = udp_ping(lab, &p2, sa(lab.host_ip(2), PEER_PORT), &[h1], 5, 20)?;
    r.into_iter().next().context("no report")
}

/// The early-packet scenario: the public peer sends to our router's WAN
/// address and port *before* we send to it; then we send from that port.
/// Returns the mapping the peer saw and whether our ping got replies.
fn early_peer_packet(lab: &Lab) -> Result<PingReport> {
    let peer = sa(lab.host_ip(2), PEER_PORT);
    let our_wan = sa(lab.public_ip(1), INSIDE_PORT);
    let who = ("p2 (early hello)", &*lab.host_ns(2));
    let _peer = echo(lab, "udp-echo", who, peer, Some(our_wan))?;
    // Let the hello cross the bridge and reach the router.
    std::thread::sleep(Duration::from_millis(50));
    let bind = sa(lab.host_ip(1), INSIDE_PORT);
    let r = udp_ping(lab, &lab.host_ns(1), bind, &[peer], 5, 20)?;
    r.into_iter().next().context("no report")
}

/// Which of three inside UDP sockets a third party's packets reached; see
/// [`inbound_filtering`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FilterSeen {
    /// The socket that sent only to the relay: any source may use its port.
    mapped_elsewhere: bool,
    /// The socket that sent to another port of the prober's IP: the IP may.
    contacted_ip: bool,
    /// The socket that never sent: no mapping, nothing may get in.
    unmapped: bool,
}

impl FilterSeen {
    /// Conntrack only (exact remote address and port).
    const PORT_RESTRICTED: FilterSeen = FilterSeen {
        mapped_elsewhere: false,
        contacted_ip: false,
        unmapped: false,
    };
    /// Endpoint-independent filtering.
    const FULL_CONE: FilterSeen = FilterSeen {
        mapped_elsewhere: true,
        contacted_ip: true,
        unmapped: false,
    };
    /// Address-dependent filtering.
    const ADDRESS_RESTRICTED: FilterSeen = FilterSeen {
        mapped_elsewhere: false,
        contacted_ip: true,
        unmapped: false,
    };

    fn describe(&self) -> &'static str {
        match (self.mapped_elsewhere, self.contacted_ip) {
            (true, _) => "any address reaches a mapped port, an unmapped one stays closed",
            (false, true) => {
                "only an IP the socket sent to (any of its ports) gets in, unmapped stays closed"
            }
            (false, false) => "only the exact address the socket sent to gets in",
        }
    }
}

/// What [`inbound_filtering`] measured.
struct Filtering {
    /// Ping reports of the prober to the three WAN ports, in
    /// [`FilterSeen`]'s field order.
    reports: Vec<PingReport>,
}

impl Filtering {
    fn seen(&self) -> Option<FilterSeen> {
        let got = |i: usize| self.reports.get(i).map(|r| r.received > 0);
        Some(FilterSeen {
            mapped_elsewhere: got(0)?,
            contacted_ip: got(1)?,
            unmapped: got(2)?,
        })
    }

    fn matches(&self, want: &FilterSeen) -> bool {
        self.reports.iter().all(|r| r.sent > 0) && self.seen().as_ref() == Some(want)
    }

    fn detail(&self, lab: &Lab) -> String {
        let what = [
            "socket that sent only to the relay",
            "socket that sent to another port of p2's IP",
            "socket that never sent",
        ];
        let parts: Vec<String> = self
            .reports
            .iter()
            .zip(what)
            .map(|(r, w)| format!("{} ({w}): {}/{} answered", r.to, r.received, r.sent))
            .collect();
        format!(
            "p2 from port {PEER_PORT} to {}; router conntrack: {}",
            parts.join("; "),
            conntrack_udp(lab, 1)
        )
    }
}

/// The filtering check: three UDP echo sockets on site 1's inside host, one
/// that sent to the relay, one that sent to p2's IP at a port other than
/// the one p2 probes from, one that never sent; then p2 pings the WAN port
/// of each (masquerade keeps the inside port, see the mapping checks).
fn inbound_filtering(lab: &Lab) -> Result<Filtering> {
    let h1 = (lab.host_ns(1), lab.host_ip(1));
    let p2_ip = lab.host_ip(2);
    let sockets = [
        (INSIDE_PORT, Some(sa(RELAY_IP, ECHO_PORT))),
        (INSIDE_PORT + 2, Some(sa(p2_ip, PEER_PORT + 1))),
        (INSIDE_PORT + 4, None),
    ];
    let mut servers = Vec::new();
    for (port, hello) in sockets {
        let who = format!("h1 :{port}");
        servers.push(echo(lab, "udp-echo", (&who, &h1.0), sa(h1.1, port), hello)?);
    }
    // Let the hellos leave before the prober starts.
    std::thread::sleep(Duration::from_millis(50));
    let to = sockets.map(|(port, _)| sa(lab.public_ip(1), port));
    let reports = udp_ping(lab, &lab.host_ns(2), sa(p2_ip, PEER_PORT), &to, 5, 20)?;
    drop(servers);
    Ok(Filtering { reports })
}

/// `InHdrErrors` of the IP counters in namespace `ns`: among them, every
/// packet whose TTL expired there instead of being forwarded.
fn ttl_expired(lab: &Lab, ns: &str) -> Result<u64> {
    let snmp = lab.run(ns, "cat", &["/proc/net/snmp"])?;
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next(), ip.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Ip lines in /proc/net/snmp of {ns}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InHdrErrors")
        .context("no InHdrErrors counter")?
        .1
        .parse()
        .context("InHdrErrors is not a number")
}

/// Where one UDP datagram with IP TTL `ttl` from site 1's host to site 2's
/// public address went: the TTL-expired counts of the two transit hops it
/// added (site 1's, site 2's), and whether each router's conntrack holds
/// its flow.
fn low_ttl_datagram(lab: &Lab, ttl: u32, port: u16) -> Result<([u64; 2], [bool; 2])> {
    let transit = |site| lab.transit_ns(site).context("a NAT site has a transit hop");
    let (t1, t2) = (transit(1)?, transit(2)?);
    let before = [ttl_expired(lab, &t1)?, ttl_expired(lab, &t2)?];
    let peer = sa(lab.public_ip(2), PEER_PORT);
    let extra = [
        "--hello-ttl".to_owned(),
        ttl.to_string(),
        "--lifetime-s".into(),
        "5".into(),
    ];
    let who = ("h1 (low TTL)", lab.host_ns(1));
    let listen = sa(lab.host_ip(1), port);
    let _p = echo_with(lab, "udp-echo", (who.0, &who.1), listen, Some(peer), &extra)?;
    // The hello left before the ready line; let it cross the hops.
    std::thread::sleep(Duration::from_millis(50));
    let after = [ttl_expired(lab, &t1)?, ttl_expired(lab, &t2)?];
    let flow = format!("sport={port} dport={PEER_PORT}");
    let ours = conntrack_udp(lab, 1).contains(&format!("src={} ", lab.host_ip(1)))
        && conntrack_udp(lab, 1).contains(&flow);
    let theirs = conntrack_udp(lab, 2).contains(&format!("src={} ", lab.public_ip(1)));
    Ok(([after[0] - before[0], after[1] - before[1]], [ours, theirs]))
}

fn conntrack_udp(lab: &Lab, site: u8) -> String {
    lab.router_ns(site)
        .and_then(|ns| lab.run(&ns, "conntrack", &["-L", "-p", "udp"]).ok())
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Build and tear down `iterations` topologies; timings in ms.
pub struct Timing {
    pub setup_ms: Vec<f64>,
    pub teardown_ms: Vec<f64>,
    /// Whether delay lines were included.
    pub with_delay: bool,
}

impl Timing {
    /// One line for humans.
    pub fn summary(&self) -> String {
        let f = |v: &[f64]| {
            format!(
                "median {:.1} ms, max {:.1} ms",
                crate::stats::median(v).unwrap_or(f64::NAN),
                v.iter().copied().fold(f64::NAN, f64::max)
            )
        };
        format!(
            "{} topologies (cone/cone{}): setup {}; teardown {}",
            self.setup_ms.len(),
            if self.with_delay {
                " + 2 delay lines"
            } else {
                ""
            },
            f(&self.setup_ms),
            f(&self.teardown_ms)
        )
    }
}

/// Measure setup and teardown of cone/cone topologies.
pub fn measure_setup_teardown(iterations: u32, with_delay: bool) -> Result<Timing> {
    let mut names = RunNames::random();
    let mut t = Timing {
        setup_ms: vec![],
        teardown_ms: vec![],
        with_delay,
    };
    for _ in 0..iterations.max(1) {
        let mut spec = TopologySpec::new(Site::CONE, Site::CONE);
        if with_delay {
            spec.delay = [Some(DelaySpec::fixed(10.0)), Some(DelaySpec::fixed(10.0))];
        }
        let lab = Lab::build(&names.next_topology(), spec)?;
        t.setup_ms.push(ms(lab.setup_time()));
        t.teardown_ms.push(ms(lab.teardown()?));
    }
    Ok(t)
}

/// Run every check; exit 1 if any failed.
pub fn run(args: &Args) -> Result<ExitCode> {
    let mut names = RunNames::random();
    let run_prefix = names.run_prefix();
    let mut c = Checks {
        filter: args.filter.clone(),
        results: vec![],
    };
    let d = args.delay_ms;
    let mut baseline_rtt = None;

    // Cone kinds: endpoint-independent mapping, port preserved; symmetric:
    // endpoint-dependent. One topology each, checked over UDP and TCP.
    let mapping_sites = [
        Site::CONE,
        Site::FULL_CONE,
        Site::ADDRESS_RESTRICTED,
        Site::SYMMETRIC,
        Site::Cgnat,
    ];
    for site in mapping_sites {
        let keeps = site != Site::SYMMETRIC;
        let check_name = |proto: &str| {
            if keeps {
                format!("{site} keeps the {proto} source port towards two destinations")
            } else {
                format!("{site} changes the {proto} source port per destination")
            }
        };
        if !["UDP", "TCP"].iter().any(|p| c.wants(&check_name(p))) {
            continue;
        }
        let lab = build(&mut names, site, Site::Public, None)?;
        let m = mappings(&lab);
        if let (Ok((_, rtt)), Site::CONE) = (&m, site) {
            baseline_rtt = Some(*rtt);
        }
        let wan = lab.public_ip(1);
        for (i, proto) in ["UDP", "TCP"].into_iter().enumerate() {
            let seen = m
                .as_ref()
                .map(|(seen, _)| seen[i])
                .map_err(|e| anyhow::anyhow!("{e:#}"));
            let said = |s: [SocketAddr; 2]| format!("relay saw {}, public host saw {}", s[0], s[1]);
            if keeps {
                let want = sa(wan, INSIDE_PORT + i as u16);
                c.check(&check_name(proto), || {
                    let s = seen?;
                    Ok((
                        s == [want; 2],
                        format!("{} (want {want} for both)", said(s)),
                    ))
                });
            } else {
                c.check(&check_name(proto), || {
                    let s = seen?;
                    let ok =
                        s[0].port() != s[1].port() && s.iter().all(|a| a.ip() == IpAddr::V4(wan));
                    Ok((ok, said(s)))
                });
            }
        }
    }

    // Filtering of the cone kinds: who may use a mapped port.
    for (site, want) in [
        (Site::CONE, FilterSeen::PORT_RESTRICTED),
        (Site::FULL_CONE, FilterSeen::FULL_CONE),
        (Site::ADDRESS_RESTRICTED, FilterSeen::ADDRESS_RESTRICTED),
        (Site::Cgnat, FilterSeen::PORT_RESTRICTED),
    ] {
        c.check(&format!("{site} filtering: {}", want.describe()), || {
            let lab = build(&mut names, site, Site::Public, None)?;
            let seen = inbound_filtering(&lab)?;
            Ok((seen.matches(&want), seen.detail(&lab)))
        });
    }

    // CGNAT: the host's packets cross two NATs.
    c.check(
        "cgnat translates twice: the carrier sees the home router's shared address",
        || {
            let lab = build(&mut names, Site::Cgnat, Site::Public, None)?;
            let relay = sa(RELAY_IP, ECHO_PORT);
            let _echo = echo(&lab, "udp-echo", ("relay", &lab.relay_ns()), relay, None)?;
            let bind = sa(lab.host_ip(1), INSIDE_PORT);
            let r = udp_ping(&lab, &lab.host_ns(1), bind, &[relay], 3, 10)?;
            let m = single_mapping(&r[0])?;
            let carrier = lab.carrier_ns(1).context("a CGNAT site has a carrier")?;
            let ct = lab.run(&carrier, "conntrack", &["-L", "-p", "udp"])?;
            let home = topo::home_wan_ip(1);
            let want = sa(lab.public_ip(1), INSIDE_PORT);
            Ok((
                m == want && ct.contains(&format!("src={home} ")),
                format!(
                    "relay saw {m} (want {want}); carrier conntrack (want src={home}): {}",
                    ct.trim()
                ),
            ))
        },
    );

    // The birthday punch's raw datagrams (src/birthday.rs): they meet
    // through a symmetric NAT and a cone, and never through two symmetric
    // NATs, where each probe leaves from a fresh port no prime expects.
    let birthday_cases = [true, false].into_iter().flat_map(|tcp| {
        [(Site::CONE, true), (Site::SYMMETRIC, false)].map(|(easy, met)| (tcp, easy, met))
    });
    for (tcp, easy, want_met) in birthday_cases {
        let args = birthday::Args {
            trials: 1,
            sockets: birthday::DEFAULT_SOCKETS,
            probes: BIRTHDAY_CHECK_PROBES,
            interval_us: BIRTHDAY_CHECK_INTERVAL_US,
            hard: Site::SYMMETRIC,
            easy,
            seed: 1,
            tcp,
            json: false,
        };
        let verb = if want_met { "meet" } else { "never meet" };
        let what = if tcp { "connects" } else { "datagrams" };
        let name = format!(
            "birthday {what} {verb}: symmetric ({} sockets) against {easy} ({} probes)",
            args.sockets, args.probes
        );
        c.check(&name, || {
            let t = birthday::trial(&mut names, &args, 0)?;
            Ok((
                t.met() == want_met && (want_met || t.hard_sockets_hit == 0),
                format!(
                    "{} after {} probes in {:.1} ms, {} hard sockets reached{}",
                    if t.met() { "met" } else { "no answer" },
                    t.easy.probes_sent,
                    t.easy.elapsed_ms,
                    t.hard_sockets_hit,
                    t.easy
                        .hit
                        .map(|h| format!(", answer from {h}"))
                        .unwrap_or_default()
                ),
            ))
        });
    }

    // Firewall: unsolicited inbound never reaches the host.
    c.check("firewall drops unsolicited inbound (mapped port and routed inside address)", || {
        let lab = build(&mut names, Site::CONE, Site::Public, None)?;
        let h1_ip = lab.host_ip(1);
        let wan_port = sa(lab.public_ip(1), INSIDE_PORT);
        // A mapping towards the relay exists; a third party tries to use it.
        let hello = Some(sa(RELAY_IP, ECHO_PORT));
        let _echo = echo(&lab, "udp-echo", ("h1", &lab.host_ns(1)), sa(h1_ip, INSIDE_PORT), hello)?;
        let third = udp_ping(&lab, &lab.host_ns(2), sa(lab.host_ip(2), PEER_PORT), &[wan_port], 5, 20)?;
        drop(_echo);
        let direct = unsolicited_direct(&lab)?;
        Ok((
            third[0].received == 0 && direct.received == 0 && third[0].sent > 0 && direct.sent > 0,
            format!(
                "to the mapped port {wan_port}: {}/{} answered; to {h1_ip} routed via the router: {}/{} answered (want 0 and 0)",
                third[0].received, third[0].sent, direct.received, direct.sent
            ),
        ))
    });
    c.check(
        "without firewall, unsolicited inbound reaches the inside host",
        || {
            let lab = build(&mut names, Site::CONE_NO_FIREWALL, Site::Public, None)?;
            let direct = unsolicited_direct(&lab)?;
            Ok((
                direct.received > 0,
                format!(
                    "{}/{} answered (want > 0: proves the firewall check above can fail)",
                    direct.received, direct.sent
                ),
            ))
        },
    );

    // The early-packet quirk.
    c.check(
        "firewall: a peer's early packet is dropped, our port is kept and the punch works",
        || {
            let lab = build(&mut names, Site::CONE, Site::Public, None)?;
            let r = early_peer_packet(&lab)?;
            let want = sa(lab.public_ip(1), INSIDE_PORT);
            let m = single_mapping(&r)?;
            Ok((
                m == want,
                format!(
                    "peer saw {m} (want {want}), {}/{} replies came back in",
                    r.received, r.sent
                ),
            ))
        },
    );
    c.check(
        "no firewall: a peer's early packet moves our mapping to another port (Linux quirk)",
        || {
            let lab = build(&mut names, Site::CONE_NO_FIREWALL, Site::Public, None)?;
            let r = early_peer_packet(&lab)?;
            let planned = sa(lab.public_ip(1), INSIDE_PORT);
            let m = single_mapping(&r)?;
            let ct = conntrack_udp(&lab, 1);
            Ok((
                m.ip() == planned.ip() && m.port() != INSIDE_PORT,
                format!("peer saw {m}, not {planned}; router conntrack: {ct}"),
            ))
        },
    );

    // Low-TTL priming: DEFAULT_PRIME_TTL passes our own NAT and expires at
    // the transit hop behind it, never reaching the peer's NAT.
    c.check(
        "a TTL-2 datagram passes its own NAT (mapped in conntrack) and expires at its transit hop, before the peer's",
        || {
            let lab = build(&mut names, Site::CONE_NO_FIREWALL, Site::CONE_NO_FIREWALL, None)?;
            let ttl = u32::from(dcutr_core::settings::DEFAULT_PRIME_TTL);
            let (expired, [ours, theirs]) = low_ttl_datagram(&lab, ttl, INSIDE_PORT)?;
            // The same datagram with one hop more dies at the peer's
            // transit: the counters tell the hops apart.
            let (further, _) = low_ttl_datagram(&lab, ttl + 1, INSIDE_PORT + 1)?;
            Ok((
                expired == [1, 0] && ours && !theirs && further == [0, 1],
                format!(
                    "TTL {ttl}: expired at transit 1/2: {}/{}, our router mapped it: {ours}, peer's router saw it: {theirs} (want 1/0, true, false); TTL {}: expired at 1/2: {}/{} (want 0/1)",
                    expired[0],
                    expired[1],
                    ttl + 1,
                    further[0],
                    further[1]
                ),
            ))
        },
    );

    // Delay line.
    c.check(&format!("delay line adds {d} ms each way (UDP RTT)"), || {
        let lab = build(&mut names, Site::CONE, Site::Public, Some(DelaySpec::fixed(d)))?;
        let _echo = echo(&lab, "udp-echo", ("relay", &lab.relay_ns()), sa(RELAY_IP, ECHO_PORT), None)?;
        let r = udp_ping(&lab, &lab.host_ns(1), sa(lab.host_ip(1), INSIDE_PORT), &[sa(RELAY_IP, ECHO_PORT)], 20, 20)?;
        let r = &r[0];
        ensure!(r.received > 0, "no reply through the delay line");
        let med = r.median_ms().expect("replies");
        let (min, max) = (r.rtts_ms[0], r.rtts_ms[r.rtts_ms.len() - 1]);
        // Without the cone check (filtered out) there is no baseline: 0.
        let base = baseline_rtt.unwrap_or(0.0);
        let added = med - base;
        let ok = r.received == r.sent && min >= 2.0 * d && added <= 2.0 * d + DELAY_TOLERANCE_MS;
        Ok((ok, format!(
            "RTT median {med:.2} ms (min {min:.2}, max {max:.2}, {}/{} replies), baseline without delay line {base:.2} ms: added {added:.2} ms for 2x{d} ms configured (tolerance +{DELAY_TOLERANCE_MS} ms)",
            r.received, r.sent
        )))
    });
    c.check(
        "delay line carries TCP (checksum offload off) with the delay",
        || {
            let lab = build(
                &mut names,
                Site::CONE,
                Site::Public,
                Some(DelaySpec::fixed(d)),
            )?;
            let dest = sa(RELAY_IP, TCP_ECHO_PORT);
            let _echo = echo(&lab, "tcp-echo", ("relay", &lab.relay_ns()), dest, None)?;
            // Three connections from ephemeral ports; judge the median handshake.
            let r = tcp_connect(&lab, &lab.host_ns(1), sa(lab.host_ip(1), 0), &[dest, dest, dest])?;
            let errors: Vec<&str> = r.iter().filter_map(|c| c.error.as_deref()).collect();
            let times: Vec<f64> = r.iter().filter_map(|c| c.connect_ms).collect();
            let med = crate::stats::median(&times).unwrap_or(f64::NAN);
            Ok((
                errors.is_empty() && r.iter().all(|c| c.ok) && med >= 2.0 * d && med <= 2.0 * d + TCP_DELAY_TOLERANCE_MS,
                format!(
                    "connect median {med:.2} ms of {times:.2?} (want {:.0}..{:.0}), errors {errors:?}",
                    2.0 * d,
                    2.0 * d + TCP_DELAY_TOLERANCE_MS
                ),
            ))
        },
    );
    c.check("delay line applies jitter without reordering and seeded loss", || {
        let (jitter, loss) = (d / 5.0, 0.2);
        let spec = DelaySpec { delay_ms: d, jitter_ms: jitter, loss, seed: 42 };
        let lab = build(&mut names, Site::CONE, Site::Public, Some(spec))?;
        let _echo = echo(&lab, "udp-echo", ("relay", &lab.relay_ns()), sa(RELAY_IP, ECHO_PORT), None)?;
        let r = udp_ping(&lab, &lab.host_ns(1), sa(lab.host_ip(1), INSIDE_PORT), &[sa(RELAY_IP, ECHO_PORT)], 100, 5)?;
        let r = &r[0];
        ensure!(r.received > 0, "no reply through the delay line");
        // p95 rather than max: one late wake-up on a busy CI machine is not a jitter bug.
        let (min, p95) = (r.rtts_ms[0], crate::stats::quantile(&r.rtts_ms, 0.95).expect("replies"));
        let rate = f64::from(r.received) / f64::from(r.sent);
        // Each request and reply crosses the line once: P(reply) = (1-loss)^2 = 0.64.
        let ok = (0.45..=0.85).contains(&rate) && min >= 2.0 * (d - jitter) && p95 <= 2.0 * (d + jitter) + DELAY_TOLERANCE_MS && p95 - min > 1.0;
        Ok((ok, format!("{}/{} replies ({:.0} %, expect ~64 %), RTT min {min:.2} ms, p95 {p95:.2} ms (want within {:.0}..{:.0})", r.received, r.sent, rate * 100.0, 2.0 * (d - jitter), 2.0 * (d + jitter) + DELAY_TOLERANCE_MS)))
    });

    // Timing.
    c.check("setup and teardown each take under 1 s", || {
        let t = measure_setup_teardown(args.timing_iterations, false)?;
        let td = measure_setup_teardown(args.timing_iterations.min(3), true)?;
        let budget = ms(SETUP_TEARDOWN_BUDGET);
        let worst = t
            .setup_ms
            .iter()
            .chain(&t.teardown_ms)
            .chain(&td.setup_ms)
            .chain(&td.teardown_ms)
            .copied()
            .fold(0.0, f64::max);
        Ok((worst < budget, format!("{}; {}", t.summary(), td.summary())))
    });

    // Teardown on panic, and nothing left behind.
    c.check("teardown runs on panic", || {
        let prefix = names.next_topology();
        let spec = TopologySpec::new(Site::CONE, Site::Public);
        let p = prefix.clone();
        // Keep the deliberate panic's message and backtrace out of the output.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let caught = std::panic::catch_unwind(move || {
            let _lab = Lab::build(&p, spec).expect("build");
            panic!("deliberate panic inside a lab");
        });
        std::panic::set_hook(hook);
        let left: Vec<String> = topo::list_namespaces()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        Ok((
            caught.is_err() && left.is_empty(),
            format!("namespaces left after the panic: {left:?}"),
        ))
    });
    c.check("teardown leaves no namespace behind", || {
        let left: Vec<String> = topo::list_namespaces()
            .into_iter()
            .filter(|n| names::belongs_to_run(n, &run_prefix))
            .collect();
        Ok((
            left.is_empty(),
            format!(
                "{} namespaces of this run ({run_prefix}*) left: {left:?}",
                left.len()
            ),
        ))
    });

    let failed: Vec<&Outcome> = c.results.iter().filter(|o| !o.passed).collect();
    println!();
    for f in &failed {
        println!("failed: {}: {}", f.name, f.detail);
    }
    println!(
        "selftest: {} passed, {} failed",
        c.results.len() - failed.len(),
        failed.len()
    );
    Ok(if failed.is_empty() && !c.results.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
