//! Root-only tests: the selftest, and the matrix runner driving the fake
//! `dcutr` (tests/fake-dcutr) through real namespaces. They are
//! `#[ignore = "needs root"]`, so a plain `cargo test` lists them as
//! ignored; the NAT-lab step of scripts/test-all.sh runs them as root with
//! `cargo test -p dcutr-natlab -- --ignored`. Run without root, they fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;

use common::{Run, campaign, fresh_run_id, lab, natlab};

fn fake() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-dcutr")
}

/// The real CLI code with the lab's fixtures (natlab's lab-dcutr).
fn real_dcutr() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lab-dcutr"))
}

/// `natlab matrix` with the fake CLI in `mode`, in a run of its own.
fn matrix(mode: &str, args: &[&str]) -> Run {
    campaign("matrix", &fake(), &fresh_run_id(), args, Some(mode))
}

#[test]
#[ignore = "needs root"]
fn selftest_passes_every_check() {
    let _lab = lab();
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
    let _lab = lab();
    let run_id = fresh_run_id();
    let md = std::env::temp_dir().join(format!("natlab-test-{}.md", std::process::id()));
    let args = [
        "--filter",
        "cone/cone tcp",
        "--markdown",
        md.to_str().unwrap(),
    ];
    let run = campaign("matrix", &fake(), &run_id, &args, Some("ok"));
    assert!(run.out.status.success());
    let recs = run.records();
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
        table.contains("| cone/cone tcp rtt0 | cone | cone | tokio | - / - | 1/1 | upgraded |")
            && table.contains(
                "| cone/cone tcp rtt0 smol | cone | cone | smol | - / - | 1/1 | upgraded |"
            ),
        "{table}"
    );
    assert!(table.contains("PASS"));
    run.assert_own_and_clean(&run_id);
}

#[test]
#[ignore = "needs root"]
fn matrix_expects_symmetric_pairs_to_fail_cleanly() {
    let _lab = lab();
    let run = matrix("fail", &["--filter", "symmetric/symmetric quic rtt0"]);
    assert!(run.out.status.success());
    let recs = run.records();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["outcome"], "failed-clean");
    assert_eq!(recs[0]["attempts"], 3);
}

#[test]
#[ignore = "needs root"]
fn matrix_reports_a_failed_case_with_the_lab_state() {
    let _lab = lab();
    let run = matrix("fail", &["--filter", "cone/cone tcp rtt0"]);
    assert_eq!(run.code(), Some(1));
    let err = run.stderr();
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
    let _lab = lab();
    let run_id = fresh_run_id();
    let started = Instant::now();
    let args = ["--filter", "cone/cone quic rtt0", "--case-timeout-s", "2"];
    let run = campaign("matrix", &fake(), &run_id, &args, Some("hang"));
    assert_eq!(run.code(), Some(1));
    assert!(
        started.elapsed().as_secs() < 10,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(run.records()[0]["outcome"], "timeout");
    run.assert_own_and_clean(&run_id);
}

#[test]
#[ignore = "needs root"]
fn matrix_catches_swapped_roles_crashes_and_a_missing_unilateral_flag() {
    let _lab = lab();
    let run = matrix("swap-roles", &["--filter", "cone/cone tcp rtt0"]);
    assert_eq!(run.code(), Some(1));
    let v = run.records()[0]["violations"].to_string();
    assert!(v.contains("A reported role server, expected client"), "{v}");

    let run = matrix("crash", &["--filter", "symmetric/cone tcp rtt0"]);
    assert_eq!(run.code(), Some(1));
    let r = run.records()[0];
    assert_eq!(r["outcome"], "error");
    assert!(r["violations"].to_string().contains("exit code 101"));

    let public = ["--filter", "cone/public tcp rtt0"];
    let no_flag = matrix("ok", &public).code();
    assert_eq!(no_flag, Some(1), "cone/public without unilateral must fail");
    let flagged = matrix("ok-unilateral", &public);
    assert!(
        flagged.out.status.success(),
        "cone/public with unilateral must pass"
    );
}

#[test]
#[ignore = "needs root"]
fn matrix_stops_waiting_for_b_soon_after_a_crashed() {
    let _lab = lab();
    let started = Instant::now();
    let filter = ["--filter", "cone/cone tcp rtt0"];
    let limits = ["--case-timeout-s", "30", "--peer-grace-s", "1"];
    let run = matrix("crash-a", &[&filter[..], &limits[..]].concat());
    assert_eq!(run.code(), Some(1));
    assert!(
        started.elapsed().as_secs() < 10,
        "took {:?}",
        started.elapsed()
    );
    let r = run.records()[0];
    assert_eq!(r["outcome"], "timeout");
    let v = r["violations"].to_string();
    assert!(v.contains("A: exit code 101"), "{r}");
}

#[test]
#[ignore = "needs root"]
fn broken_relay_cut_and_killed_peer_end_cleanly_within_their_bounds() {
    let _lab = lab();
    for filter in ["relay-cut", "peer-killed"] {
        let run_id = fresh_run_id();
        let args = ["--runs", "1", "--filter", filter];
        let run = campaign("broken", &real_dcutr(), &run_id, &args, None);
        assert!(
            run.out.status.success(),
            "natlab broken --filter {filter} failed"
        );
        let recs = run.records();
        assert_eq!(recs.len(), 2, "tcp and quic");
        for r in &recs {
            assert_eq!(r["outcome"], "failed-clean", "{r}");
            assert_eq!(r["violations"].as_array().unwrap().len(), 0, "{r}");
            let d = r["duration_ms"].as_f64().unwrap();
            let bound = r["bound_ms"].as_f64().unwrap();
            assert!(d <= bound, "{d} ms over the bound {bound} ms");
            assert!(r["b_reason"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
            if filter == "relay-cut" {
                assert_eq!(r["relay_forwarded"], r["cut_at"], "{r}");
                let a_reason = r["a_reason"].as_str().unwrap();
                assert!(a_reason.contains("relayed stream closed"), "{r}");
            }
        }
        run.assert_own_and_clean(&run_id);
    }
}

#[test]
#[ignore = "needs root"]
fn broken_flags_runs_that_never_reach_the_upgrade() {
    let _lab = lab();
    // The fake CLI never prints `paired`: no DCUtR ran, whatever it says.
    let run_id = fresh_run_id();
    let args = ["--runs", "1", "--filter", "loss10 cone/cone tcp"];
    let run = campaign("broken", &fake(), &run_id, &args, Some("ok"));
    assert_eq!(run.code(), Some(1));
    let r = run.records()[0];
    let v = r["violations"].to_string();
    assert!(v.contains("never printed \\\"paired\\\""), "{r}");
    let seeds = r["seeds"].as_array().unwrap().len();
    assert_eq!(seeds, 2, "loss runs record their seeds");
    let err = run.stderr();
    assert!(err.contains("FAIL"), "diagnostics missing");
    let delay_logs = err.contains("delayline d1");
    assert!(
        delay_logs,
        "the delay lines' logs are part of the diagnostics"
    );
    run.assert_own_and_clean(&run_id);
}
