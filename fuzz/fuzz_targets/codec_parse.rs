//! The protobuf and multiaddr parsing on arbitrary payloads:
//! `decode_message`, `decode_hello`, `Candidate::from_bytes` and
//! `filter_remote`.
//!
//! Invariants: no panic; what decodes re-encodes and decodes to the same
//! message; accepted candidates pass `AddressPolicy::check` and
//! `Dialable::allows` and an independent range check, number at most the
//! cap, hold no duplicates, keep the peer's order, and every entry is
//! either accepted or counted as rejected; a parsed candidate round-trips
//! through its multiaddr.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use dcutr_core::filter::filter_remote;
use dcutr_core::wire::{self, Message};
use dcutr_core::{AddressPolicy, Candidate, Dialable, Transport};
use dcutr_fuzz::input::AddrIn;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Entry {
    Addr(AddrIn),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Case {
    payload: Vec<u8>,
    entries: Vec<Entry>,
    allow_loopback: bool,
    allow_private: bool,
    dialable: u8,
    max: u8,
}

/// An independent statement of which addresses may never be dialled,
/// written from the documentation rather than from the code.
fn forbidden(c: &Candidate, policy: &AddressPolicy) -> bool {
    if c.addr.port() == 0 {
        return true;
    }
    match c.addr.ip() {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            a == 0
                || ip.is_multicast()
                || ip.is_broadcast()
                || a >= 240
                || (ip.is_loopback() && !policy.allow_loopback)
                || ((ip.is_private() || ip.is_link_local() || (a == 100 && (64..128).contains(&b)))
                    && !policy.allow_private)
        }
        IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            ip.is_unspecified()
                || ip.is_multicast()
                || ip.to_ipv4_mapped().is_some()
                || (ip.is_loopback() && !policy.allow_loopback)
                || (((first & 0xffc0) == 0xfe80 || (first & 0xfe00) == 0xfc00)
                    && !policy.allow_private)
        }
    }
}

fn check_filter(raw: &[Vec<u8>], policy: &AddressPolicy, dialable: &Dialable, max: usize) {
    let r = filter_remote(raw.iter().map(Vec::as_slice), policy, dialable, max);
    assert!(
        r.accepted.len() <= max,
        "{} accepted, cap {max}",
        r.accepted.len()
    );
    assert_eq!(
        r.accepted.len() + r.rejected.total() as usize,
        raw.len(),
        "every entry is accepted or counted"
    );
    let mut next = 0;
    for (i, c) in r.accepted.iter().enumerate() {
        assert!(policy.check(c).is_ok(), "{c} fails the policy");
        assert!(dialable.allows(c), "{c} is not dialable");
        assert!(!forbidden(c, policy), "{c} is in a forbidden range");
        assert!(!r.accepted[..i].contains(c), "{c} accepted twice");
        // In the peer's order: the entry it came from is after the last.
        let pos = raw[next..]
            .iter()
            .position(|b| Candidate::from_bytes(b) == Ok(*c))
            .unwrap_or_else(|| panic!("{c} does not come from any entry"));
        next += pos + 1;
    }
}

fuzz_target!(|case: Case| {
    let mut policy = AddressPolicy::public_only();
    policy.allow_loopback = case.allow_loopback;
    policy.allow_private = case.allow_private;
    let mut dialable = Dialable::none();
    for (bit, t, v6) in [
        (1, Transport::Tcp, false),
        (2, Transport::Tcp, true),
        (4, Transport::Quic, false),
        (8, Transport::Quic, true),
    ] {
        if case.dialable & bit == 0 {
            dialable = dialable.with(t, v6);
        }
    }
    let max = usize::from(case.max % 40);

    match wire::decode_message(&case.payload) {
        Ok(Message::Connect(raw)) => {
            let (frame, count) = wire::encode_connect(raw.iter().map(Vec::as_slice), usize::MAX);
            assert_eq!(count, raw.len());
            let payload = wire::FrameDecoder::new(usize::MAX)
                .decode(&mut &frame[..])
                .expect("our own frame")
                .expect("complete");
            assert_eq!(
                wire::decode_message(&payload),
                Ok(Message::Connect(raw.clone()))
            );
            check_filter(&raw, &policy, &dialable, max);
        }
        Ok(Message::Sync) => {
            assert_eq!(
                wire::decode_message(&wire::encode_sync()[1..]),
                Ok(Message::Sync)
            );
        }
        Err(_) => {}
    }
    if let Ok(hello) = wire::decode_hello(&case.payload) {
        let limit = hello
            .max_attempts
            .map_or(1, |m| u8::try_from(m).unwrap_or(u8::MAX).max(1));
        let side = hello.side.unwrap_or(dcutr_core::Side::Initiator);
        let frame = wire::encode_hello(limit, side, &hello.fingerprint);
        let again = wire::decode_hello(&frame[1..]).expect("our own Hello decodes");
        assert_eq!(again.fingerprint, hello.fingerprint);
        assert_eq!(again.side, Some(side));
        assert_eq!(again.max_attempts, Some(u32::from(limit)));
    }
    if let Ok(c) = Candidate::from_bytes(&case.payload) {
        assert_eq!(Candidate::from_bytes(&c.to_multiaddr().to_vec()), Ok(c));
    }

    let raw: Vec<Vec<u8>> = case
        .entries
        .iter()
        .map(|e| match e {
            Entry::Addr(a) => a.candidate().to_multiaddr().to_vec(),
            Entry::Raw(b) => b.clone(),
        })
        .collect();
    check_filter(&raw, &policy, &dialable, max);
    // The same entries inside a Connect frame survive the wire.
    let (frame, count) = wire::encode_connect(raw.iter().map(Vec::as_slice), 4096);
    let payload = wire::FrameDecoder::new(4096)
        .decode(&mut &frame[..])
        .expect("our own frame")
        .expect("complete");
    assert_eq!(
        wire::decode_message(&payload),
        Ok(Message::Connect(raw[..count].to_vec()))
    );
});
