//! Addresses: parsing `ObsAddrs` into typed candidates, filtering them, and
//! choosing what we advertise.
//!
//! A peer's Connect tells us where to dial and where to spray UDP. A
//! hostile peer could name anyone, so every entry passes
//! [`filter_remote`] before it can become a dial or a datagram:
//!
//! * only `/ip4|ip6/…/tcp/PORT` and `/ip4|ip6/…/udp/PORT/quic-v1` are
//!   accepted (an optional trailing `/p2p/ID` is ignored); relayed
//!   (`/p2p-circuit`), DNS, WebSocket, WebTransport and other transports
//!   are dropped;
//! * every IP address is judged by the most specific entry of
//!   [`SPECIAL_RANGES`], one table that follows the IANA IPv4 and IPv6
//!   Special-Purpose Address Registries entry by entry (plus multicast,
//!   site-local and the unallocated IPv6 space): what the registries mark
//!   globally reachable passes;
//! * unspecified, multicast, broadcast, reserved, protocol-assignment,
//!   IPv4-mapped and IPv4-compatible IPv6, Teredo addresses, and port 0,
//!   are always dropped; NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`)
//!   addresses are judged by the IPv4 address they embed, so a peer
//!   cannot name a private host through them;
//! * loopback, local networks (private, link-local, CGNAT, benchmarking,
//!   unique-local) and documentation ranges are dropped unless
//!   [`AddressPolicy`] allows them (tests on one machine need that; the
//!   default allows documentation ranges);
//! * duplicates are dropped and the count is capped.
//!
//! The same rules apply to the addresses we send, so we never advertise
//! what the peer would refuse.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use multiaddr::{Multiaddr, Protocol};

/// Most remote addresses accepted from one Connect, after filtering.
///
/// Every accepted address costs a dial or a spray target, so this bounds
/// the work (and traffic) one Connect can cause. 16 covers TCP and QUIC
/// over IPv4 and IPv6 with room for predicted ports.
pub const MAX_REMOTE_ADDRS: usize = 16;

/// Most local observed addresses remembered (and sent).
///
/// rust-libp2p keeps the 20 most recent candidates; we do the same.
pub const MAX_LOCAL_CANDIDATES: usize = 20;

/// The transports a hole punch can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// TCP, punched by a simultaneous open.
    Tcp,
    /// QUIC v1 over UDP, punched by a client dial plus a UDP spray.
    Quic,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        })
    }
}

/// A typed address: a transport and a socket address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Candidate {
    /// How to reach it.
    pub transport: Transport,
    /// Where.
    pub addr: SocketAddr,
}

impl Candidate {
    /// A TCP candidate.
    #[must_use]
    pub const fn tcp(addr: SocketAddr) -> Self {
        Candidate {
            transport: Transport::Tcp,
            addr,
        }
    }

    /// A QUIC v1 candidate.
    #[must_use]
    pub const fn quic(addr: SocketAddr) -> Self {
        Candidate {
            transport: Transport::Quic,
            addr,
        }
    }

    /// The multiaddr form: `/ip4/A/tcp/P` or `/ip4/A/udp/P/quic-v1`.
    #[must_use]
    pub fn to_multiaddr(&self) -> Multiaddr {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) => Protocol::Ip4(ip),
            IpAddr::V6(ip) => Protocol::Ip6(ip),
        };
        let port = self.addr.port();
        let addr = Multiaddr::empty().with(ip);
        match self.transport {
            Transport::Tcp => addr.with(Protocol::Tcp(port)),
            Transport::Quic => addr.with(Protocol::Udp(port)).with(Protocol::QuicV1),
        }
    }

    /// Parses the structure of a multiaddr (no IP range checks; see
    /// [`AddressPolicy::check`] for those).
    ///
    /// # Errors
    /// [`AddrRejection::Relayed`] for circuit addresses,
    /// [`AddrRejection::UnsupportedTransport`] for anything that is not
    /// plain TCP or QUIC v1 over an IP address.
    pub fn from_multiaddr(addr: &Multiaddr) -> Result<Self, AddrRejection> {
        if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
            return Err(AddrRejection::Relayed);
        }
        let mut parts = addr.iter();
        let ip = match parts.next() {
            Some(Protocol::Ip4(ip)) => IpAddr::V4(ip),
            Some(Protocol::Ip6(ip)) => IpAddr::V6(ip),
            _ => return Err(AddrRejection::UnsupportedTransport),
        };
        let candidate = match (parts.next(), parts.next()) {
            (Some(Protocol::Tcp(port)), next) => (Candidate::tcp(SocketAddr::new(ip, port)), next),
            (Some(Protocol::Udp(port)), Some(Protocol::QuicV1)) => {
                (Candidate::quic(SocketAddr::new(ip, port)), parts.next())
            }
            _ => return Err(AddrRejection::UnsupportedTransport),
        };
        match candidate {
            (c, None) => Ok(c),
            (c, Some(Protocol::P2p(_))) if parts.next().is_none() => Ok(c),
            _ => Err(AddrRejection::UnsupportedTransport),
        }
    }

    /// Parses a binary multiaddr as found in `ObsAddrs`.
    ///
    /// # Errors
    /// [`AddrRejection::Malformed`] when the bytes are not a multiaddr, and
    /// the errors of [`Candidate::from_multiaddr`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AddrRejection> {
        let addr = Multiaddr::try_from(bytes.to_vec()).map_err(|_| AddrRejection::Malformed)?;
        Candidate::from_multiaddr(&addr)
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_multiaddr())
    }
}

/// Why an address was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
#[non_exhaustive]
pub enum AddrRejection {
    /// Not a valid binary multiaddr.
    #[error("not a valid multiaddr")]
    Malformed,
    /// A relayed (`/p2p-circuit`) address: punching it is meaningless.
    #[error("relayed address")]
    Relayed,
    /// Not plain TCP or QUIC v1 over an IP address.
    #[error("unsupported transport")]
    UnsupportedTransport,
    /// We have no socket for this transport and IP family.
    #[error("no local socket for this transport and address family")]
    NotDialable,
    /// `0.0.0.0`, `::` or `0.0.0.0/8`.
    #[error("unspecified address")]
    Unspecified,
    /// Port 0.
    #[error("port 0")]
    PortZero,
    /// Loopback, refused unless [`AddressPolicy::allow_loopback`].
    #[error("loopback address")]
    Loopback,
    /// A local network (private-use, CGNAT, link-local, benchmarking,
    /// unique-local, site-local, local-use NAT64), refused unless
    /// [`AddressPolicy::allow_private`].
    #[error("private address")]
    Private,
    /// A documentation range, refused unless
    /// [`AddressPolicy::allow_documentation`].
    #[error("documentation address")]
    Documentation,
    /// Multicast or broadcast: one datagram would reach many hosts.
    #[error("multicast or broadcast address")]
    Multicast,
    /// Not globally reachable and not a local network either: protocol
    /// assignments, reserved and deprecated ranges, IPv4-mapped IPv6
    /// (advertise `/ip4` instead), Teredo, 6to4 of a non-public address.
    /// See [`SPECIAL_RANGES`].
    #[error("reserved address")]
    Reserved,
    /// Already listed.
    #[error("duplicate address")]
    Duplicate,
    /// Beyond [`MAX_REMOTE_ADDRS`] (or the configured cap).
    #[error("over the address limit")]
    OverLimit,
}

impl AddrRejection {
    /// Every variant, in a fixed order, for counters.
    pub const ALL: [AddrRejection; 13] = [
        AddrRejection::Malformed,
        AddrRejection::Relayed,
        AddrRejection::UnsupportedTransport,
        AddrRejection::NotDialable,
        AddrRejection::Unspecified,
        AddrRejection::PortZero,
        AddrRejection::Loopback,
        AddrRejection::Private,
        AddrRejection::Documentation,
        AddrRejection::Multicast,
        AddrRejection::Reserved,
        AddrRejection::Duplicate,
        AddrRejection::OverLimit,
    ];

    fn index(self) -> usize {
        AddrRejection::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or_default()
    }
}

/// Which IP ranges we accept, beyond the globally reachable ones.
///
/// Each range's treatment is in [`SPECIAL_RANGES`]; multicast, broadcast,
/// unspecified and reserved ranges are refused whatever the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AddressPolicy {
    /// Accept `127.0.0.0/8` and `::1`. Off by default: a peer naming our
    /// own loopback would make us dial ourselves. Tests on one machine
    /// switch it on.
    pub allow_loopback: bool,
    /// Accept local networks: private-use (`10/8`, `172.16/12`,
    /// `192.168/16`), CGNAT (`100.64/10`), link-local, benchmarking
    /// (`198.18/15`, `2001:2::/48`), unique-local, site-local and
    /// local-use NAT64. Off by default: a peer naming them could make us
    /// probe our own LAN. Peers on one LAN, and NAT labs, switch it on.
    pub allow_private: bool,
    /// Accept the documentation ranges (`192.0.2/24`, `198.51.100/24`,
    /// `203.0.113/24`, `2001:db8::/32`, `3fff::/20`). On by default: the
    /// registries mark them not globally reachable and the internet does
    /// not route them, so naming one cannot aim our packets at a host out
    /// there, while test networks (the NAT lab's "public" segment is
    /// `203.0.113/24`, and every test of this workspace) use them as
    /// public. A network that numbers real hosts from them should use
    /// [`AddressPolicy::strict`], which switches it off.
    pub allow_documentation: bool,
}

impl Default for AddressPolicy {
    fn default() -> Self {
        AddressPolicy::public_only()
    }
}

impl AddressPolicy {
    /// Public addresses only (the default): globally reachable ranges,
    /// plus the documentation ranges (see
    /// [`AddressPolicy::allow_documentation`]).
    #[must_use]
    pub const fn public_only() -> Self {
        AddressPolicy {
            allow_loopback: false,
            allow_private: false,
            allow_documentation: true,
        }
    }

    /// Only what the IANA registries mark globally reachable: like
    /// [`AddressPolicy::public_only`], without the documentation ranges.
    #[must_use]
    pub const fn strict() -> Self {
        AddressPolicy {
            allow_loopback: false,
            allow_private: false,
            allow_documentation: false,
        }
    }

    /// Every unicast range, loopback included: for tests on one machine.
    #[must_use]
    pub const fn permissive() -> Self {
        AddressPolicy {
            allow_loopback: true,
            allow_private: true,
            allow_documentation: true,
        }
    }

    /// Checks the IP range and port of a candidate.
    ///
    /// # Errors
    /// The [`AddrRejection`] that applies.
    pub fn check(&self, candidate: &Candidate) -> Result<(), AddrRejection> {
        if candidate.addr.port() == 0 {
            return Err(AddrRejection::PortZero);
        }
        match classify(candidate.addr.ip()) {
            RangeClass::Global => Ok(()),
            RangeClass::Loopback if self.allow_loopback => Ok(()),
            RangeClass::Private if self.allow_private => Ok(()),
            RangeClass::Documentation if self.allow_documentation => Ok(()),
            RangeClass::Loopback => Err(AddrRejection::Loopback),
            RangeClass::Private => Err(AddrRejection::Private),
            RangeClass::Documentation => Err(AddrRejection::Documentation),
            RangeClass::Unspecified => Err(AddrRejection::Unspecified),
            RangeClass::Multicast => Err(AddrRejection::Multicast),
            RangeClass::Reserved | RangeClass::Nat64 | RangeClass::SixToFour => {
                Err(AddrRejection::Reserved)
            }
        }
    }
}

/// How the filter treats an address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RangeClass {
    /// Globally reachable: always accepted.
    Global,
    /// Our own host: accepted only with [`AddressPolicy::allow_loopback`].
    Loopback,
    /// A local network (private-use, shared/CGNAT, link-local,
    /// benchmarking, unique-local, site-local, local-use NAT64): accepted
    /// only with [`AddressPolicy::allow_private`].
    Private,
    /// A documentation range: accepted only with
    /// [`AddressPolicy::allow_documentation`].
    Documentation,
    /// "This network" and the unspecified address: always refused.
    Unspecified,
    /// Multicast and limited broadcast: always refused.
    Multicast,
    /// Anything else that is not globally reachable (protocol
    /// assignments, reserved, deprecated, IPv4-mapped, Teredo, discard
    /// and SRv6 prefixes): always refused.
    Reserved,
    /// NAT64 (`64:ff9b::/96`): judged by the IPv4 address in its last
    /// 32 bits, which the local NAT64 gateway turns it into.
    Nat64,
    /// 6to4 (`2002::/16`): judged by the IPv4 address of the tunnel end in
    /// bits 16..48; anything but a globally reachable (or documentation)
    /// IPv4 address makes it [`RangeClass::Reserved`].
    SixToFour,
}

impl fmt::Display for RangeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RangeClass::Global => "global",
            RangeClass::Loopback => "loopback",
            RangeClass::Private => "private",
            RangeClass::Documentation => "documentation",
            RangeClass::Unspecified => "unspecified",
            RangeClass::Multicast => "multicast",
            RangeClass::Reserved => "reserved",
            RangeClass::Nat64 => "nat64",
            RangeClass::SixToFour => "6to4",
        })
    }
}

/// One entry of [`SPECIAL_RANGES`]: a prefix, where it comes from, and
/// how the filter treats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialRange {
    /// The first address of the prefix (no host bits set).
    pub prefix: IpAddr,
    /// The prefix length in bits.
    pub len: u8,
    /// The registry's name for it.
    pub name: &'static str,
    /// The defining documents.
    pub reference: &'static str,
    /// Listed in the IANA IPv4 or IPv6 Special-Purpose Address Registry.
    /// The few entries that are not (multicast, site-local, the IPv6
    /// space the IETF has not allocated, IPv4-compatible IPv6) come from
    /// the IPv4 Multicast and IPv6 Address Space registries.
    pub iana_special: bool,
    /// The registry's "Globally Reachable" column; `None` where it says
    /// N/A (Teredo, 6to4, deprecated entries). For entries outside the
    /// special-purpose registries, whether unicast there reaches the
    /// internet.
    pub globally_reachable: Option<bool>,
    /// How the filter treats it. Globally reachable entries are
    /// [`RangeClass::Global`] (NAT64, judged by what it embeds, aside);
    /// no other entry is.
    pub class: RangeClass,
}

impl SpecialRange {
    /// Whether `ip` lies in this prefix (the families must match).
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.prefix, ip) {
            (IpAddr::V4(p), IpAddr::V4(a)) => prefix_eq(
                u128::from(u32::from(p)),
                u128::from(u32::from(a)),
                self.len,
                32,
            ),
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                prefix_eq(u128::from(p), u128::from(a), self.len, 128)
            }
            _ => false,
        }
    }
}

/// Whether the top `len` of `width` bits of `a` and `b` agree.
fn prefix_eq(a: u128, b: u128, len: u8, width: u32) -> bool {
    let host_bits = width.saturating_sub(u32::from(len));
    if host_bits >= 128 {
        return true;
    }
    (a >> host_bits) == (b >> host_bits)
}

const fn v4(
    ip: [u8; 4],
    len: u8,
    name: &'static str,
    reference: &'static str,
    globally_reachable: Option<bool>,
    class: RangeClass,
) -> SpecialRange {
    SpecialRange {
        prefix: IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
        len,
        name,
        reference,
        iana_special: true,
        globally_reachable,
        class,
    }
}

const fn v6(
    s: [u16; 8],
    len: u8,
    name: &'static str,
    reference: &'static str,
    globally_reachable: Option<bool>,
    class: RangeClass,
) -> SpecialRange {
    SpecialRange {
        prefix: IpAddr::V6(Ipv6Addr::new(
            s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
        )),
        len,
        name,
        reference,
        iana_special: true,
        globally_reachable,
        class,
    }
}

/// An entry from outside the special-purpose registries.
const fn other(mut range: SpecialRange) -> SpecialRange {
    range.iana_special = false;
    range
}

/// An IPv6 block the IETF has not allocated (IPv6 Address Space
/// registry, "Reserved by IETF"): nothing there can be reached.
const fn unallocated_v6(first: u16, len: u8) -> SpecialRange {
    other(v6(
        [first, 0, 0, 0, 0, 0, 0, 0],
        len,
        "Reserved by IETF",
        "RFC 4291",
        Some(false),
        RangeClass::Reserved,
    ))
}

use RangeClass::{
    Documentation as Doc, Global, Loopback as Lo, Multicast as Multi, Nat64, Private as Priv,
    Reserved as Res, SixToFour, Unspecified as Unspec,
};

/// Every special-purpose range the filter knows, IPv4 then IPv6.
///
/// The IANA IPv4 and IPv6 Special-Purpose Address Registries (as
/// updated in 2025), entry by entry, with their "Globally Reachable"
/// column; then multicast, site-local, IPv4-compatible IPv6 and the IPv6
/// space the IETF has not allocated. An address is judged by the longest
/// prefix that contains it ([`special_range`]); an address in none of
/// them is [`RangeClass::Global`].
///
/// Three choices go beyond the registries' columns:
/// * documentation ranges are [`RangeClass::Documentation`], which
///   [`AddressPolicy::public_only`] accepts: they route nowhere on the
///   internet, and test networks (this project's NAT lab among them) use
///   them as their "public" segment. [`AddressPolicy::strict`] refuses
///   them;
/// * benchmarking ranges, like site-local, count as local networks
///   ([`RangeClass::Private`]): labs number hosts from them;
/// * `192.88.99.0/24` (deprecated 6to4 relay anycast) is refused as a
///   whole, sub-entries included.
#[rustfmt::skip]
pub const SPECIAL_RANGES: &[SpecialRange] = &[
    // IANA IPv4 Special-Purpose Address Registry.
    v4([0, 0, 0, 0], 8, "\"This network\"", "RFC 791", Some(false), Unspec),
    v4([0, 0, 0, 0], 32, "\"This host on this network\"", "RFC 1122", Some(false), Unspec),
    v4([10, 0, 0, 0], 8, "Private-Use", "RFC 1918", Some(false), Priv),
    v4([100, 64, 0, 0], 10, "Shared Address Space", "RFC 6598", Some(false), Priv),
    v4([127, 0, 0, 0], 8, "Loopback", "RFC 1122", Some(false), Lo),
    v4([169, 254, 0, 0], 16, "Link Local", "RFC 3927", Some(false), Priv),
    v4([172, 16, 0, 0], 12, "Private-Use", "RFC 1918", Some(false), Priv),
    v4([192, 0, 0, 0], 24, "IETF Protocol Assignments", "RFC 6890", Some(false), Res),
    v4([192, 0, 0, 0], 29, "IPv4 Service Continuity Prefix", "RFC 7335", Some(false), Res),
    v4([192, 0, 0, 8], 32, "IPv4 dummy address", "RFC 7600", Some(false), Res),
    v4([192, 0, 0, 9], 32, "Port Control Protocol Anycast", "RFC 7723", Some(true), Global),
    v4([192, 0, 0, 10], 32, "Traversal Using Relays around NAT Anycast", "RFC 8155", Some(true), Global),
    v4([192, 0, 0, 170], 32, "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050", Some(false), Res),
    v4([192, 0, 0, 171], 32, "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050", Some(false), Res),
    v4([192, 0, 2, 0], 24, "Documentation (TEST-NET-1)", "RFC 5737", Some(false), Doc),
    v4([192, 31, 196, 0], 24, "AS112-v4", "RFC 7535", Some(true), Global),
    v4([192, 52, 193, 0], 24, "AMT", "RFC 7450", Some(true), Global),
    v4([192, 88, 99, 0], 24, "Deprecated (6to4 Relay Anycast)", "RFC 7526", None, Res),
    v4([192, 168, 0, 0], 16, "Private-Use", "RFC 1918", Some(false), Priv),
    v4([192, 175, 48, 0], 24, "Direct Delegation AS112 Service", "RFC 7534", Some(true), Global),
    v4([198, 18, 0, 0], 15, "Benchmarking", "RFC 2544", Some(false), Priv),
    v4([198, 51, 100, 0], 24, "Documentation (TEST-NET-2)", "RFC 5737", Some(false), Doc),
    v4([203, 0, 113, 0], 24, "Documentation (TEST-NET-3)", "RFC 5737", Some(false), Doc),
    v4([240, 0, 0, 0], 4, "Reserved", "RFC 1112", Some(false), Res),
    v4([255, 255, 255, 255], 32, "Limited Broadcast", "RFC 8190, RFC 919", Some(false), Multi),
    // IPv4 Multicast Address Space registry.
    other(v4([224, 0, 0, 0], 4, "Multicast", "RFC 5771", Some(false), Multi)),
    // IANA IPv6 Special-Purpose Address Registry.
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "Loopback Address", "RFC 4291", Some(false), Lo),
    v6([0; 8], 128, "Unspecified Address", "RFC 4291", Some(false), Unspec),
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, "IPv4-mapped Address", "RFC 4291", Some(false), Res),
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, "IPv4-IPv6 Translat.", "RFC 6052", Some(true), Nat64),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "IPv4-IPv6 Translat.", "RFC 8215", Some(false), Priv),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "Discard-Only Address Block", "RFC 6666", Some(false), Res),
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, "Dummy IPv6 Prefix", "RFC 9780", Some(false), Res),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "IETF Protocol Assignments", "RFC 2928", Some(false), Res),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "TEREDO", "RFC 4380, RFC 8190", None, Res),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128, "Port Control Protocol Anycast", "RFC 7723", Some(true), Global),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128, "Traversal Using Relays around NAT Anycast", "RFC 8155", Some(true), Global),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 3], 128, "DNS-SD Service Registration Protocol Anycast", "RFC 9665", Some(true), Global),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, "Benchmarking", "RFC 5180", Some(false), Priv),
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, "AMT", "RFC 7450", Some(true), Global),
    v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48, "AS112-v6", "RFC 7535", Some(true), Global),
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28, "Deprecated (previously ORCHID)", "RFC 4843", None, Res),
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, "ORCHIDv2", "RFC 7343", Some(true), Global),
    v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28, "Drone Remote ID Protocol Entity Tags (DETs) Prefix", "RFC 9374", Some(true), Global),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "Documentation", "RFC 3849", Some(false), Doc),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4", "RFC 3056", None, SixToFour),
    v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48, "Direct Delegation AS112 Service", "RFC 7534", Some(true), Global),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "Documentation", "RFC 9637", Some(false), Doc),
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "Segment Routing (SRv6) SIDs", "RFC 9602", Some(false), Res),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "Unique-Local", "RFC 4193, RFC 8190", Some(false), Priv),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "Link-Local Unicast", "RFC 4291", Some(false), Priv),
    // IPv6 Address Space registry.
    other(v6([0; 8], 96, "IPv4-compatible Address (deprecated)", "RFC 4291", Some(false), Res)),
    other(v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "Site-Local (deprecated)", "RFC 3879", Some(false), Priv)),
    other(v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "Multicast", "RFC 4291", Some(false), Multi)),
    unallocated_v6(0x0000, 8),
    unallocated_v6(0x0100, 8),
    unallocated_v6(0x0200, 7),
    unallocated_v6(0x0400, 6),
    unallocated_v6(0x0800, 5),
    unallocated_v6(0x1000, 4),
    unallocated_v6(0x4000, 3),
    unallocated_v6(0x6000, 3),
    unallocated_v6(0x8000, 3),
    unallocated_v6(0xa000, 3),
    unallocated_v6(0xc000, 3),
    unallocated_v6(0xe000, 4),
    unallocated_v6(0xf000, 5),
    unallocated_v6(0xf800, 6),
    unallocated_v6(0xfe00, 9),
];

/// How many entries of [`SPECIAL_RANGES`] are IPv4: they all come first,
/// so a lookup scans only its own family.
const IPV4_ENTRIES: usize = {
    let mut n = 0;
    while n < SPECIAL_RANGES.len() && SPECIAL_RANGES[n].prefix.is_ipv4() {
        n += 1;
    }
    let mut rest = n;
    while rest < SPECIAL_RANGES.len() {
        assert!(
            SPECIAL_RANGES[rest].prefix.is_ipv6(),
            "SPECIAL_RANGES lists IPv4 entries first"
        );
        rest += 1;
    }
    n
};

/// The most specific entry of [`SPECIAL_RANGES`] that contains `ip`, or
/// `None` for ordinary (globally reachable) unicast.
#[must_use]
pub fn special_range(ip: IpAddr) -> Option<&'static SpecialRange> {
    let (v4, v6) = SPECIAL_RANGES.split_at(IPV4_ENTRIES);
    let family = if ip.is_ipv4() { v4 } else { v6 };
    family
        .iter()
        .filter(|r| r.contains(ip))
        .max_by_key(|r| r.len)
}

/// How the filter treats `ip`: the class of its most specific
/// [`SPECIAL_RANGES`] entry, with NAT64 and 6to4 resolved through the
/// IPv4 address they embed (so the result is never
/// [`RangeClass::Nat64`] or [`RangeClass::SixToFour`]).
#[must_use]
pub fn classify(ip: IpAddr) -> RangeClass {
    let Some(range) = special_range(ip) else {
        return RangeClass::Global;
    };
    let IpAddr::V6(v6) = ip else {
        return range.class;
    };
    let bits = u128::from(v6);
    let embedded = |shift: u32| {
        // Truncation intended: the 32 bits at `shift`.
        #[allow(clippy::cast_possible_truncation)]
        let v4 = (bits >> shift) as u32;
        classify(IpAddr::V4(Ipv4Addr::from(v4)))
    };
    match range.class {
        RangeClass::Nat64 => embedded(0),
        RangeClass::SixToFour => match embedded(80) {
            class @ (RangeClass::Global | RangeClass::Documentation) => class,
            _ => RangeClass::Reserved,
        },
        class => class,
    }
}

/// The transports and IP families we have local sockets for.
///
/// A candidate we cannot dial (QUIC without a QUIC endpoint, IPv6 with an
/// IPv4-only socket) is dropped rather than dialled and failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dialable {
    /// TCP over IPv4.
    pub tcp_v4: bool,
    /// TCP over IPv6.
    pub tcp_v6: bool,
    /// QUIC over IPv4.
    pub quic_v4: bool,
    /// QUIC over IPv6.
    pub quic_v6: bool,
}

impl Default for Dialable {
    fn default() -> Self {
        Dialable::all()
    }
}

impl Dialable {
    /// Everything.
    #[must_use]
    pub const fn all() -> Self {
        Dialable {
            tcp_v4: true,
            tcp_v6: true,
            quic_v4: true,
            quic_v6: true,
        }
    }

    /// Nothing; combine with [`Dialable::with`].
    #[must_use]
    pub const fn none() -> Self {
        Dialable {
            tcp_v4: false,
            tcp_v6: false,
            quic_v4: false,
            quic_v6: false,
        }
    }

    /// Adds one transport for one family (`ipv6` false means IPv4).
    #[must_use]
    pub const fn with(mut self, transport: Transport, ipv6: bool) -> Self {
        match (transport, ipv6) {
            (Transport::Tcp, false) => self.tcp_v4 = true,
            (Transport::Tcp, true) => self.tcp_v6 = true,
            (Transport::Quic, false) => self.quic_v4 = true,
            (Transport::Quic, true) => self.quic_v6 = true,
        }
        self
    }

    /// Whether `candidate` can be dialled.
    #[must_use]
    pub fn allows(&self, candidate: &Candidate) -> bool {
        match (candidate.transport, candidate.addr.is_ipv6()) {
            (Transport::Tcp, false) => self.tcp_v4,
            (Transport::Tcp, true) => self.tcp_v6,
            (Transport::Quic, false) => self.quic_v4,
            (Transport::Quic, true) => self.quic_v6,
        }
    }
}

/// How many addresses were dropped, per reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RejectionCounts([u16; AddrRejection::ALL.len()]);

impl RejectionCounts {
    /// Counts one rejection.
    pub fn add(&mut self, reason: AddrRejection) {
        let slot = &mut self.0[reason.index()];
        *slot = slot.saturating_add(1);
    }

    /// Rejections for `reason` (saturating at `u16::MAX`; one frame of
    /// 4 KiB holds at most about 2000 entries).
    #[must_use]
    pub fn get(&self, reason: AddrRejection) -> u32 {
        u32::from(self.0[reason.index()])
    }

    /// All rejections.
    #[must_use]
    pub fn total(&self) -> u32 {
        self.0.iter().map(|n| u32::from(*n)).sum()
    }

    /// The non-zero counts, in the order of [`AddrRejection::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = (AddrRejection, u32)> + '_ {
        AddrRejection::ALL
            .iter()
            .zip(self.0)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (*r, u32::from(n)))
    }
}

/// The usable addresses of one Connect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteAddrs {
    /// Accepted candidates, in the peer's order.
    pub accepted: Vec<Candidate>,
    /// Dropped entries, per reason.
    pub rejected: RejectionCounts,
}

/// Parses and filters the raw `ObsAddrs` of a peer's Connect.
///
/// Keeps at most `max` candidates that pass structure, `policy` and
/// `dialable`, dropping duplicates; never allocates more than `max`
/// candidates whatever the peer sent.
#[must_use]
pub fn filter_remote<'a, I>(
    raw: I,
    policy: &AddressPolicy,
    dialable: &Dialable,
    max: usize,
) -> RemoteAddrs
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut out = RemoteAddrs::default();
    for bytes in raw {
        let verdict = Candidate::from_bytes(bytes)
            .and_then(|c| policy.check(&c).map(|()| c))
            .and_then(|c| {
                if dialable.allows(&c) {
                    Ok(c)
                } else {
                    Err(AddrRejection::NotDialable)
                }
            })
            .and_then(|c| {
                if out.accepted.contains(&c) {
                    Err(AddrRejection::Duplicate)
                } else if out.accepted.len() >= max {
                    Err(AddrRejection::OverLimit)
                } else {
                    Ok(c)
                }
            });
        match verdict {
            Ok(c) => out.accepted.push(c),
            Err(reason) => {
                tracing::trace!(%reason, len = bytes.len(), "dropped a remote address");
                out.rejected.add(reason);
            }
        }
    }
    out
}

/// Our own observed addresses, most recently observed first, deduplicated
/// and capped (an LRU).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedAddrs {
    cap: usize,
    list: Vec<Candidate>,
}

impl Default for ObservedAddrs {
    fn default() -> Self {
        ObservedAddrs::new(MAX_LOCAL_CANDIDATES)
    }
}

impl ObservedAddrs {
    /// An empty set remembering at most `cap` addresses.
    #[must_use]
    pub fn new(cap: usize) -> Self {
        ObservedAddrs {
            cap,
            list: Vec::new(),
        }
    }

    /// Records that `candidate` was observed now: it moves to the front,
    /// and the least recently observed address falls out when full.
    pub fn observe(&mut self, candidate: Candidate) {
        if let Some(pos) = self.list.iter().position(|c| *c == candidate) {
            self.list.remove(pos);
        }
        self.list.insert(0, candidate);
        self.list.truncate(self.cap);
    }

    /// Heap bytes held.
    #[must_use]
    #[cfg(feature = "internals")]
    pub fn heap_bytes(&self) -> usize {
        self.list.capacity() * std::mem::size_of::<Candidate>()
    }

    /// The addresses, most recent first.
    #[must_use]
    pub fn as_slice(&self) -> &[Candidate] {
        &self.list
    }
}

/// Adds predicted addresses to the observed ones we send.
///
/// The protocol sends "observed and possibly predicted" addresses: a NAT
/// that allocates ports in sequence can be punched through a guess of the
/// next port. Implementations append guesses to `out`; the core filters,
/// deduplicates and caps them like any other address, after the observed
/// ones. The default is [`NoPrediction`].
pub trait AddressPredictor: Send {
    /// Appends predicted candidates for the next attempt to `out`.
    fn predict(&mut self, observed: &[Candidate], out: &mut Vec<Candidate>);
}

/// Predicts nothing: only observed addresses are sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPrediction;

impl AddressPredictor for NoPrediction {
    fn predict(&mut self, _observed: &[Candidate], _out: &mut Vec<Candidate>) {}
}

/// The addresses to put into our Connect: observed first (most recent
/// first), then predicted, each passing `policy`, without duplicates, at
/// most `max`.
#[must_use]
pub fn local_addrs_to_send(
    observed: &ObservedAddrs,
    predictor: &mut dyn AddressPredictor,
    policy: &AddressPolicy,
    max: usize,
) -> Vec<Candidate> {
    let mut predicted = Vec::new();
    predictor.predict(observed.as_slice(), &mut predicted);
    let mut out: Vec<Candidate> =
        Vec::with_capacity(max.min(observed.list.len() + predicted.len()));
    for c in observed.as_slice().iter().chain(&predicted) {
        if out.len() >= max {
            break;
        }
        if policy.check(c).is_ok() && !out.contains(c) {
            out.push(*c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Vec<u8> {
        s.parse::<Multiaddr>().unwrap().to_vec()
    }

    fn one(s: &str, policy: AddressPolicy) -> Result<Candidate, AddrRejection> {
        let r = filter_remote([&ma(s)[..]], &policy, &Dialable::all(), MAX_REMOTE_ADDRS);
        match r.accepted.first() {
            Some(c) => Ok(*c),
            None => Err(r.rejected.iter().next().unwrap().0),
        }
    }

    const PUBLIC: AddressPolicy = AddressPolicy::public_only();

    #[test]
    fn tcp_and_quic_v1_are_accepted() {
        assert_eq!(
            one("/ip4/1.2.3.4/tcp/4001", PUBLIC),
            Ok(Candidate::tcp("1.2.3.4:4001".parse().unwrap()))
        );
        assert_eq!(
            one("/ip6/2001:4860::1/udp/443/quic-v1", PUBLIC),
            Ok(Candidate::quic("[2001:4860::1]:443".parse().unwrap()))
        );
    }

    #[test]
    fn trailing_peer_id_is_ignored() {
        let s = "/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWGzBGDWBJ3DDtb4cdA1LzT6pKwRjX2pT8ZbR9W5vNMLyx";
        assert_eq!(
            one(s, PUBLIC),
            Ok(Candidate::tcp("1.2.3.4:4001".parse().unwrap()))
        );
    }

    #[test]
    fn relayed_addresses_are_dropped() {
        let s = "/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWGzBGDWBJ3DDtb4cdA1LzT6pKwRjX2pT8ZbR9W5vNMLyx/p2p-circuit";
        assert_eq!(one(s, PUBLIC), Err(AddrRejection::Relayed));
    }

    #[test]
    fn other_transports_are_dropped() {
        for s in [
            "/ip4/1.2.3.4/udp/4001/quic",
            "/ip4/1.2.3.4/udp/4001",
            "/ip4/1.2.3.4/tcp/4001/ws",
            "/ip4/1.2.3.4/udp/4001/quic-v1/webtransport",
            "/dns4/example.com/tcp/4001",
            "/ip4/1.2.3.4",
        ] {
            assert_eq!(
                one(s, PUBLIC),
                Err(AddrRejection::UnsupportedTransport),
                "{s}"
            );
        }
    }

    #[test]
    fn garbage_bytes_are_malformed() {
        let r = filter_remote(
            [&[0xff, 0xff, 0xff][..], &[][..]],
            &PUBLIC,
            &Dialable::all(),
            16,
        );
        assert!(r.accepted.is_empty());
        assert_eq!(r.rejected.get(AddrRejection::Malformed), 1);
        // An empty multiaddr parses, but names no transport.
        assert_eq!(r.rejected.get(AddrRejection::UnsupportedTransport), 1);
    }

    #[test]
    fn unspecified_and_port_zero_are_dropped() {
        assert_eq!(
            one("/ip4/0.0.0.0/tcp/1", PUBLIC),
            Err(AddrRejection::Unspecified)
        );
        assert_eq!(
            one("/ip6/::/tcp/1", PUBLIC),
            Err(AddrRejection::Unspecified)
        );
        assert_eq!(
            one("/ip4/1.2.3.4/tcp/0", PUBLIC),
            Err(AddrRejection::PortZero)
        );
    }

    #[test]
    fn multicast_broadcast_and_reserved_are_always_dropped() {
        let all = AddressPolicy::permissive();
        assert_eq!(
            one("/ip4/224.0.0.1/udp/9/quic-v1", all),
            Err(AddrRejection::Multicast)
        );
        assert_eq!(
            one("/ip4/255.255.255.255/tcp/9", all),
            Err(AddrRejection::Multicast)
        );
        assert_eq!(
            one("/ip6/ff02::1/tcp/9", all),
            Err(AddrRejection::Multicast)
        );
        assert_eq!(
            one("/ip4/240.0.0.1/tcp/9", all),
            Err(AddrRejection::Reserved)
        );
        assert_eq!(
            one("/ip6/::ffff:1.2.3.4/tcp/9", all),
            Err(AddrRejection::Reserved)
        );
    }

    #[test]
    fn ipv6_forms_are_judged_by_the_ipv4_address_they_embed() {
        // NAT64 and 6to4 of a private address name a private host.
        assert_eq!(
            one("/ip6/64:ff9b::a00:1/tcp/9", PUBLIC),
            Err(AddrRejection::Private)
        );
        assert_eq!(
            one("/ip6/64:ff9b::7f00:1/tcp/9", PUBLIC),
            Err(AddrRejection::Loopback)
        );
        assert_eq!(
            one("/ip6/2002:a00:1::1/tcp/9", PUBLIC),
            Err(AddrRejection::Reserved)
        );
        // The same forms of a public address are fine.
        assert!(one("/ip6/64:ff9b::102:304/tcp/9", PUBLIC).is_ok());
        assert!(one("/ip6/2002:102:304::1/tcp/9", PUBLIC).is_ok());
        // IPv4-compatible, local-use NAT64 and Teredo are refused.
        assert_eq!(
            one("/ip6/::102:304/tcp/9", PUBLIC),
            Err(AddrRejection::Reserved)
        );
        assert_eq!(
            one("/ip6/64:ff9b:1::1/tcp/9", PUBLIC),
            Err(AddrRejection::Private)
        );
        assert_eq!(
            one("/ip6/2001:0:4136:e378::1/tcp/9", PUBLIC),
            Err(AddrRejection::Reserved)
        );
    }

    #[test]
    fn loopback_only_when_allowed() {
        assert_eq!(
            one("/ip4/127.0.0.1/tcp/9", PUBLIC),
            Err(AddrRejection::Loopback)
        );
        assert_eq!(one("/ip6/::1/tcp/9", PUBLIC), Err(AddrRejection::Loopback));
        let lo = AddressPolicy {
            allow_loopback: true,
            ..AddressPolicy::public_only()
        };
        assert!(one("/ip4/127.0.0.1/tcp/9", lo).is_ok());
        assert_eq!(one("/ip4/10.0.0.1/tcp/9", lo), Err(AddrRejection::Private));
    }

    #[test]
    fn private_ranges_only_when_allowed() {
        let private = AddressPolicy {
            allow_private: true,
            ..AddressPolicy::public_only()
        };
        for s in [
            "/ip4/10.1.2.3/tcp/9",
            "/ip4/172.16.0.1/tcp/9",
            "/ip4/192.168.1.1/tcp/9",
            "/ip4/100.64.0.1/tcp/9",
            "/ip4/169.254.1.1/tcp/9",
            "/ip6/fe80::1/tcp/9",
            "/ip6/fd00::1/tcp/9",
        ] {
            assert_eq!(one(s, PUBLIC), Err(AddrRejection::Private), "{s}");
            assert!(one(s, private).is_ok(), "{s}");
        }
        assert!(
            one("/ip4/100.128.0.1/tcp/9", PUBLIC).is_ok(),
            "just above CGNAT"
        );
        assert!(
            one("/ip4/172.32.0.1/tcp/9", PUBLIC).is_ok(),
            "just above 172.16/12"
        );
    }

    #[test]
    fn duplicates_are_dropped_and_the_count_is_capped() {
        let a = ma("/ip4/1.2.3.4/tcp/1");
        let many: Vec<Vec<u8>> = (1..=40u16)
            .map(|p| ma(&format!("/ip4/1.2.3.4/tcp/{p}")))
            .collect();
        let raw = std::iter::once(&a[..])
            .chain(std::iter::once(&a[..]))
            .chain(many.iter().map(|v| &v[..]));
        let r = filter_remote(raw, &PUBLIC, &Dialable::all(), 16);
        assert_eq!(r.accepted.len(), 16);
        assert_eq!(
            r.rejected.get(AddrRejection::Duplicate),
            2,
            "the repeat of port 1, twice"
        );
        assert_eq!(r.rejected.get(AddrRejection::OverLimit), 24);
        assert_eq!(r.rejected.total(), 26);
    }

    #[test]
    fn addresses_we_cannot_dial_are_dropped() {
        let tcp4 = Dialable::none().with(Transport::Tcp, false);
        let raw = [
            ma("/ip6/2001:4860::1/tcp/1"),
            ma("/ip4/1.2.3.4/udp/1/quic-v1"),
            ma("/ip4/1.2.3.4/tcp/1"),
        ];
        let r = filter_remote(raw.iter().map(|v| &v[..]), &PUBLIC, &tcp4, 16);
        assert_eq!(
            r.accepted,
            vec![Candidate::tcp("1.2.3.4:1".parse().unwrap())]
        );
        assert_eq!(r.rejected.get(AddrRejection::NotDialable), 2);
    }

    #[test]
    fn observed_addresses_are_most_recent_first_and_capped() {
        let mut o = ObservedAddrs::new(3);
        let c = |p: u16| Candidate::tcp(SocketAddr::from(([1, 2, 3, 4], p)));
        for p in [1, 2, 3, 1, 4] {
            o.observe(c(p));
        }
        assert_eq!(o.as_slice(), &[c(4), c(1), c(3)]);
    }

    struct NextPort;
    impl AddressPredictor for NextPort {
        fn predict(&mut self, observed: &[Candidate], out: &mut Vec<Candidate>) {
            for c in observed {
                let mut next = *c;
                next.addr.set_port(c.addr.port() + 1);
                out.push(next);
            }
        }
    }

    #[test]
    fn predicted_addresses_follow_observed_ones_and_obey_the_rules() {
        let mut o = ObservedAddrs::default();
        o.observe(Candidate::tcp("10.0.0.1:5".parse().unwrap()));
        o.observe(Candidate::tcp("1.2.3.4:5".parse().unwrap()));
        o.observe(Candidate::tcp("1.2.3.4:6".parse().unwrap()));
        let sent = local_addrs_to_send(&o, &mut NextPort, &PUBLIC, 16);
        let ports: Vec<u16> = sent.iter().map(|c| c.addr.port()).collect();
        // Observed, most recent first: :6 and :5 (10.0.0.1:5 is private).
        // Predicted: :7 is new, :6 a duplicate, 10.0.0.1:6 private.
        assert_eq!(ports, vec![6, 5, 7]);
    }

    #[test]
    fn candidate_multiaddr_round_trips() {
        for c in [
            Candidate::tcp("1.2.3.4:80".parse().unwrap()),
            Candidate::quic("[2001:db8::1]:443".parse().unwrap()),
        ] {
            assert_eq!(Candidate::from_bytes(&c.to_multiaddr().to_vec()), Ok(c));
        }
        assert_eq!(
            Candidate::quic("1.2.3.4:443".parse().unwrap()).to_string(),
            "/ip4/1.2.3.4/udp/443/quic-v1"
        );
    }
}
