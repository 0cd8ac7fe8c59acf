//! TLS for the data plane: a node's self-signed identity, the [`PeerVerifier`] seam that
//! decides which peers may connect, and the rustls configurations built from them.
//!
//! Both sides present a certificate (mutual TLS) and both run the same [`PeerVerifier`] on
//! the peer's certificate. rustls still checks the handshake signature against that
//! certificate, so a peer must hold the private key of the certificate it shows. There is no
//! PKI: trust is whatever the verifier decides. Only the ring crypto provider is used.
//!
//! The security work plugs in here: a verifier that checks the certificate is bound to the
//! peer's libp2p identity, and a cluster-key HMAC over the TLS exporter exchanged before the
//! first frame (see [`super::Link::connection`] for the exporter).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

/// ALPN protocol id of shoal links; a peer speaking anything else fails the handshake.
pub const ALPN: &[u8] = b"shoal-link/1";

/// Server name used for every connection. Peers are identified by certificate, not by DNS,
/// so the name is a constant the verifiers ignore.
pub const SERVER_NAME: &str = "shoal";

/// Failure to build an identity or a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating the self-signed certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration (e.g. an unusable key).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The provider lacks the cipher suite QUIC's initial packets need.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The certificate carrying the libp2p identity could not be made.
    #[error("certificate for the libp2p identity: {0}")]
    Libp2p(String),
}

/// SHA-256 of a certificate's DER bytes: what [`PinnedCert`] pins.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint(pub [u8; 32]);

impl CertFingerprint {
    /// Fingerprint of a DER certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        Self(Sha256::digest(cert.as_ref()).into())
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({self})")
    }
}

/// A node's TLS identity: a certificate and its private key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// A fresh self-signed certificate (ECDSA P-256, via rcgen and ring).
    pub fn generate() -> Result<Self, TlsError> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
        Ok(Self {
            cert: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        })
    }

    /// A certificate bound to the node's libp2p identity: it carries the libp2p public key
    /// and that key's signature over the certificate key (the libp2p TLS spec), so a peer
    /// learns, and [`Libp2pIdentity`] checks, which peer id it is talking to.
    pub fn from_keypair(keypair: &libp2p::identity::Keypair) -> Result<Self, TlsError> {
        let (cert, key) = libp2p::tls::certificate::generate(keypair)
            .map_err(|e| TlsError::Libp2p(e.to_string()))?;
        match key {
            PrivateKeyDer::Pkcs8(key) => Ok(Self { cert, key }),
            _ => Err(TlsError::Libp2p("certificate key is not PKCS#8".into())),
        }
    }

    /// An identity from an existing DER certificate and PKCS#8 key (checked when a
    /// configuration is built from it).
    pub fn from_der(cert: Vec<u8>, pkcs8_key: Vec<u8>) -> Self {
        Self {
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(pkcs8_key),
        }
    }

    /// The certificate, as peers will see it.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Fingerprint of the certificate, for peers to pin.
    pub fn fingerprint(&self) -> CertFingerprint {
        CertFingerprint::of(&self.cert)
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// A peer's certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The certificate is not among the pinned ones.
    #[error("peer certificate {0} is not pinned")]
    NotPinned(CertFingerprint),
    /// A verifier-specific reason.
    #[error("peer certificate rejected: {0}")]
    Rejected(String),
}

/// Decides whether the peer presenting `end_entity` may exchange frames with this node.
///
/// Called during the TLS handshake, on both the connecting and the accepting side. The
/// handshake signature is verified separately, so the peer is known to own the key.
pub trait PeerVerifier: fmt::Debug + Send + Sync + 'static {
    /// Accepts or refuses the peer's leaf certificate (and any intermediates it sent).
    fn verify_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), VerifyError>;
}

/// Accepts every certificate. NO AUTHENTICATION: for tests and trusted lab networks only,
/// until the cluster-key verifier exists. Traffic is still encrypted.
#[derive(Debug, Clone, Copy, Default)]
pub struct InsecureAcceptAny;

impl PeerVerifier for InsecureAcceptAny {
    fn verify_peer(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
    ) -> Result<(), VerifyError> {
        Ok(())
    }
}

/// Accepts certificates bound to a libp2p identity (see [`Identity::from_keypair`]): the
/// embedded libp2p key must have signed the certificate's key. Which cluster the peer
/// belongs to is the cluster-key proof's business, done right after the handshake.
#[derive(Debug, Clone, Copy, Default)]
pub struct Libp2pIdentity;

impl PeerVerifier for Libp2pIdentity {
    fn verify_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
    ) -> Result<(), VerifyError> {
        peer_id_of(end_entity)
            .map(|_| ())
            .map_err(|e| VerifyError::Rejected(format!("not bound to a libp2p identity: {e}")))
    }
}

/// The libp2p peer id a certificate is bound to, its binding signature checked.
pub fn peer_id_of(cert: &CertificateDer<'_>) -> Result<libp2p::PeerId, String> {
    libp2p::tls::certificate::parse(cert)
        .map(|c| c.peer_id())
        .map_err(|e| e.to_string())
}

/// Accepts only certificates whose SHA-256 fingerprint was pinned in advance.
#[derive(Debug, Clone, Default)]
pub struct PinnedCert {
    allowed: HashSet<CertFingerprint>,
}

impl PinnedCert {
    /// A verifier accepting exactly these fingerprints.
    pub fn new(allowed: impl IntoIterator<Item = CertFingerprint>) -> Self {
        Self {
            allowed: allowed.into_iter().collect(),
        }
    }
}

impl PeerVerifier for PinnedCert {
    fn verify_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
    ) -> Result<(), VerifyError> {
        let fingerprint = CertFingerprint::of(end_entity);
        if self.allowed.contains(&fingerprint) {
            Ok(())
        } else {
            Err(VerifyError::NotPinned(fingerprint))
        }
    }
}

/// Builds the QUIC server crypto config: our identity, peers checked by `verifier`.
pub(crate) fn server_crypto(
    identity: &Identity,
    verifier: Arc<dyn PeerVerifier>,
) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
    let provider = provider();
    let adapter = Arc::new(RustlsAdapter::new(verifier, &provider));
    let cert = OneCert::new(identity, &provider)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(adapter)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(quinn::crypto::rustls::QuicServerConfig::try_from(config)?)
}

/// Builds the QUIC client crypto config: our identity, peers checked by `verifier`.
pub(crate) fn client_crypto(
    identity: &Identity,
    verifier: Arc<dyn PeerVerifier>,
) -> Result<quinn::crypto::rustls::QuicClientConfig, TlsError> {
    let provider = provider();
    let adapter = Arc::new(RustlsAdapter::new(verifier, &provider));
    let cert = OneCert::new(identity, &provider)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(adapter)
        .with_client_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(quinn::crypto::rustls::QuicClientConfig::try_from(config)?)
}

/// Presents our one certificate on both sides of the handshake.
///
/// rustls' `with_single_cert` parses the certificate with webpki, which refuses the
/// critical libp2p extension; a resolver hands the certificate over as it is. The key is
/// still loaded (and so checked) by the provider.
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl OneCert {
    fn new(identity: &Identity, provider: &CryptoProvider) -> Result<Arc<Self>, TlsError> {
        let key = provider.key_provider.load_private_key(identity.key())?;
        Ok(Arc::new(Self(Arc::new(CertifiedKey::new(
            vec![identity.cert.clone()],
            key,
        )))))
    }
}

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for OneCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Presents a [`PeerVerifier`] to rustls as both a server- and a client-certificate
/// verifier, keeping rustls' handshake-signature checks.
#[derive(Debug)]
struct RustlsAdapter {
    verifier: Arc<dyn PeerVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl RustlsAdapter {
    fn new(verifier: Arc<dyn PeerVerifier>, provider: &CryptoProvider) -> Self {
        Self {
            verifier,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        self.verifier
            .verify_peer(end_entity, intermediates)
            .map_err(|e| {
                tracing::debug!(error = %e, "peer certificate refused");
                rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
            })
    }
}

impl RustlsAdapter {
    /// Checks the handshake signature. A libp2p-bound certificate carries a critical
    /// extension webpki refuses to parse, so its signature is checked by libp2p-tls (with
    /// ring); any other certificate goes through rustls.
    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match libp2p::tls::certificate::parse(cert) {
            Ok(p2p) => p2p
                .verify_signature(dss.scheme, message, dss.signature())
                .map(|()| HandshakeSignatureValid::assertion())
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature)),
            Err(_) => rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms),
        }
    }
}

impl ServerCertVerifier for RustlsAdapter {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for RustlsAdapter {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_verifier_accepts_only_pinned_certificates() {
        let a = Identity::generate().expect("identity");
        let b = Identity::generate().expect("identity");
        assert_ne!(a.fingerprint(), b.fingerprint());
        let pinned = PinnedCert::new([a.fingerprint()]);
        assert_eq!(pinned.verify_peer(a.cert(), &[]), Ok(()));
        assert_eq!(
            pinned.verify_peer(b.cert(), &[]),
            Err(VerifyError::NotPinned(b.fingerprint()))
        );
        assert_eq!(InsecureAcceptAny.verify_peer(b.cert(), &[]), Ok(()));
    }

    #[test]
    fn configs_build_from_a_generated_identity_and_debug_hides_the_key() {
        let id = Identity::generate().expect("identity");
        server_crypto(&id, Arc::new(InsecureAcceptAny)).expect("server config");
        client_crypto(&id, Arc::new(InsecureAcceptAny)).expect("client config");
        let shown = format!("{id:?}");
        assert!(shown.contains(&id.fingerprint().to_string()), "{shown}");
        assert_eq!(id.fingerprint().to_string().len(), 64);
    }

    #[test]
    fn a_bad_key_is_a_typed_error() {
        let id = Identity::generate().expect("identity");
        let broken = Identity::from_der(id.cert().to_vec(), vec![1, 2, 3]);
        assert!(server_crypto(&broken, Arc::new(InsecureAcceptAny)).is_err());
    }
}
