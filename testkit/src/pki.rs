//! Test PKI generated at run time: root CA, intermediate CA, the signing leaf (with an AIA
//! `caIssuers` URL), TLS server certificates for 127.0.0.1, and RSA-SHA256 body signatures.

use std::{net::IpAddr, sync::OnceLock};

use base64::Engine;
use openssl::{
    asn1::{Asn1Integer, Asn1Time},
    bn::BigNum,
    hash::MessageDigest,
    nid::Nid,
    pkey::{PKey, Private},
    rsa::{Padding, Rsa},
    sign::Signer,
    x509::{
        X509, X509Builder, X509Extension, X509NameBuilder,
        extension::{
            AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectAlternativeName,
            SubjectKeyIdentifier,
        },
    },
};

/// A certificate with its private key.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert: X509,
    /// Its key.
    pub key: PKey<Private>,
}

impl Issued {
    /// PEM of the certificate.
    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert.to_pem().expect("certificate to PEM")
    }

    /// DER of the certificate.
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert.to_der().expect("certificate to DER")
    }

    /// PKCS#8 PEM of the key.
    pub fn key_pem(&self) -> Vec<u8> {
        self.key.private_key_to_pem_pkcs8().expect("key to PEM")
    }

    /// Signs `body` with RSASSA-PKCS1-v1_5 SHA-256; base64.
    pub fn sign_b64(&self, body: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(sign(&self.key, body))
    }
}

/// RSASSA-PKCS1-v1_5 with SHA-256.
pub fn sign(key: &PKey<Private>, body: &[u8]) -> Vec<u8> {
    let mut signer = Signer::new(MessageDigest::sha256(), key).expect("signer");
    signer.set_rsa_padding(Padding::PKCS1).expect("padding");
    signer.sign_oneshot_to_vec(body).expect("sign")
}

/// Key roles; each role reuses one RSA-2048 key per test process (generation is slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    /// Root CA.
    Root = 0,
    /// Intermediate CA.
    Intermediate = 1,
    /// The signing leaf.
    Leaf = 2,
    /// TLS servers.
    Tls = 3,
    /// A key nobody trusts.
    Other = 4,
}

/// The cached key of a role.
pub fn key(slot: KeySlot) -> PKey<Private> {
    static KEYS: OnceLock<Vec<PKey<Private>>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..5)
            .map(|_| PKey::from_rsa(Rsa::generate(2048).expect("RSA key")).expect("pkey"))
            .collect()
    })[slot as usize]
        .clone()
}

/// What to put in a certificate.
#[derive(Debug, Clone)]
pub struct CertSpec {
    /// Subject CN.
    pub common_name: String,
    /// Subject O, if any.
    pub organization: Option<String>,
    /// notBefore, seconds relative to now.
    pub not_before: i64,
    /// notAfter, seconds relative to now.
    pub not_after: i64,
    /// A CA certificate.
    pub ca: bool,
    /// AIA caIssuers URL.
    pub ca_issuers: Option<String>,
    /// IP subjectAltNames.
    pub ips: Vec<IpAddr>,
    /// DNS subjectAltNames.
    pub dns: Vec<String>,
    /// Which key.
    pub key: KeySlot,
}

impl CertSpec {
    /// A leaf valid from an hour ago for 30 days.
    pub fn leaf(common_name: &str, organization: Option<&str>) -> Self {
        Self {
            common_name: common_name.to_owned(),
            organization: organization.map(str::to_owned),
            not_before: -3600,
            not_after: 30 * 86_400,
            ca: false,
            ca_issuers: None,
            ips: Vec::new(),
            dns: Vec::new(),
            key: KeySlot::Leaf,
        }
    }

    /// A CA valid for ten years.
    pub fn ca(common_name: &str, key: KeySlot) -> Self {
        Self {
            ca: true,
            not_after: 3650 * 86_400,
            key,
            ..Self::leaf(common_name, Some("Test PKI"))
        }
    }

    /// Validity relative to now.
    pub fn valid(mut self, not_before: i64, not_after: i64) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// Adds an AIA caIssuers URL.
    pub fn ca_issuers(mut self, url: &str) -> Self {
        self.ca_issuers = Some(url.to_owned());
        self
    }

    /// Uses another key.
    pub fn with_key(mut self, key: KeySlot) -> Self {
        self.key = key;
        self
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A self-signed certificate.
pub fn self_signed(spec: &CertSpec) -> Issued {
    build(spec, None)
}

/// A certificate issued by `issuer`.
pub fn issue(spec: &CertSpec, issuer: &Issued) -> Issued {
    build(spec, Some(issuer))
}

#[allow(deprecated)] // X509Extension::new_nid is the only way the crate offers to write AIA.
fn build(spec: &CertSpec, issuer: Option<&Issued>) -> Issued {
    let key = key(spec.key);
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, &spec.common_name)
        .expect("CN");
    if let Some(org) = &spec.organization {
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, org)
            .expect("O");
    }
    let name = name.build();
    let mut b = X509Builder::new().expect("builder");
    b.set_version(2).expect("version");
    let serial = BigNum::from_u32(rand_serial())
        .and_then(|n| Asn1Integer::from_bn(&n))
        .expect("serial");
    b.set_serial_number(&serial).expect("serial");
    b.set_subject_name(&name).expect("subject");
    match issuer {
        Some(i) => b.set_issuer_name(i.cert.subject_name()).expect("issuer"),
        None => b.set_issuer_name(&name).expect("issuer"),
    }
    b.set_pubkey(&key).expect("pubkey");
    let t = now();
    b.set_not_before(&Asn1Time::from_unix(t + spec.not_before).expect("time"))
        .expect("nb");
    b.set_not_after(&Asn1Time::from_unix(t + spec.not_after).expect("time"))
        .expect("na");
    if spec.ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("bc");
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .expect("ku"),
        )
        .expect("ku");
    } else {
        b.append_extension(BasicConstraints::new().build().expect("bc"))
            .expect("bc");
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_encipherment()
                .build()
                .expect("ku"),
        )
        .expect("ku");
    }
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|i| i.cert.as_ref()), None))
        .expect("ski");
    b.append_extension(ski).expect("ski");
    if let Some(issuer) = issuer {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&b.x509v3_context(Some(&issuer.cert), None))
            .expect("aki");
        b.append_extension(aki).expect("aki");
    }
    if !spec.ips.is_empty() || !spec.dns.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for ip in &spec.ips {
            san.ip(&ip.to_string());
        }
        for dns in &spec.dns {
            san.dns(dns);
        }
        let san = san
            .build(&b.x509v3_context(issuer.map(|i| i.cert.as_ref()), None))
            .expect("san");
        b.append_extension(san).expect("san");
    }
    if let Some(url) = &spec.ca_issuers {
        let ext = X509Extension::new_nid(
            None,
            None,
            Nid::INFO_ACCESS,
            &format!("caIssuers;URI:{url}"),
        )
        .expect("aia");
        b.append_extension(ext).expect("aia");
    }
    let signing_key = issuer.map_or(&key, |i| &i.key);
    b.sign(signing_key, MessageDigest::sha256()).expect("sign");
    Issued {
        cert: b.build(),
        key,
    }
}

fn rand_serial() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    (now() as u32 & 0x00ff_ffff) ^ (NEXT.fetch_add(1, Ordering::Relaxed) << 24) | 1
}

/// The usual test hierarchy: a root, an intermediate, and the signing leaf
/// `CN=pcnotifications-dispatch.test, O=Microsoft Corporation` whose AIA points at
/// `ca_issuers_url` (where the intermediate's DER should be served).
pub struct TestPki {
    /// Root CA (trusted by the tests).
    pub root: Issued,
    /// Intermediate CA (not sent with the leaf).
    pub intermediate: Issued,
    /// Signing leaf.
    pub leaf: Issued,
}

impl TestPki {
    /// Builds the hierarchy.
    pub fn new(ca_issuers_url: Option<&str>) -> Self {
        let root = self_signed(&CertSpec::ca("Test Root CA", KeySlot::Root));
        let intermediate = issue(
            &CertSpec::ca("Test Issuing CA", KeySlot::Intermediate),
            &root,
        );
        let mut spec = CertSpec::leaf(
            "pcnotifications-dispatch.test",
            Some("Microsoft Corporation"),
        );
        spec.ca_issuers = ca_issuers_url.map(str::to_owned);
        let leaf = issue(&spec, &intermediate);
        Self {
            root,
            intermediate,
            leaf,
        }
    }

    /// A TLS server certificate for 127.0.0.1 / localhost issued by the root.
    pub fn tls_server(&self) -> Issued {
        let mut spec = CertSpec::leaf("127.0.0.1", None).with_key(KeySlot::Tls);
        spec.ips = vec![IpAddr::from([127, 0, 0, 1])];
        spec.dns = vec!["localhost".into()];
        issue(&spec, &self.root)
    }
}
