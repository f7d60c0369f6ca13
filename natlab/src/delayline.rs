//! The user-space delay line (`natlab delayline`): forwards Ethernet frames
//! between two interfaces through AF_PACKET sockets, holding each frame for a
//! one-way delay, with optional jitter and loss. It stands in for `tc netem`,
//! which this kernel lacks.
//!
//! One receiver thread per interface stamps each frame with its release time
//! and queues it (bounded) for the sender thread of the other interface,
//! which sleeps until that time and transmits. Release times never go
//! backwards within a direction, so jitter does not reorder frames (netem
//! would, by default; TCP and QUIC handshakes are happier without).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::warn;

use crate::rawsock::PacketSocket;

/// Frames queued per direction. At 1500 bytes that is at most ~6 MB per
/// direction; a full queue drops (and counts) new frames, like a router's
/// tail drop, instead of growing without bound.
pub const MAX_QUEUED_FRAMES: usize = 4096;

/// Receive buffer per frame: a veth MTU frame is 1514 bytes, but GRO or a
/// forgotten offload setting can hand us up to 64 KiB; those are counted and
/// dropped (they could not be re-sent as one frame anyway).
pub const MAX_FRAME_BYTES: usize = 65_536;

/// Largest frame we transmit: Ethernet MTU 1500 plus the 14-byte header
/// (the lab's veths keep the default MTU).
pub const MAX_TX_FRAME_BYTES: usize = 1514;

/// Longest one-way delay accepted: keeps a full queue's dwell time sane.
pub const MAX_DELAY_MS: f64 = 10_000.0;

/// How often the delay line prints its counters to stderr while running.
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// How often the delay line checks that natlab (its parent) is still alive:
/// if natlab is killed before its teardown runs, the delay line exits by
/// itself within this time instead of forwarding forever.
pub const PARENT_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Settings of one delay line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub delay: Duration,
    pub jitter: Duration,
    pub loss: f64,
    /// RNG seed (each direction derives its own stream from it).
    pub seed: u64,
}

impl Params {
    /// Validate and convert command-line values.
    pub fn new(delay_ms: f64, jitter_ms: f64, loss: f64, seed: u64) -> Result<Self> {
        ensure!(
            (0.0..=MAX_DELAY_MS).contains(&delay_ms),
            "delay must be 0..={MAX_DELAY_MS} ms"
        );
        ensure!(
            (0.0..=delay_ms).contains(&jitter_ms),
            "jitter must be 0..=delay"
        );
        ensure!((0.0..=1.0).contains(&loss), "loss must be a probability");
        Ok(Self {
            delay: Duration::from_secs_f64(delay_ms / 1e3),
            jitter: Duration::from_secs_f64(jitter_ms / 1e3),
            loss,
            seed,
        })
    }
}

/// Decides, per frame, whether it is lost and when it leaves.
#[derive(Debug)]
pub struct Scheduler {
    params: Params,
    rng: ChaCha8Rng,
    last_release: Option<Instant>,
}

impl Scheduler {
    /// A scheduler for one direction (`stream` keeps the two directions'
    /// random numbers apart).
    pub fn new(params: Params, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        rng.set_stream(stream);
        Self {
            params,
            rng,
            last_release: None,
        }
    }

    /// `None` if the frame is lost, else when to transmit it.
    pub fn schedule(&mut self, arrived: Instant) -> Option<Instant> {
        if self.params.loss > 0.0 && self.rng.random_bool(self.params.loss) {
            return None;
        }
        let mut release = arrived + self.params.delay;
        if !self.params.jitter.is_zero() {
            let j = self.params.jitter.as_secs_f64();
            let offset = self.rng.random_range(-j..=j);
            release = if offset >= 0.0 {
                release + Duration::from_secs_f64(offset)
            } else {
                release
                    .checked_sub(Duration::from_secs_f64(-offset))
                    .unwrap_or(arrived)
                    .max(arrived)
            };
        }
        if let Some(last) = self.last_release {
            release = release.max(last);
        }
        self.last_release = Some(release);
        Some(release)
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct Stats {
    forwarded: AtomicU64,
    lost: AtomicU64,
    queue_full: AtomicU64,
    oversize: AtomicU64,
    own_copies: AtomicU64,
    send_errors: AtomicU64,
}

impl Stats {
    fn json(&self, dir: &str) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "event": "stats", "dir": dir, "forwarded": g(&self.forwarded),
            "lost": g(&self.lost), "queue_full": g(&self.queue_full),
            "oversize": g(&self.oversize), "own_copies": g(&self.own_copies),
            "send_errors": g(&self.send_errors),
        })
        .to_string()
    }
}

struct Frame {
    release: Instant,
    bytes: Vec<u8>,
}

/// Run the delay line between interfaces `a` and `b` until killed.
pub fn run(a: &str, b: &str, params: Params) -> Result<()> {
    let sock_a = Arc::new(PacketSocket::open(a).with_context(|| format!("opening {a}"))?);
    let sock_b = Arc::new(PacketSocket::open(b).with_context(|| format!("opening {b}"))?);
    // One queue, two threads and one set of counters per direction.
    let mut stats = Vec::new();
    let mut threads = Vec::new();
    for (from, to, stream, name) in [
        (&sock_a, &sock_b, 1u64, format!("{a}->{b}")),
        (&sock_b, &sock_a, 2u64, format!("{b}->{a}")),
    ] {
        let (from, to) = (Arc::clone(from), Arc::clone(to));
        let (tx, rx) = mpsc::sync_channel::<Frame>(MAX_QUEUED_FRAMES);
        let sched = Scheduler::new(params, stream);
        let tx_stats = Arc::new(Stats::default());
        let rx_stats = Arc::clone(&tx_stats);
        stats.push((name.clone(), Arc::clone(&tx_stats)));
        threads.push(
            thread::Builder::new()
                .name(format!("rx {name}"))
                .spawn(move || receive_loop(&from, tx, sched, &rx_stats))?,
        );
        threads.push(
            thread::Builder::new()
                .name(format!("tx {name}"))
                .spawn(move || send_loop(&to, rx, &tx_stats))?,
        );
    }
    let print_stats = || stats.iter().for_each(|(n, s)| eprintln!("{}", s.json(n)));
    let ready = serde_json::json!({
        "event": "ready", "a": a, "b": b, "delay_ms": params.delay.as_secs_f64() * 1e3,
        "jitter_ms": params.jitter.as_secs_f64() * 1e3, "loss": params.loss, "seed": params.seed,
    });
    println!("{ready}");
    let parent = std::os::unix::process::parent_id();
    let mut last_stats = Instant::now();
    loop {
        thread::sleep(PARENT_CHECK_INTERVAL);
        if threads.iter().any(|t| t.is_finished()) {
            anyhow::bail!("a delay-line thread stopped");
        }
        if std::os::unix::process::parent_id() != parent {
            print_stats();
            anyhow::bail!("parent process {parent} is gone; stopping");
        }
        if last_stats.elapsed() >= STATS_INTERVAL {
            last_stats = Instant::now();
            print_stats();
        }
    }
}

fn receive_loop(sock: &PacketSocket, tx: SyncSender<Frame>, mut sched: Scheduler, stats: &Stats) {
    let mut buf = vec![0u8; MAX_FRAME_BYTES];
    loop {
        let got = match sock.recv(&mut buf) {
            Ok(got) => got,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!("delay line receive: {e}");
                return;
            }
        };
        let arrived = Instant::now();
        if got.outgoing {
            stats.own_copies.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if got.len > MAX_TX_FRAME_BYTES || got.len > buf.len() {
            stats.oversize.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Some(release) = sched.schedule(arrived) else {
            stats.lost.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let frame = Frame {
            release,
            bytes: buf[..got.len].to_vec(),
        };
        match tx.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                stats.queue_full.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

fn send_loop(sock: &PacketSocket, rx: Receiver<Frame>, stats: &Stats) {
    for frame in rx {
        let now = Instant::now();
        if frame.release > now {
            thread::sleep(frame.release - now);
        }
        match sock.send(&frame.bytes) {
            Ok(()) => stats.forwarded.fetch_add(1, Ordering::Relaxed),
            Err(_) => stats.send_errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_delay_releases_exactly_delay_later() {
        let mut s = Scheduler::new(Params::new(50.0, 0.0, 0.0, 7).unwrap(), 1);
        let t0 = Instant::now();
        assert_eq!(s.schedule(t0), Some(t0 + Duration::from_millis(50)));
    }

    #[test]
    fn jitter_stays_within_bounds_and_never_reorders() {
        let mut s = Scheduler::new(Params::new(50.0, 10.0, 0.0, 7).unwrap(), 1);
        let t0 = Instant::now();
        let mut last = t0;
        for i in 0..1000u64 {
            let arrived = t0 + Duration::from_micros(i * 100);
            let r = s.schedule(arrived).unwrap();
            assert!(r >= last, "frame {i} reordered");
            assert!(r <= arrived + Duration::from_millis(60));
            last = r;
        }
    }

    #[test]
    fn loss_rate_is_close_to_the_probability_and_seeded() {
        let run = |seed| {
            let mut s = Scheduler::new(Params::new(0.0, 0.0, 0.25, seed).unwrap(), 1);
            let t0 = Instant::now();
            (0..10_000).filter(|_| s.schedule(t0).is_none()).count()
        };
        let lost = run(3);
        assert!((2_200..2_800).contains(&lost), "lost {lost} of 10000");
        assert_eq!(lost, run(3), "same seed, same losses");
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(Params::new(-1.0, 0.0, 0.0, 0).is_err());
        assert!(Params::new(10.0, 11.0, 0.0, 0).is_err());
        assert!(Params::new(10.0, 0.0, 1.5, 0).is_err());
        assert!(Params::new(MAX_DELAY_MS + 1.0, 0.0, 0.0, 0).is_err());
    }
}
