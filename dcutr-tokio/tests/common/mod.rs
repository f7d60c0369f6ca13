//! Loopback peers for the end-to-end tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use dcutr_tokio::{AddressPolicy, Candidate, Config, Options, Side, Transport};

/// A config for two peers on one machine: loopback allowed, short
/// timeouts so failure paths end quickly.
pub fn loopback_config() -> Config {
    Config {
        address_policy: AddressPolicy::permissive(),
        direct_timeout: Duration::from_secs(2),
        relay_grace_period: Duration::from_millis(300),
        ..Config::default()
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Options for one loopback peer punching over `transport`, and the
/// address it advertises.
pub fn peer(side: Side, transport: Transport, config: Config) -> (Options, SocketAddr) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let options = Options::new(side).config(config);
    match transport {
        Transport::Tcp => {
            let listener = dcutr_tokio::tcp_listener(any).unwrap();
            let addr = listener.local_addr().unwrap();
            (
                options.local_addrs([Candidate::tcp(addr)]).tcp(listener),
                addr,
            )
        }
        Transport::Quic => {
            let socket = dcutr_tokio::udp_socket(any).unwrap();
            let quic = dcutr_tokio::quic_socket(socket).unwrap();
            let addr = quic.local_addr().unwrap();
            (
                options.local_addrs([Candidate::quic(addr)]).quic(quic),
                addr,
            )
        }
    }
}

/// A relayed stream: two ends of a loopback TCP connection (what a
/// splicing relay gives each peer).
pub async fn relayed_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (a.unwrap(), b.unwrap().0)
}

/// What one upgrade over a loopback relayed stream gives.
pub type Outcome = Result<
    dcutr_tokio::Upgraded<tokio::net::TcpStream>,
    dcutr_tokio::UpgradeError<tokio::net::TcpStream>,
>;

/// Upgrades B (`b`) and A (`a`) against each other over a fresh relayed
/// pair, both at once; panics if that takes longer than `limit`.
pub async fn upgrade_pair(b: Options, a: Options, limit: Duration) -> (Outcome, Outcome) {
    let (relay_b, relay_a) = relayed_pair().await;
    tokio::time::timeout(limit, async {
        tokio::join!(
            dcutr_tokio::upgrade(relay_b, b),
            dcutr_tokio::upgrade(relay_a, a)
        )
    })
    .await
    .expect("both upgrades finish in time")
}

/// Runs an upgrade with `options` against a peer that writes only garbage,
/// and returns its error, which must be a protocol error.
pub async fn upgrade_against_garbage(
    options: Options,
) -> dcutr_tokio::UpgradeError<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let (ours, mut theirs) = relayed_pair().await;
    theirs.write_all(&[0xff; 64]).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(60), dcutr_tokio::upgrade(ours, options))
        .await
        .unwrap()
        .expect_err("garbage cannot upgrade");
    assert!(
        matches!(
            error.reason,
            dcutr_tokio::UpgradeFailure::Failed(dcutr_tokio::Failure::Protocol(_))
        ),
        "{:?}",
        error.reason
    );
    error
}
