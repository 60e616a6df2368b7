//! `WebhookAuthError`: one variant per reason a callback is rejected.

use super::cert_url::CertUrlError;

/// Why a callback was not authenticated. Each one refuses the callback: 401, except 413 for
/// [`Self::BodyTooLarge`] and 415 for [`Self::ContentEncoding`] (see `WebhookError::status`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookAuthError {
    /// The request has no body.
    #[error("the request has no body to verify")]
    EmptyBody,
    /// The body is larger than any Partner Center callback.
    #[error("the body is too large")]
    BodyTooLarge,
    /// The body is compressed; the signature covers the bytes as sent.
    #[error("compressed bodies are not accepted")]
    ContentEncoding,
    /// A required header appears more than once.
    #[error("header {0} appears more than once")]
    DuplicateHeader(&'static str),
    /// `x-ms-certificate-url` is missing.
    #[error("the x-ms-certificate-url header is missing")]
    MissingCertificateUrl,
    /// `x-ms-signature-algorithm` is missing.
    #[error("the x-ms-signature-algorithm header is missing")]
    MissingAlgorithm,
    /// Neither `Authorization: Signature …` nor `x-ms-signature` is present.
    #[error("no signature (Authorization: Signature … or x-ms-signature)")]
    MissingSignature,
    /// Authorization and x-ms-signature carry different signatures.
    #[error("Authorization and x-ms-signature carry different signatures")]
    ConflictingSignatures,
    /// The algorithm is not `rsa-sha256`.
    #[error("the signature algorithm is not rsa-sha256")]
    UnsupportedAlgorithm,
    /// The signature is not base64.
    #[error("the signature is not base64")]
    SignatureNotBase64,
    /// The certificate URL is not allowed.
    #[error("the certificate URL is not allowed: {0}")]
    CertificateUrl(CertUrlError),
    /// The certificate could not be downloaded.
    #[error("the certificate could not be downloaded: {0}")]
    CertificateFetch(String),
    /// The download is larger than the cap.
    #[error("the certificate download is too large")]
    CertificateTooLarge,
    /// The download is neither a DER nor a PEM certificate.
    #[error("the download is not a certificate")]
    NotACertificate,
    /// The chain does not reach a trusted root.
    #[error("the certificate chain is not trusted: {0}")]
    UntrustedChain(String),
    /// A certificate in the chain is expired or not yet valid.
    #[error("a certificate in the chain is outside its validity period")]
    OutsideValidity,
    /// The leaf subject's Organization is not the expected one.
    #[error("the certificate subject Organization is not the expected one")]
    WrongOrganization,
    /// The certificate key is not RSA of at least 2048 bits.
    #[error("the certificate key is not RSA-2048 or larger")]
    WeakKey,
    /// The signature does not verify over the body.
    #[error("the signature does not verify")]
    BadSignature,
    /// OpenSSL failed unexpectedly.
    #[error("verification failed: {0}")]
    Crypto(String),
}

impl WebhookAuthError {
    /// The short reason sent to the caller: no internals, no URLs, no key material.
    pub fn public_reason(&self) -> &'static str {
        match self {
            Self::EmptyBody => "empty body",
            Self::BodyTooLarge => "body too large",
            Self::ContentEncoding => "compressed body",
            Self::DuplicateHeader(_) => "duplicate signature header",
            Self::MissingCertificateUrl => "missing x-ms-certificate-url",
            Self::MissingAlgorithm => "missing x-ms-signature-algorithm",
            Self::MissingSignature => "missing signature",
            Self::ConflictingSignatures => "conflicting signatures",
            Self::UnsupportedAlgorithm => "unsupported signature algorithm",
            Self::SignatureNotBase64 => "malformed signature",
            Self::CertificateUrl(_) => "certificate URL not allowed",
            Self::CertificateFetch(_) | Self::CertificateTooLarge | Self::NotACertificate => {
                "certificate unavailable"
            }
            Self::UntrustedChain(_)
            | Self::OutsideValidity
            | Self::WrongOrganization
            | Self::WeakKey => "certificate not trusted",
            Self::BadSignature | Self::Crypto(_) => "signature does not verify",
        }
    }
}

impl From<openssl::error::ErrorStack> for WebhookAuthError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        Self::Crypto(e.to_string())
    }
}
