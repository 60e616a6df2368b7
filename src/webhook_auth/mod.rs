//! Authentication of Partner Center callbacks: signature headers, the pinned certificate URL,
//! the certificate chain and Organization, and the RSA-SHA256 signature over the exact body.
//! Only [`authenticate`] produces a [`Verified`] body.

pub mod cert_source;
pub mod cert_url;
pub mod error;
pub mod headers;
pub mod verify;

pub use cert_source::{CertSource, TrustedCert};
pub use cert_url::{CertUrlError, CertificateUrl};
pub use error::WebhookAuthError;
pub use headers::SignatureHeaders;

use crate::envelope::HttpHeaders;

/// Largest callback body accepted (Partner Center's are a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A body whose signature verified. Only [`authenticate`] can build one.
#[derive(Debug)]
pub struct Verified<'a> {
    body: &'a [u8],
    certificate_subject: String,
}

impl<'a> Verified<'a> {
    /// The authenticated bytes.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Subject of the signing certificate (for the log).
    pub fn certificate_subject(&self) -> &str {
        &self.certificate_subject
    }
}

/// Runs every check, in order, failing closed: body present, headers, certificate URL,
/// certificate chain and Organization, then the signature over `body`.
/// `now` is seconds since the Unix epoch.
pub async fn authenticate<'a>(
    certs: &CertSource,
    headers: &HttpHeaders,
    body: &'a [u8],
    now: i64,
) -> Result<Verified<'a>, WebhookAuthError> {
    if body.is_empty() {
        return Err(WebhookAuthError::EmptyBody);
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(WebhookAuthError::BodyTooLarge);
    }
    if headers
        .all("content-encoding")
        .any(|encoding| !encoding.trim().eq_ignore_ascii_case("identity"))
    {
        return Err(WebhookAuthError::ContentEncoding);
    }
    let signed = SignatureHeaders::parse(headers, certs.allowed_prefixes())?;
    let cert = certs.trusted(&signed.certificate_url, now).await?;
    verify::verify_signature(cert.public_key(), body, &signed.signature)?;
    Ok(Verified {
        body,
        certificate_subject: cert.subject().to_owned(),
    })
}
