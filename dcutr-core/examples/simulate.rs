//! Two dcutr-core upgrades across a simulated relay: prints the timeline
//! of a TCP and a QUIC hole punch. No network, no root, no sleeping.
//!
//! ```text
//! cargo run -p dcutr-core --example simulate [-- RTT_MS]
//! ```

use std::time::Duration;

use dcutr_core::{Config, Event, Outcome, Output, Side, Transport};
use dcutr_sim::{Protocol, Record, Sim, SimConfig};

fn describe(record: &Record) -> Option<String> {
    let who = match record.side {
        Side::Initiator => "B (initiator)",
        Side::Responder => "A (responder)",
    };
    let what = match &record.output {
        Output::OpenStream => "opens a /libp2p/dcutr stream".to_owned(),
        Output::WriteStream(bytes) => format!("writes {} bytes to the relayed stream", bytes.len()),
        Output::FinishStream => "finishes the stream".to_owned(),
        Output::Dial(d) => format!("dials {} as {} (attempt {})", d.to, d.role, d.attempt),
        Output::SendDatagram { to, payload } => {
            format!("sprays {} random bytes to {to}", payload.bytes().len())
        }
        Output::WriteDirect { id, data } if data.len() == 1 => {
            format!("selects connection {id} (select byte)")
        }
        Output::WriteDirect { id, data } => {
            format!("sends its {}-byte identity check on {id}", data.len())
        }
        Output::CloseRelay => "closes the relayed connection (grace period over)".to_owned(),
        Output::Event(Event::RttMeasured { rtt, .. }) => format!("measures RTT {rtt:?}"),
        Output::Event(Event::SyncSent { .. }) => "sends Sync, waits RTT/2".to_owned(),
        Output::Event(Event::SyncReceived { .. }) => "receives Sync, punches now".to_owned(),
        Output::Event(Event::RemoteAddrs { accepted, .. }) => {
            let list: Vec<String> = accepted.iter().map(ToString::to_string).collect();
            format!("learns the peer's addresses: {}", list.join(", "))
        }
        Output::Event(Event::Upgraded(up)) => format!(
            "UPGRADED: direct {} connection to {} as {}",
            up.transport, up.remote, up.role
        ),
        Output::Event(Event::Failed(f)) => format!("FAILED: {f}"),
        Output::Event(Event::AttemptStarted { attempt }) => format!("starts attempt {attempt}"),
        _ => return None,
    };
    Some(format!(
        "  t={:>7.1} ms  {who:<14} {what}",
        record.at.as_secs_f64() * 1e3
    ))
}

fn main() {
    let rtt_ms: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let rtt = Duration::from_millis(rtt_ms);
    let direct_one_way = Duration::from_millis(15);
    println!(
        "DCUtR over a simulated relay: relayed RTT {rtt_ms} ms, direct RTT {} ms",
        2 * direct_one_way.as_millis()
    );
    println!("both peers behind firewalled NATs; time is simulated, nothing sleeps\n");
    for transport in [Transport::Tcp, Transport::Quic] {
        println!("== {} ==", transport.to_string().to_uppercase());
        let cfg = SimConfig::two_nats(&Config::default(), rtt / 2, direct_one_way)
            .protocol(Protocol::Session)
            .only(transport);
        let mut sim = Sim::new(cfg);
        let finished = sim.run(Duration::from_secs(120));
        let mut sprays = 0;
        for record in &sim.log {
            if matches!(record.output, Output::SendDatagram { .. }) {
                sprays += 1;
                if sprays > 2 {
                    continue;
                }
            }
            if let Some(line) = describe(record) {
                println!("{line}");
            }
        }
        if sprays > 2 {
            println!("  ({sprays} spray datagrams in all)");
        }
        let timeline = sim.upgrade(dcutr_sim::INITIATOR).timeline();
        if let (Some(Outcome::Upgraded(_)), Some(ttd)) = (
            sim.upgrade(dcutr_sim::INITIATOR).outcome(),
            timeline.since_last_connect(),
        ) {
            let bound = rtt.mul_f64(1.5) + 2 * direct_one_way;
            println!(
                "  time to direct (B, from its Connect, identity check included): {:.1} ms",
                ttd.as_secs_f64() * 1e3
            );
            println!(
                "  bound 1.5*R + D = {:.1} ms; ratio {:.2}",
                bound.as_secs_f64() * 1e3,
                ttd.as_secs_f64() / bound.as_secs_f64()
            );
        }
        println!("  finished: {finished}\n");
    }
}
