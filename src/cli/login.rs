//! `login`: the one interactive step. Device-code sign-in of the Referrals Admin user; the
//! refresh token is written into the `--settings` file (or printed with `--print`).

use std::{io::Write, path::Path, time::Duration};

use azure_core::credentials::TokenCredential;
use serde::Deserialize;

use crate::{
    config::Settings,
    tokens::{
        PARTNER_CENTER_SCOPE, PARTNER_CENTER_WEBHOOK_SCOPE, RefreshTokenCredential, TokenResponse,
        entra_url, post_form,
    },
};

#[derive(Deserialize)]
struct DeviceCode {
    device_code: String,
    message: String,
    #[serde(default = "default_interval")]
    interval: u64,
    #[serde(default = "default_expiry")]
    expires_in: u64,
}

fn default_interval() -> u64 {
    5
}

fn default_expiry() -> u64 {
    900
}

/// Runs the device-code flow; `settings_file` is where the token is stored unless `print`.
pub async fn run(
    settings: &Settings,
    settings_file: Option<&Path>,
    print: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    if !print && settings_file.is_none() {
        anyhow::bail!(
            "nowhere to store the refresh token: give --settings local.settings.json to write it there, or --print to show it once"
        );
    }
    let pc = &settings.partner_center;
    let app = pc.app()?;
    let http = crate::http::client(&settings.http)?;
    let scope = format!("{PARTNER_CENTER_SCOPE} offline_access");
    let device_url = entra_url(&pc.authority_host, app.tenant, "devicecode")?;
    let code = match post_form::<DeviceCode>(
        &http,
        &device_url,
        &[("client_id", app.client_id), ("scope", &scope)],
    )
    .await?
    {
        Ok(code) => code,
        Err((status, error)) => anyhow::bail!(
            "the sign-in could not start ({status} {}: {}); check PARTNER_CENTER_CLIENT_ID and that the app allows public client flows",
            error.error,
            error.first_line()
        ),
    };
    writeln!(out, "{}", code.message)?;
    out.flush()?;

    let token_url = entra_url(&pc.authority_host, app.tenant, "token")?;
    let mut interval = Duration::from_secs(code.interval.max(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(code.expires_in);
    let refresh_token = loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the sign-in code expired: run `referral-connector login` again and finish within the time shown"
            );
        }
        let mut form = vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", app.client_id),
            ("device_code", code.device_code.as_str()),
        ];
        if let Some(secret) = app.client_secret {
            form.push(("client_secret", secret.secret()));
        }
        match post_form::<TokenResponse>(&http, &token_url, &form).await? {
            Ok(token) => match token.refresh_token {
                Some(refresh) if !refresh.is_empty() => break refresh,
                _ => anyhow::bail!(
                    "the sign-in returned no refresh token: the scope must include offline_access"
                ),
            },
            Err((_, error)) if error.error == "authorization_pending" => {}
            Err((_, error)) if error.error == "slow_down" => interval += Duration::from_secs(5),
            Err((status, error)) => anyhow::bail!(
                "the sign-in failed ({status} {}: {}); run `referral-connector login` again",
                error.error,
                error.first_line()
            ),
        }
    };

    let credential = RefreshTokenCredential::for_app(
        &app,
        &pc.authority_host,
        azure_core::credentials::Secret::new(refresh_token),
        http,
    )?;
    let webhook_scope_ok = credential
        .get_token(&[PARTNER_CENTER_WEBHOOK_SCOPE], None)
        .await
        .is_ok();
    let refresh_token = credential.current_refresh_token().secret().to_owned();

    if print {
        writeln!(out, "PARTNER_CENTER_REFRESH_TOKEN={refresh_token}")?;
    }
    if let Some(path) = settings_file {
        store(path, &refresh_token)?;
        writeln!(
            out,
            "signed in; PARTNER_CENTER_REFRESH_TOKEN written to {}",
            path.display()
        )?;
    }
    if !webhook_scope_ok {
        writeln!(
            out,
            "warning: the token cannot be used for the webhook registration API; grant the app the delegated permission \"Microsoft Partner Center / user_impersonation\" with admin consent before running `webhook register`"
        )?;
    }
    Ok(true)
}

/// Writes the refresh token into the `Values` block, keeping everything else.
fn store(path: &Path, refresh_token: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e}; create it from local.settings.json.example",
            path.display()
        )
    })?;
    let mut doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid JSON ({e}); fix it and run login again",
            path.display()
        )
    })?;
    let values = doc
        .get_mut("Values")
        .and_then(|v| v.as_object_mut())
        .ok_or_else(|| anyhow::anyhow!("{} has no \"Values\" object", path.display()))?;
    values.insert(
        "PARTNER_CENTER_REFRESH_TOKEN".into(),
        serde_json::Value::from(refresh_token),
    );
    // The file holds secrets: the replacement is readable by its owner only.
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all((serde_json::to_string_pretty(&doc)? + "\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_stored_settings_file_is_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.settings.json");
        std::fs::write(&path, r#"{"Values":{"A":"b"}}"#).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::store(&path, "rt").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["Values"]["PARTNER_CENTER_REFRESH_TOKEN"], "rt");
        assert_eq!(doc["Values"]["A"], "b");
    }
}
