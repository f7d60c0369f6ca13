//! A spray tick allocates nothing, whatever the number of targets: the
//! output queue keeps room for a whole round, and payloads are inline.
//! (Allocation counts are deterministic; timings live in the benchmarks.)

use std::alloc::System;
use std::net::SocketAddr;

use dcutr_core::{Candidate, Config, Output, Side, TimerKind, Upgrade};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// `n` QUIC addresses, each on its own IP from `first` on (one IP holds at
/// most `max_punches_per_ip` targets).
fn quic(first: u8, n: u8) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate::quic(SocketAddr::from(([203, 0, 113, first + i], 4001))))
        .collect()
}

/// Allocations during `ticks` spray ticks of an initiator spraying to
/// `targets` addresses.
fn allocations_over_spray_ticks(targets: u8, ticks: usize) -> (usize, usize) {
    let now = dcutr_sim::epoch();
    let mut b = Upgrade::builder(Side::Initiator, Config::default(), [9; 32])
        .local_addrs(quic(1, 1))
        .start(now)
        .unwrap();
    let mut a = Upgrade::builder(Side::Responder, Config::default(), [8; 32])
        .local_addrs(quic(10, targets))
        .start(now)
        .unwrap();
    // Run the exchange with no delay until the initiator sprays.
    for _ in 0..4 {
        while let Some(out) = b.poll_output() {
            match out {
                Output::OpenStream => {
                    b.handle_stream_opened(now);
                    a.handle_stream_opened(now);
                }
                Output::WriteStream(bytes) => a.handle_stream_data(now, &bytes),
                _ => {}
            }
        }
        while let Some(out) = a.poll_output() {
            if let Output::WriteStream(bytes) = out {
                b.handle_stream_data(now, &bytes);
            }
        }
        b.handle_timeout(now);
    }
    while b.poll_output().is_some() {}
    let region = Region::new(GLOBAL);
    let mut done = 0;
    let mut datagrams = 0;
    while done < ticks {
        let timeout = b.poll_timeout().expect("spraying");
        assert_eq!(timeout.kind, TimerKind::SprayTick);
        b.handle_timeout(timeout.at);
        while let Some(out) = b.poll_output() {
            if matches!(out, Output::SendDatagram { .. }) {
                datagrams += 1;
            }
        }
        done += 1;
    }
    assert_eq!(datagrams, ticks * usize::from(targets));
    (region.change().allocations, datagrams)
}

#[test]
fn a_spray_tick_allocates_nothing() {
    for targets in [1, 2, 16] {
        // Stay inside the 5 s window (mean pause 105 ms) and the budget of
        // 200 datagrams per attempt, of which the priming datagrams (one
        // per target) and the punch's first round take two per target.
        let ticks = 30.min(200 / usize::from(targets) - 2);
        let (allocations, datagrams) = allocations_over_spray_ticks(targets, ticks);
        assert_eq!(
            allocations, 0,
            "{targets} targets: {allocations} allocations over {datagrams} datagrams"
        );
    }
}
