//! The process-wide guard in front of every standalone upgrade: the core's
//! [`Admission`] rules (one upgrade per peer at a time, a cooldown after a
//! failure, at most [`MAX_CONCURRENT_UPGRADES`] at once) over all the
//! upgrades this process drives, whichever runtime drives them.
//!
//! The peer is whatever the caller names it with ([`Options::peer`]): the
//! relayed stream itself carries no identity a stranger could not make up.
//! An upgrade without a name counts only towards the cap.
//!
//! The same module keeps the process's [`BirthdayBudget`]: every
//! birthday-punch datagram any upgrade sends is counted against it first,
//! per destination IP and in all, and a refused one is not sent.
//!
//! [`Options::peer`]: crate::Options::peer
//! [`MAX_CONCURRENT_UPGRADES`]: dcutr_core::admission::MAX_CONCURRENT_UPGRADES

use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use dcutr_core::admission::{Admission, BirthdayBudget, BirthdayRefusal, Refusal};

/// A peer's name as the guard keeps it: the SHA-256 of the caller's bytes,
/// so that every name costs the same 32 bytes however long it is, or a
/// number of its own for an upgrade without a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerKey {
    Named([u8; 32]),
    Anonymous(u64),
}

/// The key a named peer is kept under.
pub(crate) fn name_digest(name: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, name);
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

struct Gate {
    admission: Admission<PeerKey>,
    next_anonymous: u64,
}

static GATE: Mutex<Gate> = Mutex::new(Gate {
    admission: Admission::new(),
    next_anonymous: 0,
});

fn gate() -> MutexGuard<'static, Gate> {
    // The guard's state stays consistent across a panic elsewhere (every
    // change is one call), so a poisoned lock is still safe to use.
    GATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An admitted upgrade. It counts as running until it is finished or
/// dropped; a dropped one (the caller cancelled the upgrade) starts no
/// cooldown, since the peer did nothing wrong.
#[must_use]
pub(crate) struct Ticket {
    key: PeerKey,
    finished: bool,
}

/// Lets an upgrade with `peer` (or an anonymous one) start now.
pub(crate) fn admit(peer: Option<[u8; 32]>) -> Result<Ticket, Refusal> {
    let mut gate = gate();
    let key = match peer {
        Some(digest) => PeerKey::Named(digest),
        None => {
            gate.next_anonymous += 1;
            PeerKey::Anonymous(gate.next_anonymous)
        }
    };
    gate.admission.admit(key, Instant::now())?;
    Ok(Ticket {
        key,
        finished: false,
    })
}

impl Ticket {
    /// Ends the upgrade; a failed one starts the peer's cooldown.
    pub(crate) fn finish(mut self, succeeded: bool) {
        self.finished = true;
        gate()
            .admission
            .finish(&self.key, Instant::now(), succeeded);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.finished {
            gate().admission.finish(&self.key, Instant::now(), true);
        }
    }
}

static BIRTHDAY: Mutex<BirthdayBudget> = Mutex::new(BirthdayBudget::new());

/// Counts one birthday-punch packet to `to`, against the process-wide
/// [`BirthdayBudget`] of every upgrade this process drives.
pub(crate) fn admit_birthday(now: Instant, to: IpAddr) -> Result<(), BirthdayRefusal> {
    // Consistent across a panic elsewhere, as the gate is.
    let mut budget = BIRTHDAY.lock().unwrap_or_else(PoisonError::into_inner);
    budget.admit(now, to)
}

/// How many standalone upgrades this process runs now, at most
/// [`MAX_CONCURRENT_UPGRADES`](dcutr_core::admission::MAX_CONCURRENT_UPGRADES).
#[must_use]
pub fn running_upgrades() -> usize {
    gate().admission.running()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcutr_core::admission::MAX_CONCURRENT_UPGRADES;

    // One test only: the gate is process-wide, and tests run in parallel.
    #[test]
    fn one_per_named_peer_a_cooldown_after_a_failure_and_a_cap_on_all() {
        let alice = Some(name_digest(b"alice"));
        let first = admit(alice).unwrap();
        assert_eq!(admit(alice).err(), Some(Refusal::AlreadyRunning));
        first.finish(false);
        assert_eq!(admit(alice).err(), Some(Refusal::CoolingDown));

        let cancelled = admit(Some([7; 32])).unwrap();
        drop(cancelled);
        let again = admit(Some([7; 32])).expect("a cancelled upgrade starts no cooldown");
        again.finish(true);

        let before = running_upgrades();
        let mut held = Vec::new();
        while let Ok(ticket) = admit(None) {
            held.push(ticket);
            assert!(held.len() <= MAX_CONCURRENT_UPGRADES);
        }
        assert_eq!(held.len(), MAX_CONCURRENT_UPGRADES - before);
        assert_eq!(admit(None).err(), Some(Refusal::TooManyUpgrades));
        held.pop();
        assert!(admit(None).is_ok(), "a finished upgrade frees its slot");
    }
}
