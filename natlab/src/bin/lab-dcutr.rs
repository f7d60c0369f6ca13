//! `lab-dcutr`: the `dcutr` CLI with the NAT lab's fixtures, which the
//! user binary does not carry. Same subcommands, arguments, JSON lines and
//! exit codes as `dcutr relay` and `dcutr peer` (it runs dcutr-cli's own
//! code), plus:
//!
//! - `relay --delay-ms N`: hold every forwarded chunk N ms one way;
//! - `relay --cut-after-bytes N`: close both connections of every relayed
//!   stream once N bytes were forwarded on it (a relay failing
//!   mid-protocol; 0 closes them right after `paired`);
//! - `peer --runtime tokio|smol|async-std`: the runtime of the upgrade and
//!   its proof (the rendezvous and pairing stay on tokio);
//! - `peer --max-attempts N`: at most N hole-punch attempts (the session
//!   agrees on the smaller of both peers' limits), so that a case whose
//!   outcome is only reported does not spend three attempts on it.
//!
//! natlab's `matrix` and `broken` run it (`--dcutr` overrides it).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dcutr_cli::peer::{self, Finished, Plan, RelayedStream};
use dcutr_cli::relay::RelayConfig;
use dcutr_cli::{MAX_DELAY_MS, PeerArgs, RelayArgs};

/// The `dcutr` CLI with the NAT lab's fixtures (not for users).
#[derive(Debug, Parser)]
#[command(name = "lab-dcutr", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// `dcutr relay`, with a delay and a cut.
    Relay {
        #[command(flatten)]
        relay: RelayArgs,
        #[command(flatten)]
        fixture: RelayFixture,
    },
    /// `dcutr peer`, on a chosen runtime.
    Peer {
        #[command(flatten)]
        peer: PeerArgs,
        /// Async runtime of the upgrade and its proof.
        #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
        runtime: Runtime,
        /// At most this many hole-punch attempts (default: the library's).
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u8).range(1..=i64::from(dcutr_core::settings::MAX_ATTEMPTS_LIMIT)))]
        max_attempts: Option<u8>,
    },
}

/// What the lab adds to `dcutr relay`.
#[derive(Debug, Clone, Args)]
struct RelayFixture {
    /// Hold every forwarded chunk this many milliseconds (one way), so the
    /// relayed round trip grows by about twice this.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=MAX_DELAY_MS))]
    delay_ms: u64,
    /// FAULT INJECTION: close both connections of every relayed stream once
    /// N bytes were forwarded on it (both directions together). 0 closes
    /// them right after `paired`.
    #[arg(long, value_name = "N")]
    cut_after_bytes: Option<u64>,
}

/// The async runtime of the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Runtime {
    /// tokio, through `dcutr-tokio` (what `dcutr peer` runs).
    Tokio,
    /// smol, through `dcutr-async-std`.
    Smol,
    /// async-std, through `dcutr-async-std` (discontinued upstream).
    AsyncStd,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    dcutr_cli::init_tracing();
    match cli.command {
        Command::Relay { relay, fixture } => {
            let config = RelayConfig {
                delay: Duration::from_millis(fixture.delay_ms),
                cut_after_bytes: fixture.cut_after_bytes,
                ..RelayConfig::default()
            };
            if let Some(n) = fixture.cut_after_bytes {
                tracing::warn!("fault injection: every relayed stream is cut after {n} bytes");
            }
            dcutr_cli::block_on_reporting(relay.json, dcutr_cli::run_relay(&relay, config))
        }
        Command::Peer {
            peer,
            runtime,
            max_attempts,
        } => {
            let json = peer.json;
            let limit = move |plan: &mut Plan| {
                if let Some(max) = max_attempts {
                    plan.limit_attempts(max);
                }
            };
            dcutr_block(json, peer, runtime, limit)
        }
    }
}

/// `dcutr peer` on `runtime`, with `fixture` applied to the plan first.
fn dcutr_block(
    json: bool,
    peer: dcutr_cli::PeerArgs,
    runtime: Runtime,
    fixture: impl FnOnce(&mut Plan) + Send + 'static,
) -> ExitCode {
    dcutr_cli::block_on_reporting(json, async move {
        peer::run_on(peer, move |mut plan, relay| async move {
            fixture(&mut plan);
            match runtime {
                Runtime::Tokio => peer::upgrade_on_tokio(plan, relay).await,
                rt => on_async_io(rt, plan, relay).await,
            }
        })
        .await
    })
}

/// The upgrade and its proof on smol or async-std, on a thread of their
/// own; the relayed stream moves there with the bytes that already arrived
/// behind the `paired` line.
async fn on_async_io(rt: Runtime, plan: Plan, relay: RelayedStream) -> anyhow::Result<Finished> {
    let buffered = relay.buffer().to_vec();
    let relay = relay.into_inner().into_std()?;
    tokio::task::spawn_blocking(move || {
        let run = async move {
            let (reporter, side) = (plan.reporter(), plan.side());
            let relay = Prefixed::new(buffered, async_net::TcpStream::try_from(relay)?);
            let (options, endpoint) = plan.options(async_io::Async::new, |udp| match rt {
                Runtime::AsyncStd => dcutr_async_std::quic_socket_async_std(udp),
                _ => dcutr_async_std::quic_socket_smol(udp),
            })?;
            let result = dcutr_async_std::upgrade(relay, options).await.map(|up| {
                up.map(
                    |tcp| {
                        let _ = tcp.set_nodelay(true);
                        tcp
                    },
                    |tls| {
                        let _ = tls.get_ref().0.set_nodelay(true);
                        tls
                    },
                    |relay| relay,
                )
            });
            peer::conclude(result, endpoint, reporter, side).await
        };
        match rt {
            Runtime::AsyncStd => async_std::task::block_on(run),
            _ => smol::block_on(run),
        }
    })
    .await?
}

/// A stream whose first bytes were already read into a buffer elsewhere
/// (behind the rendezvous `paired` line): serves them first.
struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: futures_io::AsyncRead + Unpin> futures_io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.offset < this.prefix.len() {
            let n = buf.len().min(this.prefix.len() - this.offset);
            buf[..n].copy_from_slice(&this.prefix[this.offset..this.offset + n]);
            this.offset += n;
            return std::task::Poll::Ready(Ok(n));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: futures_io::AsyncWrite + Unpin> futures_io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}
