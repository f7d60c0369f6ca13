//! Root-only tests: the selftest, and the matrix runner driving the fake
//! `dcutr` (tests/fake-dcutr) through real namespaces. They are
//! `#[ignore = "needs root"]`, so a plain `cargo test` lists them as
//! ignored; the NAT-lab step of scripts/test-all.sh runs them as root with
//! `cargo test -p dcutr-natlab -- --ignored`. Run without root, they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The lab tests share the machine's namespaces and CPU: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

mod common;

use common::{is_root, natlab};

fn fake() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-dcutr")
}

/// Lab namespaces whose name starts with `prefix` (`nl` for all of them).
fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return vec![];
    };
    let mut v: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// A run id (4 hex digits) that no namespace on the machine uses yet. The
/// test passes it to natlab (`--run-id`) and then looks only at the
/// namespaces of its own run (`nl<id>*`): another lab run on the machine
/// (someone's matrix) creates and removes namespaces of its own meanwhile.
fn fresh_run_id() -> String {
    loop {
        let id = format!("{:04x}", rand::random::<u16>());
        if namespaces_with_prefix(&format!("nl{id}")).is_empty() {
            return id;
        }
    }
}

/// What the run with `run_id` left behind.
fn leftovers(run_id: &str) -> Vec<String> {
    namespaces_with_prefix(&format!("nl{run_id}"))
}

/// The run used `run_id` and removed every namespace it made.
fn assert_own_and_clean(out: &Output, run_id: &str) {
    assert_eq!(run_prefix(out), format!("nl{run_id}"), "--run-id ignored");
    assert_eq!(
        leftovers(run_id),
        Vec::<String>::new(),
        "namespaces left behind"
    );
}

fn matrix(mode: &str, args: &[&str]) -> Output {
    matrix_in_run(&fresh_run_id(), mode, args)
}

fn matrix_in_run(run_id: &str, mode: &str, args: &[&str]) -> Output {
    let out = Command::new(natlab())
        .arg("matrix")
        .arg("--dcutr")
        .arg(fake())
        .arg("--json")
        .arg("--run-id")
        .arg(run_id)
        .args(args)
        .env("FAKE_DCUTR_MODE", mode)
        .env("NATLAB_BIN", natlab())
        .output()
        .expect("run natlab matrix");
    eprintln!(
        "--- natlab matrix {args:?} (mode {mode}) -> {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The namespace prefix the run reports in its JSON summary.
fn run_prefix(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .and_then(|v| v["run_prefix"].as_str().map(str::to_owned))
        .expect("a summary with the run prefix")
}

fn records(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .filter(|v| v.get("case").is_some())
        .collect()
}

macro_rules! root_only {
    () => {
        assert!(is_root(), "needs root (it builds network namespaces)");
    };
}

#[test]
#[ignore = "needs root"]
fn selftest_passes_every_check() {
    root_only!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(natlab())
        .arg("selftest")
        .output()
        .expect("run selftest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "selftest failed:\n{stdout}");
    assert!(stdout.contains(" passed, 0 failed"));
    assert!(!stdout.contains("FAIL"));
}

#[test]
#[ignore = "needs root"]
fn matrix_passes_a_good_upgrade_and_tears_down() {
    root_only!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run_id = fresh_run_id();
    let md = std::env::temp_dir().join(format!("natlab-test-{}.md", std::process::id()));
    let out = matrix_in_run(
        &run_id,
        "ok",
        &[
            "--filter",
            "cone/cone tcp",
            "--markdown",
            md.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let recs = records(&out);
    // "cone/cone tcp" matches rtt0 and rtt100 of cone/cone only, on tokio
    // and on smol.
    assert_eq!(recs.len(), 4);
    for r in &recs {
        assert_eq!(r["outcome"], "upgraded");
        assert_eq!(r["violations"].as_array().unwrap().len(), 0, "{r}");
        // The fake measured a real RTT through the NAT to the relay.
        assert!(r["rtt_ms"].as_f64().unwrap() > 0.0);
        assert!(r["teardown_ms"].as_f64().is_some());
    }
    let table = std::fs::read_to_string(&md).expect("markdown file");
    let _ = std::fs::remove_file(&md);
    assert!(
        table.contains("| cone/cone tcp rtt0 | cone | cone | tokio | 1/1 | upgraded |")
            && table.contains("| cone/cone tcp rtt0 smol | cone | cone | smol | 1/1 | upgraded |"),
        "{table}"
    );
    assert!(table.contains("PASS"));
    assert_own_and_clean(&out, &run_id);
}

#[test]
#[ignore = "needs root"]
fn matrix_expects_symmetric_pairs_to_fail_cleanly() {
    root_only!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = matrix("fail", &["--filter", "symmetric/symmetric quic rtt0"]);
    assert!(out.status.success());
    let recs = records(&out);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["outcome"], "failed-clean");
    assert_eq!(recs[0]["attempts"], 3);
}

#[test]
#[ignore = "needs root"]
fn matrix_reports_a_failed_case_with_the_lab_state() {
    root_only!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = matrix("fail", &["--filter", "cone/cone tcp rtt0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "FAIL (failed-clean)",
        "expected an upgrade, got failed-clean",
        "nft list ruleset",
        "masquerade",
        "conntrack -L",
        "----- peer A (exit: exit status: 1) -----",
        "----- peer B",
        "----- relay",
        "\"event\":\"result\"",
    ] {
        assert!(err.contains(needle), "diagnostics lack {needle:?}");
    }
}

#[test]
#[ignore = "needs root"]
fn matrix_times_out_a_hanging_peer_and_kills_everything() {
    root_only!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run_id = fresh_run_id();
    let started = std::time::Instant::now();
    let out = matrix_in_run(
        &run_id,
        "hang",
        &["--filter", "cone/cone quic rtt0", "--case-timeout-s", "2"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        started.elapsed().as_secs() < 10,
        "took {:?}",
        started.elapsed()
    );
    let recs = records(&out);
    assert_eq!(recs[0]["outcome"], "timeout");
    assert_own_and_clean(&out, &run_id);
}

#[test]
#[ignore = "needs root"]
fn matrix_catches_swapped_roles_crashes_and_a_missing_unilateral_flag() {
    root_only!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = matrix("swap-roles", &["--filter", "cone/cone tcp rtt0"]);
    assert_eq!(out.status.code(), Some(1));
    let v = records(&out)[0]["violations"].to_string();
    assert!(v.contains("A reported role server, expected client"), "{v}");

    let out = matrix("crash", &["--filter", "symmetric/cone tcp rtt0"]);
    assert_eq!(out.status.code(), Some(1));
    let r = &records(&out)[0];
    assert_eq!(r["outcome"], "error");
    assert!(r["violations"].to_string().contains("exit code 101"));

    let out = matrix("ok", &["--filter", "cone/public tcp rtt0"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "cone/public without unilateral must fail"
    );
    let out = matrix("ok-unilateral", &["--filter", "cone/public tcp rtt0"]);
    assert!(
        out.status.success(),
        "cone/public with unilateral must pass"
    );
}

#[test]
#[ignore = "needs root"]
fn matrix_stops_waiting_for_b_soon_after_a_crashed() {
    root_only!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = std::time::Instant::now();
    let out = matrix(
        "crash-a",
        &[
            "--filter",
            "cone/cone tcp rtt0",
            "--case-timeout-s",
            "30",
            "--peer-grace-s",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        started.elapsed().as_secs() < 10,
        "took {:?}",
        started.elapsed()
    );
    let r = &records(&out)[0];
    assert_eq!(r["outcome"], "timeout");
    assert!(
        r["violations"].to_string().contains("A: exit code 101"),
        "{r}"
    );
}

/// The real CLI code with the lab's fixtures (natlab's lab-dcutr).
fn real_dcutr() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lab-dcutr"))
}

fn broken(dcutr: &Path, run_id: &str, args: &[&str], mode: Option<&str>) -> Output {
    let mut cmd = Command::new(natlab());
    cmd.arg("broken")
        .arg("--dcutr")
        .arg(dcutr)
        .arg("--json")
        .arg("--run-id")
        .arg(run_id)
        .args(args)
        .env("NATLAB_BIN", natlab());
    if let Some(mode) = mode {
        cmd.env("FAKE_DCUTR_MODE", mode);
    }
    let out = cmd.output().expect("run natlab broken");
    eprintln!(
        "--- natlab broken {args:?} -> {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
#[ignore = "needs root"]
fn broken_relay_cut_and_killed_peer_end_cleanly_within_their_bounds() {
    root_only!();
    let dcutr = real_dcutr();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for filter in ["relay-cut", "peer-killed"] {
        let run_id = fresh_run_id();
        let out = broken(&dcutr, &run_id, &["--runs", "1", "--filter", filter], None);
        assert!(
            out.status.success(),
            "natlab broken --filter {filter} failed"
        );
        let recs = records(&out);
        assert_eq!(recs.len(), 2, "tcp and quic");
        for r in &recs {
            assert_eq!(r["outcome"], "failed-clean", "{r}");
            assert_eq!(r["violations"].as_array().unwrap().len(), 0, "{r}");
            let (d, bound) = (
                r["duration_ms"].as_f64().unwrap(),
                r["bound_ms"].as_f64().unwrap(),
            );
            assert!(d <= bound, "{d} ms over the bound {bound} ms");
            assert!(r["b_reason"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
        }
        if filter == "relay-cut" {
            for r in &recs {
                assert_eq!(r["relay_forwarded"], r["cut_at"], "{r}");
                assert!(
                    r["a_reason"]
                        .as_str()
                        .unwrap()
                        .contains("relayed stream closed")
                );
            }
        }
        assert_own_and_clean(&out, &run_id);
    }
}

#[test]
#[ignore = "needs root"]
fn broken_flags_runs_that_never_reach_the_upgrade() {
    root_only!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The fake CLI never prints `paired`: no DCUtR ran, whatever it says.
    let run_id = fresh_run_id();
    let out = broken(
        &fake(),
        &run_id,
        &["--runs", "1", "--filter", "loss10 cone/cone tcp"],
        Some("ok"),
    );
    assert_eq!(out.status.code(), Some(1));
    let r = &records(&out)[0];
    assert!(
        r["violations"]
            .to_string()
            .contains("never printed \\\"paired\\\""),
        "{r}"
    );
    assert_eq!(
        r["seeds"].as_array().unwrap().len(),
        2,
        "loss runs record their seeds"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FAIL"), "diagnostics missing");
    assert!(
        err.contains("delayline d1"),
        "the delay lines' logs are part of the diagnostics"
    );
    assert_eq!(
        leftovers(&run_id),
        Vec::<String>::new(),
        "namespaces left behind"
    );
}
