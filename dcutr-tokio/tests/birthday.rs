//! The birthday punch over loopback sockets, carried out by the driver:
//! the initiator declares a random endpoint-dependent NAT (the hard
//! side), the responder an endpoint-independent one (the easy side). The
//! initiator advertises an address where nothing answers and the
//! responder may punch that IP only once, so neither the spec's dials nor
//! a peer-reflexive one can win: only the QUIC dial from the fresh socket
//! that met can, and the responder sees it arrive from that socket.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use dcutr_core::birthday::{Local, Outcome as BOutcome};
use dcutr_core::nat::{Allocation, Filtering, Mapping, NatBehaviour};
use dcutr_tokio::{Candidate, Config, Event, Options, Side, Transport};

/// Bounds the test: a broken upgrade fails instead of hanging.
const TEST_LIMIT: Duration = Duration::from_secs(30);

fn nat(mapping: Mapping, allocation: Allocation, local: SocketAddr) -> NatBehaviour {
    NatBehaviour::declared(mapping, allocation, Filtering::Unknown, local)
}

type Events = Arc<Mutex<Vec<Event>>>;

fn recording(options: Options) -> (Options, Events) {
    let events: Events = Arc::default();
    let sink = events.clone();
    let options = options.on_event(move |e, _| sink.lock().unwrap().push(e.clone()));
    (options, events)
}

#[tokio::test]
async fn the_hard_side_dials_from_the_fresh_socket_that_met() {
    init_tracing();
    // What the hard side's NAT does with its relay mapping for a new
    // destination: nothing answers there.
    let hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let socket = dcutr_tokio::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let quic = dcutr_tokio::quic_socket(socket).unwrap();
    let b_real = quic.local_addr().unwrap();
    let b = Options::new(Side::Initiator)
        .config(loopback_config())
        .local_addrs([Candidate::quic(hole.local_addr().unwrap())])
        .quic(quic)
        .nat_behaviour(nat(Mapping::EndpointDependent, Allocation::Random, b_real));
    let (b, b_events) = recording(b);

    // The easy side may punch the hard side's IP once: the advertised
    // hole uses it up, so the spray's source is not dialled either.
    let a_config = Config {
        max_punches_per_ip: 1,
        ..loopback_config()
    };
    let (a, a_real) = peer(Side::Responder, Transport::Quic, a_config);
    let a = a.nat_behaviour(nat(
        Mapping::EndpointIndependent,
        Allocation::Preserving,
        a_real,
    ));
    let (a, a_events) = recording(a);

    let (b, a) = upgrade_pair(b, a, TEST_LIMIT).await;
    let (b, a) = (
        b.expect("the hard side upgrades"),
        a.expect("the easy side upgrades"),
    );
    assert_eq!(
        (a.transport, b.transport),
        (Transport::Quic, Transport::Quic)
    );
    assert_eq!(
        b.remote, a_real,
        "the hard side reached the easy side's punch socket"
    );
    assert_ne!(a.remote, b_real, "not from the hard side's endpoint socket");
    assert_ne!(a.remote, hole.local_addr().unwrap());
    assert_eq!(a.remote.ip(), b_real.ip());

    let met = |events: &Events| {
        events.lock().unwrap().iter().find_map(|e| match e {
            Event::BirthdayEnded {
                outcome: BOutcome::Met { local, remote },
                ..
            } => Some((*local, *remote)),
            _ => None,
        })
    };
    let (b_local, b_remote) = met(&b_events).expect("the hard side met");
    assert!(matches!(b_local, Local::Fresh(_)), "{b_local:?}");
    assert_eq!(b_remote, a_real);
    let (a_local, a_remote) = met(&a_events).expect("the easy side met");
    assert_eq!(a_local, Local::Punch);
    assert_eq!(a_remote, a.remote, "the dial came from the socket that met");
}

/// The birthday punch over TCP: the initiator declares the random NAT
/// (the hard side), the responder the endpoint-independent one. Neither
/// spec dial can win: the hard side advertises a closed port (the easy
/// side's dial there is refused), and the test holds the one connection
/// from the hard side's punch port to the easy side's, so the hard
/// side's own dial finds its address pair taken. Only a connect from one
/// of the hard side's fresh TCP sockets can become the connection.
#[tokio::test]
async fn over_tcp_the_connection_comes_from_a_fresh_socket_that_connected() {
    init_tracing();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (a, a_real) = peer(Side::Responder, Transport::Tcp, loopback_config());
    let a = a.nat_behaviour(nat(
        Mapping::EndpointIndependent,
        Allocation::Preserving,
        a_real,
    ));
    let (a, a_events) = recording(a);
    // The hard side's punch port, and the pair its spec dial would use.
    let b_listener = dcutr_tokio::tcp_listener(any).unwrap();
    let b_real = b_listener.local_addr().unwrap();
    let held = dcutr_tokio::tcp_connect_from(b_real, a_real).await.unwrap();
    // A closed TCP port: bound, never listening.
    let hole = dcutr_driver::net::reuse_stream_socket(any).unwrap();
    let hole = hole.local_addr().unwrap().as_socket().unwrap();
    let b = Options::new(Side::Initiator)
        .config(loopback_config())
        .local_addrs([Candidate::tcp(hole)])
        .tcp(b_listener)
        .nat_behaviour(nat(Mapping::EndpointDependent, Allocation::Random, b_real));
    let (b, b_events) = recording(b);

    let (b, a) = upgrade_pair(b, a, TEST_LIMIT).await;
    drop(held);
    let (b, a) = (
        b.expect("the hard side upgrades"),
        a.expect("the easy side upgrades"),
    );
    assert_eq!((a.transport, b.transport), (Transport::Tcp, Transport::Tcp));
    assert_eq!(
        b.remote, a_real,
        "the hard side reached the easy side's punch port"
    );
    assert_ne!(a.remote, b_real, "not from the hard side's punch port");
    assert_ne!(a.remote, hole);
    let started = |events: &Events| {
        events.lock().unwrap().iter().find_map(|e| match e {
            Event::BirthdayStarted { role, .. } => Some(*role),
            _ => None,
        })
    };
    assert_eq!(started(&b_events), Some(dcutr_core::birthday::Role::Hard));
    assert_eq!(started(&a_events), Some(dcutr_core::birthday::Role::Easy));
    let met = b_events.lock().unwrap().iter().find_map(|e| match e {
        Event::BirthdayEnded {
            outcome: BOutcome::Met { local, remote },
            sockets_opened,
            ..
        } => Some((*local, *remote, *sockets_opened)),
        _ => None,
    });
    let (local, remote, opened) = met.expect("the hard side met");
    assert!(matches!(local, Local::Fresh(_)), "{local:?}");
    assert_eq!(remote, a_real);
    assert_eq!(opened, dcutr_core::birthday::DEFAULT_SOCKETS);
}
