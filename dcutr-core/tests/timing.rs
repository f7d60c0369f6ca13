//! The punch timing of the specification, on a simulated relay with a
//! fake clock: Sync leaves one RTT after Connect, the initiator punches
//! RTT/2 after Sync, the responder on Sync's arrival, and the two meet.

use std::time::Duration;

use dcutr_core::{Config, Event, Outcome, Output, Role, Side, Transport};
use dcutr_sim::{Protocol, Sim, SimConfig};

const LIMIT: Duration = Duration::from_secs(120);

fn is_connect(o: &Output) -> bool {
    // The first stream write of each attempt is the Connect.
    matches!(o, Output::WriteStream(_))
}

struct Timing {
    connect: Duration,
    sync: Duration,
    initiator_punch: Duration,
    responder_punch: Duration,
}

fn run(transport: Transport, rtt: Duration, protocol: Protocol) -> (Sim, Timing) {
    let cfg = SimConfig::two_nats(&Config::default(), rtt / 2, Duration::from_millis(20))
        .protocol(protocol)
        .only(transport);
    let mut sim = Sim::new(cfg);
    assert!(sim.run(LIMIT), "both sides finish");
    let connect = sim
        .first(Side::Initiator, is_connect)
        .expect("Connect sent");
    let sync = sim
        .first(Side::Initiator, |o| {
            matches!(o, Output::Event(Event::SyncSent { .. }))
        })
        .expect("Sync sent");
    let initiator_punch = match transport {
        Transport::Tcp => sim.first(Side::Initiator, |o| matches!(o, Output::Dial(_))),
        Transport::Quic => sim.first(Side::Initiator, |o| {
            matches!(o, Output::SendDatagram { .. })
        }),
    }
    .expect("initiator punched");
    let responder_punch = sim
        .first(Side::Responder, |o| matches!(o, Output::Dial(_)))
        .expect("responder dialled");
    (
        sim,
        Timing {
            connect,
            sync,
            initiator_punch,
            responder_punch,
        },
    )
}

fn assert_timing(transport: Transport, rtt_ms: u64) {
    let rtt = Duration::from_millis(rtt_ms);
    for protocol in [Protocol::Spec, Protocol::SessionUnpinned] {
        let (sim, t) = run(transport, rtt, protocol);
        let ctx = format!("{transport} rtt={rtt_ms}ms {protocol:?}");
        assert_eq!(
            t.sync - t.connect,
            rtt,
            "Sync leaves one RTT after Connect ({ctx})"
        );
        assert_eq!(
            t.initiator_punch - t.sync,
            rtt / 2,
            "initiator punches RTT/2 after Sync ({ctx})"
        );
        assert_eq!(
            t.responder_punch,
            t.sync + rtt / 2,
            "responder punches when Sync arrives ({ctx})"
        );
        let gap = t.initiator_punch.abs_diff(t.responder_punch);
        assert!(
            gap <= Duration::from_millis(1),
            "punches {gap:?} apart ({ctx})"
        );

        let (Some(Outcome::Upgraded(b)), Some(Outcome::Upgraded(a))) = sim.outcomes() else {
            panic!("both sides upgrade ({ctx}): {:?}", sim.outcomes());
        };
        assert_eq!(
            (a.role, b.role),
            (Role::Client, Role::Server),
            "A is client, B is server ({ctx})"
        );
        assert_eq!((a.transport, b.transport), (transport, transport), "{ctx}");
        assert_eq!((a.attempt, b.attempt), (1, 1), "first attempt ({ctx})");
    }
}

#[test]
fn tcp_punch_timing_at_10ms_rtt() {
    assert_timing(Transport::Tcp, 10);
}

#[test]
fn tcp_punch_timing_at_100ms_rtt() {
    assert_timing(Transport::Tcp, 100);
}

#[test]
fn tcp_punch_timing_at_500ms_rtt() {
    assert_timing(Transport::Tcp, 500);
}

#[test]
fn quic_punch_timing_at_10ms_rtt() {
    assert_timing(Transport::Quic, 10);
}

#[test]
fn quic_punch_timing_at_100ms_rtt() {
    assert_timing(Transport::Quic, 100);
}

#[test]
fn quic_punch_timing_at_500ms_rtt() {
    assert_timing(Transport::Quic, 500);
}
