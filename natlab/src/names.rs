//! Names of the lab's network namespaces.
//!
//! Every namespace the lab creates is called `nl<run><seq>-<role>`: `nl`, four
//! hex digits that identify the run (random), two hex digits that count the
//! topologies built by this run, a dash and a short role (`pub`, `relay`,
//! `r1`, `h2`, ...). `natlab cleanup` recognises exactly this pattern, so it
//! never touches a namespace that something else made.
//!
//! Interface names inside the namespaces are short fixed names (`wan`, `lan`,
//! `eth0`, `s1`, ...): each namespace has its own interface namespace, so they
//! never collide, and veths are created directly inside their namespaces so
//! the host's root namespace never sees them.

use anyhow::{Result, ensure};

/// First characters of every namespace the lab creates.
pub const NS_PREFIX: &str = "nl";

/// Linux `IFNAMSIZ - 1`: the longest interface name the kernel accepts. We keep
/// namespace names within it too, so a name can be reused as an interface name
/// and shows up unabridged in tools that truncate at that width.
pub const MAX_IFNAME_LEN: usize = 15;

/// Longest role suffix, so that a full namespace name fits [`MAX_IFNAME_LEN`].
pub const MAX_ROLE_LEN: usize = MAX_IFNAME_LEN - NS_PREFIX.len() - 6 - 1;

/// Names for the topologies of one run.
#[derive(Debug)]
pub struct RunNames {
    run: u16,
    next_seq: u8,
}

impl RunNames {
    /// A new run with a random run id.
    pub fn random() -> Self {
        Self::with_run_id(rand::random::<u16>())
    }

    /// A run with a given id (tests).
    pub fn with_run_id(run: u16) -> Self {
        Self { run, next_seq: 0 }
    }

    /// A run with the id given as 4 hex digits (`--run-id`), else a random
    /// one: a caller that picks the id knows the run's namespace prefix
    /// (`nl<id>`) in advance.
    pub fn from_arg(run_id: Option<&str>) -> Result<Self> {
        match run_id {
            None => Ok(Self::random()),
            Some(hex) => {
                ensure!(
                    hex.len() == 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                    "run id {hex:?} must be 4 hex digits"
                );
                let run = u16::from_str_radix(hex, 16)?;
                Ok(Self::with_run_id(run))
            }
        }
    }

    /// The prefix shared by every namespace of this run, e.g. `nl3fa2`.
    pub fn run_prefix(&self) -> String {
        format!("{NS_PREFIX}{:04x}", self.run)
    }

    /// The prefix for the next topology, e.g. `nl3fa207-`. The sequence wraps
    /// after 256 topologies; by then the earlier ones are long torn down.
    pub fn next_topology(&mut self) -> String {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        format!("{}{seq:02x}-", self.run_prefix())
    }
}

/// The namespace name for `role` in the topology with `prefix`.
pub fn ns_name(prefix: &str, role: &str) -> Result<String> {
    ensure!(
        !role.is_empty()
            && role.len() <= MAX_ROLE_LEN
            && role
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "namespace role {role:?} must be 1..={MAX_ROLE_LEN} lowercase letters or digits"
    );
    let name = format!("{prefix}{role}");
    ensure!(
        is_lab_namespace(&name),
        "namespace name {name:?} does not match the lab pattern"
    );
    Ok(name)
}

/// Whether `name` matches `nl<6 hex>-<role>`: a namespace this lab made.
pub fn is_lab_namespace(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(NS_PREFIX) else {
        return false;
    };
    let bytes = rest.as_bytes();
    if bytes.len() < 8 || bytes.len() > 7 + MAX_ROLE_LEN || name.len() > MAX_IFNAME_LEN {
        return false;
    }
    let hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    bytes[..6].iter().all(hex)
        && bytes[6] == b'-'
        && bytes[7..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whether `name` is a lab namespace of the run with `run_prefix` (`nlXXXX`).
pub fn belongs_to_run(name: &str, run_prefix: &str) -> bool {
    is_lab_namespace(name) && name.starts_with(run_prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_prefixes_count_up_within_a_run() {
        let mut names = RunNames::with_run_id(0x3fa2);
        assert_eq!(names.run_prefix(), "nl3fa2");
        assert_eq!(names.next_topology(), "nl3fa200-");
        assert_eq!(names.next_topology(), "nl3fa201-");
    }

    #[test]
    fn sequence_wraps_after_256_topologies() {
        let mut names = RunNames::with_run_id(1);
        for _ in 0..256 {
            names.next_topology();
        }
        assert_eq!(names.next_topology(), "nl000100-");
    }

    #[test]
    fn every_role_the_lab_uses_fits_the_interface_name_limit() {
        let prefix = RunNames::with_run_id(0xffff).next_topology();
        for role in [
            "pub", "relay", "r1", "r2", "h1", "h2", "p1", "p2", "d1", "d2",
        ] {
            let name = ns_name(&prefix, role).unwrap();
            assert!(name.len() <= MAX_IFNAME_LEN, "{name}");
            assert!(is_lab_namespace(&name), "{name}");
        }
    }

    #[test]
    fn roles_that_break_the_pattern_are_refused() {
        let prefix = "nl000000-";
        assert!(ns_name(prefix, "").is_err());
        assert!(ns_name(prefix, "toolong").is_err());
        assert!(ns_name(prefix, "R1").is_err());
        assert!(ns_name(prefix, "a-b").is_err());
    }

    #[test]
    fn cleanup_pattern_matches_only_lab_namespaces() {
        assert!(is_lab_namespace("nl3fa207-relay"));
        assert!(is_lab_namespace("nl000000-h1"));
        assert!(!is_lab_namespace("nl3fa207-"));
        assert!(!is_lab_namespace("nl3fa2x7-h1"));
        assert!(!is_lab_namespace("NL3fa207-h1"));
        assert!(!is_lab_namespace("docker0"));
        assert!(!is_lab_namespace("nl3fa207h1"));
        assert!(is_lab_namespace("nl3fa207-relays"));
        assert!(!is_lab_namespace("nl3fa207-relay12"));
        assert!(!is_lab_namespace("nl3FA207-h1"));
    }

    #[test]
    fn a_given_run_id_sets_the_prefix_and_bad_ones_are_refused() {
        let mut names = RunNames::from_arg(Some("3fa2")).unwrap();
        assert_eq!(names.run_prefix(), "nl3fa2");
        assert_eq!(names.next_topology(), "nl3fa200-");
        assert_eq!(
            RunNames::from_arg(Some("00ff")).unwrap().run_prefix(),
            "nl00ff"
        );
        for bad in ["3fa", "3fa20", "3fg2", "+fa2", ""] {
            assert!(RunNames::from_arg(Some(bad)).is_err(), "{bad:?}");
        }
        assert!(RunNames::from_arg(None).is_ok());
    }

    #[test]
    fn run_membership_uses_the_run_prefix() {
        assert!(belongs_to_run("nl3fa207-h1", "nl3fa2"));
        assert!(!belongs_to_run("nl3fa307-h1", "nl3fa2"));
    }
}
