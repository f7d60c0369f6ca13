//! The dcutr-rs session layer: what two dcutr-rs peers add to the spec.
//!
//! A stock libp2p peer only ever meets the spec's DCUtR: a stream per
//! attempt carrying `Connect` and `Sync`, and a direct connection that the
//! caller authenticates. Built with [`UpgradeBuilder::dcutr_session`]
//! (standalone adapters, dcutr-rs on both ends) an upgrade also runs a
//! session handshake, held here:
//!
//! 1. Each side's first frame on the shared relayed stream is a `Hello`:
//!    its wire version, its side, its attempt limit and the SHA-256
//!    fingerprint of the certificate it will present on direct
//!    connections.
//! 2. A `Hello` of another version, or one from the same side as ours, is
//!    a typed error on both ends ([`CodecError::UnsupportedHelloVersion`],
//!    [`ProtocolError::SameSide`]), at the first frame rather than
//!    mid-upgrade: two initiators no longer both report an upgrade, two
//!    responders no longer wait for each other.
//! 3. Both sides stop after the smaller attempt limit, so that neither
//!    writes into a stream the other has handed back to the application.
//! 4. A direct connection is kept only if its TLS handshake proves the
//!    certificate pinned by the peer's `Hello` ([`Handshake::pin`]).
//!
//! All of this needs one relayed byte stream carrying every attempt, one
//! after the other ([`Extension`]): the orchestrator then opens no stream
//! per attempt, and a protocol error ends the whole upgrade, since the
//! framing can no longer be trusted.
//!
//! This is a crate-private part of [`Upgrade`], not a
//! wrapper around it: the pin decides which direct connection the
//! orchestrator may keep, and the attempt limit bounds the attempts it
//! starts, so the two share the orchestrator's state. Whether an upgrade
//! runs the extension is decided once, by the builder call at the start
//! ([`UpgradeBuilder::dcutr_session`], or
//! [`UpgradeBuilder::dcutr_session_unpinned`] for the shared stream
//! alone); the orchestrator then asks its [`Extension`] (crate-private
//! hooks). [`Config`](crate::Config) holds only the spec's parameters. An
//! upgrade without a session runs exactly the spec.
//! The extension's inputs (`handle_direct_authenticated`,
//! `handle_direct_handshake_failed`, `handle_direct_data`), its getters
//! and its handling of the peer's `Hello` are the `impl Upgrade` block of
//! this module, as the roles' exchanges are those of `initiator.rs` and
//! `responder.rs`.
//!
//! # Wire format (session version [`HELLO_VERSION`] = 3)
//!
//! One frame, framed like every DCUtR message: an unsigned-varint length,
//! then a protobuf message (`Hello`, see `proto/` and
//! `wire::Hello` under the `internals` feature). An
//! initiator with an attempt limit of 3 sends 42 bytes:
//!
//! ```text
//!  offset  bytes            meaning
//!  0       28               frame length: 40 bytes follow
//!  1       10 03            field 2 (max_attempts, varint) = 3
//!  3       18 01            field 3 (side, varint) = 1 initiator, 2 responder
//!  5       22 20 <32 B>     field 4 (fingerprint, bytes) = SHA-256 of the DER certificate
//!  39      28 03            field 5 (version, varint) = 3
//! ```
//!
//! Field 1 (a bearer token, versions 1 and 2) is no longer sent and is
//! skipped if received. Unknown fields are skipped, as protobuf does.
//!
//! [`UpgradeBuilder::dcutr_session`]: crate::UpgradeBuilder::dcutr_session
//! [`UpgradeBuilder::dcutr_session_unpinned`]: crate::UpgradeBuilder::dcutr_session_unpinned
//! [`CodecError::UnsupportedHelloVersion`]: crate::reason::CodecError::UnsupportedHelloVersion
//! [`ProtocolError::SameSide`]: crate::ProtocolError::SameSide
//! [`HELLO_VERSION`]: crate::settings::HELLO_VERSION

use std::time::Instant;

use bytes::Bytes;

use crate::codec::{self, FINGERPRINT_LEN};
use crate::direct::{self, DirectState};
use crate::error::ProtocolError;
use crate::output::{DirectId, DirectRejection, Event, Output, Role, Side, TimerKind};
use crate::upgrade::{State, Upgrade};

// Only for the links in the docs of the methods below.
#[cfg(doc)]
use crate::UpgradeBuilder;

/// The dcutr-rs extension an upgrade runs under, decided once, at its
/// start, by the builder: the orchestrator asks this. An upgrade
/// without one runs exactly the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Extension {
    /// The session handshake, when dcutr-rs checks who is at the other end
    /// of a direct connection (pinned TLS); `None` when the caller's own
    /// handshake does.
    pub(crate) handshake: Option<Handshake>,
}

/// A certificate fingerprint: SHA-256 of a DER certificate.
pub(crate) type Fingerprint = [u8; FINGERPRINT_LEN];

/// The session the builder was asked for
/// ([`UpgradeBuilder::dcutr_session`](crate::UpgradeBuilder::dcutr_session),
/// [`UpgradeBuilder::dcutr_session_unpinned`](crate::UpgradeBuilder::dcutr_session_unpinned)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Requested {
    /// The whole session: the `Hello` pinning our certificate, whose
    /// fingerprint this is.
    Pinned(Fingerprint),
    /// Only the shared stream: the caller authenticates direct
    /// connections.
    Unpinned,
}

impl Extension {
    /// The extension `side` runs for `requested`, offering `max_attempts`.
    pub(crate) fn new(requested: Requested, side: Side, max_attempts: u8) -> Self {
        let handshake = match requested {
            Requested::Pinned(fingerprint) => Some(Handshake::new(side, max_attempts, fingerprint)),
            Requested::Unpinned => None,
        };
        Extension { handshake }
    }
}

/// What the pin says of a certificate a direct connection presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pin {
    /// It is the one the peer's `Hello` pinned.
    Matches,
    /// It is another one: whoever is at the other end is not the peer.
    Mismatch,
    /// The peer's `Hello` has not arrived yet: judge it when it does.
    Unknown,
}

/// The session handshake of one upgrade: our `Hello`, and what the
/// peer's said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Handshake {
    side: Side,
    max_attempts: u8,
    own_fingerprint: Fingerprint,
    peer_fingerprint: Option<Fingerprint>,
}

impl Handshake {
    /// The handshake of `side`, offering `max_attempts` and the
    /// certificate whose fingerprint is `own_fingerprint`.
    pub(crate) fn new(side: Side, max_attempts: u8, own_fingerprint: Fingerprint) -> Self {
        Handshake {
            side,
            max_attempts,
            own_fingerprint,
            peer_fingerprint: None,
        }
    }

    /// Our `Hello` frame, the first bytes we write on the relayed stream.
    pub(crate) fn hello(&self) -> Bytes {
        codec::encode_hello(self.max_attempts, self.side, &self.own_fingerprint)
    }

    /// Whether the peer's `Hello` is still to come: then it is the next
    /// frame on the relayed stream.
    pub(crate) fn is_due(&self) -> bool {
        self.peer_fingerprint.is_none()
    }

    /// The peer's `Hello` frame (its payload) arrived. Returns the attempt
    /// limit both sides keep: the smaller of the two (at least 1).
    ///
    /// # Errors
    /// [`ProtocolError::Codec`] for a frame that is no `Hello` of our
    /// version or carries no fingerprint, [`ProtocolError::SameSide`] when
    /// the peer is on our side.
    pub(crate) fn receive(&mut self, payload: &[u8]) -> Result<u8, ProtocolError> {
        let hello = codec::decode_hello(payload)?;
        if hello.side == Some(self.side) {
            return Err(ProtocolError::SameSide { ours: self.side });
        }
        self.peer_fingerprint = Some(hello.fingerprint);
        let agreed = match hello.max_attempts {
            Some(peer) => {
                let peer = u8::try_from(peer.max(1)).unwrap_or(u8::MAX);
                self.max_attempts.min(peer)
            }
            None => self.max_attempts,
        };
        Ok(agreed)
    }

    /// The fingerprint the peer's `Hello` pinned, once it arrived.
    pub(crate) fn peer_fingerprint(&self) -> Option<Fingerprint> {
        self.peer_fingerprint
    }

    /// What the pin says of `presented`.
    pub(crate) fn pin(&self, presented: Fingerprint) -> Pin {
        match self.peer_fingerprint {
            Some(pinned) if pinned == presented => Pin::Matches,
            Some(_) => Pin::Mismatch,
            None => Pin::Unknown,
        }
    }
}

/// The session extension's part of the orchestrator: its inputs (the
/// pinned-TLS handshake results, the select byte), the peer's `Hello`, and
/// the hooks the rest of [`Upgrade`] asks instead of the config's modes.
impl Upgrade {
    /// Bytes arrived on direct connection `id`: the server's select byte,
    /// on the client, under the pinned session ([`UpgradeBuilder::dcutr_session`]). Anything else
    /// (more bytes, or bytes the core did not ask for with
    /// [`Upgrade::direct_bytes_wanted`]) rejects the connection.
    pub fn handle_direct_data(&mut self, now: Instant, id: DirectId, data: &[u8]) {
        self.advance(now);
        if data.is_empty() {
            return;
        }
        let Some(d) = self.directs.get(id) else {
            return;
        };
        if d.state == DirectState::AwaitingSelect && data == [direct::SELECT] {
            self.win(id);
        } else {
            self.reject(id, DirectRejection::Oversized);
        }
    }

    /// In the pinned session ([`UpgradeBuilder::dcutr_session`]): the TLS handshake on direct connection
    /// `id` completed, and the other end proved it holds the certificate
    /// whose SHA-256 is `fingerprint`. The connection goes on only if that
    /// is the fingerprint from the peer's `Hello` (once it has arrived);
    /// otherwise it is rejected with [`DirectRejection::IdentityMismatch`].
    pub fn handle_direct_authenticated(
        &mut self,
        now: Instant,
        id: DirectId,
        fingerprint: [u8; FINGERPRINT_LEN],
    ) {
        self.advance(now);
        match self.directs.get(id).map(|d| d.state) {
            Some(DirectState::Handshaking) => self.peer_certificate(id, fingerprint),
            _ => tracing::trace!(%id, "handshake result for no handshake in progress"),
        }
    }

    /// In the pinned session ([`UpgradeBuilder::dcutr_session`]): the TLS handshake on direct connection
    /// `id` failed. `presented` is the fingerprint of the certificate the
    /// other end presented, if it got that far: a certificate other than
    /// the pinned one is [`DirectRejection::IdentityMismatch`], anything
    /// else [`DirectRejection::HandshakeFailed`].
    pub fn handle_direct_handshake_failed(
        &mut self,
        now: Instant,
        id: DirectId,
        presented: Option<[u8; FINGERPRINT_LEN]>,
    ) {
        self.advance(now);
        if self.directs.get(id).is_none() {
            return;
        }
        let mismatch = match (presented, self.handshake()) {
            (Some(p), Some(handshake)) => handshake.pin(p) == Pin::Mismatch,
            _ => false,
        };
        let reason = if mismatch {
            DirectRejection::IdentityMismatch
        } else {
            DirectRejection::HandshakeFailed
        };
        self.reject(id, reason);
    }

    /// In the pinned session ([`UpgradeBuilder::dcutr_session`]): the fingerprint of the peer's
    /// certificate, from its `Hello`, once that arrived. A carrier pins it
    /// in its TLS verifiers; before it is known, it reports whatever
    /// certificate a handshake presents and the core compares later.
    #[must_use]
    pub fn peer_fingerprint(&self) -> Option<[u8; FINGERPRINT_LEN]> {
        self.handshake().and_then(Handshake::peer_fingerprint)
    }

    /// Our role on direct connection `id` while it is being set up or
    /// checked: under the pinned session ([`UpgradeBuilder::dcutr_session`]) the carrier takes the
    /// TLS client's part where this is [`Role::Client`].
    #[must_use]
    pub fn direct_role(&self, id: DirectId) -> Option<Role> {
        self.directs.get(id).map(|d| d.role)
    }

    /// Whether dcutr-rs checks identities on direct connections (pinned
    /// TLS): a `Hello` opens the stream and both sides agree on the
    /// connection they keep.
    pub(crate) fn checks_identity(&self) -> bool {
        self.handshake().is_some()
    }

    /// Whether one relayed byte stream carries every attempt (the dcutr-rs
    /// extension), rather than a stream per attempt (the spec).
    pub(crate) fn on_shared_stream(&self) -> bool {
        self.extension.is_some()
    }

    /// The session handshake, under pinned TLS.
    pub(crate) fn handshake(&self) -> Option<&Handshake> {
        self.extension.as_ref()?.handshake.as_ref()
    }

    /// Whether the peer's `Hello` is still due: it is the first frame of
    /// the stream when identities are checked.
    pub(crate) fn hello_due(&self) -> bool {
        self.handshake().is_some_and(Handshake::is_due)
            && !matches!(self.state, State::Draining { .. } | State::Done(_))
    }

    /// The peer's `Hello` (its frame's payload) arrived: the session
    /// handshake checks it, then the attempts start.
    pub(crate) fn on_hello(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        let Some(session) = self.extension.as_mut().and_then(|e| e.handshake.as_mut()) else {
            // Only a session expects a Hello.
            return Err(ProtocolError::TrailingBytes { len: payload.len() });
        };
        // A shared stream must end after the same attempt on both sides.
        self.max_attempts = self.max_attempts.min(session.receive(payload)?);
        self.outputs.push_back(Output::Event(Event::HelloReceived));
        // Handshakes that completed before the pin arrived are judged now.
        let handshaken: Vec<(DirectId, [u8; FINGERPRINT_LEN])> = self
            .directs
            .iter()
            .filter_map(|d| match d.state {
                DirectState::AwaitingPeerFingerprint { presented } => Some((d.id, presented)),
                _ => None,
            })
            .collect();
        for (id, presented) in handshaken {
            self.peer_certificate(id, presented);
            if self.outcome().is_some() {
                return Ok(());
            }
        }
        if self.state == State::AwaitHello {
            self.timers.clear(TimerKind::StepTimeout);
            self.begin();
        }
        Ok(())
    }

    /// Pinned TLS: the other end of `id` proved it holds the certificate
    /// `presented`; keep it if that is the peer's.
    fn peer_certificate(&mut self, id: DirectId, presented: [u8; FINGERPRINT_LEN]) {
        let pin = self.handshake().map_or(Pin::Unknown, |h| h.pin(presented));
        match pin {
            Pin::Matches => self.after_checks(id),
            Pin::Mismatch => self.reject(id, DirectRejection::IdentityMismatch),
            Pin::Unknown => {
                if let Some(d) = self.directs.get_mut(id) {
                    d.state = DirectState::AwaitingPeerFingerprint { presented };
                }
            }
        }
    }

    /// Both checks are done on `id`: the server selects it, the client
    /// waits for the selection.
    fn after_checks(&mut self, id: DirectId) {
        let Some(d) = self.directs.get_mut(id) else {
            return;
        };
        match d.role {
            Role::Server => {
                self.outputs.push_back(Output::WriteDirect {
                    id,
                    data: Bytes::from_static(&[direct::SELECT]),
                });
                self.win(id);
            }
            Role::Client => d.state = DirectState::AwaitingSelect,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{CodecError, FrameDecoder, Hello};
    use prost::Message;

    const OURS: Fingerprint = [0xaa; FINGERPRINT_LEN];
    const THEIRS: Fingerprint = [0xbb; FINGERPRINT_LEN];

    /// The payload of `frame`, without its length prefix.
    fn payload(frame: &[u8]) -> Vec<u8> {
        let mut input = frame;
        let mut decoder = FrameDecoder::new(4096);
        decoder
            .decode(&mut input)
            .expect("a valid frame")
            .expect("a whole frame")
            .to_vec()
    }

    fn hello_from(side: Side, max_attempts: u8) -> Vec<u8> {
        payload(&Handshake::new(side, max_attempts, THEIRS).hello())
    }

    #[test]
    fn the_hello_is_the_documented_42_bytes() {
        let frame = Handshake::new(Side::Initiator, 3, OURS).hello();
        let mut want = vec![0x28, 0x10, 0x03, 0x18, 0x01, 0x22, 0x20];
        want.extend_from_slice(&OURS);
        want.extend_from_slice(&[0x28, 0x03]);
        assert_eq!(frame.as_ref(), want.as_slice());
        let responder = Handshake::new(Side::Responder, 3, OURS).hello();
        assert_eq!(responder[4], 0x02, "side 2 for a responder");
    }

    #[test]
    fn a_hello_from_the_other_side_pins_its_fingerprint_and_the_smaller_limit() {
        let mut ours = Handshake::new(Side::Initiator, 3, OURS);
        assert!(ours.is_due());
        assert_eq!(ours.pin(THEIRS), Pin::Unknown);
        assert_eq!(ours.receive(&hello_from(Side::Responder, 2)), Ok(2));
        assert!(!ours.is_due());
        assert_eq!(ours.peer_fingerprint(), Some(THEIRS));
        assert_eq!(ours.pin(THEIRS), Pin::Matches);
        assert_eq!(ours.pin(OURS), Pin::Mismatch);
    }

    #[test]
    fn a_larger_or_zero_peer_limit_keeps_ours_or_one() {
        let mut ours = Handshake::new(Side::Responder, 3, OURS);
        assert_eq!(ours.receive(&hello_from(Side::Initiator, 9)), Ok(3));
        let mut ours = Handshake::new(Side::Responder, 3, OURS);
        assert_eq!(ours.receive(&hello_from(Side::Initiator, 0)), Ok(1));
    }

    #[test]
    fn a_hello_from_our_own_side_is_same_side_for_either_side() {
        for side in [Side::Initiator, Side::Responder] {
            let mut ours = Handshake::new(side, 3, OURS);
            assert_eq!(
                ours.receive(&hello_from(side, 3)),
                Err(ProtocolError::SameSide { ours: side })
            );
            assert!(ours.is_due(), "nothing is pinned from a refused Hello");
        }
    }

    #[test]
    fn a_hello_of_another_version_is_refused_with_that_version() {
        let mut old = Hello::decode(&hello_from(Side::Responder, 3)[..]).unwrap();
        old.version = Some(2);
        let mut ours = Handshake::new(Side::Initiator, 3, OURS);
        assert_eq!(
            ours.receive(&old.encode_to_vec()),
            Err(ProtocolError::Codec(CodecError::UnsupportedHelloVersion {
                version: Some(2)
            }))
        );
        assert_eq!(ours.peer_fingerprint(), None);
    }
}
