//! Processes the lab starts inside its namespaces, with their output captured
//! line by line (bounded) so a failing case can show it.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::debug;

/// Lines of stdout and of stderr kept per process: enough for every JSON event
/// of a DCUtR run with verbose logs; a runaway process cannot eat the memory.
pub const MAX_CAPTURED_LINES: usize = 5_000;

/// Longest line kept; the rest of a longer line is cut (and marked).
pub const MAX_LINE_BYTES: usize = 16 * 1024;

#[derive(Debug, Default)]
struct Captured {
    lines: Vec<String>,
    /// When each kept line was read from the pipe.
    times: Vec<Instant>,
    dropped: usize,
}

impl Captured {
    fn push(&mut self, line: String) {
        if self.lines.len() < MAX_CAPTURED_LINES {
            self.lines.push(line);
            self.times.push(Instant::now());
        } else {
            self.dropped += 1;
        }
    }
}

/// A process started inside a lab namespace. Killed (with its whole process
/// group) when dropped.
#[derive(Debug)]
pub struct Proc {
    label: String,
    child: Child,
    stdout_rx: Receiver<String>,
    stdout: Arc<Mutex<Captured>>,
    stderr: Arc<Mutex<Captured>>,
    status: Option<ExitStatus>,
    readers: Vec<JoinHandle<()>>,
    /// Disconnects once every reader thread has ended (each holds a sender).
    readers_done: Receiver<()>,
}

impl Proc {
    /// Start `program args...` in network namespace `ns` (`ip netns exec`,
    /// which execs the program, so the child pid is the program's own). The
    /// child leads a new process group so that kill reaches its children too.
    pub fn spawn(label: &str, ns: &str, program: &str, args: &[String]) -> Result<Self> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        debug!(%label, %ns, %program, ?args, "spawn");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {label}: {program} in {ns}"))?;
        let stdout = Arc::new(Mutex::new(Captured::default()));
        let stderr = Arc::new(Mutex::new(Captured::default()));
        let (tx, stdout_rx) = mpsc::channel();
        let out_pipe = child.stdout.take().context("stdout pipe")?;
        let err_pipe = child.stderr.take().context("stderr pipe")?;
        let (out, err) = (Arc::clone(&stdout), Arc::clone(&stderr));
        let (done_out, readers_done) = mpsc::channel::<()>();
        let done_err = done_out.clone();
        let readers = vec![
            thread::spawn(move || {
                let _done = done_out;
                for_each_line(out_pipe, |line| {
                    out.lock().expect("capture lock").push(line.clone());
                    let _ = tx.send(line);
                })
            }),
            thread::spawn(move || {
                let _done = done_err;
                for_each_line(err_pipe, |line| {
                    err.lock().expect("capture lock").push(line)
                })
            }),
        ];
        Ok(Self {
            label: label.to_owned(),
            child,
            stdout_rx,
            stdout,
            stderr,
            status: None,
            readers,
            readers_done,
        })
    }

    /// The next stdout line, waiting at most until `deadline`. `None` on
    /// timeout or when stdout has closed.
    pub fn next_line(&self, deadline: Instant) -> Option<String> {
        let wait = deadline.saturating_duration_since(Instant::now());
        self.stdout_rx.recv_timeout(wait).ok()
    }

    /// Wait until a stdout line satisfies `pred`; return it. Fails on timeout
    /// or when the process closes stdout first (usually: it died).
    pub fn wait_for_line(
        &self,
        deadline: Instant,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        loop {
            match self.next_line(deadline) {
                Some(line) if pred(&line) => return Ok(line),
                Some(_) => continue,
                None if Instant::now() >= deadline => {
                    bail!("{}: no {what} before the deadline", self.label)
                }
                None => bail!("{}: stdout closed before {what}", self.label),
            }
        }
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.label))?;
        }
        Ok(self.status)
    }

    /// Join the reader threads once the process has exited: then every line
    /// it printed is captured. They end when the pipes close, which for an
    /// exited process is at once; a child of it that still holds a pipe
    /// open gets `limit`, then the readers are left running (and a line
    /// says so in the capture). Does nothing while the process runs.
    pub fn join_readers(&mut self, limit: Duration) {
        if !matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        // Nothing is ever sent: the wait ends when the last reader drops
        // its sender (both pipes at their end), or after `limit`.
        if let Err(RecvTimeoutError::Timeout) = self.readers_done.recv_timeout(limit) {
            self.stderr.lock().expect("capture lock").push(format!(
                "[natlab: pipes still open {limit:?} after the exit]"
            ));
            return;
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// SIGKILL the process group and reap the child.
    pub fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        // The child is its own group leader (process_group(0)), unreaped, so
        // the group id cannot have been reused.
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }

    /// Send `signal` to the process group (SIGSTOP to freeze it, for
    /// example); does nothing once the process has been reaped.
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        if self.status.is_some() {
            bail!("{} has already exited", self.label);
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        // As in `kill`: the unreaped group leader keeps its id ours.
        killpg(pid, signal).with_context(|| format!("sending {signal} to {}", self.label))
    }

    /// The stdout lines captured so far, each with the time natlab read it
    /// (within a millisecond or so of when the process printed it).
    pub fn stdout_timed(&self) -> Vec<(Instant, String)> {
        let c = self.stdout.lock().expect("capture lock");
        c.times
            .iter()
            .copied()
            .zip(c.lines.iter().cloned())
            .collect()
    }

    /// Everything captured on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        snapshot(&self.stdout)
    }

    /// Everything captured on stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        snapshot(&self.stderr)
    }

    /// Both streams, labelled, for a diagnostics dump.
    pub fn dump(&self) -> String {
        let mut out = format!(
            "----- {} (exit: {}) -----\n",
            self.label,
            match self.status {
                Some(s) => s.to_string(),
                None => "still running".into(),
            }
        );
        for (name, lines) in [
            ("stdout", self.stdout_lines()),
            ("stderr", self.stderr_lines()),
        ] {
            out.push_str(&format!("[{name}: {} lines]\n", lines.len()));
            for line in lines {
                out.push_str("  ");
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }
}

fn snapshot(captured: &Mutex<Captured>) -> Vec<String> {
    let c = captured.lock().expect("capture lock");
    let mut lines = c.lines.clone();
    if c.dropped > 0 {
        lines.push(format!("[... {} more lines not kept]", c.dropped));
    }
    lines
}

/// Split a pipe into lines, each at most [`MAX_LINE_BYTES`], lossily decoded.
fn for_each_line(pipe: impl Read, mut f: impl FnMut(String)) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader
            .by_ref()
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let complete = buf.last() == Some(&b'\n');
                let mut line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                if !complete && buf.len() >= MAX_LINE_BYTES {
                    line.push_str(" [line cut]");
                    // Skip the rest of the overlong line.
                    let mut rest = Vec::new();
                    if reader.read_until(b'\n', &mut rest).is_err() {
                        return;
                    }
                }
                f(line);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_trimmed_and_capped() {
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let input = format!("a\r\nb\n{long}\nc");
        let mut lines = Vec::new();
        for_each_line(input.as_bytes(), |l| lines.push(l));
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "a");
        assert_eq!(lines[1], "b");
        assert!(lines[2].ends_with("[line cut]"));
        assert_eq!(lines[3], "c");
    }

    #[test]
    fn capture_keeps_a_bounded_number_of_lines() {
        let mut c = Captured::default();
        for i in 0..MAX_CAPTURED_LINES + 3 {
            c.push(i.to_string());
        }
        assert_eq!(c.lines.len(), MAX_CAPTURED_LINES);
        assert_eq!(c.times.len(), MAX_CAPTURED_LINES, "one time per kept line");
        assert!(c.times.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(c.dropped, 3);
    }
}
