//! Pure verification: certificate parsing, chain to a trust anchor at a given time, the
//! subject Organization, and the RSA PKCS#1 v1.5 SHA-256 signature. No I/O, no clock.

use std::path::Path;

use openssl::{
    asn1::{Asn1Time, Asn1TimeRef},
    hash::MessageDigest,
    nid::Nid,
    pkcs7::Pkcs7,
    pkey::{Id, PKeyRef, Public},
    rsa::Padding,
    sign::Verifier,
    ssl::SslFiletype,
    stack::Stack,
    x509::{
        X509, X509Ref, X509StoreContext,
        store::{X509Lookup, X509Store, X509StoreBuilder},
        verify::X509VerifyFlags,
    },
};

use super::error::WebhookAuthError;

/// OpenSSL `X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT`.
const ERR_UNABLE_TO_GET_ISSUER_CERT: i32 = 2;
/// OpenSSL `X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY`.
const ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: i32 = 20;

/// The roots a chain must reach.
pub struct TrustAnchors {
    store: X509Store,
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustAnchors").finish_non_exhaustive()
    }
}

impl TrustAnchors {
    /// The system store: `SSL_CERT_FILE` / `SSL_CERT_DIR`, else the usual Linux locations
    /// (`/etc/ssl/certs/ca-certificates.crt` on Debian), found even by a static build.
    pub fn system() -> Result<Self, WebhookAuthError> {
        let probe = openssl_probe::probe();
        let mut builder = Self::builder()?;
        let mut found = false;
        if let Some(file) = &probe.cert_file {
            builder
                .add_lookup(X509Lookup::file())?
                .load_cert_file(file, SslFiletype::PEM)?;
            found = true;
        }
        for dir in &probe.cert_dir {
            if let Some(dir) = dir.to_str() {
                builder
                    .add_lookup(X509Lookup::hash_dir())?
                    .add_dir(dir, SslFiletype::PEM)?;
                found = true;
            }
        }
        if !found {
            return Err(WebhookAuthError::UntrustedChain(
                "no system trust store found; install ca-certificates or set SSL_CERT_FILE".into(),
            ));
        }
        Ok(Self {
            store: builder.build(),
        })
    }

    /// Only the certificates of a PEM bundle (`WEBHOOK_TRUSTED_CA_FILE`).
    pub fn from_pem_file(path: &Path) -> Result<Self, WebhookAuthError> {
        let pem = std::fs::read(path).map_err(|e| {
            WebhookAuthError::UntrustedChain(format!("cannot read {}: {e}", path.display()))
        })?;
        let certs = X509::stack_from_pem(&pem)?;
        if certs.is_empty() {
            return Err(WebhookAuthError::UntrustedChain(format!(
                "{} holds no PEM certificate",
                path.display()
            )));
        }
        Self::from_certs(certs)
    }

    /// Exactly these roots.
    pub fn from_certs(certs: Vec<X509>) -> Result<Self, WebhookAuthError> {
        let mut builder = Self::builder()?;
        for cert in certs {
            builder.add_cert(cert)?;
        }
        Ok(Self {
            store: builder.build(),
        })
    }

    fn builder() -> Result<X509StoreBuilder, WebhookAuthError> {
        let mut builder = X509StoreBuilder::new()?;
        // Validity is checked by `verify_chain` against the time it is given.
        builder.set_flags(X509VerifyFlags::NO_CHECK_TIME)?;
        Ok(builder)
    }
}

/// Result of one chain attempt.
#[derive(Debug)]
pub enum ChainCheck {
    /// The chain reaches a trust anchor and every certificate is valid at the given time;
    /// `valid_until` is the earliest notAfter (Unix seconds).
    Trusted {
        /// Earliest notAfter of the chain.
        valid_until: i64,
    },
    /// The issuer of this certificate is neither given nor trusted: fetch it (AIA) and retry.
    MissingIssuer(X509),
}

enum Attempt {
    Verified(Vec<X509>),
    MissingIssuer(X509),
    Failed(String),
}

/// Verifies `leaf` with `intermediates` against `anchors` at `now` (Unix seconds).
pub fn verify_chain(
    leaf: &X509Ref,
    intermediates: &[X509],
    anchors: &TrustAnchors,
    now: i64,
) -> Result<ChainCheck, WebhookAuthError> {
    let mut untrusted = Stack::new()?;
    for cert in intermediates {
        untrusted.push(cert.clone())?;
    }
    let mut context = X509StoreContext::new()?;
    let attempt = context.init(&anchors.store, leaf, &untrusted, |ctx| {
        if ctx.verify_cert()? {
            let chain = ctx
                .chain()
                .map(|c| c.iter().map(ToOwned::to_owned).collect())
                .unwrap_or_default();
            return Ok(Attempt::Verified(chain));
        }
        let code = ctx.error().as_raw();
        let missing =
            code == ERR_UNABLE_TO_GET_ISSUER_CERT || code == ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY;
        Ok(match ctx.current_cert() {
            Some(cert) if missing => Attempt::MissingIssuer(cert.to_owned()),
            _ => Attempt::Failed(ctx.error().error_string().to_owned()),
        })
    })?;
    let chain = match attempt {
        Attempt::Verified(chain) => chain,
        Attempt::MissingIssuer(cert) => return Ok(ChainCheck::MissingIssuer(cert)),
        Attempt::Failed(reason) => return Err(WebhookAuthError::UntrustedChain(reason)),
    };
    let mut valid_until = i64::MAX;
    for cert in &chain {
        let not_before = unix_time(cert.not_before())?;
        let not_after = unix_time(cert.not_after())?;
        if now < not_before || now > not_after {
            return Err(WebhookAuthError::OutsideValidity);
        }
        valid_until = valid_until.min(not_after);
    }
    Ok(ChainCheck::Trusted { valid_until })
}

/// Unix seconds of an ASN.1 time.
pub fn unix_time(time: &Asn1TimeRef) -> Result<i64, WebhookAuthError> {
    let diff = Asn1Time::from_unix(0)?.diff(time)?;
    Ok(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

/// The leaf subject must have exactly one Organization, equal to `expected`.
pub fn check_organization(leaf: &X509Ref, expected: &str) -> Result<(), WebhookAuthError> {
    let mut organizations = leaf.subject_name().entries_by_nid(Nid::ORGANIZATIONNAME);
    let first = organizations
        .next()
        .and_then(|entry| entry.data().to_string().ok());
    match (first, organizations.next()) {
        (Some(org), None) if org == expected => Ok(()),
        _ => Err(WebhookAuthError::WrongOrganization),
    }
}

/// A one-line subject for logs, e.g. `CN=pcnotifications-dispatch.microsoft.com, O=Microsoft Corporation`.
pub fn subject_line(cert: &X509Ref) -> String {
    cert.subject_name()
        .entries()
        .filter_map(|entry| {
            let name = entry.object().nid().short_name().ok()?;
            let value = entry.data().to_string().ok()?;
            Some(format!("{name}={value}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// RSASSA-PKCS1-v1_5 with SHA-256 over the exact `body` bytes.
pub fn verify_signature(
    key: &PKeyRef<Public>,
    body: &[u8],
    signature: &[u8],
) -> Result<(), WebhookAuthError> {
    if key.id() != Id::RSA || key.bits() < 2048 {
        return Err(WebhookAuthError::WeakKey);
    }
    if signature.len() != key.size() {
        return Err(WebhookAuthError::BadSignature);
    }
    let mut verifier = Verifier::new(MessageDigest::sha256(), key)?;
    verifier.set_rsa_padding(Padding::PKCS1)?;
    match verifier.verify_oneshot(signature, body) {
        Ok(true) => Ok(()),
        _ => Err(WebhookAuthError::BadSignature),
    }
}

/// Parses a download: DER certificate, PEM (one or more), or a DER PKCS#7 bundle (`.p7c`).
/// The first certificate is the one the file is about.
pub fn parse_certificates(bytes: &[u8]) -> Result<Vec<X509>, WebhookAuthError> {
    if let Ok(cert) = X509::from_der(bytes) {
        return Ok(vec![cert]);
    }
    if let Ok(certs) = X509::stack_from_pem(bytes)
        && !certs.is_empty()
    {
        return Ok(certs);
    }
    if let Ok(pkcs7) = Pkcs7::from_der(bytes)
        && let Some(certs) = pkcs7.signed().and_then(|s| s.certificates())
    {
        let certs: Vec<X509> = certs.iter().map(ToOwned::to_owned).collect();
        if !certs.is_empty() {
            return Ok(certs);
        }
    }
    Err(WebhookAuthError::NotACertificate)
}
