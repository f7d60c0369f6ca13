//! The end of a batch of lab runs, the same for `matrix`, `broken` and
//! `libp2p`: the table, a one-line summary, the optional Markdown file and
//! the exit code.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

/// What a batch did, for its summary.
pub struct Batch<'a> {
    /// The subcommand: `matrix`, `broken`, `libp2p`.
    pub kind: &'a str,
    /// What the runs are grouped by: `cases` or `pairings`.
    pub groups_name: &'a str,
    /// How many groups ran.
    pub groups: usize,
    /// Runs per group.
    pub runs_per_group: u32,
    /// Runs made.
    pub runs: usize,
    /// Runs that failed.
    pub failed: usize,
    /// Wall time of the batch.
    pub total: Duration,
    /// The namespaces' prefix of the batch.
    pub run_prefix: String,
}

impl Batch<'_> {
    /// `matrix: 24 runs in 150.0 s (24 cases x 1 runs); 24 passed, 0 failed`.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} runs in {:.1} s ({} {} x {} runs); {} passed, {} failed",
            self.kind,
            self.runs,
            self.total.as_secs_f64(),
            self.groups,
            self.groups_name,
            self.runs_per_group,
            self.runs - self.failed,
            self.failed
        )
    }

    /// Prints the table (stdout, or stderr under `--json`, where stdout
    /// gets the JSON summary line with `extra` merged in), writes the
    /// Markdown file (`preamble`, then the table and the summary), prints
    /// the summary on stderr, and returns the exit code: 0 when no run
    /// failed, else 1.
    pub fn finish(
        &self,
        table: &str,
        json: bool,
        extra: Map<String, Value>,
        markdown: Option<&Path>,
        preamble: Option<&str>,
    ) -> Result<ExitCode> {
        let summary = self.summary();
        if json {
            eprintln!("{table}");
            let mut line = json!({
                "event": "summary", "runs": self.runs, "passed": self.runs - self.failed,
                "failed": self.failed, "duration_s": self.total.as_secs_f64(),
                "run_prefix": self.run_prefix,
            });
            if let Value::Object(fields) = &mut line {
                fields.extend(extra);
            }
            println!("{line}");
        } else {
            println!("{table}");
        }
        if let Some(path) = markdown {
            let head = preamble.map(|p| format!("{p}\n\n")).unwrap_or_default();
            std::fs::write(path, format!("{head}{table}\n{summary}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        eprintln!("{summary}");
        Ok(if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_runs_and_groups() {
        let batch = Batch {
            kind: "libp2p",
            groups_name: "pairings",
            groups: 4,
            runs_per_group: 2,
            runs: 8,
            failed: 1,
            total: Duration::from_millis(12_340),
            run_prefix: "nl0001".into(),
        };
        assert_eq!(
            batch.summary(),
            "libp2p: 8 runs in 12.3 s (4 pairings x 2 runs); 7 passed, 1 failed"
        );
    }
}
