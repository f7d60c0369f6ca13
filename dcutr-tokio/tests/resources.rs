//! Nothing leaks: after an upgrade ends (or is dropped half-way), every
//! socket it opened is closed and no task it caused is left running.
//!
//! One test in its own binary, so no other test's sockets are counted.

mod common;

use std::time::Duration;

use common::*;
use dcutr_tokio::{Side, Transport};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits (bounded) until `f` holds; resources are released by the
/// runtime a few polls after the last handle drops.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn one_pair(transport: Transport, cancel_after_punch: bool) {
    let (relay_b, relay_a) = relayed_pair().await;
    let (b, _) = peer(Side::Initiator, transport, loopback_config());
    let (a, _) = peer(Side::Responder, transport, loopback_config());
    let (punched_tx, punched) = tokio::sync::oneshot::channel();
    let mut punched_tx = Some(punched_tx);
    let a = a.on_event(move |event, _| {
        if matches!(event, dcutr_tokio::Event::Punch { .. })
            && let Some(tx) = punched_tx.take()
        {
            let _ = tx.send(());
        }
    });
    let both = async {
        tokio::join!(
            dcutr_tokio::upgrade(relay_b, b),
            dcutr_tokio::upgrade(relay_a, a)
        )
    };
    if cancel_after_punch {
        tokio::select! {
            _ = both => {}
            _ = punched => {} // drops both upgrades mid-punch
        }
    } else {
        let (b, a) = both.await;
        let (b, a) = (b.unwrap(), a.unwrap());
        drop((b, a));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_leave_no_socket_and_no_task_behind() {
    init_tracing();
    // Warm the runtime and the resolver paths once.
    one_pair(Transport::Tcp, false).await;
    let fds = open_fds();
    let tasks = alive_tasks();
    for transport in [Transport::Tcp, Transport::Quic] {
        for cancel in [false, true] {
            for _ in 0..3 {
                one_pair(transport, cancel).await;
            }
            eventually(
                &format!(
                    "{transport} cancel={cancel}: sockets {} -> {}",
                    fds,
                    open_fds()
                ),
                || open_fds() <= fds,
            )
            .await;
            eventually(
                &format!(
                    "{transport} cancel={cancel}: tasks {} -> {}",
                    tasks,
                    alive_tasks()
                ),
                || alive_tasks() <= tasks,
            )
            .await;
        }
    }
}
