//! A private certificate authority for TLS tests: one CA, and certificates
//! for any name signed by it (servers, and clients for certificate-matched
//! connectors).

use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA made for one test.
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    certificate: Certificate,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new self-signed CA.
    pub fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let certificate = params.self_signed(&key)?;
        Ok(Self { params, key, certificate })
    }

    /// The CA certificate, PEM (what a `client_ca` or `extra_ca` file holds).
    pub fn pem(&self) -> String {
        self.certificate.pem()
    }

    /// The CA certificate, DER (for a rustls root store).
    pub fn der(&self) -> &rustls::pki_types::CertificateDer<'static> {
        self.certificate.der()
    }

    /// A certificate for `name` signed by the CA: (certificate PEM, key PEM).
    pub fn issue(&self, name: &str) -> anyhow::Result<(String, String)> {
        let issuer = Issuer::from_params(&self.params, &self.key);
        let key = KeyPair::generate()?;
        let certificate = CertificateParams::new(vec![name.to_string()])?.signed_by(&key, &issuer)?;
        Ok((certificate.pem(), key.serialize_pem()))
    }
}
