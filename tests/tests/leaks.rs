//! No runtime leaks sockets: after upgrades end, the process holds the same
//! file descriptors as before. One test in its own binary, so no other
//! test's sockets are counted.

use std::time::Duration;

use dcutr_conformance::*;
use dcutr_core::{Side, Transport};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn pair(rt: Rt, transport: Transport) {
    let (rb, ra) = relayed_pair();
    let (b, a) = run_pair(
        rt,
        Job::new(Side::Initiator, transport, rb),
        rt,
        Job::new(Side::Responder, transport, ra),
    );
    assert!(
        b.data_ok && a.data_ok,
        "{rt:?} {transport}: upgraded and talked"
    );
}

#[test]
fn no_runtime_leaks_sockets() {
    // Warm each runtime's lazily started threads and reactors once.
    for rt in Rt::ALL {
        pair(rt, Transport::Quic);
    }
    let baseline = open_fds();
    for rt in Rt::ALL {
        for transport in [Transport::Tcp, Transport::Quic] {
            for _ in 0..3 {
                pair(rt, transport);
            }
            // Background endpoint tasks close their sockets a moment after
            // their last handle drops.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while open_fds() > baseline {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{rt:?} {transport}: {} descriptors open, {baseline} before",
                    open_fds()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
