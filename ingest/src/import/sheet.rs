//! Reading files into rows of [`Cell`]s, one sheet after another, pushed into a
//! [`RowSink`]: CSV (streaming through [`DecodingReader`]), XLSX (calamine's
//! streaming cell reader) and XLS/XLSB/ODS (calamine, one sheet at a time).
//! What the rows mean is decided by the sink, not here.

use std::fs::File;
use std::io::{BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use calamine::{Data, DataRef, Reader};
use encoding_rs::Encoding;

use super::ImportError;
use super::decode::{self, DecodingReader, SNIFF_BYTES};
use super::repair::Cell;

/// The kinds of file we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Xlsx,
    /// XLS, XLSB, ODS: read a sheet at a time.
    Spreadsheet,
}

impl Format {
    /// The format of a file by its extension.
    pub fn of(path: &Path) -> Result<Format, ImportError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "csv" | "txt" | "tsv" | "tab" => Ok(Format::Csv),
            "xlsx" | "xlsm" => Ok(Format::Xlsx),
            "xls" | "xlsb" | "ods" => Ok(Format::Spreadsheet),
            _ => Err(ImportError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// Receives the rows of a file.
pub trait RowSink {
    /// A new sheet starts; `rows_hint` is its row count if the file says. `false` skips it.
    fn sheet(&mut self, name: &str, rows_hint: Option<u64>) -> Result<bool, ImportError>;
    /// One row; `row` is its number as a spreadsheet shows it (the first row is 1).
    fn row(&mut self, row: u32, cells: Vec<Cell>, position: u64) -> Result<(), ImportError>;
    fn end_sheet(&mut self) -> Result<(), ImportError>;
}

/// How a CSV file was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvInfo {
    pub encoding: &'static Encoding,
    pub encoding_how: &'static str,
    pub delimiter: u8,
    /// Bytes not valid in the encoding were replaced (U+FFFD): probably the wrong encoding.
    pub had_replacements: bool,
}

/// Sheet name of a CSV file in event ids and error reports.
pub const CSV_SHEET: &str = "csv";

struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reads a CSV file, streaming.
pub fn read_csv(
    path: &Path,
    encoding: Option<&'static Encoding>,
    delimiter: Option<u8>,
    tld_cn: bool,
    sink: &mut dyn RowSink,
) -> Result<CsvInfo, ImportError> {
    let open_err = |reason| ImportError::Open {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let mut head = Vec::with_capacity(64 * 1024);
    (&mut file)
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(open_err)?;
    let complete = head.len() < SNIFF_BYTES;
    let detected = decode::detect(&head, complete, encoding, tld_cn);
    let delimiter = match delimiter {
        Some(d) => d,
        None => {
            let (text, _, _) = detected.encoding.decode(&head[..head.len().min(64 * 1024)]);
            decode::sniff_delimiter(&text)
        }
    };
    let count = Arc::new(AtomicU64::new(0));
    let raw = Counting {
        inner: Cursor::new(head).chain(file),
        count: count.clone(),
    };
    let decoding = DecodingReader::new(BufReader::with_capacity(256 * 1024, raw), detected.encoding);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .buffer_capacity(256 * 1024)
        .from_reader(decoding);
    if !sink.sheet(CSV_SHEET, None)? {
        return Err(ImportError::NoSuchSheet {
            path: path.to_path_buf(),
            sheet: CSV_SHEET.into(),
            available: vec![CSV_SHEET.into()],
        });
    }
    let mut record = csv::StringRecord::new();
    let mut row: u32 = 0;
    loop {
        let more = reader.read_record(&mut record).map_err(|e| ImportError::Read {
            path: path.to_path_buf(),
            sheet: CSV_SHEET.into(),
            row: row + 1,
            message: e.to_string(),
        })?;
        if !more {
            break;
        }
        row += 1;
        let cells = record
            .iter()
            .map(|f| {
                if f.is_empty() {
                    Cell::Empty
                } else {
                    Cell::Text(f.to_string())
                }
            })
            .collect();
        sink.row(row, cells, count.load(Ordering::Relaxed))?;
    }
    sink.end_sheet()?;
    let had_replacements = reader.get_ref().had_replacements;
    Ok(CsvInfo {
        encoding: detected.encoding,
        encoding_how: detected.how,
        delimiter,
        had_replacements,
    })
}

fn cell_of_ref(value: &DataRef<'_>) -> Cell {
    match value {
        DataRef::Empty => Cell::Empty,
        DataRef::Int(i) => Cell::Number(*i as f64),
        DataRef::Float(f) => Cell::Number(*f),
        DataRef::String(s) => Cell::Text(s.clone()),
        DataRef::SharedString(s) => Cell::Text((*s).to_string()),
        DataRef::Bool(b) => Cell::Bool(*b),
        DataRef::DateTime(dt) => date_cell(dt),
        DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => Cell::Text(s.clone()),
        DataRef::Error(e) => Cell::Error(e.to_string()),
    }
}

fn cell_of(value: &Data) -> Cell {
    match value {
        Data::Empty => Cell::Empty,
        Data::Int(i) => Cell::Number(*i as f64),
        Data::Float(f) => Cell::Number(*f),
        Data::String(s) => Cell::Text(s.clone()),
        Data::Bool(b) => Cell::Bool(*b),
        Data::DateTime(dt) => date_cell(dt),
        Data::DateTimeIso(s) | Data::DurationIso(s) => Cell::Text(s.clone()),
        Data::Error(e) => Cell::Error(e.to_string()),
    }
}

fn date_cell(dt: &calamine::ExcelDateTime) -> Cell {
    if dt.is_datetime() {
        let (y, mo, d, h, mi, s, _) = dt.to_ymd_hms_milli();
        Cell::Date(y, mo, d, h, mi, s)
    } else {
        Cell::Text(dt.to_string())
    }
}

fn spreadsheet_err(path: &Path, sheet: &str, e: impl std::fmt::Display) -> ImportError {
    ImportError::Spreadsheet {
        path: path.to_path_buf(),
        sheet: sheet.to_string(),
        message: e.to_string(),
    }
}

fn selected_sheets(path: &Path, names: Vec<String>, wanted: Option<&str>) -> Result<Vec<String>, ImportError> {
    match wanted {
        None => Ok(names),
        Some(w) => match names.iter().find(|n| n.as_str() == w || n.trim() == w.trim()) {
            Some(n) => Ok(vec![n.clone()]),
            None => Err(ImportError::NoSuchSheet {
                path: path.to_path_buf(),
                sheet: w.to_string(),
                available: names,
            }),
        },
    }
}

/// Rows are pushed as they are completed; `row_cells` is reused between rows.
struct RowAssembler {
    current: Option<u32>,
    cells: Vec<Cell>,
    done: u64,
}

impl RowAssembler {
    fn new() -> Self {
        RowAssembler {
            current: None,
            cells: Vec::new(),
            done: 0,
        }
    }

    fn push(&mut self, (row, col): (u32, u32), cell: Cell, sink: &mut dyn RowSink) -> Result<(), ImportError> {
        if self.current != Some(row) {
            self.flush(sink)?;
            self.current = Some(row);
        }
        let col = col as usize;
        if col >= 16_384 {
            return Ok(());
        }
        if self.cells.len() <= col {
            self.cells.resize(col + 1, Cell::Empty);
        }
        self.cells[col] = cell;
        Ok(())
    }

    fn flush(&mut self, sink: &mut dyn RowSink) -> Result<(), ImportError> {
        if let Some(row) = self.current.take() {
            self.done += 1;
            sink.row(row + 1, std::mem::take(&mut self.cells), self.done)?;
        }
        Ok(())
    }
}

/// Reads an XLSX workbook with calamine's streaming cell reader; every sheet, or `wanted`.
pub fn read_xlsx(path: &Path, wanted: Option<&str>, sink: &mut dyn RowSink) -> Result<Vec<String>, ImportError> {
    let mut book: calamine::Xlsx<BufReader<File>> =
        calamine::open_workbook(path).map_err(|e| spreadsheet_err(path, "", e))?;
    let names = selected_sheets(path, book.sheet_names(), wanted)?;
    for name in &names {
        let mut cells = book
            .worksheet_cells_reader(name)
            .map_err(|e| spreadsheet_err(path, name, e))?;
        let dims = cells.dimensions();
        let hint = u64::from(dims.end.0.saturating_sub(dims.start.0)) + 1;
        if !sink.sheet(name, Some(hint))? {
            continue;
        }
        let mut rows = RowAssembler::new();
        while let Some(cell) = cells.next_cell().map_err(|e| spreadsheet_err(path, name, e))? {
            rows.push(cell.get_position(), cell_of_ref(cell.get_value()), sink)?;
        }
        rows.flush(sink)?;
        sink.end_sheet()?;
    }
    Ok(names)
}

/// Reads XLS/XLSB/ODS workbooks (calamine loads one sheet at a time).
pub fn read_spreadsheet(path: &Path, wanted: Option<&str>, sink: &mut dyn RowSink) -> Result<Vec<String>, ImportError> {
    let mut book = calamine::open_workbook_auto(path).map_err(|e| spreadsheet_err(path, "", e))?;
    let names = selected_sheets(path, book.sheet_names(), wanted)?;
    for name in &names {
        let range = book.worksheet_range(name).map_err(|e| spreadsheet_err(path, name, e))?;
        let (start_row, start_col) = range.start().unwrap_or((0, 0));
        if !sink.sheet(name, Some(range.height() as u64))? {
            continue;
        }
        let mut rows = RowAssembler::new();
        for (r, row) in range.rows().enumerate() {
            for (c, value) in row.iter().enumerate() {
                if matches!(value, Data::Empty) {
                    continue;
                }
                let pos = (start_row + r as u32, start_col + c as u32);
                rows.push(pos, cell_of(value), sink)?;
            }
        }
        rows.flush(sink)?;
        sink.end_sheet()?;
    }
    Ok(names)
}

/// Default path of the error report beside `input`: `<stem>.errors.csv` (`.xlsx` for workbooks).
pub fn default_report_path(input: &Path, format: Format) -> PathBuf {
    let stem = input.file_stem().and_then(|s| s.to_str()).unwrap_or("import");
    let ext = if format == Format::Csv { "csv" } else { "xlsx" };
    input.with_file_name(format!("{stem}.errors.{ext}"))
}
