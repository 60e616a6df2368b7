//! `check`: verifies the configuration end to end without writing anything. Each line is a
//! pass, a failure with its fix, or a note (the timer watermarks when there are none yet).

use std::io::Write;

use azure_core::credentials::TokenCredential;

use super::{
    mask_url,
    status::{self, Freshness, Reading},
    webhook::{missing_referral_events, registered_url},
};
use crate::{
    config::Settings,
    crm::{
        RecordKind,
        dataverse::{self, DataverseClient},
    },
    partner_center::{ListQuery, PartnerCenterClient},
    storage::{StorageClient, StorageConfigError, StorageError},
    tokens::PARTNER_CENTER_SCOPE,
};

struct Report<'a, W: Write> {
    out: &'a mut W,
    failed: usize,
    passed: usize,
}

impl<W: Write> Report<'_, W> {
    fn pass(&mut self, what: &str, detail: &str) -> std::io::Result<()> {
        self.passed += 1;
        writeln!(self.out, "PASS  {what}: {detail}")
    }

    fn fail(&mut self, what: &str, problem: &str, fix: &str) -> std::io::Result<()> {
        self.failed += 1;
        writeln!(self.out, "FAIL  {what}: {problem}\n      fix: {fix}")
    }

    /// Something worth knowing that is neither a pass nor a failure.
    fn note(&mut self, what: &str, detail: &str) -> std::io::Result<()> {
        writeln!(self.out, "NOTE  {what}: {detail}")
    }
}

/// Runs every check; returns whether all passed.
pub async fn run(
    settings: &Settings,
    url: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let http = crate::http::client(&settings.http)?;
    let mut report = Report {
        out,
        failed: 0,
        passed: 0,
    };

    match PartnerCenterClient::from_settings(settings, http.clone()) {
        Err(e) => report.fail(
            "Partner Center token",
            &e.to_string(),
            "set the PARTNER_CENTER_* settings (README, Operate)",
        )?,
        Ok((client, credential)) => {
            match credential.get_token(&[PARTNER_CENTER_SCOPE], None).await {
                Err(e) => report.fail(
                    "Partner Center token",
                    &crate::http::token_error(&e).to_string(),
                    "run `referral-connector login --settings local.settings.json` and store the new PARTNER_CENTER_REFRESH_TOKEN",
                )?,
                Ok(_) => report.pass("Partner Center token", "the refresh token was redeemed")?,
            }
            let query = ListQuery {
                since: "2000-01-01T00:00:00Z".into(),
                until: None,
                page_size: 1,
            };
            match client.first_page_url(&query) {
                Err(e) => report.fail(
                    "Partner Center referrals",
                    &e.to_string(),
                    "check PARTNER_CENTER_API_URL",
                )?,
                Ok(first) => match client.list_page(&first).await {
                    Ok(page) => report.pass(
                        "Partner Center referrals",
                        &format!(
                            "listing works ({} referral(s) on the first page)",
                            page.referrals.len()
                        ),
                    )?,
                    Err(e) => report.fail(
                        "Partner Center referrals",
                        &e.to_string(),
                        "the signed-in user needs the Referrals Admin role in Partner Center",
                    )?,
                },
            }
            check_registration(&mut report, &client, url).await?;
        }
    }

    match settings.crm {
        crate::config::CrmChoice::Dataverse => match DataverseClient::from_settings(settings, http) {
            Err(e) => report.fail("Dataverse", &e.to_string(), "set DATAVERSE_URL and AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET (or use a managed identity)")?,
            Ok(client) => check_dataverse(&mut report, &client, settings).await?,
        },
        crate::config::CrmChoice::Salesforce => check_salesforce(&mut report, settings).await?,
    }
    check_watermarks(&mut report, settings).await?;
    writeln!(
        report.out,
        "{} passed, {} failed",
        report.passed, report.failed
    )?;
    Ok(report.failed == 0)
}

/// Sign-in, the fields each target table reads and writes, and the stage table.
async fn check_salesforce<W: Write>(
    report: &mut Report<'_, W>,
    settings: &Settings,
) -> anyhow::Result<()> {
    let client = match super::setup::salesforce_client(settings) {
        Ok(client) => client,
        Err(e) => {
            return Ok(report.fail(
                "Salesforce",
                &e.to_string(),
                "set CRM=salesforce, SALESFORCE_URL, SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET (or SALESFORCE_USERNAME and SALESFORCE_PRIVATE_KEY)",
            )?);
        }
    };
    let fields: Vec<(&str, Vec<String>)> = settings
        .sync
        .target
        .kinds()
        .iter()
        .map(|kind| {
            let mut fields: Vec<String> = settings
                .sync
                .mappings
                .table(*kind)
                .select_columns()
                .into_iter()
                .map(str::to_owned)
                .collect();
            fields.push(crate::crm::salesforce::KEY_FIELD.to_owned());
            (crate::crm::salesforce::object(*kind), fields)
        })
        .collect();
    let new_stage = settings.salesforce.require()?.new_stage.clone();
    for finding in crate::crm::salesforce::setup::verify(&client, &fields, &new_stage).await {
        match finding.result {
            Ok(detail) => report.pass(&finding.what, &detail)?,
            Err(problem) => report.fail(&finding.what, &problem.problem, &problem.fix)?,
        }
    }
    Ok(())
}

async fn check_dataverse<W: Write>(
    report: &mut Report<'_, W>,
    client: &DataverseClient,
    settings: &Settings,
) -> anyhow::Result<()> {
    if let Err(e) = client.token().await {
        report.fail(
            "Dataverse token",
            &e.to_string(),
            "check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or the Function App's managed identity",
        )?;
        return Ok(());
    }
    report.pass("Dataverse token", "obtained")?;
    match client.who_am_i().await {
        Ok(user) => report.pass("Dataverse WhoAmI", &format!("application user {user}"))?,
        Err(e) => {
            report.fail(
                "Dataverse WhoAmI",
                &e.to_string(),
                "create an application user for the app (Power Platform admin center → Application users) with a role that can read and write leads",
            )?;
            return Ok(());
        }
    }
    let column = client.key_column().to_owned();
    let target = settings.sync.target;
    for kind in RecordKind::ALL {
        let table = dataverse::table(kind);
        let name = table.logical;
        let synced = target.kinds().contains(&kind);
        match client.column_exists(table, &column).await {
            Ok(true) => report.pass("Key column", &format!("{name}.{column} exists"))?,
            Ok(false) => report.fail(
                "Key column",
                &format!("{name}.{column} does not exist"),
                "run `referral-connector setup dataverse`",
            )?,
            Err(e) => report.fail(
                "Key column",
                &e.to_string(),
                "the application user needs read access to table metadata",
            )?,
        }
        match client.key_status(table).await {
            Ok(Some(status)) if status == "Active" => report.pass("Alternate key", &format!("the key on {name}.{column} is Active"))?,
            Ok(Some(status)) => report.fail(
                "Alternate key",
                &format!("the key on {name}.{column} is {status}"),
                "wait for it to become Active (`referral-connector setup dataverse` waits), or reactivate it if Failed",
            )?,
            Ok(None) => report.fail("Alternate key", &format!("no alternate key on {name}.{column}"), "run `referral-connector setup dataverse`")?,
            Err(e) => report.fail("Alternate key", &e.to_string(), "the application user needs read access to table metadata")?,
        }
        if !synced {
            continue;
        }
        let mapping = settings.sync.mappings.table(kind);
        let mut missing = Vec::new();
        for (pc_column, _) in dataverse::partner_center_column_metadata(mapping) {
            match client.column_exists(table, &pc_column).await {
                Ok(true) => {}
                Ok(false) => missing.push(pc_column),
                Err(e) => {
                    report.fail(
                        "Partner Center columns",
                        &e.to_string(),
                        "the application user needs read access to table metadata",
                    )?;
                    missing.clear();
                    break;
                }
            }
        }
        if missing.is_empty() {
            report.pass(
                "Partner Center columns",
                &format!("{name} has {}", mapping.partner_center.names().join(", ")),
            )?;
        } else {
            report.fail(
                "Partner Center columns",
                &format!("{name} lacks {}", missing.join(", ")),
                "run `referral-connector setup dataverse`",
            )?;
        }
    }
    Ok(())
}

/// Both timer watermarks and their age, read as `status` reads them. A missing blob (the timer
/// never ran) and local development storage that is not running are noted, not failed.
async fn check_watermarks<W: Write>(
    report: &mut Report<'_, W>,
    settings: &Settings,
) -> anyhow::Result<()> {
    let client = match StorageClient::from_settings(settings) {
        Ok(client) => client,
        Err(StorageError::Config(StorageConfigError::NotSet)) => {
            report.note(
                "Timer watermarks",
                "not read: AzureWebJobsStorage is not set here",
            )?;
            return Ok(());
        }
        Err(e) => {
            report.fail(
                "Timer watermarks",
                &e.to_string(),
                "set AzureWebJobsStorage to the Function App's storage connection string",
            )?;
            return Ok(());
        }
    };
    let local = client.account().is_local();
    for watermark in status::watermarks(&client, settings, time::OffsetDateTime::now_utc()).await {
        let what = format!("{} watermark", watermark.timer.name());
        let line = watermark.describe();
        match &watermark.freshness {
            Freshness::Fresh { .. } => report.pass(&what, &line)?,
            Freshness::NeverRan => report.note(&what, &line)?,
            Freshness::Unknown(_)
                if local && matches!(watermark.reading, Reading::Unreadable(_)) =>
            {
                report.note(&what, &format!("{line} (local development storage)"))?
            }
            Freshness::Stale { .. } | Freshness::Unknown(_) => report.fail(
                &what,
                &line,
                &format!(
                    "check the {} function's invocations and logs in the Function App, and {}",
                    watermark.timer.name(),
                    watermark.timer.setting()
                ),
            )?,
        }
    }
    Ok(())
}

async fn check_registration<W: Write>(
    report: &mut Report<'_, W>,
    client: &PartnerCenterClient,
    url: Option<&str>,
) -> anyhow::Result<()> {
    let registration = match client.get_registration().await {
        Ok(Some(r)) => r,
        Ok(None) => {
            report.fail(
                "Webhook registration",
                "none",
                "run `referral-connector webhook register --url <ReferralWebhook URL>`",
            )?;
            return Ok(());
        }
        Err(e) => {
            report.fail(
                "Webhook registration",
                &e.to_string(),
                "grant the app Microsoft Partner Center user_impersonation and run `login` again",
            )?;
            return Ok(());
        }
    };
    let registered = registered_url(&registration);
    let missing = missing_referral_events(&registration);
    let fix = "run `referral-connector webhook register --url <ReferralWebhook URL>`";
    if !missing.is_empty() {
        report.fail(
            "Webhook registration",
            &format!("missing events {}", missing.join(", ")),
            fix,
        )?;
    } else if let Some(url) = url.filter(|u| *u != registered) {
        report.fail(
            "Webhook registration",
            &format!(
                "points at {} instead of {}",
                mask_url(registered),
                mask_url(url)
            ),
            fix,
        )?;
    } else {
        report.pass(
            "Webhook registration",
            &format!("{} receives all referral events", mask_url(registered)),
        )?;
    }
    Ok(())
}
