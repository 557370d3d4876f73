//! DKIM signing of outbound mail (RFC 6376) with mail-auth's signer, for the
//! accepted domains that have a key configured (`[[dkim_signing]]`).
//!
//! A message is signed when the domain of its `From:` header (RFC 5322.From,
//! what DMARC aligns on) has a key, or a parent of it does; mail for our own
//! mailbox store is not signed. The signature covers the headers below when
//! present, plus the body, with relaxed/relaxed canonicalisation (mail-auth's
//! default) and is prepended to the rendered message.

use std::path::PathBuf;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{DkimSigner, Done};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;
use serde::Deserialize;

/// Headers signed when present (RFC 6376 §5.4.1's recommendations).
const SIGNED_HEADERS: [&str; 11] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Reply-To",
    "In-Reply-To",
    "References",
];

/// `[[dkim_signing]]`: a signing key of one of our domains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSigningConfig {
    /// The signing domain (`d=`), e.g. `contoso.com`; also signs its subdomains' mail.
    pub domain: String,
    /// The selector (`s=`): the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM private key: RSA (PKCS#1 or PKCS#8, `rsa-sha256`) or Ed25519 (PKCS#8, `ed25519-sha256`).
    pub private_key: PathBuf,
    /// `rsa` (default) or `ed25519`.
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
}

/// Key type of a DKIM signing key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DkimAlgorithm {
    /// `rsa-sha256`.
    #[default]
    Rsa,
    /// `ed25519-sha256` (RFC 8463).
    Ed25519,
}

/// Why a key could not be loaded (a configuration error at start-up).
#[derive(Debug, thiserror::Error)]
#[error("DKIM key {path} for {domain}: {reason}")]
pub struct DkimKeyError {
    path: String,
    domain: String,
    reason: String,
}

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// The configured signers, by domain.
pub struct DkimSigners {
    signers: Vec<(String, Signer)>,
}

impl std::fmt::Debug for DkimSigners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.signers.iter().map(|(domain, _)| domain)).finish()
    }
}

fn load(config: &DkimSigningConfig) -> Result<Signer, DkimKeyError> {
    let error = |reason: String| DkimKeyError {
        path: config.private_key.display().to_string(),
        domain: config.domain.clone(),
        reason,
    };
    let pem = crate::config::read_pem_file(&config.private_key).map_err(|e| error(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| error(e.to_string()))?;
    let headers = SIGNED_HEADERS;
    Ok(match config.algorithm {
        DkimAlgorithm::Rsa => {
            let key = RsaKey::<Sha256>::from_key_der(key).map_err(|e| error(e.to_string()))?;
            Signer::Rsa(DkimSigner::from_key(key).domain(&config.domain).selector(&config.selector).headers(headers))
        }
        DkimAlgorithm::Ed25519 => {
            let PrivateKeyDer::Pkcs8(der) = key else {
                return Err(error("an Ed25519 key must be PKCS#8".to_string()));
            };
            let key = Ed25519Key::from_pkcs8_der(der.secret_pkcs8_der()).map_err(|e| error(e.to_string()))?;
            Signer::Ed25519(
                DkimSigner::from_key(key).domain(&config.domain).selector(&config.selector).headers(headers),
            )
        }
    })
}

impl DkimSigners {
    /// Loads every configured key.
    pub fn load(configs: &[DkimSigningConfig]) -> Result<Self, DkimKeyError> {
        let signers =
            configs.iter().map(|c| Ok((c.domain.to_ascii_lowercase(), load(c)?))).collect::<Result<_, _>>()?;
        Ok(Self { signers })
    }

    /// The most specific signer for `domain` (itself, else the longest parent).
    fn for_domain(&self, domain: &str) -> Option<&Signer> {
        let domain = domain.to_ascii_lowercase();
        self.signers
            .iter()
            .filter(|(d, _)| crate::policy::is_within(&domain, d))
            .max_by_key(|(d, _)| d.len())
            .map(|(_, signer)| signer)
    }

    /// `message` with a `DKIM-Signature:` prepended when its From domain has a
    /// key; unchanged otherwise, or when signing fails (logged: an unsigned
    /// message still goes out, as it would without a key).
    pub fn sign(&self, message: Vec<u8>) -> Vec<u8> {
        if self.signers.is_empty() {
            return message;
        }
        let from_domain = mail_parser::MessageParser::default()
            .parse_headers(&message)
            .and_then(|m| m.from().and_then(|f| f.first()).and_then(|a| a.address()).map(str::to_string))
            .and_then(|address| address.rsplit_once('@').map(|(_, d)| d.to_string()));
        let Some(signer) = from_domain.as_deref().and_then(|d| self.for_domain(d)) else { return message };
        let signature = match signer {
            Signer::Rsa(signer) => signer.sign(&message),
            Signer::Ed25519(signer) => signer.sign(&message),
        };
        match signature {
            Ok(signature) => {
                let mut signed = signature.to_header().into_bytes();
                signed.extend_from_slice(&message);
                signed
            }
            Err(err) => {
                tracing::warn!(error = %err, "DKIM signing failed; sent unsigned");
                message
            }
        }
    }
}

/// Checks that every configured key loads (for `check-config`).
pub fn validate(configs: &[DkimSigningConfig], problems: &mut Vec<String>) {
    for config in configs {
        if let Err(err) = load(config) {
            problems.push(err.to_string());
        }
        if config.selector.is_empty() || !config.domain.contains('.') {
            problems.push(format!("dkim_signing {}: needs a domain and a selector", config.domain));
        }
    }
}
