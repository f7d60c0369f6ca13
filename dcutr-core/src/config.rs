//! Every limit and timeout of an upgrade, with its default and the reason
//! for it.

use std::time::Duration;

use crate::addr::{AddressPolicy, Dialable, MAX_LOCAL_CANDIDATES, MAX_REMOTE_ADDRS};
use crate::codec::MAX_MESSAGE_SIZE;

/// Bytes of random payload in each spray datagram.
///
/// go-libp2p and rust-libp2p send 64 random bytes: enough to open a NAT
/// mapping, small enough that a spray is cheap, and not a valid QUIC packet
/// so the receiver's endpoint drops it.
pub const SPRAY_PACKET_LEN: usize = 64;

/// Default [`Config::max_punches_per_ip`]: 4. A real peer names one IP
/// with a TCP and a QUIC port, two at most per transport (an observed and
/// a predicted port); a hostile one listing 16 ports of one victim gets 4
/// dials or spray targets aimed at it per attempt, not 16.
pub const MAX_PUNCHES_PER_IP: usize = 4;

/// Default [`Config::max_dials_per_upgrade`]: 24. Three attempts of eight
/// addresses each, or a unilateral dial plus two full attempts; a hostile
/// peer that fills every Connect with 16 addresses gets 24 dials out of
/// us, not 48 (each TCP dial is up to 5 SYNs with Linux's retries, each
/// QUIC dial up to about 12 Initials of 1,228 bytes in 5 s).
pub const MAX_DIALS_PER_UPGRADE: usize = 24;

/// Default [`Config::prime_ttl`]: 2, the IP TTL (IPv6 hop limit) of the
/// priming packet ([`Output::Prime`](crate::Output::Prime)).
///
/// Derivation: a router forwards a packet only while its TTL stays above
/// zero after the decrement, and a NAT creates its mapping only for a
/// packet it forwards (Linux conntrack confirms the entry at the output
/// hook). Sent with TTL `t`, the packet is forwarded by the first `t - 1`
/// routers and expires at router `t`. TTL 2 is therefore forwarded by
/// exactly one router, the first hop: the home NAT (whose mapping must
/// exist before the peer's first packet arrives, or a NAT without an
/// inbound firewall remaps our flow), and expires at the next router, the
/// access network's. The peer's NAT is at least two routers further on
/// any path that leaves our network (our ISP's router, theirs), so the
/// packet never reaches it and creates nothing there. Behind a
/// carrier-grade NAT as well, set 3 (the CGN is then the second hop).
pub const DEFAULT_PRIME_TTL: u8 = 2;

/// Largest [`Config::prime_ttl`]: 8. Half of a typical Internet path of
/// 15 or more hops: a TTL above it no longer dies near our own network,
/// and may reach the peer's NAT and create the inbound state priming is
/// meant to prevent.
pub const MAX_PRIME_TTL: u8 = 8;

/// The largest frame on the relayed stream, length prefix included: what
/// a driver reads at most in one go.
pub const MAX_FRAME_LEN: usize = crate::codec::MAX_MESSAGE_SIZE + crate::codec::MAX_PREFIX_LEN;

/// Upper bound for every configured duration (one hour).
///
/// Keeps `Instant + Duration` far away from overflow and catches unit
/// mistakes (seconds given as milliseconds) at construction.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Hard ceiling for [`Config::max_attempts`].
pub const MAX_ATTEMPTS_LIMIT: u8 = 10;

/// What the QUIC server side (the initiator, spec's B) does at the punch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuicServerPunch {
    /// Spray random datagrams from the QUIC socket to the peer's QUIC
    /// addresses ([`Output::SendDatagram`](crate::Output::SendDatagram))
    /// and accept the client's connection: the specification.
    #[default]
    Spray,
    /// Emit one [`Output::Dial`](crate::Output::Dial) with
    /// [`Role::Server`](crate::Role::Server) per QUIC target instead of the
    /// datagrams, for stacks that punch inside their transport (libp2p-quic
    /// turns such a dial into a spray from the listening socket and an
    /// accept). When that punch has no direct connection after
    /// [`QUIC_CLIENT_FALLBACK`](crate::settings::QUIC_CLIENT_FALLBACK) plus
    /// two relayed round trips, the
    /// initiator also dials each of its QUIC targets once with
    /// [`Role::Client`](crate::Role::Client), in case the client's first
    /// Initial arrived before the spray.
    DialAsServer,
    /// Dial the peer's QUIC addresses as a QUIC client, as stock
    /// rust-libp2p does (both sides end up clients of their own
    /// connection). For compatibility only.
    DialAsClient,
}

/// What a carrier can carry out, for [`Config::validate_for`] and
/// [`UpgradeBuilder::capabilities`](crate::UpgradeBuilder::capabilities):
/// what it cannot serve is refused at the start with a [`ConfigError`]
/// naming the fix, instead of each carrier checking for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// It sends datagrams from its QUIC socket
    /// ([`Output::SendDatagram`](crate::Output::SendDatagram)), as
    /// [`QuicServerPunch::Spray`] needs.
    pub datagrams: bool,
    /// It carries the dcutr-rs session
    /// ([`UpgradeBuilder::dcutr_session`](crate::UpgradeBuilder::dcutr_session)):
    /// every attempt on one relayed byte stream, and the pinned-TLS
    /// handshake on direct connections.
    pub session: bool,
    /// It opens sockets of its own for the birthday punch
    /// ([`Output::SendBirthday`](crate::Output::SendBirthday),
    /// [`Output::DialFresh`](crate::Output::DialFresh)). Without, an
    /// attempt whose NATs call for the birthday punch punches as the spec
    /// does instead.
    pub fresh_sockets: bool,
}

impl Capabilities {
    /// A libp2p swarm: a `/libp2p/dcutr` stream per attempt (the spec
    /// only), no datagrams or sockets of its own (libp2p-quic sprays inside
    /// a dial as listener), and Noise/TLS of its own on direct connections.
    pub const LIBP2P: Capabilities = Capabilities {
        datagrams: false,
        session: false,
        fresh_sockets: false,
    };

    /// A standalone runtime adapter (`dcutr-driver`): one relayed byte
    /// stream, its own QUIC socket and fresh sockets, and pinned TLS.
    pub const STANDALONE: Capabilities = Capabilities {
        datagrams: true,
        session: true,
        fresh_sockets: true,
    };
}

/// Limits and timeouts of one upgrade.
///
/// Only the specification's parameters: `Config::default()` holds the
/// spec's and the field's numbers, for libp2p and standalone carriers
/// alike. Whether an upgrade runs the dcutr-rs session on top of the spec
/// is not a config field but one builder call,
/// [`UpgradeBuilder::dcutr_session`](crate::UpgradeBuilder::dcutr_session)
/// (`dcutr-driver` makes it itself). Each field documents its default and
/// why; change what you need with struct update syntax, and
/// [`Config::validate`] (or the upgrade's start) names any field out of
/// range:
///
/// ```
/// use std::time::Duration;
/// use dcutr_core::{AddressPolicy, Config};
///
/// let config = Config {
///     address_policy: AddressPolicy::permissive(),
///     step_timeout: Duration::from_secs(5),
///     ..Config::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest frame accepted from the peer, and largest we send.
    /// Default 4 KiB, the spec's limit; may be
    /// lowered, not raised.
    pub max_message_size: usize,
    /// Most usable remote addresses taken from one Connect. Default
    /// [`MAX_REMOTE_ADDRS`] (16): each one costs a dial or spray target.
    pub max_remote_addrs: usize,
    /// Most local addresses remembered and sent. Default
    /// [`MAX_LOCAL_CANDIDATES`] (20, as rust-libp2p).
    pub max_local_addrs: usize,
    /// Hole-punch attempts before giving up. Default 3 (the spec: the
    /// initiator retries twice). 97.6 % of successes in the field come on
    /// the first attempt, so more rarely pays. On the dcutr-rs session's
    /// shared stream both sides must stop after the same attempt: with
    /// its pinned-TLS handshake they agree on the smaller of their limits
    /// through the `Hello`; without it
    /// ([`UpgradeBuilder::dcutr_session_unpinned`](crate::UpgradeBuilder::dcutr_session_unpinned)),
    /// configure the same value on both.
    pub max_attempts: u8,
    /// How long to wait for each message of the exchange (Hello, Connect,
    /// Sync) and for a stream to open. Default 10 s, as rust-libp2p.
    pub step_timeout: Duration,
    /// How long an attempt's direct phase lasts after the punch: dials,
    /// spray and waiting for inbound connections. Default 5 s: a punch
    /// that works does so within a few round trips, and TCP retransmits
    /// its SYN twice (1 s, 3 s) in that time. go-libp2p allows 10 s per
    /// dial, js-libp2p 5 s per attempt.
    pub direct_timeout: Duration,
    /// Dial the peer's public addresses directly before hole punching, if
    /// the caller knows any. Default on (the spec's step 0).
    pub unilateral: bool,
    /// How long the unilateral direct dial may take. Default 5 s.
    pub unilateral_timeout: Duration,
    /// How long a direct connection has to pass the identity check once
    /// connected. Default 10 s. The check is one round trip, but the
    /// server counts a connection as won as soon as it answered, so a
    /// client that gives up while that answer is still being retransmitted
    /// (TCP backs off 1, 2, 4 s on a lossy path) leaves the two sides
    /// disagreeing; the NAT lab saw it at 51 % loss with 3 s. Strangers
    /// holding a slot that long are bounded by `max_pending_inbound`.
    pub confirm_timeout: Duration,
    /// Shortest pause between two spray rounds. Default 10 ms (the spec).
    pub spray_interval_min: Duration,
    /// Longest pause between two spray rounds. Default 200 ms (the spec).
    /// Pauses are uniform between the two, drawn from the seeded RNG.
    pub spray_interval_max: Duration,
    /// Most spray datagrams in one attempt, all targets together. Default
    /// 200: about 5 s of spraying to two addresses at the mean interval.
    /// With [`SPRAY_PACKET_LEN`] bytes each this caps what a hostile peer
    /// can make us send to an address it names at 12.8 KiB per attempt.
    pub max_spray_packets_per_attempt: u32,
    /// Most dials and spray targets on one IP address in one attempt.
    /// Default [`MAX_PUNCHES_PER_IP`].
    pub max_punches_per_ip: usize,
    /// Most dials in one upgrade, the unilateral dial's and every
    /// attempt's together. Default [`MAX_DIALS_PER_UPGRADE`].
    pub max_dials_per_upgrade: usize,
    /// Most inbound direct connections waiting for the identity check at
    /// once; more are refused. Default 8: a stranger flooding the punch
    /// port cannot hold more.
    pub max_pending_inbound: usize,
    /// How long the relayed connection stays open after the upgrade, so
    /// data in flight on it drains. Default 5 s.
    pub relay_grace_period: Duration,
    /// Which IP ranges are acceptable (default: public only).
    pub address_policy: AddressPolicy,
    /// Which transports and IP families we have sockets for (default: all).
    pub dialable: Dialable,
    /// What the QUIC server side does at the punch (default: spray).
    pub quic_server_punch: QuicServerPunch,
    /// The TTL of the priming packets ([`Output::Prime`](crate::Output::Prime)):
    /// as soon as the peer's Connect arrives, one packet with this IP TTL
    /// to each address the punch will aim at, so that our own NAT holds
    /// the mapping before the peer's first punch packet reaches it.
    /// Default `Some(`[`DEFAULT_PRIME_TTL`]`)`; between 1 and
    /// [`MAX_PRIME_TTL`]; `None` sends no priming packets (the spec's
    /// behaviour). A carrier that cannot set a per-packet TTL ignores the
    /// command.
    pub prime_ttl: Option<u8>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_size: MAX_MESSAGE_SIZE,
            max_remote_addrs: MAX_REMOTE_ADDRS,
            max_local_addrs: MAX_LOCAL_CANDIDATES,
            max_attempts: 3,
            step_timeout: Duration::from_secs(10),
            direct_timeout: Duration::from_secs(5),
            unilateral: true,
            unilateral_timeout: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(10),
            max_punches_per_ip: MAX_PUNCHES_PER_IP,
            max_dials_per_upgrade: MAX_DIALS_PER_UPGRADE,
            spray_interval_min: Duration::from_millis(10),
            spray_interval_max: Duration::from_millis(200),
            max_spray_packets_per_attempt: 200,
            max_pending_inbound: 8,
            relay_grace_period: Duration::from_secs(5),
            address_policy: AddressPolicy::public_only(),
            dialable: Dialable::all(),
            quic_server_punch: QuicServerPunch::Spray,
            prime_ttl: Some(DEFAULT_PRIME_TTL),
        }
    }
}

impl Config {
    /// Checks every field against its bounds, then that a carrier with
    /// `caps` can serve them.
    ///
    /// # Errors
    /// The first [`ConfigError`] found: [`Config::validate`]'s, or
    /// [`ConfigError::SprayUnsupported`].
    pub fn validate_for(&self, caps: Capabilities) -> Result<(), ConfigError> {
        self.validate()?;
        if self.quic_server_punch == QuicServerPunch::Spray && !caps.datagrams {
            return Err(ConfigError::SprayUnsupported);
        }
        Ok(())
    }

    /// Checks every field against its bounds.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(64..=MAX_MESSAGE_SIZE).contains(&self.max_message_size) {
            return Err(ConfigError::OutOfRange {
                field: "max_message_size",
                reason: "must be between 64 and 4096 bytes",
            });
        }
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return Err(ConfigError::OutOfRange {
                field: "max_attempts",
                reason: "must be between 1 and 10",
            });
        }
        for (field, value) in [
            ("max_remote_addrs", self.max_remote_addrs),
            ("max_local_addrs", self.max_local_addrs),
            ("max_pending_inbound", self.max_pending_inbound),
            ("max_punches_per_ip", self.max_punches_per_ip),
            ("max_dials_per_upgrade", self.max_dials_per_upgrade),
        ] {
            if !(1..=256).contains(&value) {
                return Err(ConfigError::OutOfRange {
                    field,
                    reason: "must be between 1 and 256",
                });
            }
        }
        for (field, value) in [
            ("step_timeout", self.step_timeout),
            ("direct_timeout", self.direct_timeout),
            ("unilateral_timeout", self.unilateral_timeout),
            ("confirm_timeout", self.confirm_timeout),
            ("spray_interval_min", self.spray_interval_min),
            ("spray_interval_max", self.spray_interval_max),
            ("relay_grace_period", self.relay_grace_period),
        ] {
            if value.is_zero() || value > MAX_DURATION {
                return Err(ConfigError::OutOfRange {
                    field,
                    reason: "must be above zero and at most one hour",
                });
            }
        }
        if let Some(ttl) = self.prime_ttl
            && !(1..=MAX_PRIME_TTL).contains(&ttl)
        {
            return Err(ConfigError::OutOfRange {
                field: "prime_ttl",
                reason: "must be between 1 and 8",
            });
        }
        if self.spray_interval_min > self.spray_interval_max {
            return Err(ConfigError::OutOfRange {
                field: "spray_interval_min",
                reason: "must not exceed spray_interval_max",
            });
        }
        Ok(())
    }
}

/// A [`Config`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field is outside its bounds.
    #[error("config field `{field}` {reason}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The bound it breaks.
        reason: &'static str,
    },
    /// The carrier cannot send the QUIC spray itself
    /// ([`Capabilities::datagrams`]).
    #[error(
        "the carrier cannot send datagrams: set `quic_server_punch` to DialAsServer or DialAsClient"
    )]
    SprayUnsupported,
    /// The carrier carries only the spec ([`Capabilities::session`] is
    /// off: a stream per attempt, its own handshake on direct
    /// connections), and the upgrade was built with the dcutr-rs session.
    #[error(
        "the carrier carries only the spec: build the upgrade without `dcutr_session` / `dcutr_session_unpinned`"
    )]
    SessionUnsupported,
    /// The builder was asked for two different sessions
    /// (`dcutr_session` and `dcutr_session_unpinned`, or `dcutr_session`
    /// with two fingerprints).
    #[error(
        "two different dcutr-rs sessions were asked for: call `dcutr_session(fingerprint)` or `dcutr_session_unpinned()` once"
    )]
    SessionConflict,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let c = Config {
            max_attempts: 0,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange {
                field: "max_attempts",
                ..
            })
        ));
        let c = Config {
            step_timeout: Duration::from_secs(7200),
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange {
                field: "step_timeout",
                ..
            })
        ));
        let c = Config {
            max_message_size: 1 << 20,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            spray_interval_min: Duration::from_secs(1),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        for (ttl, ok) in [(0, false), (1, true), (MAX_PRIME_TTL, true), (9, false)] {
            let c = Config {
                prime_ttl: Some(ttl),
                ..Config::default()
            };
            assert_eq!(c.validate().is_ok(), ok, "prime_ttl {ttl}");
        }
        let c = Config {
            prime_ttl: None,
            ..Config::default()
        };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn a_carrier_without_datagrams_refuses_the_spray_naming_the_fix() {
        assert_eq!(
            Config::default().validate_for(Capabilities::STANDALONE),
            Ok(())
        );
        let libp2p = Config {
            quic_server_punch: QuicServerPunch::DialAsServer,
            ..Config::default()
        };
        assert_eq!(libp2p.validate_for(Capabilities::LIBP2P), Ok(()));
        assert_eq!(libp2p.validate_for(Capabilities::STANDALONE), Ok(()));
        assert_eq!(
            Config::default().validate_for(Capabilities::LIBP2P),
            Err(ConfigError::SprayUnsupported)
        );
        let text = ConfigError::SprayUnsupported.to_string();
        assert!(text.contains("quic_server_punch"), "{text}");
        let text = ConfigError::SessionUnsupported.to_string();
        assert!(text.contains("dcutr_session"), "{text}");
    }
}
