//! The signature headers of a callback, looked up case-insensitively.

use base64::Engine;

use super::{cert_url::CertificateUrl, error::WebhookAuthError};
use crate::envelope::HttpHeaders;

/// What the headers say about the signature.
#[derive(Debug)]
pub struct SignatureHeaders {
    /// Allow-listed certificate location.
    pub certificate_url: CertificateUrl,
    /// Decoded signature bytes.
    pub signature: Vec<u8>,
}

impl SignatureHeaders {
    /// Checks presence of each header, the algorithm, the signature encoding and the URL.
    pub fn parse(
        headers: &HttpHeaders,
        allowed_prefixes: &[String],
    ) -> Result<Self, WebhookAuthError> {
        let single = |name: &'static str| {
            headers
                .single(name)
                .map_err(|_| WebhookAuthError::DuplicateHeader(name))
        };
        let certificate_url = single("x-ms-certificate-url")?
            .filter(|v| !v.trim().is_empty())
            .ok_or(WebhookAuthError::MissingCertificateUrl)?;
        let algorithm = single("x-ms-signature-algorithm")?
            .filter(|v| !v.trim().is_empty())
            .ok_or(WebhookAuthError::MissingAlgorithm)?;
        let from_authorization = single("authorization")?.and_then(|v| strip_scheme(v, true));
        let from_ms_signature = single("x-ms-signature")?.and_then(|v| strip_scheme(v, false));
        let encoded = match (from_authorization, from_ms_signature) {
            (Some(a), Some(b)) if a != b => return Err(WebhookAuthError::ConflictingSignatures),
            (Some(a), _) => a,
            (None, Some(b)) => b,
            (None, None) => return Err(WebhookAuthError::MissingSignature),
        };
        if !algorithm.trim().eq_ignore_ascii_case("rsa-sha256") {
            return Err(WebhookAuthError::UnsupportedAlgorithm);
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| WebhookAuthError::SignatureNotBase64)?;
        let certificate_url = CertificateUrl::parse(certificate_url, allowed_prefixes)
            .map_err(WebhookAuthError::CertificateUrl)?;
        Ok(Self {
            certificate_url,
            signature,
        })
    }
}

/// `Signature <b64>` → `<b64>`. In `Authorization` the scheme is required; in
/// `x-ms-signature` it is optional (public samples disagree).
fn strip_scheme(value: &str, required: bool) -> Option<&str> {
    let value = value.trim();
    let rest = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("signature") => rest.trim(),
        Some(_) => return None,
        None if required => return None,
        None => value,
    };
    (!rest.is_empty()).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CERT_URL_PREFIX;

    const URL: &str = "https://3psostorageacct.blob.core.windows.net/cert/pcnotifications-dispatch.microsoft.com.cer";

    fn parse(pairs: &[(&str, &str)]) -> Result<SignatureHeaders, WebhookAuthError> {
        let headers =
            HttpHeaders::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        SignatureHeaders::parse(&headers, &[DEFAULT_CERT_URL_PREFIX.to_owned()])
    }

    #[test]
    fn authorization_or_x_ms_signature_with_or_without_prefix() {
        for pairs in [
            vec![("Authorization", "Signature AQID")],
            vec![("x-ms-signature", "Signature AQID")],
            vec![("X-MS-SIGNATURE", "AQID")],
            vec![("Authorization", "Bearer abc"), ("x-ms-signature", "AQID")],
            vec![
                ("authorization", "signature AQID"),
                ("x-ms-signature", "AQID"),
            ],
        ] {
            let mut all = vec![
                ("X-MS-Certificate-Url", URL),
                ("X-MS-Signature-Algorithm", "RSA-SHA256"),
            ];
            all.extend(pairs.iter().copied());
            let parsed = parse(&all).unwrap_or_else(|e| panic!("{pairs:?}: {e}"));
            assert_eq!(parsed.signature, vec![1, 2, 3]);
        }
    }

    #[test]
    fn each_missing_or_bad_header_has_its_own_error() {
        let url = ("x-ms-certificate-url", URL);
        let alg = ("x-ms-signature-algorithm", "rsa-sha256");
        let sig = ("Authorization", "Signature AQID");
        let cases: Vec<(Vec<(&str, &str)>, WebhookAuthError)> = vec![
            (vec![alg, sig], WebhookAuthError::MissingCertificateUrl),
            (vec![url, sig], WebhookAuthError::MissingAlgorithm),
            (vec![url, alg], WebhookAuthError::MissingSignature),
            (
                vec![url, alg, ("Authorization", "Bearer AQID")],
                WebhookAuthError::MissingSignature,
            ),
            (
                vec![url, alg, ("Authorization", "AQID")],
                WebhookAuthError::MissingSignature,
            ),
            (
                vec![url, ("x-ms-signature-algorithm", "rsa-sha1"), sig],
                WebhookAuthError::UnsupportedAlgorithm,
            ),
            (
                vec![url, ("x-ms-signature-algorithm", "hmac-sha256"), sig],
                WebhookAuthError::UnsupportedAlgorithm,
            ),
            (
                vec![url, alg, ("Authorization", "Signature not*base64")],
                WebhookAuthError::SignatureNotBase64,
            ),
            (
                vec![url, alg, sig, ("x-ms-signature", "AQIE")],
                WebhookAuthError::ConflictingSignatures,
            ),
            (
                vec![url, url, alg, sig],
                WebhookAuthError::DuplicateHeader("x-ms-certificate-url"),
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(parse(&pairs).unwrap_err(), expected, "{pairs:?}");
        }
    }
}
