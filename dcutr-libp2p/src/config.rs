//! The behaviour's configuration: the core's limits plus the few knobs
//! that only exist because libp2p is around it.

use std::time::Duration;

use dcutr_core::{AddressPolicy, Dialable, settings::Capabilities, settings::QuicServerPunch};

/// Configuration of a [`Behaviour`](crate::Behaviour).
///
/// `Config::default()` is the core's [`dcutr_core::Config::default()`]
/// (three attempts, 10 s per step, public addresses only), with the QUIC
/// punch done inside libp2p-quic (see [`Config::core`]). The behaviour
/// runs exactly the spec: one `/libp2p/dcutr` stream per attempt, and
/// libp2p's own handshake as the identity check.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The core's limits and timeouts. The behaviour builds plain spec
    /// upgrades (never the dcutr-rs session): that is how libp2p carries
    /// DCUtR, and Noise/TLS authenticate every direct connection.
    ///
    /// TCP and QUIC candidates are both sent and dialled (`dialable`
    /// defaults to [`Dialable::all`]). A behaviour has no way to send the
    /// spec's UDP spray from the QUIC socket itself, so its
    /// `quic_server_punch` defaults to [`QuicServerPunch::DialAsServer`]:
    /// spec B's QUIC punch becomes a libp2p dial with `override_role()`
    /// and `allocate_new_port()`, which libp2p-quic carries out as the
    /// spec says (random datagrams from its listening socket, then it
    /// accepts A's connection). [`QuicServerPunch::DialAsClient`] does
    /// what stock `libp2p-dcutr` does (B dials as a QUIC client too);
    /// [`QuicServerPunch::Spray`] is refused by the core, which checks the
    /// config against [`Capabilities::LIBP2P`]
    /// ([`dcutr_core::ConfigError::SprayUnsupported`]).
    ///
    /// Its `address_policy` defaults to public addresses only. Tests on one
    /// machine (loopback) need [`AddressPolicy::permissive`]; see
    /// [`Config::with_address_policy`].
    pub core: dcutr_core::Config,
    /// Seed for the upgrades' randomness. `None` (the default) draws 32
    /// bytes from the OS for each upgrade; tests may fix it.
    pub seed: Option<[u8; 32]>,
    /// Our NAT's behaviour, sent in every Connect as the dcutr-rs
    /// extension that stock peers skip (see
    /// [`UpgradeBuilder::nat_behaviour`](dcutr_core::UpgradeBuilder::nat_behaviour)).
    /// Default `None`: not sent, and the Connect is the spec's byte for byte.
    pub nat_behaviour: Option<dcutr_core::nat::NatBehaviour>,
}

impl Default for Config {
    fn default() -> Self {
        let core = dcutr_core::Config {
            dialable: Dialable::all(),
            quic_server_punch: QuicServerPunch::DialAsServer,
            ..dcutr_core::Config::default()
        };
        Config {
            core,
            seed: None,
            nat_behaviour: None,
        }
    }
}

impl Config {
    /// Sets which IP ranges are acceptable, for both directions.
    /// [`AddressPolicy::permissive`] is needed on loopback and in LAN
    /// tests; keep the default in production, so that a peer cannot aim
    /// our dials at our own network.
    #[must_use]
    pub fn with_address_policy(mut self, policy: AddressPolicy) -> Self {
        self.core.address_policy = policy;
        self
    }

    /// Switches the unilateral direct dial (the spec's step 0) on or off.
    #[must_use]
    pub fn with_unilateral(mut self, on: bool) -> Self {
        self.core.unilateral = on;
        self
    }

    /// Sets how long the relayed connection stays open after the upgrade.
    #[must_use]
    pub fn with_relay_grace_period(mut self, grace: Duration) -> Self {
        self.core.relay_grace_period = grace;
        self
    }

    /// Sets which transports are sent to the peer and dialled, for
    /// example `Dialable::none().with(Transport::Tcp, false)` for IPv4 TCP
    /// only. Our own addresses on other transports are not advertised.
    #[must_use]
    pub fn with_dialable(mut self, dialable: Dialable) -> Self {
        self.core.dialable = dialable;
        self
    }

    /// Sets how spec B punches over QUIC (see [`Config::core`]).
    #[must_use]
    pub fn with_quic_server_punch(mut self, punch: QuicServerPunch) -> Self {
        self.core.quic_server_punch = punch;
        self
    }

    /// Declares our NAT's behaviour to dcutr-rs peers; see
    /// [`Config::nat_behaviour`].
    #[must_use]
    pub fn with_nat_behaviour(mut self, behaviour: dcutr_core::nat::NatBehaviour) -> Self {
        self.nat_behaviour = Some(behaviour);
        self
    }

    /// Fixes the seed of the upgrades' randomness.
    #[must_use]
    pub fn with_seed(mut self, seed: [u8; 32]) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] when the core rejects its part, or a mode that a
    /// libp2p swarm cannot carry ([`Capabilities::LIBP2P`]: the core
    /// names the field to change).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.core
            .validate_for(Capabilities::LIBP2P)
            .map_err(ConfigError::Core)
    }
}

/// A [`Config`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The core's part is out of bounds.
    #[error(transparent)]
    Core(dcutr_core::ConfigError),
}
