//! TLS for QUIC: the relay's self-signed identity and the client's fingerprint pinning.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The ALPN protocol identifier of Muster's relay protocol.
pub const ALPN: &[u8] = b"muster/1";

/// Lowercase hex SHA-256 of a DER certificate.
pub fn fingerprint(cert_der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, cert_der).as_ref())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The relay's TLS certificate and key.
pub struct RelayIdentity {
    pub cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl RelayIdentity {
    /// Loads `relay-cert.der`/`relay-key.der` from `dir`, creating a fresh self-signed pair on first use.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Self> {
        let cert_path = dir.join("relay-cert.der");
        let key_path = dir.join("relay-key.der");
        if cert_path.exists() && key_path.exists() {
            return Ok(Self {
                cert_der: std::fs::read(cert_path)?,
                key_der: std::fs::read(key_path)?,
            });
        }
        let certified = rcgen::generate_simple_self_signed(vec!["muster-relay".to_string()])
            .map_err(std::io::Error::other)?;
        let identity = Self {
            cert_der: certified.cert.der().to_vec(),
            key_der: certified.signing_key.serialize_der(),
        };
        write_private(&key_path, &identity.key_der)?;
        std::fs::write(cert_path, &identity.cert_der)?;
        Ok(identity)
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// An identity from its DER certificate and PKCS#8 key (several relays share one).
    pub fn from_parts(cert_der: Vec<u8>, key_der: Vec<u8>) -> Self {
        Self { cert_der, key_der }
    }

    /// The PKCS#8 private key, to share with the other relays of one database.
    pub fn key_der(&self) -> &[u8] {
        &self.key_der
    }

    /// Writes this identity to `dir` (the key readable by its owner only), replacing the
    /// one there: `load_or_create` then returns it.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        write_private(&dir.join("relay-key.der"), &self.key_der)?;
        std::fs::write(dir.join("relay-cert.der"), &self.cert_der)
    }

    /// A QUIC server configuration presenting this identity.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, rustls::Error> {
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(self.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(
            std::time::Duration::from_secs(60)
                .try_into()
                .expect("60 s is a valid idle timeout"),
        ));
        transport.max_concurrent_bidi_streams(64u32.into());
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

/// Accepts only the relay certificate whose SHA-256 matches the pinned fingerprint.
#[derive(Debug)]
pub(crate) struct PinnedVerifier {
    expected: String,
    provider: Arc<CryptoProvider>,
    /// The fingerprint seen when it did not match, so the caller can explain the failure.
    pub(crate) mismatch: Mutex<Option<String>>,
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
        let seen = fingerprint(end_entity.as_ref());
        if seen == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            *self.mismatch.lock().unwrap_or_else(|e| e.into_inner()) = Some(seen);
            Err(rustls::Error::General(
                "relay certificate does not match the pinned fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A QUIC client configuration that trusts only the pinned fingerprint.
pub(crate) fn client_config(
    expected_fingerprint: &str,
) -> Result<(quinn::ClientConfig, Arc<PinnedVerifier>), rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(PinnedVerifier {
        expected: expected_fingerprint.to_ascii_lowercase(),
        provider: provider.clone(),
        mismatch: Mutex::new(None),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(10)));
    config.transport_config(Arc::new(transport));
    Ok((config, verifier))
}
