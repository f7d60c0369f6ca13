//! What a site on the public segment looks like (NAT kind, firewall, or a
//! public host) and the nftables ruleset of its router.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

/// How the router maps an inside flow to a WAN port, and which outside
/// packets may use that mapping (RFC 4787 mapping and filtering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// `masquerade`: Linux keeps the inside source port when it is free, and
    /// one inside socket gets the same WAN port towards every destination
    /// (endpoint-independent mapping, in practice). Filtering is conntrack's:
    /// only the exact remote address and port of a flow gets in
    /// (port-restricted cone, with the firewall on).
    Cone,
    /// `masquerade fully-random`: a fresh random WAN port per new flow, i.e.
    /// per destination (endpoint-dependent mapping).
    Symmetric,
    /// Full cone: [`NatKind::Cone`]'s mapping, and once an inside socket has
    /// a WAN port, a packet from *any* outside address and port to that
    /// port reaches the socket (endpoint-independent filtering). See
    /// [`router_ruleset`] for how nftables does it.
    FullCone,
    /// Address-restricted cone: [`NatKind::Cone`]'s mapping, and a packet
    /// from outside IP X reaches the inside socket once the socket has sent
    /// to X, from any of X's ports (address-dependent filtering).
    AddressRestricted,
    /// Symmetric with sequential allocation: every new flow (per
    /// protocol) gets the next WAN port of a fixed range, whatever its
    /// destination (endpoint-dependent mapping, port delta +1), as some
    /// carrier and enterprise NATs allocate. Linux has no such masquerade
    /// mode; the ruleset counts flows with `numgen inc` (see
    /// [`router_ruleset`]).
    Sequential,
}

/// The first WAN port [`NatKind::Sequential`] hands out.
pub const SEQUENTIAL_FIRST_PORT: u16 = 20_000;

/// How many WAN ports [`NatKind::Sequential`] cycles through per protocol
/// before it starts again at [`SEQUENTIAL_FIRST_PORT`]: far more new flows
/// than one lab run makes (a relay connection, three STUN requests and a
/// punch's few dials), so no port comes round twice within a run.
pub const SEQUENTIAL_PORTS: u16 = 256;

impl NatKind {
    /// Every kind, for parsing and tests.
    pub const ALL: [NatKind; 5] = [
        NatKind::Cone,
        NatKind::Symmetric,
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::Sequential,
    ];

    /// The kind's name in site names (`cone`, `full-cone`, ...).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            NatKind::Cone => "cone",
            NatKind::Symmetric => "symmetric",
            NatKind::FullCone => "full-cone",
            NatKind::AddressRestricted => "address-restricted",
            NatKind::Sequential => "sequential",
        }
    }

    /// Whether the router admits new inbound flows to a mapped WAN port
    /// itself (dnat from a learned map) instead of leaving filtering to
    /// conntrack.
    fn admits_inbound(self) -> bool {
        matches!(self, NatKind::FullCone | NatKind::AddressRestricted)
    }
}

/// One side of the lab: where a peer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// A host behind a NAT router.
    Nat {
        kind: NatKind,
        /// Drop unsolicited new inbound on the WAN (a home router's default);
        /// for [`NatKind::FullCone`] and [`NatKind::AddressRestricted`]:
        /// every new inbound flow their filtering does not admit.
        firewall: bool,
    },
    /// A host behind two NATs: a home router ([`Site::CONE`]) whose WAN
    /// side sits in the shared address space of RFC 6598 (100.64.0.0/10),
    /// behind a carrier-grade NAT that is a [`Site::CONE`] too. Carriers
    /// are asked for endpoint-independent mapping (RFC 6888, REQ-4 by way
    /// of RFC 4787), and the home router's firewall stays on, so this is a
    /// port-restricted cone seen through two translations.
    Cgnat,
    /// A host directly on the public segment, no NAT.
    Public,
}

impl Site {
    /// Cone NAT with the firewall on.
    pub const CONE: Site = Site::Nat {
        kind: NatKind::Cone,
        firewall: true,
    };
    /// Cone NAT without the firewall.
    pub const CONE_NO_FIREWALL: Site = Site::Nat {
        kind: NatKind::Cone,
        firewall: false,
    };
    /// Symmetric NAT with the firewall on.
    pub const SYMMETRIC: Site = Site::Nat {
        kind: NatKind::Symmetric,
        firewall: true,
    };
    /// Full-cone NAT; anything its filtering does not admit is dropped.
    pub const FULL_CONE: Site = Site::Nat {
        kind: NatKind::FullCone,
        firewall: true,
    };
    /// Address-restricted cone NAT; anything its filtering does not admit
    /// is dropped.
    pub const ADDRESS_RESTRICTED: Site = Site::Nat {
        kind: NatKind::AddressRestricted,
        firewall: true,
    };
    /// Symmetric NAT with sequential allocation, firewall on.
    pub const SEQUENTIAL: Site = Site::Nat {
        kind: NatKind::Sequential,
        firewall: true,
    };
}

/// Suffix of a site name whose firewall is off.
const NO_FIREWALL: &str = "-no-firewall";

/// Name of [`Site::Cgnat`].
const CGNAT: &str = "cgnat";

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Nat { kind, firewall } => {
                f.write_str(kind.name())?;
                if !firewall {
                    f.write_str(NO_FIREWALL)?;
                }
                Ok(())
            }
            Site::Cgnat => f.write_str(CGNAT),
            Site::Public => f.write_str("public"),
        }
    }
}

impl FromStr for Site {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "public" => return Ok(Site::Public),
            CGNAT => return Ok(Site::Cgnat),
            _ => {}
        }
        let (kind, firewall) = match s.strip_suffix(NO_FIREWALL) {
            Some(kind) => (kind, false),
            None => (s, true),
        };
        match NatKind::ALL.into_iter().find(|k| k.name() == kind) {
            Some(kind) => Ok(Site::Nat { kind, firewall }),
            None => {
                let names: Vec<&str> = NatKind::ALL.iter().map(|k| k.name()).collect();
                bail!(
                    "unknown site {s:?} ({}, each optionally with {NO_FIREWALL}, {CGNAT} or public)",
                    names.join(", ")
                )
            }
        }
    }
}

/// How long a learned full-cone mapping (and an address-restricted
/// "contacted" entry) lives after the inside socket's last outgoing packet:
/// the kernel's default `nf_conntrack_udp_timeout_stream` (120 s), so the
/// admission lasts as long as the mapping it admits to.
pub const MAPPING_TIMEOUT_S: u32 = 120;

/// [`NatKind::Sequential`]'s postrouting rules: per protocol, a flow
/// counter (`numgen inc`, which nat rules evaluate once per new flow) picks
/// the WAN port through a map. The map is needed: a port computed as
/// `numgen inc offset N` lands in the port field in host byte order, so
/// consecutive flows would get ports 256 apart.
fn sequential_masquerade(wan: &str) -> String {
    let ports: Vec<String> = (0..SEQUENTIAL_PORTS)
        .map(|i| format!("{i} : {}", SEQUENTIAL_FIRST_PORT + i))
        .collect();
    let map = ports.join(", ");
    let mut rules = String::new();
    for proto in ["udp", "tcp"] {
        rules.push_str(&format!(
            "meta l4proto {proto} masquerade to : numgen inc mod {SEQUENTIAL_PORTS} map {{ {map} }}\n\t\toifname \"{wan}\" "
        ));
    }
    // Everything else (ICMP) as a cone.
    rules.push_str("masquerade");
    rules
}

/// The nftables ruleset of a NAT router whose WAN interface is `wan`.
///
/// The firewall drops new inbound flows on the WAN in *both* `forward` (flows
/// aimed at inside addresses) and `input` (flows aimed at the router's own WAN
/// address, which is where a peer's early hole-punch packet lands). The input
/// drop matters for hole punching: a packet that reaches `input` and is
/// accepted gets its conntrack entry confirmed, and that entry then makes
/// masquerade move our own outgoing flow to another port (see the selftest's
/// "no firewall" check). A dropped packet is never confirmed.
///
/// Full cone and address-restricted cone (Linux has no such NAT target, so
/// the ruleset builds one from `masquerade` plus a learned `dnat`):
/// - chain `learn`, a filter chain on postrouting just after `srcnat`, sees
///   each outgoing packet of a flow the inside started (`ct direction
///   original`) after masquerade chose its WAN port, so `ct reply
///   proto-dst` is that WAN port and `ct original ip saddr . ct original
///   proto-src` the inside socket. It writes `proto . WAN port -> inside
///   socket` into the dynamic map `mapped` (timeout refreshed per packet),
///   and for address-restricted also `remote IP . proto . WAN port` into the
///   set `contacted`.
/// - chain `admit`, nat prerouting: the first packet of a new inbound flow
///   to a mapped WAN port is `dnat`ed to the inside socket, from any source
///   (full cone) or only from a source IP in `contacted`
///   (address-restricted). Its reply tuple is then `inside socket -> sender`,
///   so the inside socket's answers leave from the same WAN port.
/// - the firewall accepts `ct status dnat` in `forward` (only `admit`
///   dnats) and drops every other new inbound flow as for cone.
///
/// Reply-direction packets (answers to an admitted flow) never write the
/// map: their `ct original` is the remote side.
pub fn router_ruleset(kind: NatKind, firewall: bool, wan: &str) -> String {
    let masq = match kind {
        NatKind::Cone | NatKind::FullCone | NatKind::AddressRestricted => "masquerade".to_owned(),
        NatKind::Symmetric => "masquerade fully-random".to_owned(),
        NatKind::Sequential => sequential_masquerade(wan),
    };
    let mut rules = String::from("table ip natlab {\n");
    if kind.admits_inbound() {
        let t = MAPPING_TIMEOUT_S;
        rules.push_str(&format!(
            "\tmap mapped {{\n\
             \t\ttype inet_proto . inet_service : ipv4_addr . inet_service\n\
             \t\tflags dynamic,timeout\n\
             \t\ttimeout {t}s\n\
             \t}}\n"
        ));
        if kind == NatKind::AddressRestricted {
            rules.push_str(&format!(
                "\tset contacted {{\n\
                 \t\ttype ipv4_addr . inet_proto . inet_service\n\
                 \t\tflags dynamic,timeout\n\
                 \t\ttimeout {t}s\n\
                 \t}}\n"
            ));
        }
    }
    rules.push_str(&format!(
        "\tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"{wan}\" {masq}\n\
         \t}}\n"
    ));
    if kind.admits_inbound() {
        let out = format!("oifname \"{wan}\" ct direction original meta l4proto {{ tcp, udp }}");
        rules.push_str(&format!(
            "\tchain learn {{\n\
             \t\ttype filter hook postrouting priority srcnat + 10; policy accept;\n\
             \t\t{out} update @mapped {{ meta l4proto . ct reply proto-dst : ct original ip saddr . ct original proto-src }}\n"
        ));
        let from = if kind == NatKind::AddressRestricted {
            rules.push_str(&format!(
                "\t\t{out} update @contacted {{ ct reply ip saddr . meta l4proto . ct reply proto-dst }}\n"
            ));
            "ip saddr . meta l4proto . th dport @contacted "
        } else {
            ""
        };
        rules.push_str(&format!(
            "\t}}\n\
             \tchain admit {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tiifname \"{wan}\" meta l4proto {{ tcp, udp }} {from}dnat ip to meta l4proto . th dport map @mapped\n\
             \t}}\n"
        ));
    }
    if firewall {
        for (chain, hook) in [("forward", "forward"), ("input", "input")] {
            let admitted = if kind.admits_inbound() && hook == "forward" {
                "\t\tct status dnat accept\n"
            } else {
                ""
            };
            rules.push_str(&format!(
                "\tchain {chain} {{\n\
                 \t\ttype filter hook {hook} priority filter; policy accept;\n\
                 \t\tct state established,related accept\n\
                 {admitted}\
                 \t\tiifname \"{wan}\" ct state new drop\n\
                 \t}}\n"
            ));
        }
    }
    rules.push_str("}\n");
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_names_round_trip() {
        for name in [
            "cone",
            "cone-no-firewall",
            "symmetric",
            "symmetric-no-firewall",
            "full-cone",
            "full-cone-no-firewall",
            "address-restricted",
            "address-restricted-no-firewall",
            "sequential",
            "cgnat",
            "public",
        ] {
            assert_eq!(name.parse::<Site>().unwrap().to_string(), name);
        }
        assert_eq!("full-cone".parse::<Site>().unwrap(), Site::FULL_CONE);
        for bad in [
            "fullcone",
            "public-no-firewall",
            "cgnat-no-firewall",
            "-no-firewall",
            "",
        ] {
            assert!(bad.parse::<Site>().is_err(), "{bad}");
        }
    }

    /// The chain named `name` of a ruleset, up to its closing brace.
    fn chain<'a>(r: &'a str, name: &str) -> &'a str {
        let start = r.find(&format!("chain {name} {{")).unwrap();
        let len = r[start..].find("\n\t}").unwrap();
        &r[start..start + len]
    }

    #[test]
    fn a_sequential_nat_counts_flows_per_protocol_into_a_port_map() {
        let r = router_ruleset(NatKind::Sequential, true, "wan");
        let post = chain(&r, "postrouting");
        for proto in ["udp", "tcp"] {
            let rule = format!(
                "oifname \"wan\" meta l4proto {proto} masquerade to : numgen inc mod {SEQUENTIAL_PORTS} map {{ 0 : {SEQUENTIAL_FIRST_PORT}, 1 : {}, ",
                SEQUENTIAL_FIRST_PORT + 1
            );
            assert!(post.contains(&rule), "{post}");
        }
        let last = format!(
            "{} : {} }}",
            SEQUENTIAL_PORTS - 1,
            SEQUENTIAL_FIRST_PORT + SEQUENTIAL_PORTS - 1
        );
        assert_eq!(post.matches(&last).count(), 2);
        assert!(post.ends_with("oifname \"wan\" masquerade"), "{post}");
        assert!(chain(&r, "forward").contains("iifname \"wan\" ct state new drop"));
    }

    #[test]
    fn existing_kinds_have_no_learned_admission() {
        for kind in [NatKind::Cone, NatKind::Symmetric] {
            let r = router_ruleset(kind, true, "wan");
            for word in [
                "dnat",
                "@mapped",
                "@contacted",
                "chain learn",
                "chain admit",
            ] {
                assert!(!r.contains(word), "{kind:?} has {word}");
            }
        }
    }

    #[test]
    fn full_cone_learns_the_mapping_after_masquerade_and_dnats_any_source() {
        let r = router_ruleset(NatKind::FullCone, true, "wan");
        assert!(r.contains("oifname \"wan\" masquerade\n"));
        assert!(!r.contains("fully-random") && !r.contains("contacted"));
        let learn = chain(&r, "learn");
        // After masquerade (srcnat), so the reply tuple holds the WAN port.
        assert!(learn.contains("hook postrouting priority srcnat + 10"));
        assert!(learn.contains("ct direction original"));
        assert!(learn.contains(
            "update @mapped { meta l4proto . ct reply proto-dst : ct original ip saddr . ct original proto-src }"
        ));
        let admit = chain(&r, "admit");
        assert!(admit.contains("hook prerouting priority dstnat"));
        assert!(admit.contains(
            "iifname \"wan\" meta l4proto { tcp, udp } dnat ip to meta l4proto . th dport map @mapped"
        ));
        assert!(r.contains(&format!("timeout {MAPPING_TIMEOUT_S}s")));
    }

    #[test]
    fn address_restricted_admits_only_contacted_source_ips() {
        let r = router_ruleset(NatKind::AddressRestricted, true, "wan");
        let learn = chain(&r, "learn");
        assert!(learn.contains(
            "update @contacted { ct reply ip saddr . meta l4proto . ct reply proto-dst }"
        ));
        let admit = chain(&r, "admit");
        assert!(admit.contains("ip saddr . meta l4proto . th dport @contacted dnat"));
        // The source port is not part of the key: any port of a contacted IP.
        assert!(!admit.contains("th sport") && !learn.contains("proto-dst . ct reply proto-src"));
    }

    #[test]
    fn learned_kinds_accept_their_dnat_before_the_firewall_drop_in_forward_only() {
        for kind in [NatKind::FullCone, NatKind::AddressRestricted] {
            let r = router_ruleset(kind, true, "wan");
            let forward = chain(&r, "forward");
            let accept = forward.find("ct status dnat accept").unwrap();
            let drop = forward.find("iifname \"wan\" ct state new drop").unwrap();
            assert!(accept < drop, "{kind:?}");
            assert!(!chain(&r, "input").contains("dnat"), "{kind:?}");
            let open = router_ruleset(kind, false, "wan");
            assert!(!open.contains("drop") && open.contains("chain admit"));
        }
    }

    #[test]
    fn cone_masquerades_and_keeps_ports() {
        let r = router_ruleset(NatKind::Cone, false, "wan");
        assert!(r.contains("oifname \"wan\" masquerade\n"));
        assert!(!r.contains("fully-random"));
        assert!(!r.contains("drop"));
    }

    #[test]
    fn symmetric_masquerades_fully_random() {
        let r = router_ruleset(NatKind::Symmetric, true, "wan");
        assert!(r.contains("masquerade fully-random"));
    }

    #[test]
    fn firewall_drops_new_inbound_after_accepting_established_in_forward_and_input() {
        let r = router_ruleset(NatKind::Cone, true, "wan");
        for hook in ["hook forward", "hook input"] {
            let chain = &r[r.find(hook).unwrap()..];
            let accept = chain.find("ct state established,related accept").unwrap();
            let drop = chain.find("iifname \"wan\" ct state new drop").unwrap();
            assert!(accept < drop, "{hook}: accept must come before drop");
        }
    }
}
