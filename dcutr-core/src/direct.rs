//! Direct connections and dials in flight, and the identity check that
//! runs first on each of them.
//!
//! ## Pinned TLS
//! In the dcutr-rs session
//! ([`UpgradeBuilder::dcutr_session`](crate::UpgradeBuilder::dcutr_session)) each
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
//! The bearer token of wire v1 (an echo of a token from the `Hello` as
//! the first bytes on a direct connection) is gone since v3: it was sent
//! in clear to whoever answered at an advertised address, who could replay
//! it and sit in the middle.
//!
//! The server (the initiator in a hole punch, the responder in a
//! unilateral dial) picks the first authenticated connection and marks it
//! with the select byte; the client takes the connection that carries it.
//! Both sides thus keep the same one when several connections form.

use std::net::SocketAddr;
use std::time::Instant;

use crate::addr::Candidate;
use crate::codec::FINGERPRINT_LEN;
use crate::output::{DialPurpose, DirectId, Role};

/// The byte with which the server marks the connection it keeps.
pub(crate) const SELECT: u8 = 0x01;

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

    /// How many more bytes this connection may deliver to the core (the
    /// select byte).
    pub fn bytes_wanted(&self) -> usize {
        match self.state {
            DirectState::AwaitingSelect => 1,
            DirectState::Dialing
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
