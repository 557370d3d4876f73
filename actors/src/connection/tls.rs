//! STARTTLS: the rustls server configuration and what a handshake tells the session.

use std::path::Path;
use std::sync::Arc;

use mailflow_events::received::TlsInfo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up from the configured files.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or parsed (permanent: fix the configuration).
    #[error("reading {path}: {reason}")]
    Pem {
        /// File.
        path: String,
        /// Cause.
        reason: String,
    },
    /// rustls refused the certificate or key (permanent).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the acceptor from a PEM certificate chain and key (TLS 1.2 and 1.3,
/// ring); with `client_ca`, client certificates are asked for and verified.
pub fn acceptor(certificate: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, TlsSetupError> {
    let pem_error = |path: &Path, err: &dyn std::fmt::Display| TlsSetupError::Pem {
        path: path.display().to_string(),
        reason: err.to_string(),
    };
    let read = |path: &Path| crate::config::read_pem_file(path).map_err(|e| pem_error(path, &e));
    let pem = read(certificate)?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| pem_error(certificate, &e))?;
    if certs.is_empty() {
        return Err(pem_error(certificate, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| pem_error(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(&read(path)?) {
                roots.add(ca.map_err(|e| pem_error(path, &e))?)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| pem_error(path, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// `(protocol, cipher)` of an established TLS connection, either side, as
/// events record them: `("TLSv1.3", "TLS_AES_256_GCM_SHA384")`, the cipher
/// suite by its IANA name (rustls spells TLS 1.3 suites `TLS13_…`).
pub fn describe(connection: &rustls::CommonState) -> (String, String) {
    let protocol = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_string(),
    };
    let cipher = connection.negotiated_cipher_suite().map_or_else(
        || "unknown".to_string(),
        |suite| {
            let name = format!("{:?}", suite.suite());
            match name.strip_prefix("TLS13_") {
                Some(rest) => format!("TLS_{rest}"),
                None => name,
            }
        },
    );
    (protocol, cipher)
}

/// What the session records of an established TLS connection.
pub fn info(connection: &rustls::ServerConnection) -> TlsInfo {
    let (protocol, cipher) = describe(connection);
    // The chain was verified against `client_ca` during the handshake; only
    // then are its names worth anything.
    let client_certificate_names: Vec<String> = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| {
            webpki::EndEntityCert::try_from(leaf).ok().map(|cert| cert.valid_dns_names().map(str::to_string).collect())
        })
        .unwrap_or_default();
    TlsInfo {
        protocol,
        cipher,
        // Connectors match on the subject alternative names; the subject DN is not parsed.
        client_certificate_subject: None,
        client_certificate_names,
    }
}
