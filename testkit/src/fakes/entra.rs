//! Fake Microsoft Entra ID v2.0 token endpoint: refresh-token, client-credentials and
//! device-code grants plus the device-code request endpoint, for any tenant segment.

use std::{
    collections::HashMap,
    ops::Deref,
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use serde_json::{Value, json};

use super::common::{FakeServer, Recorded, Reply, lock, now_rfc3339};

/// User code returned by the device-code endpoint.
pub const USER_CODE: &str = "ABCD-EFGH";
/// Verification URI returned by the device-code endpoint.
pub const VERIFICATION_URI: &str = "https://microsoft.com/devicelogin";

#[derive(Debug)]
struct DeviceCode {
    polls: usize,
    scope: String,
}

#[derive(Debug)]
struct State {
    client_id: String,
    client_secret: String,
    require_client_secret: bool,
    initial_refresh_token: String,
    valid_refresh_tokens: Vec<String>,
    dataverse_client_id: String,
    dataverse_client_secret: String,
    pending_polls: usize,
    expires_in: u64,
    counter: u64,
    issued_access: Vec<String>,
    issued_refresh: Vec<String>,
    device_codes: HashMap<String, DeviceCode>,
}

/// Fake Entra token endpoint (`POST /{tenant}/oauth2/v2.0/token` and `/devicecode`).
///
/// Defaults: client `pc-client`/`pc-secret` (secret required), refresh token `rt-initial`,
/// Dataverse client `dv-client`/`dv-secret`, one pending device-code poll, `expires_in` 3600.
#[derive(Debug)]
pub struct FakeEntra {
    server: FakeServer,
    state: Arc<Mutex<State>>,
}

impl Deref for FakeEntra {
    type Target = FakeServer;
    fn deref(&self) -> &FakeServer {
        &self.server
    }
}

impl FakeEntra {
    /// Starts the fake over plain HTTP on 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_inner(None).await
    }

    /// Starts the fake over HTTPS with `acceptor`; `base_url` is `https://{host}:{port}`
    /// (`host` must match the certificate, e.g. `localhost`).
    pub async fn start_tls(acceptor: tokio_native_tls::TlsAcceptor, host: &str) -> Self {
        Self::start_inner(Some((acceptor, host.to_owned()))).await
    }

    async fn start_inner(tls: Option<(tokio_native_tls::TlsAcceptor, String)>) -> Self {
        let state = Arc::new(Mutex::new(State {
            client_id: "pc-client".into(),
            client_secret: "pc-secret".into(),
            require_client_secret: true,
            initial_refresh_token: "rt-initial".into(),
            valid_refresh_tokens: vec!["rt-initial".into()],
            dataverse_client_id: "dv-client".into(),
            dataverse_client_secret: "dv-secret".into(),
            pending_polls: 1,
            expires_in: 3600,
            counter: 0,
            issued_access: Vec::new(),
            issued_refresh: Vec::new(),
            device_codes: HashMap::new(),
        }));
        let handler_state = state.clone();
        let server = FakeServer::start(
            Box::new(move |req, _base| handle(&handler_state, req)),
            fault_body,
            tls,
        )
        .await;
        Self { server, state }
    }

    /// Token URL for `tenant`: `{base}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self, tenant: &str) -> String {
        self.url(&format!("/{tenant}/oauth2/v2.0/token"))
    }

    /// Device-code URL for `tenant`: `{base}/{tenant}/oauth2/v2.0/devicecode`.
    pub fn device_code_url(&self, tenant: &str) -> String {
        self.url(&format!("/{tenant}/oauth2/v2.0/devicecode"))
    }

    /// Sets the Partner Center (delegated) client id.
    pub fn set_client_id(&self, id: &str) -> &Self {
        lock(&self.state).client_id = id.to_owned();
        self
    }

    /// Sets the Partner Center client secret.
    pub fn set_client_secret(&self, secret: &str) -> &Self {
        lock(&self.state).client_secret = secret.to_owned();
        self
    }

    /// Whether refresh-token/device-code grants must carry the client secret (default `true`;
    /// `false` = public client; a secret that *is* sent must still match).
    pub fn require_client_secret(&self, required: bool) -> &Self {
        lock(&self.state).require_client_secret = required;
        self
    }

    /// Replaces the set of valid refresh tokens with `token`.
    pub fn set_refresh_token(&self, token: &str) -> &Self {
        let mut s = lock(&self.state);
        s.initial_refresh_token = token.to_owned();
        s.valid_refresh_tokens = vec![token.to_owned()];
        drop(s);
        self
    }

    /// Adds `token` to the valid refresh tokens.
    pub fn add_refresh_token(&self, token: &str) -> &Self {
        lock(&self.state)
            .valid_refresh_tokens
            .push(token.to_owned());
        self
    }

    /// Invalidates every refresh token (the next refresh grant fails with `invalid_grant`).
    pub fn revoke_refresh_tokens(&self) -> &Self {
        lock(&self.state).valid_refresh_tokens.clear();
        self
    }

    /// Sets the Dataverse (client-credentials) client id.
    pub fn set_dataverse_client_id(&self, id: &str) -> &Self {
        lock(&self.state).dataverse_client_id = id.to_owned();
        self
    }

    /// Sets the Dataverse client secret.
    pub fn set_dataverse_client_secret(&self, secret: &str) -> &Self {
        lock(&self.state).dataverse_client_secret = secret.to_owned();
        self
    }

    /// Number of `authorization_pending` answers before a device code is redeemed (default 1).
    pub fn set_pending_polls(&self, n: usize) -> &Self {
        lock(&self.state).pending_polls = n;
        self
    }

    /// `expires_in` of issued tokens in seconds (default 3600).
    pub fn set_expires_in(&self, secs: u64) -> &Self {
        lock(&self.state).expires_in = secs;
        self
    }

    /// The Partner Center client id.
    pub fn client_id(&self) -> String {
        lock(&self.state).client_id.clone()
    }

    /// The Partner Center client secret.
    pub fn client_secret(&self) -> String {
        lock(&self.state).client_secret.clone()
    }

    /// The initially valid refresh token.
    pub fn refresh_token(&self) -> String {
        lock(&self.state).initial_refresh_token.clone()
    }

    /// The Dataverse client id.
    pub fn dataverse_client_id(&self) -> String {
        lock(&self.state).dataverse_client_id.clone()
    }

    /// The Dataverse client secret.
    pub fn dataverse_client_secret(&self) -> String {
        lock(&self.state).dataverse_client_secret.clone()
    }

    /// Number of token requests received with `grant_type` (faulted ones included).
    pub fn token_requests(&self, grant_type: &str) -> usize {
        self.requests_matching("POST", "/oauth2/v2.0/token")
            .iter()
            .filter(|r| r.form_value("grant_type").as_deref() == Some(grant_type))
            .count()
    }

    /// Every access token issued so far (`pc-at-<n>` and `dv-at-<n>`), in order.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        lock(&self.state).issued_access.clone()
    }

    /// Every refresh token issued so far (`rt-<n>`), in order.
    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        lock(&self.state).issued_refresh.clone()
    }
}

fn fault_body(status: u16, _retry_after: Option<u64>) -> String {
    let (error, code) = match status {
        429 => ("temporarily_unavailable", 50196),
        s if s >= 500 => ("temporarily_unavailable", 50001),
        _ => ("invalid_request", 90000),
    };
    error_body(error, code, &format!("Injected fault (HTTP {status})")).to_string()
}

fn error_body(error: &str, code: u32, description: &str) -> Value {
    json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description}"),
        "error_codes": [code],
        "timestamp": now_rfc3339(),
        "trace_id": uuid::Uuid::new_v4().to_string(),
        "correlation_id": uuid::Uuid::new_v4().to_string(),
    })
}

fn error(status: u16, error: &str, code: u32, description: &str) -> Reply {
    Reply::json(status, &error_body(error, code, description))
}

fn handle(state: &Mutex<State>, req: &Recorded) -> Reply {
    let path = req.decoded_path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let endpoint = match segments.as_slice() {
        [tenant, "oauth2", "v2.0", endpoint] if !tenant.is_empty() => *endpoint,
        _ => return error(404, "invalid_request", 90002, "Unknown endpoint."),
    };
    if req.method != "POST" {
        return error(405, "invalid_request", 90056, "Only POST is supported.");
    }
    let form: HashMap<String, String> = req.form().into_iter().collect();
    let mut s = lock(state);
    match endpoint {
        "token" => token(&mut s, req, &form),
        "devicecode" => device_code(&mut s, &form),
        _ => error(404, "invalid_request", 90002, "Unknown endpoint."),
    }
}

/// Client id and secret from the form or from HTTP Basic authentication.
fn client_credentials(
    req: &Recorded,
    form: &HashMap<String, String>,
) -> (Option<String>, Option<String>) {
    let basic = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(a, b)| (a.to_owned(), b.to_owned())));
    let id = form
        .get("client_id")
        .cloned()
        .or_else(|| basic.as_ref().map(|b| b.0.clone()));
    let secret = form
        .get("client_secret")
        .cloned()
        .or_else(|| basic.map(|b| b.1));
    (id, secret)
}

/// Checks the Partner Center client; `Err` is the reply to send.
fn check_pc_client(s: &State, req: &Recorded, form: &HashMap<String, String>) -> Result<(), Reply> {
    let (id, secret) = client_credentials(req, form);
    if id.as_deref() != Some(s.client_id.as_str()) {
        return Err(error(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{}' was not found in the directory.",
                id.unwrap_or_default()
            ),
        ));
    }
    match secret {
        Some(secret) if secret != s.client_secret => Err(error(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        )),
        None if s.require_client_secret => Err(error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )),
        _ => Ok(()),
    }
}

fn issue_user_tokens(s: &mut State, scope: &str) -> Reply {
    s.counter += 1;
    let at = format!("pc-at-{}", s.counter);
    let rt = format!("rt-{}", s.counter);
    s.issued_access.push(at.clone());
    s.issued_refresh.push(rt.clone());
    s.valid_refresh_tokens.push(rt.clone());
    Reply::json(
        200,
        &json!({
            "token_type": "Bearer",
            "expires_in": s.expires_in,
            "ext_expires_in": s.expires_in,
            "access_token": at,
            "refresh_token": rt,
            "scope": scope,
        }),
    )
}

fn token(s: &mut State, req: &Recorded, form: &HashMap<String, String>) -> Reply {
    let scope = form.get("scope").cloned().unwrap_or_default();
    match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => {
            if let Err(reply) = check_pc_client(s, req, form) {
                return reply;
            }
            let valid = form
                .get("refresh_token")
                .is_some_and(|rt| s.valid_refresh_tokens.contains(rt));
            if !valid {
                return error(
                    400,
                    "invalid_grant",
                    70000,
                    "The provided value for the 'refresh_token' is not valid.",
                );
            }
            issue_user_tokens(s, &scope)
        }
        Some("client_credentials") => {
            let (id, secret) = client_credentials(req, form);
            if id.as_deref() != Some(s.dataverse_client_id.as_str())
                || secret.as_deref() != Some(s.dataverse_client_secret.as_str())
            {
                return error(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided.",
                );
            }
            s.counter += 1;
            let at = format!("dv-at-{}", s.counter);
            s.issued_access.push(at.clone());
            Reply::json(
                200,
                &json!({
                    "token_type": "Bearer",
                    "expires_in": s.expires_in,
                    "ext_expires_in": s.expires_in,
                    "access_token": at,
                }),
            )
        }
        Some("urn:ietf:params:oauth:grant-type:device_code") => {
            if let Err(reply) = check_pc_client(s, req, form) {
                return reply;
            }
            let pending_polls = s.pending_polls;
            let code = form.get("device_code").cloned().unwrap_or_default();
            let Some(dc) = s.device_codes.get_mut(&code) else {
                return error(
                    400,
                    "expired_token",
                    70020,
                    "The provided value for the input parameter 'device_code' is not valid.",
                );
            };
            if dc.polls < pending_polls {
                dc.polls += 1;
                return error(
                    400,
                    "authorization_pending",
                    70016,
                    "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                );
            }
            let granted = if scope.is_empty() {
                dc.scope.clone()
            } else {
                scope
            };
            s.device_codes.remove(&code);
            issue_user_tokens(s, &granted)
        }
        Some(other) => error(
            400,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{other}'."),
        ),
        None => error(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        ),
    }
}

fn device_code(s: &mut State, form: &HashMap<String, String>) -> Reply {
    if form.get("client_id") != Some(&s.client_id) {
        return error(
            400,
            "unauthorized_client",
            700016,
            "Application was not found in the directory.",
        );
    }
    s.counter += 1;
    let code = format!("dc-{}", s.counter);
    s.device_codes.insert(
        code.clone(),
        DeviceCode {
            polls: 0,
            scope: form.get("scope").cloned().unwrap_or_default(),
        },
    );
    Reply::json(
        200,
        &json!({
            "device_code": code,
            "user_code": USER_CODE,
            "verification_uri": VERIFICATION_URI,
            "expires_in": 900,
            "interval": 1,
            "message": format!(
                "To sign in, use a web browser to open the page {VERIFICATION_URI} and enter the code {USER_CODE} to authenticate."
            ),
        }),
    )
}
