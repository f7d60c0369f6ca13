//! Mutual TLS 1.3 pinned to the fingerprints sent over the relayed stream
//! (the dcutr-rs session, [`dcutr_core::UpgradeBuilder::dcutr_session`]).
//!
//! Each upgrade makes an ephemeral key and a self-signed certificate
//! ([`Identity`]); the core sends the SHA-256 of the certificate in its
//! `Hello`. On every direct connection both ends present their
//! certificate and verify the other's: the verifiers here accept exactly
//! the certificate whose fingerprint the peer sent, and check the
//! handshake signature, so the other end must hold the matching key.
//! Names, dates and issuers mean nothing here; the pin is the identity.
//!
//! Before the peer's `Hello` has arrived (an inbound connection can beat
//! it), a verifier has no pin yet: it then accepts any certificate whose
//! key signs the handshake, records its fingerprint, and the core compares
//! it with the pin once that arrives. No byte of the application flows
//! before the core has decided.
//!
//! TCP connections are wrapped with `futures-rustls`; QUIC uses the same
//! configs in its own handshake.

use std::sync::{Arc, Mutex, PoisonError};

use dcutr_core::settings::FINGERPRINT_LEN;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// A certificate fingerprint: the SHA-256 of its DER encoding.
pub type Fingerprint = [u8; FINGERPRINT_LEN];

/// The server name every pinned handshake uses (certificates are pinned,
/// not checked against names). Also the name of QUIC dials.
pub const SERVER_NAME: &str = "dcutr";

/// The SHA-256 fingerprint of a DER certificate.
#[must_use]
pub fn fingerprint(cert: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    let mut out = [0u8; FINGERPRINT_LEN];
    out.copy_from_slice(digest.as_ref());
    out
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An ephemeral key and its self-signed certificate.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl Identity {
    /// A fresh ECDSA P-256 key and a self-signed certificate for it.
    ///
    /// # Errors
    /// When the key cannot be generated (no OS randomness).
    pub fn generate() -> Result<Self, rcgen::Error> {
        let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
        let der = cert.cert.der().clone();
        Ok(Identity {
            fingerprint: fingerprint(&der),
            cert: der,
            key: PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()),
        })
    }

    /// The fingerprint of the certificate.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// What a verifier saw: the fingerprint of the certificate the other end
/// presented, shared with whoever runs the handshake.
#[derive(Clone, Debug, Default)]
pub(crate) struct Presented(Arc<Mutex<Option<Fingerprint>>>);

impl Presented {
    fn set(&self, fp: Fingerprint) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(fp);
    }

    /// The fingerprint, if a certificate was presented.
    pub fn get(&self) -> Option<Fingerprint> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Accepts exactly the pinned certificate (or, without a pin yet, any
/// certificate, recording it), on both the client and the server side.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Option<Fingerprint>,
    presented: Presented,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedVerifier {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let seen = fingerprint(end_entity);
        self.presented.set(seen);
        match self.pin {
            Some(pin) if pin != seen => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(()),
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS 1.2 is never negotiated (both configs allow only 1.3).
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for PinnedVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// The TLS configs of one direct connection, with the slot where its
/// verifier records what the other end presented.
pub(crate) struct Pinned {
    pub client: Arc<rustls::ClientConfig>,
    pub server: Arc<rustls::ServerConfig>,
    pub presented: Presented,
}

impl Pinned {
    /// Configs that present `identity` and accept exactly `pin` (or, with
    /// no pin yet, any certificate, recorded for the core to compare).
    pub fn new(identity: &Identity, pin: Option<Fingerprint>, alpn: &[&[u8]]) -> Self {
        let provider = provider();
        let presented = Presented::default();
        let verifier = Arc::new(PinnedVerifier {
            pin,
            presented: presented.clone(),
            provider: provider.clone(),
        });
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(identity.chain(), identity.key())
            .expect("a fresh self-signed certificate is valid");
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain(), identity.key())
            .expect("a fresh self-signed certificate is valid");
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        server.alpn_protocols = client.alpn_protocols.clone();
        Pinned {
            client: Arc::new(client),
            server: Arc::new(server),
            presented,
        }
    }
}

/// ALPN of pinned direct connections: the version of this handshake.
pub const ALPN: &[u8] = b"dcutr-direct/2";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_sha256_of_the_certificate_and_differ_per_identity() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(fingerprint(&a.cert), a.fingerprint());
        // The SHA-256 of the empty string, to tie the function to its name.
        assert_eq!(
            fingerprint(b"")[..4],
            [0xe3, 0xb0, 0xc4, 0x42],
            "SHA-256(\"\") starts e3b0c442"
        );
    }

    #[test]
    fn the_verifier_accepts_only_the_pinned_certificate() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let pinned = PinnedVerifier {
            pin: Some(a.fingerprint()),
            presented: Presented::default(),
            provider: provider(),
        };
        assert!(pinned.check(&a.cert).is_ok());
        assert!(pinned.check(&b.cert).is_err());
        assert_eq!(pinned.presented.get(), Some(b.fingerprint()));
        let unpinned = PinnedVerifier {
            pin: None,
            presented: Presented::default(),
            provider: provider(),
        };
        assert!(unpinned.check(&b.cert).is_ok());
        assert_eq!(unpinned.presented.get(), Some(b.fingerprint()));
    }
}
