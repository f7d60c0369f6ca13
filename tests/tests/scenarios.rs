//! The conformance scenarios. Every pair scenario runs for all nine
//! combinations of B's and A's runtime (tokio, smol, async-std), so the
//! same-runtime pairs prove each adapter and the mixed pairs prove they
//! interoperate on the wire; the one-peer scenarios run on each runtime.

use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use dcutr_conformance::*;
use dcutr_core::{Failure, Role, Side, Transport};
use dcutr_driver::UpgradeFailure;

/// Longest any scenario may wait on a signal from a peer.
const SIGNAL_LIMIT: Duration = Duration::from_secs(30);

fn assert_upgraded(b: &PeerReport, a: &PeerReport, transport: Transport) {
    let (
        Ended::Upgraded {
            transport: bt,
            role: br,
            ..
        },
        Ended::Upgraded {
            transport: at,
            role: ar,
            ..
        },
    ) = (&b.ended, &a.ended)
    else {
        panic!("both must upgrade: B {:?} / A {:?}", b.ended, a.ended);
    };
    assert_eq!((*bt, *at), (transport, transport));
    assert_eq!(
        (*br, *ar),
        (Role::Server, Role::Client),
        "B server, A client"
    );
    assert!(
        b.data_ok && a.data_ok,
        "data both ways over the direct connection"
    );
}

fn upgrade(b_rt: Rt, a_rt: Rt, transport: Transport) {
    let (rb, ra) = relayed_pair();
    let (b, a) = run_pair(
        b_rt,
        Job::new(Side::Initiator, transport, rb),
        a_rt,
        Job::new(Side::Responder, transport, ra),
    );
    assert_upgraded(&b, &a, transport);
}

fn tcp_upgrade(b_rt: Rt, a_rt: Rt) {
    upgrade(b_rt, a_rt, Transport::Tcp);
}

fn quic_upgrade(b_rt: Rt, a_rt: Rt) {
    upgrade(b_rt, a_rt, Transport::Quic);
}

fn unreachable_peer(b_rt: Rt, a_rt: Rt) {
    let (rb, ra) = relayed_pair();
    let mut b = Job::new(Side::Initiator, Transport::Tcp, rb);
    let mut a = Job::new(Side::Responder, Transport::Tcp, ra);
    b.advertise = Advertise::ClosedPort;
    a.advertise = Advertise::ClosedPort;
    let (b, a) = run_pair(b_rt, b, a_rt, a);
    for (who, r) in [("B", &b), ("A", &a)] {
        assert_eq!(
            all_attempts_failed(r),
            Some(3),
            "{who} fails after 3 attempts: {:?}",
            r.ended
        );
        assert!(r.data_ok, "{who}: the relayed stream still works");
    }
}

fn stranger_on_the_punch_port(b_rt: Rt, a_rt: Rt) {
    let (rb, ra) = relayed_pair();
    let (bound_tx, bound) = mpsc::channel();
    let (rejected_tx, rejected) = mpsc::channel();
    let mut b = Job::new(Side::Initiator, Transport::Tcp, rb);
    b.bound = Some(bound_tx);
    b.rejected = Some(rejected_tx);
    let b = std::thread::spawn(move || run_peer(b_rt, b));
    // The stranger reaches B's punch port first, with 24 bytes that are no TLS handshake.
    let b_addr = bound.recv_timeout(SIGNAL_LIMIT).expect("B bound its port");
    let mut stranger = TcpStream::connect(b_addr).unwrap();
    stranger.write_all(&[0x42; 24]).unwrap();
    rejected
        .recv_timeout(SIGNAL_LIMIT)
        .expect("B rejects the stranger");
    // Only now does the real peer come.
    let a = run_peer(a_rt, Job::new(Side::Responder, Transport::Tcp, ra));
    let b = b.join().unwrap();
    assert_upgraded(&b, &a, Transport::Tcp);
    assert_eq!(b.report.timeline.inbound_rejected(), 1);
}

macro_rules! every_pair {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::Rt;
            #[test] fn b_tokio_a_tokio() { super::$scenario(Rt::Tokio, Rt::Tokio) }
            #[test] fn b_smol_a_smol() { super::$scenario(Rt::Smol, Rt::Smol) }
            #[test] fn b_async_std_a_async_std() { super::$scenario(Rt::AsyncStd, Rt::AsyncStd) }
            #[test] fn b_tokio_a_smol() { super::$scenario(Rt::Tokio, Rt::Smol) }
            #[test] fn b_smol_a_tokio() { super::$scenario(Rt::Smol, Rt::Tokio) }
            #[test] fn b_tokio_a_async_std() { super::$scenario(Rt::Tokio, Rt::AsyncStd) }
            #[test] fn b_async_std_a_tokio() { super::$scenario(Rt::AsyncStd, Rt::Tokio) }
            #[test] fn b_smol_a_async_std() { super::$scenario(Rt::Smol, Rt::AsyncStd) }
            #[test] fn b_async_std_a_smol() { super::$scenario(Rt::AsyncStd, Rt::Smol) }
        }
    )*};
}

every_pair!(
    tcp_upgrade,
    quic_upgrade,
    unreachable_peer,
    stranger_on_the_punch_port
);

/// One peer on `rt` whose "peer" is a raw socket writing `bytes` and then
/// closing (or not).
fn against_raw_peer(rt: Rt, side: Side, bytes: &[u8], close: bool) -> PeerReport {
    let (ours, mut theirs) = relayed_pair();
    theirs.write_all(bytes).unwrap();
    if close {
        drop(theirs);
        run_peer(rt, Job::new(side, Transport::Tcp, ours))
    } else {
        let report = run_peer(rt, Job::new(side, Transport::Tcp, ours));
        drop(theirs);
        report
    }
}

fn garbage_from_the_peer(rt: Rt) {
    let r = against_raw_peer(rt, Side::Responder, &[0xff; 64], false);
    assert!(
        matches!(
            r.ended,
            Ended::Failed(UpgradeFailure::Failed(Failure::Protocol(_)))
        ),
        "{:?}",
        r.ended
    );
}

fn stream_dropped_mid_protocol(rt: Rt) {
    // A valid Hello, then the relay drops the stream.
    let hello = dcutr_core::wire::encode_hello(3, Side::Responder, &[6; 32]);
    let r = against_raw_peer(rt, Side::Initiator, &hello, true);
    assert!(
        matches!(
            r.ended,
            Ended::Failed(UpgradeFailure::Failed(Failure::RelayClosed { .. }))
        ),
        "{:?}",
        r.ended
    );
}

macro_rules! every_runtime {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::Rt;
            #[test] fn tokio() { super::$scenario(Rt::Tokio) }
            #[test] fn smol() { super::$scenario(Rt::Smol) }
            #[test] fn async_std() { super::$scenario(Rt::AsyncStd) }
        }
    )*};
}

every_runtime!(garbage_from_the_peer, stream_dropped_mid_protocol);
