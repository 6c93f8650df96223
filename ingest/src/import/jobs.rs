//! Imports over HTTP: `POST /v1/imports` (multipart: `file`, and optionally
//! `template`, `source`, `sheet`, `encoding`, `delimiter`, `mapping` as TOML
//! text) stores the upload and starts a job; `GET /v1/imports/{id}` gives its
//! status, progress and summary; `GET /v1/imports/{id}/errors` downloads the
//! error report; `GET /v1/imports` lists jobs. The jobs live in an
//! [`ImportJobs`] registry the GraphQL API can read too. Jobs are kept in
//! memory only: after a restart, re-posting the file resumes it (same event ids).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::io::AsyncWriteExt;

use super::{ImportLedger, ImportOptions, ImportSummary, RecordedProgress, progress::ProgressSnapshot};

/// Where a job is.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ImportJobState {
    Running,
    Succeeded { summary: Box<ImportSummary> },
    Failed { error: String },
}

/// One import started over HTTP.
pub struct ImportJob {
    pub id: String,
    pub file: String,
    pub created_at_us: i64,
    pub progress: RecordedProgress,
    state: Mutex<ImportJobState>,
    dir: PathBuf,
}

/// What `GET /v1/imports/{id}` answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportJobStatus {
    pub id: String,
    pub file: String,
    pub created_at_us: i64,
    pub progress: ProgressSnapshot,
    #[serde(flatten)]
    pub state: ImportJobState,
}

impl ImportJob {
    pub fn state(&self) -> ImportJobState {
        self.state.lock().map(|s| s.clone()).unwrap_or(ImportJobState::Failed {
            error: "job state lock poisoned".into(),
        })
    }

    pub fn status(&self) -> ImportJobStatus {
        ImportJobStatus {
            id: self.id.clone(),
            file: self.file.clone(),
            created_at_us: self.created_at_us,
            progress: self.progress.snapshot(),
            state: self.state(),
        }
    }

    /// Fills in the customer figures of a finished job once the domain has processed its rows.
    pub fn set_customer_figures(&self, new_customers: u64, matched_customers: u64) {
        if let Ok(mut s) = self.state.lock()
            && let ImportJobState::Succeeded { summary } = &mut *s
        {
            summary.new_customers = Some(new_customers);
            summary.matched_customers = Some(matched_customers);
        }
    }

    fn set(&self, state: ImportJobState) {
        if let Ok(mut s) = self.state.lock() {
            *s = state;
        }
    }
}

/// The registry of import jobs, shared by the HTTP routes and GraphQL.
pub struct ImportJobs {
    bus: Arc<dyn bus::Bus>,
    ledger: Option<ImportLedger>,
    upload_dir: PathBuf,
    jobs: Mutex<BTreeMap<String, Arc<ImportJob>>>,
    /// Largest accepted upload.
    pub max_upload_bytes: usize,
}

impl ImportJobs {
    /// Uploads are stored under `upload_dir/<job id>/`, error reports beside them.
    pub fn new(bus: Arc<dyn bus::Bus>, upload_dir: PathBuf, ledger: Option<ImportLedger>) -> Arc<ImportJobs> {
        Arc::new(ImportJobs {
            bus,
            ledger,
            upload_dir,
            jobs: Mutex::new(BTreeMap::new()),
            max_upload_bytes: 1 << 30,
        })
    }

    pub fn get(&self, id: &str) -> Option<Arc<ImportJob>> {
        self.jobs.lock().ok()?.get(id).cloned()
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<Arc<ImportJob>> {
        self.jobs
            .lock()
            .map(|j| j.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A directory for a new job's files.
    pub fn new_job_dir(&self) -> (String, PathBuf) {
        let id = ulid::Ulid::generate().to_string();
        let dir = self.upload_dir.join(&id);
        (id, dir)
    }

    /// Starts importing a file already stored in the job's directory.
    pub fn start(self: &Arc<Self>, id: String, dir: PathBuf, mut options: ImportOptions) -> Arc<ImportJob> {
        if options.ledger.is_none() {
            options.ledger = self.ledger.clone();
        }
        let job = Arc::new(ImportJob {
            id: id.clone(),
            file: options.display_name(),
            created_at_us: proto::now_us(),
            progress: RecordedProgress::default(),
            state: Mutex::new(ImportJobState::Running),
            dir,
        });
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(id, job.clone());
        }
        let registry = self.clone();
        let running = job.clone();
        tokio::spawn(async move {
            let result = super::run(&options, registry.bus.as_ref(), &running.progress).await;
            running.set(match result {
                Ok(summary) => ImportJobState::Succeeded {
                    summary: Box::new(summary),
                },
                Err(e) => ImportJobState::Failed { error: e.to_string() },
            });
        });
        job
    }
}

/// The import routes; mount beside the other `/v1` routes.
pub fn router(jobs: Arc<ImportJobs>) -> Router {
    let limit = jobs.max_upload_bytes;
    Router::new()
        .route("/v1/imports", get(list_jobs).post(create_job))
        .route("/v1/imports/{id}", get(job_status))
        .route("/v1/imports/{id}/errors", get(job_errors))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(jobs)
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": status.canonical_reason(), "message": message.into() })),
    )
        .into_response()
}

/// Keeps only a plain file name (no directories, nothing hidden).
fn safe_file_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next()?.trim();
    let base = base.trim_start_matches('.');
    (!base.is_empty()).then(|| base.to_string())
}

async fn create_job(State(jobs): State<Arc<ImportJobs>>, mut multipart: Multipart) -> Response {
    let (id, dir) = jobs.new_job_dir();
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store the upload: {e}"),
        );
    }
    let mut file: Option<PathBuf> = None;
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("the multipart body cannot be read: {e}"),
                );
            }
        };
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            let Some(file_name) = field.file_name().and_then(safe_file_name) else {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "the file part has no file name (e.g. visitors.xlsx)",
                );
            };
            let path = dir.join(&file_name);
            let mut out = match tokio::fs::File::create(&path).await {
                Ok(f) => f,
                Err(e) => {
                    return problem(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot store the upload: {e}"),
                    );
                }
            };
            loop {
                match field.chunk().await {
                    Ok(Some(bytes)) => {
                        if let Err(e) = out.write_all(&bytes).await {
                            return problem(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                format!("cannot store the upload: {e}"),
                            );
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return problem(StatusCode::BAD_REQUEST, format!("the upload was cut off: {e}")),
                }
            }
            if let Err(e) = out.flush().await {
                return problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot store the upload: {e}"),
                );
            }
            file = Some(path);
        } else {
            match field.text().await {
                Ok(text) => {
                    fields.insert(name, text);
                }
                Err(e) => return problem(StatusCode::BAD_REQUEST, format!("field {name:?} cannot be read: {e}")),
            }
        }
    }
    let Some(path) = file else {
        return problem(
            StatusCode::BAD_REQUEST,
            "no `file` part: send the spreadsheet as multipart field `file`",
        );
    };
    if let Err(e) = super::Format::of(&path) {
        return problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string());
    }
    let mut options = ImportOptions::new(&path);
    let non_empty = |k: &str| fields.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    options.template = non_empty("template");
    options.source = non_empty("source");
    options.sheet = non_empty("sheet");
    options.encoding = non_empty("encoding");
    options.delimiter = fields.get("delimiter").filter(|v| !v.is_empty()).cloned();
    if let Some(region) = non_empty("region") {
        options.default_region = region;
    }
    if let Some(mapping) = fields.get("mapping").filter(|m| !m.trim().is_empty()) {
        if let Err(e) = super::Template::from_mapping_toml(mapping, "mapping") {
            return problem(StatusCode::BAD_REQUEST, e.to_string());
        }
        let mapping_path = dir.join("mapping.toml");
        if let Err(e) = tokio::fs::write(&mapping_path, mapping).await {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot store the mapping: {e}"),
            );
        }
        options.mapping_file = Some(mapping_path);
    }
    // Fail fast on options that can never work, before a job exists.
    if let Err(e) = super::fixed_template(&options) {
        return problem(StatusCode::BAD_REQUEST, e.to_string());
    }
    let job = jobs.start(id, dir, options);
    let mut body = serde_json::to_value(job.status()).unwrap_or_default();
    body["status_url"] = serde_json::Value::String(format!("/v1/imports/{}", job.id));
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

async fn job_status(State(jobs): State<Arc<ImportJobs>>, UrlPath(id): UrlPath<String>) -> Response {
    match jobs.get(&id) {
        Some(job) => Json(job.status()).into_response(),
        None => problem(StatusCode::NOT_FOUND, format!("no import job {id:?}")),
    }
}

async fn list_jobs(State(jobs): State<Arc<ImportJobs>>) -> Response {
    let all: Vec<ImportJobStatus> = jobs.list().iter().map(|j| j.status()).collect();
    Json(all).into_response()
}

async fn job_errors(State(jobs): State<Arc<ImportJobs>>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(job) = jobs.get(&id) else {
        return problem(StatusCode::NOT_FOUND, format!("no import job {id:?}"));
    };
    let ImportJobState::Succeeded { summary } = job.state() else {
        return problem(StatusCode::CONFLICT, "the job has not finished");
    };
    let Some(path) = summary.error_report.as_ref().filter(|p| p.starts_with(&job.dir)) else {
        return problem(
            StatusCode::NOT_FOUND,
            "the import rejected no rows: there is no error report",
        );
    };
    match tokio::fs::read(path).await {
        Ok(bytes) => {
            let content_type = if super::report::is_xlsx_path(path) {
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            } else {
                "text/csv; charset=utf-8"
            };
            let ext = if super::report::is_xlsx_path(path) {
                "xlsx"
            } else {
                "csv"
            };
            let name = format!("import-{}.errors.{ext}", job.id);
            (
                [
                    (header::CONTENT_TYPE, content_type.to_string()),
                    (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the error report: {e}"),
        ),
    }
}
