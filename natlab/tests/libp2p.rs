//! Root-only: `natlab libp2p` with stock rust-libp2p behind one cone NAT
//! and ours (dcutr-libp2p) behind the other, both roles, over TCP and
//! QUIC, one run each.
//! `#[ignore = "needs root"]`: scripts/test-all.sh runs it as root with
//! `cargo test -p dcutr-natlab -- --ignored`; without root it fails.
//!
//! The nodes are the `dcutr` CLI's `dcutr libp2p relay|listen|dial`; the
//! test builds it (`cargo build -p dcutr-cli --bin dcutr`, a no-op after
//! `cargo build --workspace`) next to natlab. Each record carries what
//! natlab scraped from both peers' `--metrics`.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{Run, campaign, fresh_run_id, lab, natlab};

/// Builds the dcutr CLI next to natlab (`<target>/debug/dcutr`).
fn build_dcutr() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("natlab lives in the workspace");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--locked", "-p", "dcutr-cli", "--bin", "dcutr"])
        .current_dir(workspace)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the dcutr CLI failed");
    let dcutr = Path::new(natlab())
        .parent()
        .expect("natlab's directory")
        .join("dcutr");
    assert!(dcutr.is_file(), "no dcutr at {}", dcutr.display());
    dcutr
}

/// `natlab libp2p ARGS` with the dcutr CLI, in a run of its own.
fn natlab_libp2p(args: &[&str]) -> (Run, String) {
    let (dcutr, run_id) = (build_dcutr(), fresh_run_id());
    (campaign("libp2p", &dcutr, &run_id, args, None), run_id)
}

#[test]
#[ignore = "needs root"]
fn stock_and_ours_reach_a_direct_connection_behind_cone_nats_in_both_roles() {
    let _lab = lab();
    let (run, run_id) = natlab_libp2p(&["--runs", "1"]);
    let records = run.records();
    assert_eq!(
        run.cases(),
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
                res["ping"], true,
                "{side}: a ping over the direct connection: {r}"
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
    // What natlab scraped from --metrics: [B, A]. Ours counted its one
    // upgrade as a success on its side; stock has no holepunch families.
    for r in &records {
        for (i, who) in ["b", "a"].into_iter().enumerate() {
            let m = &r["metrics"][i];
            assert_eq!(m["error"], serde_json::Value::Null, "{who}: {r}");
            if r[format!("{who}_impl")] == "ours" {
                assert!(m["successes"].as_f64() >= Some(1.0), "{who}: {r}");
            } else {
                assert_eq!(m["holepunch_families"], false, "{who}: {r}");
            }
        }
    }
    assert!(run.out.status.success(), "natlab libp2p failed");
    run.assert_own_and_clean(&run_id);
}

#[test]
#[ignore = "needs root"]
fn ours_fails_at_once_on_both_sides_behind_two_symmetric_nats() {
    let _lab = lab();
    // Ours only: stock's failure takes 15 to 35 s per run; `natlab libp2p
    // --symmetric --runs 5` measures the two against each other.
    let (run, run_id) = natlab_libp2p(&["--symmetric", "--filter", "ours-B", "--runs", "1"]);
    let records = run.records();
    assert_eq!(
        run.cases(),
        ["ours-B/ours-A tcp sym/sym", "ours-B/ours-A quic sym/sym"]
    );
    for r in &records {
        assert_eq!(r["outcome"], "failed-clean", "{r}");
        assert_eq!(r["violations"].as_array().unwrap().len(), 0, "{r}");
        for side in ["a", "b"] {
            let res = &r[side]["result"];
            assert_eq!(res["direct"], false, "{side}: {r}");
            assert_eq!(
                res["nat"]["declared"]["mapping"], "endpoint-dependent",
                "{side}: {r}"
            );
            // The bound for this case: within 2 s of the start.
            let t = res["time_to_outcome_ms"].as_f64().expect("a time");
            assert!(t < 2000.0, "{side}: {t} ms: {r}");
        }
    }
    assert!(run.out.status.success(), "natlab libp2p --symmetric failed");
    run.assert_own_and_clean(&run_id);
}
