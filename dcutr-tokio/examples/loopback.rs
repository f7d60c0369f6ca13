//! Two peers in one process upgrade a relayed stream to a direct,
//! pinned-TLS connection on loopback, and say hello over it.
//!
//! ```text
//! cargo run -p dcutr-tokio --example loopback          # TCP
//! cargo run -p dcutr-tokio --example loopback -- quic  # QUIC
//! ```
//!
//! In a real program each peer runs in its own process behind its own
//! NAT: the relayed stream comes from your rendezvous (a splicing relay, a
//! libp2p circuit), and `local_addrs` are the addresses that rendezvous
//! observed for the punch port. Here a loopback TCP connection stands in
//! for the relay, and the address policy allows loopback, which the
//! default refuses (a peer must not aim our dials at our own host).

use std::net::SocketAddr;
use std::time::Duration;

use dcutr_tokio::{AddressPolicy, Candidate, Config, Direct, Options, Side, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the example waits for both upgrades before it gives up.
const UPGRADE_LIMIT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transport = match std::env::args().nth(1).as_deref() {
        None | Some("tcp") => Transport::Tcp,
        Some("quic") => Transport::Quic,
        Some(other) => return Err(format!("unknown transport {other:?}: tcp or quic").into()),
    };

    // Both ends of a "relayed" stream.
    let relay = TcpListener::bind("127.0.0.1:0").await?;
    let (b_relayed, a_relayed) =
        tokio::join!(TcpStream::connect(relay.local_addr()?), relay.accept());
    let (b_relayed, a_relayed) = (b_relayed?, a_relayed?.0);

    // B received the relayed connection and starts DCUtR (the initiator);
    // A answers. The config is `Config::default()` with loopback allowed:
    // the driver runs the dcutr-rs session (one shared stream, pinned TLS)
    // itself.
    let b = options(Side::Initiator, transport)?;
    let a = options(Side::Responder, transport)?;
    let (b, a) = tokio::time::timeout(UPGRADE_LIMIT, async {
        tokio::join!(
            dcutr_tokio::upgrade(b_relayed, b),
            dcutr_tokio::upgrade(a_relayed, a)
        )
    })
    .await?;
    let (mut b, mut a) = (b?, a?);
    println!(
        "B: direct {} connection to {} as {} after {} attempt(s)",
        b.transport,
        b.remote,
        b.role,
        b.report.attempts()
    );
    println!(
        "A: direct {} connection to {} as {}",
        a.transport, a.remote, a.role
    );

    match (&mut a.connection, &mut b.connection) {
        (Direct::Tls(a), Direct::Tls(b)) => {
            a.write_all(b"hello from A").await?;
            let mut buf = [0u8; 12];
            b.read_exact(&mut buf).await?;
            println!("B read {:?} over TLS", String::from_utf8_lossy(&buf));
        }
        (Direct::Quic(a), Direct::Quic(b)) => {
            let (mut send, _recv) = a.open_bi().await?;
            send.write_all(b"hello from A").await?;
            send.finish()?;
            let (_send, mut recv) = b.accept_bi().await?;
            let got = recv.read_to_end(64).await?;
            println!("B read {:?} over QUIC", String::from_utf8_lossy(&got));
        }
        _ => return Err("the two sides hold different transports".into()),
    }
    Ok(())
}

/// One peer's options: a punch socket on loopback, and that address as
/// the one "observed" for it.
fn options(side: Side, transport: Transport) -> std::io::Result<Options> {
    let config = Config {
        address_policy: AddressPolicy::permissive(),
        ..Config::default()
    };
    let any: SocketAddr = "127.0.0.1:0".parse().expect("a socket address");
    let options = Options::new(side).config(config);
    Ok(match transport {
        Transport::Tcp => {
            let listener = dcutr_tokio::tcp_listener(any)?;
            let observed = Candidate::tcp(listener.local_addr()?);
            options.local_addrs([observed]).tcp(listener)
        }
        Transport::Quic => {
            let quic = dcutr_tokio::quic_socket(dcutr_tokio::udp_socket(any)?)?;
            let observed = Candidate::quic(quic.local_addr()?);
            options.local_addrs([observed]).quic(quic)
        }
    })
}
