//! `natlab birthday`: does the birthday punch meet behind the lab's real
//! kernel NATs, and how fast, before the library carries it out?
//!
//! The hard side (behind `masquerade fully-random`, a fresh random WAN port
//! per destination) opens [`DEFAULT_SOCKETS`] UDP sockets and sends one
//! priming datagram from each to the easy side's public address; each
//! opens a mapping `hard WAN:x_i <-> easy` on the hard router that only the
//! easy address may use. The easy side (an endpoint-independent cone with
//! its firewall on, so the primes are dropped there) sends probes from its
//! one socket to the hard WAN IP at distinct random ports, paced; a probe
//! that hits an open `x_i` reaches socket `i`, which answers, and the answer
//! passes the easy router because the probe opened that flow.
//!
//! With `N` sockets, `M` probes and `R` = [`WAN_PORTS`] ports the chance to
//! meet is `1 - (1 - N/R)^M` (98.3 % for 256 x 1024), and the first hit
//! comes after about `R/N` = 252 probes, so the probe interval decides the
//! time to meet. This measures both over real sockets. Over UDP the probes
//! are plain datagrams (`NLB`/`NLP`/`NLA` + a number), no QUIC yet. Over
//! TCP (`--tcp`) each hard socket's prime is a connect (its SYN opens the
//! mapping), each probe is a connect from the easy side's one port, and a
//! probe that hits meets a socket in `SYN_SENT`: a simultaneous open, the
//! same handshake the library's TCP punch completes.

use std::net::{IpAddr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::names::RunNames;
use crate::nat::Site;
use crate::topo::{Lab, TopologySpec};
use crate::{ms, self_exe};

/// Ports `masquerade fully-random` picks from when no range is given:
/// Linux's NAT keeps unprivileged sources above 1023, so 1024..=65535.
pub const WAN_PORTS: std::ops::RangeInclusive<u16> = 1024..=65535;

/// Hard-side sockets: Tailscale's published design uses 256; each costs one
/// socket and one priming datagram.
pub const DEFAULT_SOCKETS: u16 = 256;

/// Easy-side probes: 1024 with 256 sockets meets 98.3 % of the time.
pub const DEFAULT_PROBES: u32 = 1024;

/// Gap between probes: 1 ms puts the expected first hit (~252 probes) at
/// about 0.25 s and all 1024 within about 1 s, inside issue 13's 2 s.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(1);

/// How long the hard side waits for a probe after priming, and keeps
/// answering after its first hit: a bound on the probe process, not a
/// parameter of the punch.
const HARD_LIFETIME: Duration = Duration::from_secs(10);

/// After the last probe the easy side waits this long for a late answer
/// (a relayed-free round trip on the lab is under a millisecond; delay
/// lines add at most a few hundred).
const EASY_LINGER: Duration = Duration::from_millis(500);

/// Where the easy side's socket is bound: free on a fresh host, so the
/// cone keeps it as the WAN port the hard side primes.
pub const EASY_PORT: u16 = 40_000;

/// How long the hard probe may take to open its sockets and print `ready`.
const HARD_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the hard side's `hit` line may trail the easy side's report:
/// a poll round and a print, normally well under a millisecond.
const HIT_LINE_GRACE: Duration = Duration::from_secs(1);

/// Priming datagram magic (hard -> easy, dropped by the easy firewall).
const PRIME: &[u8; 3] = b"NLB";
/// Probe magic (easy -> hard).
const PROBE: &[u8; 3] = b"NLP";
/// Answer magic (hard -> easy).
const ANSWER: &[u8; 3] = b"NLA";

/// Over TCP, how many of the easy side's probe connects stay open at once:
/// a hit is answered within a round trip, so older probes can go, and the
/// window keeps the probe below the default 1024 open files. 512 at 1 ms
/// spans 0.5 s, above any round trip in the lab.
pub const TCP_PROBE_WINDOW: usize = 512;

/// Pause of the TCP probes' poll loops when nothing changed.
const TCP_POLL: Duration = Duration::from_micros(100);

/// `natlab birthday` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Trials, each in a fresh topology.
    #[arg(long, default_value_t = 10)]
    pub trials: u32,
    /// Hard-side sockets (N).
    #[arg(long, default_value_t = DEFAULT_SOCKETS)]
    pub sockets: u16,
    /// Easy-side probes (M).
    #[arg(long, default_value_t = DEFAULT_PROBES)]
    pub probes: u32,
    /// Gap between probes, microseconds.
    #[arg(long, default_value_t = DEFAULT_INTERVAL.as_micros() as u64)]
    pub interval_us: u64,
    /// The hard side's site (site 1).
    #[arg(long, default_value = "symmetric")]
    pub hard: Site,
    /// The easy side's site (site 2).
    #[arg(long, default_value = "cone")]
    pub easy: Site,
    /// Seed of the first trial's probe ports (trial k uses seed + k).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// TCP connects (simultaneous open) instead of datagrams.
    #[arg(long)]
    pub tcp: bool,
    /// One JSON line per trial and a summary, instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What the easy side saw of one trial.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EasyReport {
    /// Always `birthday-easy`.
    pub event: String,
    /// Whether an answer came back.
    pub met: bool,
    /// Probes sent before the answer (or all of them).
    pub probes_sent: u32,
    /// The hard side's WAN address that answered.
    pub hit: Option<SocketAddr>,
    /// From the first probe to the answer (or to the end), ms.
    pub elapsed_ms: f64,
}

/// One trial: the easy side's report and how many of the hard side's
/// sockets were hit.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Trial {
    pub trial: u32,
    pub seed: u64,
    pub easy: EasyReport,
    /// Distinct hard-side sockets a probe reached.
    pub hard_sockets_hit: usize,
}

impl EasyReport {
    /// Nothing sent, nothing answered yet.
    fn unanswered() -> Self {
        EasyReport {
            event: "birthday-easy".into(),
            met: false,
            probes_sent: 0,
            hit: None,
            elapsed_ms: 0.0,
        }
    }
}

impl Trial {
    /// Met on both sides: the easy side got an answer and the hard side
    /// saw the probe that caused it.
    #[must_use]
    pub fn met(&self) -> bool {
        self.easy.met && self.hard_sockets_hit > 0
    }
}

/// The hard side: `sockets` sockets on `bind`, one prime each to `to`, then
/// answer every probe until `lifetime` ends. Prints `ready` after priming
/// and one `hit` line per socket the first time a probe reaches it.
pub fn hard(bind: IpAddr, to: SocketAddr, sockets: u16, lifetime: Duration) -> Result<()> {
    let mut open = Vec::with_capacity(usize::from(sockets));
    for i in 0..sockets {
        let sock = UdpSocket::bind(SocketAddr::new(bind, 0)).context("binding a hard socket")?;
        sock.set_nonblocking(true)?;
        let mut prime = PRIME.to_vec();
        prime.extend_from_slice(&i.to_be_bytes());
        // Dropped by the easy side's firewall; what matters is the mapping.
        let _ = sock.send_to(&prime, to);
        open.push((sock, false));
    }
    println!(
        "{}",
        json!({"event": "ready", "probe": "birthday-hard", "sockets": sockets})
    );
    let end = Instant::now() + lifetime;
    let mut buf = [0u8; 64];
    while Instant::now() < end {
        let mut idle = true;
        for (sock, hit) in &mut open {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            idle = false;
            if n < 7 || &buf[..3] != PROBE {
                continue;
            }
            let mut answer = ANSWER.to_vec();
            answer.extend_from_slice(&buf[3..7]);
            let _ = sock.send_to(&answer, from);
            if !*hit {
                *hit = true;
                let local = sock.local_addr()?.to_string();
                println!(
                    "{}",
                    json!({"event": "hit", "local": local, "from": from.to_string()})
                );
            }
        }
        if idle {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    Ok(())
}

/// Distinct ports of [`WAN_PORTS`], `count` of them (at most all), in the
/// order the seed gives.
#[must_use]
pub fn probe_ports(seed: u64, count: u32) -> Vec<u16> {
    let (low, high) = (*WAN_PORTS.start(), *WAN_PORTS.end());
    let range = usize::from(high - low) + 1;
    let count = usize::try_from(count).unwrap_or(usize::MAX).min(range);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rand::seq::index::sample(&mut rng, range, count)
        .into_iter()
        .map(|i| low + u16::try_from(i).expect("index below the range"))
        .collect()
}

/// The easy side: from `bind`, `probes` probes to `target` at
/// [`probe_ports`] of `seed`, `interval` apart, until one is answered.
pub fn easy(
    bind: SocketAddr,
    target: IpAddr,
    probes: u32,
    interval: Duration,
    seed: u64,
) -> Result<EasyReport> {
    let sock = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
    sock.set_nonblocking(true)?;
    let ports = probe_ports(seed, probes);
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let mut report = EasyReport::unanswered();
    let mut answered = |report: &mut EasyReport| -> bool {
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n >= 7 && &buf[..3] == ANSWER {
                report.met = true;
                report.hit = Some(from);
                return true;
            }
        }
        false
    };
    for (i, port) in (1u32..).zip(&ports) {
        let mut msg = PROBE.to_vec();
        msg.extend_from_slice(&i.to_be_bytes());
        let _ = sock.send_to(&msg, SocketAddr::new(target, *port));
        report.probes_sent = i;
        let next = started + interval * i;
        loop {
            if answered(&mut report) {
                report.elapsed_ms = ms(started.elapsed());
                return Ok(report);
            }
            let now = Instant::now();
            if now >= next {
                break;
            }
            std::thread::sleep((next - now).min(Duration::from_micros(200)));
        }
    }
    let end = Instant::now() + EASY_LINGER;
    while Instant::now() < end && !answered(&mut report) {
        std::thread::sleep(Duration::from_millis(1));
    }
    report.elapsed_ms = ms(started.elapsed());
    Ok(report)
}

/// A nonblocking TCP socket bound to `bind` (shared with other sockets of
/// the same port, as a hole-punching TCP stack binds), connecting to `to`.
fn tcp_connect_from(bind: SocketAddr, to: SocketAddr) -> Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(bind), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&bind.into())
        .with_context(|| format!("binding {bind}"))?;
    sock.set_nonblocking(true)?;
    match sock.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
        Err(e) => return Err(e).with_context(|| format!("connecting to {to}")),
    }
    Ok(sock)
}

/// Whether a nonblocking connect has completed (it has a peer).
fn tcp_connected(sock: &socket2::Socket) -> Option<SocketAddr> {
    sock.peer_addr().ok().and_then(|a| a.as_socket())
}

/// [`hard`] over TCP: each socket's connect to `to` is its prime; prints
/// `hit` for each one a probe's SYN completed (simultaneous open).
pub fn hard_tcp(bind: IpAddr, to: SocketAddr, sockets: u16, lifetime: Duration) -> Result<()> {
    let mut open = Vec::with_capacity(usize::from(sockets));
    for _ in 0..sockets {
        open.push((tcp_connect_from(SocketAddr::new(bind, 0), to)?, false));
    }
    println!(
        "{}",
        json!({"event": "ready", "probe": "birthday-hard", "sockets": sockets, "tcp": true})
    );
    let end = Instant::now() + lifetime;
    while Instant::now() < end {
        for (sock, hit) in &mut open {
            if *hit {
                continue;
            }
            if let Some(from) = tcp_connected(sock) {
                *hit = true;
                let local = sock
                    .local_addr()?
                    .as_socket()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                println!(
                    "{}",
                    json!({"event": "hit", "local": local, "from": from.to_string()})
                );
            }
        }
        std::thread::sleep(TCP_POLL);
    }
    Ok(())
}

/// [`easy`] over TCP: each probe is a connect from `bind` to a random port
/// of `target`; the newest [`TCP_PROBE_WINDOW`] stay open; the first one
/// that completes is the hit.
pub fn easy_tcp(
    bind: SocketAddr,
    target: IpAddr,
    probes: u32,
    interval: Duration,
    seed: u64,
) -> Result<EasyReport> {
    let ports = probe_ports(seed, probes);
    let started = Instant::now();
    let mut report = EasyReport::unanswered();
    let mut window = std::collections::VecDeque::with_capacity(TCP_PROBE_WINDOW);
    let finish = |report: &mut EasyReport, hit: Option<SocketAddr>| {
        report.met = hit.is_some();
        report.hit = hit;
        report.elapsed_ms = ms(started.elapsed());
    };
    for (i, port) in (1u32..).zip(&ports) {
        if window.len() == TCP_PROBE_WINDOW {
            window.pop_front();
        }
        window.push_back(tcp_connect_from(bind, SocketAddr::new(target, *port))?);
        report.probes_sent = i;
        let next = started + interval * i;
        loop {
            if let Some(hit) = window.iter().find_map(tcp_connected) {
                finish(&mut report, Some(hit));
                return Ok(report);
            }
            let now = Instant::now();
            if now >= next {
                break;
            }
            std::thread::sleep((next - now).min(TCP_POLL));
        }
    }
    let end = Instant::now() + EASY_LINGER;
    while Instant::now() < end {
        if let Some(hit) = window.iter().find_map(tcp_connected) {
            finish(&mut report, Some(hit));
            return Ok(report);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    finish(&mut report, None);
    Ok(report)
}

/// One trial in a fresh topology: hard side at site 1, easy at site 2.
pub fn trial(names: &mut RunNames, args: &Args, trial: u32) -> Result<Trial> {
    let lab = Lab::build(
        &names.next_topology(),
        TopologySpec::new(args.hard, args.easy),
    )?;
    let easy_public = SocketAddr::V4(SocketAddrV4::new(lab.public_ip(2), EASY_PORT));
    let exe = self_exe()?.to_string_lossy().into_owned();
    let mut hard_args: Vec<String> = [
        "probe",
        "birthday-hard",
        "--bind",
        &lab.host_ip(1).to_string(),
        "--to",
        &easy_public.to_string(),
        "--sockets",
        &args.sockets.to_string(),
        "--lifetime-ms",
        &HARD_LIFETIME.as_millis().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    if args.tcp {
        hard_args.push("--tcp".into());
    }
    let mut hard = lab.spawn("birthday hard", &lab.host_ns(1), &exe, &hard_args)?;
    hard.wait_for_line(Instant::now() + HARD_READY_TIMEOUT, "ready line", |l| {
        l.contains("\"event\":\"ready\"")
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", hard.dump()))?;
    let seed = args.seed + u64::from(trial);
    let easy_bind = SocketAddr::V4(SocketAddrV4::new(lab.host_ip(2), EASY_PORT));
    let mut easy_args = vec![
        "probe".to_owned(),
        "birthday-easy".into(),
        "--bind".into(),
        easy_bind.to_string(),
        "--target".into(),
        lab.public_ip(1).to_string(),
        "--probes".into(),
        args.probes.to_string(),
        "--interval-us".into(),
        args.interval_us.to_string(),
        "--seed".into(),
        seed.to_string(),
    ];
    if args.tcp {
        easy_args.push("--tcp".into());
    }
    let easy_args: Vec<&str> = easy_args.iter().map(String::as_str).collect();
    let out = lab.run(&lab.host_ns(2), &exe, &easy_args)?;
    let line = out.lines().rev().find(|l| !l.trim().is_empty());
    let easy: EasyReport = match line {
        Some(l) => serde_json::from_str(l).with_context(|| format!("easy output {l:?}"))?,
        None => bail!("the easy side printed nothing"),
    };
    if easy.met {
        // The hard side answers (or completes the handshake) before it
        // prints, so its line may trail the easy side's report.
        let _ = hard.wait_for_line(Instant::now() + HIT_LINE_GRACE, "hit line", |l| {
            l.contains("\"event\":\"hit\"")
        });
    }
    hard.kill();
    hard.join_readers(Duration::from_secs(1));
    let hard_sockets_hit = hard
        .stdout_lines()
        .iter()
        .filter(|l| l.contains("\"event\":\"hit\""))
        .count();
    Ok(Trial {
        trial,
        seed,
        easy,
        hard_sockets_hit,
    })
}

/// `natlab birthday`: `trials` trials, a table or JSON, exit 0 either way
/// unless a trial could not run (a measurement, not a pass/fail gate).
pub fn run(args: &Args) -> Result<ExitCode> {
    let mut names = RunNames::random();
    let mut trials = Vec::new();
    for k in 0..args.trials {
        let t = trial(&mut names, args, k)?;
        if args.json {
            println!("{}", serde_json::to_string(&t)?);
        } else {
            println!(
                "trial {k}: {} after {} probes, {:.1} ms{}",
                if t.met() { "met" } else { "missed" },
                t.easy.probes_sent,
                t.easy.elapsed_ms,
                t.easy.hit.map(|h| format!(" at {h}")).unwrap_or_default()
            );
        }
        trials.push(t);
    }
    let met: Vec<&Trial> = trials.iter().filter(|t| t.met()).collect();
    let times: Vec<f64> = met.iter().map(|t| t.easy.elapsed_ms).collect();
    let probes: Vec<f64> = met.iter().map(|t| f64::from(t.easy.probes_sent)).collect();
    let median_ms = crate::stats::median(&times);
    let median_probes = crate::stats::median(&probes);
    let expected = expected_success(args.sockets, args.probes);
    let transport = if args.tcp { "tcp" } else { "udp" };
    if args.json {
        println!(
            "{}",
            json!({"event": "summary", "transport": transport, "hard": args.hard.to_string(), "easy": args.easy.to_string(),
                   "sockets": args.sockets, "probes": args.probes, "interval_us": args.interval_us,
                   "trials": trials.len(), "met": met.len(), "expected_success": expected,
                   "median_ms_to_meet": median_ms, "median_probes_to_meet": median_probes})
        );
    } else {
        let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "birthday {}/{} {transport}: {} sockets x {} probes every {} us: met {}/{} (expected {:.1} %), median {} ms and {} probes to meet",
            args.hard,
            args.easy,
            args.sockets,
            args.probes,
            args.interval_us,
            met.len(),
            trials.len(),
            expected * 100.0,
            cell(median_ms),
            cell(median_probes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `1 - (1 - N/R)^M` over [`WAN_PORTS`].
#[must_use]
pub fn expected_success(sockets: u16, probes: u32) -> f64 {
    let range = f64::from(*WAN_PORTS.end() - *WAN_PORTS.start()) + 1.0;
    let miss = 1.0 - (f64::from(sockets) / range).min(1.0);
    1.0 - miss.powf(f64::from(probes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_ports_are_distinct_in_range_and_follow_the_seed() {
        let ports = probe_ports(7, 2048);
        assert_eq!(ports.len(), 2048);
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 2048, "no port twice");
        assert!(ports.iter().all(|p| WAN_PORTS.contains(p)));
        assert_eq!(ports, probe_ports(7, 2048));
        assert_ne!(ports, probe_ports(8, 2048));
        // More than the range asks for every port once.
        assert_eq!(probe_ports(1, 70_000).len(), 64_512);
    }

    #[test]
    fn the_expected_success_matches_the_published_figures() {
        // Tailscale's 256 x 1024 (~98 %) and HyperDHT's 256 x 1750 (~99.9 %).
        assert!((expected_success(256, 1024) - 0.983).abs() < 0.002);
        assert!(expected_success(256, 1750) > 0.999);
        assert_eq!(expected_success(256, 0), 0.0);
    }
}
