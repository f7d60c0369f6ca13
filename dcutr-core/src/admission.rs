//! Which upgrades a process lets start: at most one per peer at a time, none
//! for a while after a peer's upgrade failed, and a cap on all of them
//! together.
//!
//! Each upgrade is bounded by itself (its dial and spray budgets), but a
//! hostile peer can reconnect through the relay as soon as one fails and
//! have us dial its chosen addresses again, and a crowd of peers can start
//! many at once. [`Admission`] is the guard every carrier puts in front of
//! [`Upgrade::builder`](crate::Upgrade::builder): dcutr-libp2p keys it by
//! `PeerId`, the standalone driver by whatever the caller names the peer
//! with. Like the rest of the core it reads no clock: time is passed in.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use dcutr_core::admission::{Admission, Refusal, FAILURE_COOLDOWN};
//!
//! let mut admission = Admission::default();
//! let now = Instant::now();
//! assert_eq!(admission.admit("peer-1", now), Ok(()));
//! assert_eq!(admission.admit("peer-1", now), Err(Refusal::AlreadyRunning));
//! admission.finish(&"peer-1", now, false);
//! assert_eq!(admission.admit("peer-1", now), Err(Refusal::CoolingDown));
//! assert_eq!(admission.admit("peer-1", now + FAILURE_COOLDOWN), Ok(()));
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Most upgrades running at once under one [`Admission`]. Each costs a
/// relayed stream, a few timers and up to `max_dials_per_upgrade` dials;
/// 64 is far above what a node hole-punches at once, and keeps a crowd of
/// relayed peers from making us dial thousands of addresses together.
pub const MAX_CONCURRENT_UPGRADES: usize = 64;

/// How long after a failed upgrade the same peer gets no new one. A peer
/// that fails once fails again a moment later (its NATs have not changed),
/// and a hostile one could otherwise reconnect through the relay to have
/// us dial again and again: with 10 s, one peer gets at most one upgrade
/// per direct phase plus 10 s.
pub const FAILURE_COOLDOWN: Duration = Duration::from_secs(10);

/// Most peers remembered as cooling down. When more fail within one
/// cooldown, the oldest is forgotten early: memory stays bounded
/// (a few dozen bytes per entry) at the price of that peer's cooldown.
pub const MAX_COOLING_PEERS: usize = 256;

/// Why [`Admission::admit`] let no upgrade start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// An upgrade with this peer is still running.
    #[error("an upgrade with this peer is already running")]
    AlreadyRunning,
    /// The peer's last upgrade failed less than the cooldown ago.
    #[error("the last upgrade with this peer failed less than {cooldown:?} ago", cooldown = FAILURE_COOLDOWN)]
    CoolingDown,
    /// The cap on upgrades at once is reached.
    #[error("{cap} upgrades are already running", cap = MAX_CONCURRENT_UPGRADES)]
    TooManyUpgrades,
}

/// The guard itself: which peers have an upgrade running and which failed
/// recently. Memory is bounded by [`MAX_CONCURRENT_UPGRADES`] plus
/// [`MAX_COOLING_PEERS`] keys.
#[derive(Debug, Clone)]
pub struct Admission<K> {
    running: Vec<K>,
    /// Peers whose upgrade failed, oldest first, with when it failed.
    cooling: VecDeque<(K, Instant)>,
}

impl<K> Default for Admission<K> {
    fn default() -> Self {
        Admission::new()
    }
}

impl<K> Admission<K> {
    /// A guard with nothing running and nobody cooling down; `const`, so a
    /// carrier can keep one process-wide in a `static`.
    #[must_use]
    pub const fn new() -> Self {
        Admission {
            running: Vec::new(),
            cooling: VecDeque::new(),
        }
    }
}

impl<K: Eq> Admission<K> {
    /// Lets an upgrade with `peer` start at `now`, or says why not. An
    /// admitted upgrade counts as running until [`Admission::finish`].
    ///
    /// # Errors
    /// A [`Refusal`]: one is already running for `peer`, `peer` is cooling
    /// down after a failure, or [`MAX_CONCURRENT_UPGRADES`] are running.
    pub fn admit(&mut self, peer: K, now: Instant) -> Result<(), Refusal> {
        self.forget_expired(now);
        if self.running.contains(&peer) {
            return Err(Refusal::AlreadyRunning);
        }
        if self.cooling.iter().any(|(p, _)| *p == peer) {
            return Err(Refusal::CoolingDown);
        }
        if self.running.len() >= MAX_CONCURRENT_UPGRADES {
            return Err(Refusal::TooManyUpgrades);
        }
        self.running.push(peer);
        Ok(())
    }

    /// Ends the upgrade with `peer` that [`Admission::admit`] let start; a
    /// failed one starts the peer's cooldown. A peer that is not running is
    /// ignored, so a carrier may call this on every exit path.
    pub fn finish(&mut self, peer: &K, now: Instant, succeeded: bool) {
        let Some(at) = self.running.iter().position(|p| p == peer) else {
            return;
        };
        let peer = self.running.swap_remove(at);
        if succeeded {
            return;
        }
        if self.cooling.len() == MAX_COOLING_PEERS {
            self.cooling.pop_front();
        }
        self.cooling.push_back((peer, now));
    }

    /// How many admitted upgrades have not finished.
    #[must_use]
    pub fn running(&self) -> usize {
        self.running.len()
    }

    fn forget_expired(&mut self, now: Instant) {
        while self
            .cooling
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= FAILURE_COOLDOWN)
        {
            self.cooling.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_peer_a_cooldown_after_a_failure_and_a_cap_on_all() {
        let mut admission = Admission::default();
        let now = dcutr_sim::epoch();
        assert_eq!(admission.admit(1u32, now), Ok(()));
        assert_eq!(admission.admit(1, now), Err(Refusal::AlreadyRunning));
        admission.finish(&1, now, false);
        let soon = now + FAILURE_COOLDOWN - Duration::from_millis(1);
        assert_eq!(admission.admit(1, soon), Err(Refusal::CoolingDown));
        assert_eq!(admission.admit(2, soon), Ok(()), "other peers are fine");
        admission.finish(&2, soon, true);
        assert_eq!(
            admission.admit(2, soon),
            Ok(()),
            "no cooldown after success"
        );
        admission.finish(&2, soon, true);
        assert_eq!(admission.admit(1, now + FAILURE_COOLDOWN), Ok(()));
        assert!(admission.cooling.is_empty(), "expired entries are dropped");
        for peer in 0..MAX_CONCURRENT_UPGRADES as u32 - 1 {
            assert_eq!(admission.admit(100 + peer, now), Ok(()));
        }
        assert_eq!(admission.running(), MAX_CONCURRENT_UPGRADES);
        assert_eq!(admission.admit(7, now), Err(Refusal::TooManyUpgrades));
        admission.finish(&100, now, true);
        assert_eq!(
            admission.admit(7, now),
            Ok(()),
            "a finished one frees a slot"
        );
    }

    #[test]
    fn the_cooling_list_stays_bounded_and_forgets_the_oldest_first() {
        let mut admission = Admission::default();
        let now = dcutr_sim::epoch();
        for peer in 0..MAX_COOLING_PEERS as u32 + 10 {
            admission.admit(peer, now).unwrap();
            admission.finish(&peer, now, false);
        }
        assert_eq!(admission.cooling.len(), MAX_COOLING_PEERS);
        assert_eq!(admission.admit(0, now), Ok(()), "the oldest was forgotten");
        assert_eq!(
            admission.admit(MAX_COOLING_PEERS as u32 + 9, now),
            Err(Refusal::CoolingDown)
        );
    }

    #[test]
    fn finishing_a_peer_that_is_not_running_changes_nothing() {
        let mut admission = Admission::default();
        let now = dcutr_sim::epoch();
        admission.finish(&1u32, now, false);
        assert_eq!(admission.admit(1, now), Ok(()));
        assert_eq!(admission.running(), 1);
    }
}
