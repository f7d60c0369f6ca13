//! The wire format: the `HolePunch` protobuf and its length-prefixed framing.
//!
//! Each message on a `/libp2p/dcutr` stream is an unsigned-varint length
//! followed by that many bytes of a proto2 `HolePunch` message
//! (`proto/holepunch.proto`). [`FrameDecoder`] reassembles frames from
//! input in any chunking and refuses an oversized frame as soon as its
//! length prefix is complete, before a single payload byte is buffered.

use bytes::{Bytes, BytesMut};
use prost::Message as _;

/// Largest frame payload the specification allows (4 KiB).
///
/// Connect carries a handful of multiaddrs of at most a few dozen bytes
/// each, so 4 KiB is ample for honest peers and caps what a hostile one can
/// make us buffer.
pub const MAX_MESSAGE_SIZE: usize = 4096;

/// Length in bytes of a certificate fingerprint in a `Hello` frame: a
/// SHA-256 digest of the DER certificate.
pub const FINGERPRINT_LEN: usize = 32;

/// The longest unsigned varint that [`unsigned_varint`] accepts for a `u64`.
pub const MAX_PREFIX_LEN: usize = 9;

/// The `HolePunch` message of the specification.
///
/// `type` is `required` in the schema; prost would silently default a
/// missing required field, so it is modelled as optional here and a missing
/// type becomes [`CodecError::MissingType`]. The wire encoding of a present
/// optional field and a required field is identical.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HolePunch {
    /// The message type, a [`MessageType`] value.
    #[prost(enumeration = "MessageType", optional, tag = "1")]
    pub r#type: Option<i32>,
    /// Binary multiaddrs the sender was observed at (or predicts).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub obs_addrs: Vec<Vec<u8>>,
    /// dcutr-rs extension, in a Connect only: the sender's NAT behaviour.
    /// Tag 100 is far from the spec's fields, and implementations that
    /// do not know it skip it (protobuf's rule for unknown fields); it is
    /// sent only when the caller set a behaviour, so a default Connect's
    /// bytes are the spec's.
    #[prost(message, optional, tag = "100")]
    pub nat: Option<NatWire>,
}

/// A NAT behaviour on the wire (see [`HolePunch::nat`]). Unknown values
/// read as "unknown".
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct NatWire {
    /// 1 endpoint-independent, 2 endpoint-dependent.
    #[prost(uint32, optional, tag = "1")]
    pub mapping: Option<u32>,
    /// 1 preserving, 2 sequential (with `delta`), 3 random.
    #[prost(uint32, optional, tag = "2")]
    pub allocation: Option<u32>,
    /// The port step of a sequential allocation.
    #[prost(sint32, optional, tag = "3")]
    pub delta: Option<i32>,
    /// 1 endpoint-independent, 2 address-dependent, 3 address-and-port
    /// dependent.
    #[prost(uint32, optional, tag = "4")]
    pub filtering: Option<u32>,
}

impl NatWire {
    /// The wire form of `b`.
    #[must_use]
    pub fn from_behaviour(b: &crate::nat::NatBehaviour) -> Self {
        use crate::nat::{Allocation, Filtering, Mapping};
        let mapping = match b.mapping {
            Mapping::EndpointIndependent => Some(1),
            Mapping::EndpointDependent => Some(2),
            _ => None,
        };
        let (allocation, delta) = match b.allocation {
            Allocation::Preserving => (Some(1), None),
            Allocation::Sequential { delta } => (Some(2), Some(delta)),
            Allocation::Random => (Some(3), None),
            _ => (None, None),
        };
        let filtering = match b.filtering {
            Filtering::EndpointIndependent => Some(1),
            Filtering::AddressDependent => Some(2),
            Filtering::AddressAndPortDependent => Some(3),
            _ => None,
        };
        NatWire {
            mapping,
            allocation,
            delta,
            filtering,
        }
    }

    /// The behaviour it declares (with no evidence).
    #[must_use]
    pub fn to_behaviour(self) -> crate::nat::NatBehaviour {
        use crate::nat::{Allocation, Filtering, Mapping, NatBehaviour};
        let mapping = match self.mapping {
            Some(1) => Mapping::EndpointIndependent,
            Some(2) => Mapping::EndpointDependent,
            _ => Mapping::Unknown,
        };
        let allocation = match (self.allocation, self.delta) {
            (Some(1), _) => Allocation::Preserving,
            (Some(2), Some(delta)) if delta != 0 => Allocation::Sequential { delta },
            (Some(3), _) => Allocation::Random,
            _ => Allocation::Unknown,
        };
        let filtering = match self.filtering {
            Some(1) => Filtering::EndpointIndependent,
            Some(2) => Filtering::AddressDependent,
            Some(3) => Filtering::AddressAndPortDependent,
            _ => Filtering::Unknown,
        };
        let unspecified = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
        NatBehaviour::declared(mapping, allocation, filtering, unspecified)
    }
}

/// `HolePunch.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MessageType {
    /// Carries the sender's addresses; sent by both sides.
    Connect = 100,
    /// Sent by the initiator once it has measured the round trip.
    Sync = 300,
}

/// The dcutr-rs session wire version: what a `Hello` frame carries in
/// its `version` field, and the only one this decoder accepts.
pub const HELLO_VERSION: u32 = 3;

/// The dcutr-rs `Hello` frame (not in the libp2p specification), the first
/// frame of a shared relayed stream when the core checks identities
/// ([`UpgradeBuilder::dcutr_session`](crate::UpgradeBuilder::dcutr_session)).
///
/// # Wire versions
///
/// | tag | field          | since | meaning                                        |
/// |-----|----------------|-------|------------------------------------------------|
/// | 1   | (`token`)      | v1–v2 | no longer sent; skipped if received            |
/// | 2   | `max_attempts` | v1    | the sender's attempt limit                     |
/// | 3   | `side`         | v1.1  | initiator (1) or responder (2)                 |
/// | 4   | `fingerprint`  | v2    | SHA-256 of the sender's TLS certificate        |
/// | 5   | `version`      | v3    | [`HELLO_VERSION`]                              |
///
/// v3 dropped the bearer token of v1 (pinned TLS proves the peer on
/// direct connections since v2), so a v2 peer refuses a v3 `Hello` for
/// its missing token, and a v3 peer refuses a v2 one
/// ([`CodecError::UnsupportedHelloVersion`]): both fail at the first
/// frame rather than mid-upgrade.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// The sender's [`Config::max_attempts`](crate::Config::max_attempts):
    /// on a shared stream both sides must stop after the same attempt, or
    /// the one that goes on writes into a stream the other has handed back
    /// to the application. Both use the smaller limit.
    #[prost(uint32, optional, tag = "2")]
    pub max_attempts: Option<u32>,
    /// The sender's side: [`SIDE_INITIATOR`] or [`SIDE_RESPONDER`]. Two
    /// ends on the same side is a typed error on both.
    #[prost(uint32, optional, tag = "3")]
    pub side: Option<u32>,
    /// SHA-256 of the DER certificate the sender will present on direct
    /// connections (exactly [`FINGERPRINT_LEN`] bytes).
    #[prost(bytes = "vec", optional, tag = "4")]
    pub fingerprint: Option<Vec<u8>>,
    /// The sender's wire version, [`HELLO_VERSION`].
    #[prost(uint32, optional, tag = "5")]
    pub version: Option<u32>,
}

/// `Hello.side` of an initiator.
pub const SIDE_INITIATOR: u32 = 1;
/// `Hello.side` of a responder.
pub const SIDE_RESPONDER: u32 = 2;

/// A decoded `Hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloFrame {
    /// The sender's attempt limit, if it sent one.
    pub max_attempts: Option<u32>,
    /// The sender's side, if it sent a known one.
    pub side: Option<crate::Side>,
    /// The sender's certificate fingerprint.
    pub fingerprint: [u8; FINGERPRINT_LEN],
}

/// A decoded and type-checked `HolePunch` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// `CONNECT` with the raw `ObsAddrs` entries (not yet parsed or filtered).
    Connect(Vec<Vec<u8>>),
    /// `SYNC`. Addresses on a Sync carry no meaning and are ignored.
    Sync,
}

impl Message {
    /// The wire type of this message.
    #[must_use]
    pub fn kind(&self) -> MessageType {
        match self {
            Message::Connect(_) => MessageType::Connect,
            Message::Sync => MessageType::Sync,
        }
    }
}

/// Errors in the framing or the protobuf of a received message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The length prefix announced a frame above the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Length the peer announced.
        len: u64,
        /// The configured limit.
        max: usize,
    },
    /// The length prefix is not a valid minimal unsigned varint.
    #[error("invalid varint length prefix")]
    InvalidLengthPrefix,
    /// The payload is not a valid protobuf `HolePunch` (or `Hello`).
    #[error("undecodable protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The `type` field holds a value that is neither CONNECT nor SYNC.
    #[error("unknown message type {0}")]
    UnknownType(i32),
    /// The required `type` field is absent.
    #[error("message has no type")]
    MissingType,
    /// A `Hello` frame of another wire version than [`HELLO_VERSION`]
    /// (`None`: a peer before v3, which sends no version).
    #[error("hello frame of wire version {version:?}, expected {HELLO_VERSION}")]
    UnsupportedHelloVersion {
        /// The version received.
        version: Option<u32>,
    },
    /// A `Hello` frame whose fingerprint is not exactly
    /// [`FINGERPRINT_LEN`] bytes (0 when absent).
    #[error("hello frame carries a fingerprint of {len} bytes, expected {FINGERPRINT_LEN}")]
    BadFingerprint {
        /// Length of the fingerprint that was received (0 when absent).
        len: usize,
    },
}

/// Encodes a `CONNECT` frame with as many of `addrs` (binary multiaddrs,
/// in order) as fit into `max_message_size`; the rest are left out.
///
/// Returns the frame and the number of addresses it carries.
#[must_use]
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
pub fn encode_connect<'a, I>(addrs: I, max_message_size: usize) -> (Bytes, usize)
where
    I: IntoIterator<Item = &'a [u8]>,
{
    encode_connect_with(addrs, None, max_message_size)
}

/// Encodes a `CONNECT` frame as [`encode_connect`] does, with the
/// dcutr-rs NAT behaviour extension when `nat` is given.
pub fn encode_connect_with<'a, I>(
    addrs: I,
    nat: Option<NatWire>,
    max_message_size: usize,
) -> (Bytes, usize)
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut msg = HolePunch {
        r#type: Some(MessageType::Connect as i32),
        obs_addrs: Vec::new(),
        nat,
    };
    for addr in addrs {
        msg.obs_addrs.push(addr.to_vec());
        if msg.encoded_len() > max_message_size {
            msg.obs_addrs.pop();
            break;
        }
    }
    let count = msg.obs_addrs.len();
    (frame(&msg), count)
}

/// Encodes a `SYNC` frame.
#[must_use]
pub fn encode_sync() -> Bytes {
    frame(&HolePunch {
        r#type: Some(MessageType::Sync as i32),
        obs_addrs: Vec::new(),
        nat: None,
    })
}

/// Encodes a `Hello` frame: our attempt limit, side and certificate
/// fingerprint.
#[must_use]
pub fn encode_hello(
    max_attempts: u8,
    side: crate::Side,
    fingerprint: &[u8; FINGERPRINT_LEN],
) -> Bytes {
    let side = match side {
        crate::Side::Initiator => SIDE_INITIATOR,
        crate::Side::Responder => SIDE_RESPONDER,
    };
    frame(&Hello {
        max_attempts: Some(u32::from(max_attempts)),
        side: Some(side),
        fingerprint: Some(fingerprint.to_vec()),
        version: Some(HELLO_VERSION),
    })
}

fn frame(msg: &impl prost::Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(msg.encoded_len() + MAX_PREFIX_LEN);
    msg.encode_length_delimited(&mut buf)
        .expect("BytesMut grows on demand, so encoding cannot run out of space");
    buf.freeze()
}

/// Decodes one frame payload as a `HolePunch` message.
///
/// # Errors
/// [`CodecError::Protobuf`], [`CodecError::MissingType`] or
/// [`CodecError::UnknownType`].
pub fn decode_message(payload: &[u8]) -> Result<Message, CodecError> {
    let msg = HolePunch::decode(payload)?;
    let raw = msg.r#type.ok_or(CodecError::MissingType)?;
    match MessageType::try_from(raw) {
        Ok(MessageType::Connect) => Ok(Message::Connect(msg.obs_addrs)),
        Ok(MessageType::Sync) => Ok(Message::Sync),
        Err(_) => Err(CodecError::UnknownType(raw)),
    }
}

/// The dcutr-rs NAT behaviour a `CONNECT` payload carries, if any.
#[must_use]
pub fn decode_connect_nat(payload: &[u8]) -> Option<NatWire> {
    let msg = HolePunch::decode(payload).ok()?;
    (msg.r#type == Some(MessageType::Connect as i32))
        .then_some(msg.nat)
        .flatten()
}

/// Decodes one frame payload as a `Hello`.
///
/// # Errors
/// [`CodecError::Protobuf`], [`CodecError::UnsupportedHelloVersion`] or
/// [`CodecError::BadFingerprint`] (absent, or of the wrong length).
pub fn decode_hello(payload: &[u8]) -> Result<HelloFrame, CodecError> {
    let hello = Hello::decode(payload)?;
    if hello.version != Some(HELLO_VERSION) {
        return Err(CodecError::UnsupportedHelloVersion {
            version: hello.version,
        });
    }
    let side = match hello.side {
        Some(SIDE_INITIATOR) => Some(crate::Side::Initiator),
        Some(SIDE_RESPONDER) => Some(crate::Side::Responder),
        _ => None,
    };
    let f = hello.fingerprint.unwrap_or_default();
    let fingerprint = f
        .as_slice()
        .try_into()
        .map_err(|_| CodecError::BadFingerprint { len: f.len() })?;
    Ok(HelloFrame {
        max_attempts: hello.max_attempts,
        side,
        fingerprint,
    })
}

/// Reassembles length-prefixed frames from a byte stream.
///
/// Memory is bounded: at most [`MAX_PREFIX_LEN`] prefix bytes plus one
/// payload of at most `max_frame` bytes are held, and the payload buffer is
/// only allocated once the prefix has been checked against the limit.
///
/// ```
/// use dcutr_core::wire::{encode_sync, FrameDecoder, MAX_MESSAGE_SIZE};
///
/// let frame = encode_sync();
/// let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
/// let mut input = &frame[..];
/// // One byte at a time works as well as the whole frame at once.
/// let mut payload = None;
/// while payload.is_none() {
///     let (byte, rest) = input.split_at(1);
///     input = rest;
///     payload = decoder.decode(&mut &byte[..]).unwrap();
/// }
/// assert_eq!(payload.unwrap(), &frame[1..]);
/// ```
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame: usize,
    prefix: [u8; MAX_PREFIX_LEN],
    prefix_len: usize,
    /// The payload length once the prefix is complete and accepted.
    expected: Option<usize>,
    payload: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame` bytes.
    #[must_use]
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            max_frame,
            prefix: [0; MAX_PREFIX_LEN],
            prefix_len: 0,
            expected: None,
            payload: Vec::new(),
        }
    }

    /// Consumes bytes from the front of `input` until one frame is
    /// complete, and returns its payload. Returns `Ok(None)` when `input`
    /// ran out first; the bytes are kept for the next call.
    ///
    /// Bytes after a complete frame stay in `input`.
    ///
    /// # Errors
    /// [`CodecError::FrameTooLarge`] or [`CodecError::InvalidLengthPrefix`].
    /// After an error the decoder must not be used again.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, CodecError> {
        let expected = match self.expected {
            Some(len) => len,
            None => match self.read_prefix(input)? {
                Some(len) => len,
                None => return Ok(None),
            },
        };
        let take = (expected - self.payload.len()).min(input.len());
        self.payload.extend_from_slice(&input[..take]);
        *input = &input[take..];
        if self.payload.len() < expected {
            return Ok(None);
        }
        self.expected = None;
        Ok(Some(std::mem::take(&mut self.payload)))
    }

    fn read_prefix(&mut self, input: &mut &[u8]) -> Result<Option<usize>, CodecError> {
        while let Some((&byte, rest)) = input.split_first() {
            *input = rest;
            if self.prefix_len == MAX_PREFIX_LEN {
                return Err(CodecError::InvalidLengthPrefix);
            }
            self.prefix[self.prefix_len] = byte;
            self.prefix_len += 1;
            if byte & 0x80 != 0 {
                continue;
            }
            let (len, _) = unsigned_varint::decode::u64(&self.prefix[..self.prefix_len])
                .map_err(|_| CodecError::InvalidLengthPrefix)?;
            self.prefix_len = 0;
            let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
            if len_usize > self.max_frame {
                return Err(CodecError::FrameTooLarge {
                    len,
                    max: self.max_frame,
                });
            }
            self.payload = Vec::with_capacity(len_usize);
            self.expected = Some(len_usize);
            return Ok(Some(len_usize));
        }
        Ok(None)
    }

    /// How many more bytes this decoder needs before it can return a
    /// frame, as far as it knows now: the rest of the payload, or one
    /// byte while the length prefix is incomplete.
    ///
    /// A driver that reads no more than this never consumes bytes that
    /// follow the frame on a shared stream.
    #[must_use]
    pub fn bytes_wanted(&self) -> usize {
        match self.expected {
            Some(len) => len - self.payload.len(),
            None => 1,
        }
    }

    /// Bytes currently held (prefix and partial payload).
    #[must_use]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn buffered(&self) -> usize {
        self.prefix_len + self.payload.len()
    }

    /// Capacity currently allocated for the payload.
    #[must_use]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn allocated(&self) -> usize {
        self.payload.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/ip4/1.2.3.4/tcp/4001` as a binary multiaddr: code 4 (ip4), four
    /// address bytes, code 6 (tcp), port 4001 = 0x0fa1 big endian.
    const TCP_ADDR: [u8; 8] = [0x04, 1, 2, 3, 4, 0x06, 0x0f, 0xa1];

    #[test]
    fn connect_encodes_to_the_bytes_the_schema_defines() {
        let (frame, count) = encode_connect([&TCP_ADDR[..]], MAX_MESSAGE_SIZE);
        assert_eq!(count, 1);
        let expected: Vec<u8> = [
            &[12u8][..],  // frame length
            &[0x08, 100], // field 1, varint: CONNECT = 100
            &[0x12, 8],   // field 2, length-delimited, 8 bytes
            &TCP_ADDR,
        ]
        .concat();
        assert_eq!(&frame[..], &expected[..]);
    }

    #[test]
    fn sync_encodes_to_the_bytes_the_schema_defines() {
        // 300 = 0b10_0101100: low seven bits 0x2c with the continuation bit, then 0x02.
        assert_eq!(&encode_sync()[..], &[3, 0x08, 0xac, 0x02]);
    }

    #[test]
    fn hand_made_connect_decodes() {
        let payload = [&[0x08u8, 100, 0x12, 8][..], &TCP_ADDR].concat();
        assert_eq!(
            decode_message(&payload),
            Ok(Message::Connect(vec![TCP_ADDR.to_vec()]))
        );
    }

    #[test]
    fn unknown_type_is_refused() {
        assert_eq!(
            decode_message(&[0x08, 101]),
            Err(CodecError::UnknownType(101))
        );
    }

    #[test]
    fn missing_type_is_refused() {
        assert_eq!(
            decode_message(&[0x12, 8, 4, 1, 2, 3, 4, 6, 0x0f, 0xa1]),
            Err(CodecError::MissingType)
        );
        assert_eq!(decode_message(&[]), Err(CodecError::MissingType));
    }

    #[test]
    fn truncated_protobuf_is_refused() {
        // Field 2 announces 8 bytes but only 2 follow.
        assert!(matches!(
            decode_message(&[0x08, 100, 0x12, 8, 4, 1]),
            Err(CodecError::Protobuf(_))
        ));
    }

    #[test]
    fn connect_is_cut_to_fit_the_size_limit() {
        let addrs = vec![TCP_ADDR; 100];
        let (frame, count) = encode_connect(addrs.iter().map(|a| &a[..]), 64);
        assert_eq!(
            count, 6,
            "2 bytes type + 6 * 10 bytes per address = 62 <= 64"
        );
        assert!(frame.len() <= 64 + MAX_PREFIX_LEN);
    }

    #[test]
    fn decoder_accepts_one_byte_at_a_time() {
        let (a, _) = encode_connect([&TCP_ADDR[..]], MAX_MESSAGE_SIZE);
        let b = encode_sync();
        let stream = [&a[..], &b[..]].concat();
        let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
        let mut frames = Vec::new();
        for byte in &stream {
            let mut input = std::slice::from_ref(byte);
            if let Some(payload) = decoder.decode(&mut input).unwrap() {
                frames.push(decode_message(&payload).unwrap());
            }
            assert!(input.is_empty());
        }
        assert_eq!(
            frames,
            vec![Message::Connect(vec![TCP_ADDR.to_vec()]), Message::Sync]
        );
    }

    #[test]
    fn decoder_leaves_the_next_frame_in_the_input() {
        let stream = [&encode_sync()[..], &encode_sync()[..]].concat();
        let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
        let mut input = &stream[..];
        assert!(decoder.decode(&mut input).unwrap().is_some());
        assert_eq!(input.len(), 4);
    }

    #[test]
    fn oversized_frame_is_refused_before_any_payload_is_buffered() {
        // 4097 = 0x81 0x20 as a varint.
        let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
        let mut input: &[u8] = &[0x81, 0x20, 0xff, 0xff];
        assert_eq!(
            decoder.decode(&mut input),
            Err(CodecError::FrameTooLarge {
                len: 4097,
                max: MAX_MESSAGE_SIZE
            })
        );
        assert_eq!(decoder.allocated(), 0);
        assert_eq!(input.len(), 2, "no payload byte was consumed");
    }

    #[test]
    fn frame_of_exactly_the_limit_is_accepted() {
        let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
        let mut prefix = unsigned_varint::encode::usize_buffer();
        let prefix = unsigned_varint::encode::usize(MAX_MESSAGE_SIZE, &mut prefix);
        let body = vec![0u8; MAX_MESSAGE_SIZE];
        let stream = [prefix, &body[..]].concat();
        let payload = decoder.decode(&mut &stream[..]).unwrap().unwrap();
        assert_eq!(payload.len(), MAX_MESSAGE_SIZE);
    }

    #[test]
    fn endless_varint_is_refused_after_nine_bytes() {
        let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
        let junk = [0xffu8; 32];
        let mut input = &junk[..];
        assert_eq!(
            decoder.decode(&mut input),
            Err(CodecError::InvalidLengthPrefix)
        );
        assert!(decoder.buffered() <= MAX_PREFIX_LEN);
    }

    #[test]
    fn non_minimal_varint_is_refused() {
        let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
        assert_eq!(
            decoder.decode(&mut &[0x83u8, 0x00][..]),
            Err(CodecError::InvalidLengthPrefix)
        );
    }

    #[test]
    fn bytes_wanted_never_reaches_past_the_frame() {
        let frame = encode_sync();
        let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
        assert_eq!(decoder.bytes_wanted(), 1);
        assert!(decoder.decode(&mut &frame[..1]).unwrap().is_none());
        assert_eq!(decoder.bytes_wanted(), 3);
        assert!(decoder.decode(&mut &frame[1..2]).unwrap().is_none());
        assert_eq!(decoder.bytes_wanted(), 2);
    }

    #[test]
    fn hello_round_trips_and_checks_version_and_fingerprint() {
        let fingerprint = [9u8; FINGERPRINT_LEN];
        let frame = encode_hello(2, crate::Side::Initiator, &fingerprint);
        let payload = FrameDecoder::new(MAX_MESSAGE_SIZE)
            .decode(&mut &frame[..])
            .unwrap()
            .unwrap();
        assert_eq!(
            decode_hello(&payload),
            Ok(HelloFrame {
                max_attempts: Some(2),
                side: Some(crate::Side::Initiator),
                fingerprint,
            })
        );
        let hello = Hello::decode(&payload[..]).unwrap();
        // A fingerprint of the wrong length, or none, is refused.
        let short = Hello {
            fingerprint: Some(vec![1, 2, 3]),
            ..hello.clone()
        }
        .encode_to_vec();
        assert_eq!(
            decode_hello(&short),
            Err(CodecError::BadFingerprint { len: 3 })
        );
        let none = Hello {
            fingerprint: None,
            ..hello.clone()
        }
        .encode_to_vec();
        assert_eq!(
            decode_hello(&none),
            Err(CodecError::BadFingerprint { len: 0 })
        );
        // A v2 Hello (a 16-byte token in tag 1, no version) is refused by
        // its version; the old token field itself is skipped.
        let mut v2 = vec![0x0a, 16];
        v2.extend_from_slice(&[7; 16]);
        let v2_body = Hello {
            version: None,
            ..hello.clone()
        }
        .encode_to_vec();
        v2.extend_from_slice(&v2_body);
        assert_eq!(
            decode_hello(&v2),
            Err(CodecError::UnsupportedHelloVersion { version: None })
        );
        let mut v3_with_token = vec![0x0a, 16];
        v3_with_token.extend_from_slice(&[7; 16]);
        v3_with_token.extend_from_slice(&payload);
        assert_eq!(
            decode_hello(&v3_with_token).map(|h| h.fingerprint),
            Ok(fingerprint)
        );
        assert_eq!(
            decode_hello(&[]),
            Err(CodecError::UnsupportedHelloVersion { version: None })
        );
    }
}
