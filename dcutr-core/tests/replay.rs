//! Determinism: the same seed and inputs give the same outputs, byte for
//! byte; another seed changes the random parts and nothing else.

use std::time::Duration;

use dcutr_core::{Config, Output, Transport};
use dcutr_sim::{Protocol, Record, Sim, SimConfig};

fn run(seed: u64, transport: Transport) -> Vec<Record> {
    let mut cfg = SimConfig::two_nats(
        &Config::default(),
        Duration::from_millis(40),
        Duration::from_millis(7),
    )
    .protocol(Protocol::Session)
    .only(transport);
    cfg.seed = seed;
    cfg.blocked_attempts = vec![1];
    let mut sim = Sim::new(cfg);
    assert!(sim.run(Duration::from_secs(120)));
    sim.log
}

/// Every byte the cores produced, in order, with its simulated time.
fn wire_bytes(log: &[Record]) -> Vec<(Duration, Vec<u8>)> {
    log.iter()
        .filter_map(|r| match &r.output {
            Output::WriteStream(b) | Output::WriteDirect { data: b, .. } => {
                Some((r.at, b.to_vec()))
            }
            Output::SendDatagram { payload, .. } => Some((r.at, payload.bytes().to_vec())),
            _ => None,
        })
        .collect()
}

#[test]
fn the_same_seed_replays_byte_for_byte() {
    for transport in [Transport::Tcp, Transport::Quic] {
        let first = run(42, transport);
        let second = run(42, transport);
        assert!(first.len() > 20, "a real run: {} records", first.len());
        assert_eq!(first, second, "{transport}");
        assert_eq!(wire_bytes(&first), wire_bytes(&second));
    }
}

#[test]
fn another_seed_changes_the_spray_but_not_the_timing() {
    let a = run(1, Transport::Quic);
    let b = run(2, Transport::Quic);
    assert_ne!(wire_bytes(&a), wire_bytes(&b), "spray payloads differ");
    let times = |log: &[Record]| {
        log.iter()
            .filter(|r| matches!(r.output, Output::Dial(_) | Output::WriteStream(_)))
            .map(|r| r.at)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        times(&a),
        times(&b),
        "the protocol's timing does not depend on the seed"
    );
}
