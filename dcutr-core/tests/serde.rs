//! The JSON shape of reports (feature `serde`): pinned on a real upgrade
//! in the simulator, so a change of shape is a deliberate one.

use std::time::Duration;

use dcutr_core::{Config, Event, Outcome, Output, Transport};
use dcutr_sim::{INITIATOR, Sim, SimConfig};
use serde_json::{Value, json};

fn upgraded_sim() -> Sim {
    let cfg = SimConfig::two_nats(
        &Config::default(),
        Duration::from_millis(50),
        Duration::from_millis(10),
    )
    .only(Transport::Tcp);
    let mut sim = Sim::new(cfg);
    assert!(sim.run(Duration::from_secs(60)));
    sim
}

#[test]
fn an_outcome_says_ok_and_names_the_connection() {
    let sim = upgraded_sim();
    let Some(outcome @ Outcome::Upgraded(up)) = sim.outcomes().0 else {
        panic!("{:?}", sim.outcomes());
    };
    let value = serde_json::to_value(outcome).unwrap();
    assert_eq!(
        value,
        json!({
            "ok": true,
            "upgraded": {
                "id": up.id.0,
                "transport": "tcp",
                "remote": up.remote.to_string(),
                "role": "server",
                "attempt": 1,
            }
        })
    );
}

#[test]
fn events_carry_their_kind_and_fields_in_milliseconds() {
    let sim = upgraded_sim();
    let rtt = sim
        .log
        .iter()
        .find_map(|r| match &r.output {
            Output::Event(e @ Event::RttMeasured { .. }) => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        serde_json::to_value(&rtt).unwrap(),
        json!({"event": "rtt_measured", "attempt": 1, "rtt_ms": 100.0})
    );
}

#[test]
fn a_timeline_counts_milliseconds_from_its_start() {
    let sim = upgraded_sim();
    let value = serde_json::to_value(sim.upgrade(INITIATOR).timeline()).unwrap();
    let attempt = &value["attempts"][0];
    assert_eq!(attempt["number"], json!(1));
    assert_eq!(attempt["rtt_ms"], json!(100.0));
    // Sync leaves one relayed round trip in, the punch half a round trip later.
    assert_eq!(attempt["sync_ms"], json!(100.0));
    assert_eq!(attempt["punch_ms"], json!(150.0));
    let dial = &value["dials"][0];
    assert_eq!(dial["purpose"], json!("hole_punch"));
    assert_eq!(dial["result"], json!({"result": "won"}));
    assert_eq!(value["decided_ms"], attempt["ended_ms"]);
}

#[test]
fn a_failure_is_a_kind_a_message_and_its_data() {
    let failure = dcutr_core::AttemptFailure::NothingToDial {
        received: 2,
        dropped: Default::default(),
    };
    let value: Value = serde_json::to_value(&failure).unwrap();
    assert_eq!(value["kind"], json!("nothing_to_dial"));
    assert_eq!(value["received"], json!(2));
    assert_eq!(value["message"], json!(failure.to_string()));
}
