//! The responder's state machine (spec A) driven by an arbitrary sequence
//! of timestamped inputs; see `dcutr_fuzz::driver` for the invariants.
#![no_main]

use dcutr_core::Side;
use dcutr_fuzz::driver::Driver;
use dcutr_fuzz::input::UpgradeCase;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|case: UpgradeCase| {
    let mut driver = Driver::new(case.setup(Side::Responder), dcutr_sim::epoch());
    driver.run(&case.steps());
});
