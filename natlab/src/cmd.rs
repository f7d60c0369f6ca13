//! Running the host tools the lab drives (`ip`, `nft`, `conntrack`,
//! `ethtool`, `sysctl`), with the command line and its stderr in every error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use tracing::debug;

/// Run `program args...` to completion, feeding `stdin` if given, and return
/// its stdout. Fails with the command line, exit status and stderr.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let shown = format!("{program} {}", args.join(" "));
    debug!(cmd = %shown, "run");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("stdin pipe")?;
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("writing stdin of `{shown}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{shown}`"))?;
    if !out.status.success() {
        let input = stdin
            .map(|s| format!("\n--- stdin ---\n{s}"))
            .unwrap_or_default();
        bail!(
            "`{shown}` failed ({}): {}{input}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`run`] but returns stdout and stderr together and never fails on the
/// exit status: for diagnostics, where a failing tool is itself information.
pub fn run_for_diagnostics(program: &str, args: &[&str]) -> String {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.trim().is_empty() {
                text.push_str(&err);
            }
            if !out.status.success() {
                text.push_str(&format!("[exit status: {}]\n", out.status));
            }
            text
        }
        Err(e) => format!("[cannot run {program}: {e}]\n"),
    }
}

/// `ip -n <ns> -batch -` (or without `-n` for `None`): many `ip` commands in one
/// process, which keeps a topology build well under a second. Stops at the
/// first failing line unless `force`.
pub fn ip_batch(ns: Option<&str>, script: &str, force: bool) -> Result<String> {
    let mut args = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    if force {
        args.push("-force");
    }
    args.extend(["-batch", "-"]);
    run("ip", &args, Some(script))
}

/// Run `program args...` inside network namespace `ns` (`ip netns exec`).
pub fn netns_run(ns: &str, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full, stdin)
}

/// Directories searched for a tool besides `$PATH`: the sbin directories are
/// often missing from a non-login root shell's PATH.
const EXTRA_TOOL_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// Where `tool` is, if anywhere.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_TOOL_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Tools the lab needs and the Debian package that ships each.
pub const REQUIRED_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    ("ethtool", "ethtool"),
    ("sysctl", "procps"),
];

/// The tools of [`REQUIRED_TOOLS`] that are not installed, with their
/// package (`scripts/install-natlab-tools.sh` installs them; natlab itself
/// installs nothing).
pub fn missing_tools() -> Vec<String> {
    REQUIRED_TOOLS
        .iter()
        .filter(|(tool, _)| find_tool(tool).is_none())
        .map(|(tool, pkg)| format!("{tool} (package {pkg})"))
        .collect()
}

/// Whether this process can build labs: root, with network namespaces.
pub fn can_build_labs() -> bool {
    nix::unistd::geteuid().is_root()
        && Path::new("/proc/self/ns/net").exists()
        && find_tool("ip").is_some()
}
