//! Our log lines carry stock's target, `libp2p_dcutr`: the filter users
//! already have, `RUST_LOG=libp2p_dcutr=debug`, shows the whole upgrade.

use std::io;
use std::sync::{Arc, Mutex};

use crate::common::{Dcutr, Net, Seen, Who, build_client_on, loopback_config, setup_on};

/// A log sink the test can read back.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn rust_log_libp2p_dcutr_debug_shows_our_upgrade() {
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("libp2p_dcutr=debug"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // This thread only: the test runtime runs every task of both swarms
    // on it.
    let _guard = tracing::subscriber::set_default(subscriber);
    let a = build_client_on(Net::Tcp, Dcutr::Ours(loopback_config()));
    let b = build_client_on(
        Net::Tcp,
        Dcutr::Ours(loopback_config().with_unilateral(false)),
    );
    let mut pair = setup_on(Net::Tcp, a, b).await;
    pair.dial_relayed();
    let mut seen = Seen::default();
    pair.run_until(&mut seen, "both outcomes", |s| {
        s.ours_ok(Who::A).is_some() && s.ours_ok(Who::B).is_some()
    })
    .await;
    let text = sink.text();
    for line in [
        "libp2p_dcutr: dcutr upgrade started",
        "libp2p_dcutr: direct dial",
        "libp2p_dcutr: dcutr event",
        "Upgraded(",
    ] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }
    // Nothing else passes that filter: the core's own lines stay under
    // `dcutr_core`, libp2p's under their crates.
    for line in text.lines() {
        assert!(line.contains(" libp2p_dcutr: "), "{line}");
    }
}
