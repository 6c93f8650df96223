//! Estimating a [`Model`] from data: u probabilities from random record pairs
//! (exact agreement computed exactly from the value counts), m probabilities
//! and the prior by expectation–maximisation over the blocked candidate
//! pairs with u held fixed, and m overridden from labelled pairs.

use serde::{Deserialize, Serialize};

use crate::Model;
use crate::compare::{Levels, NULL_LEVEL, compare, compare_unpaired, unpack};
use crate::record::Record;
use crate::record::{FIELD_COUNT, Field};
use crate::store::{NULL, Store, view_of};

/// What training did, for the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingReport {
    /// Random pairs drawn to estimate u.
    pub u_sample_pairs: usize,
    /// One EM run per training rule.
    pub sessions: Vec<SessionReport>,
    /// Estimated share of candidate pairs that are matches.
    pub candidate_match_share: f64,
    /// Estimated duplicates per record (the model's prior).
    pub matches_per_record: f64,
}

/// One EM run over the candidate pairs agreeing on a rule's fields; the m of
/// those fields is not learned in that run (blocking biased it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionReport {
    pub rule: String,
    pub pairs: usize,
    pub iterations: usize,
    pub converged: bool,
    pub match_share: f64,
}

/// Training rules: a name, the fields a pair agrees on exactly (so whose m
/// the session cannot learn), and further fields it must not learn because
/// they repeat the rule's fields.
const SESSIONS: [(&str, &[Field], &[Field]); 7] = [
    ("date_of_birth", &[Field::DateOfBirth], &[]),
    (
        "given_name+surname",
        &[Field::GivenName, Field::Surname],
        &[Field::FullName],
    ),
    ("postcode+street_number", &[Field::Postcode, Field::StreetNumber], &[]),
    ("full_name", &[Field::FullName], &[Field::GivenName, Field::Surname]),
    ("phone", &[Field::Phone], &[]),
    ("email", &[Field::Email], &[]),
    ("national_id", &[Field::NationalId], &[]),
];

/// Fewest pairs a training rule needs to run.
const MIN_SESSION_PAIRS: f64 = 30.0;

/// A small deterministic generator (SplitMix64): reproducible sampling
/// without pulling a random-number crate into the engine.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Fields with enough values to learn from.
pub(crate) fn active_fields(store: &Store) -> [bool; FIELD_COUNT] {
    std::array::from_fn(|i| store.columns[i].non_null >= 2)
}

impl Model {
    /// u from random pairs: the exact level from value counts, the other
    /// levels from `sample` random pairs with different values.
    pub(crate) fn estimate_u(&mut self, store: &Store, sample: usize, seed: u64) -> usize {
        let active = active_fields(store);
        let n = store.rows.len();
        if n < 2 {
            return 0;
        }
        // Per field, `sample` random pairs of records that both have a value
        // and differ; fields run on separate threads.
        let fields: Vec<usize> = (0..FIELD_COUNT).filter(|&i| active[i]).collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .clamp(1, fields.len().max(1));
        let per_thread = fields.len().div_ceil(threads).max(1);
        let results: Vec<(usize, [u64; 8], u64, usize)> = std::thread::scope(|scope| {
            let handles: Vec<_> = fields
                .chunks(per_thread)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|&i| sample_field(store, i, sample, seed ^ (i as u64 * 0x9E37)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut drawn = 0;
        for (i, counts, compared, attempts) in results {
            drawn += attempts;
            let c = &mut self.comparisons[i];
            let k = c.levels.len();
            let exact = store.columns[i].exact_agreement_rate().max(1e-9);
            c.levels[0].u = exact;
            let total = compared as f64 + 0.5 * (k - 1) as f64;
            for (l, level) in c.levels.iter_mut().enumerate().skip(1) {
                level.u = ((counts[l] as f64 + 0.5) / total * (1.0 - exact)).max(1e-9);
            }
        }
        drawn
    }

    /// Learns m by EM, one session per training rule, then the prior from
    /// the share of matches among all candidate pairs. `patterns` are the
    /// candidate pairs' packed comparison vectors with counts.
    pub(crate) fn estimate_m_and_prior(
        &mut self,
        patterns: &[(u64, f64)],
        active: &[bool; FIELD_COUNT],
        records: usize,
        max_iterations: usize,
    ) -> (Vec<SessionReport>, f64) {
        let unpacked: Vec<(Levels, f64)> = patterns.iter().map(|&(p, c)| (unpack(p), c)).collect();
        // Start every learned field from the same neutral guess: exact
        // agreement is evidence, every other level mildly against, in
        // proportion to how often it happens by chance. Starting from strong
        // beliefs about weak levels lets EM settle on "same surname" as its
        // match class.
        for (i, c) in self.comparisons.iter_mut().enumerate() {
            if !active[i] {
                continue;
            }
            let rest: f64 = c.levels.iter().skip(1).map(|l| l.u).sum::<f64>().max(1e-12);
            for (l, level) in c.levels.iter_mut().enumerate() {
                level.m = if l == 0 { 0.9 } else { (0.1 * level.u / rest).max(1e-9) };
            }
        }
        let mut sums = [[0.0f64; 8]; FIELD_COUNT];
        let mut runs = [0usize; FIELD_COUNT];
        let mut reports = Vec::new();
        for (rule, fixed, repeats) in SESSIONS {
            if fixed.iter().any(|f| !active[f.index()]) {
                continue;
            }
            let subset: Vec<(Levels, f64)> = unpacked
                .iter()
                .filter(|(l, _)| fixed.iter().all(|f| l[f.index()] == 0))
                .copied()
                .collect();
            let pairs: f64 = subset.iter().map(|(_, c)| c).sum();
            if pairs < MIN_SESSION_PAIRS {
                continue;
            }
            let mut learn = *active;
            for f in fixed.iter().chain(repeats) {
                learn[f.index()] = false;
            }
            let mut session = self.clone();
            let (iterations, converged, match_share) = session.em(&subset, &learn, 0.5, max_iterations, true);
            for (i, c) in session.comparisons.iter().enumerate() {
                if learn[i] {
                    runs[i] += 1;
                    for (l, level) in c.levels.iter().enumerate() {
                        sums[i][l] += level.m;
                    }
                }
            }
            reports.push(SessionReport {
                rule: rule.to_string(),
                pairs: pairs as usize,
                iterations,
                converged,
                match_share,
            });
        }
        for (i, c) in self.comparisons.iter_mut().enumerate() {
            if runs[i] > 0 {
                for (l, level) in c.levels.iter_mut().enumerate() {
                    level.m = sums[i][l] / runs[i] as f64;
                }
            }
        }
        let all: f64 = unpacked.iter().map(|(_, c)| c).sum();
        let (_, _, share) = self.em(&unpacked, active, 0.5, max_iterations, false);
        self.matches_per_record = (2.0 * share * all / records.max(1) as f64).max(1e-6);
        (reports, share)
    }

    /// EM with u fixed; `learn_m` false re-estimates only the match share.
    /// Returns (iterations, converged, match share).
    fn em(
        &mut self,
        data: &[(Levels, f64)],
        active: &[bool; FIELD_COUNT],
        start_share: f64,
        max_iterations: usize,
        learn_m: bool,
    ) -> (usize, bool, f64) {
        let total: f64 = data.iter().map(|(_, c)| c).sum();
        if total == 0.0 {
            return (0, false, start_share);
        }
        let mut share = start_share;
        // Pseudo-counts spread over the levels keep rare levels finite on small data.
        const PSEUDO: f64 = 1.0;
        for iteration in 1..=max_iterations {
            let log_ratio: Vec<[f64; 8]> = self
                .comparisons
                .iter()
                .map(|c| {
                    let mut r = [0.0; 8];
                    for (l, level) in c.levels.iter().enumerate().take(8) {
                        r[l] = (level.m / level.u).ln();
                    }
                    r
                })
                .collect();
            let prior_logit = (share / (1.0 - share)).ln();
            let mut m_counts = [[0.0f64; 8]; FIELD_COUNT];
            let mut matches = 0.0;
            for (levels, count) in data {
                let mut logit = prior_logit;
                for (i, &l) in levels.iter().enumerate() {
                    if l != NULL_LEVEL && active[i] {
                        logit += log_ratio[i][usize::from(l)];
                    }
                }
                let weight = count / (1.0 + (-logit).exp());
                matches += weight;
                if learn_m {
                    for (i, &l) in levels.iter().enumerate() {
                        if l != NULL_LEVEL {
                            m_counts[i][usize::from(l)] += weight;
                        }
                    }
                }
            }
            let mut change: f64 = 0.0;
            if learn_m {
                for (i, c) in self.comparisons.iter_mut().enumerate() {
                    if !active[i] {
                        continue;
                    }
                    let seen: f64 = m_counts[i].iter().sum();
                    let k = c.levels.len() as f64;
                    for (l, level) in c.levels.iter_mut().enumerate() {
                        let m = ((m_counts[i][l] + PSEUDO / k) / (seen + PSEUDO)).max(1e-9);
                        change = change.max((m - level.m).abs());
                        level.m = m;
                    }
                }
            }
            let new_share = (matches / total).clamp(1e-9, 1.0 - 1e-9);
            change = change.max((new_share - share).abs());
            share = new_share;
            if change < 1e-6 {
                return (iteration, true, share);
            }
        }
        (max_iterations, false, share)
    }

    /// Sets m from comparison vectors of pairs a person confirmed as matches
    /// (review approvals, labelled training data), blended with the current m
    /// by `pseudo_count` so a handful of labels nudges rather than replaces.
    fn learn_m(&mut self, confirmed: &[Levels], pseudo_count: f64) {
        for (i, c) in self.comparisons.iter_mut().enumerate() {
            let mut counts = [0.0f64; 8];
            for levels in confirmed {
                if levels[i] != NULL_LEVEL {
                    counts[usize::from(levels[i])] += 1.0;
                }
            }
            let seen: f64 = counts.iter().sum();
            if seen == 0.0 {
                continue;
            }
            for (l, level) in c.levels.iter_mut().enumerate() {
                level.m = ((counts[l] + pseudo_count * level.m) / (seen + pseudo_count)).max(1e-9);
            }
        }
    }
}

impl Model {
    /// Overrides m from labelled matching pairs (e.g. approved reviews or a
    /// hand-labelled sample), blended with the current m as if it were
    /// `pseudo_count` pairs of evidence.
    pub fn learn_from_labelled(&mut self, matches: &[(Record, Record)], pseudo_count: f64) {
        let store = Store::default();
        let all = [true; FIELD_COUNT];
        let levels: Vec<Levels> = matches
            .iter()
            .map(|(a, b)| {
                let (pa, pb) = (store.prepare(a, &all), store.prepare(b, &all));
                compare(&view_of(&pa), &view_of(&pb))
            })
            .collect();
        self.learn_m(&levels, pseudo_count.max(0.0));
    }
}

/// Level counts of field `i` over random pairs that both have a value and
/// differ: (field, counts, pairs compared, pairs drawn).
fn sample_field(store: &Store, i: usize, sample: usize, seed: u64) -> (usize, [u64; 8], u64, usize) {
    let mut rng = SplitMix::new(seed);
    let n = store.rows.len();
    let mut counts = [0u64; 8];
    let mut compared = 0u64;
    let mut attempts = 0usize;
    while (compared as usize) < sample && attempts < sample * 20 {
        attempts += 1;
        let (a, b) = (&store.rows[rng.below(n)], &store.rows[rng.below(n)]);
        if a[i] == NULL || b[i] == NULL || a[i] == b[i] {
            continue;
        }
        let level = compare_unpaired(i, &store.view(a), &store.view(b));
        if level != NULL_LEVEL && level != 0 {
            counts[usize::from(level)] += 1;
            compared += 1;
        }
    }
    (i, counts, compared, attempts)
}
