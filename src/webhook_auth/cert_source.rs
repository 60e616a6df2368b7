//! Where signing certificates come from: the allow-listed download (no redirects, short
//! timeout, size cap), intermediates completed from the Authority Information Access
//! `caIssuers` URL, and a cache by URL that never outlives the chain's notAfter. Concurrent
//! first requests for one URL share one download.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use openssl::{
    nid::Nid,
    pkey::{PKey, Public},
    x509::{X509, X509Ref},
};
use tokio::sync::OnceCell;

use super::{
    cert_url::CertificateUrl,
    error::WebhookAuthError,
    verify::{self, ChainCheck, TrustAnchors},
};
use crate::config::{ConfigError, HttpSettings, WebhookSettings};

/// How many issuer certificates may be fetched to complete one chain.
const MAX_ISSUER_FETCHES: usize = 3;
/// Cached issuer downloads kept at most.
const MAX_CACHED_ISSUERS: usize = 64;

/// A signing certificate whose chain and Organization were verified.
#[derive(Debug)]
pub struct TrustedCert {
    public_key: PKey<Public>,
    valid_until: i64,
    subject: String,
}

impl TrustedCert {
    /// The key that signs callbacks.
    pub fn public_key(&self) -> &PKey<Public> {
        &self.public_key
    }

    /// Leaf subject, for logs.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// Where trust anchors come from.
#[derive(Debug, Clone)]
pub enum AnchorSource {
    /// The system store.
    System,
    /// A PEM bundle (`WEBHOOK_TRUSTED_CA_FILE`).
    File(PathBuf),
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<TrustedCert>>>>;

/// Fetches, verifies and caches signing certificates.
#[derive(Debug)]
pub struct CertSource {
    client: reqwest::Client,
    prefixes: Vec<String>,
    organization: String,
    max_bytes: usize,
    anchor_source: AnchorSource,
    anchors: OnceCell<Arc<TrustAnchors>>,
    leaves: Mutex<HashMap<String, Slot>>,
    issuers: Mutex<HashMap<String, Vec<X509>>>,
}

impl CertSource {
    /// Builds the source from settings; nothing is fetched or loaded yet. Fails only when the
    /// HTTP client cannot be built (a configuration error). Redirects are refused, as by every
    /// client of [`crate::http::client_builder`].
    pub fn new(settings: &WebhookSettings, http: &HttpSettings) -> Result<Self, ConfigError> {
        let client =
            crate::http::client_with(http, |builder| builder.timeout(settings.fetch_timeout))?;
        Ok(Self {
            client,
            prefixes: settings.cert_url_prefixes.clone(),
            organization: settings.cert_organization.clone(),
            max_bytes: settings.max_cert_bytes,
            anchor_source: match &settings.trusted_ca_file {
                Some(path) => AnchorSource::File(path.clone()),
                None => AnchorSource::System,
            },
            anchors: OnceCell::new(),
            leaves: Mutex::new(HashMap::new()),
            issuers: Mutex::new(HashMap::new()),
        })
    }

    /// The allowed certificate URL prefixes.
    pub fn allowed_prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Loads the trust anchors now (done in the background at start so the first callback
    /// does not pay for it).
    pub async fn warm_up(&self) -> Result<(), WebhookAuthError> {
        self.anchors().await.map(|_| ())
    }

    async fn anchors(&self) -> Result<Arc<TrustAnchors>, WebhookAuthError> {
        self.anchors
            .get_or_try_init(|| async {
                let source = self.anchor_source.clone();
                tokio::task::spawn_blocking(move || match source {
                    AnchorSource::System => TrustAnchors::system(),
                    AnchorSource::File(path) => TrustAnchors::from_pem_file(&path),
                })
                .await
                .map_err(|e| WebhookAuthError::Crypto(e.to_string()))?
                .map(Arc::new)
            })
            .await
            .cloned()
    }

    /// The verified certificate at `url`, from the cache when it is still valid at `now`.
    pub async fn trusted(
        &self,
        url: &CertificateUrl,
        now: i64,
    ) -> Result<Arc<TrustedCert>, WebhookAuthError> {
        let slot = {
            let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
            leaves.entry(url.as_str().to_owned()).or_default().clone()
        };
        let mut cached = slot.lock().await;
        if let Some(cert) = cached.as_ref()
            && now < cert.valid_until
        {
            return Ok(cert.clone());
        }
        match self.load(url, now).await {
            Ok(cert) => {
                *cached = Some(cert.clone());
                Ok(cert)
            }
            Err(e) => {
                *cached = None;
                drop(cached);
                self.leaves
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(url.as_str());
                Err(e)
            }
        }
    }

    async fn load(
        &self,
        url: &CertificateUrl,
        now: i64,
    ) -> Result<Arc<TrustedCert>, WebhookAuthError> {
        let anchors = self.anchors().await?;
        let bytes = self.download(url.url()).await?;
        let mut certs = verify::parse_certificates(&bytes)?;
        let leaf = certs.remove(0);
        let mut intermediates = certs;
        let mut tried = HashSet::new();
        loop {
            match verify::verify_chain(&leaf, &intermediates, &anchors, now)? {
                ChainCheck::Trusted { valid_until } => {
                    verify::check_organization(&leaf, &self.organization)?;
                    let subject = verify::subject_line(&leaf);
                    tracing::info!(certificate.subject = %subject, certificate.url = %url, "signing certificate verified and cached");
                    return Ok(Arc::new(TrustedCert {
                        public_key: leaf.public_key()?,
                        valid_until,
                        subject,
                    }));
                }
                ChainCheck::MissingIssuer(cert) => {
                    if tried.len() >= MAX_ISSUER_FETCHES {
                        return Err(WebhookAuthError::UntrustedChain(
                            "the chain is too long".into(),
                        ));
                    }
                    let next = ca_issuer_urls(&cert)
                        .into_iter()
                        .find(|u| !tried.contains(u))
                        .ok_or_else(|| {
                            WebhookAuthError::UntrustedChain(format!(
                                "the issuer of {} is not trusted and cannot be fetched",
                                verify::subject_line(&cert)
                            ))
                        })?;
                    tried.insert(next.clone());
                    intermediates.extend(self.issuer(&next).await?);
                }
            }
        }
    }

    async fn issuer(&self, url: &str) -> Result<Vec<X509>, WebhookAuthError> {
        if let Some(certs) = self
            .issuers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
        {
            return Ok(certs.clone());
        }
        let parsed = url::Url::parse(url)
            .map_err(|_| WebhookAuthError::UntrustedChain("bad caIssuers URL".into()))?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.username().is_empty() {
            return Err(WebhookAuthError::UntrustedChain(
                "caIssuers URL is not http(s)".into(),
            ));
        }
        let bytes = self.download(&parsed).await.map_err(|e| {
            WebhookAuthError::UntrustedChain(format!(
                "the issuer could not be fetched from caIssuers: {e}"
            ))
        })?;
        let certs = verify::parse_certificates(&bytes).map_err(|_| {
            WebhookAuthError::UntrustedChain("the caIssuers download is not a certificate".into())
        })?;
        let mut issuers = self.issuers.lock().unwrap_or_else(|p| p.into_inner());
        if issuers.len() >= MAX_CACHED_ISSUERS {
            issuers.clear();
        }
        issuers.insert(url.to_owned(), certs.clone());
        Ok(certs)
    }

    async fn download(&self, url: &url::Url) -> Result<Vec<u8>, WebhookAuthError> {
        let fetch =
            |e: reqwest::Error| WebhookAuthError::CertificateFetch(crate::http::describe(&e));
        let mut response = self.client.get(url.clone()).send().await.map_err(fetch)?;
        let status = response.status();
        if status.is_redirection() {
            return Err(WebhookAuthError::CertificateFetch(format!(
                "redirect ({status}) refused"
            )));
        }
        if !status.is_success() {
            return Err(WebhookAuthError::CertificateFetch(format!("HTTP {status}")));
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(WebhookAuthError::CertificateTooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fetch)? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(WebhookAuthError::CertificateTooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The `caIssuers` URLs of a certificate's Authority Information Access extension.
fn ca_issuer_urls(cert: &X509Ref) -> Vec<String> {
    cert.authority_info()
        .map(|descriptions| {
            descriptions
                .iter()
                .filter(|d| d.method().nid() == Nid::AD_CA_ISSUERS)
                .filter_map(|d| d.location().uri().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unbuildable_client_is_a_configuration_error() {
        let mut settings = crate::config::Settings::from_vars(&Default::default()).unwrap();
        settings.http.extra_root_pems = vec![b"not a certificate".to_vec()];
        let err = CertSource::new(&settings.webhook, &settings.http).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    name: "SSL_CERT_FILE",
                    ..
                }
            ),
            "{err}"
        );
    }
}
