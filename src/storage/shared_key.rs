//! SharedKey authorization of the Blob and Queue services (version 2009-09-19 and later): the
//! string-to-sign built from the method, the standard headers, the `x-ms-*` headers and the
//! canonical resource, and its HMAC-SHA256 under the account key. Pure, so it is tested with a
//! fixed vector; Azurite checks it for real in the integration tests.

use base64::Engine;
use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};
use url::Url;

use super::account::AccountKey;

/// The standard headers in the order they are signed.
const SIGNED_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// The string-to-sign of a request to `url` with these headers (any casing). `account` is the
/// signing account; for Azurite's path-style URLs the path already starts with it, and the
/// canonical resource repeats it, as the SDKs do.
pub fn string_to_sign(account: &str, method: &str, url: &Url, headers: &[(&str, &str)]) -> String {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.trim())
    };
    let mut text = String::from(method);
    text.push('\n');
    for name in SIGNED_HEADERS {
        let value = match (name, header(name)) {
            ("content-length", "0") => "",
            (_, value) => value,
        };
        text.push_str(value);
        text.push('\n');
    }
    let mut ms: Vec<(String, &str)> = headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-ms-"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim()))
        .collect();
    ms.sort();
    for (name, value) in ms {
        text.push_str(&format!("{name}:{value}\n"));
    }
    text.push('/');
    text.push_str(account);
    text.push_str(url.path());
    let mut params: Vec<(String, Vec<String>)> = Vec::new();
    for (name, value) in url.query_pairs() {
        let name = name.to_ascii_lowercase();
        match params.iter_mut().find(|(k, _)| *k == name) {
            Some((_, values)) => values.push(value.into_owned()),
            None => params.push((name, vec![value.into_owned()])),
        }
    }
    params.sort();
    for (name, mut values) in params {
        values.sort();
        text.push_str(&format!("\n{name}:{}", values.join(",")));
    }
    text
}

/// `base64(HMAC-SHA256(key, string_to_sign))`.
pub fn signature(
    key: &AccountKey,
    string_to_sign: &str,
) -> Result<String, openssl::error::ErrorStack> {
    let key = PKey::hmac(key.bytes())?;
    let mut signer = Signer::new(MessageDigest::sha256(), &key)?;
    signer.update(string_to_sign.as_bytes())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(signer.sign_to_vec()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVELOPMENT_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    #[test]
    fn the_lease_example_signs_as_azurite_expects() {
        // The example of ../shared/spec/functions-timer-blob.md §6, checked there against
        // Azurite; the signature was computed with `openssl dgst -sha256 -mac HMAC`.
        let url = Url::parse("http://127.0.0.1:10000/devstoreaccount1/cfg/state.json?comp=lease")
            .unwrap();
        let headers = [
            ("x-ms-version", "2021-08-06"),
            ("X-Ms-Lease-Duration", "60"),
            ("x-ms-date", "Wed, 02 Dec 2026 16:47:00 GMT"),
            ("x-ms-lease-action", "acquire"),
            ("Content-Length", "0"),
        ];
        let text = string_to_sign("devstoreaccount1", "PUT", &url, &headers);
        assert_eq!(
            text,
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Wed, 02 Dec 2026 16:47:00 GMT\nx-ms-lease-action:acquire\n\
             x-ms-lease-duration:60\nx-ms-version:2021-08-06\n/devstoreaccount1/devstoreaccount1/cfg/state.json\ncomp:lease"
        );
        let key = AccountKey::parse(DEVELOPMENT_KEY).unwrap();
        assert_eq!(
            signature(&key, &text).unwrap(),
            "81nS5ttZWLM1dATJddHxsxDejI2g4W5CU2OaNXAL68U="
        );
    }

    #[test]
    fn standard_headers_and_query_parameters_are_canonical() {
        let url = Url::parse(
            "https://st1.queue.core.windows.net/referral-sync/messages?VisibilityTimeout=30&popreceipt=a%2Bb%3D&numofmessages=1",
        )
        .unwrap();
        let headers = [
            ("Content-Type", "application/xml; charset=utf-8"),
            ("Content-Length", "57"),
            ("x-ms-date", "d"),
        ];
        assert_eq!(
            string_to_sign("st1", "POST", &url, &headers),
            "POST\n\n\n57\n\napplication/xml; charset=utf-8\n\n\n\n\n\n\nx-ms-date:d\n\
             /st1/referral-sync/messages\nnumofmessages:1\npopreceipt:a+b=\nvisibilitytimeout:30"
        );
    }
}
