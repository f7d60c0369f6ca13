//! Building and tearing down one lab topology.
//!
//! ```text
//!                          <p>pub: bridge br0, 203.0.113.0/24
//!        +-----------------------+------------------------+
//!        | relay                 | s1                     | s2
//!   <p>relay                [<p>d1 delay line]       [<p>d2 delay line]
//!   eth0 203.0.113.1             |                        |
//!                           <p>r1 (NAT)              <p>r2 (NAT)        or  <p>p1 / <p>p2:
//!                           wan 203.0.113.11         wan 203.0.113.12       public host eth0
//!                           lan 10.0.1.1             lan 10.0.2.1           203.0.113.21 / .22
//!                                |                        |
//!                           <p>h1 eth0 10.0.1.2      <p>h2 eth0 10.0.2.2
//! ```
//!
//! Between every NAT site's edge (its router, or its carrier) and the
//! bridge sits a transit router `<p>t<site>`, the site's ISP: no NAT, only
//! forwarding. On the bridge it answers for the site's public address
//! (its `pub` interface carries that address's MAC, and an address of its
//! own, 203.0.113.3x); towards the site, its `site` interface
//! (`198.18.<site>.1`) routes the public address (and the LAN prefix, for
//! the firewall checks) to the edge, whose `wan` holds the public address
//! as a /32 with its default route through the transit. It is the hop
//! where a low-TTL priming packet (TTL 2: forwarded by our NAT only)
//! expires, so that it never reaches the peer's NAT. A public site has
//! none: its host is on the bridge like the relay.
//!
//! A CGNAT site ([`Site::Cgnat`]) puts one more NAT between the bridge and
//! the home router: `<p>c<site>` holds the public WAN address
//! (203.0.113.1x) and its `lan` `100.64.<site>.1`, and the home router's
//! `wan` is `100.64.<site>.2` (RFC 6598 shared address space) with its
//! default route through the carrier.
//!
//! Every interface has a fixed MAC derived from its IPv4 address, and every
//! host knows its neighbours' MACs as permanent entries, so no packet waits
//! for ARP. IPv6 address generation is off on every interface (no DAD, no
//! router solicitations wandering through the delay lines).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{debug, warn};

use crate::cmd;
use crate::names;
use crate::nat::{NatKind, Site, router_ruleset};
use crate::proc::Proc;

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// The relay's address on the public segment.
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// Prefix length of both the public segment and the LANs.
const PREFIX_LEN: u8 = 24;

/// How long a freshly started delay line may take to open its sockets: it is
/// a local exec plus two socket calls, normally a few milliseconds.
pub const DELAYLINE_READY_TIMEOUT: Duration = Duration::from_secs(3);

/// Optional user-space delay line between a site and the public bridge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DelaySpec {
    /// One-way delay added in each direction.
    pub delay_ms: f64,
    /// Uniform jitter (+/-) around the delay; frames are never reordered.
    pub jitter_ms: f64,
    /// Probability of dropping each frame, in each direction.
    pub loss: f64,
    /// Seed of the loss/jitter RNG.
    pub seed: u64,
}

impl DelaySpec {
    /// A fixed delay without jitter or loss.
    pub fn fixed(delay_ms: f64) -> Self {
        Self {
            delay_ms,
            jitter_ms: 0.0,
            loss: 0.0,
            seed: 1,
        }
    }
}

/// What to build: two sites (index 0 is site 1, index 1 is site 2) and an
/// optional delay line in front of each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopologySpec {
    /// Site 1 and site 2.
    pub sites: [Site; 2],
    /// Delay line between each site and the bridge.
    pub delay: [Option<DelaySpec>; 2],
}

impl TopologySpec {
    /// Two sites, no delay lines.
    pub fn new(site1: Site, site2: Site) -> Self {
        Self {
            sites: [site1, site2],
            delay: [None, None],
        }
    }
}

/// Site number (1 or 2) to array index.
fn idx(site: u8) -> usize {
    assert!(site == 1 || site == 2, "sites are numbered 1 and 2");
    usize::from(site - 1)
}

/// The address a site shows on the public segment: the router's WAN address
/// for a NAT site, the host's own address for a public site.
pub fn site_public_ip(site: u8, kind: Site) -> Ipv4Addr {
    let _ = idx(site);
    match kind {
        Site::Nat { .. } | Site::Cgnat => Ipv4Addr::new(203, 0, 113, 10 + site),
        Site::Public => Ipv4Addr::new(203, 0, 113, 20 + site),
    }
}

/// The router's LAN address at a NAT site.
pub fn lan_router_ip(site: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, site, 1)
}

/// The host's address at a NAT site.
pub fn lan_host_ip(site: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, site, 2)
}

/// The carrier NAT's inside address at a CGNAT site (RFC 6598 shared space).
pub fn carrier_inside_ip(site: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, site, 1)
}

/// The home router's WAN address at a CGNAT site, behind the carrier.
pub fn home_wan_ip(site: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, site, 2)
}

/// The transit router's address towards site `site` (RFC 2544 benchmarking
/// space, neither public nor one of the LANs).
pub fn transit_site_ip(site: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, site, 1)
}

/// The transit router's own address on the public segment.
pub fn transit_pub_ip(site: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 30 + site)
}

/// The fixed MAC of the interface that holds `ip`: locally administered
/// (`02:`), then `6c` for "lab", then the four address bytes. Unique because
/// the lab's addresses are.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:6c:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// `ip batch` lines that give `ifname` the address `ip` (and the MAC made
/// from it), bring it up and pin the MACs of `neighbours`, so that no
/// packet waits for ARP.
fn address(
    script: &mut String,
    ifname: &str,
    ip: Ipv4Addr,
    neighbours: impl IntoIterator<Item = Ipv4Addr>,
) -> std::fmt::Result {
    writeln!(script, "link set {ifname} address {}", mac_for(ip))?;
    writeln!(script, "link set {ifname} addrgenmode none")?;
    writeln!(script, "addr add {ip}/{PREFIX_LEN} dev {ifname}")?;
    writeln!(script, "link set {ifname} up")?;
    for n in neighbours {
        let mac = mac_for(n);
        writeln!(
            script,
            "neigh replace {n} lladdr {mac} dev {ifname} nud permanent"
        )?;
    }
    Ok(())
}

/// One built topology. Dropping it tears everything down (processes first,
/// then namespaces), also on panic or error paths.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    spec: TopologySpec,
    namespaces: Vec<String>,
    delay_lines: Vec<Proc>,
    setup: Duration,
    torn_down: bool,
}

impl Lab {
    /// Build `spec` in fresh namespaces named `<prefix><role>`.
    pub fn build(prefix: &str, spec: TopologySpec) -> Result<Self> {
        let started = Instant::now();
        let mut lab = Lab {
            prefix: prefix.to_owned(),
            spec,
            namespaces: Vec::new(),
            delay_lines: Vec::new(),
            setup: Duration::ZERO,
            torn_down: false,
        };
        lab.build_inner()
            .with_context(|| format!("building lab {prefix}*"))?;
        lab.setup = started.elapsed();
        debug!(
            prefix,
            setup_ms = lab.setup.as_secs_f64() * 1e3,
            "lab built"
        );
        Ok(lab)
    }

    fn role(&self, role: &str) -> String {
        names::ns_name(&self.prefix, role).expect("the lab's roles are valid")
    }

    /// Namespace of the bridge.
    pub fn pub_ns(&self) -> String {
        self.role("pub")
    }

    /// Namespace of the relay host (203.0.113.1).
    pub fn relay_ns(&self) -> String {
        self.role("relay")
    }

    /// Namespace of site `site`'s (home) router, if it has one.
    pub fn router_ns(&self, site: u8) -> Option<String> {
        match self.spec.sites[idx(site)] {
            Site::Nat { .. } | Site::Cgnat => Some(self.role(&format!("r{site}"))),
            Site::Public => None,
        }
    }

    /// Namespace of site `site`'s carrier-grade NAT, if it has one.
    pub fn carrier_ns(&self, site: u8) -> Option<String> {
        match self.spec.sites[idx(site)] {
            Site::Cgnat => Some(self.role(&format!("c{site}"))),
            Site::Nat { .. } | Site::Public => None,
        }
    }

    /// Namespace of site `site`'s transit router (its ISP, between its
    /// edge and the bridge), if it has one: every NAT site.
    pub fn transit_ns(&self, site: u8) -> Option<String> {
        match self.spec.sites[idx(site)] {
            Site::Nat { .. } | Site::Cgnat => Some(self.role(&format!("t{site}"))),
            Site::Public => None,
        }
    }

    /// Namespace of the host at site `site` (behind the NAT, or public).
    pub fn host_ns(&self, site: u8) -> String {
        match self.spec.sites[idx(site)] {
            Site::Nat { .. } | Site::Cgnat => self.role(&format!("h{site}")),
            Site::Public => self.role(&format!("p{site}")),
        }
    }

    /// The namespace and interface of site `site` on the public segment:
    /// the carrier's, the router's or the public host's.
    fn edge(&self, site: u8) -> (String, &'static str) {
        match self.spec.sites[idx(site)] {
            Site::Cgnat => (self.role(&format!("c{site}")), "wan"),
            Site::Nat { .. } => (self.role(&format!("r{site}")), "wan"),
            Site::Public => (self.role(&format!("p{site}")), "eth0"),
        }
    }

    /// Namespace of the delay line of site `site`, if it has one.
    pub fn delay_ns(&self, site: u8) -> Option<String> {
        self.spec.delay[idx(site)].map(|_| self.role(&format!("d{site}")))
    }

    /// The host's own address at site `site`.
    pub fn host_ip(&self, site: u8) -> Ipv4Addr {
        match self.spec.sites[idx(site)] {
            Site::Nat { .. } | Site::Cgnat => lan_host_ip(site),
            Site::Public => site_public_ip(site, Site::Public),
        }
    }

    /// The address site `site` shows on the public segment.
    pub fn public_ip(&self, site: u8) -> Ipv4Addr {
        site_public_ip(site, self.spec.sites[idx(site)])
    }

    /// Every namespace of this lab, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// How long [`Lab::build`] took.
    pub fn setup_time(&self) -> Duration {
        self.setup
    }

    /// Start a process in namespace `ns`; the caller owns it, and teardown
    /// kills whatever is still running in the lab's namespaces anyway.
    pub fn spawn(&self, label: &str, ns: &str, program: &str, args: &[String]) -> Result<Proc> {
        Proc::spawn(label, ns, program, args)
    }

    /// Run a command to completion in namespace `ns`.
    pub fn run(&self, ns: &str, program: &str, args: &[&str]) -> Result<String> {
        cmd::netns_run(ns, program, args, None)
    }

    fn build_inner(&mut self) -> Result<()> {
        let spec = self.spec;
        // 1. Namespaces. Recorded before creation so a partial failure is
        //    still cleaned up by Drop (deleting a missing one is harmless).
        let mut roles = vec!["pub".to_owned(), "relay".to_owned()];
        for site in [1u8, 2] {
            if spec.delay[idx(site)].is_some() {
                roles.push(format!("d{site}"));
            }
            match spec.sites[idx(site)] {
                Site::Nat { .. } => {
                    roles.push(format!("t{site}"));
                    roles.push(format!("r{site}"));
                    roles.push(format!("h{site}"));
                }
                Site::Cgnat => {
                    roles.push(format!("t{site}"));
                    roles.push(format!("c{site}"));
                    roles.push(format!("r{site}"));
                    roles.push(format!("h{site}"));
                }
                Site::Public => roles.push(format!("p{site}")),
            }
        }
        let all: Vec<String> = roles.iter().map(|r| self.role(r)).collect();
        for ns in &all {
            if std::path::Path::new(NETNS_DIR).join(ns).exists() {
                bail!("namespace {ns} already exists (another run with the same id?)");
            }
        }
        self.namespaces = all.clone();
        let mut script = String::new();
        for ns in &all {
            writeln!(script, "netns add {ns}")?;
        }
        cmd::ip_batch(None, &script, false)?;

        // Public segment members: (ip, namespace, interface). A NAT site's
        // member is its transit router, which answers for the site's
        // public address.
        let mut members = vec![(RELAY_IP, self.relay_ns(), "eth0".to_owned())];
        for site in [1u8, 2] {
            let (ns, ifname) = match self.transit_ns(site) {
                Some(tns) => (tns, "pub"),
                None => self.edge(site),
            };
            members.push((self.public_ip(site), ns, ifname.to_owned()));
        }

        // 2. The bridge and every veth with one end on it.
        let pub_ns = self.pub_ns();
        let mut script = String::new();
        writeln!(script, "link set lo up")?;
        writeln!(script, "link add name br0 type bridge")?;
        writeln!(script, "link set br0 addrgenmode none")?;
        writeln!(script, "link set br0 up")?;
        let mut ports = vec![("relay".to_owned(), self.relay_ns(), "eth0".to_owned())];
        for site in [1u8, 2] {
            let (ns, ifname) = match self.delay_ns(site) {
                Some(d) => (d, "pub".to_owned()),
                None => (
                    members[usize::from(site)].1.clone(),
                    members[usize::from(site)].2.clone(),
                ),
            };
            ports.push((format!("s{site}"), ns, ifname));
        }
        for (port, peer_ns, peer_if) in &ports {
            writeln!(
                script,
                "link add name {port} type veth peer name {peer_if} netns {peer_ns}"
            )?;
            writeln!(script, "link set {port} master br0")?;
            writeln!(script, "link set {port} addrgenmode none")?;
            writeln!(script, "link set {port} up")?;
        }
        cmd::ip_batch(Some(&pub_ns), &script, false)?;

        // 3. Delay-line namespaces: pass-through veth towards the site.
        for site in [1u8, 2] {
            let Some(dns) = self.delay_ns(site) else {
                continue;
            };
            let (site_ns, site_if) = (&members[usize::from(site)].1, &members[usize::from(site)].2);
            let mut script = String::new();
            writeln!(script, "link set lo up")?;
            writeln!(
                script,
                "link add name site type veth peer name {site_if} netns {site_ns}"
            )?;
            for ifname in ["site", "pub"] {
                writeln!(script, "link set {ifname} addrgenmode none")?;
                writeln!(script, "link set {ifname} up")?;
            }
            cmd::ip_batch(Some(&dns), &script, false)?;
        }

        // 4. Public segment members: address, MAC, static neighbours. A
        //    NAT on the segment gets its `lan` veth towards the next hop
        //    inside: the host, or a CGNAT's home router.
        for (site, (ip, ns, ifname)) in (0u8..).zip(&members) {
            if ifname == "pub" {
                let others = members.iter().map(|m| m.0).filter(|o| o != ip);
                self.build_transit(site, ns, *ip, others)?;
                continue;
            }
            let mut script = String::new();
            writeln!(script, "link set lo up")?;
            if ifname == "wan" {
                let (inside_ns, inside_if) = match self.carrier_ns(site) {
                    Some(_) => (
                        self.router_ns(site).expect("a CGNAT site has a router"),
                        "wan",
                    ),
                    None => (self.host_ns(site), "eth0"),
                };
                writeln!(
                    script,
                    "link add name lan type veth peer name {inside_if} netns {inside_ns}"
                )?;
            }
            let others = members.iter().map(|m| m.0).filter(|o| o != ip);
            address(&mut script, ifname, *ip, others)?;
            cmd::ip_batch(Some(ns), &script, false)?;
        }

        // 5. NAT sites: router LAN side, inside host, forwarding, nftables;
        //    at a CGNAT site first the carrier, then the home router's WAN
        //    side behind it.
        for site in [1u8, 2] {
            let (kind, firewall) = match spec.sites[idx(site)] {
                Site::Nat { kind, firewall } => (kind, firewall),
                Site::Cgnat => (NatKind::Cone, true),
                Site::Public => continue,
            };
            let rns = self.router_ns(site).expect("NAT site has a router");
            let hns = self.host_ns(site);
            let (rip, hip) = (lan_router_ip(site), lan_host_ip(site));
            let mut script = String::new();
            if let Some(cns) = self.carrier_ns(site) {
                self.build_carrier(site, &cns)?;
                let (wan, gateway) = (home_wan_ip(site), carrier_inside_ip(site));
                writeln!(script, "link set lo up")?;
                writeln!(
                    script,
                    "link add name lan type veth peer name eth0 netns {hns}"
                )?;
                address(&mut script, "wan", wan, [gateway])?;
                writeln!(script, "route add default via {gateway} dev wan")?;
            }
            address(&mut script, "lan", rip, [hip])?;
            cmd::ip_batch(Some(&rns), &script, false)?;

            let mut script = String::new();
            writeln!(script, "link set lo up")?;
            address(&mut script, "eth0", hip, [rip])?;
            writeln!(script, "route add default via {rip} dev eth0")?;
            cmd::ip_batch(Some(&hns), &script, false)?;

            cmd::netns_run(&rns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"], None)?;
            let rules = router_ruleset(kind, firewall, "wan");
            cmd::netns_run(&rns, "nft", &["-f", "-"], Some(&rules))
                .with_context(|| format!("loading the ruleset of {rns}"))?;
        }

        // 6. Delay lines: checksum offload off on every veth that feeds one
        //    (AF_PACKET would otherwise see and re-send frames whose checksum
        //    the kernel meant to finish later), then start and await them.
        for site in [1u8, 2] {
            let (Some(dspec), Some(dns)) = (spec.delay[idx(site)], self.delay_ns(site)) else {
                continue;
            };
            let (site_ns, site_if) = (&members[usize::from(site)].1, &members[usize::from(site)].2);
            for (ns, ifname) in [
                (dns.as_str(), "site"),
                (dns.as_str(), "pub"),
                (pub_ns.as_str(), &format!("s{site}")),
                (site_ns.as_str(), site_if.as_str()),
            ] {
                cmd::netns_run(ns, "ethtool", &["-K", ifname, "tx", "off"], None)
                    .with_context(|| format!("disabling tx checksum offload on {ns}/{ifname}"))?;
            }
            let exe = std::env::current_exe().context("locating the natlab binary")?;
            let args: Vec<String> = [
                "delayline",
                "--a",
                "site",
                "--b",
                "pub",
                "--delay-ms",
                &dspec.delay_ms.to_string(),
                "--jitter-ms",
                &dspec.jitter_ms.to_string(),
                "--loss",
                &dspec.loss.to_string(),
                "--seed",
                &dspec.seed.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let proc = Proc::spawn(
                &format!("delayline d{site}"),
                &dns,
                &exe.to_string_lossy(),
                &args,
            )?;
            self.delay_lines.push(proc);
            let proc = self.delay_lines.last().expect("just pushed");
            proc.wait_for_line(
                Instant::now() + DELAYLINE_READY_TIMEOUT,
                "ready line",
                |l| l.contains("\"event\":\"ready\""),
            )
            .map_err(|e| anyhow::anyhow!("{e}\n{}", proc.dump()))?;
        }
        Ok(())
    }

    /// Site `site`'s transit router in `tns`: its `pub` interface on the
    /// bridge answers for the site's public address `public` (that
    /// address's MAC, which every member pins; `others` are the other
    /// members), its `site` veth leads to the edge's `wan`, which gets
    /// `public` as a /32 and its default route through the transit (and,
    /// at a plain NAT site, the `lan` veth to the host). No NAT, no
    /// firewall: forwarding only.
    fn build_transit(
        &self,
        site: u8,
        tns: &str,
        public: Ipv4Addr,
        others: impl IntoIterator<Item = Ipv4Addr>,
    ) -> Result<()> {
        let (edge_ns, _) = self.edge(site);
        let inside = transit_site_ip(site);
        let mut script = String::new();
        writeln!(script, "link set lo up")?;
        writeln!(
            script,
            "link add name site type veth peer name wan netns {edge_ns}"
        )?;
        writeln!(script, "link set pub address {}", mac_for(public))?;
        writeln!(script, "link set pub addrgenmode none")?;
        writeln!(
            script,
            "addr add {}/{PREFIX_LEN} dev pub",
            transit_pub_ip(site)
        )?;
        writeln!(script, "link set pub up")?;
        for n in others {
            writeln!(
                script,
                "neigh replace {n} lladdr {} dev pub nud permanent",
                mac_for(n)
            )?;
        }
        writeln!(script, "link set site address {}", mac_for(inside))?;
        writeln!(script, "link set site addrgenmode none")?;
        writeln!(script, "addr add {inside}/{PREFIX_LEN} dev site")?;
        writeln!(script, "link set site up")?;
        writeln!(script, "route add {public}/32 dev site")?;
        writeln!(
            script,
            "neigh replace {public} lladdr {} dev site nud permanent",
            mac_for(public)
        )?;
        if let Site::Nat { .. } = self.spec.sites[idx(site)] {
            // What an ISP router does for its customer: the whole site is
            // behind the public address (the firewall checks route the
            // LAN prefix at it from the bridge).
            writeln!(
                script,
                "route add 10.0.{site}.0/{PREFIX_LEN} via {public} dev site"
            )?;
        }
        cmd::ip_batch(Some(tns), &script, false)?;
        cmd::netns_run(tns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"], None)?;

        let mut script = String::new();
        writeln!(script, "link set lo up")?;
        if self.carrier_ns(site).is_none() {
            writeln!(
                script,
                "link add name lan type veth peer name eth0 netns {}",
                self.host_ns(site)
            )?;
        } else {
            let rns = self.router_ns(site).expect("a CGNAT site has a router");
            writeln!(
                script,
                "link add name lan type veth peer name wan netns {rns}"
            )?;
        }
        writeln!(script, "link set wan address {}", mac_for(public))?;
        writeln!(script, "link set wan addrgenmode none")?;
        writeln!(script, "addr add {public}/32 dev wan")?;
        writeln!(script, "link set wan up")?;
        writeln!(script, "route add {inside}/32 dev wan")?;
        writeln!(
            script,
            "neigh replace {inside} lladdr {} dev wan nud permanent",
            mac_for(inside)
        )?;
        writeln!(script, "route add default via {inside} dev wan")?;
        cmd::ip_batch(Some(&edge_ns), &script, false)?;
        Ok(())
    }

    /// A CGNAT site's carrier: its inside address towards the home
    /// router, forwarding, and a cone NAT with the firewall on.
    fn build_carrier(&self, site: u8, cns: &str) -> Result<()> {
        let mut script = String::new();
        address(
            &mut script,
            "lan",
            carrier_inside_ip(site),
            [home_wan_ip(site)],
        )?;
        cmd::ip_batch(Some(cns), &script, false)?;
        cmd::netns_run(cns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"], None)?;
        let rules = router_ruleset(NatKind::Cone, true, "wan");
        cmd::netns_run(cns, "nft", &["-f", "-"], Some(&rules))
            .with_context(|| format!("loading the ruleset of {cns}"))?;
        Ok(())
    }

    /// The routers' nftables rulesets and conntrack tables, the delay lines'
    /// logs and every namespace's addresses: enough to diagnose a failed case
    /// from a CI log.
    pub fn diagnostics(&self) -> String {
        let mut out = format!("===== lab {}* =====\n", self.prefix);
        let routers = [1u8, 2]
            .into_iter()
            .flat_map(|site| [self.carrier_ns(site), self.router_ns(site)]);
        for rns in routers.flatten() {
            let _ = writeln!(out, "----- {rns}: nft list ruleset -----");
            out.push_str(&cmd::run_for_diagnostics(
                "ip",
                &["netns", "exec", &rns, "nft", "list", "ruleset"],
            ));
            let _ = writeln!(out, "----- {rns}: conntrack -L -----");
            out.push_str(&cmd::run_for_diagnostics(
                "ip",
                &["netns", "exec", &rns, "conntrack", "-L"],
            ));
        }
        for ns in &self.namespaces {
            let _ = writeln!(out, "----- {ns}: ip -br addr -----");
            out.push_str(&cmd::run_for_diagnostics("ip", &["-n", ns, "-br", "addr"]));
        }
        for proc in &self.delay_lines {
            out.push_str(&proc.dump());
        }
        out
    }

    /// Kill every process in the lab's namespaces and delete them. Returns
    /// how long that took.
    pub fn teardown(mut self) -> Result<Duration> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<Duration> {
        if self.torn_down {
            return Ok(Duration::ZERO);
        }
        self.torn_down = true;
        let started = Instant::now();
        for mut p in self.delay_lines.drain(..) {
            p.kill();
        }
        destroy_namespaces(&self.namespaces)?;
        let left: Vec<&String> = self.namespaces.iter().filter(|ns| ns_exists(ns)).collect();
        if !left.is_empty() {
            bail!("namespaces still present after teardown: {left:?}");
        }
        Ok(started.elapsed())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_inner() {
            warn!("lab teardown: {e:#}");
        }
    }
}

/// Whether namespace `ns` exists.
pub fn ns_exists(ns: &str) -> bool {
    std::path::Path::new(NETNS_DIR).join(ns).exists()
}

/// Every namespace `ip netns` knows.
pub fn list_namespaces() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// SIGKILL every process inside `namespaces`, then delete them. Missing
/// namespaces are skipped. Only processes that live in these namespaces are
/// touched: `ip netns pids` lists exactly those.
pub fn destroy_namespaces(namespaces: &[String]) -> Result<()> {
    let present: Vec<&String> = namespaces.iter().filter(|ns| ns_exists(ns)).collect();
    if present.is_empty() {
        return Ok(());
    }
    let mut script = String::new();
    for ns in &present {
        writeln!(script, "netns pids {ns}")?;
    }
    // -force: keep going past a namespace that vanished meanwhile.
    let pids = cmd::ip_batch(None, &script, true).unwrap_or_default();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let mut script = String::new();
    for ns in &present {
        writeln!(script, "netns del {ns}")?;
    }
    if let Err(e) = cmd::ip_batch(None, &script, true) {
        // Report below only if something really stayed behind.
        debug!("netns del: {e:#}");
    }
    Ok(())
}

/// Remove every leftover lab namespace (the `natlab cleanup` subcommand).
pub fn cleanup_all() -> Result<Vec<String>> {
    let ours: Vec<String> = list_namespaces()
        .into_iter()
        .filter(|n| names::is_lab_namespace(n))
        .collect();
    destroy_namespaces(&ours)?;
    let left: Vec<&String> = ours.iter().filter(|ns| ns_exists(ns)).collect();
    if !left.is_empty() {
        bail!("could not remove: {left:?}");
    }
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(
            site_public_ip(1, Site::CONE),
            Ipv4Addr::new(203, 0, 113, 11)
        );
        assert_eq!(
            site_public_ip(2, Site::SYMMETRIC),
            Ipv4Addr::new(203, 0, 113, 12)
        );
        assert_eq!(
            site_public_ip(1, Site::Public),
            Ipv4Addr::new(203, 0, 113, 21)
        );
        assert_eq!(lan_host_ip(2), Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(lan_router_ip(1), Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(
            site_public_ip(2, Site::Cgnat),
            Ipv4Addr::new(203, 0, 113, 12)
        );
        assert_eq!(home_wan_ip(1), Ipv4Addr::new(100, 64, 1, 2));
        assert_eq!(carrier_inside_ip(1), Ipv4Addr::new(100, 64, 1, 1));
        assert_eq!(transit_site_ip(2), Ipv4Addr::new(198, 18, 2, 1));
        assert_eq!(transit_pub_ip(1), Ipv4Addr::new(203, 0, 113, 31));
        // The transit's own public address is no site's nor the relay's.
        for site in [1, 2] {
            for kind in [Site::CONE, Site::Public] {
                assert_ne!(transit_pub_ip(site), site_public_ip(1, kind));
                assert_ne!(transit_pub_ip(site), site_public_ip(2, kind));
            }
            assert_ne!(transit_pub_ip(site), RELAY_IP);
        }
    }

    #[test]
    fn macs_are_locally_administered_and_derived_from_the_address() {
        assert_eq!(mac_for(Ipv4Addr::new(203, 0, 113, 11)), "02:6c:cb:00:71:0b");
        assert_ne!(mac_for(lan_router_ip(1)), mac_for(lan_host_ip(1)));
    }

    #[test]
    #[should_panic(expected = "sites are numbered 1 and 2")]
    fn site_numbers_outside_one_and_two_are_a_bug() {
        site_public_ip(3, Site::Public);
    }
}
