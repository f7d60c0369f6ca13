//! Cost of the core: complete upgrades per second, frames decoded per
//! second, heap held per live upgrade, and allocations per timer tick.
//!
//! ```text
//! cargo bench -p dcutr-core
//! ```
//!
//! The memory figures are counted by an instrumented global allocator
//! and printed before the timing runs.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use dcutr_core::wire::{FrameDecoder, MAX_MESSAGE_SIZE, decode_message, encode_connect};
use dcutr_core::{
    AddressPolicy, Candidate, Config, Dialable, Output, Side, TimerKind, Upgrade,
    filter::filter_remote,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Eight public TCP addresses on eight IPs (one IP takes at most
/// `MAX_PUNCHES_PER_IP` punches), as a peer with several observed
/// addresses would send.
fn addrs(host: u8) -> Vec<Candidate> {
    (0..8u8)
        .map(|i| {
            Candidate::tcp(std::net::SocketAddr::from((
                [203, 0, 113, 10 * host + i],
                4001,
            )))
        })
        .collect()
}

fn pair(now: Instant, seed: u8) -> (Upgrade, Upgrade) {
    let config = Config::default();
    let b = Upgrade::builder(Side::Initiator, config.clone(), [seed; 32])
        .local_addrs(addrs(1))
        .start(now)
        .expect("valid config");
    let a = Upgrade::builder(Side::Responder, config, [seed.wrapping_add(1); 32])
        .local_addrs(addrs(2))
        .start(now)
        .expect("valid config");
    (b, a)
}

/// Carries one side's outputs to the other with no delay; returns the
/// number of dials it saw.
fn pump(from: &mut Upgrade, to: &mut Upgrade, now: Instant) -> usize {
    let mut dials = 0;
    while let Some(out) = from.poll_output() {
        match out {
            Output::OpenStream => {
                from.handle_stream_opened(now);
                to.handle_stream_opened(now);
            }
            Output::WriteStream(bytes) => to.handle_stream_data(now, &bytes),
            Output::Dial(_) => dials += 1,
            _ => {}
        }
    }
    dials
}

/// One complete upgrade of both roles, from start through Sync to every
/// dial command. Returns the pair, still live.
fn complete_upgrade(now: Instant, seed: u8) -> (Upgrade, Upgrade) {
    let (mut b, mut a) = pair(now, seed);
    let mut dials = 0;
    for _ in 0..8 {
        dials += pump(&mut b, &mut a, now);
        dials += pump(&mut a, &mut b, now);
        b.handle_timeout(now);
        if dials == 16 {
            return (b, a);
        }
    }
    panic!("upgrade did not reach the dials: {dials}");
}

fn report_memory() {
    let now = dcutr_sim::epoch();
    const N: usize = 1000;
    let live: Vec<(Upgrade, Upgrade)> = (0..N).map(|i| complete_upgrade(now, i as u8)).collect();
    // What dropping them frees is exactly what they held.
    let region = Region::new(GLOBAL);
    let vec_bytes = std::mem::size_of::<(Upgrade, Upgrade)>() * live.capacity();
    drop(live);
    let change = region.change();
    let freed = change.bytes_deallocated - change.bytes_allocated;
    let per_upgrade = (freed - vec_bytes) / (2 * N);
    let inline = std::mem::size_of::<Upgrade>();
    println!(
        "memory: {per_upgrade} heap bytes held per live upgrade (after its dials; 8 addresses each \
         side) + {inline} bytes of the Upgrade value itself = {} bytes (target: <= 4096)",
        per_upgrade + inline
    );

    // Allocations per timer tick: a QUIC initiator spraying two targets.
    let config = Config::default();
    let quic = |host: u8| {
        vec![
            Candidate::quic(std::net::SocketAddr::from(([203, 0, 113, host], 4001))),
            Candidate::quic(std::net::SocketAddr::from(([203, 0, 113, host], 4002))),
        ]
    };
    let mut b = Upgrade::builder(Side::Initiator, config.clone(), [9; 32])
        .local_addrs(quic(1))
        .start(now)
        .unwrap();
    let mut a = Upgrade::builder(Side::Responder, config, [8; 32])
        .local_addrs(quic(2))
        .start(now)
        .unwrap();
    let mut t = now;
    for _ in 0..8 {
        pump(&mut b, &mut a, t);
        pump(&mut a, &mut b, t);
        b.handle_timeout(t);
    }
    while b.poll_output().is_some() {}
    let mut ticks = 0;
    let region = Region::new(GLOBAL);
    while let Some(timeout) = b.poll_timeout() {
        if timeout.kind != TimerKind::SprayTick || ticks == 50 {
            break;
        }
        t = timeout.at;
        b.handle_timeout(t);
        while let Some(out) = b.poll_output() {
            black_box(out);
        }
        ticks += 1;
    }
    let change = region.change();
    println!(
        "memory: {} allocations over {ticks} spray ticks ({} bytes)",
        change.allocations, change.bytes_allocated
    );
}

fn bench_upgrades(c: &mut Criterion) {
    let now = dcutr_sim::epoch();
    let mut group = c.benchmark_group("upgrade");
    group.throughput(Throughput::Elements(1));
    group.bench_function("complete_pair_8_addrs", |bench| {
        let mut seed = 0u8;
        bench.iter(|| {
            seed = seed.wrapping_add(1);
            black_box(complete_upgrade(now, seed))
        });
    });
    group.finish();
}

fn bench_frames(c: &mut Criterion) {
    let raw: Vec<Vec<u8>> = addrs(1).iter().map(|c| c.to_multiaddr().to_vec()).collect();
    let (frame, _) = encode_connect(raw.iter().map(Vec::as_slice), MAX_MESSAGE_SIZE);
    let sync = dcutr_core::wire::encode_sync();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("connect_8_addrs_frame", |bench| {
        bench.iter(|| {
            let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
            let payload = decoder.decode(&mut &frame[..]).unwrap().unwrap();
            black_box(decode_message(&payload).unwrap())
        });
    });
    group.bench_function("connect_8_addrs_frame_and_filter", |bench| {
        bench.iter(|| {
            let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
            let payload = decoder.decode(&mut &frame[..]).unwrap().unwrap();
            let Ok(dcutr_core::wire::Message::Connect(addrs)) = decode_message(&payload) else {
                unreachable!()
            };
            black_box(filter_remote(
                addrs.iter().map(Vec::as_slice),
                &AddressPolicy::public_only(),
                &Dialable::all(),
                16,
            ))
        });
    });
    group.bench_function("sync_frame", |bench| {
        bench.iter(|| {
            let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
            let payload = decoder.decode(&mut &sync[..]).unwrap().unwrap();
            black_box(decode_message(&payload).unwrap())
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_upgrades, bench_frames
}

fn main() {
    report_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
