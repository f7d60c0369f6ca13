//! Our NAT's behaviour, classified from identify's observations.
//!
//! Identify tells each peer the address it observed for the connection;
//! two observers that saw one local socket at different mapped addresses
//! prove an endpoint-dependent ("symmetric") NAT. The behaviour does not
//! see identify's events (they go to the user's swarm loop), so the user
//! hands each observation to [`Behaviour::observe_identify`]
//! (crate::Behaviour::observe_identify); the behaviour knows the rest from
//! the swarm: which local socket and which observer each connection is.
//!
//! One [`NatObservations`] per transport and IP family: TCP dials leave
//! from the listening port (libp2p's port reuse) and QUIC dials from the
//! listening socket, so all observations of one transport describe one
//! local socket. Connections dialled from a fresh port
//! ([`PortUse::New`]) and relayed ones describe no such socket and are
//! not used.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use dcutr_core::nat::{
    Allocation, Mapping, NatBehaviour, NatObservations, Observation, ObserveError,
};
use dcutr_core::{Candidate, Transport};
use libp2p_core::Multiaddr;
use libp2p_core::connection::ConnectedPoint;
use libp2p_core::transport::PortUse;
use libp2p_swarm::ConnectionId;

use crate::behaviour::candidate;

/// Most direct connections whose observer and local socket are remembered
/// for [`Behaviour::observe_identify`](crate::Behaviour::observe_identify).
/// Identify observations come from the peers we are connected to; a node
/// rarely holds more than a few hundred direct connections, and each entry
/// is about 80 bytes. Past the cap, new connections are not remembered and
/// their observations are refused with [`NotObserved::UnknownConnection`].
pub const MAX_OBSERVED_CONNECTIONS: usize = 1024;

/// Why an identify observation was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotObserved {
    /// Not a direct connection we know: relayed, closed, never seen, or
    /// past [`MAX_OBSERVED_CONNECTIONS`].
    #[error("not a direct connection this behaviour knows (relayed, closed, or over the cap)")]
    UnknownConnection,
    /// The connection left from a fresh port, so what it shows is not the
    /// mapping of our listening socket.
    #[error("the connection was dialled from a fresh port, not from the listening socket")]
    NewPort,
    /// The observed address is not plain TCP or QUIC v1 over IP, or not
    /// the connection's own transport and family.
    #[error("observed address {0} does not match the connection's transport")]
    TransportMismatch(Multiaddr),
    /// We listen on no address of the connection's transport and family,
    /// so no local socket to describe.
    #[error("no listening address of the connection's transport")]
    NoListenAddr,
    /// The classifier refused it (for example a second observation from
    /// the same observer).
    #[error(transparent)]
    Refused(#[from] ObserveError),
}

/// What one direct connection is, for classifying what it observed.
#[derive(Clone, Copy, Debug)]
struct Link {
    /// The observer: the connection's remote address.
    observer: Candidate,
    /// The local socket, when the swarm told it (inbound connections).
    local: Option<SocketAddr>,
    /// Dialled from a fresh port.
    new_port: bool,
}

/// Key of one local socket: transport and IPv4 (true) or IPv6.
type SocketKey = (Transport, bool);

/// Observations per local socket, fed by identify.
#[derive(Debug, Default)]
pub(crate) struct NatTracker {
    links: HashMap<ConnectionId, Link>,
    /// Our listening addresses (non-relayed), in the order they came.
    listen: Vec<Candidate>,
    sockets: BTreeMap<SocketKey, NatObservations>,
}

impl NatTracker {
    pub(crate) fn on_connection(&mut self, id: ConnectionId, endpoint: &ConnectedPoint) {
        if endpoint.is_relayed() || self.links.len() >= MAX_OBSERVED_CONNECTIONS {
            return;
        }
        let link = match endpoint {
            ConnectedPoint::Dialer {
                address, port_use, ..
            } => candidate(address).map(|observer| Link {
                observer,
                local: None,
                new_port: *port_use == PortUse::New,
            }),
            ConnectedPoint::Listener {
                local_addr,
                send_back_addr,
            } => candidate(send_back_addr).map(|observer| Link {
                observer,
                local: candidate(local_addr).map(|c| c.addr),
                new_port: false,
            }),
        };
        if let Some(link) = link {
            self.links.insert(id, link);
        }
    }

    pub(crate) fn on_closed(&mut self, id: ConnectionId) {
        self.links.remove(&id);
    }

    pub(crate) fn on_listen_addr(&mut self, addr: &Multiaddr) {
        if let Some(c) = candidate(addr)
            && !self.listen.contains(&c)
        {
            self.listen.push(c);
        }
    }

    pub(crate) fn on_expired_listen_addr(&mut self, addr: &Multiaddr) {
        if let Some(c) = candidate(addr) {
            self.listen.retain(|l| *l != c);
        }
    }

    pub(crate) fn observe(
        &mut self,
        id: ConnectionId,
        observed: &Multiaddr,
    ) -> Result<NatBehaviour, NotObserved> {
        let link = *self.links.get(&id).ok_or(NotObserved::UnknownConnection)?;
        if link.new_port {
            return Err(NotObserved::NewPort);
        }
        let mapped = candidate(observed)
            .filter(|m| {
                m.transport == link.observer.transport
                    && m.addr.is_ipv4() == link.observer.addr.is_ipv4()
            })
            .ok_or_else(|| NotObserved::TransportMismatch(observed.clone()))?;
        let key = (mapped.transport, mapped.addr.is_ipv4());
        let local = link
            .local
            .or_else(|| {
                // A wildcard listener shows up once per interface: the
                // port is the same, and the loopback one is no address a
                // NAT maps.
                self.listen
                    .iter()
                    .filter(|l| (l.transport, l.addr.is_ipv4()) == key)
                    .min_by_key(|l| l.addr.ip().is_loopback())
                    .map(|l| l.addr)
            })
            .ok_or(NotObserved::NoListenAddr)?;
        let socket = self
            .sockets
            .entry(key)
            .or_insert_with(|| NatObservations::new(local));
        let observation = Observation::new(link.observer.addr, mapped.addr);
        // Identify repeats itself (pushes, periodic re-identify): the same
        // observation again is nothing new, not a refusal.
        if !socket.observations().contains(&observation) {
            socket.observe(observation)?;
        }
        Ok(socket.classify())
    }

    /// The classification of each local socket observed, by transport.
    pub(crate) fn behaviours(&self) -> impl Iterator<Item = (Transport, NatBehaviour)> + '_ {
        self.sockets
            .iter()
            .map(|((transport, _), obs)| (*transport, obs.classify()))
    }

    /// What the next upgrade declares in Connect: of the sockets whose
    /// mapping is known, the easiest to punch. Every transport's addresses
    /// are punched at once, so the peer may give up only when none can
    /// meet it. `None` when no mapping is known yet: the Connect stays the
    /// spec's.
    pub(crate) fn declared(&self) -> Option<NatBehaviour> {
        self.behaviours()
            .map(|(_, b)| b)
            .filter(|b| b.mapping != Mapping::Unknown)
            .min_by_key(difficulty)
    }
}

/// How hard a behaviour is to punch through, in the order of
/// `dcutr_core::nat::Strategy::choose`: independent mapping or preserved
/// ports, then sequential ports (predictable), then anything else that
/// depends on the endpoint.
fn difficulty(b: &NatBehaviour) -> u8 {
    match (b.mapping, b.allocation) {
        (Mapping::EndpointDependent, Allocation::Preserving) => 0,
        (Mapping::EndpointDependent, Allocation::Sequential { .. }) => 1,
        (Mapping::EndpointDependent, _) => 2,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p_core::Endpoint;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn dialer(addr: &str, port_use: PortUse) -> ConnectedPoint {
        ConnectedPoint::Dialer {
            address: ma(addr),
            role_override: Endpoint::Dialer,
            port_use,
        }
    }

    fn tracker() -> NatTracker {
        let mut t = NatTracker::default();
        t.on_listen_addr(&ma("/ip4/127.0.0.1/tcp/4001"));
        t.on_listen_addr(&ma("/ip4/10.0.0.2/tcp/4001"));
        t.on_listen_addr(&ma("/ip4/10.0.0.2/udp/4002/quic-v1"));
        t
    }

    #[test]
    fn two_observers_seeing_two_ports_of_one_tcp_socket_make_it_endpoint_dependent() {
        let mut t = tracker();
        let (c1, c2) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        t.on_connection(c1, &dialer("/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN", PortUse::Reuse));
        t.on_connection(c2, &dialer("/ip4/198.51.100.2/tcp/4001", PortUse::Reuse));
        assert_eq!(t.declared(), None, "nothing observed: nothing declared");
        let one = t.observe(c1, &ma("/ip4/203.0.113.9/tcp/31000")).unwrap();
        assert_eq!(one.mapping, Mapping::Unknown);
        assert_eq!(t.declared(), None, "one observer cannot tell");
        let two = t.observe(c2, &ma("/ip4/203.0.113.9/tcp/52011")).unwrap();
        assert_eq!(two.mapping, Mapping::EndpointDependent);
        assert_eq!(two.evidence.local, "10.0.0.2:4001".parse().unwrap());
        let declared = t.declared().unwrap();
        assert_eq!(declared.mapping, Mapping::EndpointDependent);
        // The same observation again changes nothing and is no refusal.
        let again = t.observe(c2, &ma("/ip4/203.0.113.9/tcp/52011")).unwrap();
        assert_eq!(again.evidence.refused, 0);
        assert_eq!(t.behaviours().count(), 1);
        assert_eq!(t.behaviours().next().unwrap().0, Transport::Tcp);
    }

    #[test]
    fn agreeing_observers_at_two_ips_make_it_independent_and_the_easiest_socket_is_declared() {
        let mut t = tracker();
        let ids: Vec<_> = (1..=4).map(ConnectionId::new_unchecked).collect();
        t.on_connection(
            ids[0],
            &dialer("/ip4/198.51.100.1/tcp/4001", PortUse::Reuse),
        );
        t.on_connection(
            ids[1],
            &dialer("/ip4/198.51.100.2/tcp/4001", PortUse::Reuse),
        );
        t.on_connection(
            ids[2],
            &dialer("/ip4/198.51.100.1/udp/4001/quic-v1", PortUse::Reuse),
        );
        t.on_connection(
            ids[3],
            &dialer("/ip4/198.51.100.2/udp/4001/quic-v1", PortUse::Reuse),
        );
        t.observe(ids[0], &ma("/ip4/203.0.113.9/tcp/1111")).unwrap();
        t.observe(ids[1], &ma("/ip4/203.0.113.9/tcp/2222")).unwrap();
        assert_eq!(t.declared().unwrap().mapping, Mapping::EndpointDependent);
        t.observe(ids[2], &ma("/ip4/203.0.113.9/udp/4002/quic-v1"))
            .unwrap();
        t.observe(ids[3], &ma("/ip4/203.0.113.9/udp/4002/quic-v1"))
            .unwrap();
        // QUIC's socket is endpoint-independent: that one is declared.
        let declared = t.declared().unwrap();
        assert_eq!(declared.mapping, Mapping::EndpointIndependent);
        assert_eq!(declared.evidence.local, "10.0.0.2:4002".parse().unwrap());
    }

    #[test]
    fn fresh_ports_relayed_unknown_and_mismatched_connections_are_not_observed() {
        let mut t = tracker();
        let ids: Vec<_> = (1..=4).map(ConnectionId::new_unchecked).collect();
        t.on_connection(ids[0], &dialer("/ip4/198.51.100.1/tcp/4001", PortUse::New));
        t.on_connection(
            ids[1],
            &dialer("/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit", PortUse::Reuse),
        );
        t.on_connection(
            ids[2],
            &dialer("/ip4/198.51.100.2/tcp/4001", PortUse::Reuse),
        );
        let obs = ma("/ip4/203.0.113.9/tcp/1111");
        assert_eq!(t.observe(ids[0], &obs), Err(NotObserved::NewPort));
        assert_eq!(t.observe(ids[1], &obs), Err(NotObserved::UnknownConnection));
        assert_eq!(t.observe(ids[3], &obs), Err(NotObserved::UnknownConnection));
        let quic = ma("/ip4/203.0.113.9/udp/1111/quic-v1");
        assert_eq!(
            t.observe(ids[2], &quic),
            Err(NotObserved::TransportMismatch(quic))
        );
        t.on_closed(ids[2]);
        assert_eq!(t.observe(ids[2], &obs), Err(NotObserved::UnknownConnection));
        assert_eq!(t.declared(), None);
    }

    #[test]
    fn an_inbound_connection_describes_its_own_local_socket_and_no_listener_means_no_socket() {
        let mut t = NatTracker::default();
        let (c1, c2) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        t.on_connection(
            c1,
            &ConnectedPoint::Listener {
                local_addr: ma("/ip4/10.0.0.2/tcp/4001"),
                send_back_addr: ma("/ip4/198.51.100.1/tcp/50000"),
            },
        );
        t.on_connection(c2, &dialer("/ip4/198.51.100.2/tcp/4001", PortUse::Reuse));
        let b = t.observe(c1, &ma("/ip4/203.0.113.9/tcp/4001")).unwrap();
        assert_eq!(b.evidence.local, "10.0.0.2:4001".parse().unwrap());
        assert_eq!(
            t.observe(c2, &ma("/ip4/203.0.113.9/tcp/4001")),
            Err(NotObserved::NoListenAddr)
        );
        t.on_listen_addr(&ma("/ip4/10.0.0.2/tcp/4001"));
        t.on_expired_listen_addr(&ma("/ip4/10.0.0.2/tcp/4001"));
        assert_eq!(
            t.observe(c2, &ma("/ip4/203.0.113.9/tcp/4001")),
            Err(NotObserved::NoListenAddr)
        );
    }
}
