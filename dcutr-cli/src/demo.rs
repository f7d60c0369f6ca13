//! `dcutr demo`: a relay and two peers on loopback, in one process.
//!
//! The relay holds each forwarded chunk for half the chosen RTT, so the
//! relayed path is slow and the direct one fast, as in the field. Both
//! peers skip the unilateral dial (on loopback every address looks
//! public) so the demo shows the hole punch itself: the exchange, the
//! Sync timing, the crossing dials, the identity check. The two peers
//! pair with a fresh code, as two people would, and the direct
//! connections run mutual TLS pinned to the fingerprints the code
//! authenticated.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use crate::relay::{self, RelayConfig, RelayListener};
use crate::report::Reporter;
use crate::{DemoArgs, PeerArgs, ReachFlags, peer};

/// Runs the demo; exit code 0 when both transports upgraded.
///
/// # Errors
/// When the relay or a peer cannot start.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let listener = RelayListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let relay_addr = listener.local_addr()?;
    let config = RelayConfig {
        delay: Duration::from_millis(args.rtt_ms / 2),
        ..RelayConfig::default()
    };
    let relay = tokio::spawn(relay::run(listener, config));
    println!(
        "dcutr demo: relay on {relay_addr} adding {} ms each way (relayed RTT ~{} ms); \
         two peers on loopback, which has no NAT (the NAT lab has real ones)\n",
        args.rtt_ms / 2,
        args.rtt_ms,
    );
    let mut summary = Vec::new();
    for transport in ["tcp", "quic"] {
        println!("== {} ==", transport.to_uppercase());
        // The pairing code B would print and A would type.
        let code = crate::pairing::Code::generate()?;
        let b = peer_args(relay_addr, transport, Some(code.clone()), None);
        let a = peer_args(relay_addr, transport, None, Some(code));
        let b = tokio::spawn(peer::session(b, Reporter::prefixed("  B | ")));
        // B registers first; A asks for it (the relay waits for B if needed).
        let a = peer::session(a, Reporter::prefixed("  A | ")).await;
        let b = b.await?;
        let (a, b) = (a?, b?);
        println!();
        summary.push((transport, b, a));
    }
    relay.abort();

    println!("== summary ==");
    println!(
        "  transport  upgraded  relayed RTT  direct RTT  time to direct (B)  bound 1.5R+D  ratio"
    );
    let mut all_ok = true;
    for (transport, b, a) in &summary {
        all_ok &= b.ok && a.ok;
        let bound = match (b.rtt_ms, b.direct_rtt_ms) {
            (Some(r), Some(d)) => Some(1.5 * r + d),
            _ => None,
        };
        let ratio = match (b.time_to_direct_ms, bound) {
            (Some(t), Some(bound)) if bound > 0.0 => format!("{:.2}", t / bound),
            _ => "-".to_owned(),
        };
        println!(
            "  {:<9}  {:<8}  {:>11}  {:>10}  {:>18}  {:>12}  {ratio}",
            transport,
            if b.ok && a.ok { "yes" } else { "no" },
            fmt(b.rtt_ms),
            fmt(b.direct_rtt_ms),
            fmt(b.time_to_direct_ms),
            fmt(bound),
        );
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::report::EXIT_UPGRADE_FAILED)
    })
}

fn fmt(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"))
}

fn peer_args(
    relay: SocketAddr,
    transport: &str,
    code: Option<crate::pairing::Code>,
    connect: Option<crate::pairing::Code>,
) -> PeerArgs {
    let (tcp, quic) = match transport {
        "tcp" => (Some(0), None),
        _ => (None, Some(0)),
    };
    PeerArgs {
        relay,
        code,
        connect,
        tcp,
        quic,
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        json: false,
        stun: Vec::new(),
        reach: ReachFlags {
            allow_private: false,
            allow_loopback: true,
            no_unilateral: true,
        },
    }
}
