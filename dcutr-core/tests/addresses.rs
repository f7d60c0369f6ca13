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
