//! What a site on the public segment looks like (NAT kind, firewall, or a
//! public host) and the nftables ruleset of its router.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

/// How the router maps an inside flow to a WAN port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// `masquerade`: Linux keeps the inside source port when it is free, and
    /// one inside socket gets the same WAN port towards every destination
    /// (endpoint-independent mapping, in practice).
    Cone,
    /// `masquerade fully-random`: a fresh random WAN port per new flow, i.e.
    /// per destination (endpoint-dependent mapping).
    Symmetric,
}

/// One side of the lab: where a peer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// A host behind a NAT router.
    Nat {
        kind: NatKind,
        /// Drop unsolicited new inbound on the WAN (a home router's default).
        firewall: bool,
    },
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
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Site::Nat {
                kind: NatKind::Cone,
                firewall: true,
            } => "cone",
            Site::Nat {
                kind: NatKind::Cone,
                firewall: false,
            } => "cone-no-firewall",
            Site::Nat {
                kind: NatKind::Symmetric,
                firewall: true,
            } => "symmetric",
            Site::Nat {
                kind: NatKind::Symmetric,
                firewall: false,
            } => "symmetric-no-firewall",
            Site::Public => "public",
        })
    }
}

impl FromStr for Site {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "cone" => Site::CONE,
            "cone-no-firewall" => Site::CONE_NO_FIREWALL,
            "symmetric" => Site::SYMMETRIC,
            "symmetric-no-firewall" => Site::Nat {
                kind: NatKind::Symmetric,
                firewall: false,
            },
            "public" => Site::Public,
            other => bail!(
                "unknown site {other:?} (cone, cone-no-firewall, symmetric, symmetric-no-firewall, public)"
            ),
        })
    }
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
pub fn router_ruleset(kind: NatKind, firewall: bool, wan: &str) -> String {
    let masq = match kind {
        NatKind::Cone => "masquerade",
        NatKind::Symmetric => "masquerade fully-random",
    };
    let mut rules = format!(
        "table ip natlab {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"{wan}\" {masq}\n\
         \t}}\n"
    );
    if firewall {
        for (chain, hook) in [("forward", "forward"), ("input", "input")] {
            rules.push_str(&format!(
                "\tchain {chain} {{\n\
                 \t\ttype filter hook {hook} priority filter; policy accept;\n\
                 \t\tct state established,related accept\n\
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
            "public",
        ] {
            assert_eq!(name.parse::<Site>().unwrap().to_string(), name);
        }
        assert!("full-cone".parse::<Site>().is_err());
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
