//! # dcutr-core
//!
//! The Sans-IO core of libp2p **DCUtR** (Direct Connection Upgrade through
//! Relay, protocol `/libp2p/dcutr`): two peers that talk through a relay
//! swap their observed addresses over the relayed stream, time a
//! simultaneous dial from the relay's round trip, punch through both NATs
//! (TCP simultaneous open, or a QUIC dial met by a UDP spray), and move to
//! the direct connection.
//!
//! This crate is only the protocol: a deterministic state machine,
//! [`Upgrade`], with no sockets, no clock, no threads and no OS
//! randomness. Time is an [`Instant`](std::time::Instant) you pass in;
//! randomness comes from a seed. The runtime adapters (`dcutr-tokio`,
//! `dcutr-async-std`) bind its commands to real sockets.
//!
//! ## Roles
//! | spec | here | does | direct connection |
//! |------|------|------|-------------------|
//! | B | [`Side::Initiator`] | opens the stream, sends Connect, measures RTT, sends Sync, punches after rtt/2 (TCP dial; QUIC: UDP spray) | server |
//! | A | [`Side::Responder`] | answers Connect, punches when Sync arrives (TCP and QUIC dials) | client |
//!
//! ## Example
//! Two upgrades wired back to back with no delay; the "network" lets
//! every dial through.
//!
//! ```
//! use dcutr_core::{AddressPolicy, Candidate, Config, Event, Output, Side, Upgrade};
//!
//! let mut config = Config::default();
//! config.address_policy = AddressPolicy::permissive();
//! // Your runtime's monotonic clock: the core never reads one itself.
//! let now = std::time::Instant::now();
//! let a_addr = Candidate::tcp("10.0.0.1:4001".parse().unwrap());
//! let b_addr = Candidate::tcp("10.0.0.2:4001".parse().unwrap());
//! let mut b = Upgrade::builder(Side::Initiator, config.clone(), [1; 32])
//!     .local_addrs([b_addr])
//!     .start(now)
//!     .unwrap();
//! let mut a = Upgrade::builder(Side::Responder, config, [2; 32])
//!     .local_addrs([a_addr])
//!     .start(now)
//!     .unwrap();
//!
//! let mut upgraded = 0;
//! for _ in 0..10 {
//!     // Carry each side's commands to the other side.
//!     while let Some(out) = b.poll_output() {
//!         match out {
//!             Output::OpenStream => {
//!                 b.handle_stream_opened(now);
//!                 a.handle_stream_opened(now);
//!             }
//!             Output::WriteStream(bytes) => a.handle_stream_data(now, &bytes),
//!             Output::Dial(dial) => b.handle_dial_succeeded(now, dial.id),
//!             Output::Event(Event::Upgraded(up)) => {
//!                 assert_eq!(up.remote, a_addr.addr);
//!                 upgraded += 1;
//!             }
//!             _ => {}
//!         }
//!     }
//!     while let Some(out) = a.poll_output() {
//!         match out {
//!             Output::WriteStream(bytes) => b.handle_stream_data(now, &bytes),
//!             Output::Dial(dial) => a.handle_dial_succeeded(now, dial.id),
//!             Output::Event(Event::Upgraded(_)) => upgraded += 1,
//!             _ => {}
//!         }
//!     }
//!     // B waits rtt/2 (zero here) before it punches.
//!     b.handle_timeout(now);
//! }
//! assert_eq!(upgraded, 2);
//! ```
//!
//! ## The spec, and the dcutr-rs session
//! [`Config`] holds only the specification's parameters, and an upgrade
//! runs exactly libp2p's DCUtR (a stream per attempt, the caller's own
//! handshake authenticates the direct connection): all a stock peer can
//! meet. Two dcutr-rs peers on one relayed byte stream add the dcutr-rs
//! session with one builder call,
//! `Upgrade::builder(side, Config::default(), seed).dcutr_session(fingerprint)`
//! ([`UpgradeBuilder::dcutr_session`]): every attempt on that stream, a
//! versioned `Hello`, and pinned TLS on direct connections. `dcutr-driver`
//! makes that call itself; start from `Config::default()` either way.
//!
//! See [`Upgrade`] for the driving rules, [`Config`] for every limit and
//! its default, and the `addr` module for the address filtering that
//! keeps a hostile peer from aiming our dials and datagrams at third
//! parties.
//!
//! ## Hard NATs
//! The [`nat`] module classifies a NAT from observations and chooses a
//! strategy from both peers' behaviours; [`birthday`] is the Sans-IO
//! machine of the birthday punch that strategy asks for when one side's
//! NAT maps each destination to a random port: the hard side opens many
//! sockets, the easy side probes many ports, paced and bounded.

#![forbid(unsafe_code)]

mod addr;
pub mod admission;
pub mod birthday;
mod carrier;
mod codec;
mod config;
mod direct;
mod error;
mod initiator;
pub mod nat;
mod output;
mod responder;
#[cfg(feature = "serde")]
mod serde_impl;
mod session;
mod timeline;
mod timer;
mod upgrade;

pub use addr::{AddressPolicy, Candidate, Dialable, Transport};
pub use carrier::Carrier;
pub use config::{Config, ConfigError};
pub use error::{AttemptFailure, DialError, Failure, ProtocolError};
pub use output::{
    Dial, DialPurpose, DirectId, Event, Outcome, Output, Role, Side, SprayPayload, Timeout,
    TimerKind, Upgraded,
};
pub use upgrade::{Upgrade, UpgradeBuilder};

/// The address filter behind [`AddressPolicy`]: the IANA special-purpose
/// registries, why an address was dropped, and what we send of our own.
pub mod filter {
    pub use crate::addr::{
        AddrRejection, AddressPredictor, MAX_LOCAL_CANDIDATES, MAX_REMOTE_ADDRS, NoPrediction,
        ObservedAddrs, RangeClass, RejectionCounts, RemoteAddrs, SPECIAL_RANGES, SpecialRange,
        classify, filter_remote, local_addrs_to_send, special_range,
    };
    pub use multiaddr::Multiaddr;
}

/// What happened when: the record an upgrade keeps of its attempts and
/// dials ([`Upgrade::timeline`]).
pub mod record {
    pub use crate::timeline::{AttemptRecord, DialRecord, DialResult, Timeline};
}

/// The modes of [`Config`], the bounds its fields must stay within, what
/// a carrier can carry, and the constants of the dcutr-rs session
/// ([`UpgradeBuilder::dcutr_session`]).
pub mod settings {
    pub use crate::initiator::{QUIC_CLIENT_FALLBACK, QUIC_CLIENT_FALLBACK_RTTS};

    pub use crate::codec::{FINGERPRINT_LEN, HELLO_VERSION};
    pub use crate::config::{
        Capabilities, DEFAULT_PRIME_TTL, MAX_ATTEMPTS_LIMIT, MAX_DIALS_PER_UPGRADE, MAX_DURATION,
        MAX_FRAME_LEN, MAX_PRIME_TTL, MAX_PUNCHES_PER_IP, QuicServerPunch, SPRAY_PACKET_LEN,
    };
    pub use crate::output::SPRAY_MARKER;
    pub use crate::upgrade::{BIRTHDAY_TOKEN, MAX_PEER_REFLEXIVE_DIALS};
}

/// The detailed reasons inside [`Failure`], [`Event`] and the
/// [`Carrier`] contract.
pub mod reason {
    pub use crate::carrier::StreamUnavailable;
    pub use crate::codec::CodecError;
    pub use crate::error::Step;
    pub use crate::output::{DirectRejection, InboundRejected, PeerReflexiveRefused};
}

/// The wire format (framing, the `HolePunch` protobuf, the dcutr-rs
/// `Hello`), for tests, fuzzing and tools that play a peer. Not part of
/// the stable API: enable the `internals` feature.
#[cfg(feature = "internals")]
pub mod wire {
    pub use crate::codec::*;
}
