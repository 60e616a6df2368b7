//! Errors of the Salesforce boundary: token endpoint refusals (with the fix), REST error
//! bodies (`[{"message","errorCode","fields"}]`, or an HTML page from the edge), multiple
//! external-id matches, and transport failures; one decision, [`SalesforceError::is_transient`],
//! and the conversion into the core's [`CrmError`].

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use crate::{
    crm::{CrmError, RecordKind},
    http::CallError,
};

/// The CRM's name in messages.
pub const CRM: &str = "Salesforce";

/// Error codes Salesforce answers that a later attempt may get past (limits, overload, locks).
const TRANSIENT_CODES: [&str; 3] = [
    "REQUEST_LIMIT_EXCEEDED",
    "SERVER_UNAVAILABLE",
    "UNABLE_TO_LOCK_ROW",
];

/// A failed Salesforce call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SalesforceError {
    /// The token endpoint refused the credential (`invalid_client`, `invalid_grant`, ...).
    #[error("the token endpoint answered {status} {error}: {description}; {fix}")]
    Token {
        /// HTTP status of the answer.
        status: StatusCode,
        /// OAuth `error` (or `HTML page` / `unreadable body`).
        error: String,
        /// OAuth `error_description`.
        description: String,
        /// What the operator should change.
        fix: String,
    },
    /// A second `401 INVALID_SESSION_ID` with a token issued moments before.
    #[error(
        "Salesforce refused a freshly issued access token (401 INVALID_SESSION_ID: {message}); \
         check that SALESFORCE_URL is the org the External Client App belongs to and that the \
         integration user is active and has API Enabled"
    )]
    SessionRejected {
        /// Salesforce's message.
        message: String,
    },
    /// `DUPLICATE_VALUE`: a unique field (usually the external id) already holds the value,
    /// typically because a concurrent create won the race.
    #[error("{status} DUPLICATE_VALUE on {object}: {message}")]
    DuplicateValue {
        /// HTTP status (400).
        status: StatusCode,
        /// The object written (`Lead`).
        object: String,
        /// The field whose value is taken, when the message names it.
        field: Option<String>,
        /// The record that already holds the value, when the message names it.
        existing_id: Option<String>,
        /// Salesforce's message.
        message: String,
    },
    /// 300: more than one record matches an external id; nothing was written.
    #[error(
        "more than one record matches {what} (records {}); make the external-id field Unique and merge or clear the duplicates",
        ids.join(", ")
    )]
    MultipleMatches {
        /// What was looked up (`Lead.Partner_Center_Referral_Id__c = 5f0c…`).
        what: String,
        /// The ids of the matching records.
        ids: Vec<String>,
    },
    /// Salesforce answered with a JSON error body.
    #[error("{status} {code}: {message}{}", fields_suffix(fields))]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// `errorCode` of the first error (`REQUIRED_FIELD_MISSING`).
        code: String,
        /// `message` of the first error (others appended).
        message: String,
        /// `fields` of all errors.
        fields: Vec<String>,
    },
    /// A non-JSON error answer, such as an HTML page from a proxy or the edge in front of the
    /// org; the body is not kept.
    #[error("{status} with a{} body instead of a Salesforce error", if *html { "n HTML" } else { " non-JSON" })]
    Unparsed {
        /// HTTP status.
        status: StatusCode,
        /// Whether the body was HTML.
        html: bool,
    },
    /// Timeout, connection failure, or an answer that could not be read.
    #[error("{0}")]
    Transport(String),
    /// A success answer whose body is not what the API documents.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// The request URL could not be built, or a link pointed elsewhere.
    #[error("{0}")]
    Url(String),
    /// The JWT bearer assertion could not be signed with `SALESFORCE_PRIVATE_KEY`.
    #[error("cannot sign the JWT assertion with SALESFORCE_PRIVATE_KEY: {0}")]
    Signing(String),
}

fn fields_suffix(fields: &[String]) -> String {
    if fields.is_empty() {
        String::new()
    } else {
        format!(" (fields: {})", fields.join(", "))
    }
}

/// One element of a REST error body.
#[derive(Debug, Deserialize)]
struct ErrorItem {
    #[serde(default)]
    message: String,
    #[serde(default, rename = "errorCode")]
    error_code: String,
    #[serde(default)]
    fields: Vec<String>,
}

/// The OAuth error body of the token endpoint.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct OAuthErrorBody {
    #[serde(default)]
    pub(crate) error: String,
    #[serde(default)]
    pub(crate) error_description: String,
}

/// Which grant a token error came from (the fixes differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    ClientCredentials,
    JwtBearer,
}

fn looks_like_html(content_type: Option<&str>, body: &[u8]) -> bool {
    if content_type.is_some_and(|c| c.to_ascii_lowercase().contains("html")) {
        return true;
    }
    let start = String::from_utf8_lossy(&body[..body.len().min(64)]).to_ascii_lowercase();
    let start = start.trim_start();
    start.starts_with("<!doctype html") || start.starts_with("<html")
}

impl SalesforceError {
    /// Whether a later attempt may succeed: 403 `REQUEST_LIMIT_EXCEEDED`, 503
    /// `SERVER_UNAVAILABLE`, `UNABLE_TO_LOCK_ROW`, any 5xx, 429, 408 (with a JSON body or not),
    /// transport failures and token endpoint outages (`rate_limit_exceeded`, 5xx). Everything
    /// else (validation, missing or too long fields, restricted picklists, deleted records,
    /// converted leads, unknown fields, duplicates, multiple matches, credential errors) is
    /// permanent: the same request fails the same way.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Api { status, code, .. } => {
                TRANSIENT_CODES.contains(&code.as_str())
                    || crate::http::is_transient_status(*status)
            }
            Self::Unparsed { status, .. } => crate::http::is_transient_status(*status),
            Self::Transport(_) => true,
            Self::Token { status, error, .. } => {
                error == "rate_limit_exceeded" || crate::http::is_transient_status(*status)
            }
            Self::SessionRejected { .. }
            | Self::DuplicateValue { .. }
            | Self::MultipleMatches { .. }
            | Self::Decode(_)
            | Self::Url(_)
            | Self::Signing(_) => false,
        }
    }

    /// The `errorCode` Salesforce answered, when it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            Self::DuplicateValue { .. } => Some("DUPLICATE_VALUE"),
            _ => None,
        }
    }

    /// The HTTP status, when Salesforce answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. }
            | Self::Unparsed { status, .. }
            | Self::Token { status, .. }
            | Self::DuplicateValue { status, .. } => Some(*status),
            Self::MultipleMatches { .. } => Some(StatusCode::MULTIPLE_CHOICES),
            _ => None,
        }
    }

    /// 404 (`NOT_FOUND`): no such record, or no such object or external-id field.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND) && self.code() != Some("ENTITY_IS_DELETED")
    }

    /// 401 `INVALID_SESSION_ID`: the token expired or was revoked.
    pub(crate) fn is_invalid_session(&self) -> bool {
        matches!(self, Self::Api { status, code, .. }
            if *status == StatusCode::UNAUTHORIZED && code == "INVALID_SESSION_ID")
    }

    /// Whether to retry now, within this invocation. Transient errors are, except the daily
    /// allocation being used up (403 `REQUEST_LIMIT_EXCEEDED` "TotalRequests"), which frees
    /// up over hours. A call that may have been applied and is not idempotent (a create) is
    /// retried only after 429, which is refused before anything happens.
    pub(crate) fn retry_now(&self, idempotent: bool) -> bool {
        if !idempotent {
            return self.status() == Some(StatusCode::TOO_MANY_REQUESTS);
        }
        if let Self::Api { code, message, .. } = self
            && code == "REQUEST_LIMIT_EXCEEDED"
            && message.contains("TotalRequests")
        {
            return false;
        }
        self.is_transient()
    }

    /// Reads a REST error answer. `object` is the object written, for `DUPLICATE_VALUE`.
    pub(crate) fn from_rest(
        status: StatusCode,
        content_type: Option<&str>,
        body: &[u8],
        object: Option<&str>,
    ) -> Self {
        let Some(items) = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| match v {
                Value::Array(items) => Some(items),
                item @ Value::Object(_) => Some(vec![item]),
                _ => None,
            })
            .map(|items| {
                items
                    .into_iter()
                    .filter_map(|i| serde_json::from_value::<ErrorItem>(i).ok())
                    .collect::<Vec<_>>()
            })
            .filter(|items| !items.is_empty())
        else {
            return Self::Unparsed {
                status,
                html: looks_like_html(content_type, body),
            };
        };
        let code = items[0].error_code.clone();
        let message = items
            .iter()
            .map(|i| i.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let mut fields: Vec<String> = Vec::new();
        for field in items.iter().flat_map(|i| i.fields.iter()) {
            if !fields.contains(field) {
                fields.push(field.clone());
            }
        }
        if code == "DUPLICATE_VALUE" {
            let (field, existing_id) = parse_duplicate(&items[0].message);
            return Self::DuplicateValue {
                status,
                object: object.unwrap_or_default().to_owned(),
                field: field.or_else(|| fields.first().cloned()),
                existing_id,
                message,
            };
        }
        Self::Api {
            status,
            code,
            message,
            fields,
        }
    }

    /// Reads a token endpoint error answer, naming the fix for the grant used.
    pub(crate) fn from_token(
        status: StatusCode,
        content_type: Option<&str>,
        body: &[u8],
        grant: Grant,
    ) -> Self {
        let parsed = serde_json::from_slice::<OAuthErrorBody>(body).ok();
        let (error, description) = match parsed {
            Some(b) if !b.error.is_empty() => (b.error, b.error_description),
            _ if looks_like_html(content_type, body) => {
                ("HTML page".to_owned(), "not an OAuth answer".to_owned())
            }
            _ => (
                "unreadable body".to_owned(),
                "not an OAuth answer".to_owned(),
            ),
        };
        let fix = token_fix(&error, &description, grant, status);
        Self::Token {
            status,
            error,
            description,
            fix,
        }
    }
}

/// `duplicate value found: <field> duplicates value on record with id: <id>`
fn parse_duplicate(message: &str) -> (Option<String>, Option<String>) {
    let rest = message.strip_prefix("duplicate value found: ");
    let field = rest
        .and_then(|r| r.split_whitespace().next())
        .filter(|f| *f != "<unknown>")
        .map(str::to_owned);
    let id = message
        .rsplit_once("record with id: ")
        .map(|(_, id)| id.trim().trim_end_matches('.').to_owned())
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()));
    (field, id)
}

fn token_fix(error: &str, description: &str, grant: Grant, status: StatusCode) -> String {
    let description = description.to_ascii_lowercase();
    let fix = match (error, grant) {
        _ if error == "rate_limit_exceeded" || crate::http::is_transient_status(status) => {
            "the token endpoint is throttling or unavailable; it is tried again later"
        }
        ("invalid_client_id", _) => {
            "SALESFORCE_CLIENT_ID is not the Consumer Key of an External Client App in this org: \
             copy it from Setup > External Client App Manager > the app > Settings > OAuth \
             Settings > Consumer Key and Secret, and check SALESFORCE_URL is that org's My Domain"
        }
        ("invalid_client", _) => {
            "SALESFORCE_CLIENT_SECRET is not the External Client App's current Consumer Secret \
             (it may have been rotated): copy it from Setup > External Client App Manager > the \
             app > Settings > OAuth Settings > Consumer Key and Secret"
        }
        ("invalid_grant", _) if description.contains("not supported on this domain") => {
            "SALESFORCE_URL must be your org's My Domain, https://<domain>.my.salesforce.com"
        }
        ("invalid_grant", Grant::ClientCredentials) => {
            "the External Client App has no usable Run As user: in its OAuth policies enable the \
             Client Credentials Flow and set Run As to an active API-only integration user"
        }
        ("invalid_grant", Grant::JwtBearer) if description.contains("approved") => {
            "SALESFORCE_USERNAME is not pre-authorized for the app: in its OAuth policies set \
             Permitted Users to \"Admin approved users are pre-authorized\" and add the user's \
             profile or permission set to the app (and check the username is exact and active)"
        }
        ("invalid_grant", Grant::JwtBearer) if description.contains("audience") => {
            "the assertion's audience was refused: a production org takes \
             https://login.salesforce.com, a sandbox https://test.salesforce.com"
        }
        ("invalid_grant", Grant::JwtBearer) if description.contains("expired") => {
            "the assertion expired on arrival: check this machine's clock"
        }
        ("invalid_grant", Grant::JwtBearer) => {
            "the assertion was refused: upload the certificate of SALESFORCE_PRIVATE_KEY to the \
             External Client App (Use digital signatures), pre-authorize SALESFORCE_USERNAME for \
             the app, and check the username"
        }
        ("inactive_user", _) => "the integration user is inactive: activate it in Setup > Users",
        ("inactive_org", _) => "the org is inactive or locked: ask its administrator",
        (_, Grant::ClientCredentials) => {
            "check SALESFORCE_URL (your My Domain), SALESFORCE_CLIENT_ID and \
             SALESFORCE_CLIENT_SECRET, and that the app enables the Client Credentials Flow"
        }
        (_, Grant::JwtBearer) => {
            "check SALESFORCE_URL (your My Domain), SALESFORCE_CLIENT_ID, SALESFORCE_USERNAME and \
             the certificate of SALESFORCE_PRIVATE_KEY on the app"
        }
    };
    fix.to_owned()
}

fn record_kind(object: &str) -> Option<RecordKind> {
    if object.eq_ignore_ascii_case("Lead") {
        Some(RecordKind::Lead)
    } else if object.eq_ignore_ascii_case("Opportunity") {
        Some(RecordKind::Opportunity)
    } else {
        None
    }
}

/// Into the core's terms. `DUPLICATE_VALUE` on a Lead or Opportunity is
/// [`CrmError::Conflict`]: the connector's only unique field on them is the referral key,
/// so the write found the key taken (a concurrent create won), which is what the core means
/// by a conflict; its next attempt reads the record again and updates it. On other objects
/// it is a rejection. Transient errors stay transient as [`CrmError::Call`]: with their real
/// status when that status is transient by itself (5xx, 429), else (403
/// `REQUEST_LIMIT_EXCEEDED`, 400 `UNABLE_TO_LOCK_ROW`) as a transport-class error whose
/// message keeps the status and code. Token errors become [`CallError::Token`]; every other
/// permanent error is [`CrmError::Rejected`] with its message.
impl From<SalesforceError> for CrmError {
    fn from(error: SalesforceError) -> Self {
        let call = |source| CrmError::Call { crm: CRM, source };
        if let SalesforceError::DuplicateValue { object, .. } = &error
            && let Some(kind) = record_kind(object)
        {
            return CrmError::Conflict(kind);
        }
        let transient = error.is_transient();
        match error {
            SalesforceError::Token { .. } => call(CallError::Token {
                message: error.to_string(),
                transient,
            }),
            SalesforceError::Transport(message) => call(CallError::Transport(message)),
            e if transient => match e.status() {
                Some(status) if crate::http::is_transient_status(status) => {
                    call(CallError::Status {
                        status,
                        body: e.to_string(),
                        retry_after: None,
                    })
                }
                _ => call(CallError::Transport(e.to_string())),
            },
            e => CrmError::Rejected {
                crm: CRM,
                message: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest(status: u16, body: &str) -> SalesforceError {
        SalesforceError::from_rest(
            StatusCode::from_u16(status).unwrap(),
            Some("application/json"),
            body.as_bytes(),
            Some("Lead"),
        )
    }

    fn item(code: &str, message: &str, fields: &[&str]) -> String {
        serde_json::json!([{"message": message, "errorCode": code, "fields": fields}]).to_string()
    }

    #[test]
    fn classification_table() {
        // (status, errorCode, fields, transient, retried now when idempotent)
        let cases: &[(u16, &str, &[&str], bool, bool)] = &[
            (403, "REQUEST_LIMIT_EXCEEDED", &[], true, false),
            (503, "SERVER_UNAVAILABLE", &[], true, true),
            (400, "UNABLE_TO_LOCK_ROW", &[], true, true),
            (500, "UNKNOWN_EXCEPTION", &[], true, true),
            (502, "BAD_GATEWAY", &[], true, true),
            (429, "TOO_MANY", &[], true, true),
            (
                400,
                "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                &["Amount"],
                false,
                false,
            ),
            (
                400,
                "REQUIRED_FIELD_MISSING",
                &["LastName", "Company"],
                false,
                false,
            ),
            (400, "STRING_TOO_LONG", &["FirstName"], false, false),
            (
                400,
                "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                &["Status"],
                false,
                false,
            ),
            (400, "ENTITY_IS_DELETED", &[], false, false),
            (400, "CANNOT_UPDATE_CONVERTED_LEAD", &[], false, false),
            (400, "INVALID_FIELD", &["Bogus__c"], false, false),
            (400, "MALFORMED_QUERY", &[], false, false),
            (404, "NOT_FOUND", &[], false, false),
            (401, "INVALID_SESSION_ID", &[], false, false),
            (403, "INSUFFICIENT_ACCESS", &[], false, false),
        ];
        for (status, code, fields, transient, now) in cases {
            let message = if *code == "REQUEST_LIMIT_EXCEEDED" {
                "TotalRequests Limit exceeded."
            } else {
                "something"
            };
            let e = rest(*status, &item(code, message, fields));
            assert_eq!(e.code(), Some(*code), "{e}");
            assert_eq!(e.is_transient(), *transient, "{e}");
            assert_eq!(e.retry_now(true), *now, "{e}");
            assert_eq!(e.retry_now(false), *status == 429, "{e}");
            assert_eq!(CrmError::from(e.clone()).is_transient(), *transient, "{e}");
            for field in *fields {
                assert!(e.to_string().contains(field), "{e}");
            }
        }
        let concurrent = rest(
            403,
            &item(
                "REQUEST_LIMIT_EXCEEDED",
                "ConcurrentPerOrgLongTxn Limit exceeded.",
                &[],
            ),
        );
        assert!(concurrent.retry_now(true));
    }

    #[test]
    fn html_and_empty_bodies_keep_the_status() {
        let html = SalesforceError::from_rest(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("text/html;charset=UTF-8"),
            b"<!DOCTYPE html><html><body>503</body></html>",
            None,
        );
        assert!(matches!(html, SalesforceError::Unparsed { html: true, .. }));
        assert!(html.is_transient());
        assert!(html.to_string().contains("503") && html.to_string().contains("HTML"));
        let sniffed =
            SalesforceError::from_rest(StatusCode::BAD_REQUEST, None, b"  <html>bad</html>", None);
        assert!(matches!(
            sniffed,
            SalesforceError::Unparsed { html: true, .. }
        ));
        assert!(!sniffed.is_transient());
        let empty = SalesforceError::from_rest(StatusCode::BAD_GATEWAY, None, b"", None);
        assert!(matches!(
            empty,
            SalesforceError::Unparsed { html: false, .. }
        ));
        assert!(empty.is_transient());
    }

    #[test]
    fn duplicate_value_names_the_field_and_the_record_and_is_a_conflict() {
        let e = rest(
            400,
            &item(
                "DUPLICATE_VALUE",
                "duplicate value found: Partner_Center_Referral_Id__c duplicates value on record with id: 00Q5g00000AbCdEAAA",
                &[],
            ),
        );
        let SalesforceError::DuplicateValue {
            field, existing_id, ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(field.as_deref(), Some("Partner_Center_Referral_Id__c"));
        assert_eq!(existing_id.as_deref(), Some("00Q5g00000AbCdEAAA"));
        assert!(!e.is_transient());
        assert!(matches!(
            CrmError::from(e),
            CrmError::Conflict(RecordKind::Lead)
        ));
        let other = SalesforceError::from_rest(
            StatusCode::BAD_REQUEST,
            None,
            item(
                "DUPLICATE_VALUE",
                "duplicate value found: <unknown> duplicates value on record with id: <unknown>",
                &[],
            )
            .as_bytes(),
            Some("FieldPermissions"),
        );
        assert!(matches!(CrmError::from(other), CrmError::Rejected { .. }));
    }

    #[test]
    fn token_errors_name_the_fix() {
        let token = |error: &str, description: &str, grant, status: u16| {
            SalesforceError::from_token(
                StatusCode::from_u16(status).unwrap(),
                Some("application/json"),
                serde_json::json!({"error": error, "error_description": description})
                    .to_string()
                    .as_bytes(),
                grant,
            )
        };
        let cases = [
            (
                token(
                    "invalid_client",
                    "invalid client credentials",
                    Grant::ClientCredentials,
                    400,
                ),
                "Consumer Secret",
                false,
            ),
            (
                token(
                    "invalid_client_id",
                    "client identifier invalid",
                    Grant::ClientCredentials,
                    400,
                ),
                "Consumer Key",
                false,
            ),
            (
                token(
                    "invalid_grant",
                    "no client credentials user enabled",
                    Grant::ClientCredentials,
                    400,
                ),
                "Run As",
                false,
            ),
            (
                token(
                    "invalid_grant",
                    "request not supported on this domain",
                    Grant::ClientCredentials,
                    400,
                ),
                "My Domain",
                false,
            ),
            (
                token(
                    "invalid_grant",
                    "user hasn't approved this consumer",
                    Grant::JwtBearer,
                    400,
                ),
                "pre-authorized",
                false,
            ),
            (
                token("invalid_grant", "invalid assertion", Grant::JwtBearer, 400),
                "certificate",
                false,
            ),
            (
                token(
                    "invalid_grant",
                    "audience is invalid",
                    Grant::JwtBearer,
                    400,
                ),
                "login.salesforce.com",
                false,
            ),
            (
                token(
                    "rate_limit_exceeded",
                    "slow down",
                    Grant::ClientCredentials,
                    400,
                ),
                "later",
                true,
            ),
        ];
        for (e, fix, transient) in cases {
            assert!(e.to_string().contains(fix), "{e}");
            assert_eq!(e.is_transient(), transient, "{e}");
            assert_eq!(CrmError::from(e).is_transient(), transient);
        }
        let html = SalesforceError::from_token(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("text/html"),
            b"<html></html>",
            Grant::ClientCredentials,
        );
        assert!(
            html.is_transient() && html.to_string().contains("HTML"),
            "{html}"
        );
    }

    #[test]
    fn multiple_matches_name_both_records() {
        let e = SalesforceError::MultipleMatches {
            what: "Lead.Partner_Center_Referral_Id__c = abc".into(),
            ids: vec!["00Q1".into(), "00Q2".into()],
        };
        let text = e.to_string();
        assert!(text.contains("00Q1") && text.contains("00Q2"), "{text}");
        assert!(!e.is_transient());
    }
}
