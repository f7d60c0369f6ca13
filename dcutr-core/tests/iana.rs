//! The address filter against the IANA IPv4 and IPv6 Special-Purpose
//! Address Registries, entry by entry.
//!
//! The expectations here are written from the registries themselves (and
//! the IPv4 Multicast and IPv6 Address Space registries for the few
//! entries outside them), not from the library's table: each entry
//! carries the verdict its "Globally Reachable" column implies and a
//! sample address. For every entry, its first and last address, the
//! addresses just outside it, and the sample go through
//! `AddressPolicy::check` under three policies, and every failure names
//! the entry. A last test checks that the library's table lists exactly
//! these entries with the same treatment, so no entry goes untested.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use dcutr_core::filter::{SPECIAL_RANGES, filter_remote};
use dcutr_core::{AddressPolicy, Candidate, Dialable, filter::AddrRejection, filter::RangeClass};

/// What an address of an entry must be treated as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Globally reachable.
    Pass,
    Loopback,
    /// A local network.
    Private,
    Documentation,
    Unspecified,
    Multicast,
    Reserved,
    /// Judged by the IPv4 address in the last 32 bits.
    Nat64,
    /// Judged by the IPv4 address in bits 16..48; only a public one passes.
    SixToFour,
}

use Expect::{
    Documentation as Doc, Loopback as Lo, Multicast as Multi, Nat64, Pass, Private as Priv,
    Reserved as Res, SixToFour, Unspecified as Unspec,
};

struct Entry {
    cidr: &'static str,
    name: &'static str,
    expect: Expect,
    /// An address of this entry and of no more specific one, and what it
    /// must be treated as (NAT64 and 6to4 resolved).
    sample: &'static str,
    sample_expect: Expect,
}

const fn e(
    cidr: &'static str,
    name: &'static str,
    expect: Expect,
    sample: &'static str,
    sample_expect: Expect,
) -> Entry {
    Entry {
        cidr,
        name,
        expect,
        sample,
        sample_expect,
    }
}

#[rustfmt::skip]
const ENTRIES: &[Entry] = &[
    // IANA IPv4 Special-Purpose Address Registry.
    e("0.0.0.0/8", "\"This network\"", Unspec, "0.1.2.3", Unspec),
    e("0.0.0.0/32", "\"This host on this network\"", Unspec, "0.0.0.0", Unspec),
    e("10.0.0.0/8", "Private-Use", Priv, "10.20.30.40", Priv),
    e("100.64.0.0/10", "Shared Address Space", Priv, "100.100.1.1", Priv),
    e("127.0.0.0/8", "Loopback", Lo, "127.1.2.3", Lo),
    e("169.254.0.0/16", "Link Local", Priv, "169.254.10.10", Priv),
    e("172.16.0.0/12", "Private-Use", Priv, "172.20.0.1", Priv),
    e("192.0.0.0/24", "IETF Protocol Assignments", Res, "192.0.0.100", Res),
    e("192.0.0.0/29", "IPv4 Service Continuity Prefix", Res, "192.0.0.3", Res),
    e("192.0.0.8/32", "IPv4 dummy address", Res, "192.0.0.8", Res),
    e("192.0.0.9/32", "Port Control Protocol Anycast", Pass, "192.0.0.9", Pass),
    e("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", Pass, "192.0.0.10", Pass),
    e("192.0.0.170/32", "NAT64/DNS64 Discovery", Res, "192.0.0.170", Res),
    e("192.0.0.171/32", "NAT64/DNS64 Discovery", Res, "192.0.0.171", Res),
    e("192.0.2.0/24", "Documentation (TEST-NET-1)", Doc, "192.0.2.55", Doc),
    e("192.31.196.0/24", "AS112-v4", Pass, "192.31.196.1", Pass),
    e("192.52.193.0/24", "AMT", Pass, "192.52.193.1", Pass),
    e("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", Res, "192.88.99.1", Res),
    e("192.168.0.0/16", "Private-Use", Priv, "192.168.1.1", Priv),
    e("192.175.48.0/24", "Direct Delegation AS112 Service", Pass, "192.175.48.6", Pass),
    e("198.18.0.0/15", "Benchmarking", Priv, "198.19.0.1", Priv),
    e("198.51.100.0/24", "Documentation (TEST-NET-2)", Doc, "198.51.100.7", Doc),
    e("203.0.113.0/24", "Documentation (TEST-NET-3)", Doc, "203.0.113.7", Doc),
    e("240.0.0.0/4", "Reserved", Res, "250.1.2.3", Res),
    e("255.255.255.255/32", "Limited Broadcast", Multi, "255.255.255.255", Multi),
    // IPv4 Multicast Address Space registry.
    e("224.0.0.0/4", "Multicast", Multi, "239.1.2.3", Multi),
    // IANA IPv6 Special-Purpose Address Registry.
    e("::1/128", "Loopback Address", Lo, "::1", Lo),
    e("::/128", "Unspecified Address", Unspec, "::", Unspec),
    e("::ffff:0:0/96", "IPv4-mapped Address", Res, "::ffff:1.2.3.4", Res),
    e("64:ff9b::/96", "IPv4-IPv6 Translat.", Nat64, "64:ff9b::1.2.3.4", Pass),
    e("64:ff9b:1::/48", "IPv4-IPv6 Translat.", Priv, "64:ff9b:1::1", Priv),
    e("100::/64", "Discard-Only Address Block", Res, "100::1", Res),
    e("100:0:0:1::/64", "Dummy IPv6 Prefix", Res, "100:0:0:1::1", Res),
    e("2001::/23", "IETF Protocol Assignments", Res, "2001:5::1", Res),
    e("2001::/32", "TEREDO", Res, "2001:0:4136:e378::1", Res),
    e("2001:1::1/128", "Port Control Protocol Anycast", Pass, "2001:1::1", Pass),
    e("2001:1::2/128", "Traversal Using Relays around NAT Anycast", Pass, "2001:1::2", Pass),
    e("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", Pass, "2001:1::3", Pass),
    e("2001:2::/48", "Benchmarking", Priv, "2001:2::1", Priv),
    e("2001:3::/32", "AMT", Pass, "2001:3::1", Pass),
    e("2001:4:112::/48", "AS112-v6", Pass, "2001:4:112::1", Pass),
    e("2001:10::/28", "Deprecated (previously ORCHID)", Res, "2001:10::1", Res),
    e("2001:20::/28", "ORCHIDv2", Pass, "2001:20::1", Pass),
    e("2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", Pass, "2001:30::1", Pass),
    e("2001:db8::/32", "Documentation", Doc, "2001:db8::1", Doc),
    e("2002::/16", "6to4", SixToFour, "2002:102:304::1", Pass),
    e("2620:4f:8000::/48", "Direct Delegation AS112 Service", Pass, "2620:4f:8000::1", Pass),
    e("3fff::/20", "Documentation", Doc, "3fff::1", Doc),
    e("5f00::/16", "Segment Routing (SRv6) SIDs", Res, "5f00::1", Res),
    e("fc00::/7", "Unique-Local", Priv, "fd00::1", Priv),
    e("fe80::/10", "Link-Local Unicast", Priv, "fe80::1", Priv),
    // IPv6 Address Space registry: deprecated forms, multicast, and what
    // the IETF has not allocated.
    e("::/96", "IPv4-compatible Address (deprecated)", Res, "::1.2.3.4", Res),
    e("fec0::/10", "Site-Local (deprecated)", Priv, "fec0::1", Priv),
    e("ff00::/8", "Multicast", Multi, "ff02::1", Multi),
    e("::/8", "Reserved by IETF", Res, "0:0:0:1::1", Res),
    e("100::/8", "Reserved by IETF", Res, "100:1::1", Res),
    e("200::/7", "Reserved by IETF", Res, "200::1", Res),
    e("400::/6", "Reserved by IETF", Res, "400::1", Res),
    e("800::/5", "Reserved by IETF", Res, "800::1", Res),
    e("1000::/4", "Reserved by IETF", Res, "1000::1", Res),
    e("4000::/3", "Reserved by IETF", Res, "4000::1", Res),
    e("6000::/3", "Reserved by IETF", Res, "6000::1", Res),
    e("8000::/3", "Reserved by IETF", Res, "8000::1", Res),
    e("a000::/3", "Reserved by IETF", Res, "a000::1", Res),
    e("c000::/3", "Reserved by IETF", Res, "c000::1", Res),
    e("e000::/4", "Reserved by IETF", Res, "e000::1", Res),
    e("f000::/5", "Reserved by IETF", Res, "f000::1", Res),
    e("f800::/6", "Reserved by IETF", Res, "f800::1", Res),
    e("fe00::/9", "Reserved by IETF", Res, "fe00::1", Res),
];

/// A parsed prefix: the address as a number, its width (32 or 128) and
/// its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Prefix {
    base: u128,
    width: u32,
    len: u32,
}

fn parse(cidr: &str) -> Prefix {
    let (ip, len) = cidr.split_once('/').expect("a prefix length");
    let len: u32 = len.parse().expect("a number");
    let ip: IpAddr = ip.parse().expect("an address");
    let (base, width) = number(ip);
    let p = Prefix { base, width, len };
    assert_eq!(first(p), base, "{cidr}: host bits set");
    p
}

fn number(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn addr(n: u128, width: u32) -> IpAddr {
    if width == 32 {
        IpAddr::V4(Ipv4Addr::from(u32::try_from(n).expect("fits")))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

fn host_mask(p: Prefix) -> u128 {
    let host = p.width - p.len;
    if host == 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    }
}

fn first(p: Prefix) -> u128 {
    p.base & !host_mask(p)
}

fn last(p: Prefix) -> u128 {
    first(p) | host_mask(p)
}

fn contains(p: Prefix, n: u128, width: u32) -> bool {
    p.width == width && n & !host_mask(p) == first(p)
}

fn max_of(width: u32) -> u128 {
    if width == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    }
}

/// The most specific entry of this file's list holding `ip`.
fn entry_of(ip: IpAddr) -> Option<&'static Entry> {
    let (n, width) = number(ip);
    ENTRIES
        .iter()
        .filter(|e| contains(parse(e.cidr), n, width))
        .max_by_key(|e| parse(e.cidr).len)
}

/// What `ip` must be treated as, from this file's list alone.
fn expected(ip: IpAddr) -> Expect {
    let Some(entry) = entry_of(ip) else {
        return Pass;
    };
    let (n, _) = number(ip);
    let embedded = |shift: u32| {
        let v4 = u32::try_from((n >> shift) & u128::from(u32::MAX)).expect("32 bits");
        expected(IpAddr::V4(Ipv4Addr::from(v4)))
    };
    match entry.expect {
        Nat64 => embedded(0),
        SixToFour => match embedded(80) {
            Pass => Pass,
            Doc => Doc,
            _ => Res,
        },
        other => other,
    }
}

const POLICIES: [(&str, AddressPolicy); 3] = [
    ("strict", AddressPolicy::strict()),
    ("public_only", AddressPolicy::public_only()),
    ("permissive", AddressPolicy::permissive()),
];

/// The verdict `expect` implies under `policy`.
fn verdict(expect: Expect, policy: &AddressPolicy) -> Result<(), AddrRejection> {
    match expect {
        Pass => Ok(()),
        Lo if policy.allow_loopback => Ok(()),
        Priv if policy.allow_private => Ok(()),
        Doc if policy.allow_documentation => Ok(()),
        Lo => Err(AddrRejection::Loopback),
        Priv => Err(AddrRejection::Private),
        Doc => Err(AddrRejection::Documentation),
        Unspec => Err(AddrRejection::Unspecified),
        Multi => Err(AddrRejection::Multicast),
        Res | Nat64 | SixToFour => Err(AddrRejection::Reserved),
    }
}

fn check_one(entry: &Entry, what: &str, ip: IpAddr, expect: Expect, failures: &mut Vec<String>) {
    for transport in [Candidate::tcp, Candidate::quic] {
        let c = transport(SocketAddr::new(ip, 4001));
        for (policy_name, policy) in &POLICIES {
            let want = verdict(expect, policy);
            let got = policy.check(&c);
            if got != want {
                failures.push(format!(
                    "{} ({}): {what} {c} under {policy_name}: want {want:?}, got {got:?}",
                    entry.name, entry.cidr
                ));
            }
        }
    }
}

#[test]
fn every_registry_entry_is_filtered_as_the_registry_says() {
    let mut failures = Vec::new();
    for entry in ENTRIES {
        let p = parse(entry.cidr);
        let (lo, hi) = (first(p), last(p));
        let mut probes = vec![
            ("first address", addr(lo, p.width)),
            ("last address", addr(hi, p.width)),
        ];
        if let Some(before) = lo.checked_sub(1) {
            probes.push(("address just below", addr(before, p.width)));
        }
        if hi < max_of(p.width) {
            probes.push(("address just above", addr(hi + 1, p.width)));
        }
        for (what, ip) in probes {
            check_one(entry, what, ip, expected(ip), &mut failures);
        }
        // The sample: inside this entry and no more specific one, with its
        // verdict written down by hand rather than derived.
        let sample: IpAddr = entry.sample.parse().expect("a sample address");
        let owner = entry_of(sample).map(|e| e.cidr);
        assert_eq!(
            owner,
            Some(entry.cidr),
            "{}: sample {sample} is not its own",
            entry.name
        );
        assert_eq!(
            expected(sample),
            entry.sample_expect,
            "{}: sample {sample}",
            entry.name
        );
        check_one(entry, "sample", sample, entry.sample_expect, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn lib_expect(class: RangeClass) -> Expect {
    match class {
        RangeClass::Global => Pass,
        RangeClass::Loopback => Lo,
        RangeClass::Private => Priv,
        RangeClass::Documentation => Doc,
        RangeClass::Unspecified => Unspec,
        RangeClass::Multicast => Multi,
        RangeClass::Nat64 => Nat64,
        RangeClass::SixToFour => SixToFour,
        _ => Res,
    }
}

#[test]
fn the_librarys_table_lists_exactly_these_entries() {
    let mut ours: Vec<(Prefix, &str, Expect)> = ENTRIES
        .iter()
        .map(|e| (parse(e.cidr), e.name, e.expect))
        .collect();
    let mut theirs: Vec<(Prefix, &str, Expect)> = SPECIAL_RANGES
        .iter()
        .map(|r| {
            let (base, width) = number(r.prefix);
            let p = Prefix {
                base,
                width,
                len: u32::from(r.len),
            };
            (p, r.name, lib_expect(r.class))
        })
        .collect();
    ours.sort_by_key(|(p, ..)| *p);
    theirs.sort_by_key(|(p, ..)| *p);
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "entry {}", a.1);
    }
    assert_eq!(ours.len(), theirs.len(), "number of entries");
}

#[test]
fn the_globally_reachable_column_decides_what_passes() {
    for r in SPECIAL_RANGES {
        match (r.globally_reachable, r.class) {
            // NAT64 is as reachable as the IPv4 address it embeds.
            (Some(true), RangeClass::Global | RangeClass::Nat64) => {}
            (Some(true), class) => panic!("{} is globally reachable but {class}", r.name),
            (_, RangeClass::Global) => panic!("{} is not globally reachable but global", r.name),
            _ => {}
        }
        if r.globally_reachable.is_none() {
            assert!(
                r.iana_special,
                "{}: N/A only comes from the registries",
                r.name
            );
        }
    }
}

#[test]
fn the_audit_gaps_are_closed() {
    let public = AddressPolicy::public_only();
    for (addr, reason) in [
        ("[::ffff:0:0]:1", AddrRejection::Reserved),
        ("[::ffff:8.8.8.8]:1", AddrRejection::Reserved),
        ("[fec0::1]:1", AddrRejection::Private),
        ("192.0.0.1:1", AddrRejection::Reserved),
        ("198.18.0.1:1", AddrRejection::Private),
        ("198.19.255.254:1", AddrRejection::Private),
        ("192.88.99.1:1", AddrRejection::Reserved),
    ] {
        let c = Candidate::tcp(addr.parse().unwrap());
        assert_eq!(public.check(&c), Err(reason), "{addr}");
    }
}

#[test]
fn each_rejection_is_typed_and_counted() {
    let ma = |s: &str| s.parse::<dcutr_core::filter::Multiaddr>().unwrap().to_vec();
    let raw = [
        ma("/ip4/192.0.0.1/tcp/1"),     // reserved
        ma("/ip4/192.88.99.1/tcp/1"),   // reserved
        ma("/ip4/198.18.0.1/tcp/1"),    // private
        ma("/ip6/fec0::1/tcp/1"),       // private
        ma("/ip4/203.0.113.1/tcp/1"),   // documentation (strict)
        ma("/ip6/3fff::1/tcp/1"),       // documentation (strict)
        ma("/ip6/ff05::2/tcp/1"),       // multicast
        ma("/ip4/192.0.0.9/tcp/1"),     // PCP anycast: globally reachable
        ma("/ip6/2001:4:112::1/tcp/1"), // AS112-v6: globally reachable
    ];
    let r = filter_remote(
        raw.iter().map(Vec::as_slice),
        &AddressPolicy::strict(),
        &Dialable::all(),
        16,
    );
    assert_eq!(r.accepted.len(), 2);
    assert_eq!(r.rejected.get(AddrRejection::Reserved), 2);
    assert_eq!(r.rejected.get(AddrRejection::Private), 2);
    assert_eq!(r.rejected.get(AddrRejection::Documentation), 2);
    assert_eq!(r.rejected.get(AddrRejection::Multicast), 1);
    assert_eq!(r.rejected.total(), 7);
    // The default policy accepts the documentation ranges.
    let r = filter_remote(
        raw.iter().map(Vec::as_slice),
        &AddressPolicy::default(),
        &Dialable::all(),
        16,
    );
    assert_eq!(r.accepted.len(), 4);
    assert_eq!(r.rejected.get(AddrRejection::Documentation), 0);
}
