//! NATs as RFC 4787 describes them: how a NAT maps a socket towards
//! destinations, how it picks external ports, which inbound packets it
//! lets through, and what it does with the rest.
//!
//! A [`NatModel`] is the description (copyable, part of a
//! [`SimConfig`](crate::SimConfig)); [`NatState`] is one NAT's table of
//! mappings as a simulation runs. The simulator asks it to translate the
//! source of every outbound punch packet ([`NatState::outbound`]) and to
//! decide on every inbound one ([`NatState::inbound`]).
//!
//! Everything is deterministic: ports drawn at random come from a seeded
//! ChaCha8 stream, and the tables are vectors searched in order.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dcutr_core::Transport;
use dcutr_core::nat::{Allocation, Filtering, Mapping, NatBehaviour};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Idle time after which a UDP mapping expires: 120 s.
///
/// RFC 4787 REQ-5: a UDP mapping timer must not expire in less than two
/// minutes (Linux keeps an answered UDP flow 120 s too).
pub const UDP_MAPPING_TIMEOUT: Duration = Duration::from_secs(120);

/// Idle time after which a TCP mapping of a connection that never got
/// established expires: 240 s.
///
/// RFC 5382 REQ-5: the idle timeout of a transitory TCP connection must
/// not be less than 4 minutes.
pub const TCP_MAPPING_TIMEOUT: Duration = Duration::from_secs(240);

/// How long a router without a firewall remembers a TCP packet it took
/// for itself (and answered with a reset): 10 s, Linux's
/// `nf_conntrack_tcp_timeout_close`.
pub const ROUTER_TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a router without a firewall remembers a UDP packet it took
/// for itself: 30 s, Linux's `nf_conntrack_udp_timeout` (unreplied).
pub const ROUTER_UDP_TIMEOUT: Duration = Duration::from_secs(30);

/// Random draws before a NAT gives up allocating a port (and drops the
/// packet).
///
/// Only a nearly full port range needs more than a few; 64 draws miss a
/// free port with probability `taken^64`, below 10⁻⁶ even with 80 % of
/// the range taken.
pub const MAX_ALLOCATION_TRIES: u32 = 64;

/// Most mappings one NAT keeps; a new one past this is refused (the
/// packet is dropped), as a full conntrack table drops.
///
/// A simulated punch opens a few mappings per transport (relay, one per
/// peer address, the birthday punch's N sockets); 4096 leaves room for
/// N = 2048 and bounds what a runaway test can allocate.
pub const MAX_MAPPINGS: usize = 4096;

/// How a NAT maps one internal socket towards different destinations
/// (RFC 4787 section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MappingBehaviour {
    /// One external address for every destination (EIM).
    EndpointIndependent,
    /// One external address per destination IP address (ADM).
    AddressDependent,
    /// One external address per destination address and port (APDM,
    /// "symmetric").
    AddressAndPortDependent,
}

/// Which inbound packets a mapping lets through (RFC 4787 section 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilteringBehaviour {
    /// From anyone, once the mapping exists (EIF, "full cone").
    EndpointIndependent,
    /// From any port of an IP address the mapping sent to (ADF).
    AddressDependent,
    /// Only from an address and port the mapping sent to (APDF).
    AddressAndPortDependent,
}

/// How a NAT picks the external port of a new mapping (RFC 4787 section
/// 4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortAllocation {
    /// The internal port, when it is free; otherwise a random one (what
    /// Linux does on a clash).
    Preserving,
    /// The NAT's previous allocation plus `delta` (wrapping inside the
    /// range, skipping taken ports); the first one is random.
    Sequential {
        /// The step, non-zero.
        delta: i16,
    },
    /// Uniformly random over the range (Linux `masquerade fully-random`).
    Random,
}

/// An inclusive range of external ports a NAT allocates from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// Lowest port.
    pub first: u16,
    /// Highest port.
    pub last: u16,
}

impl PortRange {
    /// 1024–65535: Linux's range for `masquerade fully-random`, the `R` of
    /// the birthday formula ([`dcutr_core::nat::EPHEMERAL_PORTS`]).
    pub const EPHEMERAL: PortRange = PortRange {
        first: 1024,
        last: 65535,
    };

    /// Every port: a firewall without translation keeps whatever port
    /// the host uses.
    pub const ALL: PortRange = PortRange {
        first: 1,
        last: 65535,
    };

    /// How many ports the range holds (0 when `first > last`).
    #[must_use]
    pub fn len(&self) -> u32 {
        if self.first > self.last {
            0
        } else {
            u32::from(self.last) - u32::from(self.first) + 1
        }
    }

    /// Whether the range holds no port.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `port` is inside.
    #[must_use]
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// `port` moved by `delta`, wrapping inside the range.
    fn step(&self, port: u16, delta: i16) -> u16 {
        let len = i64::from(self.len().max(1));
        let offset = i64::from(port) - i64::from(self.first);
        let next = (offset + i64::from(delta)).rem_euclid(len);
        // `next` < len ≤ 65535 - first + 1, so the sum fits in a u16.
        u16::try_from(i64::from(self.first) + next).unwrap_or(self.first)
    }
}

/// One NAT (or stateful firewall) in front of a simulated peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatModel {
    /// How mappings depend on the destination.
    pub mapping: MappingBehaviour,
    /// Which inbound packets get through to a mapping.
    pub filtering: FilteringBehaviour,
    /// How a new mapping's external port is picked.
    pub allocation: PortAllocation,
    /// The ports it allocates from.
    pub ports: PortRange,
    /// What happens to an inbound packet the filter refuses. With a
    /// firewall it is dropped silently. Without one (a Linux router with
    /// `masquerade` and no filter rules) the router takes it for itself:
    /// it remembers the flow for [`ROUTER_TCP_TIMEOUT`] or
    /// [`ROUTER_UDP_TIMEOUT`], answers a TCP SYN with a reset, and a
    /// later outbound flow of ours to that same remote address clashes
    /// with the remembered one and is remapped to a random port.
    pub firewall: bool,
    /// Idle time before a UDP mapping expires; `None` never.
    pub udp_timeout: Option<Duration>,
    /// Idle time before a TCP mapping expires; `None` never.
    pub tcp_timeout: Option<Duration>,
}

impl NatModel {
    /// A NAT with the given behaviours, the [`PortRange::EPHEMERAL`]
    /// range, a firewall, and the RFC timeouts.
    #[must_use]
    pub const fn new(
        mapping: MappingBehaviour,
        filtering: FilteringBehaviour,
        allocation: PortAllocation,
    ) -> Self {
        NatModel {
            mapping,
            filtering,
            allocation,
            ports: PortRange::EPHEMERAL,
            firewall: true,
            udp_timeout: Some(UDP_MAPPING_TIMEOUT),
            tcp_timeout: Some(TCP_MAPPING_TIMEOUT),
        }
    }

    /// Full cone: EIM, EIF, port-preserving.
    #[must_use]
    pub const fn full_cone() -> Self {
        Self::new(
            MappingBehaviour::EndpointIndependent,
            FilteringBehaviour::EndpointIndependent,
            PortAllocation::Preserving,
        )
    }

    /// Address-restricted cone: EIM, ADF, port-preserving.
    #[must_use]
    pub const fn address_restricted() -> Self {
        Self::new(
            MappingBehaviour::EndpointIndependent,
            FilteringBehaviour::AddressDependent,
            PortAllocation::Preserving,
        )
    }

    /// Port-restricted cone, the home router: EIM, APDF, port-preserving,
    /// with a firewall (the NAT lab's "cone").
    #[must_use]
    pub const fn port_restricted() -> Self {
        Self::new(
            MappingBehaviour::EndpointIndependent,
            FilteringBehaviour::AddressAndPortDependent,
            PortAllocation::Preserving,
        )
    }

    /// A Linux router with `masquerade` and no filter rules (the NAT
    /// lab's "cone-no-firewall"): a port-restricted cone whose router
    /// takes refused packets for itself.
    #[must_use]
    pub const fn cone_no_firewall() -> Self {
        let mut nat = Self::port_restricted();
        nat.firewall = false;
        nat
    }

    /// Symmetric with sequential allocation: APDM, APDF, each new mapping
    /// `delta` after the previous one.
    #[must_use]
    pub const fn symmetric_sequential(delta: i16) -> Self {
        Self::new(
            MappingBehaviour::AddressAndPortDependent,
            FilteringBehaviour::AddressAndPortDependent,
            PortAllocation::Sequential { delta },
        )
    }

    /// Symmetric with random allocation: APDM, APDF, random ports over
    /// 1024–65535 (Linux `masquerade fully-random`, AWS and Azure NAT
    /// gateways).
    #[must_use]
    pub const fn symmetric_random() -> Self {
        Self::new(
            MappingBehaviour::AddressAndPortDependent,
            FilteringBehaviour::AddressAndPortDependent,
            PortAllocation::Random,
        )
    }

    /// What the old [`Nat::Firewalled`](crate::Nat::Firewalled) meant: a
    /// port-restricted cone that keeps every port and never expires a
    /// mapping (a stateful firewall without translation behaves the same).
    #[must_use]
    pub const fn legacy_firewalled() -> Self {
        let mut nat = Self::port_restricted();
        nat.ports = PortRange::ALL;
        nat.udp_timeout = None;
        nat.tcp_timeout = None;
        nat
    }

    /// The behaviour in dcutr-core's terms: what a perfect discovery
    /// would report for a socket bound at `local`.
    #[must_use]
    pub fn behaviour(&self, local: SocketAddr) -> NatBehaviour {
        let mapping = match self.mapping {
            MappingBehaviour::EndpointIndependent => Mapping::EndpointIndependent,
            _ => Mapping::EndpointDependent,
        };
        let allocation = match self.allocation {
            PortAllocation::Preserving => Allocation::Preserving,
            PortAllocation::Sequential { delta } => Allocation::Sequential {
                delta: i32::from(delta),
            },
            PortAllocation::Random => Allocation::Random,
        };
        let filtering = match self.filtering {
            FilteringBehaviour::EndpointIndependent => Filtering::EndpointIndependent,
            FilteringBehaviour::AddressDependent => Filtering::AddressDependent,
            FilteringBehaviour::AddressAndPortDependent => Filtering::AddressAndPortDependent,
        };
        NatBehaviour::declared(mapping, allocation, filtering, local)
    }

    fn timeout(&self, transport: Transport) -> Option<Duration> {
        match transport {
            Transport::Tcp => self.tcp_timeout,
            Transport::Quic => self.udp_timeout,
        }
    }
}

/// What a mapping is keyed by, besides its internal socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    /// Every destination (EIM).
    Any,
    /// One destination IP (ADM).
    Ip(IpAddr),
    /// One destination address: APDM, a flow remapped after a clash, or
    /// the conntrack entry of an admitted inbound flow.
    Exact(SocketAddr),
}

#[derive(Clone, Debug)]
struct Binding {
    transport: Transport,
    local_port: u16,
    key: Key,
    external_port: u16,
    /// Destinations this mapping sent to: its filter state.
    sent_to: Vec<SocketAddr>,
    last_out: Instant,
    /// Kept alive by traffic the simulation does not model (the relayed
    /// connection): never expires.
    pinned: bool,
}

/// A flow a router without a firewall took for itself.
#[derive(Clone, Copy, Debug)]
struct RouterFlow {
    transport: Transport,
    external_port: u16,
    remote: SocketAddr,
    expires: Instant,
}

/// What a NAT does with one inbound packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Forwarded to the internal socket on this port.
    Deliver {
        /// The internal port.
        local_port: u16,
    },
    /// Let in, but the answer would leave from another external port
    /// (the host already has a mapping towards the sender), so no
    /// connection can form.
    Misrouted,
    /// Refused by the filter and dropped.
    Dropped,
    /// Refused by the filter and taken by a router without a firewall:
    /// a TCP SYN is answered with a reset, and the flow is remembered.
    Router,
}

/// Counters of what one NAT did, for tests and the sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Mappings created.
    pub mappings: u32,
    /// Outbound flows remapped because the router had taken an inbound
    /// packet of the same remote on the preferred port.
    pub remaps: u32,
    /// Inbound packets forwarded.
    pub delivered: u32,
    /// Inbound packets dropped by the filter.
    pub dropped: u32,
    /// Inbound packets a router without a firewall took for itself.
    pub router: u32,
    /// Outbound packets dropped because no port could be allocated.
    pub exhausted: u32,
}

/// The mapping table of one NAT as a simulation runs.
#[derive(Clone, Debug)]
pub struct NatState {
    model: NatModel,
    external_ip: IpAddr,
    bindings: Vec<Binding>,
    router: Vec<RouterFlow>,
    /// Last port allocated, per transport (TCP, QUIC), for sequential
    /// allocation.
    last_port: [Option<u16>; 2],
    rng: ChaCha8Rng,
    stats: NatStats,
}

fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Tcp => 0,
        Transport::Quic => 1,
    }
}

impl NatState {
    /// An empty table for `model` with external address `external_ip`;
    /// random ports come from `seed`.
    #[must_use]
    pub fn new(model: NatModel, external_ip: IpAddr, seed: u64) -> Self {
        NatState {
            model,
            external_ip,
            bindings: Vec::new(),
            router: Vec::new(),
            last_port: [None, None],
            rng: ChaCha8Rng::seed_from_u64(seed),
            stats: NatStats::default(),
        }
    }

    /// The model.
    #[must_use]
    pub fn model(&self) -> &NatModel {
        &self.model
    }

    /// The external IP address.
    #[must_use]
    pub fn external_ip(&self) -> IpAddr {
        self.external_ip
    }

    /// What it did so far.
    #[must_use]
    pub fn stats(&self) -> NatStats {
        self.stats
    }

    /// Live mappings (after expiring the idle ones at `now`).
    #[must_use]
    pub fn mappings(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.bindings.len()
    }

    /// Translates the source of a packet from internal port `local_port`
    /// to `to`: the external address it leaves with, creating or
    /// refreshing the mapping. `None` when no port can be allocated (the
    /// packet is dropped).
    pub fn outbound(
        &mut self,
        now: Instant,
        transport: Transport,
        local_port: u16,
        to: SocketAddr,
    ) -> Option<SocketAddr> {
        self.send(now, transport, local_port, to, false)
    }

    /// As [`NatState::outbound`], for a flow kept alive by traffic the
    /// simulation does not model (the relayed connection): its mapping
    /// never expires.
    pub fn pinned(
        &mut self,
        now: Instant,
        transport: Transport,
        local_port: u16,
        to: SocketAddr,
    ) -> Option<SocketAddr> {
        self.send(now, transport, local_port, to, true)
    }

    fn send(
        &mut self,
        now: Instant,
        transport: Transport,
        local_port: u16,
        to: SocketAddr,
        pinned: bool,
    ) -> Option<SocketAddr> {
        self.expire(now);
        let port = match self.find(transport, local_port, to) {
            Some(i)
                if self.bindings[i].key != Key::Exact(to)
                    && self.router_clash(transport, self.bindings[i].external_port, to) =>
            {
                // Linux: the tuple (our port, remote) is taken by a flow
                // the router accepted, so this flow gets another port.
                self.stats.remaps += 1;
                tracing::debug!(%to, port = self.bindings[i].external_port, "NAT remaps a clashing flow");
                let port = self.random_port(transport, local_port, to)?;
                self.insert(transport, local_port, Key::Exact(to), port, to, now, pinned)?;
                port
            }
            Some(i) => {
                let b = &mut self.bindings[i];
                b.last_out = now;
                b.pinned |= pinned;
                if !b.sent_to.contains(&to) {
                    b.sent_to.push(to);
                }
                b.external_port
            }
            None => {
                let port = self.allocate(transport, local_port, to)?;
                let key = self.key_for(to);
                self.insert(transport, local_port, key, port, to, now, pinned)?;
                port
            }
        };
        Some(SocketAddr::new(self.external_ip, port))
    }

    /// Decides on a packet from `from` to our external port
    /// `external_port`.
    pub fn inbound(
        &mut self,
        now: Instant,
        transport: Transport,
        external_port: u16,
        from: SocketAddr,
    ) -> Inbound {
        self.expire(now);
        let at_port = |b: &Binding| b.transport == transport && b.external_port == external_port;
        // An answer to something we sent passes every filter.
        if let Some(b) = self
            .bindings
            .iter()
            .find(|b| at_port(b) && b.sent_to.contains(&from))
        {
            self.stats.delivered += 1;
            return Inbound::Deliver {
                local_port: b.local_port,
            };
        }
        let admitted = match self.model.filtering {
            FilteringBehaviour::EndpointIndependent => self.bindings.iter().position(at_port),
            FilteringBehaviour::AddressDependent => self
                .bindings
                .iter()
                .position(|b| at_port(b) && b.sent_to.iter().any(|s| s.ip() == from.ip())),
            FilteringBehaviour::AddressAndPortDependent => None,
        };
        if let Some(i) = admitted {
            let local_port = self.bindings[i].local_port;
            // The answer leaves through whatever mapping we have towards
            // the sender; with none, conntrack answers through this port.
            return match self.find(transport, local_port, from) {
                Some(j) if self.bindings[j].external_port == external_port => {
                    self.bindings[j].sent_to.push(from);
                    self.stats.delivered += 1;
                    Inbound::Deliver { local_port }
                }
                Some(_) => {
                    self.stats.dropped += 1;
                    Inbound::Misrouted
                }
                None => {
                    let key = Key::Exact(from);
                    if self
                        .insert(transport, local_port, key, external_port, from, now, false)
                        .is_none()
                    {
                        self.stats.dropped += 1;
                        return Inbound::Dropped;
                    }
                    self.stats.delivered += 1;
                    Inbound::Deliver { local_port }
                }
            };
        }
        if self.model.firewall {
            self.stats.dropped += 1;
            return Inbound::Dropped;
        }
        let hold = match transport {
            Transport::Tcp => ROUTER_TCP_TIMEOUT,
            Transport::Quic => ROUTER_UDP_TIMEOUT,
        };
        let expires = now + hold;
        let known = self.router.iter().position(|r| {
            r.transport == transport && r.external_port == external_port && r.remote == from
        });
        match known {
            Some(i) => self.router[i].expires = expires,
            None if self.router.len() < MAX_MAPPINGS => self.router.push(RouterFlow {
                transport,
                external_port,
                remote: from,
                expires,
            }),
            None => {}
        }
        self.stats.router += 1;
        Inbound::Router
    }

    fn expire(&mut self, now: Instant) {
        let model = self.model;
        self.bindings.retain(|b| {
            b.pinned
                || model
                    .timeout(b.transport)
                    .and_then(|t| b.last_out.checked_add(t))
                    .is_none_or(|until| now < until)
        });
        self.router.retain(|r| now < r.expires);
    }

    fn key_for(&self, to: SocketAddr) -> Key {
        match self.model.mapping {
            MappingBehaviour::EndpointIndependent => Key::Any,
            MappingBehaviour::AddressDependent => Key::Ip(to.ip()),
            MappingBehaviour::AddressAndPortDependent => Key::Exact(to),
        }
    }

    /// The mapping a packet from `local_port` to `to` uses: a flow of its
    /// own first, then the one the mapping behaviour gives.
    fn find(&self, transport: Transport, local_port: u16, to: SocketAddr) -> Option<usize> {
        let mine = |key: Key| {
            self.bindings.iter().position(|b| {
                b.transport == transport && b.local_port == local_port && b.key == key
            })
        };
        mine(Key::Exact(to)).or_else(|| mine(self.key_for(to)))
    }

    fn router_clash(&self, transport: Transport, port: u16, to: SocketAddr) -> bool {
        self.router
            .iter()
            .any(|r| r.transport == transport && r.external_port == port && r.remote == to)
    }

    /// Whether `port` cannot carry a new flow from `local_port` to `to`:
    /// another internal socket holds it, or the router took a flow from
    /// `to` on it. (Mappings of the same socket may share a port towards
    /// different destinations, as Linux's tuple uniqueness allows.)
    fn taken(&self, transport: Transport, port: u16, local_port: u16, to: SocketAddr) -> bool {
        self.bindings.iter().any(|b| {
            b.transport == transport && b.external_port == port && b.local_port != local_port
        }) || self.router_clash(transport, port, to)
    }

    fn allocate(&mut self, transport: Transport, local_port: u16, to: SocketAddr) -> Option<u16> {
        match self.model.allocation {
            PortAllocation::Preserving => {
                if self.model.ports.contains(local_port)
                    && !self.taken(transport, local_port, local_port, to)
                {
                    Some(local_port)
                } else {
                    self.random_port(transport, local_port, to)
                }
            }
            PortAllocation::Sequential { delta } => {
                let range = self.model.ports;
                let slot = transport_index(transport);
                let mut port = match self.last_port[slot] {
                    Some(last) => range.step(last, delta),
                    None => self.draw(),
                };
                let mut tries = 0;
                while self.taken(transport, port, local_port, to) {
                    tries += 1;
                    if tries >= MAX_ALLOCATION_TRIES || delta == 0 {
                        self.stats.exhausted += 1;
                        return None;
                    }
                    port = range.step(port, delta);
                }
                self.last_port[slot] = Some(port);
                Some(port)
            }
            PortAllocation::Random => self.random_port(transport, local_port, to),
        }
    }

    fn draw(&mut self) -> u16 {
        let range = self.model.ports;
        self.rng
            .random_range(range.first..=range.last.max(range.first))
    }

    fn random_port(
        &mut self,
        transport: Transport,
        local_port: u16,
        to: SocketAddr,
    ) -> Option<u16> {
        for _ in 0..MAX_ALLOCATION_TRIES {
            let port = self.draw();
            if !self.taken(transport, port, local_port, to) {
                return Some(port);
            }
        }
        self.stats.exhausted += 1;
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        transport: Transport,
        local_port: u16,
        key: Key,
        external_port: u16,
        to: SocketAddr,
        now: Instant,
        pinned: bool,
    ) -> Option<()> {
        if self.bindings.len() >= MAX_MAPPINGS {
            self.stats.exhausted += 1;
            return None;
        }
        self.stats.mappings += 1;
        self.bindings.push(Binding {
            transport,
            local_port,
            key,
            external_port,
            sent_to: vec![to],
            last_out: now,
            pinned,
        });
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const EXT: &str = "198.51.100.2";
    const TCP: Transport = Transport::Tcp;
    const UDP: Transport = Transport::Quic;

    fn nat(model: NatModel) -> NatState {
        NatState::new(model, EXT.parse().unwrap(), 7)
    }

    fn t0() -> Instant {
        crate::epoch()
    }

    #[test]
    fn endpoint_independent_mapping_keeps_one_port_for_every_destination() {
        let mut n = nat(NatModel::port_restricted());
        let one = n.outbound(t0(), UDP, 4001, a("203.0.113.7:5001")).unwrap();
        let two = n.outbound(t0(), UDP, 4001, a("192.0.2.9:80")).unwrap();
        assert_eq!(one, a("198.51.100.2:4001"), "port-preserving");
        assert_eq!(one, two);
        assert_eq!(n.stats().mappings, 1);
    }

    #[test]
    fn address_dependent_mapping_varies_with_the_ip_only() {
        let mut model = NatModel::symmetric_random();
        model.mapping = MappingBehaviour::AddressDependent;
        let mut n = nat(model);
        let one = n.outbound(t0(), UDP, 4001, a("203.0.113.7:5001")).unwrap();
        let same_ip = n.outbound(t0(), UDP, 4001, a("203.0.113.7:6000")).unwrap();
        let other_ip = n.outbound(t0(), UDP, 4001, a("203.0.113.8:5001")).unwrap();
        assert_eq!(one, same_ip);
        assert_ne!(one.port(), other_ip.port());
    }

    #[test]
    fn symmetric_mapping_varies_with_address_and_port() {
        let mut n = nat(NatModel::symmetric_random());
        let ports: Vec<u16> = (0..8)
            .map(|i| {
                n.outbound(t0(), TCP, 4001, a(&format!("203.0.113.7:{}", 5000 + i)))
                    .unwrap()
                    .port()
            })
            .collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 8, "{ports:?}");
        assert!(ports.iter().all(|p| PortRange::EPHEMERAL.contains(*p)));
        // The same destination again reuses its mapping.
        let again = n.outbound(t0(), TCP, 4001, a("203.0.113.7:5000")).unwrap();
        assert_eq!(again.port(), ports[0]);
    }

    #[test]
    fn sequential_allocation_steps_by_its_delta_and_wraps() {
        let mut model = NatModel::symmetric_sequential(-3);
        model.ports = PortRange {
            first: 2000,
            last: 2009,
        };
        let mut n = nat(model);
        let ports: Vec<u16> = (0..12)
            .map(|i| {
                n.outbound(t0(), UDP, 4001, a(&format!("203.0.113.7:{}", 5000 + i)))
                    .unwrap()
                    .port()
            })
            .collect();
        for w in ports.windows(2) {
            let expect = PortRange {
                first: 2000,
                last: 2009,
            }
            .step(w[0], -3);
            assert_eq!(w[1], expect, "{ports:?}");
        }
        assert!(ports.iter().all(|p| (2000..=2009).contains(p)));
    }

    #[test]
    fn preserving_falls_back_to_random_when_the_port_is_taken() {
        let mut n = nat(NatModel::port_restricted());
        let first = n.outbound(t0(), TCP, 4001, a("203.0.113.7:5001")).unwrap();
        assert_eq!(first.port(), 4001);
        let other = n.outbound(t0(), TCP, 4002, a("203.0.113.7:5001")).unwrap();
        assert_eq!(other.port(), 4002);
        let mut small = NatModel::port_restricted();
        small.ports = PortRange {
            first: 4001,
            last: 4002,
        };
        let mut n = nat(small);
        let peer = a("203.0.113.7:1");
        assert_eq!(n.outbound(t0(), TCP, 4001, peer).unwrap().port(), 4001);
        // Internal port 9999 is outside the range: it gets the one free
        // port left (4001 belongs to another socket).
        assert_eq!(n.outbound(t0(), TCP, 9999, peer).unwrap().port(), 4002);
        // The range is now full: the packet is dropped.
        assert_eq!(n.outbound(t0(), TCP, 7777, peer), None);
        assert_eq!(n.stats().exhausted, 1);
    }

    #[test]
    fn filtering_follows_rfc_4787() {
        let peer = a("203.0.113.7:5001");
        let same_ip = a("203.0.113.7:6000");
        let stranger = a("192.0.2.66:40000");
        let cases = [
            (FilteringBehaviour::EndpointIndependent, [true, true, true]),
            (FilteringBehaviour::AddressDependent, [true, true, false]),
            (
                FilteringBehaviour::AddressAndPortDependent,
                [true, false, false],
            ),
        ];
        for (filtering, expect) in cases {
            let mut model = NatModel::port_restricted();
            model.filtering = filtering;
            let mut n = nat(model);
            // Nothing sent yet: nothing gets in, whatever the filter.
            assert_eq!(n.inbound(t0(), UDP, 4001, peer), Inbound::Dropped);
            n.outbound(t0(), UDP, 4001, peer).unwrap();
            for (from, ok) in [peer, same_ip, stranger].into_iter().zip(expect) {
                let got = n.inbound(t0(), UDP, 4001, from);
                let want = if ok {
                    Inbound::Deliver { local_port: 4001 }
                } else {
                    Inbound::Dropped
                };
                assert_eq!(got, want, "{filtering:?} from {from}");
            }
            // Another external port has no mapping at all.
            assert_eq!(n.inbound(t0(), UDP, 4002, peer), Inbound::Dropped);
        }
    }

    #[test]
    fn mappings_expire_when_idle_unless_pinned() {
        let mut n = nat(NatModel::symmetric_random());
        let relay = a("192.0.2.200:443");
        let peer = a("203.0.113.7:5001");
        let r = n.pinned(t0(), UDP, 4001, relay).unwrap();
        let p = n.outbound(t0(), UDP, 4001, peer).unwrap();
        let later = t0() + UDP_MAPPING_TIMEOUT;
        assert_eq!(
            n.inbound(later - Duration::from_millis(1), UDP, p.port(), peer),
            Inbound::Deliver { local_port: 4001 }
        );
        assert_eq!(n.inbound(later, UDP, p.port(), peer), Inbound::Dropped);
        assert_eq!(
            n.inbound(later, UDP, r.port(), relay),
            Inbound::Deliver { local_port: 4001 }
        );
        assert_eq!(n.mappings(later), 1);
        // TCP keeps its mappings longer.
        let q = n.outbound(t0(), TCP, 4001, peer).unwrap();
        assert_eq!(
            n.inbound(later, TCP, q.port(), peer),
            Inbound::Deliver { local_port: 4001 }
        );
    }

    #[test]
    fn a_router_without_firewall_remaps_our_later_flow_to_that_peer() {
        let relay = a("192.0.2.200:443");
        let peer = a("203.0.113.7:5001");
        let mut n = nat(NatModel::cone_no_firewall());
        let ours = n.pinned(t0(), TCP, 4001, relay).unwrap();
        // The peer's SYN arrives before ours left.
        assert_eq!(n.inbound(t0(), TCP, ours.port(), peer), Inbound::Router);
        let out = n.outbound(t0(), TCP, 4001, peer).unwrap();
        assert_ne!(out.port(), ours.port(), "the clash remaps the flow");
        assert_eq!(n.stats().remaps, 1);
        // The flow keeps its new port; other destinations keep the old.
        assert_eq!(n.outbound(t0(), TCP, 4001, peer).unwrap(), out);
        assert_eq!(n.outbound(t0(), TCP, 4001, a("192.0.2.9:1")).unwrap(), ours);
        // With a firewall, the same packet is dropped and nothing clashes.
        let mut n = nat(NatModel::port_restricted());
        let ours = n.pinned(t0(), TCP, 4001, relay).unwrap();
        assert_eq!(n.inbound(t0(), TCP, ours.port(), peer), Inbound::Dropped);
        assert_eq!(n.outbound(t0(), TCP, 4001, peer).unwrap(), ours);
        // The router forgets after its timeout.
        let mut n = nat(NatModel::cone_no_firewall());
        let ours = n.pinned(t0(), UDP, 4001, relay).unwrap();
        assert_eq!(n.inbound(t0(), UDP, ours.port(), peer), Inbound::Router);
        let out = n
            .outbound(t0() + ROUTER_UDP_TIMEOUT, UDP, 4001, peer)
            .unwrap();
        assert_eq!(out, ours);
    }

    #[test]
    fn an_admitted_packet_is_answered_through_its_own_port() {
        let relay = a("192.0.2.200:443");
        let peer = a("203.0.113.7:5001");
        // Symmetric mapping with endpoint-independent filtering: the
        // packet gets in on the relay's port, and conntrack answers there.
        let mut model = NatModel::symmetric_random();
        model.filtering = FilteringBehaviour::EndpointIndependent;
        let mut n = nat(model);
        let r = n.pinned(t0(), TCP, 4001, relay).unwrap();
        assert_eq!(
            n.inbound(t0(), TCP, r.port(), peer),
            Inbound::Deliver { local_port: 4001 }
        );
        assert_eq!(n.outbound(t0(), TCP, 4001, peer).unwrap(), r);
        // When we already have a mapping towards the sender elsewhere, the
        // answer would leave from there.
        let mut n = nat(model);
        let r = n.pinned(t0(), TCP, 4001, relay).unwrap();
        let mine = n.outbound(t0(), TCP, 4001, peer).unwrap();
        assert_ne!(mine, r);
        assert_eq!(n.inbound(t0(), TCP, r.port(), peer), Inbound::Misrouted);
    }

    #[test]
    fn the_same_seed_allocates_the_same_ports() {
        let run = |seed| {
            let mut n = NatState::new(NatModel::symmetric_random(), EXT.parse().unwrap(), seed);
            (0..16)
                .map(|i| {
                    n.outbound(t0(), UDP, 4001, a(&format!("203.0.113.7:{}", 5000 + i)))
                        .unwrap()
                        .port()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn behaviour_translates_to_core_terms() {
        let local = a("10.0.0.2:4001");
        let b = NatModel::symmetric_sequential(2).behaviour(local);
        assert_eq!(b.mapping, Mapping::EndpointDependent);
        assert_eq!(b.allocation, Allocation::Sequential { delta: 2 });
        assert_eq!(b.filtering, Filtering::AddressAndPortDependent);
        let b = NatModel::full_cone().behaviour(local);
        assert_eq!(b.mapping, Mapping::EndpointIndependent);
        assert_eq!(b.filtering, Filtering::EndpointIndependent);
    }
}
