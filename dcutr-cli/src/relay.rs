//! `dcutr relay`: the rendezvous relay.
//!
//! **A small rendezvous helper for demos, labs and two-machine trials, not a
//! libp2p circuit relay.** Two peers connect over TCP and register with a
//! name; the relay tells each the address it observed (TCP on the control
//! connection, UDP for a datagram sent to the same port), one peer asks for
//! the other, and the relay splices the two TCP connections into a relayed
//! stream. The protocol is specified in [`crate::rendezvous`].
//!
//! Design:
//! - One task per TCP connection. A registered peer waits in the registry
//!   with a one-shot channel; a `connect` takes it out under the registry
//!   lock (so a peer is paired at most once), the waiting task writes its
//!   `paired` line and hands its connection over, and the connecting task
//!   writes its own `paired` line and runs the splice.
//! - Control lines are read with a cancellation-safe line reader that never
//!   consumes past a newline, so bytes pipelined after `connect` (or sent
//!   right after `paired`) are forwarded, not lost.
//! - The splice: per direction, a reader stamps each chunk with
//!   `arrival + delay` and queues it (bounded: [`SPLICE_QUEUE_CHUNKS`] of at
//!   most [`SPLICE_CHUNK_BYTES`], so a slow receiver pushes back on the
//!   sender), and a writer releases each chunk at its stamp, in order. One
//!   timer per chunk, none per byte. End of stream is queued like a chunk,
//!   so the FIN is delayed too and comes after all data.
//! - Every limit is a named constant below, or a [`RelayConfig`] field that
//!   defaults to one.
//! - Under load: at most [`MAX_CONNECTIONS_PER_IP`] connections and
//!   [`MAX_PAIRINGS_PER_IP`] splices per source IP (a v6 source counts by
//!   its /64), a splice that carries nothing for [`SPLICE_IDLE_TIMEOUT`] is
//!   closed, and a splice buffers at most [`SPLICE_MAX_BUFFERED_BYTES`].
//!   The UDP port answers only names held by a live TCP connection, at
//!   most [`UDP_ANSWERS_PER_NAME`] times per name and
//!   [`UDP_ANSWERS_PER_SECOND`] in all, and never with more bytes than
//!   the datagram it answers: it cannot be used as a reflector.
//! - Fault injection for labs and tests ([`RelayConfig::cut_after_bytes`],
//!   natlab's `lab-dcutr relay --cut-after-bytes N`): both directions of a splice draw
//!   from one byte budget; the write that spends its last byte is followed
//!   by a FIN, and the splice is dropped, closing both connections, as a
//!   relay that fails mid-protocol would.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info, warn};

use crate::rendezvous::{
    LineError, LineReader, MAX_LINE_BYTES, Message, PairedSide, check_paired_fits, validate_name,
};

/// How long a `connect` waits for its peer to register before the relay
/// answers with an error. Lets A be started right after B without a race on
/// B's registration; 10 s covers a slow start on a loaded machine.
pub const CONNECT_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a registered peer may wait for someone to `connect` to it. Long
/// enough to walk to a second machine and start the other peer; bounded so a
/// forgotten peer does not hold its name and a connection slot forever.
pub const PAIR_WAIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Before it registered (`ready`), a connection must send its next control
/// line within this time, or it is closed: an idle or stuck client must not
/// hold a connection slot.
pub const CONTROL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on writing one control line (or handing a connection over between
/// tasks). A control line is tiny and fits any socket buffer; a peer that
/// does not take it in this time is gone.
pub const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most TCP connections served at once (control and spliced alike). Each
/// holds a task, two sockets' buffers and up to two splice queues; more are
/// refused with an error line.
pub const MAX_CONNECTIONS: usize = 512;

/// Most TCP connections served at once from one source IP (a v6 source
/// counts by its /64). Default 16: two peers behind one NAT need two, and
/// a host that wants more is flooding; one address filled all 512 slots
/// of [`MAX_CONNECTIONS`] in 0.8 s without it.
pub const MAX_CONNECTIONS_PER_IP: usize = 16;

/// Most splices at once with an end at one source IP (a v6 source counts
/// by its /64). Default 4: each pairing is one DCUtR upgrade, which lasts
/// seconds; self-made pairs beyond this are refused.
pub const MAX_PAIRINGS_PER_IP: usize = 4;

/// A splice that forwards no byte in either direction for this long is
/// closed. Default 120 s: DCUtR moves to the direct connection within
/// seconds and the relayed stream is closed a grace period later; a
/// peer that stays on the relay talks, or closes. Without it, idle
/// self-made pairs held every slot forever.
pub const SPLICE_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How many answers the UDP port gives one name (while its connection
/// lives). Default 20: twice the client's
/// [`UDP_OBSERVE_TRIES`](crate::rendezvous::UDP_OBSERVE_TRIES).
pub const UDP_ANSWERS_PER_NAME: u32 = 20;

/// How many answers the UDP port gives per second, all names together.
/// Default 200: bounds what forged sources naming live peers can make
/// it send, with [`UDP_ANSWERS_PER_NAME`] and answers no larger than the
/// datagram they answer.
pub const UDP_ANSWERS_PER_SECOND: u32 = 200;

/// Largest chunk the splice reads at once. 16 KiB is a few TCP segments and
/// keeps the per-chunk timer cost negligible at any rate a demo needs.
pub const SPLICE_CHUNK_BYTES: usize = 16 * 1024;

/// Chunks queued per splice direction between reader and writer (at most
/// 256 KiB with [`SPLICE_CHUNK_BYTES`]). With a delay, this must hold what
/// arrives during one delay (256 KiB per 100 ms is 2.5 MB/s, plenty for
/// DCUtR and demos); when full, the reader stops reading, and TCP flow
/// control slows the sender down: bounded memory, no loss.
pub const SPLICE_QUEUE_CHUNKS: usize = 16;

/// Most bytes one splice holds in the relay's memory, both directions:
/// the queue and the chunk being read and the one being written, each
/// way (the kernel's socket buffers come on top).
pub const SPLICE_MAX_BUFFERED_BYTES: usize = 2 * (SPLICE_QUEUE_CHUNKS + 2) * SPLICE_CHUNK_BYTES;

/// When one direction of a splice has ended (its sender closed and all its
/// data was delivered), the other direction may go on this long for replies
/// in flight; then both connections are closed.
pub const HALF_CLOSE_LINGER: Duration = Duration::from_secs(10);

/// Largest [`RelayConfig::delay`] accepted: a minute one way is beyond any network
/// worth emulating, and bounds how long chunks sit in the queues.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Pause after a failed `accept` (for example out of file descriptors) so a
/// persistent error does not spin the CPU.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// After an error line, the relay reads and drops what the client still
/// sends, up to this long, before closing: closing a socket with unread
/// input sends a reset, which can destroy the error line before the client
/// reads it.
pub const REFUSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Most bytes drained after an error line (see [`REFUSE_DRAIN_TIMEOUT`]).
pub const REFUSE_DRAIN_BYTES: usize = 64 * 1024;

/// Connections refused for lack of a slot that still get their error line
/// (each takes up to [`CONTROL_WRITE_TIMEOUT`] plus [`REFUSE_DRAIN_TIMEOUT`]);
/// during a flood beyond this, extra connections are closed without one.
pub const MAX_REFUSALS_IN_FLIGHT: usize = 32;

/// How often [`RelayListener::bind`] retries with port 0 when the TCP port
/// it got is taken for UDP.
const BIND_TRIES: usize = 16;

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// One-way delay added to every forwarded chunk (`dcutr demo --rtt-ms`,
    /// natlab's `lab-dcutr relay --delay-ms`).
    pub delay: Duration,
    /// See [`CONNECT_WAIT_TIMEOUT`].
    pub connect_wait: Duration,
    /// See [`PAIR_WAIT_TIMEOUT`].
    pub pair_wait: Duration,
    /// See [`CONTROL_IDLE_TIMEOUT`].
    pub control_idle: Duration,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`MAX_CONNECTIONS_PER_IP`].
    pub max_connections_per_ip: usize,
    /// See [`MAX_PAIRINGS_PER_IP`].
    pub max_pairings_per_ip: usize,
    /// See [`SPLICE_IDLE_TIMEOUT`].
    pub splice_idle: Duration,
    /// Where to report [`RelayEvent`]s (dropped if the queue is full).
    pub events: Option<mpsc::Sender<RelayEvent>>,
    /// **Fault injection, for labs and tests only** (natlab's
    /// `lab-dcutr relay --cut-after-bytes`; `dcutr relay` has no such
    /// option): close both connections of every splice once this many bytes were
    /// forwarded, both directions together (a chunk that crosses the limit
    /// is forwarded up to it). `Some(0)` closes them as soon as they are
    /// paired. `None` (the default): never.
    pub cut_after_bytes: Option<u64>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            delay: Duration::ZERO,
            connect_wait: CONNECT_WAIT_TIMEOUT,
            pair_wait: PAIR_WAIT_TIMEOUT,
            control_idle: CONTROL_IDLE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_connections_per_ip: MAX_CONNECTIONS_PER_IP,
            max_pairings_per_ip: MAX_PAIRINGS_PER_IP,
            splice_idle: SPLICE_IDLE_TIMEOUT,
            events: None,
            cut_after_bytes: None,
        }
    }
}

/// What the relay did, for the command's output and for tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RelayEvent {
    /// A peer said hello and holds `name`.
    Hello {
        /// The peer's name.
        name: String,
        /// Its TCP source address.
        tcp: SocketAddr,
    },
    /// A peer asked for its UDP address.
    UdpObserved {
        /// The name in the datagram.
        name: String,
        /// The datagram's source address.
        udp: SocketAddr,
    },
    /// A peer sent `ready` and waits to be paired.
    Registered {
        /// The peer's name.
        name: String,
        /// Its observed UDP address, if it sent an `observe` datagram first.
        udp: Option<SocketAddr>,
    },
    /// A `connect` waits for its peer to register.
    WaitingForPeer {
        /// The peer that asked.
        from: String,
        /// The peer it asked for.
        to: String,
    },
    /// Two peers were paired; their connections are spliced.
    Paired {
        /// B, the waiting peer.
        initiator: String,
        /// A, the peer that asked.
        responder: String,
    },
    /// A splice ended.
    SpliceClosed {
        /// B.
        initiator: String,
        /// A.
        responder: String,
        /// Bytes delivered from A to B.
        to_initiator: u64,
        /// Bytes delivered from B to A.
        to_responder: u64,
    },
    /// A peer that held a name closed its connection before being paired.
    Left {
        /// The name, free again.
        name: String,
    },
    /// A request was refused with an error line.
    Refused {
        /// The client's address.
        peer: SocketAddr,
        /// The reason sent.
        reason: String,
    },
}

/// The relay's bound sockets: a TCP listener and a UDP socket on the same
/// address and port.
#[derive(Debug)]
pub struct RelayListener {
    tcp: TcpListener,
    udp: UdpSocket,
}

impl RelayListener {
    /// Bind TCP and UDP at `addr`. With port 0, the UDP socket takes the port
    /// the kernel gave the TCP listener (retrying if it is taken for UDP).
    ///
    /// On a host with several addresses, bind a specific one: UDP answers
    /// leave from the address the kernel picks for the route, which must be
    /// the one the peer sent to.
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<RelayListener> {
        let mut last_error = None;
        for _ in 0..BIND_TRIES {
            let tcp = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding TCP {addr}"))?;
            let tcp_addr = tcp.local_addr().context("local address of the listener")?;
            match UdpSocket::bind(tcp_addr).await {
                Ok(udp) => return Ok(RelayListener { tcp, udp }),
                Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => {
                    last_error = Some(e);
                }
                Err(e) => return Err(e).with_context(|| format!("binding UDP {tcp_addr}")),
            }
        }
        Err(anyhow::Error::from(last_error.unwrap_or_else(|| {
            io::Error::from(io::ErrorKind::AddrInUse)
        })))
        .with_context(|| format!("no port free for both TCP and UDP at {addr}"))
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Serve the rendezvous protocol on `listener` until an unrecoverable error.
/// Dropping the returned future stops the relay and every connection it
/// serves.
pub async fn run(listener: RelayListener, mut config: RelayConfig) -> anyhow::Result<()> {
    if config.delay > MAX_DELAY {
        anyhow::bail!("delay {:?} exceeds the maximum {MAX_DELAY:?}", config.delay);
    }
    config.max_connections = config.max_connections.max(1);
    config.max_connections_per_ip = config.max_connections_per_ip.max(1);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let shared = Arc::new(Shared {
        config,
        registry: Mutex::new(HashMap::new()),
        registered: Notify::new(),
        next_id: AtomicU64::new(0),
        connections_per_ip: Mutex::new(HashMap::new()),
        pairings_per_ip: Mutex::new(HashMap::new()),
    });
    let RelayListener { tcp, udp } = listener;
    let mut tasks = JoinSet::new();
    tasks.spawn(serve_udp(shared.clone(), udp));
    loop {
        tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    let peer = canonical(peer);
                    let ip_count = IpCount::take(
                        &shared,
                        Counter::Connections,
                        &[peer.ip()],
                        shared.config.max_connections_per_ip,
                    );
                    let permit = match (ip_count, slots.clone().try_acquire_owned()) {
                        (Some(ip), Ok(slot)) => Ok(ConnPermit { _slot: slot, _ip: ip }),
                        (None, _) => Err(format!(
                            "too many connections from {} (at most {})",
                            peer.ip(),
                            shared.config.max_connections_per_ip
                        )),
                        (Some(_), Err(_)) => Err(format!(
                            "relay full ({} connections)",
                            shared.config.max_connections
                        )),
                    };
                    match permit {
                        Ok(permit) => {
                            tasks.spawn(serve(shared.clone(), stream, peer, permit));
                        }
                        Err(reason) => {
                            warn!(%peer, "refusing a connection: {reason}");
                            // Refused with an error line and a drain like any
                            // refusal, by a bounded number of tasks; beyond
                            // that the connection is just closed.
                            match refusals.clone().try_acquire_owned() {
                                Ok(permit) => {
                                    let shared = shared.clone();
                                    tasks.spawn(async move {
                                        refuse(&shared, LineReader::new(stream), peer, reason).await;
                                        drop(permit);
                                    });
                                }
                                Err(_) => shared.emit(RelayEvent::Refused { peer, reason }),
                            }
                        }
                    }
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            Some(done) = tasks.join_next() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    warn!("a relay task panicked: {e}");
                }
            }
        }
    }
}

/// State shared by the relay's tasks.
struct Shared {
    config: RelayConfig,
    registry: Mutex<HashMap<String, Slot>>,
    /// Woken whenever a peer becomes ready, for `connect`s that wait.
    registered: Notify,
    next_id: AtomicU64,
    /// Live connections per source network (see [`ip_key`]).
    connections_per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Live splices per source network, each end counted once.
    pairings_per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Which per-IP count.
#[derive(Clone, Copy)]
enum Counter {
    Connections,
    Pairings,
}

/// One unit of a per-IP count for each of a few IPs, given back on drop.
struct IpCount {
    shared: Arc<Shared>,
    counter: Counter,
    keys: Vec<IpAddr>,
}

impl IpCount {
    /// Counts one more for each of `ips` (the same network once), unless
    /// one of them is at `max` already.
    fn take(shared: &Arc<Shared>, counter: Counter, ips: &[IpAddr], max: usize) -> Option<Self> {
        let mut keys: Vec<IpAddr> = ips.iter().map(|ip| ip_key(*ip)).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut map = shared.counts(counter);
        if keys.iter().any(|k| map.get(k).copied().unwrap_or(0) >= max) {
            return None;
        }
        for k in &keys {
            *map.entry(*k).or_insert(0) += 1;
        }
        drop(map);
        Some(IpCount {
            shared: shared.clone(),
            counter,
            keys,
        })
    }
}

impl Drop for IpCount {
    fn drop(&mut self) {
        let mut map = self.shared.counts(self.counter);
        for k in &self.keys {
            if let Entry::Occupied(mut e) = map.entry(*k) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }
}

/// What a served connection holds: its global slot and its per-IP count.
struct ConnPermit {
    _slot: OwnedSemaphorePermit,
    _ip: IpCount,
}

/// The network a source address counts for: the IPv4 address, or the /64
/// of an IPv6 one (a single host often holds a whole /64).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// A name held by a connection.
struct Slot {
    /// Which connection holds it.
    id: u64,
    /// Its TCP source IP, for the per-IP pairing cap.
    ip: IpAddr,
    /// Answers the UDP port gave for this name.
    udp_answers: u32,
    /// Its observed UDP address, if it sent `observe`.
    udp: Option<SocketAddr>,
    addrs: Vec<String>,
    public: Vec<String>,
    /// Present while the peer waits to be paired; taken by the `connect`
    /// that pairs it.
    waiting: Option<oneshot::Sender<PairRequest>>,
}

/// Sent to a waiting peer's task by the task that pairs with it.
struct PairRequest {
    /// The asking peer (A).
    peer: String,
    peer_public: Vec<String>,
    peer_addrs: Vec<String>,
    /// Where the waiting task hands its connection over after it wrote its
    /// `paired` line.
    reply: oneshot::Sender<Leg>,
}

/// One paired connection, ready to splice.
struct Leg {
    stream: TcpStream,
    /// Bytes already read from it that belong to the relayed stream.
    leftover: Vec<u8>,
    _permit: ConnPermit,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // The lock is never held across an await or a call that can panic,
        // but a poisoned map is still consistent: keep serving.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn counts(&self, counter: Counter) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        match counter {
            Counter::Connections => &self.connections_per_ip,
            Counter::Pairings => &self.pairings_per_ip,
        }
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, event: RelayEvent) {
        if let Some(events) = &self.config.events
            && let Err(e) = events.try_send(event)
        {
            debug!("relay event dropped: {e}");
        }
    }
}

/// Frees a name when its connection ends (unless it was paired).
struct NameGuard {
    shared: Arc<Shared>,
    name: String,
    id: u64,
    paired: bool,
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        let removed = match self.shared.registry().entry(self.name.clone()) {
            Entry::Occupied(slot) if slot.get().id == self.id => {
                slot.remove();
                true
            }
            _ => false,
        };
        if removed && !self.paired {
            debug!(name = %self.name, "peer left");
            self.shared.emit(RelayEvent::Left {
                name: self.name.clone(),
            });
        }
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Read the next non-empty control message. `Ok(None)` is a clean close.
/// Cancellation safe.
async fn read_msg(conn: &mut LineReader<TcpStream>) -> Result<Option<Message>, ReadError> {
    loop {
        match conn.read_line().await {
            Ok(None) => return Ok(None),
            Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Some(line)) => {
                return Message::from_line(&line)
                    .map(Some)
                    .map_err(|e| ReadError::Refuse(format!("malformed message: {e}")));
            }
            Err(LineError::Io(e)) => return Err(ReadError::Io(e)),
            Err(e @ (LineError::TooLong | LineError::Truncated)) => {
                return Err(ReadError::Refuse(e.to_string()));
            }
        }
    }
}

enum ReadError {
    /// Answer with this reason and close.
    Refuse(String),
    /// The connection failed: just close.
    Io(io::Error),
}

/// Send an error line, stop sending, drain what the client still sends for
/// a bounded time (so the close does not reset the error line away), close.
async fn refuse(
    shared: &Shared,
    mut conn: LineReader<TcpStream>,
    peer: SocketAddr,
    reason: String,
) {
    info!(%peer, "refused: {reason}");
    shared.emit(RelayEvent::Refused {
        peer,
        reason: reason.clone(),
    });
    let sent = timeout(CONTROL_WRITE_TIMEOUT, async {
        conn.send(&Message::Error { reason }).await?;
        conn.get_mut().shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let stream = conn.get_mut();
    let mut drained = 0;
    let mut buf = [0u8; 4096];
    let _ = timeout(REFUSE_DRAIN_TIMEOUT, async {
        while drained < REFUSE_DRAIN_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Serve one TCP connection from hello to pairing (or refusal).
async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, permit: ConnPermit) {
    // Latency matters more than segment count: DCUtR measures the relayed RTT.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, "TCP_NODELAY: {e}");
    }
    let mut conn = LineReader::new(stream);
    let idle = shared.config.control_idle;

    let name = match timeout(idle, read_msg(&mut conn)).await {
        Err(_) => return refuse(&shared, conn, peer, format!("no hello within {idle:?}")).await,
        Ok(Ok(None)) => return,
        Ok(Err(ReadError::Io(e))) => return debug!(%peer, "connection failed: {e}"),
        Ok(Err(ReadError::Refuse(reason))) => return refuse(&shared, conn, peer, reason).await,
        Ok(Ok(Some(Message::Hello { name }))) => name,
        Ok(Ok(Some(other))) => {
            let reason = format!("expected hello, got {}", other.kind());
            return refuse(&shared, conn, peer, reason).await;
        }
    };
    if let Err(reason) = validate_name(&name) {
        return refuse(&shared, conn, peer, reason).await;
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let taken = match shared.registry().entry(name.clone()) {
        Entry::Occupied(_) => true,
        Entry::Vacant(slot) => {
            slot.insert(Slot {
                id,
                ip: peer.ip(),
                udp_answers: 0,
                udp: None,
                addrs: Vec::new(),
                public: Vec::new(),
                waiting: None,
            });
            false
        }
    };
    if taken {
        let reason = format!("name {name:?} is already taken");
        return refuse(&shared, conn, peer, reason).await;
    }
    let guard = NameGuard {
        shared: shared.clone(),
        name: name.clone(),
        id,
        paired: false,
    };
    debug!(%peer, %name, "hello");
    shared.emit(RelayEvent::Hello {
        name: name.clone(),
        tcp: peer,
    });
    let observed = Message::Observed {
        tcp: Some(peer),
        udp: None,
    };
    if !matches!(
        timeout(CONTROL_WRITE_TIMEOUT, conn.send(&observed)).await,
        Ok(Ok(()))
    ) {
        return;
    }

    let mut pair_rx: Option<oneshot::Receiver<PairRequest>> = None;
    let mut deadline = Instant::now() + idle;
    loop {
        let step = tokio::select! {
            request = async {
                match pair_rx.as_mut() {
                    Some(rx) => rx.await,
                    None => std::future::pending().await,
                }
            } => Step::Pair(request.ok()),
            msg = read_msg(&mut conn) => Step::Msg(msg),
            () = sleep_until(deadline) => Step::Timeout,
        };
        match step {
            Step::Pair(Some(request)) => {
                return hand_over(conn, peer, guard, request, permit).await;
            }
            Step::Pair(None) => {
                // The pairing task gave up before sending: nobody else can
                // pair us now that our sender is gone.
                return refuse(&shared, conn, peer, "pairing failed".into()).await;
            }
            Step::Timeout if pair_rx.is_some() => {
                let reason = format!("nobody connected within {:?}", shared.config.pair_wait);
                return refuse(&shared, conn, peer, reason).await;
            }
            Step::Timeout => {
                let reason = format!("no message within {idle:?}");
                return refuse(&shared, conn, peer, reason).await;
            }
            Step::Msg(Ok(None)) => return,
            Step::Msg(Err(ReadError::Io(e))) => {
                return debug!(%peer, %name, "connection failed: {e}");
            }
            Step::Msg(Err(ReadError::Refuse(reason))) => {
                return refuse(&shared, conn, peer, reason).await;
            }
            Step::Msg(Ok(Some(Message::Ready { addrs, public }))) => {
                if let Err(e) = check_paired_fits(&addrs, &public) {
                    return refuse(&shared, conn, peer, e.to_string()).await;
                }
                let stored = match shared.registry().get_mut(&name).filter(|s| s.id == id) {
                    Some(slot) => {
                        slot.addrs = addrs;
                        slot.public = public;
                        if pair_rx.is_none() {
                            let (tx, rx) = oneshot::channel();
                            slot.waiting = Some(tx);
                            pair_rx = Some(rx);
                        }
                        Some(slot.udp)
                    }
                    None => None,
                };
                let Some(udp) = stored else {
                    return refuse(&shared, conn, peer, "registration lost".into()).await;
                };
                shared.registered.notify_waiters();
                debug!(%peer, %name, ?udp, "registered");
                shared.emit(RelayEvent::Registered {
                    name: name.clone(),
                    udp,
                });
                let sent = timeout(CONTROL_WRITE_TIMEOUT, conn.send(&Message::Registered)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
                deadline = Instant::now() + shared.config.pair_wait;
            }
            Step::Msg(Ok(Some(Message::Connect { peer: target }))) => {
                return connect(shared, conn, peer, permit, guard, pair_rx, target).await;
            }
            Step::Msg(Ok(Some(other))) => {
                let reason = format!("unexpected {} message", other.kind());
                return refuse(&shared, conn, peer, reason).await;
            }
        }
        if pair_rx.is_none() {
            deadline = Instant::now() + idle;
        }
    }
}

enum Step {
    Pair(Option<PairRequest>),
    Msg(Result<Option<Message>, ReadError>),
    Timeout,
}

/// The waiting peer (B) was picked: tell it, then give its connection to
/// the pairing task.
async fn hand_over(
    mut conn: LineReader<TcpStream>,
    peer: SocketAddr,
    mut guard: NameGuard,
    request: PairRequest,
    permit: ConnPermit,
) {
    guard.paired = true;
    let name = guard.name.clone();
    let paired = Message::Paired {
        peer: request.peer,
        side: PairedSide::Initiator,
        peer_public: request.peer_public,
        peer_addrs: request.peer_addrs,
    };
    if let Err(e) = timeout(CONTROL_WRITE_TIMEOUT, conn.send(&paired))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    {
        // Dropping `request.reply` tells the other side.
        debug!(%peer, %name, "could not send paired: {e}");
        return;
    }
    // The name is free once paired (before the other side hears of it).
    drop(guard);
    let (leftover, stream) = conn.into_parts();
    let (stream, leftover) = split_leftover(stream, leftover);
    let _ = request.reply.send(Leg {
        stream,
        leftover,
        _permit: permit,
    });
}

/// The raw bytes already buffered, and the socket.
fn split_leftover(reader: BufReader<TcpStream>, mut partial: Vec<u8>) -> (TcpStream, Vec<u8>) {
    partial.extend_from_slice(reader.buffer());
    (reader.into_inner(), partial)
}

/// A (this connection) asked for `target`: wait for it to be ready, pair,
/// splice.
async fn connect(
    shared: Arc<Shared>,
    mut conn: LineReader<TcpStream>,
    peer: SocketAddr,
    permit: ConnPermit,
    mut guard: NameGuard,
    mut pair_rx: Option<oneshot::Receiver<PairRequest>>,
    target: String,
) {
    let name = guard.name.clone();
    if let Err(reason) = validate_name(&target) {
        return refuse(&shared, conn, peer, reason).await;
    }
    if target == name {
        return refuse(&shared, conn, peer, "cannot connect to yourself".into()).await;
    }
    // Stop waiting to be picked; if someone picked us meanwhile, its request
    // is already in our channel (sent under the lock): serve it instead.
    let own = match shared
        .registry()
        .get_mut(&name)
        .filter(|s| s.id == guard.id)
    {
        None => Own::Lost,
        Some(slot) => {
            if slot.waiting.take().is_none() && pair_rx.is_some() {
                Own::Picked
            } else {
                Own::Lists(slot.addrs.clone(), slot.public.clone())
            }
        }
    };
    let (own_addrs, own_public) = match own {
        Own::Lists(addrs, public) => (addrs, public),
        Own::Lost => return refuse(&shared, conn, peer, "registration lost".into()).await,
        Own::Picked => {
            if let Some(Ok(request)) = pair_rx.as_mut().map(|rx| rx.try_recv()) {
                return hand_over(conn, peer, guard, request, permit).await;
            }
            return refuse(&shared, conn, peer, "pairing failed".into()).await;
        }
    };
    drop(pair_rx);

    let wait_until = Instant::now() + shared.config.connect_wait;
    let mut announced = false;
    let (reply_rx, target_public, target_addrs, _pairing) = loop {
        let notified = shared.registered.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match try_pick(&shared, peer.ip(), &target, &name, &own_addrs, &own_public) {
            Pick::Picked(found) => break found,
            Pick::TooMany(reason) => return refuse(&shared, conn, peer, reason).await,
            Pick::Gone => {
                let reason = format!("peer {target:?} went away");
                return refuse(&shared, conn, peer, reason).await;
            }
            Pick::NotWaiting => {}
        }
        if !announced {
            announced = true;
            debug!(%name, %target, "waiting for the peer to register");
            shared.emit(RelayEvent::WaitingForPeer {
                from: name.clone(),
                to: target.clone(),
            });
        }
        tokio::select! {
            () = &mut notified => {}
            () = sleep_until(wait_until) => {
                let reason = format!(
                    "peer {target:?} is not registered (waited {:?})",
                    shared.config.connect_wait
                );
                return refuse(&shared, conn, peer, reason).await;
            }
            // Do not pair a peer with a connection that is already gone.
            () = conn.closed() => {
                debug!(%peer, %name, "closed while waiting for {target:?}");
                return;
            }
        }
    };

    let their_leg = match timeout(CONTROL_WRITE_TIMEOUT, reply_rx).await {
        Ok(Ok(leg)) => leg,
        _ => {
            let reason = format!("peer {target:?} went away while being paired");
            return refuse(&shared, conn, peer, reason).await;
        }
    };
    guard.paired = true;
    drop(guard);
    let paired = Message::Paired {
        peer: target.clone(),
        side: PairedSide::Responder,
        peer_public: target_public,
        peer_addrs: target_addrs,
    };
    if let Err(e) = timeout(CONTROL_WRITE_TIMEOUT, conn.send(&paired))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    {
        debug!(%peer, %name, "could not send paired: {e}");
        return;
    }
    info!(initiator = %target, responder = %name, "paired");
    shared.emit(RelayEvent::Paired {
        initiator: target.clone(),
        responder: name.clone(),
    });
    let (leftover, stream) = conn.into_parts();
    let (stream, leftover) = split_leftover(stream, leftover);
    let my_leg = Leg {
        stream,
        leftover,
        _permit: permit,
    };
    let budget = shared.config.cut_after_bytes.map(CutBudget::new);
    let (to_initiator, to_responder) = splice(
        my_leg,
        their_leg,
        shared.config.delay,
        shared.config.splice_idle,
        budget.as_ref(),
    )
    .await;
    if let Some(budget) = &budget
        && budget.spent()
    {
        warn!(
            initiator = %target,
            responder = %name,
            after_bytes = to_initiator + to_responder,
            "cut the relayed stream (fault injection: cut_after_bytes)"
        );
    }
    info!(initiator = %target, responder = %name, to_initiator, to_responder, "splice closed");
    shared.emit(RelayEvent::SpliceClosed {
        initiator: target,
        responder: name,
        to_initiator,
        to_responder,
    });
}

/// Our own registration, as a `connect` finds it.
enum Own {
    /// Our addresses, and we are no longer pickable.
    Lists(Vec<String>, Vec<String>),
    /// Someone picked us first; its request is in our channel.
    Picked,
    /// Our slot is gone (cannot happen while our guard lives).
    Lost,
}

/// The outcome of one look for a waiting target.
enum Pick {
    /// Paired: wait for its leg on this channel; its public and observed
    /// addresses; the pairing's per-IP count, held while the splice runs.
    Picked((oneshot::Receiver<Leg>, Vec<String>, Vec<String>, IpCount)),
    /// Pairing would exceed the per-IP cap of one of the two ends.
    TooMany(String),
    /// Not there or not waiting (yet).
    NotWaiting,
    /// It was waiting but its task is gone.
    Gone,
}

/// Take `target` out of the waiting state and send it our request, all
/// under the registry lock, so that a peer is picked at most once.
fn try_pick(
    shared: &Arc<Shared>,
    from_ip: IpAddr,
    target: &str,
    name: &str,
    addrs: &[String],
    public: &[String],
) -> Pick {
    let mut registry = shared.registry();
    let Some(slot) = registry.get_mut(target) else {
        return Pick::NotWaiting;
    };
    if slot.waiting.is_none() {
        return Pick::NotWaiting;
    }
    let max = shared.config.max_pairings_per_ip;
    let Some(pairing) = IpCount::take(shared, Counter::Pairings, &[from_ip, slot.ip], max) else {
        return Pick::TooMany(format!(
            "too many relayed streams from {from_ip} or {} (at most {max} each)",
            slot.ip
        ));
    };
    let Some(waiting) = slot.waiting.take() else {
        return Pick::NotWaiting;
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    let request = PairRequest {
        peer: name.to_owned(),
        peer_public: public.to_vec(),
        peer_addrs: addrs.to_vec(),
        reply: reply_tx,
    };
    if waiting.send(request).is_err() {
        return Pick::Gone;
    }
    Pick::Picked((reply_rx, slot.public.clone(), slot.addrs.clone(), pairing))
}

/// The fault-injection byte budget of one splice, shared by both directions
/// (see [`RelayConfig::cut_after_bytes`]).
#[derive(Debug)]
struct CutBudget {
    left: AtomicU64,
}

impl CutBudget {
    fn new(bytes: u64) -> Self {
        CutBudget {
            left: AtomicU64::new(bytes),
        }
    }

    /// Takes up to `want` bytes; returns how many may be forwarded.
    fn take(&self, want: usize) -> usize {
        let want = want as u64;
        let before = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                Some(left - left.min(want))
            })
            .unwrap_or_else(|left| left);
        // At most `want`, which is a usize.
        before.min(want) as usize
    }

    /// Whether the budget is used up: the splice must be cut.
    fn spent(&self) -> bool {
        self.left.load(Ordering::Acquire) == 0
    }
}

/// The error that ends a pump when the budget is spent.
fn cut_error() -> io::Error {
    io::Error::other("cut by cut_after_bytes (fault injection)")
}

/// When a splice last read a byte, either way.
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last read.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Returns once nothing was read for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + idle;
            if Instant::now() >= due {
                return;
            }
            sleep_until(due).await;
        }
    }
}

/// Splice two connections both ways with `delay` per chunk, until both
/// ends closed, nothing was read for `idle`, or `budget` (fault
/// injection) is spent; returns the bytes delivered (responder →
/// initiator, initiator → responder), where `responder` is the first leg.
async fn splice(
    responder: Leg,
    initiator: Leg,
    delay: Duration,
    idle: Duration,
    budget: Option<&CutBudget>,
) -> (u64, u64) {
    let (r_read, mut r_write) = responder.stream.into_split();
    let (i_read, mut i_write) = initiator.stream.into_split();
    if budget.is_some_and(CutBudget::spent) {
        // A budget of zero: cut before the first byte.
        let _ = tokio::join!(r_write.shutdown(), i_write.shutdown());
        return (0, 0);
    }
    let to_initiator = AtomicU64::new(0);
    let to_responder = AtomicU64::new(0);
    let activity = Activity::new();
    {
        let forward = pump(
            responder.leftover,
            r_read,
            i_write,
            delay,
            &to_initiator,
            budget,
            &activity,
        );
        let backward = pump(
            initiator.leftover,
            i_read,
            r_write,
            delay,
            &to_responder,
            budget,
            &activity,
        );
        tokio::pin!(forward, backward);
        let both = async {
            tokio::select! {
                r = &mut forward => finish_splice(r, backward).await,
                r = &mut backward => finish_splice(r, forward).await,
            }
        };
        tokio::select! {
            () = both => {}
            () = activity.idle_for(idle) => debug!("closing a splice idle for {idle:?}"),
        }
    }
    (
        to_initiator.load(Ordering::Relaxed),
        to_responder.load(Ordering::Relaxed),
    )
}

/// One direction of the splice ended with `first`: on a clean end, let the
/// other direction go on for up to [`HALF_CLOSE_LINGER`]; on an error, stop.
async fn finish_splice<F: Future<Output = io::Result<()>>>(
    first: io::Result<()>,
    rest: std::pin::Pin<&mut F>,
) {
    match first {
        Ok(()) => match timeout(HALF_CLOSE_LINGER, rest).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!("splice ended: {e}"),
            Err(_) => debug!("closing a half-closed splice after {HALF_CLOSE_LINGER:?}"),
        },
        Err(e) => debug!("splice ended: {e}"),
    }
}

/// One direction of a splice: a reader that stamps chunks with their release
/// time, a bounded queue, and a writer that releases them at that time.
async fn pump(
    leftover: Vec<u8>,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    delivered: &AtomicU64,
    budget: Option<&CutBudget>,
    activity: &Activity,
) -> io::Result<()> {
    // `None` is the end of the stream.
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(SPLICE_QUEUE_CHUNKS);
    let reader = async move {
        if !leftover.is_empty()
            && tx
                .send((Instant::now() + delay, Some(leftover)))
                .await
                .is_err()
        {
            return Ok(());
        }
        let mut buf = vec![0u8; SPLICE_CHUNK_BYTES];
        loop {
            let n = from.read(&mut buf).await?;
            activity.touch();
            let due = Instant::now() + delay;
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            let end = chunk.is_none();
            // The writer is gone only if it failed; its error ends the pump.
            if tx.send((due, chunk)).await.is_err() || end {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            if due > Instant::now() {
                sleep_until(due).await;
            }
            match chunk {
                Some(chunk) => {
                    let allowed = budget.map_or(chunk.len(), |b| b.take(chunk.len()));
                    to.write_all(&chunk[..allowed]).await?;
                    delivered.fetch_add(allowed as u64, Ordering::Relaxed);
                    if budget.is_some_and(CutBudget::spent) {
                        // What was forwarded is followed by a FIN; the
                        // error ends the splice, which drops (closes) both
                        // connections without waiting for the other way.
                        let _ = to.shutdown().await;
                        return Err(cut_error());
                    }
                }
                None => {
                    to.shutdown().await?;
                    return Ok(());
                }
            }
        }
        // The reader failed; its error ends the pump.
        Ok(())
    };
    tokio::try_join!(reader, writer).map(drop)
}

/// Answer `observe` datagrams with the source address, for names held by
/// a live connection only, rate-limited, and never with more bytes than
/// the datagram carried: a forged source gets at most what it sent, and
/// only while a peer it names is registered.
async fn serve_udp(shared: Arc<Shared>, socket: UdpSocket) {
    let mut buf = vec![0u8; MAX_LINE_BYTES + 1];
    let mut window = Instant::now();
    let mut answered_in_window = 0u32;
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                debug!("UDP receive failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        // Answer to the address as received (a v4-mapped source on a
        // dual-stack socket must be answered as such); report it canonical.
        let reply_to = from;
        let from = canonical(from);
        if n > MAX_LINE_BYTES {
            debug!(%from, "ignoring an oversize datagram");
            continue;
        }
        let payload = buf[..n].strip_suffix(b"\n").unwrap_or(&buf[..n]);
        // Nothing but a well-formed observe for a live name gets an answer
        // (errors included): an answer to a forged source would make the
        // relay a reflector.
        let Ok(Message::Observe { name }) = Message::from_line(payload) else {
            debug!(%from, "ignoring a datagram that is not an observe");
            continue;
        };
        if validate_name(&name).is_err() {
            debug!(%from, "ignoring an observe with an invalid name");
            continue;
        }
        let now = Instant::now();
        if now >= window + Duration::from_secs(1) {
            window = now;
            answered_in_window = 0;
        }
        if answered_in_window >= UDP_ANSWERS_PER_SECOND {
            debug!(%from, "UDP answer rate reached; ignoring an observe");
            continue;
        }
        let answer = Message::Observed {
            tcp: None,
            udp: Some(from),
        };
        let line = match answer.to_line() {
            Ok(line) if line.len() <= n => line,
            Ok(_) => {
                debug!(%from, "ignoring an observe shorter than its answer (not padded)");
                continue;
            }
            Err(e) => {
                debug!("UDP answer not sent: {e}");
                continue;
            }
        };
        let allowed = match shared.registry().get_mut(&name) {
            Some(slot) if slot.udp_answers < UDP_ANSWERS_PER_NAME => {
                slot.udp_answers += 1;
                slot.udp = Some(from);
                true
            }
            Some(_) => {
                debug!(%from, %name, "UDP answers for this name used up");
                false
            }
            None => {
                debug!(%from, %name, "ignoring an observe for a name nobody holds");
                false
            }
        };
        if !allowed {
            continue;
        }
        answered_in_window += 1;
        debug!(%from, %name, "UDP observed");
        shared.emit(RelayEvent::UdpObserved { name, udp: from });
        if let Err(e) = socket.send_to(&line, reply_to).await {
            debug!(%from, "UDP answer failed: {e}");
        }
    }
}
