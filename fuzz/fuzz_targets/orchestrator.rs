//! Whole upgrades between two honest cores in the simulated relay/NAT
//! world, with arbitrary delays, seeds, blocked attempts, NATs,
//! transports and strangers; see `dcutr_fuzz::world` for the invariants.
#![no_main]

use dcutr_fuzz::input::WorldCase;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|case: WorldCase| {
    let _ = dcutr_fuzz::world::run(&case.world());
});
