//! `SALESFORCE_*` settings: the org's My Domain URL, the External Client App's consumer key,
//! how the connector authenticates (client credentials, or JWT bearer with a private key), the
//! pinned REST API version, the share of the daily API allocation the connector may use, and
//! the lag of the change poll. Parsed once, with errors that name the setting and the fix.

use std::time::Duration;

use azure_core::credentials::Secret;
use url::Url;

use crate::config::{ConfigError, SecretSetting, is_key_vault_reference, parse_number};

/// REST API version used when `SALESFORCE_API_VERSION` is not set (Summer '26).
pub const DEFAULT_API_VERSION: &str = "67.0";
/// Lowest accepted API version: `updateOnly` on upsert needs v61.0.
pub const MIN_API_VERSION: (u32, u32) = (61, 0);
/// Default share of the daily API allocation the connector may use.
pub const DEFAULT_API_BUDGET_PERCENT: u8 = 80;
/// Default lag behind Salesforce's clock of the change poll's upper bound.
pub const DEFAULT_POLL_LAG: Duration = Duration::from_secs(60);

const MY_DOMAIN_FIX: &str = "use your org's My Domain, https://<domain>.my.salesforce.com \
     (Setup > My Domain; a sandbox is https://<domain>--<sandbox>.sandbox.my.salesforce.com)";

/// How the connector obtains its access token.
#[derive(Debug, Clone)]
pub enum SalesforceAuth {
    /// OAuth 2.0 client credentials: the External Client App's consumer secret; tokens are
    /// issued for the app's "Run As" user.
    ClientCredentials {
        /// `SALESFORCE_CLIENT_SECRET` (redacted in `Debug`).
        client_secret: Secret,
    },
    /// OAuth 2.0 JWT bearer: an RS256 assertion for `username`, signed with the private key
    /// whose certificate is uploaded to the app.
    JwtBearer {
        /// `SALESFORCE_USERNAME`, the integration user (the JWT `sub`).
        username: String,
        /// `SALESFORCE_PRIVATE_KEY`, an RSA private key in PEM (redacted in `Debug`).
        private_key: Secret,
    },
}

impl SalesforceAuth {
    /// `client_credentials` or `jwt_bearer`, for logs and output.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ClientCredentials { .. } => "client_credentials",
            Self::JwtBearer { .. } => "jwt_bearer",
        }
    }
}

/// The Salesforce org and the connector's credential.
#[derive(Debug, Clone)]
pub struct SalesforceSettings {
    /// `SALESFORCE_URL`: the org's My Domain (`https://acme.my.salesforce.com`), the base of
    /// both the token endpoint and the REST API.
    pub url: Url,
    /// `SALESFORCE_CLIENT_ID`: the External Client App's consumer key.
    pub client_id: String,
    /// Client credentials or JWT bearer.
    pub auth: SalesforceAuth,
    /// `SALESFORCE_API_VERSION` (`67.0`).
    pub api_version: String,
    /// `SALESFORCE_API_BUDGET_PERCENT`: stop using the API above this share of the daily
    /// allocation (1 to 100).
    pub api_budget_percent: u8,
    /// `SALESFORCE_POLL_LAG_SECONDS`: the change poll reads up to Salesforce's "now" minus this.
    pub poll_lag: Duration,
    /// `SALESFORCE_NEW_STAGE`: the stage of an opportunity created for a referral.
    pub new_stage: String,
}

impl SalesforceSettings {
    /// Parses the settings from a lookup of variable names (empty values count as unset).
    /// Fails naming the first missing or invalid setting and how to fix it.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let raw = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let plain = |name: &'static str| match raw(name) {
            Some(v) if is_key_vault_reference(&v) => Err(ConfigError::UnresolvedReference { name }),
            v => Ok(v),
        };
        let secret = |name: &'static str| -> Result<Option<Secret>, ConfigError> {
            let setting = match raw(name) {
                None => SecretSetting::Unset,
                Some(v) if is_key_vault_reference(&v) => SecretSetting::Unresolved(name),
                Some(v) => SecretSetting::Set(Secret::new(v)),
            };
            Ok(setting.get()?.cloned())
        };

        let url = parse_url(plain("SALESFORCE_URL")?)?;
        let client_id = plain("SALESFORCE_CLIENT_ID")?.ok_or(ConfigError::Missing {
            name: "SALESFORCE_CLIENT_ID",
            hint: "set it to the External Client App's Consumer Key (Setup > External Client App \
                   Manager > the app > Settings > OAuth Settings > Consumer Key and Secret)",
        })?;
        let auth = parse_auth(
            secret("SALESFORCE_CLIENT_SECRET")?,
            plain("SALESFORCE_USERNAME")?,
            secret("SALESFORCE_PRIVATE_KEY")?,
        )?;
        let api_version = match plain("SALESFORCE_API_VERSION")? {
            None => DEFAULT_API_VERSION.to_owned(),
            Some(v) => parse_api_version(&v)?,
        };
        let api_budget_percent = parse_number(
            "SALESFORCE_API_BUDGET_PERCENT",
            plain("SALESFORCE_API_BUDGET_PERCENT")?,
            DEFAULT_API_BUDGET_PERCENT,
            1..=100,
        )?;
        let poll_lag = Duration::from_secs(parse_number(
            "SALESFORCE_POLL_LAG_SECONDS",
            plain("SALESFORCE_POLL_LAG_SECONDS")?,
            DEFAULT_POLL_LAG.as_secs(),
            0..=3600,
        )?);
        let new_stage =
            plain("SALESFORCE_NEW_STAGE")?.unwrap_or_else(|| super::DEFAULT_NEW_STAGE.to_owned());
        Ok(Self {
            url,
            client_id,
            auth,
            api_version,
            api_budget_percent,
            poll_lag,
            new_stage,
        })
    }
}

/// The My Domain URL: https (http only for a loopback fake), a host and nothing else, and not
/// one of the shared login hosts, which refuse the client credentials grant.
fn parse_url(raw: Option<String>) -> Result<Url, ConfigError> {
    const NAME: &str = "SALESFORCE_URL";
    let Some(text) = raw else {
        return Err(ConfigError::Missing {
            name: NAME,
            hint: "set it to your org's My Domain URL, https://<domain>.my.salesforce.com",
        });
    };
    let invalid = |reason: String| ConfigError::Invalid { name: NAME, reason };
    let url = Url::parse(text.trim_end_matches('/')).map_err(|e| {
        invalid(format!(
            "`{text}` is not an absolute URL ({e}); {MY_DOMAIN_FIX}"
        ))
    })?;
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let loopback = matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]");
    if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) || host.is_empty() {
        return Err(invalid(format!(
            "`{text}` must be an https URL (http is allowed only for 127.0.0.1); {MY_DOMAIN_FIX}"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials do not belong in the URL".to_owned()));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(format!(
            "`{text}` must be the org's address without a path, query or fragment; {MY_DOMAIN_FIX}"
        )));
    }
    if matches!(
        host.as_str(),
        "login.salesforce.com" | "test.salesforce.com"
    ) {
        return Err(invalid(format!(
            "{host} answers token requests with \"request not supported on this domain\"; {MY_DOMAIN_FIX}"
        )));
    }
    if host.ends_with(".lightning.force.com") {
        return Err(invalid(format!(
            "{host} is the Lightning user interface, not the API; {MY_DOMAIN_FIX}"
        )));
    }
    Ok(url)
}

fn parse_auth(
    client_secret: Option<Secret>,
    username: Option<String>,
    private_key: Option<Secret>,
) -> Result<SalesforceAuth, ConfigError> {
    match (client_secret, username, private_key) {
        (Some(_), _, Some(_)) => Err(ConfigError::Invalid {
            name: "SALESFORCE_PRIVATE_KEY",
            reason:
                "both SALESFORCE_CLIENT_SECRET (client credentials) and SALESFORCE_PRIVATE_KEY \
                     (JWT bearer) are set; keep only the one the External Client App is set up for"
                    .to_owned(),
        }),
        (Some(client_secret), None, None) => {
            Ok(SalesforceAuth::ClientCredentials { client_secret })
        }
        (Some(_), Some(_), None) => Err(ConfigError::Invalid {
            name: "SALESFORCE_USERNAME",
            reason: "is only used with SALESFORCE_PRIVATE_KEY (JWT bearer); with \
                     SALESFORCE_CLIENT_SECRET the token is issued for the app's Run As user, so \
                     unset SALESFORCE_USERNAME"
                .to_owned(),
        }),
        (None, Some(username), Some(key)) => {
            let private_key = parse_private_key(&key)?;
            Ok(SalesforceAuth::JwtBearer {
                username,
                private_key,
            })
        }
        (None, None, Some(_)) => Err(ConfigError::Missing {
            name: "SALESFORCE_USERNAME",
            hint: "SALESFORCE_PRIVATE_KEY is set, so JWT bearer is used: set the integration \
                   user's username (the JWT subject)",
        }),
        (None, Some(_), None) => Err(ConfigError::Missing {
            name: "SALESFORCE_PRIVATE_KEY",
            hint: "SALESFORCE_USERNAME is set, so JWT bearer is used: set the RSA private key \
                   (PEM) whose certificate is uploaded to the External Client App",
        }),
        (None, None, None) => Err(ConfigError::Missing {
            name: "SALESFORCE_CLIENT_SECRET",
            hint: "set the External Client App's Consumer Secret (client credentials), or \
                   SALESFORCE_USERNAME and SALESFORCE_PRIVATE_KEY (JWT bearer)",
        }),
    }
}

/// Checks that the key is an RSA private key in PEM. App settings often hold the PEM on one
/// line with literal `\n`, which is turned back into line breaks.
fn parse_private_key(key: &Secret) -> Result<Secret, ConfigError> {
    let pem = key.secret().replace("\\n", "\n");
    let invalid = |reason: &str| ConfigError::Invalid {
        name: "SALESFORCE_PRIVATE_KEY",
        reason: reason.to_owned(),
    };
    let parsed = openssl::pkey::PKey::private_key_from_pem(pem.as_bytes()).map_err(|_| {
        invalid(
            "is not a PEM private key; give the whole -----BEGIN PRIVATE KEY----- block (line \
             breaks may be written as \\n)",
        )
    })?;
    if parsed.rsa().is_err() {
        return Err(invalid(
            "is not an RSA key; Salesforce's JWT bearer flow needs RS256, so use an RSA key",
        ));
    }
    Ok(Secret::new(pem))
}

/// `NN.N`, at least v61.0.
fn parse_api_version(raw: &str) -> Result<String, ConfigError> {
    let text = raw.trim_start_matches(['v', 'V']);
    let parsed = text.split_once('.').and_then(|(major, minor)| {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        (digits(major) && minor.len() == 1 && digits(minor))
            .then(|| Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?)))
            .flatten()
    });
    match parsed {
        Some(version) if version >= MIN_API_VERSION => Ok(text.to_owned()),
        Some(_) => Err(ConfigError::Invalid {
            name: "SALESFORCE_API_VERSION",
            reason: format!(
                "`{raw}` is older than 61.0, the first version with upsert `updateOnly`; use e.g. {DEFAULT_API_VERSION} (the default)"
            ),
        }),
        None => Err(ConfigError::Invalid {
            name: "SALESFORCE_API_VERSION",
            reason: format!("`{raw}` is not a version like {DEFAULT_API_VERSION} (NN.N)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn pem() -> String {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let key = openssl::pkey::PKey::from_rsa(rsa).unwrap();
        String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<SalesforceSettings, ConfigError> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        SalesforceSettings::from_lookup(|name| vars.get(name).cloned())
    }

    const BASE: [(&str, &str); 3] = [
        ("SALESFORCE_URL", "https://acme.my.salesforce.com"),
        ("SALESFORCE_CLIENT_ID", "3MVG9abc"),
        ("SALESFORCE_CLIENT_SECRET", "s3cret-value"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut all: Vec<_> = BASE
            .iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .copied()
            .collect();
        all.extend(extra.iter().filter(|(_, v)| !v.is_empty()).copied());
        all
    }

    #[test]
    fn defaults_apply_and_the_secret_is_not_debug_printed() {
        let s = parse(&BASE).unwrap();
        assert_eq!(s.url.as_str(), "https://acme.my.salesforce.com/");
        assert_eq!(s.client_id, "3MVG9abc");
        assert_eq!(s.api_version, DEFAULT_API_VERSION);
        assert_eq!(s.api_budget_percent, 80);
        assert_eq!(s.poll_lag, Duration::from_secs(60));
        assert_eq!(s.auth.name(), "client_credentials");
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cret-value"), "{debug}");
    }

    /// (overrides, `Ok` or the setting the error names, a word the message contains)
    type Case = (
        &'static [(&'static str, &'static str)],
        Result<(), &'static str>,
        &'static str,
    );

    #[test]
    fn settings_table() {
        let cases: &[Case] = &[
            (
                &[("SALESFORCE_URL", "")],
                Err("SALESFORCE_URL"),
                "my.salesforce.com",
            ),
            (
                &[("SALESFORCE_URL", "https://login.salesforce.com")],
                Err("SALESFORCE_URL"),
                "My Domain",
            ),
            (
                &[("SALESFORCE_URL", "https://test.salesforce.com/")],
                Err("SALESFORCE_URL"),
                "My Domain",
            ),
            (
                &[("SALESFORCE_URL", "https://acme.lightning.force.com")],
                Err("SALESFORCE_URL"),
                "My Domain",
            ),
            (
                &[("SALESFORCE_URL", "http://acme.my.salesforce.com")],
                Err("SALESFORCE_URL"),
                "https",
            ),
            (
                &[("SALESFORCE_URL", "https://acme.my.salesforce.com/services")],
                Err("SALESFORCE_URL"),
                "path",
            ),
            (
                &[("SALESFORCE_URL", "https://u:p@acme.my.salesforce.com")],
                Err("SALESFORCE_URL"),
                "credentials",
            ),
            (
                &[("SALESFORCE_URL", "not a url")],
                Err("SALESFORCE_URL"),
                "absolute",
            ),
            (&[("SALESFORCE_URL", "http://127.0.0.1:8080")], Ok(()), ""),
            (
                &[(
                    "SALESFORCE_URL",
                    "https://acme--dev.sandbox.my.salesforce.com/",
                )],
                Ok(()),
                "",
            ),
            (
                &[("SALESFORCE_URL", "@Microsoft.KeyVault(SecretUri=x)")],
                Err("SALESFORCE_URL"),
                "Key Vault",
            ),
            (
                &[("SALESFORCE_CLIENT_ID", "")],
                Err("SALESFORCE_CLIENT_ID"),
                "Consumer Key",
            ),
            (
                &[("SALESFORCE_CLIENT_SECRET", "")],
                Err("SALESFORCE_CLIENT_SECRET"),
                "SALESFORCE_PRIVATE_KEY",
            ),
            (
                &[(
                    "SALESFORCE_CLIENT_SECRET",
                    "@Microsoft.KeyVault(SecretUri=x)",
                )],
                Err("SALESFORCE_CLIENT_SECRET"),
                "Key Vault",
            ),
            (
                &[("SALESFORCE_USERNAME", "i@example.com")],
                Err("SALESFORCE_USERNAME"),
                "Run As",
            ),
            (
                &[
                    ("SALESFORCE_CLIENT_SECRET", ""),
                    ("SALESFORCE_USERNAME", "i@example.com"),
                ],
                Err("SALESFORCE_PRIVATE_KEY"),
                "PEM",
            ),
            (
                &[
                    ("SALESFORCE_CLIENT_SECRET", ""),
                    ("SALESFORCE_USERNAME", "i@example.com"),
                    ("SALESFORCE_PRIVATE_KEY", "nope"),
                ],
                Err("SALESFORCE_PRIVATE_KEY"),
                "PEM",
            ),
            (
                &[("SALESFORCE_PRIVATE_KEY", "nope")],
                Err("SALESFORCE_PRIVATE_KEY"),
                "only the one",
            ),
            (&[("SALESFORCE_API_VERSION", "64.0")], Ok(()), ""),
            (&[("SALESFORCE_API_VERSION", "v61.0")], Ok(()), ""),
            (
                &[("SALESFORCE_API_VERSION", "60.0")],
                Err("SALESFORCE_API_VERSION"),
                "61.0",
            ),
            (
                &[("SALESFORCE_API_VERSION", "64")],
                Err("SALESFORCE_API_VERSION"),
                "NN.N",
            ),
            (
                &[("SALESFORCE_API_VERSION", "64.00")],
                Err("SALESFORCE_API_VERSION"),
                "NN.N",
            ),
            (
                &[("SALESFORCE_API_VERSION", "6a.0")],
                Err("SALESFORCE_API_VERSION"),
                "NN.N",
            ),
            (&[("SALESFORCE_API_BUDGET_PERCENT", "100")], Ok(()), ""),
            (
                &[("SALESFORCE_API_BUDGET_PERCENT", "0")],
                Err("SALESFORCE_API_BUDGET_PERCENT"),
                "1 to 100",
            ),
            (
                &[("SALESFORCE_API_BUDGET_PERCENT", "101")],
                Err("SALESFORCE_API_BUDGET_PERCENT"),
                "1 to 100",
            ),
            (&[("SALESFORCE_POLL_LAG_SECONDS", "0")], Ok(()), ""),
            (
                &[("SALESFORCE_POLL_LAG_SECONDS", "-5")],
                Err("SALESFORCE_POLL_LAG_SECONDS"),
                "0 to 3600",
            ),
        ];
        for (overrides, expected, word) in cases {
            let result = parse(&with(overrides));
            match (expected, result) {
                (Ok(()), Ok(_)) => {}
                (Err(name), Err(e)) => {
                    let text = e.to_string();
                    assert!(text.contains(name), "{overrides:?}: {text}");
                    assert!(text.contains(word), "{overrides:?}: {text}");
                    assert!(!text.contains("s3cret-value"), "{text}");
                }
                (expected, result) => {
                    panic!("{overrides:?}: expected {expected:?}, got {result:?}")
                }
            }
        }
    }

    #[test]
    fn jwt_bearer_takes_a_pem_key_with_escaped_line_breaks() {
        let key = pem();
        let one_line = key.replace('\n', "\\n");
        let vars: HashMap<&str, String> = [
            (
                "SALESFORCE_URL",
                "https://acme.my.salesforce.com".to_owned(),
            ),
            ("SALESFORCE_CLIENT_ID", "3MVG9abc".to_owned()),
            ("SALESFORCE_USERNAME", "integration@acme.com".to_owned()),
            ("SALESFORCE_PRIVATE_KEY", one_line),
        ]
        .into_iter()
        .collect();
        let s = SalesforceSettings::from_lookup(|n| vars.get(n).cloned()).unwrap();
        let SalesforceAuth::JwtBearer {
            username,
            private_key,
        } = &s.auth
        else {
            panic!("JWT bearer expected")
        };
        assert_eq!(username, "integration@acme.com");
        assert_eq!(private_key.secret().trim_end(), key.trim_end());
        let debug = format!("{s:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }
}
