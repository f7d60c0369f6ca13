//! Helpers shared by the root-only lab tests.
// Each test binary uses a part of these.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

/// Whether the test runs as root (effective uid 0, read from /proc: no
/// libc call needed in a test).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The natlab binary cargo built for these tests.
pub fn natlab() -> &'static str {
    env!("CARGO_BIN_EXE_natlab")
}

/// The lab tests share the machine's namespaces and CPU: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Asserts root and holds the lab for the test's length.
pub fn lab() -> MutexGuard<'static, ()> {
    assert!(is_root(), "needs root (it builds network namespaces)");
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lab namespaces whose name starts with `prefix`, sorted.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
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
pub fn fresh_run_id() -> String {
    loop {
        let id = format!("{:04x}", rand::random::<u16>());
        if namespaces_with_prefix(&format!("nl{id}")).is_empty() {
            return id;
        }
    }
}

/// What the run with `run_id` left behind.
pub fn leftovers(run_id: &str) -> Vec<String> {
    namespaces_with_prefix(&format!("nl{run_id}"))
}

/// One `natlab` campaign run: its output and its JSON lines.
pub struct Run {
    /// Exit status, stdout and stderr.
    pub out: Output,
    /// Every stdout line, parsed (the records and the summary).
    pub lines: Vec<Value>,
}

/// Runs `natlab SUB --dcutr DCUTR --json --run-id RUN_ID ARGS` (the fake
/// CLI's `FAKE_DCUTR_MODE` set to `mode`, if any) and echoes its stderr.
pub fn campaign(sub: &str, dcutr: &Path, run_id: &str, args: &[&str], mode: Option<&str>) -> Run {
    let mut cmd = Command::new(natlab());
    cmd.arg(sub)
        .arg("--dcutr")
        .arg(dcutr)
        .args(["--json", "--run-id", run_id])
        .args(args)
        .env("NATLAB_BIN", natlab());
    if let Some(mode) = mode {
        cmd.env("FAKE_DCUTR_MODE", mode);
    }
    let out = cmd.output().expect("run natlab");
    eprintln!(
        "--- natlab {sub} {args:?} (mode {mode:?}) -> {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    Run { out, lines }
}

impl Run {
    /// The per-run records.
    pub fn records(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|v| v.get("case").is_some())
            .collect()
    }

    /// The records' case names, in order.
    pub fn cases(&self) -> Vec<&str> {
        let records = self.records().into_iter();
        records
            .map(|r| r["case"].as_str().expect("a case name"))
            .collect()
    }

    /// The exit code.
    pub fn code(&self) -> Option<i32> {
        self.out.status.code()
    }

    /// The diagnostics and the table.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// The run used `run_id` (its summary says so) and removed every
    /// namespace it made.
    pub fn assert_own_and_clean(&self, run_id: &str) {
        let summary = self.lines.iter().find(|v| v["event"] == "summary");
        let prefix = summary.and_then(|v| v["run_prefix"].as_str());
        assert_eq!(
            prefix,
            Some(format!("nl{run_id}").as_str()),
            "--run-id ignored"
        );
        assert_eq!(
            leftovers(run_id),
            Vec::<String>::new(),
            "namespaces left behind"
        );
    }
}
