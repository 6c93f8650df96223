//! The batch engine: load CSV files into a [`Store`], generate candidate
//! pairs from the blocking keys, compare them, train the model, score, and
//! cluster accepted pairs into connected components with a size guard.

use std::collections::HashMap;
use std::path::Path;

use crate::blocking;
use crate::compare::{Levels, compare, pack, unpack};
use crate::model::{Weights, probability};
use crate::record::{FIELD_COUNT, Field, Record};
use crate::store::Store;
use crate::train::{TrainingReport, active_fields};
use crate::{MatchError, Model};

/// A loaded data set: one store, the external id and source file per slot.
#[derive(Default, Debug)]
pub(crate) struct Dataset {
    pub store: Store,
    pub ids: Vec<String>,
    /// 0 for the first file, 1 for the second (link mode).
    pub source: Vec<u8>,
    pub enabled: [bool; FIELD_COUNT],
}

impl Dataset {
    /// Reads one CSV file; `exclude` lists header names to ignore.
    pub fn load(&mut self, path: &Path, id_column: &str, exclude: &[String], source: u8) -> Result<(), MatchError> {
        let file = std::fs::File::open(path).map_err(MatchError::io(path))?;
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(std::io::BufReader::new(file));
        let headers = reader.headers().map_err(MatchError::csv(path))?.clone();
        let available = headers.iter().collect::<Vec<_>>().join(",");
        let id_at = headers
            .iter()
            .position(|h| h.trim() == id_column)
            .ok_or_else(|| MatchError::MissingIdColumn {
                path: path.to_path_buf(),
                column: id_column.to_string(),
                available: available.clone(),
            })?;
        let excluded = |h: &str| exclude.iter().any(|e| e.trim().eq_ignore_ascii_case(h.trim()));
        let columns: Vec<(usize, Field)> = headers
            .iter()
            .enumerate()
            .filter(|&(i, h)| i != id_at && !excluded(h))
            .filter_map(|(i, h)| Field::from_header(h).map(|f| (i, f)))
            .collect();
        if columns.is_empty() {
            return Err(MatchError::NoMatchableColumns {
                path: path.to_path_buf(),
                available,
            });
        }
        let mut enabled = [false; FIELD_COUNT];
        for &(_, f) in &columns {
            enabled[f.index()] = true;
            self.enabled[f.index()] = true;
        }
        let mut row = csv::StringRecord::new();
        while reader.read_record(&mut row).map_err(MatchError::csv(path))? {
            let mut record = Record::new();
            for &(i, f) in &columns {
                if let Some(v) = row.get(i) {
                    record.set(f, v);
                }
            }
            self.ids.push(row.get(id_at).unwrap_or_default().trim().to_string());
            self.source.push(source);
            self.store.push(&record, &enabled);
        }
        Ok(())
    }
}

/// Settings of one batch run.
#[derive(Clone, Debug)]
pub(crate) struct BatchSettings {
    pub max_block_size: usize,
    /// Comparison budget: candidate pairs per record (before de-duplication).
    pub max_pairs_per_record: usize,
    pub max_cluster_size: usize,
    pub u_sample_pairs: usize,
    pub em_max_iterations: usize,
    pub link_only: bool,
    pub train: bool,
    pub seed: u64,
}

/// One scored pair above the review threshold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScoredPair {
    pub a: u32,
    pub b: u32,
    pub weight: f64,
    pub probability: f64,
}

/// Everything a batch run produced.
#[derive(Debug)]
pub(crate) struct BatchOutcome {
    /// Candidate pairs, sorted.
    pub candidates: Vec<(u32, u32)>,
    pub skipped_blocks: usize,
    pub training: Option<TrainingReport>,
    pub model: Model,
    /// Pairs at or above the review threshold, best first.
    pub scored: Vec<ScoredPair>,
    /// Cluster id per slot.
    pub cluster_of: Vec<u32>,
    /// Accepted pairs the size guard refused to merge.
    pub guarded_pairs: usize,
}

/// Candidate pairs `(a, b)`, `a < b`, sorted and unique.
pub(crate) fn candidate_pairs(data: &Dataset, settings: &BatchSettings) -> (Vec<(u32, u32)>, usize) {
    let mut keyed: Vec<(u64, u32)> = Vec::with_capacity(data.store.rows.len() * 8);
    let mut keys = Vec::new();
    for (slot, row) in data.store.rows.iter().enumerate() {
        keys.clear();
        blocking::keys(&data.store.view(row), &mut keys);
        keys.sort_unstable();
        keys.dedup();
        keyed.extend(keys.iter().map(|&k| (k, slot as u32)));
    }
    keyed.sort_unstable();
    // Blocks smallest first until the comparison budget is spent: the most
    // selective keys always run, common values are dropped first, and the
    // candidate set stays linear in the number of records.
    let mut blocks: Vec<&[(u64, u32)]> = keyed.chunk_by(|x, y| x.0 == y.0).filter(|b| b.len() > 1).collect();
    blocks.sort_by_key(|b| b.len());
    let budget = (settings.max_pairs_per_record * data.store.rows.len()) as u64;
    let mut spent = 0u64;
    let mut pairs: Vec<u64> = Vec::new();
    let mut skipped = 0;
    for block in blocks {
        let cost = (block.len() * (block.len() - 1) / 2) as u64;
        if block.len() > settings.max_block_size || spent + cost > budget {
            skipped += 1;
            continue;
        }
        spent += cost;
        for (i, &(_, a)) in block.iter().enumerate() {
            for &(_, b) in &block[i + 1..] {
                if settings.link_only && data.source[a as usize] == data.source[b as usize] {
                    continue;
                }
                pairs.push((u64::from(a.min(b)) << 32) | u64::from(a.max(b)));
            }
        }
    }
    drop(keyed);
    pairs.sort_unstable();
    pairs.dedup();
    (
        pairs.into_iter().map(|p| ((p >> 32) as u32, p as u32)).collect(),
        skipped,
    )
}

/// Comparison vectors of all pairs, packed, using all cores.
fn compare_all(store: &Store, pairs: &[(u32, u32)]) -> Vec<u64> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let chunk = pairs.len().div_ceil(threads).max(1024);
    let mut out = vec![0u64; pairs.len()];
    std::thread::scope(|scope| {
        for (pairs, out) in pairs.chunks(chunk).zip(out.chunks_mut(chunk)) {
            scope.spawn(move || {
                for (&(a, b), o) in pairs.iter().zip(out.iter_mut()) {
                    let levels = compare(
                        &store.view(&store.rows[a as usize]),
                        &store.view(&store.rows[b as usize]),
                    );
                    *o = pack(&levels);
                }
            });
        }
    });
    out
}

pub(crate) fn non_null(store: &Store) -> [u64; FIELD_COUNT] {
    std::array::from_fn(|i| store.columns[i].non_null)
}

/// Runs blocking, training, scoring and clustering.
pub(crate) fn run_batch(data: &Dataset, mut model: Model, settings: &BatchSettings) -> BatchOutcome {
    let trace = Trace::new();
    let (pairs, skipped_blocks) = candidate_pairs(data, settings);
    trace.phase("blocking");
    let vectors = compare_all(&data.store, &pairs);
    trace.phase("comparing");
    let training = settings.train.then(|| {
        let u_sample_pairs = model.estimate_u(&data.store, settings.u_sample_pairs, settings.seed);
        let mut counts: HashMap<u64, f64> = HashMap::new();
        for &v in &vectors {
            *counts.entry(v).or_default() += 1.0;
        }
        let mut patterns: Vec<(u64, f64)> = counts.into_iter().collect();
        patterns.sort_unstable_by_key(|p| p.0);
        let (sessions, candidate_match_share) = model.estimate_m_and_prior(
            &patterns,
            &active_fields(&data.store),
            data.store.rows.len(),
            settings.em_max_iterations,
        );
        TrainingReport {
            u_sample_pairs,
            sessions,
            candidate_match_share,
            matches_per_record: model.matches_per_record,
        }
    });
    trace.phase("training");
    let weights = model.weights();
    let counts = non_null(&data.store);
    let review = model.thresholds.review;
    let prior = weights.prior_weight(data.store.rows.len());
    let mut scored: Vec<ScoredPair> = pairs
        .iter()
        .zip(&vectors)
        .filter_map(|(&(a, b), &v)| {
            let levels: Levels = unpack(v);
            let weight = weights.match_weight(prior, &levels, &data.store.view(&data.store.rows[b as usize]), &counts);
            let p = probability(weight);
            (p >= review).then_some(ScoredPair {
                a,
                b,
                weight,
                probability: p,
            })
        })
        .collect();
    scored.sort_unstable_by(|x, y| y.weight.total_cmp(&x.weight).then((x.a, x.b).cmp(&(y.a, y.b))));
    trace.phase("scoring");
    let (cluster_of, guarded_pairs) = cluster(
        data.store.rows.len(),
        &scored,
        model.thresholds.merge,
        settings.max_cluster_size,
    );
    BatchOutcome {
        candidates: pairs,
        skipped_blocks,
        training,
        model,
        scored,
        cluster_of,
        guarded_pairs,
    }
}

/// Explanation of one scored pair (for `--explain` style output and tests).
pub(crate) fn explain(data: &Dataset, weights: &Weights, a: u32, b: u32) -> crate::Explanation {
    let (va, vb) = (
        data.store.view(&data.store.rows[a as usize]),
        data.store.view(&data.store.rows[b as usize]),
    );
    weights.explain(
        weights.prior_weight(data.store.rows.len()),
        &compare(&va, &vb),
        &vb,
        &non_null(&data.store),
    )
}

/// Connected components over pairs at or above `merge` (best first); a union
/// that would exceed `max_size` records is refused and counted.
pub(crate) fn cluster(n: usize, scored: &[ScoredPair], merge: f64, max_size: usize) -> (Vec<u32>, usize) {
    let mut parent: Vec<u32> = (0..n as u32).collect();
    let mut size = vec![1u32; n];
    fn find(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            let up = parent[parent[x as usize] as usize];
            parent[x as usize] = up;
            x = up;
        }
        x
    }
    let mut refused = 0;
    for p in scored.iter().filter(|p| p.probability >= merge) {
        let (ra, rb) = (find(&mut parent, p.a), find(&mut parent, p.b));
        if ra == rb {
            continue;
        }
        if (size[ra as usize] + size[rb as usize]) as usize > max_size {
            refused += 1;
            continue;
        }
        let (big, small) = if size[ra as usize] >= size[rb as usize] {
            (ra, rb)
        } else {
            (rb, ra)
        };
        parent[small as usize] = big;
        size[big as usize] += size[small as usize];
    }
    let roots: Vec<u32> = (0..n as u32).map(|x| find(&mut parent, x)).collect();
    (roots, refused)
}

/// Phase timings on stderr when `MATCHING_TRACE` is set (for tuning).
pub(crate) struct Trace(Option<std::cell::Cell<std::time::Instant>>);

impl Trace {
    pub fn new() -> Self {
        Trace(std::env::var_os("MATCHING_TRACE").map(|_| std::cell::Cell::new(std::time::Instant::now())))
    }

    pub fn phase(&self, name: &str) {
        if let Some(start) = &self.0 {
            let now = std::time::Instant::now();
            eprintln!("phase {name:<10} {:>8.3} s", (now - start.get()).as_secs_f64());
            start.set(now);
        }
    }
}
