//! `CertificateUrl`: an `x-ms-certificate-url` that passed the allow-list.

use std::fmt;

/// An https URL under one of the allowed prefixes, in canonical form, naming one file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertificateUrl(url::Url);

/// Why a certificate URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertUrlError {
    /// Not an absolute URL.
    #[error("not an absolute URL")]
    NotAUrl,
    /// Not https.
    #[error("not https")]
    NotHttps,
    /// Carries user:password@.
    #[error("carries user information")]
    UserInfo,
    /// Has a query string.
    #[error("has a query")]
    Query,
    /// Has a fragment.
    #[error("has a fragment")]
    Fragment,
    /// Contains `..`, percent-encoding, backslashes or is not in canonical form.
    #[error("is not in canonical form or contains dot segments")]
    NotCanonical,
    /// Does not start with an allowed prefix.
    #[error("is not under an allowed prefix")]
    NotAllowed,
    /// The part after the prefix is not a plain file name.
    #[error("does not name a single file under the prefix")]
    BadFileName,
}

impl CertificateUrl {
    /// Checks `raw` against the allowed prefixes (each an https URL ending in `/`).
    pub fn parse(raw: &str, allowed_prefixes: &[String]) -> Result<Self, CertUrlError> {
        let raw = raw.trim();
        if raw.len() > 2048 {
            return Err(CertUrlError::NotCanonical);
        }
        let url = url::Url::parse(raw).map_err(|_| CertUrlError::NotAUrl)?;
        if url.scheme() != "https" {
            return Err(CertUrlError::NotHttps);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(CertUrlError::UserInfo);
        }
        if url.query().is_some() {
            return Err(CertUrlError::Query);
        }
        if url.fragment().is_some() {
            return Err(CertUrlError::Fragment);
        }
        if url.as_str() != raw || raw.contains("..") || raw.contains('%') || raw.contains('\\') {
            return Err(CertUrlError::NotCanonical);
        }
        let file = allowed_prefixes
            .iter()
            .find_map(|prefix| raw.strip_prefix(prefix.as_str()))
            .ok_or(CertUrlError::NotAllowed)?;
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if file.is_empty() || !file.chars().all(plain) || file.starts_with('.') {
            return Err(CertUrlError::BadFileName);
        }
        Ok(Self(url))
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// As a `url::Url`.
    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

impl fmt::Display for CertificateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CERT_URL_PREFIX;

    fn parse(raw: &str) -> Result<CertificateUrl, CertUrlError> {
        CertificateUrl::parse(raw, &[DEFAULT_CERT_URL_PREFIX.to_owned()])
    }

    #[test]
    fn the_published_url_is_accepted() {
        for name in [
            "pcnotifications-dispatch.microsoft.com.cer",
            "pcnotifications.microsoft.com.cer",
        ] {
            let url = format!("{DEFAULT_CERT_URL_PREFIX}{name}");
            assert_eq!(parse(&url).unwrap().as_str(), url);
        }
    }

    #[test]
    fn one_rejection_per_rule() {
        let cases = [
            ("not a url", CertUrlError::NotAUrl),
            (
                "http://3psostorageacct.blob.core.windows.net/cert/a.cer",
                CertUrlError::NotHttps,
            ),
            (
                "https://user:pw@3psostorageacct.blob.core.windows.net/cert/a.cer",
                CertUrlError::UserInfo,
            ),
            (
                "https://3psostorageacct.blob.core.windows.net/cert/a.cer?x=1",
                CertUrlError::Query,
            ),
            (
                "https://3psostorageacct.blob.core.windows.net/cert/a.cer#f",
                CertUrlError::Fragment,
            ),
            (
                "https://3psostorageacct.blob.core.windows.net/cert/../evil/a.cer",
                CertUrlError::NotCanonical,
            ),
            (
                "https://3psostorageacct.blob.core.windows.net/cert/%2e%2e/a.cer",
                CertUrlError::NotCanonical,
            ),
            (
                "https://3PSOSTORAGEACCT.blob.core.windows.net/cert/a.cer",
                CertUrlError::NotCanonical,
            ),
            (
                "https://3psostorageacct.blob.core.windows.net.evil.test/cert/a.cer",
                CertUrlError::NotAllowed,
            ),
            (
                "https://3psostorageacct.blob.core.windows.net:8443/cert/a.cer",
                CertUrlError::NotAllowed,
            ),
            ("https://evil.test/cert/a.cer", CertUrlError::NotAllowed),
            (
                "https://3psostorageacct.blob.core.windows.net/certs/a.cer",
                CertUrlError::NotAllowed,
            ),
            (
                "https://3psostorageacct.blob.core.windows.net/cert/",
                CertUrlError::BadFileName,
            ),
            (
                "https://3psostorageacct.blob.core.windows.net/cert/sub/a.cer",
                CertUrlError::BadFileName,
            ),
        ];
        for (raw, expected) in cases {
            assert_eq!(parse(raw), Err(expected), "{raw}");
        }
    }
}
