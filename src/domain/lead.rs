//! A Dynamics 365 lead as the sync sees it: id, concurrency token, state and mapped columns.

use serde_json::{Map, Value};

/// Lead `statecode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadState {
    /// 0: Open; the only state in which a lead can be written.
    Open,
    /// 1: Qualified (converted); read-only.
    Qualified,
    /// 2: Disqualified; read-only.
    Disqualified,
    /// A value this version does not know; treated as read-only.
    Other(i64),
}

impl LeadState {
    /// From the `statecode` integer.
    pub fn from_code(code: i64) -> Self {
        match code {
            0 => Self::Open,
            1 => Self::Qualified,
            2 => Self::Disqualified,
            other => Self::Other(other),
        }
    }

    /// Lower-case name for logs and output.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Qualified => "qualified",
            Self::Disqualified => "disqualified",
            Self::Other(_) => "unknown",
        }
    }
}

/// A lead read from (or returned by) Dataverse.
#[derive(Debug, Clone, PartialEq)]
pub struct Lead {
    /// `leadid` (GUID).
    pub lead_id: String,
    /// `@odata.etag`, for `If-Match`.
    pub etag: Option<String>,
    /// `statecode`.
    pub state: LeadState,
    /// `statuscode`, when returned.
    pub status_code: Option<i64>,
    /// The mapped columns as Dataverse returned them.
    pub columns: Map<String, Value>,
}

impl Lead {
    /// Builds a lead from a Web API entity body. Returns `None` when `leadid` is missing.
    pub fn from_entity(mut entity: Map<String, Value>) -> Option<Self> {
        let lead_id = entity.remove("leadid")?.as_str()?.to_ascii_lowercase();
        let etag = entity
            .remove("@odata.etag")
            .and_then(|v| v.as_str().map(str::to_owned));
        let state = LeadState::from_code(
            entity
                .remove("statecode")
                .and_then(|v| v.as_i64())
                .unwrap_or(0),
        );
        let status_code = entity.remove("statuscode").and_then(|v| v.as_i64());
        entity.retain(|k, _| !k.contains('@'));
        Some(Self {
            lead_id,
            etag,
            state,
            status_code,
            columns: entity,
        })
    }

    /// The reason text a disqualified lead's `statuscode` stands for.
    pub fn disqualify_reason(&self) -> String {
        match self.status_code {
            Some(4) => "Lost".to_owned(),
            Some(5) => "Cannot Contact".to_owned(),
            Some(6) => "No Longer Interested".to_owned(),
            Some(7) => "Canceled".to_owned(),
            Some(other) => format!("Disqualified in Dynamics 365 (status reason {other})"),
            None => "Disqualified in Dynamics 365".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn entity_bodies_become_leads_without_annotations() {
        let Value::Object(body) = json!({
            "@odata.context": "x", "@odata.etag": "W/\"42\"", "leadid": "AAAAAAAA-0000-0000-0000-000000000001",
            "statecode": 2, "statuscode": 6, "subject": "S", "estimatedamount@OData.Community.Display.V1.FormattedValue": "$1"
        }) else {
            unreachable!()
        };
        let lead = Lead::from_entity(body).unwrap();
        assert_eq!(lead.lead_id, "aaaaaaaa-0000-0000-0000-000000000001");
        assert_eq!(lead.etag.as_deref(), Some("W/\"42\""));
        assert_eq!(lead.state, LeadState::Disqualified);
        assert_eq!(lead.disqualify_reason(), "No Longer Interested");
        assert_eq!(lead.columns.len(), 1);
        assert_eq!(lead.columns["subject"], "S");
    }

    #[test]
    fn a_body_without_leadid_is_not_a_lead() {
        assert!(Lead::from_entity(Map::new()).is_none());
    }
}
