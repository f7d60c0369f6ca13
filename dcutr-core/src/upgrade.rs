//! The orchestrator of one relayed connection: the unilateral dial,
//! attempts, the punch, direct connections, and the outcome.
//!
//! Role-specific handling of the exchange lives in `initiator.rs` and
//! `responder.rs`; this module holds what both sides share.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::addr::{
    AddrRejection, AddressPredictor, Candidate, NoPrediction, ObservedAddrs, RejectionCounts,
    Transport, local_addrs_to_send,
};
use crate::codec::{self, FINGERPRINT_LEN, FrameDecoder};
use crate::config::{Capabilities, Config, ConfigError, QuicServerPunch};
use crate::direct::{self, DirectState, Directs, Origin};
use crate::error::{AttemptFailure, DialError, Failure, ProtocolError, Step};
use crate::nat::{HardSide, NatBehaviour};
use crate::output::{
    Dial, DialPurpose, DirectId, DirectRejection, Event, InboundRejected, Outcome, Output,
    PeerReflexiveRefused, Role, Side, SprayPayload, Timeout, TimerKind, Upgraded,
};
use crate::session::{Extension, Requested};
use crate::timeline::{AttemptRecord, DialRecord, DialResult, Timeline};
use crate::timer::Timers;

pub(crate) use crate::initiator::Initiating;
pub(crate) use crate::responder::Responding;

/// Most peer-reflexive dials in one attempt
/// ([`Upgrade::handle_peer_reflexive`]). Default 2: the peer's symmetric
/// NAT gives its punch socket one fresh port towards us, so a real peer
/// yields one candidate per attempt; the second covers a NAT that remaps
/// the flow during the punch. Each must come from an IP the peer named,
/// so a hostile peer or a spoofer of its datagrams gets at most this many
/// extra dials per attempt out of us, all on IPs the punch aims at
/// anyway, and within the per-IP and per-upgrade dial budgets.
pub const MAX_PEER_REFLEXIVE_DIALS: usize = 2;

/// Output slots kept allocated between bursts (at least; a spray round to
/// more targets keeps room for itself).
const OUTPUT_QUEUE_RETAINED: usize = 8;

/// Where one upgrade stands. Each role's exchange is its own enum
/// ([`Initiating`], [`Responding`]), and what only one phase has lives in
/// its variant: the peer's addresses only between its Connect and the
/// punch, the punch's dials and spray only while punching, and a failure
/// waiting for the last identity checks only while draining.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Identity check: waiting for the peer's `Hello`.
    AwaitHello,
    /// The initiator's exchange of the current attempt.
    Initiator(Initiating),
    /// The responder's exchange of the current attempt.
    Responder(Responding),
    /// Dials and spray of the current attempt are in flight.
    Punching(Punch),
    /// Every attempt is over; identity checks still running may win.
    /// `failure` is the outcome once the last of them is gone.
    Draining { failure: Failure },
    /// The outcome is decided: this one.
    Done(Outcome),
}

/// What the next frame on the relayed stream must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    Hello,
    Message,
    Nothing,
}

/// The spray of one attempt: rounds of one datagram per target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Spray {
    targets: Vec<SocketAddr>,
    sent: u32,
}

/// What the peer's Connect of the current attempt held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerAddrs {
    /// The usable addresses, to punch.
    accepted: Vec<Candidate>,
    /// How many it sent, and what we dropped of them, for the reason of
    /// an attempt with nothing to dial.
    received: usize,
    dropped: RejectionCounts,
    /// Priming datagrams sent to QUIC targets on this Connect
    /// ([`Upgrade::prime`]): the spray of this attempt starts with them
    /// counted against its budget.
    primed_quic: u32,
}

/// The punch of the current attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Punch {
    /// The spray (QUIC server side): it keeps the attempt open until its
    /// window ends, even once its datagram budget is spent.
    spray: Option<Spray>,
    /// Hole-punch dials made.
    dials: usize,
    /// A dial found its address pair taken: the peer's connection is
    /// arriving through our listener.
    crossing: bool,
    /// What the peer's Connect held, for the reason of a punch with
    /// nothing to dial.
    received: usize,
    dropped: RejectionCounts,
    /// Every address this attempt dialled, once per dial: the targets of
    /// the QUIC client fallback and its per-IP budget.
    dialled: Vec<Candidate>,
    /// The usable addresses of the peer's Connect: the IPs a
    /// peer-reflexive candidate may come from.
    advertised: Vec<Candidate>,
    /// Peer-reflexive dials made, for [`MAX_PEER_REFLEXIVE_DIALS`].
    reflexive: usize,
}

/// One DCUtR upgrade of one relayed connection, on one side.
///
/// A pure state machine in the style of quinn-proto and str0m: it never
/// reads a clock, touches a socket or draws OS randomness. The driver
/// feeds it timestamped inputs and carries out the [`Output`]s.
///
/// # Methods by group
/// * **Construction:** [`Upgrade::builder`], then
///   [`UpgradeBuilder::start`]: exactly the spec, unless
///   [`UpgradeBuilder::dcutr_session`] adds the dcutr-rs session.
/// * **Inputs (`handle_*`):** [`handle_stream_opened`],
///   [`handle_stream_data`], [`handle_stream_closed`],
///   [`handle_dial_succeeded`], [`handle_dial_failed`], [`handle_inbound`],
///   [`handle_direct_closed`], [`handle_relay_closed`],
///   [`handle_remote_public_addrs`], [`handle_peer_reflexive`],
///   [`handle_timeout`]; also
///   [`observe_local`] for a newly observed address of ours.
/// * **Session extension inputs** (pinned TLS on a shared stream, see
///   `session.rs`; a spec upgrade never needs them):
///   [`handle_direct_authenticated`], [`handle_direct_handshake_failed`],
///   [`handle_direct_data`] (the select byte); getters
///   [`peer_fingerprint`] and [`direct_role`].
/// * **Outputs (`poll_*`):** [`poll_output`] and [`poll_timeout`].
/// * **Getters:** [`outcome`], [`timeline`], [`is_finished`],
///   [`stream_bytes_wanted`], [`direct_bytes_wanted`], [`side`].
///
/// # Driving it
/// 1. After **every** `handle_*` call (and after `start`), drain
///    [`poll_output`] until it returns `None`, carrying out each command in
///    order (a `WriteDirect` before the `Upgraded` event that follows it
///    matters).
/// 2. Then ask [`poll_timeout`] and arrange to call [`handle_timeout`] at
///    that instant (or earlier: early calls are harmless).
/// 3. Pass `now` from one monotonic clock. Time must not go backwards; if
///    it does, the core treats it as the latest time it has seen.
/// 4. On a shared stream, read at most [`stream_bytes_wanted`] bytes before
///    each `handle_stream_data`, so that bytes meant for the application
///    are never consumed; likewise [`direct_bytes_wanted`] on direct
///    connections.
/// 5. Stop when [`is_finished`] is true. The winning connection (if any)
///    is named in the outcome and now belongs to the application.
///
/// [`handle_stream_opened`]: Upgrade::handle_stream_opened
/// [`handle_stream_data`]: Upgrade::handle_stream_data
/// [`handle_stream_closed`]: Upgrade::handle_stream_closed
/// [`handle_dial_succeeded`]: Upgrade::handle_dial_succeeded
/// [`handle_dial_failed`]: Upgrade::handle_dial_failed
/// [`handle_inbound`]: Upgrade::handle_inbound
/// [`handle_direct_data`]: Upgrade::handle_direct_data
/// [`handle_direct_closed`]: Upgrade::handle_direct_closed
/// [`handle_timeout`]: Upgrade::handle_timeout
/// [`handle_peer_reflexive`]: Upgrade::handle_peer_reflexive
/// [`handle_direct_authenticated`]: Upgrade::handle_direct_authenticated
/// [`handle_direct_handshake_failed`]: Upgrade::handle_direct_handshake_failed
/// [`peer_fingerprint`]: Upgrade::peer_fingerprint
/// [`direct_role`]: Upgrade::direct_role
/// [`observe_local`]: Upgrade::observe_local
/// [`handle_relay_closed`]: Upgrade::handle_relay_closed
/// [`handle_remote_public_addrs`]: Upgrade::handle_remote_public_addrs
/// [`poll_output`]: Upgrade::poll_output
/// [`poll_timeout`]: Upgrade::poll_timeout
/// [`outcome`]: Upgrade::outcome
/// [`timeline`]: Upgrade::timeline
/// [`is_finished`]: Upgrade::is_finished
/// [`stream_bytes_wanted`]: Upgrade::stream_bytes_wanted
/// [`direct_bytes_wanted`]: Upgrade::direct_bytes_wanted
/// [`side`]: Upgrade::side
pub struct Upgrade {
    pub(crate) side: Side,
    pub(crate) config: Config,
    rng: ChaCha8Rng,
    pub(crate) now: Instant,
    pub(crate) state: State,
    /// The current (or last) attempt number; 0 before the first.
    pub(crate) attempt: u8,
    /// Attempts allowed: [`Config::max_attempts`], lowered to the peer's
    /// limit when its `Hello` carries one.
    pub(crate) max_attempts: u8,
    pub(crate) failures: Vec<AttemptFailure>,
    pub(crate) decoder: FrameDecoder,
    pub(crate) stream_open: bool,
    pub(crate) relay_closed: bool,
    /// The dcutr-rs extension (one shared stream, and the session
    /// handshake under pinned TLS): `None` runs exactly the spec. See
    /// [`crate::session`].
    pub(crate) extension: Option<Extension>,
    observed: ObservedAddrs,
    predictor: Box<dyn AddressPredictor>,
    /// Our NAT's behaviour, when the caller knows it: sent in Connect.
    /// Boxed: most upgrades have none, and the evidence is large.
    own_nat: Option<Box<NatBehaviour>>,
    /// The behaviour the peer's last Connect declared.
    peer_nat: Option<Box<NatBehaviour>>,
    pub(crate) unilateral_targets: Vec<Candidate>,
    /// Responder: whether any Connect arrived yet (decides the role of
    /// inbound connections).
    pub(crate) seen_connect: bool,
    pub(crate) directs: Directs,
    /// Dials made in this upgrade, for [`Config::max_dials_per_upgrade`].
    pub(crate) dials_made: usize,
    /// Every address dialled in this upgrade, once each, for
    /// [`Upgrade::is_peer_address`]; at most `dials_made` entries. Kept
    /// apart from the timeline, which the core only writes.
    pub(crate) dialled: Vec<Candidate>,
    /// A unilateral dial is running and its end is not recorded yet.
    pub(crate) unilateral_running: bool,
    pub(crate) timers: Timers,
    pub(crate) outputs: VecDeque<Output>,
    pub(crate) timeline: Timeline,
    /// The birthday punch of the current attempt, when both behaviours
    /// call for one ([`crate::nat::Strategy::Birthday`]). Boxed: most
    /// upgrades never run one.
    birthday: Option<Box<BirthdayRun>>,
    /// The carrier opens sockets for the birthday punch
    /// ([`Capabilities::fresh_sockets`]; true when it did not say).
    fresh_sockets: bool,
}

/// The token both sides put in their birthday datagrams for attempt `n`
/// is this value XOR `n`: it only tells this attempt's datagrams from
/// stray ones (it authenticates nothing; the pinned TLS handshake of the
/// direct connection does), so a fixed value both sides know suffices.
pub const BIRTHDAY_TOKEN: u64 = 0x6463_7574_722d_6270;

/// A birthday punch run by an [`Upgrade`] for one attempt.
#[derive(Debug)]
struct BirthdayRun {
    machine: crate::birthday::Birthday,
    /// The outcome was reported (and acted on) already.
    reported: bool,
    /// Hard side: fresh sockets the carrier holds open: all, one, or none.
    fresh: FreshOpen,
    /// Hard side: the QUIC dial from the socket that met.
    dial: Option<DirectId>,
    /// Why it failed, once it did: the attempt's reason if nothing else wins.
    missed: Option<AttemptFailure>,
}

/// Which fresh sockets of a birthday punch are open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FreshOpen {
    None,
    All,
    Only(u16),
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("side", &self.side)
            .field("state", &self.state)
            .field("attempt", &self.attempt)
            .field("outcome", &self.outcome())
            .finish_non_exhaustive()
    }
}

/// Sets up an [`Upgrade`]; see [`Upgrade::builder`].
#[must_use = "an upgrade does nothing until `start` is called"]
pub struct UpgradeBuilder {
    side: Side,
    config: Config,
    seed: [u8; 32],
    observed: Vec<Candidate>,
    remote_public: Vec<Candidate>,
    /// The caller's; `None`: derived from our NAT ([`own_nat_predictor`]).
    predictor: Option<Box<dyn AddressPredictor>>,
    nat: Option<NatBehaviour>,
    session: Option<Requested>,
    /// Two different sessions were asked for; `start` refuses the build.
    session_conflict: bool,
    capabilities: Option<Capabilities>,
}

impl UpgradeBuilder {
    /// What the carrier can carry out: [`UpgradeBuilder::start`] then
    /// refuses a config or a session it cannot serve
    /// ([`Config::validate_for`], [`ConfigError::SessionUnsupported`]),
    /// with a [`ConfigError`] that names the fix. Default: no check beyond
    /// [`Config::validate`].
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = Some(capabilities);
        self
    }

    /// Runs the **dcutr-rs session** on top of the spec, for two dcutr-rs
    /// peers on one relayed byte stream (a relay that splices two TCP
    /// connections); `dcutr-driver` makes this call itself. Without it
    /// the upgrade is exactly libp2p's DCUtR, the only thing a stock peer
    /// can meet.
    ///
    /// `fingerprint` is the SHA-256 of the DER certificate we present on
    /// direct connections: make a fresh key and certificate per upgrade.
    /// The session then
    /// * carries every attempt on the one stream, one after the other,
    ///   and never reads past its own messages
    ///   ([`Upgrade::stream_bytes_wanted`]), so the stream stays usable
    ///   for the application after a failure; a protocol error or step
    ///   timeout ends the whole upgrade, since the framing can no longer
    ///   be trusted;
    /// * opens it with a versioned `Hello` carrying our side, our attempt
    ///   limit and `fingerprint` (both sides keep the smaller limit; two
    ///   initiators or two responders fail at once with
    ///   [`ProtocolError::SameSide`]);
    /// * keeps a direct connection only if the carrier's mutual TLS 1.3
    ///   handshake on it proves the certificate the peer's `Hello` pinned
    ///   ([`Upgrade::handle_direct_authenticated`],
    ///   [`Upgrade::handle_direct_handshake_failed`]; the TLS client is
    ///   the side whose [`Upgrade::direct_role`] is the client), and the
    ///   server then marks the one it keeps with a select byte inside TLS
    ///   ([`Upgrade::handle_direct_data`]).
    ///
    /// This binds the direct connection to whoever wrote the `Hello` on
    /// the relayed stream: a stranger at an advertised address can neither
    /// read nor take over the connection. The relay itself could swap the
    /// fingerprints; authenticate the relayed stream (the CLI pairs with a
    /// PAKE) when the relay is not trusted. Asking for another session
    /// on the same builder ([`UpgradeBuilder::dcutr_session_unpinned`],
    /// or another fingerprint) makes [`UpgradeBuilder::start`] fail with
    /// [`ConfigError::SessionConflict`].
    pub fn dcutr_session(self, fingerprint: [u8; FINGERPRINT_LEN]) -> Self {
        self.request_session(Requested::Pinned(fingerprint))
    }

    /// The dcutr-rs session's one shared relayed stream
    /// ([`UpgradeBuilder::dcutr_session`]) without its `Hello` and pinned
    /// TLS: the caller's own handshake on the direct connection
    /// authenticates the peer (`dcutr-driver`'s
    /// `Options::caller_authenticates`). The first direct connection the
    /// caller reports as established wins, and dials still in flight then
    /// are left to the caller. Both sides must configure the same
    /// [`Config::max_attempts`]. Together with
    /// [`UpgradeBuilder::dcutr_session`] on the same builder,
    /// [`UpgradeBuilder::start`] fails with [`ConfigError::SessionConflict`].
    pub fn dcutr_session_unpinned(self) -> Self {
        self.request_session(Requested::Unpinned)
    }

    fn request_session(mut self, requested: Requested) -> Self {
        // Asking twice for the same session is harmless; asking for two
        // different ones is a mistake that no choice of ours would fix.
        if self.session.is_some_and(|earlier| earlier != requested) {
            self.session_conflict = true;
        }
        self.session = Some(requested);
        self
    }

    /// Our observed addresses, **most recently observed first** (what
    /// identify or a rendezvous server saw). Later calls to
    /// [`Upgrade::observe_local`] refresh the list between attempts.
    pub fn local_addrs(mut self, addrs: impl IntoIterator<Item = Candidate>) -> Self {
        self.observed.extend(addrs);
        self
    }

    /// The peer's public addresses, known from elsewhere (identify, a
    /// rendezvous server). On the initiator, with
    /// [`Config::unilateral`], they are dialled directly before any hole
    /// punch. Filtered like any remote address.
    pub fn remote_public_addrs(mut self, addrs: impl IntoIterator<Item = Candidate>) -> Self {
        self.remote_public.extend(addrs);
        self
    }

    /// Our NAT's behaviour (from STUN or identify observations, see
    /// [`crate::nat`]). It travels in our Connect as a dcutr-rs extension
    /// that stock peers skip; when the peer declares one too and the pair
    /// cannot punch ([`Strategy::Impossible`](crate::nat::Strategy)), both
    /// sides fail at once with [`AttemptFailure::NatsCannotMeet`] instead of
    /// three timed-out attempts. Default: not known, and not sent.
    pub fn nat_behaviour(mut self, behaviour: NatBehaviour) -> Self {
        self.nat = Some(behaviour);
        self
    }

    /// Adds predicted addresses to the ones we send. Default: none, or,
    /// when [`UpgradeBuilder::nat_behaviour`] says our NAT allocates
    /// sequentially, the next few mappings after the last one its
    /// observers saw ([`crate::nat::OWN_NAT_PREDICTED_PORTS`]).
    pub fn predictor(mut self, predictor: Box<dyn AddressPredictor>) -> Self {
        self.predictor = Some(predictor);
        self
    }

    /// Validates the config and starts the upgrade at `now`. Drain
    /// [`Upgrade::poll_output`] next.
    ///
    /// # Errors
    /// [`ConfigError`] when the config is out of bounds, or asks for what
    /// the carrier cannot do ([`UpgradeBuilder::capabilities`]):
    /// [`ConfigError::SessionUnsupported`] for a session on a carrier of
    /// the spec only, [`ConfigError::SessionConflict`] when two different
    /// sessions were asked for.
    pub fn start(self, now: Instant) -> Result<Upgrade, ConfigError> {
        if self.session_conflict {
            return Err(ConfigError::SessionConflict);
        }
        match self.capabilities {
            Some(caps) => {
                self.config.validate_for(caps)?;
                if self.session.is_some() && !caps.session {
                    return Err(ConfigError::SessionUnsupported);
                }
            }
            None => self.config.validate()?,
        }
        let rng = ChaCha8Rng::from_seed(self.seed);
        let mut observed = ObservedAddrs::new(self.config.max_local_addrs);
        for c in self.observed.iter().rev() {
            observed.observe(*c);
        }
        let max_attempts = self.config.max_attempts;
        let extension = self
            .session
            .map(|requested| Extension::new(requested, self.side, max_attempts));
        let shared = extension.is_some();
        let mut up = Upgrade {
            side: self.side,
            decoder: FrameDecoder::new(self.config.max_message_size),
            config: self.config,
            rng,
            now,
            state: State::AwaitHello,
            attempt: 0,
            max_attempts,
            failures: Vec::new(),
            stream_open: shared,
            relay_closed: false,
            extension,
            observed,
            predictor: self
                .predictor
                .unwrap_or_else(|| own_nat_predictor(self.nat.as_ref())),
            own_nat: self.nat.map(Box::new),
            peer_nat: None,
            unilateral_targets: Vec::new(),
            seen_connect: false,
            directs: Directs::default(),
            dials_made: 0,
            dialled: Vec::new(),
            unilateral_running: false,
            timers: Timers::default(),
            outputs: VecDeque::new(),
            timeline: Timeline::empty(now),
            birthday: None,
            fresh_sockets: self.capabilities.is_none_or(|c| c.fresh_sockets),
        };
        up.add_unilateral_targets(self.remote_public);
        tracing::debug!(side = %up.side, "dcutr upgrade started");
        if let Some(handshake) = up.handshake() {
            up.outputs.push_back(Output::WriteStream(handshake.hello()));
        }
        let dials_first =
            up.side == Side::Initiator && up.config.unilateral && !up.unilateral_targets.is_empty();
        if up.checks_identity() && dials_first {
            // The unilateral dial makes us the client, and the roles of
            // direct connections must be settled before any forms: wait
            // for the peer's Hello first.
            up.timers
                .set(TimerKind::StepTimeout, now + up.config.step_timeout);
        } else {
            up.begin();
        }
        Ok(up)
    }
}

/// The predictor for our own NAT's next mappings, when it is sequential.
fn own_nat_predictor(nat: Option<&NatBehaviour>) -> Box<dyn AddressPredictor> {
    match nat.and_then(crate::nat::OwnNatPredictor::for_behaviour) {
        Some(p) => {
            tracing::debug!(predictor = ?p, "our NAT is sequential: predicting its next mappings");
            Box::new(p)
        }
        None => Box::new(NoPrediction),
    }
}

impl Upgrade {
    /// Prepares an upgrade for `side`.
    ///
    /// `seed` drives every random choice (spray payloads and pauses): the
    /// same seed and inputs give the same outputs, byte for byte. In
    /// production pass 32 bytes from the OS's random source.
    pub fn builder(side: Side, config: Config, seed: [u8; 32]) -> UpgradeBuilder {
        UpgradeBuilder {
            side,
            config,
            seed,
            observed: Vec::new(),
            remote_public: Vec::new(),
            predictor: None,
            nat: None,
            session: None,
            session_conflict: false,
            capabilities: None,
        }
    }

    // ----- getters -------------------------------------------------------

    /// Which side we are.
    #[must_use]
    pub fn side(&self) -> Side {
        self.side
    }

    /// The outcome, once decided.
    #[must_use]
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.state {
            State::Done(outcome) => Some(outcome),
            _ => None,
        }
    }

    /// What happened when.
    #[must_use]
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// When the relayed connection is to be closed: the end of the grace
    /// period after an upgrade, once decided. A driver that hands the
    /// relayed stream back before then passes this on instead of waiting
    /// for [`Output::CloseRelay`].
    #[must_use]
    pub fn relay_close_at(&self) -> Option<Instant> {
        self.timers.deadline(TimerKind::GracePeriod)
    }

    /// The config in use.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// True once the outcome is decided, every output drained and no timer
    /// (such as the grace period) is left.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.outcome().is_some()
            && self.outputs.is_empty()
            && self.timers.earliest().is_none()
            && self.directs.is_empty()
    }

    /// How many bytes of the relayed stream the core will take now; 0 when
    /// it expects none. Reading no more than this keeps the application's
    /// bytes on a shared stream untouched.
    #[must_use]
    pub fn stream_bytes_wanted(&self) -> usize {
        match self.expecting() {
            Expect::Nothing => 0,
            Expect::Hello | Expect::Message => self.decoder.bytes_wanted(),
        }
    }

    /// How many bytes of direct connection `id` the core will take now
    /// (the rest of the identity check); 0 when none.
    #[must_use]
    pub fn direct_bytes_wanted(&self, id: DirectId) -> usize {
        self.directs.get(id).map_or(0, direct::Direct::bytes_wanted)
    }

    /// Heap bytes held by this upgrade's own buffers, roughly: for the
    /// memory benchmark (feature `internals`).
    #[cfg(feature = "internals")]
    #[must_use]
    pub fn heap_estimate(&self) -> usize {
        use std::mem::size_of;
        self.decoder.allocated()
            + self.directs.heap_bytes()
            + self.observed.heap_bytes()
            + self.failures.capacity() * size_of::<AttemptFailure>()
            + self.peer_addrs().map_or(0, |p| p.accepted.capacity()) * size_of::<Candidate>()
            + self
                .punching()
                .map_or(0, |p| p.advertised.capacity() + p.dialled.capacity())
                * size_of::<Candidate>()
            + self.unilateral_targets.capacity() * size_of::<Candidate>()
            + self.dialled.capacity() * size_of::<Candidate>()
            + self.outputs.capacity() * size_of::<Output>()
            + self.timeline.dials.capacity() * size_of::<DialRecord>()
            + self.timeline.attempts.capacity() * size_of::<AttemptRecord>()
    }

    // ----- outputs -------------------------------------------------------

    /// The next command, if any. Drain after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        let next = self.outputs.pop_front();
        // A punch queues a burst of dials; do not keep that much room for
        // the rest of the upgrade. Keep enough for a whole spray round,
        // so spray ticks never allocate.
        let spray_round = self.spray().map_or(0, |s| s.targets.len());
        let retained = OUTPUT_QUEUE_RETAINED.max(spray_round + 2);
        if next.is_none() && self.outputs.capacity() > retained {
            self.outputs.shrink_to(retained);
        }
        next
    }

    /// When to call [`Upgrade::handle_timeout`] next, and for which timer.
    /// Never earlier than the latest `now` passed in.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timeout> {
        let direct = self.directs.earliest_deadline().map(|at| Timeout {
            at,
            kind: TimerKind::DirectDeadline,
        });
        let earliest = match (self.timers.earliest(), direct) {
            (Some(a), Some(b)) => Some(if b.at < a.at { b } else { a }),
            (a, b) => a.or(b),
        };
        earliest.map(|t| Timeout {
            at: t.at.max(self.now),
            kind: t.kind,
        })
    }

    // ----- inputs --------------------------------------------------------

    /// Records a newly observed address of ours; it is sent from the next
    /// Connect on.
    pub fn observe_local(&mut self, candidate: Candidate) {
        self.observed.observe(candidate);
    }

    /// The peer's public addresses, learnt at any time (identify, a
    /// rendezvous server): filtered like any remote address, and dialled
    /// at once by the initiator, alongside the hole punch, when
    /// [`Config::unilateral`] is on. The first direct connection wins.
    ///
    /// With the pinned-TLS identity check the roles of direct connections
    /// must be settled first, so addresses known before the start are
    /// dialled before the first attempt and later ones are only kept.
    pub fn handle_remote_public_addrs(
        &mut self,
        now: Instant,
        addrs: impl IntoIterator<Item = Candidate>,
    ) {
        self.advance(now);
        let fresh = self.add_unilateral_targets(addrs);
        let exchange_running = matches!(
            self.state,
            State::Initiator(Initiating::AwaitStream)
                | State::Initiator(Initiating::AwaitConnect { .. })
                | State::Initiator(Initiating::SyncDelay { .. })
                | State::Punching(_)
        );
        if self.unilateral_alongside() && exchange_running {
            // What the punch dials already needs no second dial.
            let attempt = self.attempt;
            let punching: Vec<Candidate> = self
                .directs
                .iter()
                .filter(|d| d.attempt == attempt && d.attempt != 0)
                .map(|d| d.to)
                .collect();
            let fresh = fresh
                .into_iter()
                .filter(|c| !punching.contains(c))
                .collect();
            self.dial_unilateral(fresh);
        }
    }

    /// Whether the unilateral dial runs alongside the exchange: in the
    /// spec's mode (a stream per attempt, the caller's own handshake). On
    /// a shared stream, and with an identity check, it comes first, as the
    /// roles of the direct connection must be settled before it.
    pub(crate) fn unilateral_alongside(&self) -> bool {
        self.extension.is_none()
    }

    /// Adds the usable, new ones of `addrs` to the unilateral targets,
    /// within [`Config::max_remote_addrs`]; returns those added.
    fn add_unilateral_targets(
        &mut self,
        addrs: impl IntoIterator<Item = Candidate>,
    ) -> Vec<Candidate> {
        let mut fresh = Vec::new();
        for c in addrs {
            if self.unilateral_targets.len() >= self.config.max_remote_addrs {
                tracing::debug!("peer's public addresses over the limit; ignoring the rest");
                break;
            }
            let usable = self.config.address_policy.check(&c).is_ok()
                && self.config.dialable.allows(&c)
                && !self.unilateral_targets.contains(&c);
            if usable {
                self.unilateral_targets.push(c);
                fresh.push(c);
            }
        }
        fresh
    }

    /// The relayed stream for the current attempt is open: on the
    /// initiator, the one [`Output::OpenStream`] asked for; on the
    /// responder, a new inbound `/libp2p/dcutr` stream. Only with
    /// the spec's stream per attempt; the shared stream of
    /// [`UpgradeBuilder::dcutr_session`] is open from the start. A stream that is not wanted is answered with
    /// [`Output::ResetStream`].
    pub fn handle_stream_opened(&mut self, now: Instant) {
        self.advance(now);
        if self.on_shared_stream() {
            tracing::trace!("stream opened on a shared stream: ignored");
            return;
        }
        if self.outcome().is_some() {
            self.outputs.push_back(Output::ResetStream);
            return;
        }
        self.decoder = FrameDecoder::new(self.config.max_message_size);
        match self.side {
            Side::Initiator => self.initiator_stream_opened(),
            Side::Responder => self.responder_stream_opened(),
        }
    }

    /// The relayed stream ended: the peer finished or reset it, or (on the
    /// initiator) it could not be opened. Ending the stream is how either
    /// side stops the protocol; there is no Close message.
    pub fn handle_stream_closed(&mut self, now: Instant) {
        self.advance(now);
        let was_open = self.stream_open;
        self.stream_open = false;
        self.decoder = FrameDecoder::new(self.config.max_message_size);
        if self.outcome().is_some() {
            return;
        }
        if self.on_shared_stream() {
            self.relay_gone();
            return;
        }
        match self.side {
            Side::Initiator => self.initiator_stream_closed(),
            Side::Responder => self.responder_stream_closed(was_open),
        }
    }

    /// The relayed connection itself is gone (not just one stream): no
    /// further attempt can happen. A punch in flight may still win; the
    /// upgrade fails once it is over. On a shared stream this is the same
    /// as [`Upgrade::handle_stream_closed`].
    pub fn handle_relay_closed(&mut self, now: Instant) {
        self.advance(now);
        if self.outcome().is_some() {
            return;
        }
        self.relay_gone();
    }

    /// No further exchange can happen on the relay.
    fn relay_gone(&mut self) {
        self.relay_closed = true;
        self.stream_open = false;
        let step = self.step();
        match self.state {
            State::AwaitHello
            | State::Initiator(Initiating::AwaitStream)
            | State::Initiator(Initiating::AwaitConnect { .. })
            | State::Responder(Responding::AwaitSync { .. }) => {
                self.final_failure(Failure::RelayClosed { step })
            }
            State::Responder(Responding::AwaitConnect) if self.attempt == 0 => {
                self.final_failure(Failure::RelayClosed { step });
            }
            State::Responder(Responding::AwaitConnect) => {
                let attempts = self.failures.clone();
                self.final_failure(Failure::PeerGaveUp { attempts });
            }
            // The unilateral dial or the punch in flight may still win;
            // when it is over, no further attempt follows.
            _ => {}
        }
    }

    /// Bytes arrived on the relayed stream.
    pub fn handle_stream_data(&mut self, now: Instant, data: &[u8]) {
        self.advance(now);
        let mut input = data;
        while !input.is_empty() {
            let expect = self.expecting();
            if expect == Expect::Nothing {
                if self.outcome().is_none() {
                    self.protocol_error(ProtocolError::TrailingBytes { len: input.len() });
                } else {
                    tracing::trace!(
                        len = input.len(),
                        "ignoring relayed bytes after the outcome"
                    );
                }
                return;
            }
            let frame = match self.decoder.decode(&mut input) {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(err) => {
                    self.protocol_error(err.into());
                    return;
                }
            };
            let handled = match expect {
                Expect::Hello => self.on_hello(&frame),
                _ => codec::decode_message(&frame)
                    .map_err(ProtocolError::from)
                    .inspect(|_| {
                        if let Some(nat) = codec::decode_connect_nat(&frame) {
                            self.peer_nat = Some(Box::new(nat.to_behaviour()));
                        }
                    })
                    .and_then(|msg| match self.side {
                        Side::Initiator => self.initiator_on_message(msg),
                        Side::Responder => self.responder_on_message(msg),
                    }),
            };
            if let Err(err) = handled {
                self.protocol_error(err);
                return;
            }
        }
    }

    /// Our dial `id` connected.
    pub fn handle_dial_succeeded(&mut self, now: Instant, id: DirectId) {
        self.advance(now);
        match self.directs.get(id) {
            Some(d) if d.is_dialing() => {
                self.timeline.end_dial(id, now, DialResult::Connected);
                self.connected(id);
            }
            _ => tracing::trace!(%id, "result for a dial that is no longer wanted"),
        }
    }

    /// Our dial `id` failed.
    pub fn handle_dial_failed(&mut self, now: Instant, id: DirectId, error: DialError) {
        self.advance(now);
        let Some(d) = self.directs.remove(id) else {
            tracing::trace!(%id, "failure of a dial that is no longer wanted");
            return;
        };
        tracing::debug!(%id, to = %d.to, %error, "direct dial failed");
        if let State::Punching(punch) = &mut self.state
            && error == DialError::AddrInUse
            && d.attempt == self.attempt
        {
            punch.crossing = true;
        }
        self.timeline.end_dial(id, now, DialResult::Failed(error));
        self.outputs.push_back(Output::Event(Event::DialFailed {
            id,
            to: d.to,
            error,
        }));
        self.check_progress();
    }

    /// A direct connection arrived at one of our listening sockets (the
    /// TCP listener, or the QUIC endpoint) from `from`.
    ///
    /// # Errors
    /// [`InboundRejected`] when the connection must be closed right away.
    pub fn handle_inbound(
        &mut self,
        now: Instant,
        from: Candidate,
    ) -> Result<DirectId, InboundRejected> {
        self.advance(now);
        if self.outcome().is_some() || matches!(self.state, State::Draining { .. }) {
            self.timeline.inbound_rejected += 1;
            return Err(InboundRejected::Finished);
        }
        if self.checks_identity()
            && self.directs.pending_inbound() >= self.config.max_pending_inbound
        {
            self.timeline.inbound_rejected += 1;
            return Err(InboundRejected::TooManyPending);
        }
        let role = match self.side {
            Side::Initiator => Role::Server,
            // Sync may still be on its way when the initiator's punch
            // arrives (the initiator waits only rtt/2), so from the first
            // Connect on an inbound connection is the punch. In the spec's
            // mode a unilateral dial arriving then is labelled so too;
            // libp2p settles its roles by who dialled.
            Side::Responder if self.seen_connect => Role::Client,
            // Before any Connect the only direct connection the responder
            // can expect is the initiator's unilateral dial, where the
            // initiator is the client.
            Side::Responder => Role::Server,
        };
        let id = self.directs.insert(
            from,
            role,
            Origin::Inbound,
            self.attempt,
            DirectState::Dialing,
            now,
        );
        self.timeline.inbound_accepted += 1;
        tracing::debug!(%id, %from, %role, "inbound direct connection");
        self.connected(id);
        Ok(id)
    }

    /// A datagram that claims to be the peer's punch (a dcutr-rs spray
    /// datagram, [`SprayPayload::is_spray`]) arrived on our punch socket
    /// from `from`, an address the peer may never have named: its
    /// symmetric NAT gave the punch a fresh port. While an attempt punches
    /// this dials `from` as a **peer-reflexive candidate**, with the
    /// normal [`Output::Dial`] (and an [`Event::PeerReflexive`]), so every
    /// check of a dial applies; the timeline marks the dial
    /// ([`DialRecord::is_peer_reflexive`](crate::record::DialRecord::is_peer_reflexive)).
    ///
    /// Anyone can send such a datagram, so `from` is dialled only if its
    /// IP is one the peer's Connect named for that transport, it was not
    /// dialled before, the address policy allows it, and the attempt has
    /// peer-reflexive dials left ([`MAX_PEER_REFLEXIVE_DIALS`]) as well as
    /// room in the per-IP and per-upgrade dial budgets.
    ///
    /// # Errors
    /// [`PeerReflexiveRefused`] when `from` is not dialled; counted in
    /// [`Timeline::peer_reflexive_refused`](crate::record::Timeline::peer_reflexive_refused).
    pub fn handle_peer_reflexive(
        &mut self,
        now: Instant,
        from: Candidate,
    ) -> Result<DirectId, PeerReflexiveRefused> {
        self.advance(now);
        let result = self.peer_reflexive(from);
        match result {
            Ok(id) => tracing::debug!(%id, %from, "dialling a peer-reflexive candidate"),
            Err(reason) => {
                self.timeline.peer_reflexive_refused =
                    self.timeline.peer_reflexive_refused.saturating_add(1);
                tracing::debug!(%from, %reason, "peer-reflexive candidate refused");
            }
        }
        result
    }

    fn peer_reflexive(&mut self, from: Candidate) -> Result<DirectId, PeerReflexiveRefused> {
        let State::Punching(punch) = &self.state else {
            return Err(PeerReflexiveRefused::NotPunching);
        };
        let window_end = self
            .timers
            .deadline(TimerKind::PunchWindow)
            .ok_or(PeerReflexiveRefused::NotPunching)?;
        let named_ip = punch
            .advertised
            .iter()
            .any(|c| c.transport == from.transport && c.addr.ip() == from.addr.ip());
        if !named_ip {
            return Err(PeerReflexiveRefused::NotPeerIp);
        }
        let sprayed = from.transport == Transport::Quic
            && punch
                .spray
                .as_ref()
                .is_some_and(|s| s.targets.contains(&from.addr));
        if self.dialled.contains(&from) || punch.advertised.contains(&from) || sprayed {
            return Err(PeerReflexiveRefused::AlreadyKnown);
        }
        let role = match (from.transport, self.side, self.config.quic_server_punch) {
            (Transport::Quic, Side::Initiator, QuicServerPunch::Spray) => {
                return Err(PeerReflexiveRefused::PeerDials);
            }
            (Transport::Quic, Side::Initiator, QuicServerPunch::DialAsClient) => Role::Client,
            (_, Side::Initiator, _) => Role::Server,
            (_, Side::Responder, _) => Role::Client,
        };
        self.config
            .address_policy
            .check(&from)
            .map_err(PeerReflexiveRefused::Policy)?;
        if !self.config.dialable.allows(&from) {
            return Err(PeerReflexiveRefused::Policy(AddrRejection::NotDialable));
        }
        let on_ip = punch
            .dialled
            .iter()
            .filter(|c| c.addr.ip() == from.addr.ip())
            .count();
        if punch.reflexive >= MAX_PEER_REFLEXIVE_DIALS
            || on_ip >= self.config.max_punches_per_ip
            || self.dials_made >= self.config.max_dials_per_upgrade
        {
            return Err(PeerReflexiveRefused::BudgetSpent);
        }
        let id = self.dial(from, role, DialPurpose::HolePunch, window_end);
        if let Some(record) = self.timeline.dial_mut(id) {
            record.peer_reflexive = true;
        }
        if let State::Punching(punch) = &mut self.state {
            punch.dials += 1;
            punch.dialled.push(from);
            punch.reflexive += 1;
        }
        self.outputs.push_back(Output::Event(Event::PeerReflexive {
            attempt: self.attempt,
            id,
            to: from,
        }));
        Ok(id)
    }

    /// Direct connection `id` closed (before it won, or we do not care).
    pub fn handle_direct_closed(&mut self, now: Instant, id: DirectId) {
        self.advance(now);
        if let Some(d) = self.directs.remove(id) {
            let error = DialError::Io(std::io::ErrorKind::UnexpectedEof);
            self.timeline.end_dial(id, now, DialResult::Failed(error));
            if d.origin == Origin::Inbound {
                self.timeline.inbound_rejected += 1;
            }
            self.check_progress();
        }
    }

    /// Call at (or after) the instant [`Upgrade::poll_timeout`] gave.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        while let Some(kind) = self.timers.take_expired(self.now) {
            self.on_timer(kind);
        }
        while let Some(id) = self.directs.first_expired(self.now) {
            self.direct_expired(id);
        }
    }

    // ----- shared machinery ----------------------------------------------

    pub(crate) fn advance(&mut self, now: Instant) {
        if now < self.now {
            tracing::debug!("time went backwards; using the latest time seen");
        }
        self.now = self.now.max(now);
    }

    pub(crate) fn expecting(&self) -> Expect {
        if !self.stream_open {
            return Expect::Nothing;
        }
        if self.hello_due() {
            return Expect::Hello;
        }
        match self.state {
            State::Initiator(Initiating::AwaitConnect { .. })
            | State::Responder(Responding::AwaitConnect)
            | State::Responder(Responding::AwaitSync { .. }) => Expect::Message,
            // On a shared stream the next attempt's Connect may arrive
            // while the responder still punches.
            State::Punching(_) if self.side == Side::Responder && self.on_shared_stream() => {
                Expect::Message
            }
            _ => Expect::Nothing,
        }
    }

    /// The step we are waiting at, for errors.
    pub(crate) fn step(&self) -> Step {
        if self.hello_due() {
            return Step::Hello;
        }
        match self.state {
            State::Initiator(Initiating::AwaitStream) => Step::OpenStream,
            State::Initiator(Initiating::AwaitConnect { .. }) => Step::Connect,
            State::Responder(Responding::AwaitConnect) if self.attempt == 0 => Step::Connect,
            State::Responder(Responding::AwaitConnect) => Step::NextAttempt,
            State::Responder(Responding::AwaitSync { .. }) => Step::Sync,
            _ => Step::Done,
        }
    }

    /// Starts the role's work once any `Hello` exchange is done.
    pub(crate) fn begin(&mut self) {
        match self.side {
            Side::Initiator => self.initiator_begin(),
            Side::Responder => self.responder_begin(),
        }
    }

    /// Opens a new attempt record.
    pub(crate) fn begin_attempt_record(&mut self) {
        self.attempt = self.attempt.saturating_add(1);
        // Most upgrades end in their first attempt (97.6 % of successes in
        // the field): grow one record at a time.
        self.timeline.attempts.reserve_exact(1);
        self.timeline
            .attempts
            .push(AttemptRecord::new(self.attempt, self.now));
        self.outputs.push_back(Output::Event(Event::AttemptStarted {
            attempt: self.attempt,
        }));
        tracing::debug!(side = %self.side, attempt = self.attempt, "attempt started");
    }

    /// The addresses our next Connect carries; when there are none, what
    /// we dropped of our observed ones, per reason.
    pub(crate) fn addrs_to_send(&mut self) -> Result<Vec<Candidate>, RejectionCounts> {
        let mut addrs = local_addrs_to_send(
            &self.observed,
            self.predictor.as_mut(),
            &self.config.address_policy,
            self.config.max_local_addrs,
        );
        // Advertising a transport we have no socket for only makes the peer
        // dial into nothing.
        addrs.retain(|c| self.config.dialable.allows(c));
        if !addrs.is_empty() {
            return Ok(addrs);
        }
        let mut dropped = RejectionCounts::default();
        for c in self.observed.as_slice() {
            match self.config.address_policy.check(c) {
                Err(reason) => dropped.add(reason),
                Ok(()) => dropped.add(AddrRejection::NotDialable),
            }
        }
        Err(dropped)
    }

    /// Sends our Connect with `addrs`.
    pub(crate) fn send_connect(&mut self, addrs: &[Candidate]) {
        let raw: Vec<Vec<u8>> = addrs.iter().map(|c| c.to_multiaddr().to_vec()).collect();
        let nat = self.own_nat.as_deref().map(codec::NatWire::from_behaviour);
        let (frame, sent) = codec::encode_connect_with(
            raw.iter().map(Vec::as_slice),
            nat,
            self.config.max_message_size,
        );
        if sent < raw.len() {
            tracing::debug!(
                sent,
                dropped = raw.len() - sent,
                "Connect cut to the size limit"
            );
        }
        self.outputs.push_back(Output::WriteStream(frame));
        if let Some(a) = self.timeline.attempt_mut() {
            a.connect_sent = Some(self.now);
        }
    }

    /// We have no address to advertise. Nothing is sent with nothing in
    /// it: the initiator gives up at once, since no retry changes what it
    /// knows of itself; the responder ends this attempt's stream and
    /// waits for the initiator's next one, which is the initiator's call.
    pub(crate) fn nothing_to_send(&mut self, dropped: RejectionCounts) {
        let reason = AttemptFailure::NothingToSend { dropped };
        tracing::debug!(side = %self.side, %reason, "no Connect sent");
        let per_attempt = !self.on_shared_stream();
        if self.side == Side::Responder && per_attempt {
            if self.stream_open {
                self.outputs.push_back(Output::ResetStream);
                self.stream_open = false;
            }
            self.fail_attempt(reason);
        } else {
            self.give_up(reason);
        }
    }

    /// Whether both NATs are known and cannot meet: then the reason.
    pub(crate) fn nats_cannot_meet(&self) -> Option<AttemptFailure> {
        let (ours, peer) = (self.own_nat.as_deref()?, self.peer_nat.as_deref()?);
        match crate::nat::Strategy::choose(ours, peer) {
            crate::nat::Strategy::Impossible { ours, peer } => {
                Some(AttemptFailure::NatsCannotMeet { ours, peer })
            }
            _ => None,
        }
    }

    /// Ends the upgrade after an attempt that no retry could improve.
    pub(crate) fn give_up(&mut self, reason: AttemptFailure) {
        if self.stream_open && !self.on_shared_stream() {
            self.outputs.push_back(Output::ResetStream);
            self.stream_open = false;
        }
        self.abandon_attempt(reason);
        let attempts = self.failures.clone();
        self.final_failure(Failure::GaveUp { attempts });
    }

    /// Parses and reports the peer's Connect: what the punch will aim at.
    pub(crate) fn take_remote_addrs(&mut self, raw: &[Vec<u8>]) -> PeerAddrs {
        let filtered = crate::addr::filter_remote(
            raw.iter().map(Vec::as_slice),
            &self.config.address_policy,
            &self.config.dialable,
            self.config.max_remote_addrs,
        );
        if let Some(a) = self.timeline.attempt_mut() {
            a.connect_received = Some(self.now);
            a.remote_addrs = filtered.accepted.len();
        }
        tracing::debug!(
            attempt = self.attempt,
            accepted = filtered.accepted.len(),
            rejected = filtered.rejected.total(),
            "peer's addresses"
        );
        let peer = PeerAddrs {
            accepted: filtered.accepted.clone(),
            received: raw.len(),
            dropped: filtered.rejected,
            primed_quic: 0,
        };
        self.outputs.push_back(Output::Event(Event::RemoteAddrs {
            attempt: self.attempt,
            accepted: filtered.accepted,
            rejected: filtered.rejected,
        }));
        peer
    }

    /// Primes our own NAT towards the peer's addresses of this attempt,
    /// as soon as its Connect arrived (both sides; before our punch and
    /// the peer's): one [`Output::Prime`] with [`Config::prime_ttl`] to
    /// each address the punch will aim at, so that our NAT holds the
    /// mapping before the peer's first punch packet reaches it (a NAT
    /// without an inbound firewall would otherwise create state for that
    /// inbound flow and remap ours). QUIC targets only (see the loop for
    /// why not TCP). Within the punch's own budget: the
    /// targets are exactly [`Upgrade::within_budget`]'s, one packet each,
    /// and the QUIC ones count against (and stop at) the spray's datagram
    /// budget, [`Config::max_spray_packets_per_attempt`]. Not
    /// when priming is off, nor before a birthday punch (it primes its
    /// own sockets), nor with no address to punch.
    pub(crate) fn prime(&mut self, peer: &mut PeerAddrs) {
        let Some(ttl) = self.config.prime_ttl else {
            return;
        };
        if peer.accepted.is_empty() || self.birthday_plan(&peer.accepted).is_some() {
            return;
        }
        let mut seen: Vec<Candidate> = Vec::new();
        for to in self.within_budget(peer.accepted.clone()) {
            // QUIC only. A TCP priming SYN must come from a socket of its
            // own (the punch's dial starts later, at full TTL), and NAT
            // routers track TCP sequence numbers: the conntrack entry that
            // SYN creates holds its initial sequence number, and the
            // SYN-ACK our listener sends for the peer's early SYN starts
            // from a later one (Linux's ISN clock runs at one per 64 ns; a
            // SYN announces at most 65,535 bytes of window, so after about
            // 4 ms it is out of window). Linux conntrack then marks it
            // INVALID and the router no longer translates the flow: in the
            // NAT lab, cone/cone-no-firewall over TCP fell from 5/10 and
            // 7/10 (RTT 0 and 100 ms) to 1/10 and 0/4 with TCP priming,
            // the router's conntrack left in SYN_SENT2. Priming from the dial
            // socket itself would keep the sequence number, but its first
            // full-TTL SYN would then leave only at the retransmission, a
            // second later.
            if seen.contains(&to) || to.transport != Transport::Quic {
                continue;
            }
            if to.transport == Transport::Quic {
                if peer.primed_quic >= self.config.max_spray_packets_per_attempt {
                    continue;
                }
                peer.primed_quic += 1;
            }
            seen.push(to);
            self.outputs.push_back(Output::Prime { to, ttl });
        }
        tracing::debug!(
            attempt = self.attempt,
            ttl,
            packets = seen.len(),
            "priming our NAT"
        );
    }

    /// The peer's addresses of the current attempt, between its Connect
    /// and the punch.
    fn peer_addrs(&self) -> Option<&PeerAddrs> {
        match &self.state {
            State::Responder(Responding::AwaitSync { peer })
            | State::Initiator(Initiating::SyncDelay { peer, .. }) => Some(peer),
            _ => None,
        }
    }

    /// Dials and sprays the peer's addresses of this attempt; `rtt` is the
    /// relayed round trip the initiator measured (the responder has none).
    pub(crate) fn punch(&mut self, peer: PeerAddrs, rtt: Option<Duration>) {
        let window_end = self.now + self.config.direct_timeout;
        self.timers.set(TimerKind::PunchWindow, window_end);
        if let Some(a) = self.timeline.attempt_mut() {
            a.punch = Some(self.now);
        }
        let role = match self.side {
            Side::Initiator => Role::Server,
            Side::Responder => Role::Client,
        };
        let mut dials = 0;
        let mut dialled: Vec<Candidate> = Vec::new();
        let mut quic_server_dials = false;
        let mut spray_targets: Vec<SocketAddr> = Vec::new();
        let remote = peer.accepted;
        let advertised = remote.clone();
        let birthday = self.birthday_plan(&advertised);
        // A unilateral dial still pending to one of these stays: in the
        // spec's mode the responder takes any connection at once, so the
        // dial may already be the connection it chose (libp2p cannot
        // abort a dial in flight either). The first one up wins.
        let targets = self.within_budget(remote);
        for to in targets {
            let dial_role = match (to.transport, self.side, self.config.quic_server_punch) {
                // The server side of QUIC does not dial: it sprays so that
                // the client's Initial finds its NAT mapping open.
                (Transport::Quic, Side::Initiator, QuicServerPunch::Spray) => {
                    if !spray_targets.contains(&to.addr) {
                        spray_targets.push(to.addr);
                    }
                    continue;
                }
                (Transport::Quic, Side::Initiator, QuicServerPunch::DialAsClient) => Role::Client,
                _ => role,
            };
            quic_server_dials |= to.transport == Transport::Quic && dial_role == Role::Server;
            self.dial(to, dial_role, DialPurpose::HolePunch, window_end);
            dialled.push(to);
            dials += 1;
        }
        if let (true, Some(rtt)) = (quic_server_dials, rtt) {
            let wait = rtt
                .saturating_mul(crate::initiator::QUIC_CLIENT_FALLBACK_RTTS)
                .saturating_add(crate::initiator::QUIC_CLIENT_FALLBACK);
            self.timers
                .set(TimerKind::QuicClientFallback, self.now + wait);
        }
        let spray_count = spray_targets.len();
        tracing::debug!(
            attempt = self.attempt,
            dials,
            spray_targets = spray_count,
            "punch"
        );
        self.outputs.push_back(Output::Event(Event::Punch {
            attempt: self.attempt,
            dials,
            spray_targets: spray_count,
        }));
        let spray = (!spray_targets.is_empty()).then_some(Spray {
            targets: spray_targets,
            sent: peer.primed_quic,
        });
        self.state = State::Punching(Punch {
            spray,
            dials,
            crossing: false,
            received: peer.received,
            dropped: peer.dropped,
            dialled,
            advertised,
            reflexive: 0,
        });
        if let Some((hard_side, peer)) = birthday {
            self.start_birthday(hard_side, peer);
        }
        self.spray_round();
        self.check_progress();
    }

    pub(crate) fn dial(
        &mut self,
        to: Candidate,
        role: Role,
        purpose: DialPurpose,
        deadline: Instant,
    ) -> DirectId {
        self.dial_from(to, role, purpose, deadline, None)
    }

    /// [`Upgrade::dial`], from fresh socket `fresh` of the birthday punch
    /// when it is `Some`.
    fn dial_from(
        &mut self,
        to: Candidate,
        role: Role,
        purpose: DialPurpose,
        deadline: Instant,
        fresh: Option<u16>,
    ) -> DirectId {
        let id = self.register_dial(to, role, purpose, deadline);
        let attempt = match purpose {
            DialPurpose::Unilateral => 0,
            DialPurpose::HolePunch => self.attempt,
        };
        let dial = Dial {
            id,
            to,
            role,
            purpose,
            attempt,
        };
        self.outputs.push_back(match fresh {
            None => Output::Dial(dial),
            Some(socket) => Output::DialFresh { socket, dial },
        });
        id
    }

    /// Records a dial to `to` (budget count, direct entry, timeline)
    /// without asking the carrier for it.
    fn register_dial(
        &mut self,
        to: Candidate,
        role: Role,
        purpose: DialPurpose,
        deadline: Instant,
    ) -> DirectId {
        let attempt = match purpose {
            DialPurpose::Unilateral => 0,
            DialPurpose::HolePunch => self.attempt,
        };
        self.dials_made += 1;
        if !self.dialled.contains(&to) {
            self.dialled.push(to);
        }
        let id = self.directs.insert(
            to,
            role,
            Origin::Dial(purpose),
            attempt,
            DirectState::Dialing,
            deadline,
        );
        self.timeline.dials.push(DialRecord {
            id,
            to,
            role,
            purpose,
            attempt,
            started: self.now,
            ended: None,
            result: None,
            peer_reflexive: false,
        });
        id
    }

    /// Whether this attempt runs the birthday punch: both behaviours are
    /// known and one side's mapping is random
    /// ([`crate::nat::Strategy::Birthday`]), and the peer named a QUIC
    /// or else a TCP address. Then the hard side and the peer's address
    /// of that transport (the easy side's punch address, or the hard
    /// side's IP): QUIC when the peer named both, the punch proven
    /// first. When an observer saw the peer (the unilateral targets, from
    /// the relay), only an address on an IP it saw will do, so that the
    /// probes go to an IP the peer does not merely claim; with no
    /// observation, the peer's first address of the transport, and the
    /// process's `admission::BirthdayBudget` bounds what a lie can aim at
    /// a third party.
    fn birthday_plan(&self, peer: &[Candidate]) -> Option<(HardSide, Candidate)> {
        let (ours, theirs) = (self.own_nat.as_deref()?, self.peer_nat.as_deref()?);
        let crate::nat::Strategy::Birthday { hard_side } =
            crate::nat::Strategy::choose(ours, theirs)
        else {
            return None;
        };
        if !self.fresh_sockets {
            tracing::debug!(
                "the NATs call for the birthday punch, which this carrier cannot open \
                 sockets for: punching as the spec does"
            );
            return None;
        }
        let seen = &self.unilateral_targets;
        let acceptable =
            |c: &&Candidate| seen.is_empty() || seen.iter().any(|u| u.addr.ip() == c.addr.ip());
        let to = [Transport::Quic, Transport::Tcp]
            .into_iter()
            .find_map(|t| peer.iter().filter(|c| c.transport == t).find(acceptable));
        if to.is_none() {
            tracing::debug!(
                observed = seen.len(),
                "no birthday punch: no address of the peer's on an IP an observer saw"
            );
        }
        Some((hard_side, *to?))
    }

    /// Starts this attempt's birthday punch now, at the spec's punch time.
    fn start_birthday(&mut self, hard_side: HardSide, to: Candidate) {
        use crate::birthday::{Birthday, BirthdayConfig, Role as BRole};
        let token = BIRTHDAY_TOKEN ^ u64::from(self.attempt);
        let peer = to.addr;
        let config = match to.transport {
            Transport::Quic => BirthdayConfig::new(token),
            Transport::Tcp => BirthdayConfig::tcp(token),
        };
        let (machine, role, shown) = match hard_side {
            HardSide::Ours => (Birthday::hard(config, peer), BRole::Hard, peer),
            HardSide::Peer => {
                let mut seed = [0u8; 32];
                self.rng.fill_bytes(&mut seed);
                let shown = SocketAddr::new(peer.ip(), 0);
                (Birthday::easy(config, peer.ip(), seed), BRole::Easy, shown)
            }
        };
        let mut machine = match machine {
            Ok(m) => m,
            Err(error) => {
                tracing::debug!(%error, %peer, "no birthday punch");
                return;
            }
        };
        if let Err(error) = machine.start(self.now) {
            tracing::debug!(%error, "birthday punch did not start");
            return;
        }
        self.outputs.push_back(Output::Event(Event::StrategyChosen {
            attempt: self.attempt,
            strategy: crate::nat::Strategy::Birthday { hard_side },
        }));
        self.outputs
            .push_back(Output::Event(Event::BirthdayStarted {
                attempt: self.attempt,
                role,
                peer: shown,
            }));
        // Over TCP the easy side's probe connects are the carrier's to
        // close too (`Output::CloseFresh`).
        let fresh = match (role, to.transport) {
            (BRole::Hard, _) | (BRole::Easy, Transport::Tcp) => FreshOpen::All,
            (BRole::Easy, Transport::Quic) => FreshOpen::None,
        };
        self.birthday = Some(Box::new(BirthdayRun {
            machine,
            reported: false,
            fresh,
            dial: None,
            missed: None,
        }));
        self.pump_birthday();
    }

    /// Moves the birthday machine's transmits to the outputs, re-arms its
    /// timer, and acts on its outcome once.
    fn pump_birthday(&mut self) {
        let Some(run) = self.birthday.as_mut() else {
            return;
        };
        let mut asked = 0u32;
        while let Some(t) = run.machine.poll_transmit() {
            self.outputs.push_back(Output::SendBirthday(t));
            asked += 1;
        }
        if let Some(a) = self.timeline.attempts.last_mut() {
            a.birthday_datagrams = a.birthday_datagrams.saturating_add(asked);
        }
        match run.machine.poll_timeout() {
            // Never due again at the same instant: the timer loop would
            // not end.
            Some(at) => self.timers.set(
                TimerKind::Birthday,
                at.max(self.now + Duration::from_micros(1)),
            ),
            None => self.timers.clear(TimerKind::Birthday),
        }
        if run.reported {
            return;
        }
        let Some(outcome) = run.machine.outcome() else {
            return;
        };
        run.reported = true;
        let (probes_sent, sockets_opened) =
            (run.machine.probes_sent(), run.machine.sockets_opened());
        let hard = run.machine.role() == crate::birthday::Role::Hard;
        let tcp = run.machine.config().transport == Transport::Tcp;
        tracing::debug!(
            ?outcome,
            probes_sent,
            sockets_opened,
            "birthday punch ended"
        );
        self.outputs.push_back(Output::Event(Event::BirthdayEnded {
            attempt: self.attempt,
            outcome,
            probes_sent,
            sockets_opened,
        }));
        match outcome {
            // Over TCP the connection that met is the attempt's already
            // (`handle_birthday_connected`): close every other connect.
            crate::birthday::Outcome::Met { .. } if tcp => self.set_fresh(FreshOpen::None),
            crate::birthday::Outcome::Met {
                local: crate::birthday::Local::Fresh(socket),
                remote,
            } if hard => {
                self.set_fresh(FreshOpen::Only(socket));
                self.birthday_dial(socket, remote);
            }
            // Easy side: the hard side dials us from the socket that met;
            // our QUIC endpoint accepts it (`handle_inbound`).
            crate::birthday::Outcome::Met { .. } => {}
            crate::birthday::Outcome::Exhausted | crate::birthday::Outcome::TimedOut => {
                self.set_fresh(FreshOpen::None);
                if let Some(run) = self.birthday.as_mut() {
                    run.missed = Some(AttemptFailure::BirthdayMissed {
                        outcome,
                        probes_sent,
                    });
                }
            }
        }
    }

    /// The end of this attempt's punch window, when a birthday meeting
    /// with `to` may become a dial: the attempt punches, and the address
    /// policy and the dial budget allow `to`.
    fn birthday_window(&self, to: &Candidate) -> Option<Instant> {
        let allowed = self.config.address_policy.check(to).is_ok()
            && self.config.dialable.allows(to)
            && self.dials_made < self.config.max_dials_per_upgrade;
        let punching = matches!(self.state, State::Punching(_));
        let window_end = self.timers.deadline(TimerKind::PunchWindow);
        window_end.filter(|_| allowed && punching)
    }

    /// Hard side, met: the QUIC dial (we are the QUIC client) from fresh socket `socket` to the
    /// easy side's `remote`, within the address policy and dial budget.
    fn birthday_dial(&mut self, socket: u16, remote: SocketAddr) {
        let to = Candidate {
            transport: Transport::Quic,
            addr: remote,
        };
        let Some(window_end) = self.birthday_window(&to) else {
            tracing::debug!(%to, "birthday meeting not dialled: policy, budget or phase");
            self.set_fresh(FreshOpen::None);
            if let Some(run) = self.birthday.as_mut() {
                run.missed = Some(AttemptFailure::AllDialsFailed { dials: 0 });
            }
            return;
        };
        // The roles of the connection's identity check follow the sides,
        // as on every punch connection (the initiator is the server, the
        // responder the client), whichever end is the QUIC client: the
        // easy side labels the inbound connection the same way.
        let role = match self.side {
            Side::Initiator => Role::Server,
            Side::Responder => Role::Client,
        };
        let id = self.dial_from(to, role, DialPurpose::HolePunch, window_end, Some(socket));
        if let State::Punching(punch) = &mut self.state {
            punch.dials += 1;
            punch.dialled.push(to);
        }
        if let Some(run) = self.birthday.as_mut() {
            run.dial = Some(id);
        }
    }

    /// Closes fresh sockets down to `to`, if that closes any.
    fn set_fresh(&mut self, to: FreshOpen) {
        let Some(run) = self.birthday.as_mut() else {
            return;
        };
        let keep = match (run.fresh, to) {
            (FreshOpen::None, _) => return,
            (from, to) if from == to => return,
            (_, FreshOpen::Only(i)) => Some(i),
            (_, FreshOpen::None | FreshOpen::All) => None,
        };
        run.fresh = if keep.is_some() { to } else { FreshOpen::None };
        self.outputs.push_back(Output::CloseFresh { keep });
    }

    /// The attempt (or the upgrade) is over: drop its birthday punch and
    /// close its fresh sockets, but the one under `winner`, the winning
    /// connection.
    fn end_birthday(&mut self, winner: Option<DirectId>) {
        let Some(run) = self.birthday.as_ref() else {
            return;
        };
        let keep = match (run.fresh, run.dial) {
            (FreshOpen::Only(i), Some(dial)) if Some(dial) == winner => FreshOpen::Only(i),
            _ => FreshOpen::None,
        };
        self.set_fresh(keep);
        self.timers.clear(TimerKind::Birthday);
        self.birthday = None;
    }

    /// A datagram of the birthday punch
    /// ([`is_birthday_datagram`](crate::birthday::is_birthday_datagram))
    /// arrived on `local` (the QUIC punch socket, or fresh socket `i`)
    /// from `from`.
    ///
    /// # Errors
    /// [`Refusal::NotStarted`](crate::birthday::Refusal::NotStarted) when
    /// no birthday punch runs, else the machine's [`Refusal`](crate::birthday::Refusal)
    /// (wrong IP, token, socket or kind); nothing changes then.
    pub fn handle_birthday_datagram(
        &mut self,
        now: Instant,
        local: crate::birthday::Local,
        from: SocketAddr,
        payload: &[u8],
    ) -> Result<crate::birthday::Accepted, crate::birthday::Refusal> {
        self.advance(now);
        let Some(run) = self.birthday.as_mut() else {
            return Err(crate::birthday::Refusal::NotStarted);
        };
        let accepted = run
            .machine
            .handle_datagram(self.now, local, from, payload)?;
        self.pump_birthday();
        self.check_progress();
        Ok(accepted)
    }

    /// Over TCP: the birthday punch's connect from `local` (the TCP
    /// punch socket, or fresh socket `i`) to `remote` completed
    /// (`Transmit::transport` [`Transport::Tcp`]). The first one the
    /// machine takes ([`crate::birthday::Birthday::handle_connected`]) and
    /// the address policy and dial budget allow becomes this attempt's
    /// direct TCP connection, recorded as a hole-punch dial that
    /// connected: the carrier keeps it under the returned id and runs the
    /// identity check on it as on any dialled connection (roles by side,
    /// the initiator the server). Every other connect of the punch is
    /// closed ([`Output::CloseFresh`]).
    ///
    /// # Errors
    /// [`Refusal::NotStarted`](crate::birthday::Refusal::NotStarted)
    /// when no birthday punch runs, [`Refusal::Finished`](crate::birthday::Refusal::Finished)
    /// when this attempt no longer punches or policy or budget refuse
    /// `remote`, else the machine's refusal; the carrier closes the
    /// connection then.
    pub fn handle_birthday_connected(
        &mut self,
        now: Instant,
        local: crate::birthday::Local,
        remote: SocketAddr,
    ) -> Result<DirectId, crate::birthday::Refusal> {
        use crate::birthday::Refusal;
        self.advance(now);
        if self.birthday.is_none() {
            return Err(Refusal::NotStarted);
        }
        let to = Candidate::tcp(remote);
        let Some(window_end) = self.birthday_window(&to) else {
            tracing::debug!(%to, "birthday connection refused: policy, budget or phase");
            return Err(Refusal::Finished);
        };
        let Some(run) = self.birthday.as_mut() else {
            return Err(Refusal::NotStarted);
        };
        run.machine.handle_connected(self.now, local, remote)?;
        let role = match self.side {
            Side::Initiator => Role::Server,
            Side::Responder => Role::Client,
        };
        let id = self.register_dial(to, role, DialPurpose::HolePunch, window_end);
        if let State::Punching(punch) = &mut self.state {
            punch.dials += 1;
            punch.dialled.push(to);
        }
        if let Some(run) = self.birthday.as_mut() {
            run.dial = Some(id);
        }
        tracing::debug!(%id, %to, %local, "birthday punch met over TCP");
        self.pump_birthday();
        self.handle_dial_succeeded(now, id);
        Ok(id)
    }

    /// The punch of the current attempt, while it runs.
    #[cfg(feature = "internals")]
    fn punching(&self) -> Option<&Punch> {
        match &self.state {
            State::Punching(punch) => Some(punch),
            _ => None,
        }
    }

    /// The spray of the attempt being punched, if it has one.
    fn spray(&self) -> Option<&Spray> {
        match &self.state {
            State::Punching(punch) => punch.spray.as_ref(),
            _ => None,
        }
    }

    fn spray_round(&mut self) {
        let State::Punching(Punch {
            spray: Some(spray), ..
        }) = &mut self.state
        else {
            return;
        };
        let budget = self.config.max_spray_packets_per_attempt;
        for to in &spray.targets {
            if spray.sent >= budget {
                break;
            }
            let payload = SprayPayload(self.rng.next_u64());
            self.outputs
                .push_back(Output::SendDatagram { to: *to, payload });
            spray.sent += 1;
        }
        if let Some(a) = self.timeline.attempts.last_mut() {
            a.spray_packets = spray.sent;
        }
        if spray.sent < budget {
            let pause = self
                .rng
                .random_range(self.config.spray_interval_min..=self.config.spray_interval_max);
            self.timers.set(TimerKind::SprayTick, self.now + pause);
        }
    }

    /// Our QUIC server punch has run for [`QUIC_CLIENT_FALLBACK`] plus two
    /// relayed round trips with no direct connection: the peer's first Initial may have reached our
    /// NAT before the punch opened it and been dropped, and its re-send is
    /// about a second away. Dial each QUIC target of the server punch that
    /// is still waiting once as a client, from the listening socket, as
    /// stock rust-libp2p's B does: the peer's mapping is open by now. Within
    /// the per-IP and per-upgrade dial budgets; never to an address the
    /// punch did not aim at.
    ///
    /// [`QUIC_CLIENT_FALLBACK`]: crate::settings::QUIC_CLIENT_FALLBACK
    fn quic_client_fallback(&mut self) {
        let attempt = self.attempt;
        let State::Punching(punch) = &self.state else {
            return;
        };
        // A connection already in its identity check needs no help.
        if self.directs.iter().any(|d| !d.is_dialing()) {
            return;
        }
        let waiting: Vec<Candidate> = self
            .directs
            .iter()
            .filter(|d| {
                d.attempt == attempt
                    && d.is_dialing()
                    && d.role == Role::Server
                    && d.to.transport == Transport::Quic
                    && d.origin == Origin::Dial(DialPurpose::HolePunch)
            })
            .map(|d| d.to)
            .collect();
        let mut dialled = punch.dialled.clone();
        let Some(window_end) = self.timers.deadline(TimerKind::PunchWindow) else {
            return;
        };
        let mut added = 0;
        for to in waiting {
            let on_ip = dialled
                .iter()
                .filter(|c| c.addr.ip() == to.addr.ip())
                .count();
            let room = self.dials_made < self.config.max_dials_per_upgrade;
            if on_ip >= self.config.max_punches_per_ip || !room {
                tracing::debug!(attempt, %to, "no QUIC client fallback: over the dial budget");
                continue;
            }
            self.dial(to, Role::Client, DialPurpose::HolePunch, window_end);
            dialled.push(to);
            added += 1;
        }
        tracing::debug!(attempt, dials = added, "QUIC client fallback");
        if let State::Punching(punch) = &mut self.state {
            punch.dials += added;
            punch.dialled = dialled;
        }
    }

    /// A direct connection is up: run the identity check, or win.
    fn connected(&mut self, id: DirectId) {
        if !self.checks_identity() {
            self.win(id);
            return;
        }
        // The carrier runs the TLS handshake and reports its result.
        let deadline = self.now + self.config.confirm_timeout;
        if let Some(d) = self.directs.get_mut(id) {
            d.deadline = d.deadline.max(deadline);
            d.state = DirectState::Handshaking;
        }
    }

    pub(crate) fn reject(&mut self, id: DirectId, reason: DirectRejection) {
        let Some(d) = self.directs.remove(id) else {
            return;
        };
        tracing::debug!(%id, remote = %d.remote(), ?reason, "direct connection rejected");
        match d.origin {
            Origin::Dial(_) => self
                .timeline
                .end_dial(id, self.now, DialResult::Rejected(reason)),
            Origin::Inbound => self.timeline.inbound_rejected += 1,
        }
        self.outputs.push_back(Output::CloseDirect { id });
        self.outputs.push_back(Output::Event(Event::DirectRejected {
            id,
            remote: d.remote(),
            reason,
        }));
        self.check_progress();
    }

    pub(crate) fn win(&mut self, id: DirectId) {
        let Some(d) = self.directs.remove(id) else {
            return;
        };
        if matches!(d.origin, Origin::Dial(_)) {
            self.timeline.end_dial(id, self.now, DialResult::Won);
        }
        let upgraded = Upgraded {
            id,
            transport: d.to.transport,
            remote: d.remote(),
            role: d.role,
            attempt: d.attempt,
        };
        tracing::debug!(
            side = %self.side,
            %id,
            transport = %upgraded.transport,
            remote = %upgraded.remote,
            role = %upgraded.role,
            attempt = upgraded.attempt,
            "direct connection established"
        );
        self.finish(Outcome::Upgraded(upgraded));
    }

    fn direct_expired(&mut self, id: DirectId) {
        let Some(d) = self.directs.get(id) else {
            return;
        };
        if d.is_dialing() {
            let d = self.directs.remove(id).expect("just found");
            self.timeline
                .end_dial(id, self.now, DialResult::Failed(DialError::TimedOut));
            self.outputs.push_back(Output::CloseDirect { id });
            self.outputs.push_back(Output::Event(Event::DialFailed {
                id,
                to: d.to,
                error: DialError::TimedOut,
            }));
            self.check_progress();
        } else {
            self.reject(id, DirectRejection::ConfirmTimeout);
        }
    }

    fn on_timer(&mut self, kind: TimerKind) {
        match kind {
            TimerKind::StepTimeout => self.step_timed_out(),
            TimerKind::Unilateral => self.unilateral_over(),
            TimerKind::SyncDelay => {
                if let State::Initiator(Initiating::SyncDelay { peer, rtt }) = &mut self.state {
                    let (peer, rtt) = (std::mem::take(peer), *rtt);
                    self.punch(peer, Some(rtt));
                }
            }
            TimerKind::SprayTick => self.spray_round(),
            TimerKind::QuicClientFallback => self.quic_client_fallback(),
            TimerKind::PunchWindow => {
                if matches!(self.state, State::Punching(_)) {
                    let after = self.config.direct_timeout;
                    let reason = self
                        .birthday
                        .as_ref()
                        .and_then(|run| run.missed.clone())
                        .unwrap_or(AttemptFailure::DirectTimeout { after });
                    self.fail_attempt(reason);
                }
            }
            TimerKind::GracePeriod => {
                tracing::debug!("grace period over; closing the relayed connection");
                self.outputs.push_back(Output::CloseRelay);
            }
            TimerKind::DirectDeadline => {}
            TimerKind::Birthday => {
                if let Some(run) = self.birthday.as_mut() {
                    run.machine.handle_timeout(self.now);
                }
                self.pump_birthday();
                self.check_progress();
            }
        }
    }

    fn step_timed_out(&mut self) {
        let err = ProtocolError::StepTimeout {
            step: self.step(),
            after: self.config.step_timeout,
        };
        if self.step() == Step::Hello {
            self.protocol_error(err);
            return;
        }
        match self.state {
            State::Responder(Responding::AwaitConnect) => {
                tracing::debug!(
                    attempts = self.attempt,
                    "the initiator started no further attempt"
                );
                let attempts = self.failures.clone();
                self.final_failure(Failure::PeerGaveUp { attempts });
            }
            State::AwaitHello
            | State::Initiator(Initiating::AwaitStream)
            | State::Initiator(Initiating::AwaitConnect { .. })
            | State::Responder(Responding::AwaitSync { .. }) => self.protocol_error(err),
            _ => {}
        }
    }

    /// The peer broke the protocol or the stream failed.
    pub(crate) fn protocol_error(&mut self, err: ProtocolError) {
        tracing::debug!(side = %self.side, %err, step = %self.step(), "protocol error");
        if self.stream_open || self.state == State::Initiator(Initiating::AwaitStream) {
            self.outputs.push_back(Output::ResetStream);
        }
        self.stream_open = false;
        self.decoder = FrameDecoder::new(self.config.max_message_size);
        if self.on_shared_stream() {
            self.relay_closed = true;
            self.final_failure(Failure::Protocol(err));
            return;
        }
        if matches!(self.state, State::Draining { .. }) {
            // Every attempt is over: there is none left to fail, and
            // counting one per stray frame would let a peer grow our list
            // of failures without bound.
            return;
        }
        if self.state == State::Responder(Responding::AwaitConnect) {
            // A stream that breaks before its Connect still counts as an
            // attempt, so a hostile initiator cannot open streams forever.
            self.begin_attempt_record();
        }
        self.fail_attempt(AttemptFailure::Protocol(err));
    }

    /// Ends the current attempt's punch without deciding what comes next.
    pub(crate) fn abandon_attempt(&mut self, reason: AttemptFailure) {
        let attempt = self.attempt;
        self.cancel_pending_dials();
        self.end_birthday(None);
        for kind in [
            TimerKind::Birthday,
            TimerKind::SprayTick,
            TimerKind::QuicClientFallback,
            TimerKind::PunchWindow,
            TimerKind::SyncDelay,
            TimerKind::StepTimeout,
        ] {
            self.timers.clear(kind);
        }
        tracing::debug!(side = %self.side, attempt, %reason, "attempt failed");
        if let Some(a) = self.timeline.attempt_mut() {
            a.ended = Some(self.now);
            a.failure = Some(reason.clone());
        }
        self.failures.push(reason.clone());
        self.outputs
            .push_back(Output::Event(Event::AttemptFailed { attempt, reason }));
    }

    /// The part of `targets` this attempt may punch: at most
    /// [`Config::max_punches_per_ip`] on one IP, and no more dials than
    /// [`Config::max_dials_per_upgrade`] leaves (a spray target costs no
    /// dial; its datagrams have their own budget). The rest is dropped,
    /// and said so.
    fn within_budget(&self, targets: Vec<Candidate>) -> Vec<Candidate> {
        let mut dials_left = self
            .config
            .max_dials_per_upgrade
            .saturating_sub(self.dials_made);
        let mut kept: Vec<Candidate> = Vec::with_capacity(targets.len());
        let mut dropped = 0usize;
        for to in targets {
            let on_ip = kept.iter().filter(|k| k.addr.ip() == to.addr.ip()).count();
            let sprays = to.transport == Transport::Quic
                && self.side == Side::Initiator
                && self.config.quic_server_punch == QuicServerPunch::Spray;
            if on_ip >= self.config.max_punches_per_ip || (!sprays && dials_left == 0) {
                dropped += 1;
                continue;
            }
            if !sprays {
                dials_left -= 1;
            }
            kept.push(to);
        }
        if dropped > 0 {
            tracing::debug!(
                attempt = self.attempt,
                dropped,
                "peer's addresses over the per-IP or per-upgrade punch budget"
            );
        }
        kept
    }

    /// Cancels the current attempt's dials that have not connected yet;
    /// connections already in their identity check keep their deadline.
    fn cancel_pending_dials(&mut self) {
        let attempt = self.attempt;
        for d in self
            .directs
            .drain_where(|d| d.is_dialing() && d.attempt == attempt)
        {
            self.timeline
                .end_dial(d.id, self.now, DialResult::Cancelled);
            self.outputs.push_back(Output::CloseDirect { id: d.id });
        }
    }

    /// Ends the current attempt and moves on: the next attempt, waiting
    /// for one, or the final failure.
    pub(crate) fn fail_attempt(&mut self, reason: AttemptFailure) {
        self.abandon_attempt(reason);
        let more = self.attempt < self.max_attempts;
        if self.relay_closed {
            self.final_failure(Failure::RelayClosed {
                step: Step::NextAttempt,
            });
        } else if !more {
            let attempts = self.failures.clone();
            self.final_failure(Failure::AllAttemptsFailed { attempts });
        } else {
            match self.side {
                Side::Initiator => self.start_attempt(),
                Side::Responder => self.await_next_attempt(),
            }
        }
    }

    /// Fails the upgrade, once no identity check that could still win is
    /// running.
    pub(crate) fn final_failure(&mut self, failure: Failure) {
        self.timers.clear_all();
        self.cancel_pending_dials();
        if self.directs.is_empty() {
            self.finish(Outcome::Failed(failure));
        } else {
            tracing::debug!("waiting for identity checks before failing");
            // Ends any punch, and its spray, with it.
            self.state = State::Draining { failure };
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        // Without the identity check nothing tells both sides which
        // connection won: a dial still pending here may be the very
        // connection the peer just took (TCP on one side, QUIC on the
        // other). Such dials are left to finish and belong to the caller,
        // whose stack (libp2p) deals with a second connection.
        let winner = match &outcome {
            Outcome::Upgraded(up) => Some(up.id),
            Outcome::Failed(_) => None,
        };
        self.end_birthday(winner);
        let release_dials = matches!(outcome, Outcome::Upgraded(_)) && !self.checks_identity();
        for d in self.directs.drain_where(|_| true) {
            if release_dials && d.is_dialing() {
                self.timeline.end_dial(d.id, self.now, DialResult::Released);
            } else {
                self.timeline
                    .end_dial(d.id, self.now, DialResult::Cancelled);
                self.outputs.push_back(Output::CloseDirect { id: d.id });
            }
        }
        if self.stream_open
            && !self.on_shared_stream()
            && matches!(
                self.state,
                State::Initiator(Initiating::AwaitStream)
                    | State::Initiator(Initiating::AwaitConnect { .. })
                    | State::Responder(Responding::AwaitConnect)
                    | State::Responder(Responding::AwaitSync { .. })
            )
        {
            self.outputs.push_back(Output::ResetStream);
            self.stream_open = false;
        }
        self.timers.clear_all();
        self.timeline.decided = Some(self.now);
        if let Some(a) = self.timeline.attempt_mut() {
            a.ended.get_or_insert(self.now);
        }
        let event = match &outcome {
            Outcome::Upgraded(up) => {
                self.timers.set(
                    TimerKind::GracePeriod,
                    self.now + self.config.relay_grace_period,
                );
                Event::Upgraded(*up)
            }
            Outcome::Failed(failure) => {
                tracing::debug!(side = %self.side, %failure, "upgrade failed");
                Event::Failed(failure.clone())
            }
        };
        self.state = State::Done(outcome);
        self.outputs.push_back(Output::Event(event));
    }

    /// Re-evaluates whether the current phase is over after a dial or
    /// connection went away. Decides from the upgrade's own counters, never
    /// from the timeline, which is only ever written.
    pub(crate) fn check_progress(&mut self) {
        self.note_unilateral_over();
        match self.state {
            State::Draining { ref failure } if self.directs.is_empty() => {
                let failure = failure.clone();
                self.finish(Outcome::Failed(failure));
            }
            State::Initiator(Initiating::Unilateral)
                if !self.directs.iter().any(|d| d.attempt == 0) =>
            {
                self.unilateral_over();
            }
            State::Punching(ref punch) => {
                // A spray keeps the attempt open until its window ends: the
                // client's dial may still arrive.
                let attempt = self.attempt;
                // A dial that found its address pair taken means the
                // peer's connection is arriving through our listener: wait
                // for it (until the window ends) rather than give up.
                let birthday_busy = self
                    .birthday
                    .as_ref()
                    .is_some_and(|run| run.missed.is_none());
                let missed = self.birthday.as_ref().and_then(|run| run.missed.clone());
                let busy = punch.spray.is_some()
                    || birthday_busy
                    || punch.crossing
                    || self
                        .directs
                        .iter()
                        .any(|d| d.attempt == attempt || !d.is_dialing());
                if !busy {
                    let (dials, received, dropped) = (punch.dials, punch.received, punch.dropped);
                    if let Some(reason) = missed {
                        self.fail_attempt(reason);
                        return;
                    }
                    if dials > 0 {
                        self.fail_attempt(AttemptFailure::AllDialsFailed { dials });
                        return;
                    }
                    let reason = AttemptFailure::NothingToDial { received, dropped };
                    match self.side {
                        // The peer's addresses do not change between
                        // attempts a second apart: a retry would fail alike.
                        Side::Initiator => self.give_up(reason),
                        Side::Responder => self.fail_attempt(reason),
                    }
                }
            }
            _ => {}
        }
    }

    /// A unilateral dial running alongside the exchange is over once none
    /// of its dials is left: record it, once.
    fn note_unilateral_over(&mut self) {
        if self.state == State::Initiator(Initiating::Unilateral)
            || !self.unilateral_running
            || self
                .directs
                .iter()
                .any(|d| d.attempt == 0 && d.is_dialing())
        {
            return;
        }
        self.unilateral_running = false;
        if let Some((_, ended)) = self.timeline.unilateral.as_mut() {
            *ended = Some(self.now);
        }
        tracing::debug!("unilateral dial failed; the hole punch goes on");
        self.outputs
            .push_back(Output::Event(Event::UnilateralFailed));
    }

    /// Ends the unilateral dial and starts hole punching.
    pub(crate) fn unilateral_over(&mut self) {
        if self.state != State::Initiator(Initiating::Unilateral) {
            return;
        }
        for d in self.directs.drain_where(|d| d.attempt == 0) {
            self.timeline
                .end_dial(d.id, self.now, DialResult::Cancelled);
            self.outputs.push_back(Output::CloseDirect { id: d.id });
        }
        self.timers.clear(TimerKind::Unilateral);
        self.unilateral_running = false;
        if let Some((_, ended)) = self.timeline.unilateral.as_mut() {
            *ended = Some(self.now);
        }
        tracing::debug!("unilateral dial failed; hole punching");
        self.outputs
            .push_back(Output::Event(Event::UnilateralFailed));
        if self.relay_closed {
            self.final_failure(Failure::RelayClosed {
                step: Step::Connect,
            });
        } else {
            self.start_attempt();
        }
    }
}

impl Upgrade {
    /// Whether the peer named `addr` in this upgrade: in its Connect of
    /// the current attempt, as a spray target, as a dial we made, or among
    /// its known public addresses. A connection from there is more likely
    /// the peer's than a stranger's, so a driver short of slots keeps it
    /// over one from elsewhere. It proves nothing: the identity check
    /// still decides.
    #[must_use]
    pub fn is_peer_address(&self, addr: &Candidate) -> bool {
        self.peer_addrs().is_some_and(|p| p.accepted.contains(addr))
            || self.unilateral_targets.contains(addr)
            || self.dialled.contains(addr)
            || (addr.transport == Transport::Quic
                && self.spray().is_some_and(|s| s.targets.contains(&addr.addr)))
    }
}
