//! Small traffic probes run inside lab namespaces (`natlab probe ...`). Each
//! prints JSON lines on stdout; the selftest reads them.
//!
//! UDP: a request is `NLQ` + a 4-byte sequence number; the echo server answers
//! `NLR` + the same number + the source address it saw, so the client learns
//! its NAT mapping (like a STUN binding request). Servers answer only
//! requests, never replies, so two servers can never ping-pong.
//! TCP: the echo server writes the peer address it saw as one line and closes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use socket2::{Domain, Protocol, Socket, Type};

/// A probe server exits by itself after this long, so a forgotten one cannot
/// outlive its lab for long even if teardown were skipped.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(300);

/// Poll interval of servers' blocking reads (to notice their lifetime end).
const SERVER_POLL: Duration = Duration::from_millis(200);

/// Request magic.
const REQ: &[u8; 3] = b"NLQ";
/// Reply magic.
const REP: &[u8; 3] = b"NLR";

/// Result of pinging one destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PingReport {
    /// Always `udp-ping`.
    pub event: String,
    pub to: SocketAddr,
    pub sent: u32,
    pub received: u32,
    /// Distinct source addresses the server saw (our NAT mapping).
    pub observed: Vec<SocketAddr>,
    /// Round-trip times of the replies, ms, sorted.
    pub rtts_ms: Vec<f64>,
}

impl PingReport {
    /// Median RTT in ms.
    pub fn median_ms(&self) -> Option<f64> {
        crate::stats::median(&self.rtts_ms)
    }
}

/// Result of one TCP connect.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectReport {
    /// Always `tcp-connect`.
    pub event: String,
    pub to: SocketAddr,
    /// Whether the connection and the server's line arrived.
    pub ok: bool,
    /// Source address the server saw.
    pub observed: Option<SocketAddr>,
    /// Handshake time in ms.
    pub connect_ms: Option<f64>,
    pub error: Option<String>,
}

fn ready(kind: &str, addr: SocketAddr) {
    let listen = addr.to_string();
    println!(
        "{}",
        json!({"event": "ready", "probe": kind, "listen": listen})
    );
}

/// UDP echo server; first sends one request to each `hello` address (to open
/// a mapping or plant a conntrack entry from this socket), with IP TTL
/// `hello_ttl` if given (the socket's default TTL is restored afterwards).
pub fn udp_echo(
    listen: SocketAddr,
    hello: &[SocketAddr],
    hello_ttl: Option<u32>,
    lifetime: Duration,
) -> Result<()> {
    let sock = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    let default_ttl = sock.ttl()?;
    if let Some(ttl) = hello_ttl {
        sock.set_ttl(ttl)?;
    }
    for h in hello {
        let mut msg = REQ.to_vec();
        msg.extend_from_slice(&u32::MAX.to_be_bytes());
        sock.send_to(&msg, h)
            .with_context(|| format!("hello to {h}"))?;
    }
    sock.set_ttl(default_ttl)?;
    sock.set_read_timeout(Some(SERVER_POLL))?;
    ready("udp-echo", sock.local_addr()?);
    let end = Instant::now() + lifetime;
    let mut buf = [0u8; 1500];
    while Instant::now() < end {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            // ICMP errors from our hello surface here; they are not fatal.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e).context("udp-echo receive"),
        };
        if n >= 7 && &buf[..3] == REQ {
            let mut reply = REP.to_vec();
            reply.extend_from_slice(&buf[3..7]);
            reply.extend_from_slice(from.to_string().as_bytes());
            let _ = sock.send_to(&reply, from);
            println!("{}", json!({"event": "rx", "from": from.to_string()}));
        }
    }
    Ok(())
}

/// Ping each destination in turn from one socket bound to `bind`.
pub fn udp_ping(
    bind: SocketAddr,
    to: &[SocketAddr],
    count: u32,
    interval: Duration,
    linger: Duration,
) -> Result<Vec<PingReport>> {
    let sock = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
    let mut reports: Vec<PingReport> = to
        .iter()
        .map(|&to| PingReport {
            event: "udp-ping".into(),
            to,
            sent: 0,
            received: 0,
            observed: vec![],
            rtts_ms: vec![],
        })
        .collect();
    let mut in_flight: BTreeMap<u32, (usize, Instant)> = BTreeMap::new();
    let mut seq = 0u32;
    let mut buf = [0u8; 1500];
    let mut receive_until = |sock: &UdpSocket,
                             until: Instant,
                             reports: &mut Vec<PingReport>,
                             in_flight: &mut BTreeMap<u32, (usize, Instant)>|
     -> Result<()> {
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            sock.set_read_timeout(Some(until - now))?;
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e).context("udp-ping receive"),
            };
            let at = Instant::now();
            if n < 7 || &buf[..3] != REP {
                continue;
            }
            let s = u32::from_be_bytes(buf[3..7].try_into().expect("4 bytes"));
            let Some((dest, sent_at)) = in_flight.remove(&s) else {
                continue;
            };
            let r = &mut reports[dest];
            r.received += 1;
            r.rtts_ms.push((at - sent_at).as_secs_f64() * 1e3);
            if let Ok(obs) = std::str::from_utf8(&buf[7..n])
                .unwrap_or("")
                .parse::<SocketAddr>()
                && !r.observed.contains(&obs)
            {
                r.observed.push(obs);
            }
        }
    };
    // Not connected: recv() takes replies from any destination.
    for (dest, &addr) in to.iter().enumerate() {
        for _ in 0..count {
            let mut msg = REQ.to_vec();
            msg.extend_from_slice(&seq.to_be_bytes());
            let sent_at = Instant::now();
            // An ICMP error from an earlier probe can fail a send; not fatal.
            if sock.send_to(&msg, addr).is_ok() {
                reports[dest].sent += 1;
                in_flight.insert(seq, (dest, sent_at));
            }
            seq += 1;
            receive_until(&sock, sent_at + interval, &mut reports, &mut in_flight)?;
        }
    }
    receive_until(&sock, Instant::now() + linger, &mut reports, &mut in_flight)?;
    for r in &mut reports {
        r.rtts_ms.sort_by(f64::total_cmp);
    }
    Ok(reports)
}

/// TCP server that tells each client the address it connected from.
pub fn tcp_echo(listen: SocketAddr, lifetime: Duration) -> Result<()> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.bind(&listen.into())
        .with_context(|| format!("binding {listen}"))?;
    sock.listen(64)?;
    let listener: TcpListener = sock.into();
    listener.set_nonblocking(true)?;
    ready("tcp-echo", listener.local_addr()?);
    let end = Instant::now() + lifetime;
    while Instant::now() < end {
        match listener.accept() {
            Ok((mut conn, from)) => {
                conn.set_nonblocking(false)?;
                let _ = writeln!(conn, "{from}");
                println!("{}", json!({"event": "accept", "from": from.to_string()}));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e).context("tcp-echo accept"),
        }
    }
    Ok(())
}

/// Connect to each destination from the same local address (SO_REUSEADDR +
/// SO_REUSEPORT, as a hole-punching TCP stack does), keeping every connection
/// open until all are done.
pub fn tcp_connect(
    bind: SocketAddr,
    to: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<ConnectReport>> {
    let mut open = Vec::new();
    let mut reports = Vec::new();
    for &addr in to {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
        sock.bind(&bind.into())
            .with_context(|| format!("binding {bind}"))?;
        let started = Instant::now();
        let mut report = ConnectReport {
            event: "tcp-connect".into(),
            to: addr,
            ok: false,
            observed: None,
            connect_ms: None,
            error: None,
        };
        match sock.connect_timeout(&addr.into(), timeout) {
            Ok(()) => {
                report.connect_ms = Some(started.elapsed().as_secs_f64() * 1e3);
                let stream: std::net::TcpStream = sock.into();
                stream.set_read_timeout(Some(timeout))?;
                let mut line = String::new();
                match BufReader::new(&stream).read_line(&mut line) {
                    Ok(_) => match line.trim().parse() {
                        Ok(obs) => {
                            report.ok = true;
                            report.observed = Some(obs);
                        }
                        Err(_) => report.error = Some(format!("bad server line {line:?}")),
                    },
                    Err(e) => report.error = Some(format!("read: {e}")),
                }
                open.push(stream);
            }
            Err(e) => report.error = Some(format!("connect: {e}")),
        }
        reports.push(report);
    }
    drop(open);
    Ok(reports)
}
