//! A complete signing world for webhook tests and benchmarks: the test PKI, served the way
//! Partner Center's certificate is (the leaf alone over https, the intermediate at the leaf's
//! AIA URL over http), plus the settings variables that point the handler at it.

use std::{collections::HashMap, io::Write};

use crate::{
    cert_host::{CertHost, FileReply},
    pki::{Issued, TestPki},
    tls::HttpsFront,
};

/// The test PKI, served the way Partner Center's certificate is: the leaf alone at an https
/// URL under the allowed prefix, the intermediate at the leaf's AIA caIssuers URL (http).
pub struct CertWorld {
    /// Root, intermediate, leaf.
    pub pki: TestPki,
    /// Plain HTTP host (AIA, and the backend of the https front).
    pub host: CertHost,
    /// HTTPS front of `host`.
    pub front: HttpsFront,
    ca_file: tempfile::NamedTempFile,
}

impl CertWorld {
    /// Builds and serves the PKI: `/cert/leaf.cer` (DER) and `/aia/issuing.cer` (DER).
    pub async fn start() -> Self {
        let host = CertHost::start().await;
        let pki = TestPki::new(Some(&format!("{}/aia/issuing.cer", host.base_url())));
        let tls = pki.tls_server();
        let front = HttpsFront::start(host.addr(), &tls).await;
        host.set("/cert/leaf.cer", FileReply::ok(pki.leaf.cert_der()));
        host.set(
            "/aia/issuing.cer",
            FileReply::ok(pki.intermediate.cert_der()),
        );
        let mut ca_file = tempfile::NamedTempFile::new().expect("temp file");
        ca_file.write_all(&pki.root.cert_pem()).expect("write root");
        Self {
            pki,
            host,
            front,
            ca_file,
        }
    }

    /// The allowed prefix: `https://127.0.0.1:PORT/cert/`.
    pub fn prefix(&self) -> String {
        format!("{}/cert/", self.front.base_url())
    }

    /// The https URL of a file under `/cert/`.
    pub fn cert_url(&self, file: &str) -> String {
        format!("{}{file}", self.prefix())
    }

    /// Path of the PEM file holding the test root.
    pub fn root_pem_path(&self) -> String {
        self.ca_file.path().display().to_string()
    }

    /// Settings variables pointing the webhook at this PKI.
    pub fn vars(&self) -> HashMap<String, String> {
        HashMap::from([
            ("WEBHOOK_CERT_URL_PREFIXES".to_owned(), self.prefix()),
            ("WEBHOOK_TRUSTED_CA_FILE".to_owned(), self.root_pem_path()),
        ])
    }

    /// The three signature headers for `body`, signed by `signer`.
    pub fn signed_headers(
        &self,
        body: &[u8],
        signer: &Issued,
        cert_file: &str,
    ) -> Vec<(String, String)> {
        vec![
            (
                "Authorization".into(),
                format!("Signature {}", signer.sign_b64(body)),
            ),
            ("x-ms-certificate-url".into(), self.cert_url(cert_file)),
            ("x-ms-signature-algorithm".into(), "rsa-sha256".into()),
        ]
    }
}
