//! Direct connections and dials in flight, and the identity check that
//! runs first on each of them.
//!
//! ## Pinned TLS
//! With [`IdentityCheck::PinnedTls`](crate::settings::IdentityCheck::PinnedTls) each
//! side learned the SHA-256 fingerprint of the other's certificate from the
//! `Hello` frame on the relayed stream. On a direct connection the carrier
//! runs a mutual TLS 1.3 handshake (the core's client is the TLS client)
//! and reports the fingerprint of the certificate the other end proved it
//! holds. The core keeps the connection only if that fingerprint is the
//! one from the peer's `Hello`; a connection that completes its handshake
//! before the `Hello` arrived waits for it. Inside TLS:
//!
//! ```text
//! server:     0x01 "selected"                     (1 byte, on the winner only)
//! ```
//!
//! Nothing of the relayed exchange is ever sent on a direct connection, so
//! a host at an address the peer advertised learns nothing it could replay,
//! and it cannot finish a handshake as the peer without the peer's key.
//!
//! ## Token (v1)
//! With [`IdentityCheck::Token`](crate::settings::IdentityCheck::Token) each side
//! learned the other's random token from the `Hello` frame on the relayed
//! stream. The first bytes on a direct connection are:
//!
//! ```text
//! each side:  "dcutr/v1" || the peer's token      (CHECK_LEN = 24 bytes)
//! server:     0x01 "selected"                     (1 byte, on the winner only)
//! ```
//!
//! * On a connection **we dialled** (to an address the peer named) we send
//!   our check at once; on an **inbound** connection we send ours only
//!   after the other end's check proved it knows our token. A stranger who
//!   connects to us therefore learns nothing it could replay elsewhere.
//! * The server (the initiator in a hole punch, the responder in a
//!   unilateral dial) picks the first verified connection and marks it
//!   with the select byte; the client takes the connection that carries
//!   it. Both sides thus keep the same one when several connections form.

use std::net::SocketAddr;
use std::time::Instant;

use crate::addr::Candidate;
use crate::codec::{FINGERPRINT_LEN, TOKEN_LEN};
use crate::output::{DialPurpose, DirectId, Role};

/// Length of the token check message on a direct connection
/// ([`IdentityCheck::Token`](crate::settings::IdentityCheck::Token) only).
pub const CHECK_LEN: usize = 8 + TOKEN_LEN;

/// The byte with which the server marks the connection it keeps.
pub(crate) const SELECT: u8 = 0x01;

const MAGIC: &[u8; 8] = b"dcutr/v1";

/// The check message that proves we know `peer_token`.
#[must_use]
pub(crate) fn check_message(peer_token: &[u8; TOKEN_LEN]) -> [u8; CHECK_LEN] {
    let mut out = [0u8; CHECK_LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..].copy_from_slice(peer_token);
    out
}

/// Whether `received` proves knowledge of our own token. Compares every
/// byte, so the time taken does not depend on where a mismatch is.
#[must_use]
pub(crate) fn check_is_valid(own_token: &[u8; TOKEN_LEN], received: &[u8; CHECK_LEN]) -> bool {
    check_message(own_token)
        .iter()
        .zip(received)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

/// Where a direct connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Dial(DialPurpose),
    Inbound,
}

/// The life of one direct connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DirectState {
    /// Our dial is in flight.
    Dialing,
    /// Pinned TLS: connected; the carrier's TLS handshake is running.
    Handshaking,
    /// Pinned TLS: the handshake completed with a certificate of this
    /// fingerprint before the peer's `Hello` (and so its pin) arrived.
    AwaitingPeerFingerprint { presented: [u8; FINGERPRINT_LEN] },
    /// Connected; the peer's check message is arriving. `sent` tells
    /// whether ours went out already.
    Checking {
        received: [u8; CHECK_LEN],
        len: usize,
        sent: bool,
    },
    /// Inbound: the peer's check passed, but its `Hello` (and so the token
    /// for our answer) has not arrived yet.
    AwaitingPeerToken,
    /// Client: both checks done; waiting for the server's select byte.
    AwaitingSelect,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Direct {
    pub id: DirectId,
    pub to: Candidate,
    pub role: Role,
    pub origin: Origin,
    pub attempt: u8,
    pub state: DirectState,
    pub deadline: Instant,
}

impl Direct {
    pub fn remote(&self) -> SocketAddr {
        self.to.addr
    }

    pub fn is_dialing(&self) -> bool {
        self.state == DirectState::Dialing
    }

    /// How many more check bytes this connection may deliver.
    pub fn bytes_wanted(&self) -> usize {
        match self.state {
            DirectState::Checking { len, .. } => CHECK_LEN - len,
            DirectState::AwaitingSelect => 1,
            DirectState::Dialing
            | DirectState::AwaitingPeerToken
            | DirectState::Handshaking
            | DirectState::AwaitingPeerFingerprint { .. } => 0,
        }
    }
}

/// The direct connections of one upgrade, in creation order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Directs {
    list: Vec<Direct>,
    next_id: u64,
}

impl Directs {
    pub fn insert(
        &mut self,
        to: Candidate,
        role: Role,
        origin: Origin,
        attempt: u8,
        state: DirectState,
        deadline: Instant,
    ) -> DirectId {
        let id = DirectId(self.next_id);
        self.next_id += 1;
        self.list.push(Direct {
            id,
            to,
            role,
            origin,
            attempt,
            state,
            deadline,
        });
        id
    }

    pub fn get(&self, id: DirectId) -> Option<&Direct> {
        self.list.iter().find(|d| d.id == id)
    }

    pub fn get_mut(&mut self, id: DirectId) -> Option<&mut Direct> {
        self.list.iter_mut().find(|d| d.id == id)
    }

    pub fn remove(&mut self, id: DirectId) -> Option<Direct> {
        let pos = self.list.iter().position(|d| d.id == id)?;
        Some(self.list.remove(pos))
    }

    /// Removes and returns every connection that `pred` selects.
    pub fn drain_where(&mut self, mut pred: impl FnMut(&Direct) -> bool) -> Vec<Direct> {
        let mut taken = Vec::new();
        self.list.retain(|d| {
            if pred(d) {
                taken.push(d.clone());
                false
            } else {
                true
            }
        });
        taken
    }

    pub fn iter(&self) -> impl Iterator<Item = &Direct> {
        self.list.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Heap bytes held by the table.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn heap_bytes(&self) -> usize {
        self.list.capacity() * std::mem::size_of::<Direct>()
    }

    pub fn pending_inbound(&self) -> usize {
        self.list
            .iter()
            .filter(|d| d.origin == Origin::Inbound)
            .count()
    }

    /// The earliest deadline of any connection.
    pub fn earliest_deadline(&self) -> Option<Instant> {
        self.list.iter().map(|d| d.deadline).min()
    }

    /// The id of the first connection whose deadline has passed.
    pub fn first_expired(&self, now: Instant) -> Option<DirectId> {
        self.list.iter().find(|d| d.deadline <= now).map(|d| d.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_accepts_only_our_own_token() {
        let ours = [1u8; TOKEN_LEN];
        let theirs = [2u8; TOKEN_LEN];
        // The peer proves it knows our token.
        let from_peer = check_message(&ours);
        assert!(check_is_valid(&ours, &from_peer));
        assert!(!check_is_valid(&theirs, &from_peer));
        let mut tampered = from_peer;
        tampered[CHECK_LEN - 1] ^= 1;
        assert!(!check_is_valid(&ours, &tampered));
        let mut wrong_magic = from_peer;
        wrong_magic[0] ^= 1;
        assert!(!check_is_valid(&ours, &wrong_magic));
    }
}
