//! The session handshake carries each side's role: two initiators or two
//! responders fail at once, with a typed error on both ends, instead of
//! both "upgrading" or both waiting out the step timeout.

mod common;

use common::{drain, t0, tcp};
use dcutr_core::{Config, Failure, Outcome, Output, ProtocolError, Side, Upgrade};

fn peer(side: Side, seed: u8, addr: &str) -> Upgrade {
    Upgrade::builder(side, Config::default(), [seed; 32])
        .dcutr_session([seed; 32])
        .local_addrs([tcp(addr)])
        .start(t0())
        .unwrap()
}

/// Carries each end's stream bytes to the other until both are quiet.
fn wire(x: &mut Upgrade, y: &mut Upgrade) {
    for _ in 0..16 {
        let (to_y, to_x) = (drain(x), drain(y));
        if to_y.is_empty() && to_x.is_empty() {
            return;
        }
        for (outputs, target) in [(to_y, &mut *y), (to_x, &mut *x)] {
            for out in outputs {
                if let Output::WriteStream(bytes) = out {
                    target.handle_stream_data(t0(), &bytes);
                }
            }
        }
    }
    panic!("the two ends kept talking");
}

fn same_side_on_both(side: Side) {
    let mut x = peer(side, 1, "198.51.100.1:4001");
    let mut y = peer(side, 2, "198.51.100.2:4001");
    wire(&mut x, &mut y);
    for up in [&x, &y] {
        assert_eq!(
            up.outcome(),
            Some(&Outcome::Failed(Failure::Protocol(
                ProtocolError::SameSide { ours: side }
            ))),
            "{side}"
        );
        assert!(up.is_finished(), "decided at once, no timer left");
    }
    let text = ProtocolError::SameSide { ours: side }.to_string();
    assert!(text.contains("one must be the initiator"), "{text}");
}

#[test]
fn two_initiators_fail_on_both_ends_with_same_side() {
    same_side_on_both(Side::Initiator);
}

#[test]
fn two_responders_fail_on_both_ends_with_same_side() {
    same_side_on_both(Side::Responder);
}

#[test]
fn an_initiator_and_a_responder_pass_the_side_check() {
    let mut b = peer(Side::Initiator, 1, "198.51.100.1:4001");
    let mut a = peer(Side::Responder, 2, "198.51.100.2:4001");
    wire(&mut b, &mut a);
    assert_eq!(a.outcome(), None);
    assert_eq!(b.outcome(), None);
}
