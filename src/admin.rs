//! Adapters from ingest's quarantine and import jobs to the admin GraphQL ports,
//! plus the new-vs-matched customer count of an import (from the event store).

use std::sync::Arc;

use ingest::http::IngestState;
use ingest::import::{ImportJobState, ImportJobs, ImportSummary};
use ingest::quarantine::{Quarantine, QuarantineFilter, QuarantineStatus, QuarantinedRequest, ReplayOutcome};
use query_api::admin::*;
use store::EventStore;

fn time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, value: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(value.to_string()))
        .map_err(|_| format!("{value:?} is not a known {what}"))
}

pub fn filter(channel: Option<String>, reason: Option<&str>, status: Option<&str>) -> Result<QuarantineFilter, String> {
    Ok(QuarantineFilter {
        channel,
        instance: None,
        reason: reason.map(|r| parse("reason", r)).transpose()?,
        status: status
            .map(|s| parse::<QuarantineStatus>("status (pending, replayed, replay_failed)", s))
            .transpose()?,
    })
}

pub fn item(r: &QuarantinedRequest) -> QuarantinedItem {
    let s = r.summary();
    QuarantinedItem {
        id: s.id,
        channel: s.channel,
        instance: s.instance,
        method: s.method,
        reason: s.reason.as_str().to_string(),
        message: s.message,
        received_at: time(s.received_at_us),
        body_bytes: s.body_bytes as u64,
        status: s.status.as_str().to_string(),
        replays: s.replays as u64,
    }
}

pub fn detail(r: &QuarantinedRequest) -> QuarantinedDetail {
    use base64::Engine;
    QuarantinedDetail {
        item: item(r),
        field_errors: r
            .entry
            .fields
            .iter()
            .map(|f| format!("{}: {}", f.field, f.reason))
            .collect(),
        headers: r.entry.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect(),
        body_text: String::from_utf8_lossy(&r.entry.body).into_owned(),
        body_base64: base64::engine::general_purpose::STANDARD.encode(&r.entry.body),
        replay_history: r
            .replays
            .iter()
            .map(|p| {
                let what = match &p.outcome {
                    ReplayOutcome::Accepted { event_ids } => format!("accepted: {}", event_ids.join(", ")),
                    ReplayOutcome::Rejected { reason, message } => format!("rejected ({}): {message}", reason.as_str()),
                };
                format!("{} {what}", time(p.at_us))
            })
            .collect(),
    }
}

pub fn replay_result(r: &QuarantinedRequest) -> ReplayResult {
    match r.replays.last().map(|p| &p.outcome) {
        Some(ReplayOutcome::Accepted { event_ids }) => ReplayResult {
            id: r.id.clone(),
            accepted: true,
            event_ids: event_ids.clone(),
            message: "accepted and published".into(),
        },
        Some(ReplayOutcome::Rejected { reason, message }) => ReplayResult {
            id: r.id.clone(),
            accepted: false,
            event_ids: Vec::new(),
            message: format!("rejected again ({}): {message}", reason.as_str()),
        },
        None => ReplayResult {
            id: r.id.clone(),
            accepted: false,
            event_ids: Vec::new(),
            message: "not replayed".into(),
        },
    }
}

/// The quarantine port of a process running the ingest role.
pub struct QuarantinePort {
    pub quarantine: Arc<Quarantine>,
    pub ingest: IngestState,
}

#[async_trait::async_trait]
impl QuarantineAdmin for QuarantinePort {
    async fn list(&self, q: QuarantineQuery) -> Result<Vec<QuarantinedItem>, String> {
        let filter = filter(q.channel, q.reason.as_deref(), q.status.as_deref())?;
        let summaries = self
            .quarantine
            .list(&filter, q.limit, q.after.as_deref())
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for s in summaries {
            if let Some(r) = self.quarantine.get(&s.id).map_err(|e| e.to_string())? {
                out.push(item(&r));
            }
        }
        Ok(out)
    }

    async fn show(&self, id: &str) -> Result<Option<QuarantinedDetail>, String> {
        Ok(self.quarantine.get(id).map_err(|e| e.to_string())?.as_ref().map(detail))
    }

    async fn replay(&self, id: &str) -> Result<ReplayResult, String> {
        let r = self.ingest.replay_quarantined(&self.quarantine, id).await?;
        Ok(replay_result(&r))
    }
}

/// The import port: jobs started over HTTP, with new/matched customers counted from the store.
pub struct ImportPort {
    pub jobs: Arc<ImportJobs>,
    pub store: Arc<dyn EventStore>,
    /// Inbound events published but not yet handled by the domain (from its worker).
    pub domain_backlog: tokio::sync::watch::Receiver<i64>,
}

fn job_item(id: &str, file: &str, state: &ImportJobState) -> ImportJobItem {
    let mut item = ImportJobItem {
        id: id.to_string(),
        state: "running".into(),
        file: file.to_string(),
        rows_read: 0,
        accepted: 0,
        already_imported: 0,
        rejected: 0,
        new_customers: None,
        matched_customers: None,
        error_report: None,
        error: None,
        summary: String::new(),
    };
    match state {
        ImportJobState::Running => {}
        ImportJobState::Succeeded { summary } => {
            item.state = "done".into();
            item.rows_read = summary.rows_read;
            item.accepted = summary.accepted;
            item.already_imported = summary.already_imported;
            item.rejected = summary.rejected;
            item.new_customers = summary.new_customers;
            item.matched_customers = summary.matched_customers;
            item.error_report = summary.error_report.as_ref().map(|p| p.display().to_string());
            item.summary = summary.to_string();
        }
        ImportJobState::Failed { error } => {
            item.state = "failed".into();
            item.error = Some(error.clone());
        }
    }
    item
}

#[async_trait::async_trait]
impl ImportAdmin for ImportPort {
    async fn jobs(&self) -> Vec<ImportJobItem> {
        let mut out = Vec::new();
        for j in self.jobs.list() {
            out.push(self.item_of(&j).await);
        }
        out
    }

    async fn job(&self, id: &str) -> Option<ImportJobItem> {
        let j = self.jobs.get(id)?;
        Some(self.item_of(&j).await)
    }
}

impl ImportPort {
    fn domain_idle(&self) -> bool {
        *self.domain_backlog.borrow() == 0
    }

    async fn item_of(&self, j: &ingest::import::ImportJob) -> ImportJobItem {
        let mut state = j.state();
        if let ImportJobState::Succeeded { summary } = &mut state
            && summary.new_customers.is_none()
            && self.domain_idle()
            && let Ok((new, matched)) = customer_figures(self.store.clone(), summary).await
        {
            summary.new_customers = Some(new);
            summary.matched_customers = Some(matched);
        }
        job_item(&j.id, &j.file, &state)
    }
}

/// New vs matched customers of an import's rows, counted once the domain has processed
/// them (the caller waits for that): a row created a customer iff the customer stream
/// derived from its event id exists; every other row was matched to an existing customer.
///
/// In two halves on the blocking pool: a million rows are a million lookups (~1.2 s of one
/// core at the end of an import, when the other core has nothing left to do), and they are
/// kept off the runtime's workers, which serve requests meanwhile.
pub async fn customer_figures(
    store: Arc<dyn EventStore>,
    summary: &ImportSummary,
) -> Result<(u64, u64), store::StoreError> {
    let published = &summary.published;
    let mut halves = Vec::new();
    for half in published.chunks(published.len().div_ceil(2).max(1)) {
        let (half, store) = (half.to_vec(), store.clone());
        let runtime = tokio::runtime::Handle::current();
        halves.push(tokio::task::spawn_blocking(move || {
            runtime.block_on(async move {
                let mut new = 0u64;
                for e in &half {
                    let stream = domain::identity::customer_stream(&domain::service::new_customer_id(
                        &e.event_id.to_string(),
                        e.recorded_at_us,
                    ));
                    if store.stream_revision(&stream).await?.is_some() {
                        new += 1;
                    }
                }
                Ok::<u64, store::StoreError>(new)
            })
        }));
    }
    let mut new = 0u64;
    for half in halves {
        new += half
            .await
            .map_err(|e| store::StoreError::Io(format!("counting an import's new customers failed: {e}")))??;
    }
    Ok((new, published.len() as u64 - new))
}
