//! `setup dataverse`: creates the referral-id column on lead and its alternate key when
//! missing (idempotent), then waits until the key index is Active.

use std::{io::Write, time::Duration};

use crate::{config::Settings, dataverse::DataverseClient};

/// Runs the setup; returns whether the key ended Active.
pub async fn dataverse(
    settings: &Settings,
    timeout: Duration,
    poll: Duration,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let client = DataverseClient::from_settings(settings, crate::http::client(&settings.http)?)?;
    let column = client.key_column().to_owned();
    if client.key_column_exists().await? {
        writeln!(out, "column lead.{column} exists")?;
    } else {
        client.create_key_column().await.map_err(|e| {
            anyhow::anyhow!("creating lead.{column} failed ({e}); the application user needs the System Customizer role for setup")
        })?;
        writeln!(out, "created column lead.{column} (text, 100)")?;
    }
    match client.key_status().await? {
        Some(status) => writeln!(out, "alternate key on {column} exists ({status})")?,
        None => {
            client.create_key().await.map_err(|e| {
                anyhow::anyhow!("creating the alternate key failed ({e}); remove duplicate values in lead.{column} and run setup again")
            })?;
            writeln!(
                out,
                "created alternate key {column}_key; Dataverse builds its index in the background"
            )?;
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match client.key_status().await?.as_deref() {
            Some("Active") => {
                writeln!(out, "alternate key is Active: ready")?;
                return Ok(true);
            }
            Some("Failed") => {
                writeln!(
                    out,
                    "the alternate key index failed (usually duplicate values in lead.{column}); fix them and reactivate the key in the maker portal (Tables → Lead → Keys)"
                )?;
                return Ok(false);
            }
            status => {
                if tokio::time::Instant::now() >= deadline {
                    writeln!(
                        out,
                        "the key is still {} after {timeout:?}; run `referral-connector setup dataverse` again later",
                        status.unwrap_or("missing")
                    )?;
                    return Ok(false);
                }
                writeln!(out, "waiting: key index is {}", status.unwrap_or("missing"))?;
                tokio::time::sleep(poll).await;
            }
        }
    }
}
