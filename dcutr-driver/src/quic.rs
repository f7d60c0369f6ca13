//! The QUIC side: one endpoint whose UDP socket also sends the spray.
//!
//! The peer was told the address its relay (or identify) observed for our
//! QUIC socket: the NAT mapping of that socket. The spray must open that
//! same mapping, so it leaves from the endpoint's own socket: we keep a
//! clone of the file descriptor and send the datagrams through it.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The server name every hole-punch dial asks for. The certificates of
/// [`self_signed_configs`] carry it.
pub const SERVER_NAME: &str = "dcutr";

/// A QUIC endpoint for hole punching, with the clone of its socket that
/// sprays.
#[derive(Debug)]
pub struct QuicSocket {
    /// The endpoint: dials (client side) and accepts (server side).
    pub endpoint: quinn::Endpoint,
    /// Used for our dials.
    pub client_config: quinn::ClientConfig,
    spray: UdpSocket,
}

impl QuicSocket {
    /// Builds an endpoint on `socket` that serves with `server_config` and
    /// dials with `client_config`, on `runtime`.
    ///
    /// # Errors
    /// When the socket cannot be cloned or the endpoint cannot start.
    pub fn new(
        socket: UdpSocket,
        server_config: quinn::ServerConfig,
        client_config: quinn::ClientConfig,
        runtime: Arc<dyn quinn::Runtime>,
    ) -> io::Result<Self> {
        let spray = socket.try_clone()?;
        spray.set_nonblocking(true)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            runtime,
        )?;
        Ok(QuicSocket {
            endpoint,
            client_config,
            spray,
        })
    }

    /// The local address of the endpoint.
    ///
    /// # Errors
    /// When the socket has no address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Sends one spray datagram, without waiting: a full send buffer drops
    /// it, which a spray tolerates.
    pub(crate) fn spray(&self, payload: &[u8], to: SocketAddr) {
        match self.spray.send_to(payload, to) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tracing::debug!(%to, "spray datagram dropped: socket buffer full");
            }
            Err(e) => tracing::debug!(%to, error = %e, "spray datagram failed"),
        }
    }
}

/// Server and client configs with a fresh self-signed certificate, for
/// demos, tests and the CLI.
///
/// The client accepts **any** server certificate: it relies on the
/// dcutr-rs token identity check (or your own handshake on top) to know
/// it reached the right peer, not on TLS. TLS still encrypts the
/// connection. Use real certificates or libp2p's TLS when the peer must be
/// authenticated by the transport.
///
/// # Panics
/// Only if rcgen or rustls reject their own freshly generated key, which
/// does not happen with the ring provider.
#[must_use]
pub fn self_signed_configs() -> (quinn::ServerConfig, quinn::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
        .expect("rcgen signs a fresh key");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("a fresh self-signed certificate is valid");
    let server = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(server_tls).expect("TLS 1.3 with an initial suite"),
    ));
    let client_tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    let mut client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(client_tls).expect("TLS 1.3 with an initial suite"),
    ));
    client.transport_config(Arc::new(hole_punch_transport()));
    (server, client)
}

/// The initial RTT estimate of a hole-punching QUIC client.
///
/// A client's first Initial often reaches the peer's NAT a moment before
/// the peer's spray has opened it (the two sides' clocks agree only to
/// within the relay's jitter), and is dropped; the client re-sends it after
/// a probe timeout of about three initial RTTs. quinn's default estimate of
/// 333 ms makes that a one-second stall; 33 ms makes it about 0.1 s, at the
/// cost of a spurious re-send or two on slower paths until the first
/// acknowledgement sets the real RTT.
pub const HOLE_PUNCH_INITIAL_RTT: std::time::Duration = std::time::Duration::from_millis(33);

/// A transport config for hole-punch dials: quinn's defaults with
/// [`HOLE_PUNCH_INITIAL_RTT`]. Use it in your own client config too.
#[must_use]
pub fn hole_punch_transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.initial_rtt(HOLE_PUNCH_INITIAL_RTT);
    transport
}

/// Accepts any certificate but still checks the handshake signatures, so
/// the connection is encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
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
