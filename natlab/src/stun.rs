//! coturn, Debian's STUN server, on the relay host (`natlab matrix
//! --stun`): what `dcutr peer --stun` asks for our NAT's behaviour.
//!
//! Three instances on the relay's one address, at [`STUN_PORTS`]: a NAT that
//! maps each destination to a port of its own shows three mapped ports,
//! which is what the classifier needs to call the mapping
//! endpoint-dependent (two would do) and to tell sequential allocation
//! from random (`dcutr_core::nat::MIN_PATTERN_PORTS` = 3). (Two
//! addresses with RFC 5780 would also tell filtering, which no strategy of
//! ours reads yet, and need a second address on the public segment.)

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::proc::Proc;
use crate::topo::{Lab, RELAY_IP};

/// Where the three coturn instances listen (UDP and TCP), on [`RELAY_IP`].
pub const STUN_PORTS: [u16; 3] = [3478, 3479, 3480];
const _: () = assert!(STUN_PORTS.len() >= dcutr_core::nat::MIN_PATTERN_PORTS);

/// How long coturn may take to open its listeners: it reads no config and
/// no database in `--stun-only` mode, normally well under a second.
pub const STUN_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);

/// The `--stun` arguments that name every instance, for a peer.
#[must_use]
pub fn peer_args() -> Vec<String> {
    STUN_PORTS
        .iter()
        .flat_map(|p| ["--stun".to_owned(), format!("{RELAY_IP}:{p}")])
        .collect()
}

/// Starts every instance in the relay's namespace and waits until each
/// listens on UDP and TCP. They stop when the returned processes drop.
///
/// # Errors
/// `turnserver` missing (install it with `scripts/install-coturn.sh`), or
/// an instance not listening within [`STUN_READY_TIMEOUT`].
pub fn start(lab: &Lab, run_dir: &std::path::Path) -> Result<Vec<Proc>> {
    let Some(binary) = crate::cmd::find_tool("turnserver") else {
        bail!("turnserver not found: install coturn with scripts/install-coturn.sh");
    };
    let ns = lab.relay_ns();
    let mut procs = Vec::new();
    for port in STUN_PORTS {
        let dir = run_dir.join(format!("coturn-{port}"));
        std::fs::create_dir_all(&dir)?;
        let file = |name: &str| -> String { dir.join(name).to_string_lossy().into_owned() };
        let mut args: Vec<String> = [
            "-n",
            "--stun-only",
            "--no-auth",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--simple-log",
            "--no-stdout-log",
        ]
        .map(str::to_owned)
        .to_vec();
        let ip = RELAY_IP.to_string();
        for (flag, value) in [
            ("--listening-ip", ip.clone()),
            ("--relay-ip", ip),
            ("-p", port.to_string()),
            ("--log-file", file("turn.log")),
            ("--pidfile", file("turn.pid")),
            ("--db", file("turndb")),
        ] {
            args.extend([flag.to_owned(), value]);
        }
        let label = format!("coturn:{port}");
        procs.push(lab.spawn(&label, &ns, &binary.to_string_lossy(), &args)?);
    }
    let deadline = Instant::now() + STUN_READY_TIMEOUT;
    for port in STUN_PORTS {
        while !listening(lab, &ns, port) {
            if Instant::now() >= deadline {
                bail!(
                    "coturn on port {port} did not listen within {} s (logs in {})",
                    STUN_READY_TIMEOUT.as_secs(),
                    run_dir.display()
                );
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(procs)
}

/// Whether something in `ns` listens on `port` over both UDP and TCP.
fn listening(lab: &Lab, ns: &str, port: u16) -> bool {
    let filter = format!("sport = :{port}");
    ["-Hlun", "-Hltn"].iter().all(|flags| {
        lab.run(ns, "ss", &[flags, &filter])
            .is_ok_and(|out| !out.trim().is_empty())
    })
}

/// A fresh directory for one run's coturn files.
///
/// # Errors
/// When it cannot be made.
pub fn run_dir(run_name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("natlab-coturn-{run_name}"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
