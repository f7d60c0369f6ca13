//! The adapter contract: one method per command of the core.
//!
//! Every adapter (the async driver, the libp2p behaviour, the simulator)
//! implements [`Carrier`] and lets [`Upgrade::drain`] call it. The core
//! matches its own commands exhaustively, so a new command is a new
//! required method here, and every carrier stops compiling until it
//! carries the command out: nothing is dropped silently at run time.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use crate::addr::Candidate;
use crate::birthday::Transmit;
use crate::error::DialError;
use crate::output::{Dial, DirectId, Event, Output, SprayPayload};
use crate::timeline::Timeline;
use crate::upgrade::Upgrade;

/// The relayed connection cannot open a stream any more (it is gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the relayed connection cannot open a stream")]
pub struct StreamUnavailable;

/// Carries out the commands of an [`Upgrade`]: implemented by every
/// adapter, called by [`Upgrade::drain`], in the order the core gave.
///
/// Methods that can fail at once report it in their return value; the
/// core then handles the failure as if the adapter had reported it as an
/// input, before the next command.
pub trait Carrier {
    /// Open a new `/libp2p/dcutr` stream on the relayed connection, and
    /// report it later with [`Upgrade::handle_stream_opened`] (or its
    /// failure with [`Upgrade::handle_stream_closed`]).
    ///
    /// # Errors
    /// [`StreamUnavailable`] when no stream can be opened at all.
    fn open_stream(&mut self) -> Result<(), StreamUnavailable>;
    /// Write these bytes to the relayed stream.
    fn write_stream(&mut self, data: Bytes);
    /// Half-close the relayed stream after the queued writes.
    fn finish_stream(&mut self);
    /// Reset the relayed stream.
    fn reset_stream(&mut self);
    /// Dial now, and report the result with
    /// [`Upgrade::handle_dial_succeeded`] or [`Upgrade::handle_dial_failed`].
    ///
    /// # Errors
    /// The [`DialError`] when the dial cannot even start (no socket for
    /// the transport, an address the carrier cannot express).
    fn dial(&mut self, dial: Dial) -> Result<(), DialError>;
    /// Send this datagram from the socket the QUIC endpoint listens on.
    fn send_datagram(&mut self, to: SocketAddr, payload: SprayPayload);
    /// Send one priming packet with IP TTL `ttl` to `to`, from the
    /// socket the punch will use; see [`Output::Prime`]. Best effort:
    /// nothing is reported back.
    fn prime(&mut self, to: Candidate, ttl: u8);
    /// Birthday punch: send this datagram from the socket it names
    /// (opening fresh socket `i` on its first, priming, transmit); see
    /// [`Output::SendBirthday`].
    fn send_birthday(&mut self, transmit: Transmit);
    /// Birthday punch: close every fresh socket but `keep`.
    fn close_fresh(&mut self, keep: Option<u16>);
    /// Birthday punch, hard side: dial from fresh socket `socket`; report
    /// it like [`Carrier::dial`].
    ///
    /// # Errors
    /// As [`Carrier::dial`]; also when this carrier has no fresh sockets.
    fn dial_fresh(&mut self, socket: u16, dial: Dial) -> Result<(), DialError>;
    /// Write these bytes to direct connection `id`.
    fn write_direct(&mut self, id: DirectId, data: Bytes);
    /// Cancel dial `id`, or close direct connection `id`.
    fn close_direct(&mut self, id: DirectId);
    /// Close the relayed connection: the grace period is over.
    fn close_relay(&mut self);
    /// Something happened. `timeline` is the upgrade's record so far.
    fn event(&mut self, event: Event, timeline: &Timeline);
}

impl Upgrade {
    /// Drains every pending command into `carrier`: call after every
    /// input (the str0m rule), then ask [`Upgrade::poll_timeout`].
    ///
    /// `now` is used for failures the carrier reports at once.
    pub fn drain<C: Carrier + ?Sized>(&mut self, now: Instant, carrier: &mut C) {
        while let Some(output) = self.poll_output() {
            match output {
                Output::OpenStream => {
                    if carrier.open_stream().is_err() {
                        self.handle_stream_closed(now);
                    }
                }
                Output::WriteStream(data) => carrier.write_stream(data),
                Output::FinishStream => carrier.finish_stream(),
                Output::ResetStream => carrier.reset_stream(),
                Output::Dial(dial) => {
                    if let Err(error) = carrier.dial(dial) {
                        self.handle_dial_failed(now, dial.id, error);
                    }
                }
                Output::SendDatagram { to, payload } => carrier.send_datagram(to, payload),
                Output::Prime { to, ttl } => carrier.prime(to, ttl),
                Output::SendBirthday(transmit) => carrier.send_birthday(transmit),
                Output::CloseFresh { keep } => carrier.close_fresh(keep),
                Output::DialFresh { socket, dial } => {
                    if let Err(error) = carrier.dial_fresh(socket, dial) {
                        self.handle_dial_failed(now, dial.id, error);
                    }
                }
                Output::WriteDirect { id, data } => carrier.write_direct(id, data),
                Output::CloseDirect { id } => carrier.close_direct(id),
                Output::CloseRelay => carrier.close_relay(),
                Output::Event(event) => carrier.event(event, self.timeline()),
            }
        }
    }
}
