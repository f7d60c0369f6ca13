//! A STUN client for NAT behaviour discovery: RFC 8489 Binding over UDP,
//! and the RFC 5780 tests where a server offers OTHER-ADDRESS. Its results
//! feed [`dcutr_core::nat::NatObservations`], which classifies the NAT.
//!
//! Three layers, each usable alone:
//!
//! * the codec, [`binding_request`] and [`parse_response`], over the
//!   `stun-types` crate (which has no RFC 5780 attributes, so OTHER-ADDRESS,
//!   RESPONSE-ORIGIN and CHANGE-REQUEST are read and written here as raw
//!   attributes);
//! * [`Discovery`], a Sans-IO state machine: it says which request to send
//!   where and when, takes the datagrams that came back with a timestamp,
//!   retransmits with RFC 8489's bounded backoff and matches answers by
//!   transaction id. It runs the tests in an order that does not spoil
//!   them: first a Binding to every server; then the filtering probes
//!   (CHANGE-REQUEST), before any packet went to a server's other address,
//!   which would open our own NAT's filter to it; last the mapping tests
//!   towards the other address;
//! * [`discover`], the async loop that runs a [`Discovery`] on one socket,
//!   on any runtime, through [`UdpIo`] and [`Clock`].
//!
//! A server's OTHER-ADDRESS decides where the two mapping tests go; a
//! hostile server can so aim at most 2 × [`MAX_REQUESTS`] requests of 20
//! bytes at an address of its choice (of our IP family), once per
//! discovery.
//!
//! Every wait is bounded: a test gives up after
//! [`Timing::transaction_timeout`] (5.5 s with the defaults), the phases run
//! their tests concurrently, and at most [`MAX_SERVERS`] servers are
//! probed, so a whole discovery ends within three transaction timeouts.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dcutr_core::nat::{FilteringProbe, NatBehaviour, NatObservations, Observation, ProbeChange};
use futures_util::future::{self, BoxFuture, Either};
use futures_util::{AsyncReadExt, AsyncWriteExt};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use stun_types::attribute::XorMappedAddress;
use stun_types::attribute::{AttributeType, ErrorCode, MappedSocketAddr, RawAttribute};
use stun_types::message::{
    BINDING, Message, MessageClass, MessageHeader, MessageType, MessageWrite, MessageWriteExt,
    MessageWriteVec, TransactionId as StunTransactionId,
};

use crate::Runtime;

/// The default STUN port (RFC 8489 section 18.5).
pub const STUN_PORT: u16 = 3478;

/// Retransmission timeout of the first request to a server, before any
/// round trip to it was measured.
///
/// RFC 8489 section 6.2.1: the initial RTO SHOULD be at least 500 ms
/// without an estimate of the round-trip time.
pub const INITIAL_RTO: Duration = Duration::from_millis(500);

/// Smallest retransmission timeout once a round trip was measured.
///
/// Later tests against a server that answered use
/// [`RTT_RTO_FACTOR`] × its round trip, as RFC 8489 section 6.2.1 allows
/// (with RFC 6298's first-sample rule, RTO = 3 × RTT); 100 ms keeps a
/// loopback or LAN server from being flooded with retransmissions of a
/// probe whose answer the NAT filters out.
pub const MIN_RTO: Duration = Duration::from_millis(100);

/// RTO from a measured round trip: RFC 6298's first sample gives
/// SRTT + 4 × RTTVAR = RTT + 4 × RTT / 2 = 3 × RTT.
pub const RTT_RTO_FACTOR: u32 = 3;

/// Requests sent per test, the first included (RFC 8489's Rc).
///
/// RFC 8489 suggests 7, for a transaction that must succeed; a discovery
/// probe that the NAT filters out would then wait 39.5 s. With 4 requests
/// a lost datagram still gets three retries, and a silent server costs
/// [`Timing::transaction_timeout`] = 11 × RTO = 5.5 s.
pub const MAX_REQUESTS: u32 = 4;

/// How many RTOs to wait for an answer after the last request (RFC 8489's
/// Rm): 4 rather than RFC 8489's 16, for the same reason as
/// [`MAX_REQUESTS`].
pub const FINAL_WAIT_FACTOR: u32 = 4;

/// Largest RTO, requests per test and final wait factor that [`Timing`]
/// accepts; larger values are clamped to these. RFC 8489's defaults
/// (RTO 3 s at most, Rc 7, Rm 16) are the upper bounds.
pub const MAX_RTO: Duration = Duration::from_secs(3);
/// See [`MAX_RTO`].
pub const MAX_REQUESTS_LIMIT: u32 = 7;
/// See [`MAX_RTO`].
pub const MAX_FINAL_WAIT_FACTOR: u32 = 16;

/// Most STUN servers one discovery probes.
///
/// Each server gives up to three observations (its own address, the other
/// IP, the other address) and two filtering probes; four servers fit
/// [`dcutr_core::nat::MAX_OBSERVATIONS`] (16) and
/// [`dcutr_core::nat::MAX_FILTERING_PROBES`] (8).
pub const MAX_SERVERS: usize = 4;

/// Receive buffer: any datagram a path with a 1500-byte MTU carries. A
/// longer one is truncated and then fails to parse.
pub const MAX_DATAGRAM: usize = 1500;

/// Longest ERROR-CODE reason phrase kept, in characters (RFC 8489 allows
/// 127); the rest is cut.
pub const MAX_REASON_CHARS: usize = 127;

/// CHANGE-REQUEST (RFC 5780 section 7.2).
const CHANGE_REQUEST: AttributeType = AttributeType::new(0x0003);
/// MAPPED-ADDRESS (RFC 8489 section 14.1), from servers that predate
/// XOR-MAPPED-ADDRESS.
const MAPPED_ADDRESS: AttributeType = AttributeType::new(0x0001);
/// RESPONSE-ORIGIN (RFC 5780 section 7.3).
const RESPONSE_ORIGIN: AttributeType = AttributeType::new(0x802B);
/// OTHER-ADDRESS (RFC 5780 section 7.4).
const OTHER_ADDRESS: AttributeType = AttributeType::new(0x802C);
/// CHANGE-REQUEST flags.
const CHANGE_IP: u8 = 0x04;
const CHANGE_PORT: u8 = 0x02;

/// A STUN transaction id: 96 random bits.
pub type TransactionId = [u8; 12];

fn to_stun_id(id: TransactionId) -> StunTransactionId {
    let mut wide = [0u8; 16];
    wide[4..].copy_from_slice(&id);
    u128::from_be_bytes(wide).into()
}

fn from_stun_id(id: StunTransactionId) -> TransactionId {
    let wide = u128::from(id).to_be_bytes();
    let mut out = [0u8; 12];
    out.copy_from_slice(&wide[4..]);
    out
}

/// A Binding request with transaction id `id`; with `change`, a
/// CHANGE-REQUEST asks the server to answer from its other IP and port,
/// or its other port (RFC 5780 section 4.4).
#[must_use]
pub fn binding_request(id: TransactionId, change: Option<ProbeChange>) -> Vec<u8> {
    let mtype = MessageType::from_class_method(MessageClass::Request, BINDING);
    let mut msg = Message::builder(mtype, to_stun_id(id), MessageWriteVec::with_capacity(28));
    if let Some(change) = change {
        let flags = match change {
            ProbeChange::IpAndPort => CHANGE_IP | CHANGE_PORT,
            ProbeChange::Port => CHANGE_PORT,
        };
        let value = [0, 0, 0, flags];
        // A fresh message of 20 bytes always has room for one 8-byte
        // attribute; the writer only fails past 64 KiB or after
        // MESSAGE-INTEGRITY.
        if let Err(e) = msg.add_attribute(&RawAttribute::new(CHANGE_REQUEST, &value)) {
            tracing::debug!(%e, "CHANGE-REQUEST not written");
        }
    }
    msg.finish()
}

/// What a server answered to a Binding request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// A success response.
    Success(BindingSuccess),
    /// An error response (for example 420 from a server that does not know
    /// CHANGE-REQUEST).
    Error {
        /// The ERROR-CODE number (300 to 699), 0 if the attribute is
        /// missing or broken.
        code: u16,
        /// Its reason phrase, at most [`MAX_REASON_CHARS`] characters.
        reason: String,
    },
}

/// The addresses a Binding success response carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingSuccess {
    /// Our address as the server saw it (XOR-MAPPED-ADDRESS, else
    /// MAPPED-ADDRESS).
    pub mapped: SocketAddr,
    /// The server's other address, for RFC 5780 tests (OTHER-ADDRESS).
    pub other_address: Option<SocketAddr>,
    /// Where the server says it sent the answer from (RESPONSE-ORIGIN).
    pub response_origin: Option<SocketAddr>,
}

/// Why a datagram is not a usable Binding response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not a STUN message (no magic cookie, too short).
    #[error("not a STUN message")]
    NotStun,
    /// A STUN message, but not a Binding success or error response.
    #[error("not a Binding response")]
    NotBindingResponse,
    /// A Binding response that does not parse (bad length, attribute or
    /// FINGERPRINT).
    #[error("malformed STUN message: {0}")]
    Malformed(String),
    /// A success response without a usable (XOR-)MAPPED-ADDRESS.
    #[error("success response without a mapped address")]
    NoMappedAddress,
}

/// The transaction id of a Binding response, from its 20-byte header
/// alone; `None` for anything else. Lets a caller drop answers to
/// transactions it never started without parsing them.
#[must_use]
pub fn response_id(datagram: &[u8]) -> Option<TransactionId> {
    let header = MessageHeader::from_bytes(datagram).ok()?;
    let mtype = header.get_type();
    let response = matches!(mtype.class(), MessageClass::Success | MessageClass::Error);
    (response && mtype.has_method(BINDING)).then(|| from_stun_id(header.transaction_id()))
}

/// Parses a Binding response.
///
/// # Errors
/// [`ParseError`] when the datagram is not a well-formed Binding response
/// or a success without a mapped address.
pub fn parse_response(datagram: &[u8]) -> Result<(TransactionId, Response), ParseError> {
    let header = MessageHeader::from_bytes(datagram).map_err(|_| ParseError::NotStun)?;
    let mtype = header.get_type();
    if !mtype.has_method(BINDING) {
        return Err(ParseError::NotBindingResponse);
    }
    let class = mtype.class();
    if !matches!(class, MessageClass::Success | MessageClass::Error) {
        return Err(ParseError::NotBindingResponse);
    }
    let msg = Message::from_bytes(datagram).map_err(|e| ParseError::Malformed(e.to_string()))?;
    let id = from_stun_id(msg.transaction_id());
    let address = |atype| {
        msg.raw_attribute(atype)
            .and_then(|raw| MappedSocketAddr::from_raw(&raw).ok())
            .map(|a| a.addr())
    };
    if class == MessageClass::Error {
        let (code, reason) = match msg.attribute::<ErrorCode>() {
            Ok(e) => (
                e.code(),
                e.reason().chars().take(MAX_REASON_CHARS).collect(),
            ),
            Err(_) => (0, String::new()),
        };
        return Ok((id, Response::Error { code, reason }));
    }
    let mapped = match msg.attribute::<XorMappedAddress>() {
        Ok(x) => x.addr(msg.transaction_id()),
        Err(_) => address(MAPPED_ADDRESS).ok_or(ParseError::NoMappedAddress)?,
    };
    if mapped.port() == 0 {
        return Err(ParseError::NoMappedAddress);
    }
    Ok((
        id,
        Response::Success(BindingSuccess {
            mapped,
            other_address: address(OTHER_ADDRESS),
            response_origin: address(RESPONSE_ORIGIN),
        }),
    ))
}

/// Retransmission timing of each test, RFC 8489 section 6.2.1 style:
/// requests `rto`, `2 rto`, `4 rto`, … apart, then a final wait of
/// `final_wait_factor × rto` after the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// RTO of the first test against each server ([`INITIAL_RTO`]).
    pub initial_rto: Duration,
    /// Requests per test, the first included ([`MAX_REQUESTS`]).
    pub requests: u32,
    /// RTOs to wait after the last request ([`FINAL_WAIT_FACTOR`]).
    pub final_wait_factor: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            initial_rto: INITIAL_RTO,
            requests: MAX_REQUESTS,
            final_wait_factor: FINAL_WAIT_FACTOR,
        }
    }
}

impl Timing {
    /// This timing with every value within its limits: RTO 1 ms to
    /// [`MAX_RTO`], 1 to [`MAX_REQUESTS_LIMIT`] requests, a final wait of
    /// 1 to [`MAX_FINAL_WAIT_FACTOR`] RTOs.
    #[must_use]
    pub fn bounded(self) -> Self {
        Timing {
            initial_rto: self.initial_rto.clamp(Duration::from_millis(1), MAX_RTO),
            requests: self.requests.clamp(1, MAX_REQUESTS_LIMIT),
            final_wait_factor: self.final_wait_factor.clamp(1, MAX_FINAL_WAIT_FACTOR),
        }
    }

    /// How long one test with retransmission timeout `rto` waits for an
    /// answer, from its first request: `(2^(requests − 1) − 1 +
    /// final_wait_factor) × rto`. 5.5 s with the defaults.
    #[must_use]
    pub fn transaction_timeout(&self, rto: Duration) -> Duration {
        let t = self.bounded();
        let backoff = (1u32 << (t.requests - 1)) - 1;
        rto.saturating_mul(backoff + t.final_wait_factor)
    }

    /// The wait after the `sent`-th request (1-based).
    fn wait_after(&self, sent: u32, rto: Duration) -> Duration {
        if sent < self.requests {
            rto.saturating_mul(1 << (sent - 1).min(16))
        } else {
            rto.saturating_mul(self.final_wait_factor)
        }
    }
}

/// Which test a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Test {
    /// A Binding to the server's own address (RFC 5780 test I).
    Binding,
    /// A Binding to the other IP, same port (mapping test II).
    OtherIp,
    /// A Binding to the other IP and port (mapping test III).
    OtherAddress,
    /// CHANGE-REQUEST: answer from the other IP and port (filtering test
    /// II).
    ChangeIpAndPort,
    /// CHANGE-REQUEST: answer from the other port (filtering test III).
    ChangePort,
}

impl Test {
    /// The filtering probe this test is, if it is one.
    #[must_use]
    pub fn change(self) -> Option<ProbeChange> {
        match self {
            Test::ChangeIpAndPort => Some(ProbeChange::IpAndPort),
            Test::ChangePort => Some(ProbeChange::Port),
            _ => None,
        }
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Test::Binding => "binding",
            Test::OtherIp => "binding to the other IP",
            Test::OtherAddress => "binding to the other address",
            Test::ChangeIpAndPort => "answer from the other IP and port",
            Test::ChangePort => "answer from the other port",
        })
    }
}

/// How one test ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestOutcome {
    /// A success response.
    Answered {
        /// Where the answer came from.
        from: SocketAddr,
        /// What it carried.
        response: BindingSuccess,
        /// Time from the request to the answer, when only one request was
        /// sent (Karn's rule: after a retransmission it is ambiguous).
        rtt: Option<Duration>,
    },
    /// An error response.
    Error {
        /// Where it came from.
        from: SocketAddr,
        /// The ERROR-CODE number, 0 if missing.
        code: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// An answer with our transaction id that does not parse.
    Malformed {
        /// Where it came from.
        from: SocketAddr,
        /// Why it does not parse.
        error: ParseError,
    },
    /// No answer within [`Timing::transaction_timeout`].
    TimedOut {
        /// How long it waited, from the first request.
        after: Duration,
    },
}

/// One test and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResult {
    /// The server (as given) the test belongs to.
    pub server: SocketAddr,
    /// Which test.
    pub test: Test,
    /// Where its requests went.
    pub target: SocketAddr,
    /// Requests sent.
    pub requests: u32,
    /// How it ended.
    pub outcome: TestOutcome,
}

impl TestResult {
    /// Our mapped address, if the test got a success response.
    #[must_use]
    pub fn mapped(&self) -> Option<SocketAddr> {
        match &self.outcome {
            TestOutcome::Answered { response, .. } => Some(response.mapped),
            _ => None,
        }
    }

    /// The observation this test makes, if it is a Binding that got an
    /// answer.
    #[must_use]
    pub fn observation(&self) -> Option<Observation> {
        let mapped = self.mapped()?;
        match self.test {
            Test::Binding => Some(Observation::new(self.target, mapped)),
            Test::OtherIp | Test::OtherAddress => {
                Some(Observation::other_address(self.target, mapped))
            }
            Test::ChangeIpAndPort | Test::ChangePort => None,
        }
    }

    /// The filtering probe this test makes, if it is a CHANGE-REQUEST
    /// whose result can be trusted: an answer that came from the address
    /// asked for counts as received, no answer as lost. An answer from the
    /// unchanged address (a server that ignored CHANGE-REQUEST), an error
    /// or a malformed answer tells nothing.
    #[must_use]
    pub fn filtering_probe(&self) -> Option<FilteringProbe> {
        let change = self.test.change()?;
        let received = match &self.outcome {
            TestOutcome::Answered { from, .. } => {
                let other_ip = from.ip() != self.target.ip();
                let other_port = from.port() != self.target.port();
                let as_asked = match change {
                    ProbeChange::IpAndPort => other_ip && other_port,
                    ProbeChange::Port => !other_ip && other_port,
                };
                if !as_asked {
                    return None;
                }
                true
            }
            TestOutcome::TimedOut { .. } => false,
            TestOutcome::Error { .. } | TestOutcome::Malformed { .. } => return None,
        };
        Some(FilteringProbe { change, received })
    }
}

/// Why an RFC 5780 test was not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// A filtering probe whose answer would come from an address (or, for
    /// [`Test::ChangeIpAndPort`], an IP) we already sent to: our own NAT's
    /// filter lets it through whatever its kind.
    Contacted(SocketAddr),
    /// A mapping test towards an address that another test observes.
    AlreadyObserved(SocketAddr),
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::Contacted(a) => write!(
                f,
                "we already sent to {a}, so the answer could pass our filter anyway"
            ),
            Skip::AlreadyObserved(a) => write!(f, "{a} is observed by another test"),
        }
    }
}

/// An RFC 5780 test not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkippedTest {
    /// The server it belongs to.
    pub server: SocketAddr,
    /// Which test.
    pub test: Test,
    /// Why not.
    pub because: Skip,
}

/// Why a discovery cannot start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// No server given.
    #[error("no STUN server given")]
    NoServers,
    /// More than [`MAX_SERVERS`] distinct servers.
    #[error("{given} STUN servers given, at most {max} are probed")]
    TooManyServers {
        /// Distinct servers given.
        given: usize,
        /// [`MAX_SERVERS`].
        max: usize,
    },
    /// A server of the other IP family than the local socket.
    #[error("STUN server {0} is not of the local socket's IP family")]
    FamilyMismatch(SocketAddr),
    /// A server with port 0 or an unspecified IP.
    #[error("STUN server {0} is not a usable address")]
    BadServer(SocketAddr),
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Its destination.
    pub to: SocketAddr,
    /// The request.
    pub payload: Vec<u8>,
}

/// The phases, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Bindings,
    Filtering,
    Mapping,
    Done,
}

/// An outstanding test.
#[derive(Debug)]
struct Pending {
    seq: usize,
    server: SocketAddr,
    test: Test,
    target: SocketAddr,
    id: TransactionId,
    request: Vec<u8>,
    rto: Duration,
    sent: u32,
    first_sent: Option<Instant>,
    last_sent: Option<Instant>,
    /// When to send the next request or, after the last, to give up.
    deadline: Instant,
}

/// NAT behaviour discovery against a few STUN servers, Sans-IO.
///
/// Drive it with [`Discovery::poll_transmit`] (send what it returns),
/// [`Discovery::handle_datagram`] (every datagram the socket receives) and
/// [`Discovery::poll_timeout`] (when to call `poll_transmit` again), until
/// [`Discovery::is_done`]; then [`Discovery::report`].
#[derive(Debug)]
pub struct Discovery {
    local: SocketAddr,
    servers: Vec<SocketAddr>,
    timing: Timing,
    rng: ChaCha20Rng,
    phase: Phase,
    pending: Vec<Pending>,
    results: Vec<(usize, TestResult)>,
    skipped: Vec<SkippedTest>,
    next_seq: usize,
    /// Every address a request went to, to keep filtering probes honest.
    contacted: Vec<SocketAddr>,
    started: Instant,
    finished: Option<Instant>,
    ignored: u32,
}

impl Discovery {
    /// A discovery from the socket bound at `local` against `servers`
    /// (duplicates dropped, order kept). Transaction ids come from a
    /// ChaCha20 stream seeded with `seed`. The first Bindings are due at
    /// `now`.
    ///
    /// # Errors
    /// [`DiscoveryError`] for no servers, too many, or unusable ones.
    pub fn new(
        local: SocketAddr,
        servers: &[SocketAddr],
        timing: Timing,
        seed: [u8; 32],
        now: Instant,
    ) -> Result<Self, DiscoveryError> {
        let mut distinct: Vec<SocketAddr> = Vec::new();
        for &s in servers {
            if s.port() == 0 || s.ip().is_unspecified() {
                return Err(DiscoveryError::BadServer(s));
            }
            if s.is_ipv4() != local.is_ipv4() {
                return Err(DiscoveryError::FamilyMismatch(s));
            }
            if !distinct.contains(&s) {
                distinct.push(s);
            }
        }
        if distinct.is_empty() {
            return Err(DiscoveryError::NoServers);
        }
        if distinct.len() > MAX_SERVERS {
            return Err(DiscoveryError::TooManyServers {
                given: distinct.len(),
                max: MAX_SERVERS,
            });
        }
        let mut discovery = Discovery {
            local,
            servers: distinct,
            timing: timing.bounded(),
            rng: ChaCha20Rng::from_seed(seed),
            phase: Phase::Bindings,
            pending: Vec::new(),
            results: Vec::new(),
            skipped: Vec::new(),
            next_seq: 0,
            contacted: Vec::new(),
            started: now,
            finished: None,
            ignored: 0,
        };
        for server in discovery.servers.clone() {
            let rto = discovery.timing.initial_rto;
            discovery.start(server, Test::Binding, server, rto, now);
        }
        Ok(discovery)
    }

    fn start(
        &mut self,
        server: SocketAddr,
        test: Test,
        target: SocketAddr,
        rto: Duration,
        now: Instant,
    ) {
        let mut id = [0u8; 12];
        self.rng.fill_bytes(&mut id);
        tracing::debug!(%server, %test, %target, ?rto, "STUN test");
        self.pending.push(Pending {
            seq: self.next_seq,
            server,
            test,
            target,
            id,
            request: binding_request(id, test.change()),
            rto,
            sent: 0,
            first_sent: None,
            last_sent: None,
            deadline: now,
        });
        self.next_seq += 1;
    }

    fn finish_test(&mut self, index: usize, outcome: TestOutcome) {
        // `remove`, not `swap_remove`: tests due together go out in the
        // order they started, which is the order their mappings open.
        let p = self.pending.remove(index);
        tracing::debug!(server = %p.server, test = %p.test, ?outcome, "STUN test done");
        self.results.push((
            p.seq,
            TestResult {
                server: p.server,
                test: p.test,
                target: p.target,
                requests: p.sent,
                outcome,
            },
        ));
    }

    fn skip(&mut self, server: SocketAddr, test: Test, because: Skip) {
        tracing::debug!(%server, %test, ?because, "STUN test skipped");
        self.skipped.push(SkippedTest {
            server,
            test,
            because,
        });
    }

    /// The server's answered primary Binding.
    fn primary(&self, server: SocketAddr) -> Option<(BindingSuccess, Option<Duration>)> {
        self.results.iter().find_map(|(_, r)| match &r.outcome {
            TestOutcome::Answered { response, rtt, .. }
                if r.server == server && r.test == Test::Binding =>
            {
                Some((*response, *rtt))
            }
            _ => None,
        })
    }

    /// The server's other address, if it offers a usable one: same family,
    /// another IP and another port.
    fn other_address(&self, server: SocketAddr) -> Option<(SocketAddr, Duration)> {
        let (response, rtt) = self.primary(server)?;
        let other = response.other_address?;
        let usable = other.is_ipv4() == server.is_ipv4()
            && !other.ip().is_unspecified()
            && other.port() != 0
            && other.ip() != server.ip()
            && other.port() != server.port();
        if !usable {
            tracing::debug!(%server, %other, "OTHER-ADDRESS not usable for RFC 5780 tests");
            return None;
        }
        let rto = match rtt {
            Some(rtt) => rtt
                .saturating_mul(RTT_RTO_FACTOR)
                .clamp(MIN_RTO, self.timing.initial_rto.max(MIN_RTO)),
            None => self.timing.initial_rto,
        };
        Some((other, rto))
    }

    /// Moves to the next phase with tests to run, when the current one is
    /// over.
    fn advance(&mut self, now: Instant) {
        while self.pending.is_empty() && self.phase != Phase::Done {
            self.phase = match self.phase {
                Phase::Bindings => Phase::Filtering,
                Phase::Filtering => Phase::Mapping,
                Phase::Mapping | Phase::Done => Phase::Done,
            };
            for server in self.servers.clone() {
                let Some((other, rto)) = self.other_address(server) else {
                    continue;
                };
                match self.phase {
                    Phase::Filtering => {
                        // An answer from an address we already sent to
                        // passes our NAT's filter whatever its kind: such
                        // a probe would prove nothing.
                        match self.contacted.iter().find(|a| a.ip() == other.ip()) {
                            Some(&sent_to) => {
                                self.skip(server, Test::ChangeIpAndPort, Skip::Contacted(sent_to));
                            }
                            None => self.start(server, Test::ChangeIpAndPort, server, rto, now),
                        }
                        let port_source = SocketAddr::new(server.ip(), other.port());
                        if self.contacted.contains(&port_source) {
                            self.skip(server, Test::ChangePort, Skip::Contacted(port_source));
                        } else {
                            self.start(server, Test::ChangePort, server, rto, now);
                        }
                    }
                    Phase::Mapping => {
                        let other_ip = SocketAddr::new(other.ip(), server.port());
                        for (test, target) in
                            [(Test::OtherIp, other_ip), (Test::OtherAddress, other)]
                        {
                            // A server given by the user at that address,
                            // or another server's test, observes it
                            // already: the classifier takes one
                            // observation per observer.
                            let observed = self.servers.contains(&target)
                                || self.pending.iter().any(|p| p.target == target)
                                || self.results.iter().any(|(_, r)| r.target == target);
                            if observed {
                                self.skip(server, test, Skip::AlreadyObserved(target));
                            } else {
                                self.start(server, test, target, rto, now);
                            }
                        }
                    }
                    Phase::Bindings | Phase::Done => {}
                }
            }
        }
        if self.phase == Phase::Done && self.finished.is_none() {
            self.finished = Some(now);
        }
    }

    /// The next datagram to send at `now`, if one is due. Also gives up on
    /// tests whose last wait ran out. Call it until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        loop {
            let due = self.pending.iter().position(|p| p.deadline <= now);
            let Some(i) = due else {
                self.advance(now);
                if self.pending.iter().any(|p| p.deadline <= now) {
                    continue;
                }
                return None;
            };
            let p = &mut self.pending[i];
            if p.sent >= self.timing.requests {
                let after = now.saturating_duration_since(p.first_sent.unwrap_or(now));
                self.finish_test(i, TestOutcome::TimedOut { after });
                continue;
            }
            p.sent += 1;
            p.first_sent.get_or_insert(now);
            p.last_sent = Some(now);
            p.deadline = now + self.timing.wait_after(p.sent, p.rto);
            let transmit = Transmit {
                to: p.target,
                payload: p.request.clone(),
            };
            if !self.contacted.contains(&transmit.to) {
                self.contacted.push(transmit.to);
            }
            return Some(transmit);
        }
    }

    /// Takes a datagram the socket received from `from` at `now`.
    /// Datagrams that answer none of our outstanding transactions are
    /// ignored (and counted).
    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        let index =
            response_id(datagram).and_then(|id| self.pending.iter().position(|p| p.id == id));
        let Some(i) = index else {
            self.ignored = self.ignored.saturating_add(1);
            tracing::debug!(%from, len = datagram.len(), "ignored a datagram");
            return;
        };
        let p = &self.pending[i];
        let rtt = match (p.sent, p.last_sent) {
            (1, Some(sent)) => Some(now.saturating_duration_since(sent)),
            _ => None,
        };
        let outcome = match parse_response(datagram) {
            Ok((_, Response::Success(response))) => TestOutcome::Answered {
                from,
                response,
                rtt,
            },
            Ok((_, Response::Error { code, reason })) => TestOutcome::Error { from, code, reason },
            Err(error) => TestOutcome::Malformed { from, error },
        };
        self.finish_test(i, outcome);
        self.advance(now);
    }

    /// When [`Discovery::poll_transmit`] has something to do next; `None`
    /// once done.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.deadline).min()
    }

    /// Every test has ended.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// What was found so far (everything, once [`Discovery::is_done`]).
    #[must_use]
    pub fn report(&self) -> DiscoveryReport {
        let mut results = self.results.clone();
        results.sort_by_key(|(seq, _)| *seq);
        let tests: Vec<TestResult> = results.into_iter().map(|(_, r)| r).collect();
        let mut observations = NatObservations::new(self.local);
        for t in &tests {
            if let Some(o) = t.observation() {
                // Refusals are counted in the evidence.
                let _ = observations.observe(o);
            }
            if let Some(p) = t.filtering_probe() {
                let _ = observations.probe(p);
            }
        }
        DiscoveryReport {
            local: self.local,
            servers: self.servers.clone(),
            behaviour: observations.classify(),
            tests,
            skipped: self.skipped.clone(),
            elapsed: self
                .finished
                .map(|f| f.saturating_duration_since(self.started)),
            ignored_datagrams: self.ignored,
        }
    }
}

/// What a discovery found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryReport {
    /// The local socket.
    pub local: SocketAddr,
    /// The servers probed, duplicates dropped.
    pub servers: Vec<SocketAddr>,
    /// Every test, in the order it started.
    pub tests: Vec<TestResult>,
    /// RFC 5780 tests not run, and why.
    pub skipped: Vec<SkippedTest>,
    /// The classification, with its evidence.
    pub behaviour: NatBehaviour,
    /// From the start to the end of the last test, once done.
    pub elapsed: Option<Duration>,
    /// Datagrams received that answered none of our transactions.
    pub ignored_datagrams: u32,
}

impl DiscoveryReport {
    /// Servers whose Binding got a success response.
    #[must_use]
    pub fn answered(&self) -> usize {
        self.tests
            .iter()
            .filter(|t| t.test == Test::Binding && t.mapped().is_some())
            .count()
    }

    /// The distinct mapped addresses, in the order first seen.
    #[must_use]
    pub fn mapped_addresses(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for m in self.tests.iter().filter_map(TestResult::mapped) {
            if !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }

    /// The other IPs of the servers that offer RFC 5780, at the server's
    /// port (the targets of [`Test::OtherIp`]), not among the servers
    /// given: more observers for a TCP mapping, whose filtering RFC 5780
    /// cannot test.
    #[must_use]
    pub fn other_ips(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for t in &self.tests {
            let TestOutcome::Answered { response, .. } = &t.outcome else {
                continue;
            };
            let Some(other) = response.other_address else {
                continue;
            };
            let target = SocketAddr::new(other.ip(), t.server.port());
            let usable = t.test == Test::Binding
                && other.is_ipv4() == t.server.is_ipv4()
                && other.ip() != t.server.ip()
                && !other.ip().is_unspecified();
            if usable && !self.servers.contains(&target) && !out.contains(&target) {
                out.push(target);
            }
        }
        out
    }

    /// Whether every mapped address equals the local one: no NAT between
    /// us and the servers. `false` when the local IP is unspecified (the
    /// caller then compares with the address its route uses).
    #[must_use]
    pub fn no_nat(&self) -> bool {
        let mapped = self.mapped_addresses();
        !mapped.is_empty() && mapped.iter().all(|m| *m == self.local)
    }
}

/// A UDP socket, for [`discover`]: any runtime's socket can implement it.
pub trait UdpIo {
    /// Sends `buf` to `target`.
    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>>;

    /// Receives one datagram into `buf`.
    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>>;
}

/// A clock with timers, for [`discover`]. Every [`Runtime`] is one.
pub trait Clock {
    /// The monotonic clock.
    fn now(&self) -> Instant;
    /// A future that completes at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()>;
}

impl<R: Runtime> Clock for R {
    fn now(&self) -> Instant {
        Runtime::now(self)
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        Runtime::sleep_until(self, deadline)
    }
}

/// How [`discover`] runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscoverOptions {
    /// Retransmission timing.
    pub timing: Timing,
    /// Seed of the transaction ids; `None` draws one from the OS.
    pub seed: Option<[u8; 32]>,
}

/// Why [`discover`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoverError {
    /// The servers or the local address do not fit.
    #[error(transparent)]
    Setup(#[from] DiscoveryError),
    /// The socket failed to receive.
    #[error("receiving on the STUN socket: {0}")]
    Io(#[from] io::Error),
    /// The OS had no randomness for the transaction ids.
    #[error("no OS randomness for STUN transaction ids: {0}")]
    Random(String),
}

/// Runs a [`Discovery`] on `socket`, bound at `local`, against `servers`.
///
/// Ends when every test has ended: within three
/// [`Timing::transaction_timeout`]s of the start. A send that fails is
/// retried like a lost request (the last such error is logged at debug);
/// a receive error other than an ICMP echo of an earlier send ends the
/// discovery.
///
/// # Errors
/// [`DiscoverError`].
pub async fn discover<U, C>(
    socket: &U,
    clock: &C,
    local: SocketAddr,
    servers: &[SocketAddr],
    options: DiscoverOptions,
) -> Result<DiscoveryReport, DiscoverError>
where
    U: UdpIo + ?Sized,
    C: Clock + ?Sized,
{
    let seed = seed_or_os(options.seed)?;
    let mut discovery = Discovery::new(local, servers, options.timing, seed, clock.now())?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        while let Some(t) = discovery.poll_transmit(clock.now()) {
            let sent = future::poll_fn(|cx| socket.poll_send_to(cx, &t.payload, t.to)).await;
            if let Err(e) = sent {
                tracing::debug!(to = %t.to, %e, "STUN request not sent");
            }
        }
        let Some(deadline) = discovery.poll_timeout() else {
            break;
        };
        let received = {
            let recv = future::poll_fn(|cx| socket.poll_recv_from(cx, &mut buf));
            let sleep = clock.sleep_until(deadline);
            match future::select(pin!(recv), sleep).await {
                Either::Left((received, _)) => Some(received),
                Either::Right(((), _)) => None,
            }
        };
        match received {
            Some(Ok((len, from))) => {
                let now = clock.now();
                discovery.handle_datagram(from, &buf[..len.min(buf.len())], now);
            }
            Some(Err(e)) if is_icmp_echo(&e) => {
                tracing::debug!(%e, "ICMP error on the STUN socket");
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(discovery.report())
}

fn seed_or_os(seed: Option<[u8; 32]>) -> Result<[u8; 32], DiscoverError> {
    match seed {
        Some(seed) => Ok(seed),
        None => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| DiscoverError::Random(e.to_string()))?;
            Ok(seed)
        }
    }
}

/// Errors a UDP socket reports for an ICMP answer to an earlier send
/// (Windows reports port unreachable this way): not fatal.
fn is_icmp_echo(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Longest one TCP observation (connect, request, answer) may take.
///
/// RFC 8489 gives a TCP transaction 39.5 s; a server that needs more than
/// 5 s on a path TCP already retransmits on is of no use to a discovery
/// that must finish before the punch.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a Binding over TCP gave no mapped address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TcpBindingError {
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// No answer within [`TCP_TIMEOUT`].
    #[error("no answer within {} s", TCP_TIMEOUT.as_secs())]
    TimedOut,
    /// The server announced a message longer than [`MAX_DATAGRAM`].
    #[error("answer of {0} bytes announced, at most {MAX_DATAGRAM} taken")]
    TooLong(usize),
    /// The answer does not parse.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The answer is for another transaction.
    #[error("answer to another transaction")]
    WrongTransaction,
    /// An error response.
    #[error("error {code} {reason}")]
    Error {
        /// The ERROR-CODE number.
        code: u16,
        /// Its reason phrase.
        reason: String,
    },
}

/// Sends one Binding request with id `id` on a connected TCP stream and
/// reads its answer (RFC 8489 section 6.2.2: STUN messages back to back on
/// the stream, each sized by its header). Not bounded in time: see
/// [`observe_tcp`].
///
/// # Errors
/// [`TcpBindingError`].
pub async fn tcp_binding<S>(
    stream: &mut S,
    id: TransactionId,
) -> Result<BindingSuccess, TcpBindingError>
where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + ?Sized,
{
    stream.write_all(&binding_request(id, None)).await?;
    stream.flush().await?;
    let mut message = vec![0u8; 20];
    stream.read_exact(&mut message).await?;
    let len = usize::from(u16::from_be_bytes([message[2], message[3]]));
    if 20 + len > MAX_DATAGRAM {
        return Err(TcpBindingError::TooLong(20 + len));
    }
    message.resize(20 + len, 0);
    stream.read_exact(&mut message[20..]).await?;
    let (answer_id, response) = parse_response(&message)?;
    if answer_id != id {
        return Err(TcpBindingError::WrongTransaction);
    }
    match response {
        Response::Success(ok) => Ok(ok),
        Response::Error { code, reason } => Err(TcpBindingError::Error { code, reason }),
    }
}

/// One TCP observation.
#[derive(Debug)]
pub struct TcpResult {
    /// The server.
    pub server: SocketAddr,
    /// It is another address of a server given, from its UDP
    /// OTHER-ADDRESS.
    pub other_address: bool,
    /// Our address as it saw it, and the time from the start of the
    /// connect to the answer; or why not.
    pub outcome: Result<(SocketAddr, Duration), TcpBindingError>,
}

/// What the TCP observations from one local port found.
#[derive(Debug)]
#[non_exhaustive]
pub struct TcpReport {
    /// The local address the connections left from.
    pub local: SocketAddr,
    /// Per server, in the order given.
    pub results: Vec<TcpResult>,
    /// The TCP mapping's classification (no filtering: RFC 5780's tests
    /// are UDP only).
    pub behaviour: NatBehaviour,
}

/// Observes our TCP mapping from the local address `local` (a port that
/// a reuse listener, such as the punch listener, holds: see
/// [`crate::net::reuse_listener`]): connects from it to each server in
/// turn, then to each of `other_addresses` (servers' other IPs, learnt
/// over UDP: see [`DiscoveryReport::other_ips`]), with port reuse, and
/// asks each for our address. Mapped addresses
/// are judged against `classify_as`: `local`, with the route's IP when
/// `local`'s is unspecified. Each server gets at most [`TCP_TIMEOUT`]; at
/// most [`MAX_SERVERS`] distinct addresses are asked, the rest are left
/// out. Transaction ids come from `seed`, or the OS.
///
/// # Errors
/// Only [`DiscoverError::Random`]: each server's failure is in its
/// [`TcpResult`].
pub async fn observe_tcp<R: Runtime>(
    runtime: &R,
    local: SocketAddr,
    classify_as: SocketAddr,
    servers: &[SocketAddr],
    other_addresses: &[SocketAddr],
    seed: Option<[u8; 32]>,
) -> Result<TcpReport, DiscoverError> {
    let mut rng = ChaCha20Rng::from_seed(seed_or_os(seed)?);
    let mut distinct: Vec<(SocketAddr, bool)> = Vec::new();
    let given = servers.iter().map(|s| (*s, false));
    let other = other_addresses.iter().map(|s| (*s, true));
    for (s, other_address) in given.chain(other) {
        if !distinct.iter().any(|(d, _)| *d == s) && distinct.len() < MAX_SERVERS {
            distinct.push((s, other_address));
        }
    }
    let mut observations = NatObservations::new(classify_as);
    let mut results = Vec::with_capacity(distinct.len());
    for (server, other_address) in distinct {
        let mut id = [0u8; 12];
        rng.fill_bytes(&mut id);
        let started = runtime.now();
        let attempt = async {
            let mut stream = runtime.connect_from(local, server).await?;
            let answer = tcp_binding(&mut stream, id).await;
            let _ = stream.close().await;
            answer
        };
        let sleep = runtime.sleep_until(started + TCP_TIMEOUT);
        let outcome = match future::select(pin!(attempt), sleep).await {
            Either::Left((answer, _)) => answer,
            Either::Right(((), _)) => Err(TcpBindingError::TimedOut),
        };
        let outcome =
            outcome.map(|ok| (ok.mapped, runtime.now().saturating_duration_since(started)));
        match &outcome {
            Ok((mapped, _)) => {
                // Refusals are counted in the evidence.
                let observation = if other_address {
                    Observation::other_address(server, *mapped)
                } else {
                    Observation::new(server, *mapped)
                };
                let _ = observations.observe(observation);
            }
            Err(e) => tracing::debug!(%server, %e, "no TCP observation"),
        }
        results.push(TcpResult {
            server,
            other_address,
            outcome,
        });
    }
    Ok(TcpReport {
        local: classify_as,
        results,
        behaviour: observations.classify(),
    })
}

#[cfg(test)]
mod tests;
