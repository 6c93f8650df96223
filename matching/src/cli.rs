//! `crm dedup`: the batch command's arguments, its report, and [`run`], which
//! reads CSV, trains and applies the model, writes pairs and clusters, and
//! scores the result against a truth file when one is given. The truth is
//! read only after matching, for scoring.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::batch::{BatchOutcome, BatchSettings, Dataset, explain, run_batch};
use crate::train::TrainingReport;
use crate::{MatchError, Model};

/// Which predicted pairs are scored against the truth (and written).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum PairSource {
    /// Every pair inside a cluster (connected components of accepted pairs).
    Clusters,
    /// Only pairs whose own probability passes the merge threshold.
    Pairs,
}

/// Arguments of `crm dedup`.
#[derive(Clone, Debug, clap::Args)]
pub struct DedupArgs {
    /// CSV file with a header row (the left file in link mode).
    pub input: PathBuf,
    /// Second CSV file: link records across the two files instead of deduplicating one.
    #[arg(long)]
    pub link: Option<PathBuf>,
    /// Column holding the record id (opaque; never used for matching).
    #[arg(long, default_value = "id")]
    pub id_column: String,
    /// Known matches (CSV id_a,id_b): print precision, recall and F1.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Columns to ignore, comma-separated (e.g. soc_sec_id).
    #[arg(long, value_delimiter = ',')]
    pub exclude_columns: Vec<String>,
    /// Write scored pairs (id_a,id_b,match_probability,match_weight,decision,evidence).
    #[arg(long)]
    pub out_pairs: Option<PathBuf>,
    /// Write clusters (cluster_id,id), one line per record.
    #[arg(long)]
    pub out_clusters: Option<PathBuf>,
    /// Use this model (JSON from --out-model) instead of training on the input.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Write the trained model as JSON.
    #[arg(long)]
    pub out_model: Option<PathBuf>,
    /// Merge when the match probability is at least this.
    #[arg(long)]
    pub merge_threshold: Option<f64>,
    /// Send to review when the match probability is at least this (and below merge).
    #[arg(long)]
    pub review_threshold: Option<f64>,
    /// Largest cluster the batch may build; larger unions are left for review.
    #[arg(long, default_value_t = 50)]
    pub max_cluster_size: usize,
    /// Skip blocking keys shared by more records than this.
    #[arg(long, default_value_t = 200)]
    pub max_block_size: usize,
    /// Comparison budget per record: the least selective blocks are skipped beyond it.
    #[arg(long, default_value_t = 20)]
    pub max_pairs_per_record: usize,
    /// Random pairs compared per field to estimate u.
    #[arg(long, default_value_t = 20_000)]
    pub u_sample_pairs: usize,
    /// Which pairs are scored against --truth and written to --out-pairs as merges.
    #[arg(long, value_enum, default_value = "clusters")]
    pub evaluate: PairSource,
    /// Do not print the report.
    #[arg(long)]
    pub quiet: bool,
    /// With --truth: print every missed and every false pair with its per-field evidence, and
    /// the trained model (error analysis; the truth is never used for matching).
    #[arg(long)]
    pub explain_errors: bool,
}

impl DedupArgs {
    /// Arguments for one input file with defaults for everything else.
    pub fn for_file(input: impl Into<PathBuf>) -> Self {
        DedupArgs {
            input: input.into(),
            link: None,
            id_column: "id".into(),
            truth: None,
            exclude_columns: Vec::new(),
            out_pairs: None,
            out_clusters: None,
            model: None,
            out_model: None,
            merge_threshold: None,
            review_threshold: None,
            max_cluster_size: 50,
            max_block_size: 200,
            max_pairs_per_record: 20,
            u_sample_pairs: 20_000,
            evaluate: PairSource::Clusters,
            quiet: true,
            explain_errors: false,
        }
    }
}

/// Precision and recall of predicted pairs against the truth.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PairMetrics {
    pub true_pairs: usize,
    pub predicted_pairs: usize,
    pub true_positives: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl PairMetrics {
    fn new(true_pairs: usize, predicted_pairs: usize, true_positives: usize) -> Self {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (precision, recall) = (
            ratio(true_positives, predicted_pairs),
            ratio(true_positives, true_pairs),
        );
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        PairMetrics {
            true_pairs,
            predicted_pairs,
            true_positives,
            precision,
            recall,
            f1,
        }
    }
}

/// What `crm dedup` did.
#[derive(Clone, Debug, Serialize)]
pub struct DedupReport {
    pub records: usize,
    pub candidate_pairs: usize,
    pub skipped_blocks: usize,
    /// Pairs whose own probability passes the merge threshold.
    pub merge_pairs: usize,
    /// Pairs in the review band.
    pub review_pairs: usize,
    /// Clusters with more than one record.
    pub clusters: usize,
    /// Pairs inside clusters.
    pub cluster_pairs: usize,
    /// Accepted pairs the cluster size guard refused.
    pub guarded_pairs: usize,
    pub training: Option<TrainingReport>,
    /// Which of the metrics below is the headline.
    pub evaluate: PairSource,
    /// Direct pairs scored against the truth.
    pub pair_metrics: Option<PairMetrics>,
    /// Cluster-expanded pairs scored against the truth.
    pub cluster_metrics: Option<PairMetrics>,
    /// True pairs that no blocking key brought together (diagnostic).
    pub blocking_recall: Option<f64>,
    pub wall_time: Duration,
    pub peak_rss_bytes: Option<u64>,
}

impl std::fmt::Display for DedupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "records            {}", self.records)?;
        writeln!(
            f,
            "candidate pairs    {} ({} oversized blocks skipped)",
            self.candidate_pairs, self.skipped_blocks
        )?;
        if let Some(t) = &self.training {
            writeln!(
                f,
                "training           u from {} random pairs; matches among candidates {:.4}, duplicates per record {:.4}",
                t.u_sample_pairs, t.candidate_match_share, t.matches_per_record
            )?;
            for s in &t.sessions {
                writeln!(
                    f,
                    "  EM on {:<24} {} pairs, {} iterations{}, match share {:.4}",
                    s.rule,
                    s.pairs,
                    s.iterations,
                    if s.converged { "" } else { " (not converged)" },
                    s.match_share
                )?;
            }
        }
        writeln!(f, "merge pairs        {}", self.merge_pairs)?;
        writeln!(f, "review pairs       {}", self.review_pairs)?;
        writeln!(
            f,
            "clusters           {} ({} pairs, {} unions refused by size guard)",
            self.clusters, self.cluster_pairs, self.guarded_pairs
        )?;
        for (name, m, headline) in [
            ("pairs", self.pair_metrics, self.evaluate == PairSource::Pairs),
            ("clusters", self.cluster_metrics, self.evaluate == PairSource::Clusters),
        ] {
            if let Some(m) = m {
                writeln!(
                    f,
                    "{:<18} precision {:.4} recall {:.4} F1 {:.4} (tp {} / predicted {} / true {}){}",
                    format!("eval {name}"),
                    m.precision,
                    m.recall,
                    m.f1,
                    m.true_positives,
                    m.predicted_pairs,
                    m.true_pairs,
                    if headline { " *" } else { "" }
                )?;
            }
        }
        if let Some(r) = self.blocking_recall {
            writeln!(f, "blocking recall    {r:.4}")?;
        }
        writeln!(f, "wall time          {:.3} s", self.wall_time.as_secs_f64())?;
        match self.peak_rss_bytes {
            Some(b) => writeln!(f, "peak RSS           {:.1} MiB", b as f64 / (1024.0 * 1024.0)),
            None => writeln!(f, "peak RSS           unknown"),
        }
    }
}

/// Peak resident set size of this process (VmHWM), where /proc exists.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// User and system CPU seconds this process has used so far, where /proc exists (clock
/// ticks of /proc/self/stat at Linux's 100 a second).
pub fn cpu_seconds() -> Option<(f64, f64)> {
    stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// User and system CPU seconds from the text of a /proc `stat` file (a process's, or a
/// thread's under `/proc/self/task/<tid>/stat`).
pub fn stat_cpu_seconds(stat: &str) -> Option<(f64, f64)> {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).map(|t| t / 100.0);
    Some((ticks(11)?, ticks(12)?))
}

/// Resident set size of this process now (VmRSS), where /proc exists.
pub fn rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// A kB figure of /proc/self/status, in bytes.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn check_probability(name: &'static str, value: f64) -> Result<f64, MatchError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(MatchError::InvalidSetting {
            name,
            value: value.to_string(),
            expected: "a probability between 0 and 1",
        })
    }
}

/// Runs `crm dedup`: match, write outputs, score against the truth, report.
pub fn run(args: &DedupArgs) -> Result<DedupReport, MatchError> {
    let started = Instant::now();
    let trace = crate::batch::Trace::new();
    let mut data = Dataset::default();
    data.load(&args.input, &args.id_column, &args.exclude_columns, 0)?;
    if let Some(second) = &args.link {
        data.load(second, &args.id_column, &args.exclude_columns, 1)?;
    }
    trace.phase("loading");
    let (mut model, train) = match &args.model {
        Some(path) => {
            let json = std::fs::read_to_string(path).map_err(MatchError::io(path))?;
            (Model::from_json(&json)?, false)
        }
        None => (Model::default(), true),
    };
    if let Some(t) = args.merge_threshold {
        model.thresholds.merge = check_probability("--merge-threshold", t)?;
    }
    if let Some(t) = args.review_threshold {
        model.thresholds.review = check_probability("--review-threshold", t)?;
    }
    model.thresholds.review = model.thresholds.review.min(model.thresholds.merge);
    if args.max_cluster_size < 2 {
        return Err(MatchError::InvalidSetting {
            name: "--max-cluster-size",
            value: args.max_cluster_size.to_string(),
            expected: "at least 2",
        });
    }
    let settings = BatchSettings {
        max_block_size: args.max_block_size.max(2),
        max_pairs_per_record: args.max_pairs_per_record.max(1),
        max_cluster_size: args.max_cluster_size,
        u_sample_pairs: args.u_sample_pairs.max(100),
        em_max_iterations: 100,
        link_only: args.link.is_some(),
        train,
        seed: 0x5EED,
    };
    let outcome = run_batch(&data, model, &settings);
    let merge = outcome.model.thresholds.merge;
    let members = cluster_members(&outcome.cluster_of);
    let cluster_pairs: usize = members.values().map(|m| m.len() * (m.len() - 1) / 2).sum();
    if let Some(path) = &args.out_model {
        std::fs::write(path, outcome.model.to_json()).map_err(MatchError::io(path))?;
    }
    if let Some(path) = &args.out_pairs {
        write_pairs(path, &data, &outcome)?;
    }
    if let Some(path) = &args.out_clusters {
        write_clusters(path, &data, &outcome.cluster_of)?;
    }
    let (pair_metrics, cluster_metrics, blocking_recall) = match &args.truth {
        Some(path) => {
            let truth = read_truth(path, &data)?;
            let direct: HashSet<(u32, u32)> = outcome
                .scored
                .iter()
                .filter(|p| p.probability >= merge)
                .map(|p| (p.a, p.b))
                .collect();
            let tp = truth.iter().filter(|p| direct.contains(p)).count();
            let pair_metrics = PairMetrics::new(truth.len(), direct.len(), tp);
            let tp = truth
                .iter()
                .filter(|&&(a, b)| outcome.cluster_of[a as usize] == outcome.cluster_of[b as usize])
                .count();
            let cluster_metrics = PairMetrics::new(truth.len(), cluster_pairs, tp);
            let found = truth
                .iter()
                .filter(|p| outcome.candidates.binary_search(p).is_ok())
                .count();
            if args.explain_errors {
                let w = outcome.model.weights();
                for &(a, b) in &truth {
                    let blocked = outcome.candidates.binary_search(&(a, b)).is_ok();
                    let same = outcome.cluster_of[a as usize] == outcome.cluster_of[b as usize];
                    if !blocked || !same {
                        let e = explain(&data, &w, a, b);
                        eprintln!(
                            "MISS blocked={blocked} {} {} p={:.3} {}",
                            data.ids[a as usize],
                            data.ids[b as usize],
                            e.probability,
                            e.fields
                                .iter()
                                .map(|f| format!("{}={}:{:+.1}", f.field, f.level, f.weight))
                                .collect::<Vec<_>>()
                                .join(" ")
                        );
                    }
                }
                let truth_set: HashSet<(u32, u32)> = truth.iter().copied().collect();
                for p in outcome.scored.iter().filter(|p| p.probability >= merge) {
                    if !truth_set.contains(&(p.a, p.b)) {
                        let e = explain(&data, &w, p.a, p.b);
                        eprintln!(
                            "FP {} {} p={:.3} {}",
                            data.ids[p.a as usize],
                            data.ids[p.b as usize],
                            e.probability,
                            e.fields
                                .iter()
                                .map(|f| format!("{}={}:{:+.1}", f.field, f.level, f.weight))
                                .collect::<Vec<_>>()
                                .join(" ")
                        );
                    }
                }
                eprintln!("{}", outcome.model.to_json());
            }
            let blocking = if truth.is_empty() {
                1.0
            } else {
                found as f64 / truth.len() as f64
            };
            (Some(pair_metrics), Some(cluster_metrics), Some(blocking))
        }
        None => (None, None, None),
    };
    let report = DedupReport {
        records: data.ids.len(),
        candidate_pairs: outcome.candidates.len(),
        skipped_blocks: outcome.skipped_blocks,
        merge_pairs: outcome.scored.iter().filter(|p| p.probability >= merge).count(),
        review_pairs: outcome.scored.iter().filter(|p| p.probability < merge).count(),
        clusters: members.len(),
        cluster_pairs,
        guarded_pairs: outcome.guarded_pairs,
        training: outcome.training.clone(),
        evaluate: args.evaluate,
        pair_metrics,
        cluster_metrics,
        blocking_recall,
        wall_time: started.elapsed(),
        peak_rss_bytes: peak_rss_bytes(),
    };
    if !args.quiet {
        print!("{report}");
    }
    Ok(report)
}

/// Slots per cluster root, for clusters of two or more.
fn cluster_members(cluster_of: &[u32]) -> HashMap<u32, Vec<u32>> {
    let mut members: HashMap<u32, Vec<u32>> = HashMap::new();
    for (slot, &root) in cluster_of.iter().enumerate() {
        members.entry(root).or_default().push(slot as u32);
    }
    members.retain(|_, m| m.len() > 1);
    members
}

fn read_truth(path: &Path, data: &Dataset) -> Result<Vec<(u32, u32)>, MatchError> {
    let mut reader = csv::Reader::from_path(path).map_err(MatchError::csv(path))?;
    let headers = reader.headers().map_err(MatchError::csv(path))?.clone();
    let at = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(ia), Some(ib)) = (at("id_a"), at("id_b")) else {
        return Err(MatchError::BadTruthFile {
            path: path.to_path_buf(),
            available: headers.iter().collect::<Vec<_>>().join(","),
        });
    };
    let slot: HashMap<&str, u32> = data
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i as u32))
        .collect();
    let mut pairs = HashSet::new();
    for row in reader.records() {
        let row = row.map_err(MatchError::csv(path))?;
        let (Some(a), Some(b)) = (
            row.get(ia).and_then(|a| slot.get(a.trim())),
            row.get(ib).and_then(|b| slot.get(b.trim())),
        ) else {
            continue;
        };
        if a != b {
            pairs.insert((*a.min(b), *a.max(b)));
        }
    }
    let mut pairs: Vec<_> = pairs.into_iter().collect();
    pairs.sort_unstable();
    Ok(pairs)
}

fn write_pairs(path: &Path, data: &Dataset, outcome: &BatchOutcome) -> Result<(), MatchError> {
    let file = std::fs::File::create(path).map_err(MatchError::io(path))?;
    let mut out = std::io::BufWriter::new(file);
    let weights = outcome.model.weights();
    let w = |e: std::io::Error| MatchError::Write { source: e };
    writeln!(out, "id_a,id_b,match_probability,match_weight,decision,evidence").map_err(w)?;
    for p in &outcome.scored {
        let decision = if p.probability >= outcome.model.thresholds.merge {
            "merge"
        } else {
            "review"
        };
        let evidence: Vec<String> = explain(data, &weights, p.a, p.b)
            .fields
            .iter()
            .map(|e| format!("{}={}:{:+.1}", e.field, e.level, e.weight))
            .collect();
        writeln!(
            out,
            "{},{},{:.6},{:.3},{decision},{}",
            csv_field(&data.ids[p.a as usize]),
            csv_field(&data.ids[p.b as usize]),
            p.probability,
            p.weight,
            evidence.join(" ")
        )
        .map_err(w)?;
    }
    out.flush().map_err(w)
}

fn write_clusters(path: &Path, data: &Dataset, cluster_of: &[u32]) -> Result<(), MatchError> {
    let file = std::fs::File::create(path).map_err(MatchError::io(path))?;
    let mut out = std::io::BufWriter::new(file);
    let w = |e: std::io::Error| MatchError::Write { source: e };
    writeln!(out, "cluster_id,id").map_err(w)?;
    for (slot, &root) in cluster_of.iter().enumerate() {
        writeln!(
            out,
            "{},{}",
            csv_field(&data.ids[root as usize]),
            csv_field(&data.ids[slot])
        )
        .map_err(w)?;
    }
    out.flush().map_err(w)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
