//! Errors of the matching crate: each says what failed, on which value, and
//! what to do about it.

use std::path::PathBuf;

/// What can go wrong while reading inputs, training or writing results.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error("cannot read {path}: {source}; check the path and permissions")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot parse CSV {path}: {source}; the file must be UTF-8 CSV with a header row")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("{path} has no column {column:?} (columns: {available}); pass the id column with --id-column")]
    MissingIdColumn {
        path: PathBuf,
        column: String,
        available: String,
    },
    #[error(
        "{path} has no column the matcher knows (columns: {available}); name them e.g. given_name, surname, date_of_birth, phone, email"
    )]
    NoMatchableColumns { path: PathBuf, available: String },
    #[error("{path}: truth file needs columns id_a,id_b (found: {available})")]
    BadTruthFile { path: PathBuf, available: String },
    #[error("invalid model: {reason}; retrain it or start from Model::default()")]
    InvalidModel { reason: String },
    #[error("cannot decode model JSON: {source}; the file must be written by Model::to_json")]
    ModelJson { source: serde_json::Error },
    #[error("invalid setting {name} = {value}: {expected}")]
    InvalidSetting {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("cannot write output: {source}")]
    Write { source: std::io::Error },
}

impl MatchError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> MatchError + '_ {
        move |source| MatchError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn csv(path: &std::path::Path) -> impl FnOnce(csv::Error) -> MatchError + '_ {
        move |source| MatchError::Csv {
            path: path.to_path_buf(),
            source,
        }
    }
}
