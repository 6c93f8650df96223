//! The 360° customer view document and the timeline entry, as stored and served.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Source {
    /// Inbound event id.
    pub event_id: String,
    pub channel: String,
    pub instance: String,
    pub occurred_at_us: i64,
}

impl Source {
    pub fn from_provenance(p: Option<&proto::customer::Provenance>) -> Self {
        p.map(|p| Source {
            event_id: p.inbound_event_id.clone(),
            channel: p.channel.clone(),
            instance: p.channel_instance.clone(),
            occurred_at_us: p.occurred_at_us,
        })
        .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IdentifierEntry {
    pub kind: String,
    pub normalized: String,
    pub scope: String,
    /// Every way it was written, first seen first.
    pub raw: Vec<String>,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FieldEntry {
    pub value: String,
    pub source: Source,
    /// Earlier different values, oldest first.
    pub previous: Vec<FieldValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FieldValue {
    pub value: String,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Attribution {
    pub utm_source: String,
    pub utm_medium: String,
    pub utm_campaign: String,
    pub utm_term: String,
    pub utm_content: String,
    pub referrer: String,
}

impl Attribution {
    pub fn from_proto(a: Option<&proto::inbound::Attribution>) -> Option<Self> {
        let a = a?;
        let out = Attribution {
            utm_source: a.utm_source.clone(),
            utm_medium: a.utm_medium.clone(),
            utm_campaign: a.utm_campaign.clone(),
            utm_term: a.utm_term.clone(),
            utm_content: a.utm_content.clone(),
            referrer: a.referrer.clone(),
        };
        (out != Attribution::default()).then_some(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChannelEntry {
    pub channel: String,
    pub instance: String,
    pub first_at_us: i64,
    pub last_at_us: i64,
    pub count: u64,
    /// Distinct attributions seen on this channel.
    pub attributions: Vec<Attribution>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Touch {
    pub channel: String,
    pub instance: String,
    pub at_us: i64,
    pub attribution: Option<Attribution>,
    pub event_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConsentEntry {
    pub status: String,
    pub source: Source,
}

/// The merged view of one surviving customer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CustomerView {
    pub id: String,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    pub identifiers: Vec<IdentifierEntry>,
    /// name, company, title, industry, region, ... with provenance.
    pub fields: BTreeMap<String, FieldEntry>,
    pub channels: Vec<ChannelEntry>,
    pub first_touch: Option<Touch>,
    pub consent: BTreeMap<String, ConsentEntry>,
    pub order_count: u64,
    pub order_total_cents: i64,
    pub timeline_count: u64,
    /// Customers merged into this one.
    pub merged_from: Vec<String>,
}

/// One interaction on the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at_us: i64,
    pub channel: String,
    pub instance: String,
    pub kind: String,
    pub event_type: String,
    pub summary: String,
    pub event_id: String,
    pub attribution: Option<Attribution>,
    pub order_id: String,
    pub order_total_cents: i64,
    pub details: BTreeMap<String, String>,
}

/// One field's comparison in a merge's evidence.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FieldComparisonEntry {
    pub field: String,
    pub level: String,
    /// log2 Bayes factor contributed.
    pub weight: f64,
}

impl FieldComparisonEntry {
    pub fn from_proto(c: &[proto::customer::FieldComparison]) -> Vec<Self> {
        c.iter()
            .map(|c| FieldComparisonEntry {
                field: c.field.clone(),
                level: c.level.clone(),
                weight: c.weight,
            })
            .collect()
    }
}

/// A merge or a split, as `mergeHistory` shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MergeHistoryEntry {
    /// "merge" or "split".
    pub kind: String,
    pub at_us: i64,
    /// Global position of the event (orders the history).
    pub position: u64,
    pub survivor_id: String,
    /// The absorbed customer (merge) or the restored one (split).
    pub absorbed_id: String,
    /// shared_identifier, probabilistic or reviewer (empty for a split).
    pub rule: String,
    pub score: f64,
    pub match_weight: f64,
    pub prior_weight: f64,
    pub comparisons: Vec<FieldComparisonEntry>,
    /// `kind:value` of the identifiers the evidence names.
    pub identifiers: Vec<String>,
    /// The rule's description, or the reviewer / person who decided.
    pub decided_by: String,
    /// Why (a split's reason).
    pub reason: String,
    pub review_id: String,
}

/// A match review task and its decision.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MatchReviewEntry {
    pub id: String,
    /// pending, approved or rejected.
    pub status: String,
    /// The customer the event created or updated.
    pub customer_id: String,
    /// The existing customer it resembles.
    pub candidate_id: String,
    /// review_band, cluster_size or existing_customers.
    pub reason: String,
    pub rule: String,
    pub score: f64,
    pub match_weight: f64,
    pub prior_weight: f64,
    pub comparisons: Vec<FieldComparisonEntry>,
    pub fingerprint: String,
    pub requested_at_us: i64,
    /// Global position of the request (orders the queue).
    pub position: u64,
    pub reviewer: String,
    pub decided_at_us: i64,
}

/// An identifier marked shared (no longer matched on).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SharedIdentifierEntry {
    pub kind: String,
    pub normalized: String,
    pub scope: String,
    pub customers: u32,
    pub limit: u32,
    pub at_us: i64,
}
