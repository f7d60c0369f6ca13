//! Swarm-level tests of dcutr-libp2p over loopback TCP through a
//! `libp2p-relay` relay, in one test binary (each binary links all of
//! libp2p, about 120 MB with debug info):
//! * `interop`: against stock `libp2p-dcutr` in both roles, and ours
//!   against ours;
//! * `better`: what this behaviour does that stock does not;
//! * `metrics`: a real registry scraped after real upgrades;
//! * `logs`: our log target is stock's;
//! * `swap`: the README's swap on a client shaped like rust-libp2p's
//!   `examples/dcutr`.

mod better;
mod common;
mod interop;
mod logs;
#[cfg(feature = "metrics")]
mod metrics;
mod nat;
mod swap;
