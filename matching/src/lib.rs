//! Probabilistic record linkage in the Fellegi–Sunter family: the engine
//! behind live identity decisions in the domain service and `crm dedup`.
//!
//! - [`Model`]: m/u probabilities per field and comparison level, a prior and
//!   thresholds; serialisable, with a built-in default, trainable by EM.
//! - [`LiveIndex`]: an incremental index scoring one record against its
//!   blocked candidates, with a per-field [`Explanation`].
//! - [`cli`]: the batch command (`crm dedup`) over CSV files.
//! - [`generate()`]: a synthetic customer CSV with known duplicates.
//!
//! What is not here: decisions with side effects (merge events, review
//! tasks, guardrails on shared identifiers) belong to `domain`.

mod batch;
mod blocking;
pub mod cli;
mod compare;
mod error;
mod generate;
mod live;
mod model;
mod record;
mod sketch;
mod store;
mod text;
mod train;

pub use compare::level_labels;
pub use error::MatchError;
pub use generate::{GenerateSummary, generate, generate_with_truth};
pub use live::{Decision, LiveIndex, Prepared, ScoredCandidate};
pub use model::{Comparison, Explanation, FieldEvidence, Level, Model, Thresholds};
pub use record::{FIELD_COUNT, Field, Record};
pub use train::TrainingReport;
