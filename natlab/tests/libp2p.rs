//! Root-only: `natlab libp2p` with stock rust-libp2p behind one cone NAT
//! and ours (dcutr-libp2p) behind the other, both roles, over TCP and
//! QUIC, one run each.
//! `#[ignore = "needs root"]`: scripts/test-all.sh runs it as root with
//! `cargo test -p dcutr-natlab -- --ignored`; without root it fails.
//!
//! The lab node is dcutr-libp2p's `lab_node` example. The test builds it
//! with the workspace's feature set (`cargo build --workspace --lib --bins
//! --examples`: the same libp2p build as `cargo build --workspace
//! --all-targets` and `cargo test --workspace`, so a no-op there). Not
//! `--example lab_node` alone: that resolves features for dcutr-libp2p
//! only, which is a second libp2p build.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{is_root, natlab};

/// Lab namespaces whose name starts with `prefix`.
fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// A run id no namespace on the machine uses yet (another lab run may be
/// going on next to this test).
fn fresh_run_id() -> String {
    loop {
        let id = format!("{:04x}", rand::random::<u16>());
        if namespaces_with_prefix(&format!("nl{id}")).is_empty() {
            return id;
        }
    }
}

/// Builds the lab node next to natlab (`<target>/debug/examples/lab_node`).
fn build_lab_node() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("natlab lives in the workspace");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args([
            "build",
            "--locked",
            "--workspace",
            "--lib",
            "--bins",
            "--examples",
        ])
        .current_dir(workspace)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the lab node failed");
    let node = Path::new(natlab())
        .parent()
        .expect("natlab's directory")
        .join("examples/lab_node");
    assert!(node.is_file(), "no lab node at {}", node.display());
    node
}

#[test]
#[ignore = "needs root"]
fn stock_and_ours_reach_a_direct_connection_behind_cone_nats_in_both_roles() {
    assert!(is_root(), "needs root (it builds network namespaces)");
    let node = build_lab_node();
    let run_id = fresh_run_id();
    let out = Command::new(natlab())
        .args([
            "libp2p", "--runs", "1", "--json", "--run-id", &run_id, "--node",
        ])
        .arg(&node)
        .output()
        .expect("run natlab libp2p");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- natlab libp2p -> {}\n{stderr}", out.status);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let records: Vec<&serde_json::Value> =
        lines.iter().filter(|v| v.get("case").is_some()).collect();
    let pairings: Vec<&str> = records
        .iter()
        .map(|r| r["case"].as_str().unwrap())
        .collect();
    assert_eq!(
        pairings,
        [
            "stock-B/ours-A tcp",
            "ours-B/stock-A tcp",
            "stock-B/ours-A quic",
            "ours-B/stock-A quic"
        ]
    );
    for r in &records {
        assert_eq!(r["outcome"], "upgraded", "{r}");
        assert_eq!(r["violations"].as_array().unwrap().len(), 0, "{r}");
        for side in ["a", "b"] {
            let res = &r[side]["result"];
            assert_eq!(r[side]["exit"], 0, "{side}: {r}");
            assert_eq!(res["ok"], true, "{side}: {r}");
            assert_eq!(res["direct"], true, "{side}: {r}");
            assert_eq!(
                res["echo"], true,
                "{side}: bytes over the direct connection: {r}"
            );
            let remote = res["remote"].as_str().expect("a remote address");
            // Each side reached the other's NAT directly, not the relay.
            let other_nat = if side == "a" {
                "203.0.113.12"
            } else {
                "203.0.113.11"
            };
            let transport = if r["case"].as_str().unwrap().ends_with("quic") {
                "udp"
            } else {
                "tcp"
            };
            assert!(
                remote.starts_with(&format!("/ip4/{other_nat}/{transport}/"))
                    && !remote.contains("p2p-circuit"),
                "{side}: remote {remote} is not the peer's NAT over {transport}"
            );
        }
    }
    assert!(out.status.success(), "natlab libp2p failed");
    let summary = lines
        .iter()
        .find(|v| v["event"] == "summary")
        .expect("a summary line");
    assert_eq!(summary["run_prefix"], format!("nl{run_id}"));
    assert_eq!(
        namespaces_with_prefix(&format!("nl{run_id}")),
        Vec::<String>::new(),
        "namespaces left behind"
    );
}
