//! # dcutr-libp2p
//!
//! DCUtR hole punching (Direct Connection Upgrade through Relay,
//! `/libp2p/dcutr`) for rust-libp2p, as a
//! [`NetworkBehaviour`](libp2p_swarm::NetworkBehaviour) driven by the
//! Sans-IO state machine of `dcutr-core`. It speaks the same wire protocol
//! as `libp2p-dcutr` and interoperates with it in both roles.
//!
//! ## Switching from `libp2p::dcutr`
//! Take `dcutr` out of your `use libp2p::{..}` list and import this crate
//! under that name (adding the second line alone is `E0252`):
//!
//! ```text
//! use libp2p::{identify, identity, noise, ping, relay, /* no dcutr */ tcp, yamux};
//! use dcutr_libp2p as dcutr;
//! ```
//!
//! (the example below compiles it; the README gives the whole recipe for
//! rust-libp2p's `examples/dcutr`).
//! `dcutr::Behaviour::new(local_peer_id)`, the field type
//! `dcutr::Behaviour` in your `#[derive(NetworkBehaviour)]` struct and
//! patterns such as `dcutr::Event { remote_peer_id, result: Ok(connection_id) }`
//! keep compiling, and so do the paths [`inbound::ProtocolViolation`] and
//! [`outbound::ProtocolViolation`]. The error type differs: [`Error`] is a
//! typed enum carrying the core's [`Failure`](dcutr_core::Failure) (one
//! reason per attempt). Logs keep stock's target, `libp2p_dcutr`.
//! Metrics: `Metrics` (feature `metrics`, on by default), under
//! go-libp2p's `libp2p_holepunch_*` names; see the `metrics` module.
//!
//! ## What differs from the stock behaviour
//! * **A unilateral dial alongside the punch:** the side that accepted the
//!   relayed connection (the spec's B) starts the exchange at once and
//!   dials the peer's advertised public addresses (from identify) the
//!   moment they arrive; the first direct connection wins.
//! * **Both sides report success**, with the id of the winning connection,
//!   whichever side dialled it.
//! * **Repeated streams:** a new `/libp2p/dcutr` stream on the same relayed
//!   connection supersedes the running exchange instead of being dropped.
//! * **The relayed connection is closed** after a grace period (default
//!   5 s) once the direct connection is up.
//! * **Typed errors and per-attempt events:** use
//!   `Behaviour::<Report>::with_config` to receive [`Report`]s (attempt
//!   started/failed with its reason, the peer's addresses and what was
//!   dropped, the RTT, each failed dial, and a timeline with the outcome).
//! * **Address hygiene:** only public addresses by default (see
//!   [`Config::with_address_policy`]; tests on loopback need
//!   [`AddressPolicy::permissive`]; a failure caused by the policy says
//!   so, and names that call).
//! * **QUIC as the spec says:** stock B dials A's QUIC addresses as a
//!   QUIC client, so both sides end up clients of their own connections.
//!   Ours makes B's QUIC punch a dial as listener on a new port, which
//!   libp2p-quic carries out as the spec's server punch: random datagrams
//!   from the listening socket, then it accepts A's connection (see
//!   [`Config::core`]), so A is the client and B the server. With stock
//!   as B either side's client dial may come first, and A may end up the
//!   QUIC server of the direct connection.
//!
//! ## Example
//! ```
//! use dcutr_libp2p as dcutr;
//! use libp2p_identity::PeerId;
//!
//! let peer = PeerId::random();
//! // As with libp2p::dcutr:
//! let _stock_shaped = dcutr::Behaviour::new(peer);
//! // With per-attempt reports, and loopback allowed (tests on one host):
//! let config = dcutr::Config::default()
//!     .with_address_policy(dcutr::AddressPolicy::permissive());
//! let _verbose = dcutr::Behaviour::<dcutr::Report>::with_config(peer, config).unwrap();
//! // Prometheus metrics under go-libp2p's names, recorded by the behaviour:
//! # #[cfg(feature = "metrics")] {
//! let mut registry = prometheus_client::registry::Registry::default();
//! let _measured = dcutr::Behaviour::new(peer).with_metrics(dcutr::Metrics::new(&mut registry));
//! # }
//! ```

#![forbid(unsafe_code)]

mod behaviour;
mod config;
mod event;
mod handler;
mod log;
#[cfg(feature = "metrics")]
pub mod metrics;
mod nat;

pub use behaviour::Behaviour;
pub use config::{Config, ConfigError};
pub use dcutr_core::admission::{FAILURE_COOLDOWN, MAX_CONCURRENT_UPGRADES};
pub use event::{AttemptAddrs, Error, Event, FromReport, Progress, Report};
#[cfg(feature = "metrics")]
pub use metrics::Metrics;
pub use nat::{MAX_OBSERVED_CONNECTIONS, NotObserved};

/// The Sans-IO core this behaviour drives, for its typed events, failures
/// and timelines.
pub use dcutr_core as core;
/// The core's types that configuring the behaviour needs.
pub use dcutr_core::{AddressPolicy, Dialable, Side, Transport, settings::QuicServerPunch};

/// Stock's `libp2p_dcutr::inbound` path. Our exchange is one state
/// machine for both directions, so both paths name the core's
/// [`ProtocolError`](dcutr_core::ProtocolError); its variants differ from
/// stock's (see [`Error::protocol_violation`]).
pub mod inbound {
    /// A protocol violation by the peer, in either direction.
    pub type ProtocolViolation = dcutr_core::ProtocolError;
}

/// Stock's `libp2p_dcutr::outbound` path; see [`inbound`].
pub mod outbound {
    /// A protocol violation by the peer, in either direction.
    pub type ProtocolViolation = dcutr_core::ProtocolError;
}

/// The protocol name, `/libp2p/dcutr`.
pub const PROTOCOL_NAME: libp2p_swarm::StreamProtocol =
    libp2p_swarm::StreamProtocol::new("/libp2p/dcutr");

/// The connection handler's commands and events, so that the
/// `libp2p_stream` fuzz target can play the handler's byte pump against
/// the [`Behaviour`] (arbitrary stream bytes and stream events). Not a
/// stable API.
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::handler::{Command, HandlerEvent};
}
