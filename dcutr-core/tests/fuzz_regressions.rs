//! scratch
use dcutr_core::{Config, Event, Outcome, Output};
use dcutr_sim::{Sim, SimConfig};
use std::time::Duration;

#[test]
fn scratch_both_transports() {
    for cfg in [Config::default(), Config::shared_stream()] {
        let sc = SimConfig::two_nats(&cfg, Duration::from_millis(50), Duration::from_millis(10));
        let mut sim = Sim::new(sc);
        assert!(sim.run(Duration::from_secs(300)));
        println!("{:?}", sim.outcomes());
        for r in &sim.log {
            if matches!(
                r.output,
                Output::Dial(_) | Output::CloseDirect { .. } | Output::Event(Event::Upgraded(_))
            ) {
                println!("{:?} {:?} {:?}", r.at, r.side, r.output);
            }
        }
    }
}

#[test]
fn scratch_stream_open_spam() {
    use dcutr_core::{Candidate, Side, Upgrade};
    let t0 = dcutr_sim::epoch();
    let mut up = Upgrade::builder(Side::Responder, Config::default(), [1; 32])
        .local_addrs([Candidate::tcp("198.51.100.1:1".parse().unwrap())])
        .start(t0)
        .unwrap();
    while up.poll_output().is_some() {}
    for i in 0..100u64 {
        let now = t0 + Duration::from_secs(9 * i);
        up.handle_timeout(now);
        up.handle_stream_opened(now);
        while let Some(o) = up.poll_output() {
            if i < 3 || i > 97 {
                println!("{i} {o:?}");
            }
        }
    }
    println!("{:?} {:?}", up.outcome(), up.poll_timeout());
}
