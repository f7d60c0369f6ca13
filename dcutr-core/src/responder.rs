//! The responder's side of the exchange (the spec's **A**): it answers
//! each Connect with its own and punches the moment Sync arrives.

use crate::codec::Message;
use crate::error::{AttemptFailure, ProtocolError};
use crate::output::{Event, Output, TimerKind};
use crate::upgrade::{PeerAddrs, State, Upgrade};

/// Where the responder's exchange of one attempt stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Responding {
    /// Waiting for a Connect (first or next attempt).
    AwaitConnect,
    /// Connect answered, waiting for Sync; `peer` is what the initiator's
    /// Connect named.
    AwaitSync { peer: PeerAddrs },
}

impl Upgrade {
    /// Waits for the first Connect. The initiator may first spend its
    /// unilateral dial, so the wait covers that too, whatever our own
    /// `unilateral` setting: only the initiator dials unilaterally, and we
    /// cannot know whether it will.
    ///
    /// With no address of ours to send, no attempt can work (our Connect
    /// would be empty): give up at once rather than wait for streams.
    pub(crate) fn responder_begin(&mut self) {
        if let Err(dropped) = self.addrs_to_send() {
            self.give_up(crate::error::AttemptFailure::NothingToSend { dropped });
            return;
        }
        self.state = State::Responder(Responding::AwaitConnect);
        let wait = self.config.step_timeout + self.config.unilateral_timeout;
        self.timers.set(TimerKind::StepTimeout, self.now + wait);
    }

    /// After a failed attempt: the initiator retries without pause once its
    /// own direct phase is over, which can end up to a direct timeout
    /// after ours.
    pub(crate) fn await_next_attempt(&mut self) {
        self.state = State::Responder(Responding::AwaitConnect);
        let wait = self.config.direct_timeout + self.config.step_timeout;
        self.timers.set(TimerKind::StepTimeout, self.now + wait);
    }

    pub(crate) fn responder_on_message(&mut self, msg: Message) -> Result<(), ProtocolError> {
        match (&self.state, msg) {
            (
                State::Responder(Responding::AwaitConnect) | State::Punching(_),
                Message::Connect(raw),
            ) => {
                if self.attempt >= self.max_attempts {
                    return Err(ProtocolError::TooManyAttempts {
                        attempt: self.attempt.saturating_add(1),
                        max: self.max_attempts,
                    });
                }
                if matches!(self.state, State::Punching(_)) {
                    // Shared stream: the initiator gave up on the previous
                    // attempt before we did.
                    self.abandon_attempt(AttemptFailure::Superseded);
                }
                self.begin_attempt_record();
                self.seen_connect = true;
                let mut peer = self.take_remote_addrs(&raw);
                let addrs = match self.addrs_to_send() {
                    Ok(addrs) => addrs,
                    Err(dropped) => {
                        self.nothing_to_send(dropped);
                        return Ok(());
                    }
                };
                self.send_connect(&addrs);
                if let Some(reason) = self.nats_cannot_meet() {
                    // Our Connect told the initiator our NAT: it gives up
                    // too, with the same reason, as soon as it reads it.
                    if !self.on_shared_stream() {
                        self.outputs.push_back(Output::FinishStream);
                        self.stream_open = false;
                    }
                    self.abandon_attempt(reason);
                    let attempts = self.failures.clone();
                    self.final_failure(crate::error::Failure::GaveUp { attempts });
                    return Ok(());
                }
                // The initiator punches half a round trip after our
                // Connect reaches it: prime now, well before.
                self.prime(&mut peer);
                self.state = State::Responder(Responding::AwaitSync { peer });
                self.timers
                    .set(TimerKind::StepTimeout, self.now + self.config.step_timeout);
                Ok(())
            }
            (State::Responder(Responding::AwaitSync { .. }), Message::Sync) => {
                self.timers.clear(TimerKind::StepTimeout);
                if let Some(a) = self.timeline.attempt_mut() {
                    a.sync = Some(self.now);
                }
                tracing::debug!(attempt = self.attempt, "Sync received; punching");
                self.outputs.push_back(Output::Event(Event::SyncReceived {
                    attempt: self.attempt,
                }));
                if !self.on_shared_stream() {
                    // The exchange is over: our end of this attempt's
                    // stream is done, so its close is not a failure and
                    // the next stream is the next attempt.
                    self.outputs.push_back(Output::FinishStream);
                    self.stream_open = false;
                }
                // This arm matched AwaitSync: its addresses are the punch's.
                let peer = match &mut self.state {
                    State::Responder(Responding::AwaitSync { peer }) => std::mem::take(peer),
                    _ => PeerAddrs::default(),
                };
                self.punch(peer, None);
                Ok(())
            }
            (_, msg) => Err(ProtocolError::UnexpectedMessage {
                step: self.step(),
                got: msg.kind(),
            }),
        }
    }

    /// The initiator opened a new stream (per-attempt streams).
    pub(crate) fn responder_stream_opened(&mut self) {
        if self.state == State::Responder(Responding::AwaitConnect) && self.stream_open {
            // The previous stream never carried a Connect. It counts as a
            // failed attempt, or a peer could open streams forever.
            self.responder_stream_closed(true);
            if self.outcome().is_some() {
                self.outputs.push_back(Output::ResetStream);
                return;
            }
        }
        let attempt_running = matches!(
            self.state,
            State::Responder(Responding::AwaitSync { .. }) | State::Punching(_)
        );
        if self.state == State::Responder(Responding::AwaitConnect) || attempt_running {
            if self.attempt >= self.max_attempts {
                self.outputs.push_back(Output::ResetStream);
                return;
            }
            if attempt_running {
                // One exchange at a time: the newer stream wins.
                self.abandon_attempt(AttemptFailure::Superseded);
            }
            self.state = State::Responder(Responding::AwaitConnect);
            self.stream_open = true;
            self.timers
                .set(TimerKind::StepTimeout, self.now + self.config.step_timeout);
        } else {
            self.outputs.push_back(Output::ResetStream);
        }
    }

    /// The relayed stream closed (per-attempt streams).
    pub(crate) fn responder_stream_closed(&mut self, was_open: bool) {
        match self.state {
            State::Responder(Responding::AwaitSync { .. }) => {
                let err = ProtocolError::StreamClosed { step: self.step() };
                self.fail_attempt(AttemptFailure::Protocol(err));
            }
            State::Responder(Responding::AwaitConnect) if was_open => {
                let err = ProtocolError::StreamClosed { step: self.step() };
                self.begin_attempt_record();
                self.fail_attempt(AttemptFailure::Protocol(err));
            }
            // The initiator finishes its stream after Sync: normal.
            _ => {}
        }
    }
}
