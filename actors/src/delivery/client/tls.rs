//! TLS for outbound connections: one rustls client configuration per
//! [`TlsPolicy`], the trust anchors, and what a handshake tells the caller.
//!
//! - `Opportunistic` and `EncryptionOnly` encrypt without checking the
//!   certificate (RFC 7435: an unauthenticated channel still beats clear text);
//!   the handshake signatures are still verified, so the peer does hold the
//!   key of the certificate it sent.
//! - `CertificateValidation` checks the chain against the caller's roots and
//!   the name against the host connected to (rustls/webpki; no revocation
//!   check: rustls has no OCSP fetching, and CRLs are not distributed to us).
//! - `DomainValidation` checks the chain and that the certificate is for
//!   `tls_domain`; `*.contoso.com` accepts a certificate for any one-label
//!   host name under `contoso.com` (or for `*.contoso.com` itself).

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::TlsPolicy;

/// The Mozilla root programme's trust anchors (the `webpki-roots` crate), for
/// `CertificateValidation` and `DomainValidation` towards the internet.
pub fn default_roots() -> Arc<RootCertStore> {
    Arc::new(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() })
}

/// Why a PEM file of trust anchors could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    /// The file could not be read or is not PEM (permanent: fix the configuration).
    #[error("reading {path}: {reason}")]
    Pem {
        /// File.
        path: String,
        /// Cause.
        reason: String,
    },
    /// A certificate in the file is not a usable trust anchor (permanent).
    #[error("{path}: {source}")]
    Certificate {
        /// File.
        path: String,
        /// What webpki said.
        source: rustls::Error,
    },
    /// The file holds no certificate (permanent).
    #[error("{0}: no certificate in the file")]
    Empty(String),
}

/// Adds every certificate of a PEM file (e.g. a private CA) to `roots`;
/// returns how many were added.
pub fn add_pem_roots(roots: &mut RootCertStore, path: &Path) -> Result<usize, RootsError> {
    let shown = || path.display().to_string();
    let pem = |e: &dyn std::fmt::Display| RootsError::Pem { path: shown(), reason: e.to_string() };
    let mut added = 0;
    let bytes = crate::config::read_pem_file(path).map_err(|e| pem(&e))?;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| pem(&e))?;
        roots.add(cert).map_err(|source| RootsError::Certificate { path: shown(), source })?;
        added += 1;
    }
    if added == 0 {
        return Err(RootsError::Empty(shown()));
    }
    Ok(added)
}

/// Trust anchors from a PEM file only (e.g. the private CA of an on-premises
/// organisation's connector), without the public roots.
pub fn pem_roots(path: &Path) -> Result<Arc<RootCertStore>, RootsError> {
    let mut roots = RootCertStore::empty();
    add_pem_roots(&mut roots, path)?;
    Ok(Arc::new(roots))
}

/// The client configuration for `policy`.
pub fn client_config(policy: &TlsPolicy, roots: &Arc<RootCertStore>) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions()?;
    let verifier = verifier(policy, roots, &provider)?;
    let config = builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    Ok(Arc::new(config))
}

/// The certificate check of `policy`, the same in the handshake and in [`check_certificate`].
fn verifier(
    policy: &TlsPolicy,
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, rustls::Error> {
    Ok(match policy {
        TlsPolicy::Opportunistic | TlsPolicy::EncryptionOnly => {
            Arc::new(NoCertificateCheck { algorithms: provider.signature_verification_algorithms })
        }
        TlsPolicy::CertificateValidation => webpki_verifier(roots, provider)?,
        TlsPolicy::DomainValidation { tls_domain } => Arc::new(DomainCheck {
            inner: webpki_verifier(roots, provider)?,
            tls_domain: tls_domain.trim_end_matches('.').to_ascii_lowercase(),
        }),
    })
}

/// Checks a chain a peer presented (end entity first) as a handshake under
/// `policy` with the hop `host` at `addr` would have, at the present time.
/// Connector validation uses it to report the certificate apart from the
/// handshake: it encrypts without a check, then asks this.
pub fn check_certificate(
    policy: &TlsPolicy,
    roots: &Arc<RootCertStore>,
    host: &str,
    addr: std::net::IpAddr,
    chain: &[CertificateDer<'_>],
) -> Result<(), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Err(rustls::Error::NoCertificatesPresented);
    };
    verifier(policy, roots, &provider)?.verify_server_cert(
        end_entity,
        intermediates,
        &server_name(host, addr),
        &[],
        UnixTime::now(),
    )?;
    Ok(())
}

/// The DNS names a certificate is valid for (subject alternative names), as written in it.
pub fn certificate_names(cert: &CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(cert)
        .map(|cert| cert.valid_dns_names().map(str::to_string).collect())
        .unwrap_or_default()
}

fn webpki_verifier(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
    WebPkiServerVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider))
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))
}

/// The name sent as SNI and checked by `CertificateValidation`: the host name,
/// or the IP address when the hop has no usable name.
pub fn server_name(host: &str, addr: std::net::IpAddr) -> ServerName<'static> {
    ServerName::try_from(host.trim_end_matches('.').to_string()).unwrap_or(ServerName::IpAddress(addr.into()))
}

/// Accepts any certificate; still checks that the peer signed the handshake.
#[derive(Debug)]
struct NoCertificateCheck {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoCertificateCheck {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Checks the chain with webpki, and the name against `tls_domain` instead of
/// the host connected to.
#[derive(Debug)]
struct DomainCheck {
    inner: Arc<WebPkiServerVerifier>,
    /// Lower case, without a trailing dot; may start with `*.`.
    tls_domain: String,
}

impl ServerCertVerifier for DomainCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let not_for_domain =
            || rustls::Error::General(format!("the certificate is not valid for the TLS domain {}", self.tls_domain));
        let candidates: Vec<String> = match self.tls_domain.strip_prefix("*.") {
            None => vec![self.tls_domain.clone()],
            // Any name the certificate holds under the domain will do; the
            // webpki check below decides whether the certificate is really
            // valid for it (and for a wildcard certificate, `x.<domain>` is).
            Some(parent) => {
                let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| not_for_domain())?;
                let mut names: Vec<String> = cert
                    .valid_dns_names()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                    .filter(|n| n.strip_suffix(parent).and_then(|l| l.strip_suffix('.')).is_some_and(one_label))
                    .map(|n| n.replace('*', "wildcard-match"))
                    .collect();
                names.dedup();
                names
            }
        };
        let mut last_error = not_for_domain();
        for name in candidates {
            let server_name = ServerName::try_from(name).map_err(|_| not_for_domain())?;
            match self.inner.verify_server_cert(end_entity, intermediates, &server_name, ocsp_response, now) {
                Ok(verified) => return Ok(verified),
                Err(err) => last_error = err,
            }
        }
        Err(last_error)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One DNS label, or the `*` of a wildcard certificate.
fn one_label(label: &str) -> bool {
    !label.is_empty() && !label.contains('.')
}
