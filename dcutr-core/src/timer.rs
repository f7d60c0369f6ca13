//! The fixed table of named timers.
//!
//! One slot per [`TimerKind`] (except [`TimerKind::DirectDeadline`], which
//! is derived from the direct connections), so the next wakeup is the
//! smallest entry and no timer is an ad-hoc field.

use std::time::Instant;

use crate::output::{Timeout, TimerKind};

/// The kinds with a slot, in the order expired timers are handled.
const SLOTS: [TimerKind; 8] = [
    TimerKind::StepTimeout,
    TimerKind::Unilateral,
    TimerKind::SyncDelay,
    TimerKind::SprayTick,
    TimerKind::QuicClientFallback,
    TimerKind::Birthday,
    TimerKind::PunchWindow,
    TimerKind::GracePeriod,
];

fn slot(kind: TimerKind) -> usize {
    SLOTS
        .iter()
        .position(|k| *k == kind)
        .expect("DirectDeadline has no slot and is never stored")
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Timers([Option<Instant>; SLOTS.len()]);

impl Timers {
    pub fn set(&mut self, kind: TimerKind, at: Instant) {
        self.0[slot(kind)] = Some(at);
    }

    pub fn clear(&mut self, kind: TimerKind) {
        self.0[slot(kind)] = None;
    }

    pub fn clear_all(&mut self) {
        self.0 = [None; SLOTS.len()];
    }

    /// When `kind` is due, if armed.
    pub fn deadline(&self, kind: TimerKind) -> Option<Instant> {
        self.0[slot(kind)]
    }

    /// The earliest armed timer.
    pub fn earliest(&self) -> Option<Timeout> {
        SLOTS
            .iter()
            .zip(self.0)
            .filter_map(|(kind, at)| at.map(|at| Timeout { at, kind: *kind }))
            .min_by_key(|t| t.at)
    }

    /// Disarms and returns the first timer (in handling order) that is due.
    pub fn take_expired(&mut self, now: Instant) -> Option<TimerKind> {
        let i = self
            .0
            .iter()
            .position(|at| at.is_some_and(|at| at <= now))?;
        self.0[i] = None;
        Some(SLOTS[i])
    }
}
