//! The `dcutr relay` rendezvous line protocol, as strangers reach it.
//!
//! Three parts per input:
//! * **parser**: `Message::from_line` on arbitrary lines; a message that
//!   parses serialises to one line of at most `MAX_LINE_BYTES` (or is
//!   refused as too long) that parses back to the same message;
//!   `validate_name` accepts exactly names of 1 to `MAX_NAME_LEN`
//!   characters of `[A-Za-z0-9_.-]`.
//! * **line reader**: arbitrary bytes in arbitrary chunks through the
//!   reader the relay and the peers use: no line longer than
//!   `MAX_LINE_BYTES` or holding a newline, nothing more than one line and
//!   one buffer held, and the lines plus what is left unread give back the
//!   input byte for byte (it never consumes a byte past the newline).
//! * **live relay**: one `dcutr relay` on loopback (short timeouts) for the
//!   whole run; each input opens up to three connections and writes
//!   arbitrary lines and bytes on them in arbitrary chunks. Every control
//!   line the relay sends back parses, stays within `MAX_LINE_BYTES`, an
//!   `error` is the last line, and each connection is paired at most once.
//!   libFuzzer's `-rss_limit_mb` and `-timeout` catch unbounded memory or a
//!   hang.
#![no_main]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use arbitrary::Arbitrary;
use dcutr_cli::relay::{self, RelayConfig, RelayListener};
use dcutr_cli::rendezvous::{
    MAX_LINE_BYTES, MAX_NAME_LEN, Message, read_control_lines, validate_name,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::runtime::Runtime;

/// How long one input waits for the relay to answer and close.
const LIVE_WAIT: Duration = Duration::from_millis(200);

/// Most bytes one connection writes (a few lines at the limit).
const MAX_WRITE: usize = 4 * (MAX_LINE_BYTES + 2);

#[derive(Arbitrary, Debug)]
enum Piece {
    Hello(String),
    Ready(Vec<String>, Vec<String>),
    Connect(String),
    /// Any message with a short name drawn from a small set, so that
    /// connections of one input meet.
    Named(u8, u8),
    /// Raw bytes (a line, junk, a line without newline).
    Raw(Vec<u8>),
    /// A line of this many `x` (around the limit).
    Long(u16),
}

#[derive(Arbitrary, Debug)]
struct Conn {
    pieces: Vec<Piece>,
    cuts: Vec<u16>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    lines: Vec<Vec<u8>>,
    stream: Vec<u8>,
    chunks: Vec<u16>,
    live: Vec<Conn>,
    /// Start the first two connections as a pair that meets (B registers,
    /// A connects to it), so that pairing and the splice are reached.
    meet: bool,
}

fn encode(piece: &Piece, out: &mut Vec<u8>) {
    let msg = match piece {
        Piece::Hello(name) => Message::Hello { name: name.clone() },
        Piece::Ready(addrs, public) => Message::Ready {
            addrs: addrs.clone(),
            public: public.clone(),
        },
        Piece::Connect(peer) => Message::Connect { peer: peer.clone() },
        Piece::Named(kind, n) => {
            let name = format!("fz{}", n % 12);
            match kind % 3 {
                // `ready` (1) is what `play` waits on before closing.
                0 => Message::Hello { name },
                1 => Message::Ready {
                    addrs: vec!["/ip4/198.51.100.1/tcp/4001".into()],
                    public: vec![],
                },
                _ => Message::Connect { peer: name },
            }
        }
        Piece::Raw(raw) => {
            out.extend_from_slice(raw);
            return;
        }
        Piece::Long(n) => {
            let n = usize::from(*n) % (MAX_LINE_BYTES + 64);
            out.extend(std::iter::repeat_n(b'x', n));
            out.push(b'\n');
            return;
        }
    };
    match msg.to_line() {
        Ok(line) => out.extend_from_slice(&line),
        Err(_) => out.extend_from_slice(b"{\"type\":\"hello\"}\n"),
    }
}

fn check_parser(line: &[u8]) {
    let Ok(msg) = Message::from_line(line) else {
        return;
    };
    let _ = msg.kind();
    match msg.to_line() {
        Ok(out) => {
            assert!(out.len() <= MAX_LINE_BYTES + 1, "a line over the limit");
            assert_eq!(out.last(), Some(&b'\n'));
            assert!(
                !out[..out.len() - 1].contains(&b'\n'),
                "a newline inside a line"
            );
            let back = Message::from_line(&out[..out.len() - 1]).expect("our own line parses");
            assert_eq!(back, msg, "a message changes through its line");
        }
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput),
    }
    if let Message::Hello { name } | Message::Connect { peer: name } = &msg {
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        assert_eq!(validate_name(name).is_ok(), ok, "validate_name on {name:?}");
    }
}

/// An in-memory stream that hands out `data` in the given chunk sizes.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
    given: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = if self.sizes.is_empty() {
            usize::MAX
        } else {
            self.sizes[self.next % self.sizes.len()]
        };
        self.next += 1;
        // At least one byte while any is left: zero means the end.
        let n = size.min(buf.remaining()).min(self.data.len() - self.given);
        let from = self.given;
        buf.put_slice(&self.data[from..from + n]);
        self.given += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Chunked<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn check_reader(rt: &Runtime, data: &[u8], chunks: &[u16]) {
    let sizes: Vec<usize> = chunks
        .iter()
        .take(32)
        .map(|c| 1 + usize::from(*c))
        .collect();
    let mut stream = Chunked {
        data,
        sizes,
        next: 0,
        given: 0,
    };
    let out = rt.block_on(read_control_lines(&mut stream, 64));
    let mut pos = 0;
    for line in &out.lines {
        assert!(
            line.len() <= MAX_LINE_BYTES,
            "a line of {} bytes",
            line.len()
        );
        assert!(!line.contains(&b'\n'), "a newline inside a line");
        assert_eq!(
            &data[pos..pos + line.len()],
            &line[..],
            "a line not from the input"
        );
        pos += line.len();
        if data[pos] == b'\r' {
            pos += 1;
        }
        assert_eq!(data[pos], b'\n', "a line that did not end at a newline");
        pos += 1;
    }
    // One line in progress plus one buffer at most.
    assert!(
        out.unread.len() <= 2 * (MAX_LINE_BYTES + 1),
        "{} bytes held",
        out.unread.len()
    );
    let rest = &data[pos..stream.given];
    assert_eq!(&out.unread[..], rest, "bytes lost or made up");
    if out.error.is_none() && out.lines.len() < 64 {
        assert_eq!(stream.given, data.len(), "stopped early without an error");
        assert!(out.unread.is_empty(), "bytes left after a clean end");
    }
}

struct Live {
    rt: Runtime,
    relay: SocketAddr,
}

fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = rt
            .block_on(RelayListener::bind("127.0.0.1:0".parse().unwrap()))
            .expect("the relay binds on loopback");
        let relay = listener.local_addr().unwrap();
        let config = RelayConfig {
            connect_wait: Duration::from_millis(50),
            pair_wait: Duration::from_millis(200),
            control_idle: Duration::from_millis(200),
            splice_idle: Duration::from_millis(200),
            ..RelayConfig::default()
        };
        rt.spawn(async move {
            let _ = relay::run(listener, config).await;
        });
        Live { rt, relay }
    })
}

async fn play(relay: SocketAddr, conn: &Conn, meet: Option<usize>) -> Vec<&'static str> {
    let mut bytes = Vec::new();
    let waits_for_pairing = meet == Some(0);
    match meet {
        Some(0) => {
            encode(&Piece::Named(0, 10), &mut bytes);
            encode(&Piece::Named(1, 10), &mut bytes);
        }
        Some(_) => {
            encode(&Piece::Named(0, 11), &mut bytes);
            encode(&Piece::Named(2, 10), &mut bytes);
        }
        None => {}
    }
    for piece in conn.pieces.iter().take(8) {
        encode(piece, &mut bytes);
    }
    bytes.truncate(MAX_WRITE);
    let Ok(mut stream) = tokio::net::TcpStream::connect(relay).await else {
        return Vec::new();
    };
    let _ = stream.set_nodelay(true);
    for range in dcutr_fuzz::chunks(&conn.cuts, 8, bytes.len()) {
        if stream.write_all(&bytes[range]).await.is_err() {
            break;
        }
    }
    // Half-close, so the relay ends the connection at once instead of
    // after its idle timeout: a run does not wait on timers. A peer that
    // registered waits to be paired first (or for the wait to end).
    let waits = waits_for_pairing
        || conn.pieces.iter().any(|p| {
            matches!(p, Piece::Ready(..)) || matches!(p, Piece::Named(k, _) if k % 3 == 1)
        });
    let mut open = true;
    if !waits {
        let _ = stream.shutdown().await;
        open = false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(LIVE_WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if open && got.windows(8).any(|w| w == b"\"paired\"") {
                let _ = stream.shutdown().await;
                open = false;
            }
            // Control lines are short: a relay that sends far more than a
            // few of them before pairing is broken (a splice may carry more).
            if got.len() > 1 << 20 {
                break;
            }
        }
    })
    .await;
    check_replies(&got)
}

/// The relay's control lines up to `paired` (raw bytes follow it); their
/// kinds.
fn check_replies(got: &[u8]) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    let mut rest = got;
    let mut ended = false;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..i];
        rest = &rest[i + 1..];
        assert!(
            !ended,
            "a line after the relay's error: {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(
            line.len() <= MAX_LINE_BYTES,
            "a relay line of {} bytes",
            line.len()
        );
        let msg = Message::from_line(line)
            .unwrap_or_else(|e| panic!("the relay sent {:?}: {e}", String::from_utf8_lossy(line)));
        kinds.push(msg.kind());
        match msg {
            Message::Paired { .. } => return kinds,
            Message::Error { .. } => ended = true,
            Message::Observed { .. } | Message::Registered => {}
            other => panic!("the relay sent a peer's message: {other:?}"),
        }
    }
    assert!(
        rest.len() <= MAX_LINE_BYTES,
        "{} bytes of an unfinished relay line",
        rest.len()
    );
    kinds
}

fuzz_target!(|input: Input| {
    for line in input.lines.iter().take(16) {
        check_parser(line);
    }
    let live = live();
    check_reader(&live.rt, &input.stream, &input.chunks);
    if !input.live.is_empty() {
        let relay = live.relay;
        let conns = &input.live[..input.live.len().min(3)];
        live.rt.block_on(async {
            let plays = conns.iter().enumerate().map(|(i, c)| {
                let meet = (input.meet && conns.len() >= 2 && i < 2).then_some(i);
                play(relay, c, meet)
            });
            let kinds = futures_util::future::join_all(plays).await;
            if dcutr_fuzz::trace() {
                eprintln!("trace rendezvous_line {kinds:?}");
            }
        });
    }
});
