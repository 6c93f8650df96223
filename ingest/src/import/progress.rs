//! Progress of an import, behind [`ImportProgress`]: a terminal progress bar
//! (indicatif: rows/s and ETA, by bytes read for CSV and by rows for
//! workbooks), nothing at all, or counters an HTTP job exposes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ImportSummary;

/// What the position of an import is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgressUnit {
    Bytes,
    Rows,
}

/// Receives progress while a file is imported. Called from the import task; must be cheap.
pub trait ImportProgress: Send + Sync {
    /// The import starts: `total` is the file size (bytes) or row count (rows) if known.
    fn begin(&self, file: &str, unit: ProgressUnit, total: Option<u64>);
    /// `rows` rows done so far; `position` in the unit of `begin`; `total` may grow (more sheets).
    fn update(&self, rows: u64, position: u64, total: Option<u64>);
    fn finish(&self, summary: &ImportSummary);
}

/// No progress reporting.
pub struct NoProgress;

impl ImportProgress for NoProgress {
    fn begin(&self, _: &str, _: ProgressUnit, _: Option<u64>) {}
    fn update(&self, _: u64, _: u64, _: Option<u64>) {}
    fn finish(&self, _: &ImportSummary) {}
}

/// A progress bar on the terminal (stderr).
pub struct TerminalProgress {
    bar: Mutex<Option<indicatif::ProgressBar>>,
    rows: AtomicU64,
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl TerminalProgress {
    pub fn new() -> Self {
        TerminalProgress {
            bar: Mutex::new(None),
            rows: AtomicU64::new(0),
        }
    }
}

impl ImportProgress for TerminalProgress {
    fn begin(&self, file: &str, unit: ProgressUnit, total: Option<u64>) {
        let bar = match total {
            Some(t) => indicatif::ProgressBar::new(t),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let position = match unit {
            ProgressUnit::Bytes => "{bytes}/{total_bytes}",
            ProgressUnit::Rows => "{pos}/{len} rows",
        };
        let template = format!("{{msg}} [{{elapsed_precise}}] {{wide_bar}} {position} ETA {{eta}}");
        if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        bar.set_message(format!("{file}: 0 rows"));
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }

    fn update(&self, rows: u64, position: u64, total: Option<u64>) {
        let Ok(slot) = self.bar.lock() else { return };
        let Some(bar) = slot.as_ref() else { return };
        if let Some(t) = total
            && bar.length() != Some(t)
        {
            bar.set_length(t);
        }
        bar.set_position(position);
        let elapsed = bar.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 { rows as f64 / elapsed } else { 0.0 };
        self.rows.store(rows, Ordering::Relaxed);
        bar.set_message(format!("{rows} rows, {rate:.0} rows/s"));
    }

    fn finish(&self, _: &ImportSummary) {
        if let Ok(mut slot) = self.bar.lock()
            && let Some(bar) = slot.take()
        {
            bar.finish_and_clear();
        }
    }
}

/// Progress kept as numbers, for a job whose status is asked over HTTP/GraphQL.
#[derive(Debug, Default)]
pub struct RecordedProgress {
    pub rows: AtomicU64,
    pub position: AtomicU64,
    pub total: AtomicU64,
    pub unit_is_bytes: std::sync::atomic::AtomicBool,
}

/// A snapshot of [`RecordedProgress`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ProgressSnapshot {
    pub rows: u64,
    pub position: u64,
    /// 0 when unknown.
    pub total: u64,
    pub unit: ProgressUnit,
    /// 0.0 – 1.0 when the total is known.
    pub fraction: Option<f64>,
}

impl RecordedProgress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        let position = self.position.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        ProgressSnapshot {
            rows: self.rows.load(Ordering::Relaxed),
            position,
            total,
            unit: if self.unit_is_bytes.load(Ordering::Relaxed) {
                ProgressUnit::Bytes
            } else {
                ProgressUnit::Rows
            },
            fraction: (total > 0).then(|| (position as f64 / total as f64).min(1.0)),
        }
    }
}

impl ImportProgress for RecordedProgress {
    fn begin(&self, _: &str, unit: ProgressUnit, total: Option<u64>) {
        self.unit_is_bytes.store(unit == ProgressUnit::Bytes, Ordering::Relaxed);
        self.total.store(total.unwrap_or(0), Ordering::Relaxed);
    }
    fn update(&self, rows: u64, position: u64, total: Option<u64>) {
        self.rows.store(rows, Ordering::Relaxed);
        self.position.store(position, Ordering::Relaxed);
        if let Some(t) = total {
            self.total.store(t, Ordering::Relaxed);
        }
    }
    fn finish(&self, summary: &ImportSummary) {
        self.rows.store(summary.rows_read, Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        if total > 0 {
            self.position.store(total, Ordering::Relaxed);
        }
    }
}
