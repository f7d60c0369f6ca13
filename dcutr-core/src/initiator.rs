//! The initiator's side of the exchange (the spec's **B**): it opens the
//! stream, sends the first Connect, measures the round trip, sends Sync,
//! and punches half a round trip later, when Sync reaches the responder.

use std::time::{Duration, Instant};

use crate::addr::Candidate;
use crate::codec::{self, Message};
use crate::error::{AttemptFailure, ProtocolError};
use crate::output::{DialPurpose, Event, Output, Role, Side, TimerKind};
use crate::upgrade::{PeerAddrs, State, Upgrade};

/// How long our QUIC server punch
/// ([`QuicServerPunch::DialAsServer`](crate::settings::QuicServerPunch))
/// may run with no direct connection, beyond [`QUIC_CLIENT_FALLBACK_RTTS`]
/// relayed round trips, before we also dial each of its QUIC targets once
/// as a QUIC client, as stock rust-libp2p's B does from the start: 200 ms.
///
/// Why a fallback: the peer's first Initial leaves when Sync reaches it,
/// and can reach our NAT a moment before our server punch has opened it;
/// it is dropped, and quinn re-sends it only after its first probe
/// timeout, about 1 s (three of its 333 ms initial RTT estimates). By the
/// time the fallback dials, the peer's Initial has left the peer's NAT, so
/// its mapping is open and our Initial gets through at once: the stall
/// shrinks to this wait plus one direct round trip.
///
/// Why 200 ms on top of the round trips: in the normal case the peer's
/// connection must be up first, or the fallback adds a second connection
/// to the punch (libp2p cannot abort a dial). Besides the path, a QUIC
/// handshake with the libp2p TLS certificate costs CPU on both ends, and
/// our end, the server, is done last. In the NAT lab without added delay
/// (debug builds on a loaded machine), 30 runs with a stock peer: a
/// 20 ms wait fell back in every run; 100 ms still in 13, 5 of them
/// runs whose punch was about to connect, up to 120 ms after the peer
/// had. 200 ms keeps the stall to about a quarter of the second it was.
pub const QUIC_CLIENT_FALLBACK: Duration = Duration::from_millis(200);

/// The part of the fallback wait that scales with the path
/// ([`QUIC_CLIENT_FALLBACK`]), in relayed round trips: 2. The peer's
/// connection is up at our end about three direct one-way times after our
/// punch (its Initial, our answer, its Finished), and the direct path is
/// rarely longer than half the relayed round trip: a normal punch is over
/// within 1.5 round trips plus the handshake's work; the other half round
/// trip is margin for the relay's jitter.
pub const QUIC_CLIENT_FALLBACK_RTTS: u32 = 2;

/// Where the initiator's exchange of one attempt stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Initiating {
    /// The unilateral dial is running, before any attempt.
    Unilateral,
    /// Waiting for the attempt's stream to open.
    AwaitStream,
    /// Connect sent at `sent_at`, waiting for the peer's.
    AwaitConnect { sent_at: Instant },
    /// Sync sent, waiting rtt/2 before punching `peer`; `rtt` is the
    /// attempt's relayed round trip.
    SyncDelay { peer: PeerAddrs, rtt: Duration },
}

impl Upgrade {
    /// Unilateral dial first when the peer's public addresses are known,
    /// else the first attempt.
    ///
    /// Without the identity check (the spec's mode) the unilateral dial runs
    /// alongside the first attempt instead: nothing is lost by punching
    /// while it runs, and waiting for it costs a whole dial timeout when
    /// the peer is not reachable after all. The identity check needs the
    /// roles of the direct connection settled, so it dials first.
    pub(crate) fn initiator_begin(&mut self) {
        let targets = self.unilateral_targets.clone();
        if self.unilateral_alongside() {
            // The dial first: if the attempt cannot even start (nothing of
            // ours to send), the dial may still win while the upgrade drains.
            self.dial_unilateral(targets);
            self.start_attempt();
            return;
        }
        if !self.config.unilateral || targets.is_empty() {
            self.start_attempt();
            return;
        }
        self.state = State::Initiator(Initiating::Unilateral);
        self.timers.set(
            TimerKind::Unilateral,
            self.now + self.config.unilateral_timeout,
        );
        self.dial_unilateral(targets);
    }

    /// Dials `targets` directly, as the client, if unilateral dials are on.
    pub(crate) fn dial_unilateral(&mut self, targets: Vec<Candidate>) {
        let decided = self.outcome().is_some() || matches!(self.state, State::Draining { .. });
        if decided || !self.config.unilateral || targets.is_empty() || self.side != Side::Initiator
        {
            return;
        }
        let room = self
            .config
            .max_dials_per_upgrade
            .saturating_sub(self.dials_made);
        let targets: Vec<Candidate> = targets.into_iter().take(room).collect();
        if targets.is_empty() {
            return;
        }
        let deadline = self.now + self.config.unilateral_timeout;
        self.unilateral_running = true;
        match self.timeline.unilateral.as_mut() {
            Some((_, ended)) => *ended = None,
            None => self.timeline.unilateral = Some((self.now, None)),
        }
        tracing::debug!(dials = targets.len(), "unilateral direct dial");
        self.outputs
            .push_back(Output::Event(Event::UnilateralStarted {
                dials: targets.len(),
            }));
        for to in targets {
            // A plain dial: we are the dialer, so the client.
            self.dial(to, Role::Client, DialPurpose::Unilateral, deadline);
        }
    }

    /// Starts the next attempt: a new stream, or the next Connect on the
    /// shared one.
    pub(crate) fn start_attempt(&mut self) {
        self.begin_attempt_record();
        if let Err(dropped) = self.addrs_to_send() {
            self.nothing_to_send(dropped);
            return;
        }
        self.timers
            .set(TimerKind::StepTimeout, self.now + self.config.step_timeout);
        if self.on_shared_stream() {
            self.initiator_send_connect();
        } else {
            self.state = State::Initiator(Initiating::AwaitStream);
            self.outputs.push_back(Output::OpenStream);
        }
    }

    pub(crate) fn initiator_send_connect(&mut self) {
        let addrs = match self.addrs_to_send() {
            Ok(addrs) => addrs,
            Err(dropped) => return self.nothing_to_send(dropped),
        };
        self.send_connect(&addrs);
        self.state = State::Initiator(Initiating::AwaitConnect { sent_at: self.now });
        self.timers
            .set(TimerKind::StepTimeout, self.now + self.config.step_timeout);
    }

    /// The only message an initiator may receive is the responder's
    /// Connect, once, after its own.
    pub(crate) fn initiator_on_message(&mut self, msg: Message) -> Result<(), ProtocolError> {
        let (&State::Initiator(Initiating::AwaitConnect { sent_at }), Message::Connect(raw)) =
            (&self.state, &msg)
        else {
            return Err(ProtocolError::UnexpectedMessage {
                step: self.step(),
                got: msg.kind(),
            });
        };
        let rtt = self.now.saturating_duration_since(sent_at);
        self.timers.clear(TimerKind::StepTimeout);
        if let Some(a) = self.timeline.attempt_mut() {
            a.rtt = Some(rtt);
            a.sync = Some(self.now);
        }
        self.outputs.push_back(Output::Event(Event::RttMeasured {
            attempt: self.attempt,
            rtt,
        }));
        let mut peer = self.take_remote_addrs(raw);
        if let Some(reason) = self.nats_cannot_meet() {
            self.give_up(reason);
            return Ok(());
        }
        // Before Sync leaves: the responder punches when it arrives.
        self.prime(&mut peer);
        self.outputs
            .push_back(Output::WriteStream(codec::encode_sync()));
        if !self.on_shared_stream() {
            self.outputs.push_back(Output::FinishStream);
            self.stream_open = false;
        }
        // Sync needs half a round trip to reach the responder, who punches
        // on arrival; punching after rtt/2 makes both punches meet.
        let punch_at = self.now + rtt / 2;
        tracing::debug!(attempt = self.attempt, ?rtt, "Sync sent");
        self.outputs.push_back(Output::Event(Event::SyncSent {
            attempt: self.attempt,
            punch_at,
        }));
        if punch_at <= self.now {
            self.punch(peer, Some(rtt));
        } else {
            self.state = State::Initiator(Initiating::SyncDelay { peer, rtt });
            self.timers.set(TimerKind::SyncDelay, punch_at);
        }
        Ok(())
    }

    /// The stream of the current attempt opened (per-attempt streams).
    pub(crate) fn initiator_stream_opened(&mut self) {
        if self.state == State::Initiator(Initiating::AwaitStream) {
            self.stream_open = true;
            self.initiator_send_connect();
        } else {
            // Not asked for: refuse it.
            self.outputs.push_back(Output::ResetStream);
        }
    }

    /// The relayed stream closed or could not be opened.
    pub(crate) fn initiator_stream_closed(&mut self) {
        let err = match self.state {
            State::Initiator(Initiating::AwaitStream) => ProtocolError::StreamOpenFailed,
            State::Initiator(Initiating::AwaitConnect { .. }) => {
                ProtocolError::StreamClosed { step: self.step() }
            }
            // After Sync the stream has done its job.
            _ => return,
        };
        self.stream_open = false;
        self.fail_attempt(AttemptFailure::Protocol(err));
    }
}
