//! Finding 3 of issue 12, played over real loopback sockets: a man in the
//! middle sits at the addresses the peers advertised (a stale mapping,
//! another host behind the same NAT, a predicted port). Each dial to it,
//! it answers, and it dials the other side's real punch port itself, to
//! relay between the two. With the bearer token of v1 it read the token
//! on one leg, replayed it on the other and became the direct connection
//! of both sides. With pinned mutual TLS both sides refuse it with
//! `DirectRejection::IdentityMismatch`, and it reads no byte of plaintext.

mod common;
mod strangers;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use dcutr_core::reason::DirectRejection;
use dcutr_tokio::{Candidate, Event, Options, Side, UpgradeFailure};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::compat::TokioAsyncReadCompatExt;

const TEST_LIMIT: Duration = Duration::from_secs(30);

/// How long the attacker waits to see whether the victim on a leg speaks
/// first (and so is the TLS client there).
const PEEK_FOR: Duration = Duration::from_millis(300);

/// How long the attacker tries to read from a victim after a handshake
/// that completed on its side.
const READ_FOR: Duration = Duration::from_secs(1);

/// What the man in the middle achieved.
#[derive(Debug, Default)]
struct Loot {
    /// Legs whose TLS handshake the victim broke off.
    handshakes_refused: usize,
    /// Legs that completed on the attacker's side, which the victim then
    /// closed (with an alert) without a byte of data.
    hung_up: usize,
    /// Legs that completed and stayed open, silent.
    kept_open: usize,
    /// Bytes of plaintext it read from either victim.
    plaintext: usize,
}

type Shared = Arc<Mutex<Loot>>;

/// Accepts every dial on `listener`, dials `forward_to` for each and tries
/// to sit in the middle of the two.
async fn intercept(listener: TcpListener, forward_to: SocketAddr, loot: Shared) {
    while let Ok((victim, _)) = listener.accept().await {
        tokio::spawn(relay_both(victim, forward_to, loot.clone()));
    }
}

/// One relayed dial: TLS with each victim in the role its victim does not
/// take, with the attacker's own certificate, then a read of whatever a
/// victim would send it (the relay the attack is after).
async fn relay_both(first: TcpStream, forward_to: SocketAddr, loot: Shared) {
    let (server, client) = strangers::attacker_tls();
    let Ok(second) = TcpStream::connect(forward_to).await else {
        return;
    };
    // The victim that speaks first is the TLS client on its leg; the
    // victim on the other leg then holds the server's part (the two sides
    // of an upgrade always take opposite roles).
    let (mut p1, mut p2) = ([0u8; 1], [0u8; 1]);
    let first_is_client = tokio::select! {
        Ok(n) = first.peek(&mut p1) => n > 0,
        Ok(n) = second.peek(&mut p2) => n == 0,
        () = tokio::time::sleep(PEEK_FOR) => false,
    };
    let name = rustls::pki_types::ServerName::try_from(strangers::SERVER_NAME)
        .unwrap()
        .to_owned();
    let accept = |tcp: TcpStream| {
        let acceptor = futures_rustls::TlsAcceptor::from(server.clone());
        async move {
            acceptor
                .accept(tcp.compat())
                .await
                .map(futures_rustls::TlsStream::Server)
        }
    };
    let connect = |tcp: TcpStream| {
        let connector = futures_rustls::TlsConnector::from(client.clone());
        let name = name.clone();
        async move {
            connector
                .connect(name, tcp.compat())
                .await
                .map(futures_rustls::TlsStream::Client)
        }
    };
    let (one, two) = if first_is_client {
        tokio::join!(accept(first), connect(second))
    } else {
        tokio::join!(connect(first), accept(second))
    };
    // A TLS 1.3 client finishes its side of the handshake before the
    // server has checked the client's certificate, so a leg where the
    // attacker is the client may look complete: what counts is whether
    // the victim then talks to it.
    for leg in [one, two] {
        let mut stream = match leg {
            Ok(stream) => stream,
            Err(_) => {
                loot.lock().unwrap().handshakes_refused += 1;
                continue;
            }
        };
        use futures_util::AsyncReadExt;
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(READ_FOR, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => loot.lock().unwrap().plaintext += n,
            Ok(_) => loot.lock().unwrap().hung_up += 1,
            Err(_) => loot.lock().unwrap().kept_open += 1,
        }
    }
}

/// The direct connections a side refused, with why and from where.
type Refusals = Arc<Mutex<Vec<(DirectRejection, SocketAddr)>>>;

/// A victim that advertises `advertised` (the attacker's port, and a
/// port that never answers, which keeps its attempt open while the
/// attacker's dials come in) and punches from `listener`.
fn victim(side: Side, listener: TcpListener, advertised: [SocketAddr; 2]) -> (Options, Refusals) {
    let mut config = loopback_config();
    config.max_attempts = 1;
    config.confirm_timeout = Duration::from_secs(3);
    // No priming: on loopback the priming SYNs reach the attacker too,
    // whose relayed legs of them then idle into a confirm timeout: more
    // legs than the ones this test counts.
    config.prime_ttl = None;
    let refusals = Refusals::default();
    let seen = refusals.clone();
    let options = Options::new(side)
        .config(config)
        .local_addrs(advertised.map(Candidate::tcp))
        .tcp(listener)
        .on_event(move |event, _| {
            if let Event::DirectRejected { reason, remote, .. } = event {
                seen.lock().unwrap().push((*reason, *remote));
            }
        });
    (options, refusals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_relaying_both_dials_is_refused_on_both_sides() {
    init_tracing();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let b_listener = dcutr_tokio::tcp_listener(any).unwrap();
    let a_listener = dcutr_tokio::tcp_listener(any).unwrap();
    let (b_addr, a_addr) = (
        b_listener.local_addr().unwrap(),
        a_listener.local_addr().unwrap(),
    );
    // The attacker holds the one address each side advertises.
    let m_as_b = TcpListener::bind(any).await.unwrap();
    let m_as_a = TcpListener::bind(any).await.unwrap();
    let (m_as_b_addr, m_as_a_addr) = (m_as_b.local_addr().unwrap(), m_as_a.local_addr().unwrap());
    // Ports that accept in the kernel and never say a word.
    let silent_b = TcpListener::bind(any).await.unwrap();
    let silent_a = TcpListener::bind(any).await.unwrap();
    let (silent_b_addr, silent_a_addr) = (
        silent_b.local_addr().unwrap(),
        silent_a.local_addr().unwrap(),
    );
    let loot = Shared::default();
    let attacker = [
        tokio::spawn(intercept(m_as_b, b_addr, loot.clone())),
        tokio::spawn(intercept(m_as_a, a_addr, loot.clone())),
    ];

    let (b, b_refused) = victim(Side::Initiator, b_listener, [m_as_b_addr, silent_b_addr]);
    let (a, a_refused) = victim(Side::Responder, a_listener, [m_as_a_addr, silent_a_addr]);
    let (b, a) = upgrade_pair(b, a, TEST_LIMIT).await;
    for task in attacker {
        task.abort();
    }

    // Neither side took the attacker for its peer.
    let b = b.expect_err("B must not upgrade through the attacker");
    let a = a.expect_err("A must not upgrade through the attacker");
    assert!(matches!(b.reason, UpgradeFailure::Failed(_)), "{b}");
    assert!(matches!(a.reason, UpgradeFailure::Failed(_)), "{a}");
    assert!(
        b.relay.is_some() && a.relay.is_some(),
        "the relay stays usable"
    );

    // Each side refused both legs it met, for the attacker's certificate:
    // its own dial to the address the other advertised, and the
    // attacker's dial to its punch port.
    for (name, refused, dialled, silent) in [
        ("B", &b_refused, m_as_a_addr, silent_a_addr),
        ("A", &a_refused, m_as_b_addr, silent_b_addr),
    ] {
        let refused: Vec<_> = refused
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|(_, remote)| *remote != silent)
            .collect();
        assert!(
            refused
                .iter()
                .all(|(reason, _)| *reason == DirectRejection::IdentityMismatch),
            "{name} refused with other reasons: {refused:?}"
        );
        assert!(
            refused.iter().any(|(_, remote)| *remote == dialled),
            "{name} did not refuse its own dial to the attacker: {refused:?}"
        );
        assert!(
            refused.iter().any(|(_, remote)| *remote != dialled),
            "{name} did not refuse the attacker's dial to its port: {refused:?}"
        );
    }
    drop((silent_a, silent_b));

    // The attacker got nowhere: both victims broke off every handshake.
    // The attacker got nowhere: on every leg of both relayed dials the
    // victim broke off the handshake or hung up right after it.
    let legs = |l: &Loot| l.handshakes_refused + l.hung_up + l.kept_open;
    for _ in 0..50 {
        if legs(&loot.lock().unwrap()) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let loot = loot.lock().unwrap();
    assert_eq!(loot.plaintext, 0, "{loot:?}");
    assert_eq!(loot.kept_open, 0, "{loot:?}");
    assert!(
        loot.handshakes_refused + loot.hung_up >= 4,
        "both legs of both dials: {loot:?}"
    );
    assert!(
        loot.handshakes_refused >= 2,
        "the victims that were TLS clients refused the attacker's certificate: {loot:?}"
    );
}

/// The same attack over QUIC: the attacker's endpoint sits at the address
/// B advertised. A dials it; the attacker answers with its own certificate
/// and dials B's real punch port with the same certificate, to relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_over_quic_is_refused_on_both_sides() {
    init_tracing();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let b_quic = dcutr_tokio::quic_socket(dcutr_tokio::udp_socket(any).unwrap()).unwrap();
    let a_quic = dcutr_tokio::quic_socket(dcutr_tokio::udp_socket(any).unwrap()).unwrap();
    let (b_addr, a_addr) = (b_quic.local_addr().unwrap(), a_quic.local_addr().unwrap());
    let (server, _) = strangers::pinned_server_config();
    // On another IP than B's real socket: A learns that socket from B's
    // spray, and would reach B directly (peer-reflexive learning) if B
    // named its IP; naming only the attacker's keeps A dialling it.
    let m_any: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let m_server = quinn::Endpoint::server(server, m_any).unwrap();
    let m_addr = m_server.local_addr().unwrap();
    let m_client = strangers::stranger_endpoint_with_certificate();
    let m_client_addr = m_client.local_addr().unwrap();
    let loot = Shared::default();
    let attacker = {
        let loot = loot.clone();
        tokio::spawn(async move {
            while let Some(incoming) = m_server.accept().await {
                let (m_client, loot) = (m_client.clone(), loot.clone());
                tokio::spawn(async move {
                    let toward_b = strangers::connect(&m_client, b_addr, Duration::from_secs(5));
                    let (from_a, to_b) = tokio::join!(incoming, toward_b);
                    let mut loot = loot.lock().unwrap();
                    match from_a {
                        Ok(_) => loot.kept_open += 1,
                        Err(_) => loot.handshakes_refused += 1,
                    }
                    // A QUIC client may see its handshake complete before
                    // the server refuses its certificate: then it is closed.
                    match to_b {
                        Some(_) => loot.hung_up += 1,
                        None => loot.handshakes_refused += 1,
                    }
                });
            }
        })
    };

    let refusals = |side: Side, quic, advertised: SocketAddr| {
        let mut config = loopback_config();
        config.max_attempts = 1;
        let refused = Refusals::default();
        let seen = refused.clone();
        let options = Options::new(side)
            .config(config)
            .local_addrs([Candidate::quic(advertised)])
            .quic(quic)
            .on_event(move |event, _| {
                if let Event::DirectRejected { reason, remote, .. } = event {
                    seen.lock().unwrap().push((*reason, *remote));
                }
            });
        (options, refused)
    };
    // B advertises the attacker's address; A its own.
    let (b, b_refused) = refusals(Side::Initiator, b_quic, m_addr);
    let (a, a_refused) = refusals(Side::Responder, a_quic, a_addr);
    let (b, a) = upgrade_pair(b, a, TEST_LIMIT).await;
    attacker.abort();

    // B sprays to A's real address but A only dials the attacker: no
    // direct connection forms, and neither side took the attacker.
    assert!(b.is_err(), "B must not upgrade through the attacker");
    assert!(a.is_err(), "A must not upgrade through the attacker");
    let a_refused = a_refused.lock().unwrap().clone();
    let b_refused = b_refused.lock().unwrap().clone();
    assert_eq!(
        a_refused,
        [(DirectRejection::IdentityMismatch, m_addr)],
        "A refused the attacker's certificate on its dial"
    );
    assert_eq!(
        b_refused,
        [(DirectRejection::IdentityMismatch, m_client_addr)],
        "B refused the attacker's relayed dial for its certificate"
    );
    let loot = loot.lock().unwrap();
    assert_eq!(loot.kept_open, 0, "{loot:?}");
    assert_eq!(loot.plaintext, 0, "{loot:?}");
}
