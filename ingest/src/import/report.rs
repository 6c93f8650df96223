//! The error report: rejected rows in the shape of the input (same headers,
//! same cell text) plus one error column, so a user fixes the rows in place and
//! imports the report itself (the error column is ignored on import). CSV input
//! gives a CSV report (UTF-8 with BOM, so Excel shows Chinese), workbooks give
//! an XLSX report with one sheet per input sheet and every cell as text (so
//! phones are not turned into numbers again).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::ImportError;
use super::row::CellError;
use super::template::ERROR_COLUMN;

/// Whether a path names an `.xlsx` file.
pub fn is_xlsx_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("xlsx"))
}

/// The error column text of a rejected row: `row 12: 联系方式: reason; 邮箱: reason`.
pub fn describe(row: u32, errors: &[CellError]) -> String {
    let parts: Vec<String> = errors
        .iter()
        .map(|e| {
            if e.column.is_empty() {
                e.reason.clone()
            } else {
                format!("{}: {}", e.column, e.reason)
            }
        })
        .collect();
    format!("row {row}: {}", parts.join("; "))
}

enum Sink {
    Csv {
        writer: csv::Writer<BufWriter<File>>,
        sheet: Option<String>,
    },
    Xlsx {
        book: Box<rust_xlsxwriter::Workbook>,
        /// Index of the current worksheet and its next row.
        current: Option<(usize, u32)>,
        text: rust_xlsxwriter::Format,
    },
}

/// Writes rejected rows as they come; created on the first rejection.
pub struct ErrorReport {
    path: PathBuf,
    sink: Sink,
    headers: Vec<String>,
    rows: u64,
}

impl ErrorReport {
    pub fn create(path: &Path) -> Result<ErrorReport, ImportError> {
        let err = |e: std::io::Error| ImportError::Report {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let sink = if is_xlsx_path(path) {
            Sink::Xlsx {
                book: Box::new(rust_xlsxwriter::Workbook::new()),
                current: None,
                text: rust_xlsxwriter::Format::new().set_num_format("@"),
            }
        } else {
            let mut file = BufWriter::new(File::create(path).map_err(err)?);
            file.write_all(b"\xEF\xBB\xBF").map_err(err)?;
            Sink::Csv {
                writer: csv::Writer::from_writer(file),
                sheet: None,
            }
        };
        Ok(ErrorReport {
            path: path.to_path_buf(),
            sink,
            headers: Vec::new(),
            rows: 0,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> ImportError {
        ImportError::Report {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Starts (or continues) the part of the report for `sheet` with its `headers`.
    pub fn sheet(&mut self, sheet: &str, headers: &[String]) -> Result<(), ImportError> {
        let mut all = headers.to_vec();
        all.push(ERROR_COLUMN.to_string());
        match &mut self.sink {
            Sink::Csv { writer, sheet: current } => {
                if current.is_none() {
                    writer.write_record(&all).map_err(|e| ImportError::Report {
                        path: self.path.clone(),
                        message: e.to_string(),
                    })?;
                    *current = Some(sheet.to_string());
                }
            }
            Sink::Xlsx { book, current, text } => {
                let ws = book.add_worksheet();
                let name: String = sheet
                    .chars()
                    .filter(|c| !matches!(c, '[' | ']' | ':' | '*' | '?' | '/' | '\\'))
                    .take(31)
                    .collect();
                if !name.is_empty() {
                    // A duplicate or odd name keeps the default "SheetN"; the rows still land.
                    let _ = ws.set_name(&name);
                }
                for (c, h) in all.iter().enumerate() {
                    let c = c.min(16_383) as u16;
                    ws.write_string_with_format(0, c, h, text)
                        .map_err(|e| ImportError::Report {
                            path: self.path.clone(),
                            message: e.to_string(),
                        })?;
                }
                let index = book.worksheets().len() - 1;
                *current = Some((index, 1));
            }
        }
        self.headers = all;
        Ok(())
    }

    /// Writes one rejected row: its cells as read and the reasons.
    pub fn row(&mut self, cells: &[String], row: u32, errors: &[CellError]) -> Result<(), ImportError> {
        let width = self.headers.len().saturating_sub(1);
        let mut out: Vec<&str> = (0..width)
            .map(|i| cells.get(i).map(String::as_str).unwrap_or(""))
            .collect();
        let reason = describe(row, errors);
        out.push(&reason);
        self.rows += 1;
        match &mut self.sink {
            Sink::Csv { writer, .. } => {
                let r = writer.write_record(&out);
                r.map_err(|e| ImportError::Report {
                    path: self.path.clone(),
                    message: e.to_string(),
                })
            }
            Sink::Xlsx { book, current, text } => {
                let Some((index, next)) = current else {
                    return Err(self.err("row written before its sheet"));
                };
                let ws = book.worksheet_from_index(*index).map_err(|e| ImportError::Report {
                    path: self.path.clone(),
                    message: e.to_string(),
                })?;
                for (c, v) in out.iter().enumerate() {
                    ws.write_string_with_format(*next, c.min(16_383) as u16, *v, text)
                        .map_err(|e| ImportError::Report {
                            path: self.path.clone(),
                            message: e.to_string(),
                        })?;
                }
                *next += 1;
                Ok(())
            }
        }
    }

    /// Writes the file out; returns its path and how many rows it holds.
    pub fn finish(self) -> Result<(PathBuf, u64), ImportError> {
        match self.sink {
            Sink::Csv { mut writer, .. } => writer.flush().map_err(|e| ImportError::Report {
                path: self.path.clone(),
                message: e.to_string(),
            })?,
            Sink::Xlsx { mut book, .. } => book.save(&self.path).map_err(|e| ImportError::Report {
                path: self.path.clone(),
                message: e.to_string(),
            })?,
        }
        Ok((self.path, self.rows))
    }
}
