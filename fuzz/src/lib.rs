//! Shared harness code for the dcutr-core fuzz targets.
//!
//! * [`driver`] drives one [`dcutr_core::Upgrade`] through a scripted
//!   sequence of timestamped inputs and checks the core's invariants after
//!   every step (the `upgrade_initiator` and `upgrade_responder` targets).
//! * [`world`] runs whole upgrades in [`dcutr_sim::Sim`] and checks that
//!   both sides agree (the `orchestrator` target).
//! * [`input`] holds the `arbitrary` input types that the targets decode
//!   from libFuzzer's bytes and turn into the plain types above.
//!
//! Every check panics with a message naming the broken invariant, which
//! libFuzzer records as a crash.

pub mod driver;
pub mod input;
pub mod world;

/// Switches off the tolerance for bugs that are already reported and kept
/// as ignored regression tests in `dcutr-core/tests/fuzz_regressions.rs`.
///
/// By default the targets tolerate those known bugs, so that a long run
/// keeps finding new ones instead of the same crash again and again. Set
/// `DCUTR_FUZZ_STRICT=1` to check every invariant in full (for example to
/// confirm that a fix holds).
#[must_use]
pub fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("DCUTR_FUZZ_STRICT").is_some_and(|v| v != "0"))
}

/// Prints one line per input to stderr (outcome, attempts, dials,
/// datagrams) when `DCUTR_FUZZ_TRACE=1`, so a corpus can be summarised:
/// `DCUTR_FUZZ_TRACE=1 cargo +nightly fuzz run T corpus/T -- -runs=0 2>&1 |
/// grep '^trace' | sort | uniq -c`. Shows how deep the inputs get.
#[must_use]
pub fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("DCUTR_FUZZ_TRACE").is_some_and(|v| v != "0"))
}

/// The chunks `0..len` splits into at the fuzzer's cut points (at most
/// `max_cuts` of them, each taken modulo `len + 1`): non-empty, in order,
/// covering every byte once. How the targets feed a byte stream in
/// arbitrary pieces.
#[must_use]
pub fn chunks(cuts: &[u16], max_cuts: usize, len: usize) -> Vec<std::ops::Range<usize>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .take(max_cuts)
        .map(|c| usize::from(*c) % (len + 1))
        .collect();
    points.push(len);
    points.sort_unstable();
    let mut from = 0;
    let mut out = Vec::with_capacity(points.len());
    for to in points {
        if to > from {
            out.push(from..to);
            from = to;
        }
    }
    out
}
