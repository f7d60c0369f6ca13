//! When filtering leaves nothing to send or nothing to dial: the attempt
//! fails locally, with a reason that names the policy and its fix, and no
//! retry is spent where none could help.

mod common;

use common::{connect_frame, drain, t0, tcp};
use dcutr_core::{
    AttemptFailure, Config, Failure, Outcome, Output, Side, Upgrade, filter::AddrRejection,
};

fn with_addrs(side: Side, addrs: &[&str]) -> Upgrade {
    Upgrade::builder(side, Config::default(), [3; 32])
        .local_addrs(addrs.iter().map(|a| tcp(a)))
        .start(t0())
        .unwrap()
}

fn wrote_a_connect(outputs: &[Output]) -> bool {
    outputs.iter().any(|o| matches!(o, Output::WriteStream(_)))
}

#[test]
fn an_initiator_with_only_loopback_addresses_gives_up_before_opening_a_stream() {
    let mut b = with_addrs(Side::Initiator, &["127.0.0.1:4001"]);
    let outputs = drain(&mut b);
    assert!(
        !outputs.iter().any(|o| matches!(o, Output::OpenStream)),
        "{outputs:?}"
    );
    assert!(!wrote_a_connect(&outputs));
    let Some(Outcome::Failed(Failure::GaveUp { attempts })) = b.outcome() else {
        panic!("{:?}", b.outcome());
    };
    let [AttemptFailure::NothingToSend { dropped }] = attempts.as_slice() else {
        panic!("{attempts:?}");
    };
    assert_eq!(dropped.get(AddrRejection::Loopback), 1);
    let text = b.outcome().map(|_| attempts[0].to_string()).unwrap();
    assert!(
        text.contains("AddressPolicy::permissive()") && text.contains("1 loopback or private"),
        "the reason names the policy and the fix: {text}"
    );
    assert!(b.is_finished());
}

#[test]
fn an_initiator_that_knows_no_address_at_all_says_so_without_a_policy_hint() {
    let mut b = with_addrs(Side::Initiator, &[]);
    drain(&mut b);
    let Some(Outcome::Failed(Failure::GaveUp { attempts })) = b.outcome() else {
        panic!("{:?}", b.outcome());
    };
    assert_eq!(attempts[0].to_string(), "no address of ours to send");
}

#[test]
fn a_responder_with_nothing_to_send_gives_up_at_once_and_refuses_streams() {
    let mut a = with_addrs(Side::Responder, &["192.168.1.5:4001"]);
    drain(&mut a);
    let Some(Outcome::Failed(Failure::GaveUp { attempts })) = a.outcome() else {
        panic!("{:?}", a.outcome());
    };
    let [AttemptFailure::NothingToSend { dropped }] = attempts.as_slice() else {
        panic!("{attempts:?}");
    };
    assert_eq!(dropped.get(AddrRejection::Private), 1);
    // The initiator's stream is refused: no empty Connect, ever.
    a.handle_stream_opened(t0());
    let outputs = drain(&mut a);
    assert_eq!(outputs, vec![Output::ResetStream]);
    a.handle_stream_data(t0(), &connect_frame(&[tcp("198.51.100.7:4001")]));
    assert!(!wrote_a_connect(&drain(&mut a)));
}

#[test]
fn an_initiator_with_nothing_to_dial_sends_sync_and_gives_up_without_retries() {
    let mut b = with_addrs(Side::Initiator, &["198.51.100.9:4001"]);
    drain(&mut b);
    b.handle_stream_opened(t0());
    drain(&mut b);
    let peer = [tcp("127.0.0.1:5001"), tcp("10.0.0.2:5001")];
    b.handle_stream_data(t0(), &connect_frame(&peer));
    let outputs = drain(&mut b);
    assert!(
        wrote_a_connect(&outputs),
        "Sync goes out: the peer may punch"
    );
    assert!(
        !outputs.iter().any(|o| matches!(o, Output::OpenStream)),
        "no second attempt: {outputs:?}"
    );
    b.handle_timeout(t0());
    let outputs = drain(&mut b);
    assert!(!outputs.iter().any(|o| matches!(o, Output::OpenStream)));
    let Some(Outcome::Failed(Failure::GaveUp { attempts })) = b.outcome() else {
        panic!("{:?}", b.outcome());
    };
    let [AttemptFailure::NothingToDial { received, dropped }] = attempts.as_slice() else {
        panic!("{attempts:?}");
    };
    assert_eq!(*received, 2);
    assert_eq!(dropped.get(AddrRejection::Loopback), 1);
    assert_eq!(dropped.get(AddrRejection::Private), 1);
}

/// Found by fuzzing (`upgrade_initiator`): an initiator with nothing of its
/// own to send but the peer's public address still dials it, and the
/// dial can win while the upgrade drains; nothing is emitted after the
/// outcome.
#[test]
fn with_nothing_to_send_the_unilateral_dial_still_runs_and_can_win() {
    let peer = tcp("198.51.100.7:4001");
    let mut b = Upgrade::builder(Side::Initiator, Config::default(), [3; 32])
        .local_addrs([tcp("127.0.0.1:4001")])
        .remote_public_addrs([peer])
        .start(t0())
        .unwrap();
    let outputs = drain(&mut b);
    let dial = outputs
        .iter()
        .find_map(|o| match o {
            Output::Dial(d) => Some(*d),
            _ => None,
        })
        .expect("the unilateral dial leaves");
    assert_eq!(dial.to, peer);
    assert!(
        !outputs.iter().any(|o| matches!(o, Output::OpenStream)),
        "no attempt: nothing to send"
    );
    assert!(b.outcome().is_none(), "draining while the dial runs");
    b.handle_dial_succeeded(t0(), dial.id);
    let after = drain(&mut b);
    assert!(matches!(b.outcome(), Some(Outcome::Upgraded(up)) if up.attempt == 0));
    let decided = after
        .iter()
        .position(|o| matches!(o, Output::Event(dcutr_core::Event::Upgraded(_))))
        .unwrap();
    assert!(
        after[decided + 1..]
            .iter()
            .all(|o| !matches!(o, Output::Event(_))),
        "no event after the outcome: {after:?}"
    );
}
