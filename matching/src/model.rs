//! The Fellegi–Sunter model: per field and comparison level the m probability
//! (agreement at that level among true matches) and u probability (among
//! non-matches), the expected number of duplicates per record (which gives
//! the prior for any population size), and the decision thresholds. Scoring and explanations live here; estimation (EM,
//! random sampling, labelled pairs) lives in `train`.

use serde::{Deserialize, Serialize};

use crate::MatchError;
use crate::compare::{Levels, NULL_LEVEL, level_labels};
use crate::record::{FIELD_COUNT, Field};
use crate::store::View;

/// Decision thresholds, as posterior match probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// At or above: merge automatically.
    pub merge: f64,
    /// At or above (and below `merge`): send to review. Below: distinct.
    pub review: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            merge: 0.5,
            review: 0.05,
        }
    }
}

/// One comparison level with its m and u probabilities.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    pub label: String,
    pub m: f64,
    pub u: f64,
}

/// The levels of one field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    pub field: Field,
    /// Adjust the exact level by how common the value is (王 counts less than 欧阳).
    pub term_frequency: bool,
    pub levels: Vec<Level>,
}

/// A trained (or default) matching model; serialise it with [`Model::to_json`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Expected number of other records that are the same entity as a record
    /// (2 × matching pairs / records). The prior that two random records out
    /// of `n` match is this over `n − 1`.
    pub matches_per_record: f64,
    /// How far (in bits) a rare value may raise an exact-match weight above the field average.
    pub max_term_frequency_boost_bits: f64,
    pub thresholds: Thresholds,
    pub comparisons: Vec<Comparison>,
}

/// How one field contributed to a pair's score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldEvidence {
    pub field: Field,
    /// Comparison level label, or `null` when a side has no value.
    pub level: String,
    /// log2 Bayes factor contributed (0 for null).
    pub weight: f64,
    /// Term frequency of the agreed value when the weight was adjusted by it.
    pub term_frequency: Option<f64>,
}

/// Why a pair got its score: the prior plus each field's weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub prior_weight: f64,
    pub fields: Vec<FieldEvidence>,
    /// prior_weight + Σ field weights (log2 odds of a match).
    pub match_weight: f64,
    pub probability: f64,
}

/// Default m and u per level (strongest first), from typical customer data;
/// EM replaces them when trained.
fn default_levels(field: Field) -> (&'static [f64], &'static [f64]) {
    match field {
        Field::GivenName | Field::Surname => (
            &[0.80, 0.08, 0.02, 0.03, 0.01, 0.03, 0.03],
            &[0.004, 0.002, 0.0005, 0.004, 0.005, 0.05, 0.9345],
        ),
        Field::FullName => (
            &[0.80, 0.05, 0.06, 0.04, 0.02, 0.03],
            &[0.0002, 0.0001, 0.0001, 0.002, 0.03, 0.9676],
        ),
        Field::StreetNumber => (&[0.85, 0.08, 0.07], &[0.01, 0.03, 0.96]),
        Field::Address1 | Field::Address2 => (&[0.80, 0.08, 0.05, 0.03, 0.04], &[0.001, 0.001, 0.01, 0.05, 0.938]),
        Field::Suburb => (&[0.85, 0.07, 0.03, 0.05], &[0.002, 0.001, 0.02, 0.977]),
        Field::Postcode => (&[0.85, 0.08, 0.02, 0.05], &[0.002, 0.01, 0.01, 0.978]),
        Field::State => (&[0.95, 0.05], &[0.2, 0.8]),
        Field::DateOfBirth => (
            &[0.85, 0.07, 0.01, 0.03, 0.04],
            &[0.0001, 0.0005, 0.00001, 0.003, 0.99639],
        ),
        Field::Phone => (&[0.80, 0.05, 0.05, 0.10], &[0.00001, 0.00001, 0.00001, 0.99997]),
        Field::Email => (
            &[0.80, 0.05, 0.05, 0.03, 0.07],
            &[0.00001, 0.00001, 0.00001, 0.0005, 0.99947],
        ),
        Field::NationalId => (&[0.90, 0.05, 0.02, 0.03], &[0.00001, 0.00005, 0.0005, 0.99944]),
    }
}

impl Default for Model {
    fn default() -> Self {
        let comparisons = Field::ALL
            .iter()
            .map(|&field| {
                let (m, u) = default_levels(field);
                let levels = level_labels(field)
                    .iter()
                    .zip(m.iter().zip(u))
                    .map(|(label, (&m, &u))| Level {
                        label: (*label).to_string(),
                        m,
                        u,
                    })
                    .collect();
                Comparison {
                    field,
                    term_frequency: !matches!(field, Field::NationalId),
                    levels,
                }
            })
            .collect();
        Model {
            matches_per_record: 0.5,
            max_term_frequency_boost_bits: 4.0,
            thresholds: Thresholds::default(),
            comparisons,
        }
    }
}

impl Model {
    /// Checks the model is complete and its numbers are probabilities.
    pub fn validate(&self) -> Result<(), MatchError> {
        let bad = |reason: String| Err(MatchError::InvalidModel { reason });
        if !(self.matches_per_record > 0.0 && self.matches_per_record.is_finite()) {
            return bad(format!(
                "matches_per_record {} is not a positive number",
                self.matches_per_record
            ));
        }
        let t = self.thresholds;
        if !(0.0..=1.0).contains(&t.merge) || !(0.0..=1.0).contains(&t.review) || t.review > t.merge {
            return bad(format!(
                "thresholds merge {} / review {} must satisfy 0 ≤ review ≤ merge ≤ 1",
                t.merge, t.review
            ));
        }
        if self.comparisons.len() != FIELD_COUNT {
            return bad(format!(
                "{} comparisons, expected one per field ({FIELD_COUNT})",
                self.comparisons.len()
            ));
        }
        for (c, field) in self.comparisons.iter().zip(Field::ALL) {
            if c.field != field {
                return bad(format!("comparison {} is out of order, expected {field}", c.field));
            }
            let labels: Vec<&str> = c.levels.iter().map(|l| l.label.as_str()).collect();
            if labels != level_labels(field) {
                return bad(format!("{field} levels {labels:?}, expected {:?}", level_labels(field)));
            }
            if let Some(l) = c
                .levels
                .iter()
                .find(|l| !(l.m > 0.0 && l.m <= 1.0 && l.u > 0.0 && l.u <= 1.0))
            {
                return bad(format!(
                    "{field} level {} has m {} u {} outside (0, 1]",
                    l.label, l.m, l.u
                ));
            }
        }
        Ok(())
    }

    /// JSON form (stable, human-readable).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads and validates a model written by [`Model::to_json`].
    pub fn from_json(json: &str) -> Result<Model, MatchError> {
        let model: Model = serde_json::from_str(json).map_err(|source| MatchError::ModelJson { source })?;
        model.validate()?;
        Ok(model)
    }

    /// Precomputes log2 Bayes factors for scoring.
    pub(crate) fn weights(&self) -> Weights {
        let mut w = Weights {
            level: [[0.0; 8]; FIELD_COUNT],
            m_exact: [1.0; FIELD_COUNT],
            u_exact: [1.0; FIELD_COUNT],
            term_frequency: [false; FIELD_COUNT],
            matches_per_record: self.matches_per_record,
            max_boost: self.max_term_frequency_boost_bits.exp2(),
        };
        for (i, c) in self.comparisons.iter().enumerate().take(FIELD_COUNT) {
            let last = c.levels.len().saturating_sub(1);
            for (l, level) in c.levels.iter().enumerate().take(8) {
                let weight = (level.m / level.u).log2();
                // Exact agreement never counts against, disagreement never for.
                w.level[i][l] = match l {
                    0 => weight.max(0.0),
                    l if l == last => weight.min(0.0),
                    _ => weight,
                };
            }
            if let Some(exact) = c.levels.first() {
                w.m_exact[i] = exact.m;
                w.u_exact[i] = exact.u;
            }
            w.term_frequency[i] = c.term_frequency;
        }
        w
    }
}

/// A model compiled for scoring.
#[derive(Clone, Debug)]
pub(crate) struct Weights {
    level: [[f64; 8]; FIELD_COUNT],
    m_exact: [f64; FIELD_COUNT],
    u_exact: [f64; FIELD_COUNT],
    term_frequency: [bool; FIELD_COUNT],
    matches_per_record: f64,
    max_boost: f64,
}

impl Weights {
    /// log2 prior odds that two random records out of `population` match.
    pub fn prior_weight(&self, population: usize) -> f64 {
        let others = population.saturating_sub(1).max(1) as f64;
        let p = (self.matches_per_record / others).clamp(1e-12, 0.5);
        (p / (1.0 - p)).log2()
    }

    /// Weight of one field; `tf` is the term frequency of the agreed value.
    fn field_weight(&self, i: usize, level: u8, tf: Option<(f64, f64)>) -> (f64, Option<f64>) {
        if level == NULL_LEVEL {
            return (0.0, None);
        }
        match tf {
            Some((count, non_null)) if level == 0 && self.term_frequency[i] => {
                // Shrink the observed frequency toward the field average as
                // if TF_PRIOR_RECORDS more records had been seen: a value
                // seen once in a small index is not proof of rarity.
                let u_exact = self.u_exact[i];
                let tf = (count + TF_PRIOR_RECORDS * u_exact) / (non_null + TF_PRIOR_RECORDS);
                let u = tf.clamp(u_exact / self.max_boost, 1.0);
                (((self.m_exact[i] / u).log2()).max(0.0), Some(tf))
            }
            _ => (self.level[i][usize::from(level)], None),
        }
    }

    /// log2 odds of a match given the prior weight. `non_null` gives per field
    /// the number of stored values, `b` is the stored side whose counts give
    /// term frequencies.
    pub fn match_weight(&self, prior_weight: f64, levels: &Levels, b: &View<'_>, non_null: &[u64; FIELD_COUNT]) -> f64 {
        let mut total = prior_weight;
        for (i, &level) in levels.iter().enumerate() {
            total += self.level_weight(i, level, b, non_null);
        }
        total
    }

    /// What field `i` at `level` adds to [`Weights::match_weight`].
    pub fn level_weight(&self, i: usize, level: u8, b: &View<'_>, non_null: &[u64; FIELD_COUNT]) -> f64 {
        self.field_weight(i, level, term_frequency(i, level, b, non_null)).0
    }

    /// The most field `i` can add to a match weight, whatever the pair: its best level, or
    /// the largest term-frequency boost of an exact agreement (a null adds 0).
    pub fn field_bound(&self, i: usize) -> f64 {
        let levels = self.level[i].iter().copied().fold(0.0, f64::max);
        if self.term_frequency[i] {
            levels.max((self.m_exact[i] * self.max_boost / self.u_exact[i]).log2())
        } else {
            levels
        }
    }

    /// The most field `i` can add at one of the levels set in `reachable` (bit `l`: level
    /// `l`); an exact agreement counts at [`Weights::field_bound`].
    pub fn reachable_bound(&self, i: usize, reachable: u8) -> f64 {
        (0..8)
            .filter(|l| reachable & (1 << l) != 0)
            .map(|l| if l == 0 { self.field_bound(i) } else { self.level[i][l] })
            .fold(f64::NEG_INFINITY, f64::max)
    }

    /// The least field `i` can add (its worst level, or 0 for a null).
    pub fn field_floor(&self, i: usize) -> f64 {
        self.level[i].iter().copied().fold(0.0, f64::min)
    }

    /// Same as [`Weights::match_weight`] with the per-field breakdown.
    pub fn explain(
        &self,
        prior_weight: f64,
        levels: &Levels,
        b: &View<'_>,
        non_null: &[u64; FIELD_COUNT],
    ) -> Explanation {
        let mut fields = Vec::new();
        let mut total = prior_weight;
        for (i, &level) in levels.iter().enumerate() {
            let field = Field::ALL[i];
            let (weight, tf) = self.field_weight(i, level, term_frequency(i, level, b, non_null));
            total += weight;
            let label = if level == NULL_LEVEL {
                "null"
            } else {
                level_labels(field).get(usize::from(level)).copied().unwrap_or("else")
            };
            if level != NULL_LEVEL {
                fields.push(FieldEvidence {
                    field,
                    level: label.to_string(),
                    weight,
                    term_frequency: tf,
                });
            }
        }
        Explanation {
            prior_weight,
            fields,
            match_weight: total,
            probability: probability(total),
        }
    }
}

/// Records' worth of prior belief in the field-average frequency.
const TF_PRIOR_RECORDS: f64 = 1000.0;

/// (count of the agreed value, records with a value) on the stored side.
fn term_frequency(i: usize, level: u8, b: &View<'_>, non_null: &[u64; FIELD_COUNT]) -> Option<(f64, f64)> {
    if level != 0 {
        return None;
    }
    b[i].map(|e| (f64::from(e.count.max(1)), non_null[i] as f64))
}

/// Posterior probability from log2 odds.
pub(crate) fn probability(match_weight: f64) -> f64 {
    1.0 / (1.0 + (-match_weight).exp2())
}

/// The log2 odds at which [`probability`] reaches `p` (its inverse).
pub(crate) fn weight_at(p: f64) -> f64 {
    (p / (1.0 - p)).log2()
}
