//! Which upgrades a process lets start: at most one per peer at a time, none
//! for a while after a peer's upgrade failed, and a cap on all of them
//! together; and how many birthday-punch packets it sends per minute, per
//! destination IP and in all ([`BirthdayBudget`]).
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
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::birthday::DEFAULT_PROBES;

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

/// The span [`BirthdayBudget`] counts packets over.
pub const BIRTHDAY_WINDOW: Duration = Duration::from_secs(60);

/// Most birthday-punch packets (probes, priming datagrams and answers)
/// one process sends to one destination IP per [`BIRTHDAY_WINDOW`]: two
/// default punches (2 × [`DEFAULT_PROBES`] = 2048), enough for an attempt
/// and its retry. A birthday probe is a port scan of one IP chosen by the
/// peer, so this is what a hostile peer can aim at one victim from us in
/// a minute, whatever it does: 2048 × 44 B = 90,112 B on the wire (IPv4).
pub const BIRTHDAY_PACKETS_PER_IP: u32 = 2 * DEFAULT_PROBES as u32;

/// Most birthday-punch packets one process sends per [`BIRTHDAY_WINDOW`]
/// to all destinations together: 16 default punches, about 721 KB (IPv4)
/// or 12 KB/s on average. A hostile peer that names a new victim IP for
/// each attempt gets no more than this, and a node serving many peers
/// behind hard NATs still gets a punch every ~4 s.
pub const BIRTHDAY_PACKETS_PER_PROCESS: u32 = 16 * DEFAULT_PROBES as u32;

/// Most destination IPs [`BirthdayBudget`] remembers within one window;
/// beyond that it refuses new ones (fail closed) until a window expires.
/// 256 entries of a few dozen bytes each; at one full punch per IP, the
/// process budget reaches only 16 of them.
pub const MAX_BIRTHDAY_DESTINATIONS: usize = 256;

/// Why [`BirthdayBudget::admit`] refused a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BirthdayRefusal {
    /// This destination IP had its [`BIRTHDAY_PACKETS_PER_IP`] this window.
    #[error("{ip} already got {cap} birthday-punch packets from this process in the last {window:?}", cap = BIRTHDAY_PACKETS_PER_IP, window = BIRTHDAY_WINDOW)]
    DestinationBudgetSpent {
        /// The destination.
        ip: IpAddr,
    },
    /// The process sent its [`BIRTHDAY_PACKETS_PER_PROCESS`] this window.
    #[error("this process already sent {cap} birthday-punch packets in the last {window:?}", cap = BIRTHDAY_PACKETS_PER_PROCESS, window = BIRTHDAY_WINDOW)]
    ProcessBudgetSpent,
    /// [`MAX_BIRTHDAY_DESTINATIONS`] IPs are being counted already.
    #[error("{max} destinations already got birthday-punch packets in the last {window:?}", max = MAX_BIRTHDAY_DESTINATIONS, window = BIRTHDAY_WINDOW)]
    TooManyDestinations,
}

/// The process-wide budget on birthday-punch packets: each punch is
/// bounded by itself (`birthday::MAX_PROBES`), but a hostile peer can
/// start one after another, and name another victim IP each time. A
/// carrier keeps one per process and asks it before sending each
/// birthday datagram; a refused packet is not sent, and the punch it
/// belongs to misses.
///
/// Windows are fixed: each destination's (and the process's) starts with
/// its first packet and lasts [`BIRTHDAY_WINDOW`], so any 60 s span holds
/// at most twice a cap.
///
/// ```
/// use std::net::{IpAddr, Ipv4Addr};
/// use std::time::Instant;
/// use dcutr_core::admission::{BirthdayBudget, BirthdayRefusal, BIRTHDAY_PACKETS_PER_IP, BIRTHDAY_WINDOW};
///
/// let mut budget = BirthdayBudget::new();
/// let (now, victim) = (Instant::now(), IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)));
/// for _ in 0..BIRTHDAY_PACKETS_PER_IP {
///     budget.admit(now, victim).unwrap();
/// }
/// assert_eq!(budget.admit(now, victim), Err(BirthdayRefusal::DestinationBudgetSpent { ip: victim }));
/// assert_eq!(budget.admit(now + BIRTHDAY_WINDOW, victim), Ok(()));
/// ```
#[derive(Debug, Clone, Default)]
pub struct BirthdayBudget {
    /// (destination, window start, packets in the window).
    destinations: Vec<(IpAddr, Instant, u32)>,
    /// The process's window: start and packets.
    process: Option<(Instant, u32)>,
}

impl BirthdayBudget {
    /// A budget with nothing sent; `const`, so a carrier can keep one
    /// process-wide in a `static`.
    #[must_use]
    pub const fn new() -> Self {
        BirthdayBudget {
            destinations: Vec::new(),
            process: None,
        }
    }

    /// Counts one birthday packet to `to` at `now`, or says why it may not
    /// leave.
    ///
    /// # Errors
    /// A [`BirthdayRefusal`]: the destination's or the process's budget
    /// for this window is spent, or too many destinations are counted.
    pub fn admit(&mut self, now: Instant, to: IpAddr) -> Result<(), BirthdayRefusal> {
        let live = |start: Instant| now.saturating_duration_since(start) < BIRTHDAY_WINDOW;
        self.destinations.retain(|&(_, start, _)| live(start));
        let process = match self.process {
            Some((start, sent)) if live(start) => (start, sent),
            _ => (now, 0),
        };
        if process.1 >= BIRTHDAY_PACKETS_PER_PROCESS {
            return Err(BirthdayRefusal::ProcessBudgetSpent);
        }
        let at = match self.destinations.iter().position(|&(ip, ..)| ip == to) {
            Some(at) if self.destinations[at].2 >= BIRTHDAY_PACKETS_PER_IP => {
                return Err(BirthdayRefusal::DestinationBudgetSpent { ip: to });
            }
            Some(at) => at,
            None if self.destinations.len() >= MAX_BIRTHDAY_DESTINATIONS => {
                return Err(BirthdayRefusal::TooManyDestinations);
            }
            None => {
                self.destinations.push((to, now, 0));
                self.destinations.len() - 1
            }
        };
        self.destinations[at].2 += 1;
        self.process = Some((process.0, process.1 + 1));
        Ok(())
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

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 51, 100, last])
    }

    #[test]
    fn the_birthday_budget_caps_each_destination_and_the_process_per_window() {
        let mut budget = BirthdayBudget::new();
        let now = dcutr_sim::epoch();
        for _ in 0..BIRTHDAY_PACKETS_PER_IP {
            assert_eq!(budget.admit(now, ip(1)), Ok(()));
        }
        let spent = Err(BirthdayRefusal::DestinationBudgetSpent { ip: ip(1) });
        assert_eq!(budget.admit(now, ip(1)), spent);
        let late = now + BIRTHDAY_WINDOW - Duration::from_millis(1);
        assert_eq!(budget.admit(late, ip(1)), spent, "still the same window");
        // Other destinations fill the process's budget, one IP's cap each.
        let per_process = (BIRTHDAY_PACKETS_PER_PROCESS / BIRTHDAY_PACKETS_PER_IP) as u8;
        for d in 2..=per_process {
            for _ in 0..BIRTHDAY_PACKETS_PER_IP {
                assert_eq!(budget.admit(now, ip(d)), Ok(()));
            }
        }
        let other = ip(per_process + 1);
        assert_eq!(
            budget.admit(now, other),
            Err(BirthdayRefusal::ProcessBudgetSpent)
        );
        // A window after the first packet, both budgets are whole again.
        let next = now + BIRTHDAY_WINDOW;
        assert_eq!(budget.admit(next, ip(1)), Ok(()));
        assert_eq!(budget.admit(next, other), Ok(()));
        assert_eq!(
            budget.destinations.len(),
            2,
            "expired windows are forgotten"
        );
    }

    #[test]
    fn the_birthday_budget_remembers_a_bounded_number_of_destinations() {
        let mut budget = BirthdayBudget::new();
        let now = dcutr_sim::epoch();
        for d in 0..MAX_BIRTHDAY_DESTINATIONS as u32 {
            let to = IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400 + d));
            assert_eq!(budget.admit(now, to), Ok(()));
        }
        let one_more = IpAddr::from([192, 0, 2, 1]);
        assert_eq!(
            budget.admit(now, one_more),
            Err(BirthdayRefusal::TooManyDestinations)
        );
        let known = IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400));
        assert_eq!(
            budget.admit(now, known),
            Ok(()),
            "a counted IP still gets its share"
        );
        assert_eq!(budget.admit(now + BIRTHDAY_WINDOW, one_more), Ok(()));
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
