//! The measured timeline of one upgrade, in the terms users ask about.

use std::time::{Duration, Instant};

use dcutr_core::{DialPurpose, Outcome, Side, record::Timeline};

/// What happened when, from the core's timeline, with the figures people
/// ask for: the relayed RTT, the attempts, the time to the direct
/// connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Our side.
    pub side: Side,
    /// When the upgrade started (the adapter's clock).
    pub started: Instant,
    /// The core's own record.
    pub timeline: Timeline,
    /// How it ended, once it did.
    pub outcome: Option<Outcome>,
}

impl Report {
    pub(crate) fn new(
        side: Side,
        started: Instant,
        timeline: Timeline,
        outcome: Option<Outcome>,
    ) -> Self {
        Report {
            side,
            started,
            timeline,
            outcome,
        }
    }

    pub(crate) fn empty(side: Side, started: Instant) -> Self {
        Report::new(
            side,
            started,
            dcutr_core::record::Timeline::empty(started),
            None,
        )
    }

    /// Hole-punch attempts made (0 when the unilateral dial won).
    #[must_use]
    pub fn attempts(&self) -> usize {
        self.timeline.attempts().len()
    }

    /// Whether the direct connection came from the unilateral dial (the
    /// initiator dialled the responder's public address; no hole punch).
    #[must_use]
    pub fn unilateral(&self) -> bool {
        matches!(&self.outcome, Some(Outcome::Upgraded(up)) if up.attempt == 0)
    }

    /// Whether we tried a unilateral dial (initiator only).
    #[must_use]
    pub fn tried_unilateral(&self) -> bool {
        self.timeline
            .dials()
            .iter()
            .any(|d| d.purpose() == DialPurpose::Unilateral)
    }

    /// The relayed round trip the initiator measured last.
    #[must_use]
    pub fn rtt(&self) -> Option<Duration> {
        self.timeline.last_rtt()
    }

    /// From the start of the upgrade to its outcome.
    #[must_use]
    pub fn total(&self) -> Option<Duration> {
        self.timeline.duration()
    }

    /// From the last attempt's Connect (sent by the initiator, received
    /// by the responder) to the direct connection: the figure that the
    /// bound `1.5 * relayed RTT + direct RTT` applies to. For a unilateral
    /// win, from the start. `None` when there is no direct connection.
    #[must_use]
    pub fn time_to_direct(&self) -> Option<Duration> {
        if !matches!(self.outcome, Some(Outcome::Upgraded(_))) {
            return None;
        }
        let decided = self.timeline.decided()?;
        let from = match self.timeline.attempts().last() {
            Some(a) => match self.side {
                Side::Initiator => a.connect_sent(),
                Side::Responder => a.connect_received(),
            }
            .unwrap_or(a.started()),
            None => self.timeline.started(),
        };
        Some(decided.saturating_duration_since(from))
    }

    /// An instant as time since the start.
    #[must_use]
    pub fn offset(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.started)
    }
}
