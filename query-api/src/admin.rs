//! Admin GraphQL: the quarantine (list, show, replay) and import jobs. The data
//! comes through small ports the composition root implements, so this crate
//! does not depend on `ingest`.

use std::sync::Arc;

use async_graphql::{Context, Object, Result, SimpleObject};

/// One quarantined request, as listed.
#[derive(Debug, Clone, SimpleObject)]
pub struct QuarantinedItem {
    pub id: String,
    pub channel: String,
    pub instance: String,
    pub method: String,
    pub reason: String,
    pub message: String,
    pub received_at: String,
    pub body_bytes: u64,
    /// pending, replayed or replay_failed.
    pub status: String,
    pub replays: u64,
}

/// One quarantined request in full (secrets redacted).
#[derive(Debug, Clone, SimpleObject)]
pub struct QuarantinedDetail {
    pub item: QuarantinedItem,
    /// Field errors as `field: reason`.
    pub field_errors: Vec<String>,
    /// Headers as `name: value`, credentials redacted.
    pub headers: Vec<String>,
    /// The body as text (lossy UTF-8); `body_base64` holds the exact bytes.
    pub body_text: String,
    pub body_base64: String,
    /// Every replay: time and outcome.
    pub replay_history: Vec<String>,
}

/// What a replay did.
#[derive(Debug, Clone, SimpleObject)]
pub struct ReplayResult {
    pub id: String,
    pub accepted: bool,
    pub event_ids: Vec<String>,
    pub message: String,
}

/// Filter of `quarantined`.
#[derive(Debug, Clone, Default)]
pub struct QuarantineQuery {
    pub channel: Option<String>,
    pub reason: Option<String>,
    pub status: Option<String>,
    pub after: Option<String>,
    pub limit: usize,
}

/// The quarantine as the admin API needs it.
#[async_trait::async_trait]
pub trait QuarantineAdmin: Send + Sync + 'static {
    async fn list(&self, query: QuarantineQuery) -> Result<Vec<QuarantinedItem>, String>;
    async fn show(&self, id: &str) -> Result<Option<QuarantinedDetail>, String>;
    async fn replay(&self, id: &str) -> Result<ReplayResult, String>;
}

/// An import job, as the admin API shows it.
#[derive(Debug, Clone, SimpleObject)]
pub struct ImportJobItem {
    pub id: String,
    /// queued, running, done or failed.
    pub state: String,
    pub file: String,
    pub rows_read: u64,
    pub accepted: u64,
    pub already_imported: u64,
    pub rejected: u64,
    pub new_customers: Option<u64>,
    pub matched_customers: Option<u64>,
    pub error_report: Option<String>,
    pub error: Option<String>,
    /// The summary as the CLI prints it.
    pub summary: String,
}

#[async_trait::async_trait]
pub trait ImportAdmin: Send + Sync + 'static {
    async fn jobs(&self) -> Vec<ImportJobItem>;
    async fn job(&self, id: &str) -> Option<ImportJobItem>;
}

/// The admin ports a role offers.
#[derive(Default, Clone)]
pub struct AdminPorts {
    pub quarantine: Option<Arc<dyn QuarantineAdmin>>,
    pub imports: Option<Arc<dyn ImportAdmin>>,
}

fn quarantine<'a>(ctx: &'a Context<'_>) -> Result<&'a Arc<dyn QuarantineAdmin>> {
    ctx.data::<Arc<dyn QuarantineAdmin>>()
        .map_err(|_| "the quarantine is not served by this process: query a process running the ingest role".into())
}

fn imports<'a>(ctx: &'a Context<'_>) -> Result<&'a Arc<dyn ImportAdmin>> {
    ctx.data::<Arc<dyn ImportAdmin>>()
        .map_err(|_| "imports are not served by this process: query a process running the ingest role".into())
}

#[derive(Default)]
pub struct AdminQuery;

#[Object]
impl AdminQuery {
    /// Requests a channel refused, newest last; filter by channel kind, reason, status.
    async fn quarantined(
        &self,
        ctx: &Context<'_>,
        channel: Option<String>,
        reason: Option<String>,
        status: Option<String>,
        after: Option<String>,
        #[graphql(default = 50)] first: i32,
    ) -> Result<Vec<QuarantinedItem>> {
        quarantine(ctx)?
            .list(QuarantineQuery {
                channel,
                reason,
                status,
                after,
                limit: first.clamp(1, 500) as usize,
            })
            .await
            .map_err(Into::into)
    }

    /// One quarantined request in full.
    async fn quarantined_request(&self, ctx: &Context<'_>, id: String) -> Result<Option<QuarantinedDetail>> {
        quarantine(ctx)?.show(&id).await.map_err(Into::into)
    }

    /// Import jobs started over HTTP (`POST /v1/imports`).
    async fn import_jobs(&self, ctx: &Context<'_>) -> Result<Vec<ImportJobItem>> {
        Ok(imports(ctx)?.jobs().await)
    }

    async fn import_job(&self, ctx: &Context<'_>, id: String) -> Result<Option<ImportJobItem>> {
        Ok(imports(ctx)?.job(&id).await)
    }
}

#[derive(Default)]
pub struct AdminMutation;

#[Object]
impl AdminMutation {
    /// Runs a quarantined request through its channel's *current* configuration again
    /// (e.g. after fixing a secret) and publishes what it yields. Idempotent.
    async fn replay_quarantined(&self, ctx: &Context<'_>, id: String) -> Result<ReplayResult> {
        quarantine(ctx)?.replay(&id).await.map_err(Into::into)
    }
}
