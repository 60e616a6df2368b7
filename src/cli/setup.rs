//! `setup dataverse`: creates, idempotently, the referral-id column and its alternate key on
//! `lead` and `opportunity`, and the Partner Center columns (choice values included) of each
//! table's mapping; publishes them, then waits until both keys are Active. `setup salesforce`:
//! the connector's fields and their permission set, through the adapter's setup.

use std::{io::Write, time::Duration};

use crate::{
    config::Settings,
    crm::{
        RecordKind,
        dataverse::{self, DataverseClient, Table},
    },
};

/// Runs the setup; returns whether both keys ended Active.
pub async fn dataverse(
    settings: &Settings,
    timeout: Duration,
    poll: Duration,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let client = DataverseClient::from_settings(settings, crate::http::client(&settings.http)?)?;
    let column = client.key_column().to_owned();
    let mut created_any = false;
    for kind in RecordKind::ALL {
        let table = dataverse::table(kind);
        let name = table.logical;
        if client.column_exists(table, &column).await? {
            writeln!(out, "column {name}.{column} exists")?;
        } else {
            client.create_key_column(table).await.map_err(|e| {
                anyhow::anyhow!("creating {name}.{column} failed ({e}); the application user needs the System Customizer role for setup")
            })?;
            created_any = true;
            writeln!(out, "created column {name}.{column} (text, 100)")?;
        }
        for (pc_column, metadata) in
            dataverse::partner_center_column_metadata(settings.sync.mappings.table(kind))
        {
            if client.column_exists(table, &pc_column).await? {
                writeln!(out, "column {name}.{pc_column} exists")?;
                continue;
            }
            client.create_column(table, &metadata).await.map_err(|e| {
                anyhow::anyhow!("creating {name}.{pc_column} failed ({e}); the application user needs the System Customizer role for setup")
            })?;
            created_any = true;
            writeln!(out, "created column {name}.{pc_column}")?;
        }
        match client.key_status(table).await? {
            Some(status) => writeln!(out, "alternate key on {name}.{column} exists ({status})")?,
            None => {
                client.create_key(table).await.map_err(|e| {
                    anyhow::anyhow!("creating the alternate key on {name} failed ({e}); remove duplicate values in {name}.{column} and run setup again")
                })?;
                writeln!(
                    out,
                    "created alternate key on {name}.{column}; Dataverse builds its index in the background"
                )?;
            }
        }
    }
    if created_any {
        client
            .publish(&[Table::LEAD, Table::OPPORTUNITY])
            .await
            .map_err(|e| anyhow::anyhow!("publishing the new columns failed ({e}); publish all customizations in the maker portal"))?;
        writeln!(out, "published the lead and opportunity customizations")?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut waiting = Vec::new();
        for table in [Table::LEAD, Table::OPPORTUNITY] {
            match client.key_status(table).await?.as_deref() {
                Some("Active") => {}
                Some("Failed") => {
                    let name = table.logical;
                    writeln!(
                        out,
                        "the alternate key index on {name} failed (usually duplicate values in {name}.{column}); fix them and reactivate the key in the maker portal (Tables → {name} → Keys)"
                    )?;
                    return Ok(false);
                }
                status => {
                    waiting.push(format!("{} {}", table.logical, status.unwrap_or("missing")))
                }
            }
        }
        if waiting.is_empty() {
            writeln!(
                out,
                "alternate keys on lead and opportunity are Active: ready"
            )?;
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            writeln!(
                out,
                "the keys are still not Active after {timeout:?} ({}); run `referral-connector setup dataverse` again later",
                waiting.join(", ")
            )?;
            return Ok(false);
        }
        writeln!(out, "waiting: key index is {}", waiting.join(", "))?;
        tokio::time::sleep(poll).await;
    }
}

/// `setup salesforce`: creates what is missing; returns `true` (errors name the fix).
pub async fn salesforce(settings: &Settings, out: &mut impl Write) -> anyhow::Result<bool> {
    let client = salesforce_client(settings)?;
    crate::crm::salesforce::setup::setup(&client, out).await?;
    Ok(true)
}

/// The Salesforce client the settings describe.
pub(super) fn salesforce_client(
    settings: &Settings,
) -> anyhow::Result<crate::crm::salesforce::SalesforceClient> {
    let sf = settings.salesforce.require()?;
    Ok(crate::crm::salesforce::SalesforceClient::new(
        crate::http::client(&settings.http)?,
        sf,
        crate::http::RetryPolicy::new(settings.sync.retry_budget, settings.sync.retry_min_delay),
    )?)
}
