//! `crm import` command-line arguments. The binary wires them; running the
//! import is [`super::run`].

use std::path::PathBuf;

use super::{ImportError, ImportOptions, template};

/// `crm import FILE [--template NAME] [--source LABEL] ...`
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// CSV (UTF-8, UTF-8 with BOM, GB18030/GBK, ...), XLSX, XLS, XLSB or ODS file.
    #[arg(value_name = "FILE", required_unless_present = "print_template")]
    pub file: Option<PathBuf>,
    /// Built-in template: trade-show, store, customer-profile, needs, interaction-log,
    /// taobao-orders, jd-orders. Default: detected from each sheet's headers.
    #[arg(long, short = 't')]
    pub template: Option<String>,
    /// TOML mapping file: `[columns]` "column header" = "field" (see docs/import.md).
    #[arg(long, value_name = "FILE.toml")]
    pub mapping: Option<PathBuf>,
    /// Source label recorded with every row, e.g. "2026上海展会". Default: the file name.
    #[arg(long)]
    pub source: Option<String>,
    /// Import only this sheet of a workbook. Default: every sheet.
    #[arg(long)]
    pub sheet: Option<String>,
    /// Text encoding of a CSV (utf-8, gb18030, gbk, big5, ...). Default: detected.
    #[arg(long)]
    pub encoding: Option<String>,
    /// CSV delimiter: , ; | or tab. Default: sniffed from the header line.
    #[arg(long)]
    pub delimiter: Option<String>,
    /// Where to write rejected rows. Default: <name>.errors.csv (or .xlsx) beside FILE.
    #[arg(long, value_name = "PATH")]
    pub error_report: Option<PathBuf>,
    /// Region of phone numbers written without a country code.
    #[arg(long, default_value = "CN")]
    pub region: String,
    /// Write an empty template of --template to PATH (.xlsx or .csv; '-' for stdout) and exit.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "-")]
    pub print_template: Option<PathBuf>,
}

impl ImportArgs {
    /// The import these arguments ask for (the caller adds a ledger: `options.ledger = Some(...)`).
    pub fn options(&self) -> ImportOptions {
        let mut o = ImportOptions::new(self.file.clone().unwrap_or_default());
        o.template = self.template.clone();
        o.mapping_file = self.mapping.clone();
        o.source = self.source.clone();
        o.sheet = self.sheet.clone();
        o.encoding = self.encoding.clone();
        o.delimiter = self.delimiter.clone();
        o.error_report = self.error_report.clone();
        o.default_region = self.region.clone();
        o
    }

    /// If `--print-template` was given: writes the template and returns `true` (the command is done).
    pub fn print_template_if_asked(&self) -> Result<bool, ImportError> {
        let Some(out) = &self.print_template else {
            return Ok(false);
        };
        let name = self.template.clone().unwrap_or_else(|| "trade-show".into());
        let t = match &self.mapping {
            Some(m) => template::Template::from_mapping_file(m)?,
            None => template::builtin(&name).ok_or_else(|| ImportError::UnknownTemplate {
                name,
                known: template::builtin_names().join(", "),
            })?,
        };
        template::write_empty(&t, out)?;
        Ok(true)
    }
}
