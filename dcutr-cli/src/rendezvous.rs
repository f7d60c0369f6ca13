//! The rendezvous protocol of `dcutr relay` and its client side, used by
//! `dcutr peer`.
//!
//! **This is a small rendezvous helper for demos, labs and two-machine trials,
//! not a libp2p circuit relay** (no reservations, no `/p2p-circuit`
//! addresses, no limits per circuit, no authentication of its own: `dcutr
//! peer` authenticates the pairing end to end with a code, see
//! [`crate::pairing`], so names here are `np-<hash of a nameplate>` and
//! random ones, never the code). It gives two peers
//! what DCUtR needs and nothing more: the addresses the relay observed for
//! them, and a relayed byte stream between them to run DCUtR over.
//!
//! # Wire format
//!
//! Control messages are JSON objects, one per line (terminated by `\n`; a
//! `\r` before it is tolerated), each with a `"type"` field. A line holds at
//! most [`MAX_LINE_BYTES`] bytes (without the newline); longer lines are
//! refused. Unknown fields are ignored; an unknown `"type"`, a malformed line
//! or a message out of order is answered with
//! `{"type":"error","reason":"..."}` and the connection is closed.
//!
//! ```text
//! peer -> relay (TCP)   {"type":"hello","name":"b"}
//! relay -> peer         {"type":"observed","tcp":"IP:PORT"}      the source address the relay sees
//!
//! peer -> relay (UDP)   {"type":"observe","name":"b"}            one datagram from the QUIC socket, after hello,
//!                                                                padded with spaces to OBSERVE_DATAGRAM_LEN bytes
//! relay -> peer (UDP)   {"type":"observed","udp":"IP:PORT"}      to the datagram's source
//!
//! peer -> relay         {"type":"ready","addrs":[multiaddr...],"public":[multiaddr...]}
//! relay -> peer         {"type":"registered"}                    now waiting to be paired
//!
//! A -> relay            {"type":"connect","peer":"b"}
//! relay -> B            {"type":"paired","peer":"a","side":"initiator","peer_public":[...],"peer_addrs":[...]}
//! relay -> A            {"type":"paired","peer":"b","side":"responder","peer_public":[...],"peer_addrs":[...]}
//! ...then raw bytes both ways: the relayed stream
//! ```
//!
//! - Names are 1 to [`MAX_NAME_LEN`] characters of `[A-Za-z0-9_.-]`; a name
//!   is held by one connection at a time (a duplicate `hello` is refused)
//!   and is free again once that connection closes or is paired.
//! - `addrs` are the peer's observed addresses as multiaddr strings
//!   (`/ip4/1.2.3.4/tcp/5000`, `/ip4/1.2.3.4/udp/5000/quic-v1`); `public` is
//!   the subset it believes directly reachable (observed address equal to its
//!   own bound address: no NAT in between, see [`is_public`]). The relay
//!   passes both lists on verbatim to the other peer in `paired`.
//! - The peer that sends `connect` is DCUtR's **A** and gets
//!   `side: "responder"`; the registered peer that waited is **B** and gets
//!   `side: "initiator"` (B opens the DCUtR exchange on the relayed stream).
//! - A `connect` to a name that is not (yet) waiting makes the relay wait up
//!   to [`crate::relay::CONNECT_WAIT_TIMEOUT`] for it before answering with an
//!   error; connecting to oneself is an error at once.
//! - The UDP port answers an `observe` only for a name held by a live
//!   connection (so after `hello`), a bounded number of times per name and
//!   per second, and only when the answer is no longer than the datagram:
//!   pad it ([`observe_datagram`]). Anything else gets no answer at all.
//! - After the `paired` line each connection carries raw bytes, spliced both
//!   ways by the relay. Bytes a peer pipelines after its `connect` line are
//!   forwarded once paired. A peer that closes its side closes the splice for
//!   both after what it sent has been delivered.
//!
//! # Client
//!
//! [`register`] (TCP hello, optionally from the punch port), [`observe_udp`]
//! (from the QUIC socket), then [`Registration::ready`], and either
//! [`Registration::connect`] (A) or [`Registration::wait_paired`] (B). Both
//! return a [`Paired`] whose `stream` is the relayed stream.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// Longest control line in bytes, newline excluded. Every legitimate message
/// is far shorter (a name and two short address lists); the bound keeps a
/// peer that never sends a newline from growing our buffers.
pub const MAX_LINE_BYTES: usize = 4096;

/// Longest peer name in characters (all ASCII, so also in bytes). Names are
/// typed by people; 64 is plenty and keeps every message short.
pub const MAX_NAME_LEN: usize = 64;

/// How long the client waits for the TCP connection to the relay. The relay
/// is a single TCP handshake away, but a lost SYN is re-sent after 1, 3, 7
/// and 15 s: on a lossy path (the NAT lab's 30 % loss) the handshake alone
/// can take 15 s. Beyond 30 s the relay is down or filtered.
pub const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the client waits for the relay's answer to `hello` or `ready`.
/// The relay answers these at once; the margin is for TCP retransmissions
/// on a lossy path, and this only catches a stuck relay.
pub const RELAY_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the client waits for `paired` after `connect`: the relay may wait
/// [`crate::relay::CONNECT_WAIT_TIMEOUT`] for the other peer to register, so
/// this is that plus the answer's travel time.
pub const CONNECT_REPLY_TIMEOUT: Duration =
    crate::relay::CONNECT_WAIT_TIMEOUT.saturating_add(Duration::from_secs(5));

/// How long the client waits for `paired` after `ready` when nobody has asked
/// for it yet: the relay gives up at [`crate::relay::PAIR_WAIT_TIMEOUT`] and
/// answers with an error, so this only catches a relay that went silent.
pub const WAIT_PAIRED_TIMEOUT: Duration =
    crate::relay::PAIR_WAIT_TIMEOUT.saturating_add(Duration::from_secs(5));

/// How long to wait for the answer to one UDP `observe` datagram before
/// sending it again. A loopback or LAN relay answers within a millisecond; a
/// far relay within a few hundred.
pub const UDP_OBSERVE_TIMEOUT: Duration = Duration::from_millis(500);

/// How many `observe` datagrams to send before giving up. A try needs the
/// datagram and its answer: at 30 % loss each way one succeeds with
/// p = 0.49, and 10 tries all fail with p = 0.51^10, about 0.1 %.
pub const UDP_OBSERVE_TRIES: u32 = 10;

/// Length of an `observe` datagram, newline included: the JSON padded with
/// spaces. The relay answers no datagram with more bytes than it carried
/// (so that it cannot amplify toward a forged source), and the longest
/// answer, an `observed` line with an IPv6 address and a scope, is about
/// 90 bytes.
pub const OBSERVE_DATAGRAM_LEN: usize = 128;

/// Which DCUtR side the relay assigned to a peer in `paired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairedSide {
    /// DCUtR's B: the peer that registered and waited. It opens the DCUtR
    /// exchange (sends the first Connect) and is the server on the direct
    /// connection.
    Initiator,
    /// DCUtR's A: the peer that asked for the other with `connect`. It
    /// answers the exchange and is the client on the direct connection.
    Responder,
}

impl fmt::Display for PairedSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PairedSide::Initiator => "initiator",
            PairedSide::Responder => "responder",
        })
    }
}

/// One control message of the rendezvous protocol (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Peer → relay (TCP): take this name.
    Hello {
        /// The peer's name.
        name: String,
    },
    /// Peer → relay (UDP datagram): tell me my UDP source address.
    Observe {
        /// The peer's name (the relay remembers the address for it).
        name: String,
    },
    /// Relay → peer: the source address the relay saw (`tcp` on the TCP
    /// connection after `hello`, `udp` in answer to an `observe` datagram).
    Observed {
        /// Source address of the TCP connection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tcp: Option<SocketAddr>,
        /// Source address of the `observe` datagram.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        udp: Option<SocketAddr>,
    },
    /// Peer → relay: my addresses; wait for someone to connect to me.
    Ready {
        /// Observed addresses, multiaddr strings.
        addrs: Vec<String>,
        /// The subset believed directly reachable.
        public: Vec<String>,
    },
    /// Relay → peer: the `ready` was accepted.
    Registered,
    /// Peer → relay: pair me with this registered peer.
    Connect {
        /// Name of the peer to pair with.
        peer: String,
    },
    /// Relay → peer: paired; raw bytes follow.
    Paired {
        /// The other peer's name.
        peer: String,
        /// Our DCUtR side.
        side: PairedSide,
        /// The other peer's `public` list.
        peer_public: Vec<String>,
        /// The other peer's `addrs` list.
        peer_addrs: Vec<String>,
    },
    /// Either way: the request was refused; the connection closes after it.
    Error {
        /// Why.
        reason: String,
    },
}

impl Message {
    /// The message as one line: JSON plus `\n`. Fails if the JSON is longer
    /// than [`MAX_LINE_BYTES`].
    pub fn to_line(&self) -> io::Result<Vec<u8>> {
        let mut line = serde_json::to_vec(self).map_err(io::Error::other)?;
        if line.len() > MAX_LINE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} message of {} bytes exceeds the {MAX_LINE_BYTES}-byte line limit",
                    self.kind(),
                    line.len()
                ),
            ));
        }
        line.push(b'\n');
        Ok(line)
    }

    /// Parse one line (without its newline).
    pub fn from_line(line: &[u8]) -> Result<Message, serde_json::Error> {
        serde_json::from_slice(line)
    }

    /// The message's `"type"`, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Observe { .. } => "observe",
            Message::Observed { .. } => "observed",
            Message::Ready { .. } => "ready",
            Message::Registered => "registered",
            Message::Connect { .. } => "connect",
            Message::Paired { .. } => "paired",
            Message::Error { .. } => "error",
        }
    }
}

/// Check a peer name: 1 to [`MAX_NAME_LEN`] characters of `[A-Za-z0-9_.-]`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name must be 1 to {MAX_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "name may only hold A-Z a-z 0-9 _ . - (found {c:?})"
        ));
    }
    Ok(())
}

/// The TCP multiaddr string of an address: `/ip4/1.2.3.4/tcp/5000`.
pub fn tcp_multiaddr(addr: SocketAddr) -> String {
    format!("{}/tcp/{}", ip_prefix(addr.ip()), addr.port())
}

/// The QUIC multiaddr string of an address: `/ip4/1.2.3.4/udp/5000/quic-v1`.
pub fn quic_multiaddr(addr: SocketAddr) -> String {
    format!("{}/udp/{}/quic-v1", ip_prefix(addr.ip()), addr.port())
}

fn ip_prefix(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("/ip4/{v4}"),
        IpAddr::V6(v6) => format!("/ip6/{v6}"),
    }
}

/// Whether an observed address shows no NAT in between: it equals our own
/// local address. `local` may have an unspecified IP (a socket bound to
/// `0.0.0.0`); then `route_ip` stands for it, the local IP that the kernel
/// picked towards the relay (for example
/// [`Registration::local_tcp`]`.ip()`).
pub fn is_public(observed: SocketAddr, local: SocketAddr, route_ip: IpAddr) -> bool {
    let local_ip = if local.ip().is_unspecified() {
        route_ip
    } else {
        local.ip()
    };
    observed.ip().to_canonical() == local_ip.to_canonical() && observed.port() == local.port()
}

/// Reads `\n`-terminated lines of at most [`MAX_LINE_BYTES`] from a buffered
/// stream without ever consuming a byte past the newline, so that the raw
/// bytes after the last control line stay in the [`BufReader`].
///
/// [`LineReader::read_line`] is cancellation safe: a partial line is kept in
/// `self` across a cancelled call, so it may be used in `tokio::select!`.
#[derive(Debug)]
pub(crate) struct LineReader<S> {
    inner: BufReader<S>,
    partial: Vec<u8>,
}

/// What went wrong while reading a control line.
#[derive(Debug)]
pub(crate) enum LineError {
    /// The line exceeds [`MAX_LINE_BYTES`].
    TooLong,
    /// The stream ended inside a line.
    Truncated,
    /// The stream failed.
    Io(io::Error),
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong => write!(f, "line longer than {MAX_LINE_BYTES} bytes"),
            LineError::Truncated => f.write_str("connection closed in the middle of a line"),
            LineError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LineError {}

impl<S: AsyncRead + AsyncWrite + Unpin> LineReader<S> {
    /// Wrap a stream.
    pub(crate) fn new(stream: S) -> Self {
        LineReader {
            inner: BufReader::with_capacity(MAX_LINE_BYTES + 1, stream),
            partial: Vec::new(),
        }
    }

    /// The next line without its `\n` (and without a `\r` before it), or
    /// `None` if the stream ended cleanly between lines.
    pub(crate) async fn read_line(&mut self) -> Result<Option<Vec<u8>>, LineError> {
        loop {
            let available = self.inner.fill_buf().await.map_err(LineError::Io)?;
            if available.is_empty() {
                return if self.partial.is_empty() {
                    Ok(None)
                } else {
                    Err(LineError::Truncated)
                };
            }
            match available.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    if self.partial.len() + i > MAX_LINE_BYTES + 1 {
                        return Err(LineError::TooLong);
                    }
                    self.partial.extend_from_slice(&available[..i]);
                    self.inner.consume(i + 1);
                    let mut line = std::mem::take(&mut self.partial);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if line.len() > MAX_LINE_BYTES {
                        return Err(LineError::TooLong);
                    }
                    return Ok(Some(line));
                }
                None => {
                    // One extra byte is allowed for a `\r` before the newline.
                    if self.partial.len() + available.len() > MAX_LINE_BYTES + 1 {
                        return Err(LineError::TooLong);
                    }
                    let n = available.len();
                    self.partial.extend_from_slice(available);
                    self.inner.consume(n);
                }
            }
        }
    }

    /// Completes when the stream ends or fails while nothing is buffered;
    /// stays pending once bytes are buffered (they are kept for the next
    /// read). Cancellation safe.
    pub(crate) async fn closed(&mut self) {
        match self.inner.fill_buf().await {
            Ok([]) | Err(_) => {}
            Ok(_) => std::future::pending().await,
        }
    }

    /// Write one message as a line.
    pub(crate) async fn send(&mut self, msg: &Message) -> io::Result<()> {
        let line = msg.to_line()?;
        let stream = self.inner.get_mut();
        stream.write_all(&line).await?;
        stream.flush().await
    }

    /// The underlying stream, for writing.
    pub(crate) fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// The buffered stream; bytes after the last line read stay buffered in
    /// it. Right after [`LineReader::read_line`] returned a line nothing is
    /// lost; see [`LineReader::into_parts`] otherwise.
    pub(crate) fn into_inner(self) -> BufReader<S> {
        self.inner
    }

    /// The bytes of a line in progress (taken off the stream already) and
    /// the buffered stream.
    pub(crate) fn into_parts(self) -> (Vec<u8>, BufReader<S>) {
        (self.partial, self.inner)
    }
}

/// Control lines split from a byte stream by [`read_control_lines`].
#[doc(hidden)]
#[derive(Debug)]
pub struct ControlLines {
    /// Each line, without its `\n` (and a `\r` before it).
    pub lines: Vec<Vec<u8>>,
    /// Why reading stopped early, if it did: a line too long, a stream that
    /// ended inside a line, or a failing stream.
    pub error: Option<String>,
    /// The bytes taken off the stream but not returned as a line: the line
    /// in progress, then what the buffer holds past the last newline.
    pub unread: Vec<u8>,
}

/// Splits `stream` into control lines exactly as the relay and `dcutr
/// peer` read them, until it ends cleanly, a line is refused or
/// `max_lines` lines were read.
///
/// For the `rendezvous_line` fuzz target: not a stable API.
#[doc(hidden)]
pub async fn read_control_lines<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    max_lines: usize,
) -> ControlLines {
    let mut reader = LineReader::new(stream);
    let mut lines = Vec::new();
    let mut error = None;
    while lines.len() < max_lines {
        match reader.read_line().await {
            Ok(Some(line)) => lines.push(line),
            Ok(None) => break,
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let (mut unread, buffered) = reader.into_parts();
    unread.extend_from_slice(buffered.buffer());
    ControlLines {
        lines,
        error,
        unread,
    }
}

/// Read the next message from the relay, with a timeout. An `error` message
/// becomes an `Err` carrying its reason.
async fn read_reply(
    reader: &mut LineReader<TcpStream>,
    timeout: Duration,
    waiting_for: &str,
) -> anyhow::Result<Message> {
    let line = tokio::time::timeout(timeout, reader.read_line())
        .await
        .map_err(|_| anyhow::anyhow!("no {waiting_for} from the relay within {timeout:?}"))?
        .with_context(|| format!("reading {waiting_for} from the relay"))?
        .with_context(|| format!("the relay closed the connection before {waiting_for}"))?;
    let msg = Message::from_line(&line).with_context(|| {
        format!(
            "malformed line from the relay: {:?}",
            String::from_utf8_lossy(&line)
        )
    })?;
    if let Message::Error { reason } = msg {
        bail!("the relay refused: {reason}");
    }
    Ok(msg)
}

/// Our registration at the relay: the TCP control connection after
/// `hello`/`observed`.
#[derive(Debug)]
pub struct Registration {
    reader: LineReader<TcpStream>,
    name: String,
    observed_tcp: SocketAddr,
    local_tcp: SocketAddr,
}

/// Open a TCP connection to `relay`, leaving from `from` with `SO_REUSEADDR`
/// and `SO_REUSEPORT` when given (so it can share the port of our punch
/// listener).
async fn connect_tcp(relay: SocketAddr, from: Option<SocketAddr>) -> anyhow::Result<TcpStream> {
    let connect = async {
        match from {
            None => TcpStream::connect(relay).await,
            Some(from) => {
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(relay),
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                socket.set_reuse_address(true)?;
                #[cfg(unix)]
                socket.set_reuse_port(true)?;
                socket.set_nonblocking(true)?;
                socket.bind(&from.into())?;
                let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
                socket.connect(relay).await
            }
        }
    };
    let stream = tokio::time::timeout(RELAY_CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow::anyhow!("connecting to the relay at {relay} timed out"))?
        .with_context(|| match from {
            Some(from) => format!("connecting to the relay at {relay} from {from}"),
            None => format!("connecting to the relay at {relay}"),
        })?;
    // Control lines are tiny and latency matters for DCUtR's RTT measurement
    // on the relayed stream.
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    Ok(stream)
}

/// Connect to the relay, say `hello` with `name` and read the TCP address the
/// relay observed.
///
/// With `tcp_from`, the connection leaves from that local address with
/// `SO_REUSEADDR` and `SO_REUSEPORT`, so it may share the port of a punch
/// listener bound the same way: the relay then observes the NAT mapping of
/// the punch port.
pub async fn register(
    relay: SocketAddr,
    name: &str,
    tcp_from: Option<SocketAddr>,
) -> anyhow::Result<Registration> {
    validate_name(name).map_err(anyhow::Error::msg)?;
    let stream = connect_tcp(relay, tcp_from).await?;
    let local_tcp = stream
        .local_addr()
        .context("local address of the relay connection")?;
    let mut reader = LineReader::new(stream);
    reader
        .send(&Message::Hello {
            name: name.to_owned(),
        })
        .await
        .context("sending hello to the relay")?;
    match read_reply(&mut reader, RELAY_REPLY_TIMEOUT, "observed").await? {
        Message::Observed { tcp: Some(tcp), .. } => Ok(Registration {
            reader,
            name: name.to_owned(),
            observed_tcp: canonical(tcp),
            local_tcp,
        }),
        other => bail!(
            "expected observed with a tcp address from the relay, got {}",
            other.kind()
        ),
    }
}

/// Ask the relay which address it sees for `socket` (our QUIC socket): send
/// an `observe` datagram to the relay's UDP port and wait for `observed`,
/// retrying [`UDP_OBSERVE_TRIES`] times every [`UDP_OBSERVE_TIMEOUT`].
/// Datagrams from other sources are ignored.
pub async fn observe_udp(
    socket: &UdpSocket,
    relay: SocketAddr,
    name: &str,
) -> anyhow::Result<SocketAddr> {
    validate_name(name).map_err(anyhow::Error::msg)?;
    let request = observe_datagram(name)?;
    let mut buf = vec![0u8; MAX_LINE_BYTES + 1];
    for attempt in 1..=UDP_OBSERVE_TRIES {
        socket
            .send_to(&request, relay)
            .await
            .with_context(|| format!("sending observe to the relay at {relay} (UDP)"))?;
        let deadline = tokio::time::Instant::now() + UDP_OBSERVE_TIMEOUT;
        loop {
            let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
            let Ok(received) = received else {
                tracing::debug!(attempt, "no UDP observed answer in time, retrying");
                break;
            };
            let (n, from) = match received {
                Ok(x) => x,
                // An ICMP port unreachable from an earlier send surfaces here
                // on some systems: count it as a lost answer.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::debug!(attempt, "UDP observe refused: {e}");
                    break;
                }
                Err(e) => return Err(e).context("receiving the UDP observed answer"),
            };
            if canonical(from) != canonical(relay) {
                tracing::debug!(%from, "ignoring a datagram that is not from the relay");
                continue;
            }
            let payload = buf[..n].strip_suffix(b"\n").unwrap_or(&buf[..n]);
            match Message::from_line(payload) {
                Ok(Message::Observed { udp: Some(udp), .. }) => return Ok(canonical(udp)),
                Ok(Message::Error { reason }) => bail!("the relay refused observe: {reason}"),
                Ok(other) => tracing::debug!(kind = other.kind(), "unexpected UDP answer"),
                Err(e) => tracing::debug!("malformed UDP answer from the relay: {e}"),
            }
        }
    }
    bail!(
        "the relay at {relay} did not answer {UDP_OBSERVE_TRIES} UDP observe datagrams \
         ({UDP_OBSERVE_TIMEOUT:?} each): is UDP blocked?"
    )
}

/// The `observe` datagram for `name`, padded with spaces to
/// [`OBSERVE_DATAGRAM_LEN`] (JSON allows them) so that the relay may answer
/// it.
///
/// # Errors
/// When the line does not fit (a name is at most [`MAX_NAME_LEN`]
/// characters, so it always does).
pub fn observe_datagram(name: &str) -> io::Result<Vec<u8>> {
    let mut line = Message::Observe {
        name: name.to_owned(),
    }
    .to_line()?;
    let newline = line.pop();
    if line.len() + 1 < OBSERVE_DATAGRAM_LEN {
        line.resize(OBSERVE_DATAGRAM_LEN - 1, b' ');
    }
    line.extend(newline);
    Ok(line)
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Registration {
    /// The name we registered.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The source address of our TCP connection as the relay saw it.
    pub fn observed_tcp(&self) -> SocketAddr {
        self.observed_tcp
    }

    /// The local address of our TCP connection to the relay (its IP is the
    /// one the kernel routes towards the relay, even when we bound
    /// `0.0.0.0`).
    pub fn local_tcp(&self) -> SocketAddr {
        self.local_tcp
    }

    /// Send `ready` with our observed addresses and the subset believed
    /// public, and wait for `registered`. May be sent again to update them.
    pub async fn ready(&mut self, addrs: &[String], public: &[String]) -> anyhow::Result<()> {
        let msg = Message::Ready {
            addrs: addrs.to_vec(),
            public: public.to_vec(),
        };
        check_paired_fits(addrs, public)?;
        self.reader
            .send(&msg)
            .await
            .context("sending ready to the relay")?;
        match read_reply(&mut self.reader, RELAY_REPLY_TIMEOUT, "registered").await? {
            Message::Registered => Ok(()),
            other => bail!("expected registered from the relay, got {}", other.kind()),
        }
    }

    /// Ask the relay for `peer` and wait for `paired`. The relay waits up to
    /// [`crate::relay::CONNECT_WAIT_TIMEOUT`] for `peer` to register.
    pub async fn connect(mut self, peer: &str) -> anyhow::Result<Paired> {
        validate_name(peer).map_err(anyhow::Error::msg)?;
        self.reader
            .send(&Message::Connect {
                peer: peer.to_owned(),
            })
            .await
            .context("sending connect to the relay")?;
        self.paired(CONNECT_REPLY_TIMEOUT).await
    }

    /// Wait until another peer connects to us (`paired`).
    pub async fn wait_paired(self) -> anyhow::Result<Paired> {
        self.paired(WAIT_PAIRED_TIMEOUT).await
    }

    async fn paired(mut self, timeout: Duration) -> anyhow::Result<Paired> {
        match read_reply(&mut self.reader, timeout, "paired").await? {
            Message::Paired {
                peer,
                side,
                peer_public,
                peer_addrs,
            } => Ok(Paired {
                stream: self.reader.into_inner(),
                peer,
                side,
                peer_public,
                peer_addrs,
            }),
            other => bail!("expected paired from the relay, got {}", other.kind()),
        }
    }
}

/// Whether a `paired` line carrying these lists (with the longest name)
/// fits in [`MAX_LINE_BYTES`]; the relay refuses a `ready` whose lists would
/// not fit.
pub(crate) fn check_paired_fits(addrs: &[String], public: &[String]) -> io::Result<()> {
    Message::Paired {
        peer: "x".repeat(MAX_NAME_LEN),
        side: PairedSide::Responder,
        peer_public: public.to_vec(),
        peer_addrs: addrs.to_vec(),
    }
    .to_line()
    .map(drop)
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("address lists too long: the paired line would exceed {MAX_LINE_BYTES} bytes"),
        )
    })
}

/// Two peers paired by the relay: the relayed stream and what the relay told
/// us about the other peer.
#[derive(Debug)]
pub struct Paired {
    /// The relayed stream to the other peer. Bytes that arrived together with
    /// the `paired` line are still in the [`BufReader`]'s buffer and are read
    /// first; writes go straight to the socket.
    pub stream: BufReader<TcpStream>,
    /// The other peer's name.
    pub peer: String,
    /// Our DCUtR side: [`PairedSide::Responder`] is A (asked with
    /// `connect`), [`PairedSide::Initiator`] is B (waited).
    pub side: PairedSide,
    /// The other peer's addresses it believes publicly reachable.
    pub peer_public: Vec<String>,
    /// The other peer's observed addresses.
    pub peer_addrs: Vec<String>,
}

impl Paired {
    /// The local address of the relayed stream's TCP connection.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.get_ref().local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_documented_json() {
        let line = Message::Paired {
            peer: "a".into(),
            side: PairedSide::Initiator,
            peer_public: vec![],
            peer_addrs: vec!["/ip4/1.2.3.4/tcp/5".into()],
        }
        .to_line()
        .unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"type\":\"paired\",\"peer\":\"a\",\"side\":\"initiator\",\"peer_public\":[],\
             \"peer_addrs\":[\"/ip4/1.2.3.4/tcp/5\"]}\n"
        );
        let observed = Message::Observed {
            tcp: Some("1.2.3.4:5".parse().unwrap()),
            udp: None,
        };
        assert_eq!(
            serde_json::to_string(&observed).unwrap(),
            r#"{"type":"observed","tcp":"1.2.3.4:5"}"#
        );
        assert_eq!(
            Message::from_line(br#"{"type":"registered","extra":1}"#).unwrap(),
            Message::Registered
        );
        assert!(Message::from_line(br#"{"type":"bogus"}"#).is_err());
        assert!(Message::from_line(br#"{"name":"x"}"#).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("b").is_ok());
        assert!(validate_name("Peer_1.x-2").is_ok());
        assert!(validate_name(&"n".repeat(MAX_NAME_LEN)).is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name(&"n".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name("é").is_err());
    }

    #[test]
    fn multiaddrs_and_public_check() {
        let v4: SocketAddr = "1.2.3.4:5000".parse().unwrap();
        assert_eq!(tcp_multiaddr(v4), "/ip4/1.2.3.4/tcp/5000");
        assert_eq!(quic_multiaddr(v4), "/ip4/1.2.3.4/udp/5000/quic-v1");
        let mapped: SocketAddr = "[::ffff:1.2.3.4]:7".parse().unwrap();
        assert_eq!(tcp_multiaddr(mapped), "/ip4/1.2.3.4/tcp/7");
        let v6: SocketAddr = "[2001:db8::1]:7".parse().unwrap();
        assert_eq!(quic_multiaddr(v6), "/ip6/2001:db8::1/udp/7/quic-v1");

        let route: IpAddr = "1.2.3.4".parse().unwrap();
        assert!(is_public(v4, "0.0.0.0:5000".parse().unwrap(), route));
        assert!(is_public(v4, v4, route));
        assert!(!is_public(v4, "0.0.0.0:5001".parse().unwrap(), route));
        assert!(!is_public(
            v4,
            "10.0.0.2:5000".parse().unwrap(),
            "10.0.0.2".parse().unwrap()
        ));
    }

    #[test]
    fn a_paired_line_for_a_maximal_ready_is_checked() {
        assert!(check_paired_fits(&["/ip4/1.2.3.4/tcp/1".into()], &[]).is_ok());
        let long = vec!["x".repeat(MAX_LINE_BYTES / 2); 2];
        assert!(check_paired_fits(&long, &[]).is_err());
    }
}
