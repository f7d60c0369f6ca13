//! Helpers shared by dcutr-cli's test binaries.

pub mod stun;
