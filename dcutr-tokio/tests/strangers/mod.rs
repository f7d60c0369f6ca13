//! Strangers on the QUIC punch port: clients that are not the peer.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The server name the punch endpoints answer to.
pub const SERVER_NAME: &str = dcutr_tokio::SERVER_NAME;

/// A stranger's QUIC client: it takes whatever certificate the victim
/// shows, as an attacker would, and keeps quinn's default limits.
pub fn stranger_endpoint() -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

/// A QUIC server config with a fresh self-signed certificate, and the
/// fingerprint of that certificate: what a peer that is hostile (but is
/// the peer, so it pins its own certificate in its `Hello`) serves with.
pub fn pinned_server_config() -> (quinn::ServerConfig, [u8; 32]) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()]).unwrap();
    let der = cert.cert.der().clone();
    let fingerprint = dcutr_driver::fingerprint(&der);
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .unwrap();
    tls.alpn_protocols = vec![dcutr_driver::DIRECT_ALPN.to_vec()];
    let config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    (config, fingerprint)
}

/// A stranger's QUIC client that plays the pinned handshake by the book
/// with a certificate of its own (not the one the peer pinned): it offers
/// the direct ALPN, presents its certificate when asked, and takes
/// whatever certificate the victim shows.
pub fn stranger_endpoint_with_certificate() -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_client_auth_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    tls.alpn_protocols = vec![dcutr_driver::DIRECT_ALPN.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

/// The TLS configs of a man in the middle: one certificate of its own,
/// shown as a server and as a client; it accepts whatever certificate the
/// other end shows and speaks the direct ALPN.
pub fn attacker_tls() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()]).unwrap();
    let der = cert.cert.der().clone();
    let key = || rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key())
        .unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_client_auth_cert(vec![der], key())
        .unwrap();
    server.alpn_protocols = vec![dcutr_driver::DIRECT_ALPN.to_vec()];
    client.alpn_protocols = server.alpn_protocols.clone();
    (Arc::new(server), Arc::new(client))
}

/// Connects a stranger to `victim`, bounded by `limit`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    victim: SocketAddr,
    limit: Duration,
) -> Option<quinn::Connection> {
    let connecting = endpoint.connect(victim, SERVER_NAME).ok()?;
    tokio::time::timeout(limit, connecting).await.ok()?.ok()
}

/// The first datagram a fresh QUIC client sends: a well-formed Initial
/// (its keys depend only on its own connection id, not on the server).
/// Captured on a socket of ours, so it can be replayed from a source that
/// never answers: the half-open Initial of a forged source.
pub async fn captured_initial() -> Vec<u8> {
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = capture.local_addr().unwrap();
    let endpoint = stranger_endpoint();
    let _connecting = endpoint.connect(to, SERVER_NAME).unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), capture.recv_from(&mut buf))
        .await
        .expect("the client sends its Initial")
        .unwrap();
    buf.truncate(n);
    endpoint.close(0u32.into(), b"");
    buf
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A flood stops once the victim accepted this many bytes in all, so a
/// regression shows as a failure rather than exhausting the machine.
pub const FLOOD_STOP_AT: u64 = 512 << 20;

/// Most streams a flooder tries to open, per direction.
const MAX_STREAMS_TRIED: usize = 256;

/// How long a flooder waits for the victim to allow one more stream.
const OPEN_WAIT: Duration = Duration::from_millis(300);

/// Bytes per write.
const CHUNK: usize = 64 << 10;

/// Resident memory of this process, from /proc/self/status.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

/// Writes `CHUNK`s on `send` until the deadline or the stop mark; counts
/// every byte the victim's flow control let through.
async fn pour(mut send: quinn::SendStream, accepted: Arc<AtomicU64>, until: tokio::time::Instant) {
    let chunk = vec![0x5a; CHUNK];
    while accepted.load(Ordering::Relaxed) < FLOOD_STOP_AT {
        match tokio::time::timeout_at(until, send.write(&chunk)).await {
            Ok(Ok(n)) => {
                accepted.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Opens every stream the victim allows on `conn`, both directions, and
/// writes on each until `until`; returns how many streams it got. Every
/// byte the victim's flow control let through is added to `accepted`.
pub async fn flood(
    conn: &quinn::Connection,
    accepted: Arc<AtomicU64>,
    until: tokio::time::Instant,
) -> usize {
    let mut pours = Vec::new();
    for _ in 0..MAX_STREAMS_TRIED {
        match tokio::time::timeout(OPEN_WAIT, conn.open_bi()).await {
            Ok(Ok((send, _recv))) => {
                pours.push(tokio::spawn(pour(send, accepted.clone(), until)));
            }
            _ => break,
        }
    }
    for _ in 0..MAX_STREAMS_TRIED {
        match tokio::time::timeout(OPEN_WAIT, conn.open_uni()).await {
            Ok(Ok(send)) => pours.push(tokio::spawn(pour(send, accepted.clone(), until))),
            _ => break,
        }
    }
    let streams = pours.len();
    for p in pours {
        let _ = p.await;
    }
    streams
}
