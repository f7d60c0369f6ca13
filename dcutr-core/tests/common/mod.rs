//! Helpers shared by the core's integration tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use dcutr_core::nat::NatBehaviour;
use dcutr_core::wire::{NatWire, encode_connect, encode_connect_with, encode_sync};
use dcutr_core::{Candidate, Config, Dial, Event, Output, Side, Upgrade};

pub fn t0() -> Instant {
    dcutr_sim::epoch()
}

pub fn at(ms: u64) -> Instant {
    t0() + Duration::from_millis(ms)
}

pub fn tcp(s: &str) -> Candidate {
    Candidate::tcp(s.parse().unwrap())
}

pub fn quic(s: &str) -> Candidate {
    Candidate::quic(s.parse().unwrap())
}

/// The fingerprint [`start_session`] gives the upgrade.
pub const OWN_FINGERPRINT: [u8; 32] = [0x77; 32];

/// The fingerprint the scripted peer of the tests pins in its `Hello`.
pub const PEER_FINGERPRINT: [u8; 32] = [0x55; 32];

/// The peer's `Hello` (wire v3) for a test upgrade of `side`.
pub fn peer_hello(side: Side, max_attempts: u8) -> Bytes {
    let peer = match side {
        Side::Initiator => Side::Responder,
        Side::Responder => Side::Initiator,
    };
    dcutr_core::wire::encode_hello(max_attempts, peer, &PEER_FINGERPRINT)
}

/// A spec upgrade of `side` (a stream per attempt).
pub fn start(side: Side, config: Config) -> Upgrade {
    builder(side, config).start(t0()).unwrap()
}

/// An upgrade of `side` in the dcutr-rs session, pinning
/// [`OWN_FINGERPRINT`]: its first output is its `Hello`.
pub fn start_session(side: Side, config: Config) -> Upgrade {
    builder(side, config)
        .dcutr_session(OWN_FINGERPRINT)
        .start(t0())
        .unwrap()
}

/// An upgrade of `side` on the session's shared stream without its pin.
pub fn start_unpinned(side: Side, config: Config) -> Upgrade {
    builder(side, config)
        .dcutr_session_unpinned()
        .start(t0())
        .unwrap()
}

fn builder(side: Side, config: Config) -> dcutr_core::UpgradeBuilder {
    Upgrade::builder(side, config, [7; 32])
        .local_addrs([tcp("198.51.100.9:4001"), quic("198.51.100.9:4001")])
}

pub fn drain(up: &mut Upgrade) -> Vec<Output> {
    std::iter::from_fn(|| up.poll_output()).collect()
}

pub fn events(outputs: &[Output]) -> Vec<Event> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// The dials among `outputs`, in order.
pub fn dials(outputs: &[Output]) -> Vec<Dial> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Dial(d) => Some(*d),
            _ => None,
        })
        .collect()
}

pub fn connect_frame(addrs: &[Candidate]) -> Bytes {
    let raw: Vec<Vec<u8>> = addrs.iter().map(|c| c.to_multiaddr().to_vec()).collect();
    encode_connect(raw.iter().map(Vec::as_slice), 4096).0
}

pub fn sync_frame() -> Bytes {
    encode_sync()
}

/// A symmetric NAT with random ports, seen from `local` (dcutr-sim's model).
pub fn random_nat(local: &str) -> NatBehaviour {
    dcutr_sim::nat::NatModel::symmetric_random().behaviour(local.parse().unwrap())
}

/// A port-restricted cone, seen from `local` (dcutr-sim's model).
pub fn cone_nat(local: &str) -> NatBehaviour {
    dcutr_sim::nat::NatModel::port_restricted().behaviour(local.parse().unwrap())
}

/// A Connect frame with `addrs` that declares the sender's `nat`.
pub fn connect_with_nat(addrs: &[Candidate], nat: &NatBehaviour) -> Bytes {
    let raw: Vec<Vec<u8>> = addrs.iter().map(|c| c.to_multiaddr().to_vec()).collect();
    encode_connect_with(
        raw.iter().map(Vec::as_slice),
        Some(NatWire::from_behaviour(nat)),
        4096,
    )
    .0
}

/// The birthday datagrams and connects among `out`.
pub fn transmits(out: &[Output]) -> Vec<dcutr_core::birthday::Transmit> {
    out.iter()
        .filter_map(|o| match o {
            Output::SendBirthday(t) => Some(*t),
            _ => None,
        })
        .collect()
}

/// The `keep` of every `CloseFresh` among `out`.
pub fn closes(out: &[Output]) -> Vec<Option<u16>> {
    out.iter()
        .filter_map(|o| match o {
            Output::CloseFresh { keep } => Some(*keep),
            _ => None,
        })
        .collect()
}
