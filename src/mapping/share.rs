//! Pure planning of a seller's share: the body of the new referral for an opportunity marked
//! "Sync with Partner Center" (../shared/spec/cosell.md §1), the checks Partner Center would
//! refuse it for — each named with its fix, so nothing is sent that cannot succeed — and the
//! claim text that marks a row as being created.

use serde_json::{Map, Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{TableMapping, plan::HELP_CHOICES, rules::Source};
use crate::{
    crm::{CrmRecord, ShareParty},
    domain::CountryCode,
};

/// The status text that claims a row for one creation: `creating referral (claimed <UTC>)`.
pub fn claim_text(now: &str) -> String {
    format!("{CLAIM_PREFIX}{now})")
}

const CLAIM_PREFIX: &str = "creating referral (claimed ";

/// When the row was claimed, if its status text is a claim.
pub fn claimed_at(status: Option<&Value>) -> Option<OffsetDateTime> {
    let text = status?.as_str()?;
    let at = text.strip_prefix(CLAIM_PREFIX)?.strip_suffix(')')?;
    OffsetDateTime::parse(at, &Rfc3339).ok()
}

/// Whether the row asks to be shared: its "Sync with Partner Center" column is yes.
pub fn wants_share(table: &TableMapping, record: &CrmRecord) -> bool {
    let Some(column) = &table.partner_center.sync else {
        return false;
    };
    match record.columns.get(column) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "1"),
        _ => false,
    }
}

/// `inviteContext.assistanceRequestCode` from the "How can Microsoft help?" column: a choice
/// value (Dataverse), or a code or label (a picklist). `None`: no help asked for.
pub fn help_code(value: Option<&Value>) -> Option<&'static str> {
    match value? {
        Value::Number(n) => {
            let n = n.as_i64()?;
            HELP_CHOICES
                .iter()
                .find(|(_, v, _)| *v == n)
                .map(|(code, _, _)| *code)
        }
        Value::String(s) => {
            let s = s.trim();
            HELP_CHOICES
                .iter()
                .find(|(code, _, label)| {
                    code.eq_ignore_ascii_case(s) || label.eq_ignore_ascii_case(s)
                })
                .map(|(code, _, _)| *code)
        }
        _ => None,
    }
}

/// Solution ids from the solutions column: entries separated by `;`, `,` or new lines, each
/// an id optionally followed by ` (name)` (the form the column gets from Partner Center).
pub fn solution_ids(value: Option<&Value>) -> Vec<String> {
    let Some(text) = value.and_then(Value::as_str) else {
        return Vec::new();
    };
    let mut depth = 0usize;
    let outside: String = text
        .chars()
        .filter(|c| {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ => return depth == 0,
            }
            false
        })
        .collect();
    outside
        .split([';', ',', '\n'])
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The body of the referral for a shared opportunity, or every reason it would be refused,
/// each with its fix. The mapped columns go to the first path of their rule (the name, the
/// deal value, the close date and the notes by default).
pub fn plan_share(
    table: &TableMapping,
    record: &CrmRecord,
    party: &ShareParty,
) -> Result<Value, Vec<String>> {
    let mut problems = Vec::new();
    let mut body = Map::new();
    for rule in &table.rules {
        let Source::Fields(paths) = &rule.source else {
            continue;
        };
        let Some(keys) = paths.first().and_then(|p| p.keys()) else {
            continue;
        };
        let value = record.columns.get(&rule.column).unwrap_or(&Value::Null);
        let empty = value.is_null() || value.as_str().is_some_and(|s| s.trim().is_empty());
        if !empty {
            set_at(&mut body, &keys, rule.kind.to_partner_center(value));
        }
    }
    let details = |body: &Map<String, Value>, field: &str| {
        body.get("details")
            .and_then(|d| d.get(field))
            .is_some_and(|v| !v.is_null())
    };
    if !details(&body, "dealValue") {
        problems.push(format!(
            "the deal value is missing: set {} on the opportunity",
            column_for(table, "details.dealValue")
        ));
    }
    if !details(&body, "closingDateTime") {
        problems.push(format!(
            "the close date is missing: set {} on the opportunity",
            column_for(table, "details.closingDateTime")
        ));
    }
    match party.currency.as_deref().map(str::trim) {
        Some(iso) if iso.len() == 3 => {
            set_at(
                &mut body,
                &["details", "currency"],
                Value::from(iso.to_ascii_uppercase()),
            );
        }
        _ => problems.push("the currency is missing: set Currency on the opportunity".into()),
    }
    if body.get("name").is_none_or(Value::is_null) {
        problems.push(format!(
            "the opportunity has no name: set {}",
            column_for(table, "name")
        ));
    }
    let mut profile = Map::new();
    match &party.account {
        None => problems.push(
            "the opportunity has no account: set its Account (Partner Center needs the customer's name and country)".into(),
        ),
        Some(account) => {
            match &account.name {
                Some(name) => {
                    profile.insert("name".into(), Value::from(name.clone()));
                }
                None => problems.push("the account has no name: set Account Name".into()),
            }
            let mut address = Map::new();
            let fields = [
                ("addressLine1", &account.line1),
                ("addressLine2", &account.line2),
                ("city", &account.city),
                ("state", &account.state),
                ("postalCode", &account.postal_code),
            ];
            for (field, value) in fields {
                if let Some(value) = value {
                    address.insert(field.into(), Value::from(value.clone()));
                }
            }
            match account.country.as_deref().map(|c| (c, CountryCode::find(c))) {
                None => problems.push(
                    "the account has no country: set Country/Region on the account (a country name or its ISO 3166 code, e.g. United States or US)".into(),
                ),
                Some((text, None)) => problems.push(format!(
                    "the account's country '{text}' is not an ISO 3166 country: set Country/Region to a country name or its two-letter code (e.g. United States or US)"
                )),
                Some((_, Some(code))) => {
                    address.insert("country".into(), Value::from(code.as_str()));
                }
            }
            profile.insert("address".into(), Value::Object(address));
        }
    }
    let contact = party.contact.as_ref();
    let named = contact
        .is_some_and(|c| c.first_name.is_some() && c.last_name.is_some() && c.email.is_some());
    if let Some(contact) = contact.filter(|_| named) {
        let mut member = Map::new();
        let fields = [
            ("firstName", &contact.first_name),
            ("lastName", &contact.last_name),
            ("email", &contact.email),
            ("phoneNumber", &contact.phone),
        ];
        for (field, value) in fields {
            if let Some(value) = value {
                member.insert(field.into(), Value::from(value.clone()));
            }
        }
        profile.insert("team".into(), Value::Array(vec![Value::Object(member)]));
    }
    body.insert("customerProfile".into(), Value::Object(profile));
    let help = help_code(
        table
            .partner_center
            .help
            .as_ref()
            .and_then(|c| record.columns.get(c)),
    );
    let solutions = solution_ids(
        table
            .partner_center
            .solutions
            .as_ref()
            .and_then(|c| record.columns.get(c)),
    );
    if let Some(code) = help {
        if !named {
            problems.push("Microsoft help is requested but the opportunity's contact has no first name, last name and email: set Contact to a person with all three, or set How can Microsoft help? to none".into());
        }
        if solutions.is_empty() {
            problems.push("Microsoft help is requested but no solution is given: put at least one Partner Center solution id (e.g. SOL-1234-PQRS) in Partner Center solutions".into());
        }
        body.insert(
            "inviteContext".into(),
            json!({ "assistanceRequestCode": code }),
        );
    }
    if !solutions.is_empty() {
        let listed: Vec<Value> = solutions
            .iter()
            .map(|id| json!({ "id": id, "type": "Name" }))
            .collect();
        set_at(
            &mut body,
            &["details", "requirements", "solutions"],
            Value::Array(listed),
        );
        let targets: Vec<Value> = solutions
            .iter()
            .map(|id| json!({ "type": "SolutionProfile", "id": id }))
            .collect();
        body.insert("target".into(), Value::Array(targets));
    }
    body.insert("type".into(), Value::from("Independent"));
    body.insert("qualification".into(), Value::from("SalesQualified"));
    body.insert(
        "consent".into(),
        json!({ "consentToShareReferralWithMicrosoftSellers": true }),
    );
    body.insert("externalReferenceId".into(), Value::from(record.id.clone()));
    if problems.is_empty() {
        Ok(Value::Object(body))
    } else {
        Err(problems)
    }
}

/// The column a rule maps to `path`, for messages (`estimatedvalue`), or the path itself.
fn column_for(table: &TableMapping, path: &str) -> String {
    table
        .rules
        .iter()
        .find(|rule| match &rule.source {
            Source::Fields(paths) => paths.first().is_some_and(|p| p.to_string() == path),
            _ => false,
        })
        .map_or_else(|| path.to_owned(), |rule| rule.column.clone())
}

/// Sets `value` at nested `keys`, creating objects on the way.
fn set_at(object: &mut Map<String, Value>, keys: &[&str], value: Value) {
    let Some((last, parents)) = keys.split_last() else {
        return;
    };
    let mut current = object;
    for key in parents {
        let entry = current
            .entry((*key).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        current = next;
    }
    current.insert((*last).to_owned(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crm::{Account, Contact, RecordKind, RecordState};

    fn table() -> TableMapping {
        crate::crm::dataverse::default_mapping(RecordKind::Opportunity)
    }

    fn record(columns: Value) -> CrmRecord {
        CrmRecord {
            kind: RecordKind::Opportunity,
            id: "0a000000-0000-4000-8000-000000000001".into(),
            version: Some("W/\"1\"".into()),
            state: RecordState::Open,
            key: None,
            modified_on: None,
            columns: columns.as_object().cloned().unwrap_or_default(),
        }
    }

    fn party() -> ShareParty {
        ShareParty {
            account: Some(Account {
                name: Some("Contoso".into()),
                line1: Some("1 Main St".into()),
                city: Some("Redmond".into()),
                postal_code: Some("98052".into()),
                country: Some("United States".into()),
                ..Account::default()
            }),
            contact: Some(Contact {
                first_name: Some("Avery".into()),
                last_name: Some("Howard".into()),
                email: Some("avery@contoso.com".into()),
                phone: Some("+1 425 555 0100".into()),
            }),
            currency: Some("usd".into()),
        }
    }

    fn shared() -> Value {
        json!({
            "name": "Contoso Azure migration",
            "estimatedvalue": 25000.0,
            "estimatedclosedate": "2027-03-31",
            "description": "Move 40 VMs",
            "new_syncwithpartnercenter": true,
            "new_microsofthelp": 100_000_003,
            "new_partnercentersolutions": "SOL-1234-PQRS (Migration); SOL-9",
        })
    }

    #[test]
    fn a_complete_share_becomes_the_documented_body() {
        let body = plan_share(&table(), &record(shared()), &party()).expect("valid");
        assert_eq!(
            body,
            json!({
                "name": "Contoso Azure migration",
                "details": {
                    "dealValue": 25000.0,
                    "closingDateTime": "2027-03-31T00:00:00Z",
                    "notes": "Move 40 VMs",
                    "currency": "USD",
                    "requirements": {"solutions": [
                        {"id": "SOL-1234-PQRS", "type": "Name"},
                        {"id": "SOL-9", "type": "Name"},
                    ]},
                },
                "customerProfile": {
                    "name": "Contoso",
                    "address": {
                        "addressLine1": "1 Main St", "city": "Redmond",
                        "postalCode": "98052", "country": "US",
                    },
                    "team": [{
                        "firstName": "Avery", "lastName": "Howard",
                        "email": "avery@contoso.com", "phoneNumber": "+1 425 555 0100",
                    }],
                },
                "inviteContext": {"assistanceRequestCode": "ProofOfConceptOrDemo"},
                "target": [
                    {"type": "SolutionProfile", "id": "SOL-1234-PQRS"},
                    {"type": "SolutionProfile", "id": "SOL-9"},
                ],
                "type": "Independent",
                "qualification": "SalesQualified",
                "consent": {"consentToShareReferralWithMicrosoftSellers": true},
                "externalReferenceId": "0a000000-0000-4000-8000-000000000001",
            })
        );
    }

    #[test]
    fn each_refusal_is_found_before_anything_is_sent_and_names_its_fix() {
        type Change = fn(&mut Value, &mut ShareParty);
        let cases: [(&str, Change, &str); 9] = [
            (
                "no country",
                |_, p| {
                    p.account.as_mut().unwrap().country = None;
                },
                "set Country/Region",
            ),
            (
                "not ISO",
                |_, p| {
                    p.account.as_mut().unwrap().country = Some("Atlantis".into());
                },
                "'Atlantis' is not an ISO 3166 country",
            ),
            ("no account", |_, p| p.account = None, "has no account"),
            (
                "help without contact",
                |_, p| p.contact = None,
                "contact has no first name",
            ),
            (
                "help, contact without email",
                |_, p| {
                    p.contact.as_mut().unwrap().email = None;
                },
                "contact has no first name, last name and email",
            ),
            (
                "help without solution",
                |r, _| {
                    r["new_partnercentersolutions"] = Value::Null;
                },
                "no solution is given",
            ),
            (
                "no value",
                |r, _| r["estimatedvalue"] = Value::Null,
                "set estimatedvalue",
            ),
            ("no currency", |_, p| p.currency = None, "set Currency"),
            (
                "no close date",
                |r, _| {
                    r["estimatedclosedate"] = Value::Null;
                },
                "set estimatedclosedate",
            ),
        ];
        for (name, change, expected) in cases {
            let mut columns = shared();
            let mut p = party();
            change(&mut columns, &mut p);
            let problems = plan_share(&table(), &record(columns), &p).expect_err(name);
            assert_eq!(problems.len(), 1, "{name}: {problems:?}");
            assert!(problems[0].contains(expected), "{name}: {problems:?}");
        }
    }

    #[test]
    fn without_help_neither_contact_nor_solution_is_required() {
        let mut columns = shared();
        columns["new_microsofthelp"] = Value::Null;
        columns["new_partnercentersolutions"] = Value::Null;
        let mut p = party();
        p.contact = None;
        let body = plan_share(&table(), &record(columns), &p).expect("valid");
        assert!(body.get("inviteContext").is_none());
        assert!(body.get("target").is_none());
        assert!(body["customerProfile"].get("team").is_none());
    }

    #[test]
    fn claims_round_trip_and_other_status_texts_are_not_claims() {
        let text = claim_text("2026-12-03T07:00:00Z");
        assert_eq!(
            claimed_at(Some(&Value::from(text))).map(|t| t.unix_timestamp()),
            OffsetDateTime::parse("2026-12-03T07:00:00Z", &Rfc3339)
                .ok()
                .map(|t| t.unix_timestamp())
        );
        for other in [
            "synced 2026-12-03T07:00:00Z",
            "error: x",
            "creating referral (claimed soon)",
        ] {
            assert_eq!(claimed_at(Some(&Value::from(other))), None, "{other}");
        }
        assert_eq!(claimed_at(None), None);
    }

    #[test]
    fn help_and_solutions_columns_read_in_every_form() {
        assert_eq!(help_code(Some(&json!(100_000_006))), Some("GeneralOrOther"));
        assert_eq!(
            help_code(Some(&json!("Proof of concept / Demo"))),
            Some("ProofOfConceptOrDemo")
        );
        assert_eq!(
            help_code(Some(&json!("quotesorlicensing"))),
            Some("QuotesOrLicensing")
        );
        assert_eq!(help_code(Some(&json!(5))), None);
        assert_eq!(help_code(None), None);
        assert_eq!(
            solution_ids(Some(&json!("SOL-1 (A, B); SOL-2,SOL-3\nSOL-4"))),
            ["SOL-1", "SOL-2", "SOL-3", "SOL-4"]
        );
        assert!(solution_ids(Some(&json!(" ; "))).is_empty());
    }

    #[test]
    fn the_sync_column_says_yes_in_every_form() {
        let t = table();
        for (value, expected) in [
            (json!(true), true),
            (json!(false), false),
            (json!(1), true),
            (json!("Yes"), true),
            (Value::Null, false),
        ] {
            let r = record(json!({ "new_syncwithpartnercenter": value }));
            assert_eq!(wants_share(&t, &r), expected, "{value}");
        }
    }
}
