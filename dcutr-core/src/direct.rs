//! Direct connections and dials in flight, and the token identity check
//! that runs first on each of them.
//!
//! With [`IdentityCheck::Token`](crate::IdentityCheck::Token) the first
//! bytes on a direct connection are a fixed-size check message:
//!
//! ```text
//! client -> server: "dcutr/c1" || server's token   (24 bytes)
//! server -> client: "dcutr/s1" || client's token   (24 bytes)
//! ```
//!
//! Each side learned the other's token from the `Hello` frame on the
//! relayed stream, so a stranger on the punch port cannot produce it. The
//! server answers only the first valid client on any connection, which
//! makes both sides pick the same winner when several connections form.

use std::net::SocketAddr;
use std::time::Instant;

use crate::addr::Candidate;
use crate::codec::TOKEN_LEN;
use crate::output::{DialPurpose, DirectId, Role};

/// Length of each identity-check message on a direct connection.
pub const CHECK_LEN: usize = 8 + TOKEN_LEN;

const CLIENT_MAGIC: &[u8; 8] = b"dcutr/c1";
const SERVER_MAGIC: &[u8; 8] = b"dcutr/s1";

/// The check message the side with `role` sends, carrying the peer's token.
#[must_use]
pub(crate) fn check_message(role: Role, peer_token: &[u8; TOKEN_LEN]) -> [u8; CHECK_LEN] {
    let magic = match role {
        Role::Client => CLIENT_MAGIC,
        Role::Server => SERVER_MAGIC,
    };
    let mut out = [0u8; CHECK_LEN];
    out[..8].copy_from_slice(magic);
    out[8..].copy_from_slice(peer_token);
    out
}

/// Whether `received` is the check message that the peer of a side with
/// `our_role` must send us, carrying our own token. Compares every byte so
/// the time taken does not depend on where a mismatch is.
#[must_use]
pub(crate) fn check_is_valid(
    our_role: Role,
    own_token: &[u8; TOKEN_LEN],
    received: &[u8; CHECK_LEN],
) -> bool {
    let peer_role = match our_role {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    };
    let expected = check_message(peer_role, own_token);
    expected
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
    /// Connected; the peer's check message is arriving.
    Checking {
        received: [u8; CHECK_LEN],
        len: usize,
    },
    /// Server: the client's check passed, but the peer's `Hello` (and so
    /// the token for our answer) has not arrived yet.
    AwaitingPeerToken,
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
            DirectState::Dialing | DirectState::AwaitingPeerToken => 0,
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
    fn the_check_accepts_only_our_own_token_from_the_other_role() {
        let ours = [1u8; TOKEN_LEN];
        let theirs = [2u8; TOKEN_LEN];
        // The client sends the server's token; the server checks it.
        let from_client = check_message(Role::Client, &ours);
        assert!(check_is_valid(Role::Server, &ours, &from_client));
        assert!(!check_is_valid(Role::Server, &theirs, &from_client));
        // A client message is never a valid server answer.
        assert!(!check_is_valid(Role::Client, &ours, &from_client));
        let from_server = check_message(Role::Server, &ours);
        assert!(check_is_valid(Role::Client, &ours, &from_server));
        let mut tampered = from_server;
        tampered[CHECK_LEN - 1] ^= 1;
        assert!(!check_is_valid(Role::Client, &ours, &tampered));
    }
}
