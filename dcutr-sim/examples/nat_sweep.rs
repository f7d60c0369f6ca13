//! The NAT sweep (filled in by the next commit).

fn main() {}
