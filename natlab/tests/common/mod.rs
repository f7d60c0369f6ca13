//! Helpers shared by the root-only lab tests.

/// Whether the test runs as root (effective uid 0, read from /proc: no
/// libc call needed in a test).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The natlab binary cargo built for these tests.
pub fn natlab() -> &'static str {
    env!("CARGO_BIN_EXE_natlab")
}
