//! Spreadsheet and marketplace imports: a CSV/XLSX/XLS file → one
//! `ChannelEventV1 { event_type: "import_row" }` per row on the bus.
//!
//! The pipeline ([`run`]): hash the file (event ids are file hash + sheet +
//! row, so re-importing adds nothing and an interrupted import is simply run
//! again) → read it streaming on a blocking thread ([`sheet`], [`decode`]) →
//! find the header row and the template ([`template`]) → repair Excel damage
//! ([`repair`]) and read each row into an event or a rejection ([`row`]) →
//! publish with a bounded window of in-flight publishes, write rejected rows
//! to an error report in the input's shape ([`report`]) and record published
//! rows in the [`ledger`]. Progress goes to an [`ImportProgress`]. The CLI
//! arguments ([`args`]), the HTTP jobs ([`jobs`]) and the test-data
//! [`generate`]or are here too. Identity (new vs matched customers) is not
//! decided here: the domain does that from the events.

pub mod args;
pub mod decode;
pub mod generate;
pub mod jobs;
pub mod ledger;
pub mod progress;
pub mod repair;
pub mod report;
pub mod row;
pub mod sheet;
pub mod template;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use chrono::FixedOffset;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

pub use args::ImportArgs;
pub use generate::{GeneratedFile, generate};
pub use jobs::{ImportJob, ImportJobState, ImportJobs, router};
pub use ledger::{ImportLedger, RowSet};
pub use progress::{ImportProgress, NoProgress, ProgressUnit, RecordedProgress, TerminalProgress};
pub use row::CellError;
pub use sheet::Format;
pub use template::{Field, Template};

use repair::Cell;
use row::{RowContext, SheetPlan};

/// Why an import could not run (a bad row never ends up here: it is rejected and reported).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    // The reason is in the message, not a `source()` as well: printed as a chain it would
    // show twice, and a job's status keeps only the message.
    #[error("cannot open {path}: {reason}; check the path and that it can be read")]
    Open { path: PathBuf, reason: std::io::Error },
    #[error("cannot tell the format of {path}: name it .csv/.tsv/.txt (text), .xlsx/.xlsm, .xls, .xlsb or .ods")]
    UnknownFormat { path: PathBuf },
    #[error("unknown template {name:?}: use one of {known}, or --mapping FILE.toml")]
    UnknownTemplate { name: String, known: String },
    #[error("mapping file {path}: {message}")]
    Mapping { path: String, message: String },
    #[error(
        "unknown encoding {0:?}: use utf-8, gb18030 (also reads GBK), big5, utf-16le, ... or leave it out to detect"
    )]
    UnknownEncoding(String),
    #[error("delimiter {0:?} is not a single ASCII character: use ',', ';', '|' or 'tab'")]
    BadDelimiter(String),
    #[error("region {0:?} is not an ISO 3166 region code such as CN or US")]
    BadRegion(String),
    #[error("UTC offset of {0} minutes is out of range")]
    BadOffset(i32),
    #[error("{path}: sheet {sheet:?} does not exist; the workbook has {available:?}")]
    NoSuchSheet {
        path: PathBuf,
        sheet: String,
        available: Vec<String>,
    },
    #[error(
        "{path}: no header row found in the first {HEADER_SEARCH_ROWS} rows of any sheet ({expected}); \
         put the column names in one row, or pick the right --template or a --mapping file"
    )]
    NoHeader { path: PathBuf, expected: String },
    #[error("{path}, sheet {sheet}, row {row}: cannot read the file: {message}")]
    Read {
        path: PathBuf,
        sheet: String,
        row: u32,
        message: String,
    },
    #[error("{path}, sheet {sheet:?}: the workbook cannot be read: {message}; open it in Excel and save it again")]
    Spreadsheet {
        path: PathBuf,
        sheet: String,
        message: String,
    },
    #[error("cannot write {path}: {message}")]
    Report { path: PathBuf, message: String },
    #[error("import ledger: {0}")]
    Ledger(String),
    #[error(
        "the bus refused a row after {published} rows were published: {reason}; nothing is lost, \
         run the same import again to resume"
    )]
    Bus { published: u64, reason: bus::BusError },
    #[error("import stopped: {0}")]
    Stopped(String),
}

/// How many non-blank rows at the top of a sheet are searched for the header row (title rows above it are skipped).
pub const HEADER_SEARCH_ROWS: usize = 10;

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub path: PathBuf,
    /// Built-in template name; `None` with no mapping file: detected per sheet from its headers.
    pub template: Option<String>,
    /// A TOML mapping file (column header → field); wins over `template`.
    pub mapping_file: Option<PathBuf>,
    /// Import source label (`channel_instance`), e.g. "2026上海展会"; default: the file name.
    pub source: Option<String>,
    /// Only this sheet of a workbook; default: every sheet.
    pub sheet: Option<String>,
    /// Text encoding label of a CSV; default: BOM or detection.
    pub encoding: Option<String>,
    /// CSV delimiter (`,` `;` `|` `tab`); default: sniffed.
    pub delimiter: Option<String>,
    /// Where rejected rows go; default `<stem>.errors.csv` (`.xlsx` for workbooks) beside the input.
    pub error_report: Option<PathBuf>,
    /// Region of phone numbers written without a country code.
    pub default_region: String,
    /// UTC offset of times written in the sheet, in minutes (480 = China).
    pub utc_offset_minutes: i32,
    /// Record of already published rows; without it a re-run republishes (harmlessly: same event ids).
    pub ledger: Option<ImportLedger>,
    /// Publishes in flight at once (1024: the embedded bus group-commits; 256 measured 1.7x slower).
    pub publish_window: usize,
    /// Name shown and recorded for the file when `path` is a temporary copy (HTTP upload).
    pub display_name: Option<String>,
}

impl ImportOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ImportOptions {
            path: path.into(),
            template: None,
            mapping_file: None,
            source: None,
            sheet: None,
            encoding: None,
            delimiter: None,
            error_report: None,
            default_region: "CN".into(),
            utc_offset_minutes: 8 * 60,
            ledger: None,
            publish_window: 1024,
            display_name: None,
        }
    }

    fn display_name(&self) -> String {
        self.display_name.clone().unwrap_or_else(|| {
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.path.display().to_string())
        })
    }
}

/// One rejected row, as shown in summaries (the full list is the error report).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowRejection {
    pub sheet: String,
    pub row: u32,
    pub errors: Vec<CellError>,
}

/// How many rejections a summary lists (the error report has them all).
pub const REJECTIONS_LISTED: usize = 100;

/// What an import did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportSummary {
    pub file: String,
    pub file_sha256: String,
    pub format: Format,
    /// Template(s) used, per sheet when detected.
    pub templates: Vec<String>,
    pub source: String,
    /// Sheets imported (a CSV has one, named `csv`).
    pub sheets: Vec<String>,
    pub encoding: Option<String>,
    pub delimiter: Option<String>,
    /// Data rows read (below the header row, blank rows not counted).
    pub rows_read: u64,
    /// Rows published by this run.
    pub accepted: u64,
    /// Rows a previous run of the same file already published (nothing published again).
    pub already_imported: u64,
    pub rejected: u64,
    /// Cells repaired from Excel damage (phones from numbers, date serials, full-width text).
    pub repaired_cells: u64,
    pub error_report: Option<PathBuf>,
    /// The first [`REJECTIONS_LISTED`] rejections.
    pub rejections: Vec<RowRejection>,
    /// The events this run published (accepted rows), to count new vs matched customers
    /// once the domain has processed them.
    #[serde(skip)]
    pub published: Vec<PublishedEvent>,
    /// Customers created by these rows; filled in by the caller from the domain.
    pub new_customers: Option<u64>,
    /// Rows matched to customers that existed before; filled in by the caller from the domain.
    pub matched_customers: Option<u64>,
    #[serde(serialize_with = "millis")]
    pub elapsed: Duration,
    pub warnings: Vec<String>,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl ImportSummary {
    /// Rows per second over the whole run.
    pub fn rows_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.rows_read as f64 / secs } else { 0.0 }
    }
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "imported {} (template {}, source {}) in {:.1} s, {:.0} rows/s",
            self.file,
            if self.templates.is_empty() {
                "-".into()
            } else {
                self.templates.join(", ")
            },
            self.source,
            self.elapsed.as_secs_f64(),
            self.rows_per_second()
        )?;
        writeln!(f, "  rows read           {}", self.rows_read)?;
        writeln!(f, "  accepted            {}", self.accepted)?;
        writeln!(f, "  already imported    {}", self.already_imported)?;
        match &self.error_report {
            Some(p) => writeln!(
                f,
                "  rejected            {}  (error report: {})",
                self.rejected,
                p.display()
            )?,
            None => writeln!(f, "  rejected            {}", self.rejected)?,
        }
        let figure = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "(not computed)".into());
        writeln!(f, "  new customers       {}", figure(self.new_customers))?;
        writeln!(f, "  matched existing    {}", figure(self.matched_customers))?;
        write!(f, "  repaired cells      {}", self.repaired_cells)?;
        for w in &self.warnings {
            write!(f, "\n  warning: {w}")?;
        }
        Ok(())
    }
}

/// The SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String, ImportError> {
    use sha2::Digest;
    let err = |reason| ImportError::Open {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize().as_slice()))
}

/// Parses a delimiter option: one ASCII character, or `tab`.
pub fn parse_delimiter(text: &str) -> Result<u8, ImportError> {
    match text {
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        t if t.len() == 1 && t.is_ascii() => Ok(t.as_bytes()[0]),
        t => Err(ImportError::BadDelimiter(t.to_string())),
    }
}

/// The template fixed by the options (mapping file or name), or `None` to detect per sheet.
pub fn fixed_template(options: &ImportOptions) -> Result<Option<Template>, ImportError> {
    if let Some(path) = &options.mapping_file {
        return Template::from_mapping_file(path).map(Some);
    }
    match &options.template {
        None => Ok(None),
        Some(name) => template::builtin(name)
            .map(Some)
            .ok_or_else(|| ImportError::UnknownTemplate {
                name: name.clone(),
                known: template::builtin_names().join(", "),
            }),
    }
}

// ---------------------------------------------------------------------------------------------
// Reader side (blocking thread): rows → prepared records and rejections.

/// An event an import published: its id and its `recorded_at_us` (when its row was read),
/// which together name the customer the row would create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedEvent {
    pub event_id: uuid::Uuid,
    pub recorded_at_us: i64,
}

enum Item {
    Sheet {
        name: String,
        headers: Vec<String>,
        published: RowSet,
    },
    Accepted {
        row: u32,
        event: PublishedEvent,
        record: bus::BusRecord,
        repaired: u32,
    },
    /// A row an earlier run of the same file already published.
    Already,
    Rejected {
        row: u32,
        cells: Vec<String>,
        errors: Vec<CellError>,
    },
}

struct Batch {
    items: Vec<Item>,
    rows: u64,
    position: u64,
    total: Option<u64>,
}

const BATCH: usize = 512;

struct SheetState {
    name: String,
    template: Option<Template>,
    plan: Option<SheetPlan>,
    searched: usize,
    skipped: bool,
    published: RowSet,
}

struct ReaderSide {
    path: PathBuf,
    fixed: Option<Template>,
    ledger: Option<ImportLedger>,
    sha: String,
    file_name: String,
    source: String,
    region: phonenumber::country::Id,
    offset: FixedOffset,
    tx: tokio::sync::mpsc::Sender<Batch>,
    batch: Vec<Item>,
    rows: u64,
    total: Option<u64>,
    sheet: Option<SheetState>,
    warnings: Vec<String>,
    sheets_imported: Vec<String>,
    templates: Vec<String>,
}

struct ReaderOutcome {
    warnings: Vec<String>,
    sheets: Vec<String>,
    templates: Vec<String>,
    csv: Option<sheet::CsvInfo>,
}

impl ReaderSide {
    fn send(&mut self, position: u64) -> Result<(), ImportError> {
        let items = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.tx
            .blocking_send(Batch {
                items,
                rows: self.rows,
                position,
                total: self.total,
            })
            .map_err(|_| ImportError::Stopped("the publishing side stopped".into()))
    }

    fn find_header(&mut self, cells: &[Cell]) -> Result<(), ImportError> {
        let Some(state) = self.sheet.as_mut() else {
            return Ok(());
        };
        state.searched += 1;
        let headers: Vec<String> = cells.iter().map(|c| c.text().trim().to_string()).collect();
        let template = match &self.fixed {
            Some(t) => {
                let needed = t.columns.len().min(2);
                (t.score(&headers) >= needed).then(|| t.clone())
            }
            None => template::detect(&headers),
        };
        match template {
            Some(t) => {
                let plan = SheetPlan::new(&t, cells);
                let published = match &self.ledger {
                    Some(l) => l.published(&self.sha, &state.name)?,
                    None => RowSet::default(),
                };
                state.published = published.clone();
                self.sheets_imported.push(state.name.clone());
                if !self.templates.contains(&t.name) {
                    self.templates.push(t.name.clone());
                }
                self.batch.push(Item::Sheet {
                    name: state.name.clone(),
                    headers: plan.headers.clone(),
                    published,
                });
                state.plan = Some(plan);
                state.template = Some(t);
            }
            None if state.searched >= HEADER_SEARCH_ROWS => {
                state.skipped = true;
                self.warnings.push(format!(
                    "sheet {:?} skipped: no header row in its first {HEADER_SEARCH_ROWS} rows matches {}",
                    state.name,
                    self.fixed
                        .as_ref()
                        .map_or("any built-in template".to_string(), |t| format!("template {}", t.name))
                ));
            }
            None => {}
        }
        Ok(())
    }
}

impl sheet::RowSink for ReaderSide {
    fn sheet(&mut self, name: &str, rows_hint: Option<u64>) -> Result<bool, ImportError> {
        if let Some(hint) = rows_hint {
            self.total = Some(self.total.unwrap_or(0) + hint);
        }
        self.sheet = Some(SheetState {
            name: name.to_string(),
            template: None,
            plan: None,
            searched: 0,
            skipped: false,
            published: RowSet::default(),
        });
        Ok(true)
    }

    fn row(&mut self, row: u32, cells: Vec<Cell>, position: u64) -> Result<(), ImportError> {
        let Some(state) = self.sheet.as_ref() else {
            return Ok(());
        };
        if state.skipped || cells.iter().all(Cell::is_blank) {
            return Ok(());
        }
        let (Some(plan), Some(template)) = (&state.plan, &state.template) else {
            return self.find_header(&cells);
        };
        self.rows += 1;
        let event_id = row::event_id(&self.sha, &state.name, row);
        let item = if state.published.contains(row) {
            Item::Already
        } else {
            // Each row is stamped when it is read (not once per run): the customers it
            // creates get ids ordered like the file (UUIDv7 of this time), so the store and
            // the views insert their keys in a few hot pages instead of all over the tree.
            let recorded_at_us = proto::now_us();
            let ctx = RowContext {
                template,
                plan,
                region: self.region,
                offset: self.offset,
                source: &self.source,
                file_sha256: &self.sha,
                file_name: &self.file_name,
                sheet: &state.name,
                recorded_at_us,
            };
            match row::build(&ctx, row, event_id, &cells) {
                Ok(built) => {
                    let mut headers = BTreeMap::new();
                    headers.insert(bus::HEADER_EVENT_ID.to_string(), built.event.event_id().to_string());
                    headers.insert(bus::HEADER_SCHEMA.to_string(), built.event.schema().to_string());
                    headers.insert(bus::HEADER_SCHEMA_VERSION.to_string(), "1".to_string());
                    Item::Accepted {
                        row,
                        event: PublishedEvent {
                            event_id: built.event_id,
                            recorded_at_us,
                        },
                        record: bus::BusRecord {
                            key: built.event.bus_key(),
                            headers,
                            payload: built.event.encode(),
                        },
                        repaired: built.repaired,
                    }
                }
                Err(errors) => Item::Rejected {
                    row,
                    cells: (0..plan.headers.len())
                        .map(|i| cells.get(i).map(|c| c.text().into_owned()).unwrap_or_default())
                        .collect(),
                    errors,
                },
            }
        };
        self.batch.push(item);
        if self.batch.len() >= BATCH {
            self.send(position)?;
        }
        Ok(())
    }

    fn end_sheet(&mut self) -> Result<(), ImportError> {
        if let Some(state) = self.sheet.take()
            && state.plan.is_none()
            && !state.skipped
            && state.searched > 0
        {
            self.warnings.push(format!(
                "sheet {:?} skipped: none of its {} rows is a header row of {}",
                state.name,
                state.searched,
                self.fixed
                    .as_ref()
                    .map_or("any built-in template".to_string(), |t| format!("template {}", t.name))
            ));
        }
        Ok(())
    }
}

fn read_file(
    mut side: ReaderSide,
    format: Format,
    sheet_name: Option<String>,
    encoding: Option<&'static encoding_rs::Encoding>,
    delimiter: Option<u8>,
    tld_cn: bool,
) -> Result<ReaderOutcome, ImportError> {
    let path = side.path.clone();
    let csv = match format {
        Format::Csv => Some(sheet::read_csv(&path, encoding, delimiter, tld_cn, &mut side)?),
        Format::Xlsx => {
            sheet::read_xlsx(&path, sheet_name.as_deref(), &mut side)?;
            None
        }
        Format::Spreadsheet => {
            sheet::read_spreadsheet(&path, sheet_name.as_deref(), &mut side)?;
            None
        }
    };
    if !side.batch.is_empty() {
        let position = side.total.unwrap_or(side.rows);
        side.send(if format == Format::Csv { u64::MAX } else { position })?;
    }
    if side.sheets_imported.is_empty() {
        return Err(ImportError::NoHeader {
            path,
            expected: side.fixed.as_ref().map_or_else(
                || "columns of a built-in template, e.g. 客户名称, 联系方式, 邮箱".to_string(),
                |t| format!("template {}: {}", t.name, t.printed_headers().join(", ")),
            ),
        });
    }
    Ok(ReaderOutcome {
        warnings: side.warnings,
        sheets: side.sheets_imported,
        templates: side.templates,
        csv,
    })
}

// ---------------------------------------------------------------------------------------------
// Publishing side (async): records → bus, rejections → report, acks → ledger.

type Publish<'a> =
    Pin<Box<dyn Future<Output = (usize, u32, PublishedEvent, Result<bus::Ack, bus::BusError>)> + Send + 'a>>;

/// Acks between two ledger checkpoints.
const CHECKPOINT_EVERY: u64 = 100_000;

struct Publisher<'a> {
    bus: &'a dyn bus::Bus,
    options: &'a ImportOptions,
    sha: &'a str,
    report_path: PathBuf,
    report: Option<report::ErrorReport>,
    report_sheet: Option<usize>,
    sheets: Vec<(String, Vec<String>)>,
    published: Vec<RowSet>,
    in_flight: FuturesUnordered<Publish<'a>>,
    since_checkpoint: u64,
    failure: Option<bus::BusError>,
    summary: ImportSummary,
}

impl<'a> Publisher<'a> {
    fn on_ack(&mut self, (sheet, row, event, result): (usize, u32, PublishedEvent, Result<bus::Ack, bus::BusError>)) {
        match result {
            Ok(_) => {
                if let Some(set) = self.published.get_mut(sheet) {
                    set.insert(row);
                }
                self.summary.accepted += 1;
                self.summary.published.push(event);
                self.since_checkpoint += 1;
            }
            Err(e) => {
                if self.failure.is_none() {
                    self.failure = Some(e);
                }
            }
        }
    }

    fn checkpoint(&mut self) -> Result<(), ImportError> {
        self.since_checkpoint = 0;
        let Some(ledger) = &self.options.ledger else {
            return Ok(());
        };
        for ((name, _), rows) in self.sheets.iter().zip(&self.published) {
            ledger.record(self.sha, name, rows)?;
        }
        ledger.flush()
    }

    async fn handle(&mut self, item: Item) -> Result<(), ImportError> {
        let sheet = self.sheets.len().saturating_sub(1);
        match item {
            Item::Sheet {
                name,
                headers,
                published,
            } => {
                self.summary.sheets.push(name.clone());
                self.sheets.push((name, headers));
                self.published.push(published);
            }
            Item::Accepted {
                row,
                event,
                record,
                repaired,
            } => {
                self.summary.repaired_cells += u64::from(repaired);
                while self.in_flight.len() >= self.options.publish_window.max(1) {
                    if let Some(done) = self.in_flight.next().await {
                        self.on_ack(done);
                    }
                }
                let bus = self.bus;
                self.in_flight
                    .push(Box::pin(async move { (sheet, row, event, bus.publish(record).await) }));
                if self.since_checkpoint >= CHECKPOINT_EVERY {
                    self.checkpoint()?;
                }
            }
            Item::Already => {
                // Counted, not listed: new/matched customers are figures of this run's rows.
                self.summary.already_imported += 1;
            }
            Item::Rejected { row, cells, errors } => {
                self.summary.rejected += 1;
                let report = match &mut self.report {
                    Some(r) => r,
                    None => self.report.insert(report::ErrorReport::create(&self.report_path)?),
                };
                if self.report_sheet != Some(sheet) {
                    let (name, headers) = self.sheets.get(sheet).cloned().unwrap_or_default();
                    report.sheet(&name, &headers)?;
                    self.report_sheet = Some(sheet);
                }
                report.row(&cells, row, &errors)?;
                if self.summary.rejections.len() < REJECTIONS_LISTED {
                    self.summary.rejections.push(RowRejection {
                        sheet: self.sheets.get(sheet).map(|s| s.0.clone()).unwrap_or_default(),
                        row,
                        errors,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Imports a file: every row becomes an `import_row` event on `bus`, or a line of the error report.
pub async fn run(
    options: &ImportOptions,
    bus: &dyn bus::Bus,
    progress: &dyn ImportProgress,
) -> Result<ImportSummary, ImportError> {
    let started = Instant::now();
    let format = Format::of(&options.path)?;
    let region = proto::normalize::region(&options.default_region)
        .ok_or_else(|| ImportError::BadRegion(options.default_region.clone()))?;
    let offset = FixedOffset::east_opt(options.utc_offset_minutes.saturating_mul(60))
        .ok_or(ImportError::BadOffset(options.utc_offset_minutes))?;
    let encoding = match &options.encoding {
        Some(label) => {
            Some(decode::encoding_for_label(label).ok_or_else(|| ImportError::UnknownEncoding(label.clone()))?)
        }
        None => None,
    };
    let delimiter = options.delimiter.as_deref().map(parse_delimiter).transpose()?;
    let fixed = fixed_template(options)?;
    let file_name = options.display_name();
    let source = options
        .source
        .clone()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| file_name.clone());
    let size = std::fs::metadata(&options.path)
        .map_err(|reason| ImportError::Open {
            path: options.path.clone(),
            reason,
        })?
        .len();
    let path = options.path.clone();
    let sha = tokio::task::spawn_blocking(move || file_sha256(&path))
        .await
        .map_err(|e| ImportError::Stopped(e.to_string()))??;

    let (unit, total) = match format {
        Format::Csv => (ProgressUnit::Bytes, Some(size)),
        _ => (ProgressUnit::Rows, None),
    };
    progress.begin(&file_name, unit, total);

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(16);
    let side = ReaderSide {
        path: options.path.clone(),
        fixed,
        ledger: options.ledger.clone(),
        sha: sha.clone(),
        file_name: file_name.clone(),
        source: source.clone(),
        region,
        offset,
        tx,
        batch: Vec::with_capacity(BATCH),
        rows: 0,
        total: None,
        sheet: None,
        warnings: Vec::new(),
        sheets_imported: Vec::new(),
        templates: Vec::new(),
    };
    let sheet_name = options.sheet.clone();
    let tld_cn = options.default_region.eq_ignore_ascii_case("CN");
    let reader = tokio::task::spawn_blocking(move || read_file(side, format, sheet_name, encoding, delimiter, tld_cn));

    let mut publisher = Publisher {
        bus,
        options,
        sha: &sha,
        report_path: options
            .error_report
            .clone()
            .unwrap_or_else(|| sheet::default_report_path(&options.path, format)),
        report: None,
        report_sheet: None,
        sheets: Vec::new(),
        published: Vec::new(),
        in_flight: FuturesUnordered::new(),
        since_checkpoint: 0,
        failure: None,
        summary: ImportSummary {
            file: file_name.clone(),
            file_sha256: sha.clone(),
            format,
            templates: Vec::new(),
            source,
            sheets: Vec::new(),
            encoding: None,
            delimiter: None,
            rows_read: 0,
            accepted: 0,
            already_imported: 0,
            rejected: 0,
            repaired_cells: 0,
            error_report: None,
            rejections: Vec::new(),
            published: Vec::new(),
            new_customers: None,
            matched_customers: None,
            elapsed: Duration::ZERO,
            warnings: Vec::new(),
        },
    };

    let mut local_error = None;
    'batches: while let Some(batch) = rx.recv().await {
        for item in batch.items {
            if let Err(e) = publisher.handle(item).await {
                local_error = Some(e);
                break 'batches;
            }
            if publisher.failure.is_some() {
                break 'batches;
            }
        }
        publisher.summary.rows_read = batch.rows;
        let position = match (unit, batch.position) {
            (ProgressUnit::Bytes, u64::MAX) => size,
            (_, p) => p,
        };
        progress.update(batch.rows, position, batch.total.or(total));
    }
    // Stop the reader if we stopped early, then let every in-flight publish finish.
    drop(rx);
    while let Some(done) = publisher.in_flight.next().await {
        publisher.on_ack(done);
    }
    publisher.checkpoint()?;
    let outcome = reader.await.map_err(|e| ImportError::Stopped(e.to_string()))?;
    if let Some(e) = local_error {
        return Err(e);
    }
    if let Some(reason) = publisher.failure.take() {
        return Err(ImportError::Bus {
            published: publisher.summary.accepted,
            reason,
        });
    }
    let outcome = outcome?;
    let mut summary = publisher.summary;
    if let Some(report) = publisher.report.take() {
        let (path, _) = report.finish()?;
        summary.error_report = Some(path);
    }
    summary.rows_read = summary.accepted + summary.already_imported + summary.rejected;
    summary.templates = outcome.templates;
    summary.sheets = outcome.sheets;
    summary.warnings = outcome.warnings;
    if let Some(csv) = outcome.csv {
        summary.encoding = Some(format!(
            "{} ({})",
            decode::encoding_name(csv.encoding),
            csv.encoding_how
        ));
        summary.delimiter = Some(if csv.delimiter == b'\t' {
            "tab".into()
        } else {
            char::from(csv.delimiter).to_string()
        });
        if csv.had_replacements {
            summary.warnings.push(format!(
                "some bytes are not valid {}: they were replaced by U+FFFD; if names look garbled, \
                 import again with --encoding (e.g. gb18030 or utf-8)",
                decode::encoding_name(csv.encoding)
            ));
        }
    }
    summary.elapsed = started.elapsed();
    progress.finish(&summary);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason is said once: in the message (a job's status keeps only that), not again
    /// as a `source()` that a printed error chain would repeat.
    #[test]
    fn a_file_that_cannot_be_opened_says_why_once() {
        let err = file_sha256(Path::new("/nonexistent/visitors.csv")).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("cannot open /nonexistent/visitors.csv: ")
                && message.ends_with("; check the path and that it can be read"),
            "{message}"
        );
        assert!(std::error::Error::source(&err).is_none(), "{message}");
    }
}
