//! `webhook register | show | test`: the per-tenant Partner Center webhook registration.

use std::{io::Write, time::Duration};

use serde_json::{Value, json};

use super::mask_url;
use crate::{config::Settings, domain::EventName, partner_center::PartnerCenterClient};

fn client(settings: &Settings) -> anyhow::Result<PartnerCenterClient> {
    let http = crate::http::client(&settings.http)?;
    Ok(PartnerCenterClient::from_settings(settings, http)?.0)
}

/// A field of a registration, whatever its casing.
fn field<'a>(registration: &'a Value, name: &str) -> Option<&'a Value> {
    registration
        .as_object()
        .and_then(|o| crate::domain::referral::lookup(o, name))
}

fn events_of(registration: &Value) -> Vec<&str> {
    field(registration, "WebhookEvents")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The `WebhookUrl` of a registration, or `""`.
pub(crate) fn registered_url(registration: &Value) -> &str {
    field(registration, "WebhookUrl")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The referral events a registration does not subscribe to (names compared like
/// [`EventName::parse`], whatever their casing).
pub(crate) fn missing_referral_events(registration: &Value) -> Vec<&'static str> {
    static REFERRAL: [EventName; 4] = EventName::REFERRAL;
    let have: Vec<EventName> = events_of(registration)
        .into_iter()
        .map(EventName::parse)
        .collect();
    REFERRAL
        .iter()
        .filter(|event| !have.contains(event))
        .map(EventName::as_str)
        .collect()
}

fn validate_url(url: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let parsed =
        url::Url::parse(url).map_err(|e| anyhow::anyhow!("--url is not an absolute URL ({e})"))?;
    if parsed.scheme() != "https" {
        anyhow::bail!("--url must be https: Partner Center only calls https endpoints");
    }
    if !parsed.query_pairs().any(|(k, _)| k == "code") {
        writeln!(
            out,
            "warning: the URL has no ?code=<function key>; ReferralWebhook uses authLevel function, so the Functions host will answer 401 without it"
        )?;
    }
    Ok(())
}

/// Creates or updates the registration; writes nothing when it already matches.
pub async fn register(
    settings: &Settings,
    url: &str,
    events: &[String],
    signature_header: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    validate_url(url, out)?;
    for event in events {
        if !EventName::parse(event).is_referral_event()
            && EventName::parse(event) != EventName::TestCreated
        {
            writeln!(
                out,
                "note: {event} is not a referral event; the webhook will acknowledge and ignore it"
            )?;
        }
    }
    let client = client(settings)?;
    let existing = client.get_registration().await?;
    if let Some(current) = &existing {
        let mut have = events_of(current);
        let mut want: Vec<&str> = events.iter().map(String::as_str).collect();
        have.sort();
        want.sort();
        let same_header = field(current, "SignatureTokenToMsSignatureHeader")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            == signature_header;
        if registered_url(current) == url && have == want && same_header {
            writeln!(
                out,
                "already registered: {} for {}",
                mask_url(url),
                events.join(", ")
            )?;
            return Ok(true);
        }
        if !registered_url(current).is_empty() && registered_url(current) != url {
            writeln!(
                out,
                "replacing the registration that pointed at {}",
                mask_url(registered_url(current))
            )?;
        }
    }
    let body = json!({
        "WebhookUrl": url,
        "WebhookEvents": events,
        "SignatureTokenToMsSignatureHeader": signature_header,
    });
    client.put_registration(existing.is_none(), &body).await?;
    writeln!(
        out,
        "{} {} for {}",
        if existing.is_none() {
            "registered"
        } else {
            "updated the registration to"
        },
        mask_url(url),
        events.join(", ")
    )?;
    Ok(true)
}

/// Prints the registration; fails when there is none or it does not point at `url`.
pub async fn show(
    settings: &Settings,
    url: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let Some(registration) = client(settings)?.get_registration().await? else {
        writeln!(
            out,
            "no webhook registration: run `referral-connector webhook register --url <ReferralWebhook URL>`"
        )?;
        return Ok(false);
    };
    writeln!(out, "url:      {}", mask_url(registered_url(&registration)))?;
    writeln!(out, "events:   {}", events_of(&registration).join(", "))?;
    if let Some(when) = field(&registration, "LastModifiedTimestamp").and_then(Value::as_str) {
        writeln!(out, "modified: {when}")?;
    }
    let missing = missing_referral_events(&registration);
    if !missing.is_empty() {
        writeln!(out, "missing referral events: {}", missing.join(", "))?;
    }
    match url {
        None => Ok(missing.is_empty()),
        Some(url) if registered_url(&registration) == url => {
            writeln!(out, "points at {}: yes", mask_url(url))?;
            Ok(missing.is_empty())
        }
        Some(url) => {
            writeln!(
                out,
                "points at {}: no (another tool may have replaced it); run `referral-connector webhook register --url <URL>`",
                mask_url(url)
            )?;
            Ok(false)
        }
    }
}

/// Posts a validation event and polls its delivery result.
pub async fn test(
    settings: &Settings,
    timeout: Duration,
    poll: Duration,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let client = client(settings)?;
    let correlation_id = client.post_validation_event().await?;
    writeln!(
        out,
        "sent test-created event {correlation_id}; waiting for the delivery result"
    )?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::time::sleep(poll).await;
        let result = client.get_validation_event(&correlation_id).await?;
        let attempts = result
            .get("results")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let done = result.get("status").and_then(Value::as_str) == Some("completed")
            && !attempts.is_empty();
        if done {
            for attempt in &attempts {
                writeln!(
                    out,
                    "delivery {} at {}: {}",
                    attempt
                        .get("responseCode")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    attempt
                        .get("dateTimeUtc")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    attempt
                        .get("responseMessage")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                )?;
            }
            let ok = attempts
                .iter()
                .any(|a| a.get("responseCode").and_then(Value::as_str) == Some("OK"));
            if !ok {
                writeln!(
                    out,
                    "the endpoint did not answer OK: check the Function App logs and the ?code= function key"
                )?;
            }
            return Ok(ok);
        }
        if tokio::time::Instant::now() >= deadline {
            writeln!(
                out,
                "no delivery result within {timeout:?}; Partner Center may still be trying: run `webhook test` again later"
            )?;
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_referral_events_ignore_casing_and_test_created() {
        let registration = json!({
            "webhookUrl": "https://x.test/api/ReferralWebhook",
            "webhookEvents": ["Referral-Created", "referral-updated", "test-created"]
        });
        assert_eq!(
            registered_url(&registration),
            "https://x.test/api/ReferralWebhook"
        );
        assert_eq!(
            missing_referral_events(&registration),
            ["related-referral-created", "related-referral-updated"]
        );
        let all = json!({"WebhookEvents": EventName::SUBSCRIBED});
        assert!(missing_referral_events(&all).is_empty());
        assert_eq!(missing_referral_events(&json!({})).len(), 4);
    }
}
