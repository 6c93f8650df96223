//! `crm bench ...`: benchmarks that print figures. `bench ingest` starts a
//! server in this process (embedded bus and store in a temporary directory,
//! loopback only) unless `--url` points at one, then drives web forms over HTTP:
//! 1. throughput: N forms from C concurrent clients, timed until all are visible in GraphQL;
//! 2. latency: forms at a fixed rate, each timed from submit to visible in GraphQL.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

use crate::config::Config;

#[derive(clap::Subcommand, Clone)]
pub enum BenchCommand {
    /// Web forms over HTTP: sustained forms/s and submit-to-visible latency.
    Ingest(IngestBench),
    /// A generated trade-show CSV imported end to end into the views: time, rows/s, peak RSS.
    Import(ImportBench),
}

#[derive(clap::Args, Clone)]
pub struct ImportBench {
    /// Rows in the generated file.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Share of rows that repeat an earlier person (with typos and other spellings).
    #[arg(long, default_value_t = 0.1)]
    dup_rate: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Import into this data directory and keep it (to inspect or `crm replay` afterwards);
    /// by default a temporary one that is deleted.
    #[arg(long)]
    keep: Option<std::path::PathBuf>,
    /// Runs, one after another, each in a process of its own; then the fastest, median and
    /// slowest of their figures (a shared host's speed drifts: one run says little).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// Where a run writes its figures as JSON (for `--repeat`).
    #[arg(long, hide = true)]
    result_json: Option<std::path::PathBuf>,
}

/// One import run's figures, as a run started by `--repeat` hands them back.
#[derive(serde::Serialize, serde::Deserialize)]
struct ImportFigures {
    rows: u64,
    seconds: f64,
    peak_rss_bytes: u64,
    /// User and system time; `None` where the platform does not tell.
    cpu_seconds: Option<f64>,
}

#[derive(clap::Args, Clone)]
pub struct IngestBench {
    /// A running server to drive; without it one is started here on a free loopback port.
    #[arg(long)]
    url: Option<String>,
    /// Forms sent in the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    forms: usize,
    /// Concurrent HTTP clients in the throughput phase.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Forms per second in the latency phase.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bus of the server started here: embedded, or kafka (bus.kafka from the config; a fresh
    /// topic prefix per run).
    #[arg(long, value_enum, default_value = "embedded")]
    bus: crate::config::BusKind,
}

pub async fn run(cmd: &BenchCommand, config: Config) -> anyhow::Result<()> {
    let bench = async {
        match cmd {
            BenchCommand::Ingest(b) => ingest(b, config).await,
            BenchCommand::Import(b) => import(b, config).await,
        }
    };
    // Ctrl-C or SIGTERM drops the benchmark, and with it its temporary directory: a
    // million-row import's generated file, bus, store and views take ~7 GB there.
    // The handlers are installed before the benchmark's first poll, which runs the
    // generator synchronously and opens the stores before it first yields.
    let interrupted = crate::node::shutdown_signal();
    tokio::select! {
        biased;
        _ = interrupted => {
            anyhow::bail!("benchmark interrupted; its temporary files were removed (a --keep directory is left as it was)")
        }
        result = bench => result,
    }
}

async fn import(b: &ImportBench, mut config: Config) -> anyhow::Result<()> {
    if b.repeat > 1 {
        return repeat(b).await;
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("visitors.csv");
    let generated = std::time::Instant::now();
    ingest::import::generate(b.rows, b.dup_rate, b.seed, &file)?;
    println!(
        "generated {} rows ({:.0} MiB, {:.0}% duplicates) in {:.1} s",
        b.rows,
        mib(std::fs::metadata(&file)?.len()),
        b.dup_rate * 100.0,
        generated.elapsed().as_secs_f64()
    );
    config.data_dir = b.keep.clone().unwrap_or_else(|| dir.path().join("data"));
    let started = Instant::now();
    // The generator's CPU is not the import's.
    let cpu_before = matching::cli::cpu_seconds();
    let threads = ThreadUsage::start();
    let mut options = ingest::import::ImportOptions::new(&file);
    options.template = Some("trade-show".into());
    options.error_report = Some(dir.path().join("errors.csv"));
    let (summary, phases) =
        crate::offline::import_into_views(options, config, &ingest::import::TerminalProgress::new()).await?;
    let elapsed = started.elapsed();
    let peak_rss = matching::cli::peak_rss_bytes().unwrap_or(0);
    println!("{summary}");
    println!(
        "bench import: {} rows end to end into the views in {:.1} s = {:.0} rows/s; peak RSS {:.0} MiB",
        summary.rows_read,
        elapsed.as_secs_f64(),
        summary.rows_read as f64 / elapsed.as_secs_f64(),
        mib(peak_rss)
    );
    let mut cpu_seconds = None;
    if let (Some((user, system)), Some((user0, system0))) = (matching::cli::cpu_seconds(), cpu_before) {
        let (user, system) = (user - user0, system - system0);
        cpu_seconds = Some(user + system);
        println!(
            "  CPU {user:.1} s user + {system:.1} s system = {:.2} cores busy on average",
            (user + system) / elapsed.as_secs_f64()
        );
    }
    let by_thread = threads.finish().await;
    if !by_thread.is_empty() {
        let list: Vec<String> = by_thread
            .iter()
            .map(|(name, u)| format!("{name} {:.1} s", u.cpu))
            .collect();
        println!("  CPU by thread: {}", list.join(", "));
        let mb = |bytes: u64| bytes as f64 / 1e6;
        let list: Vec<String> = by_thread
            .iter()
            .filter(|(_, u)| u.read + u.written >= 1_000_000)
            .map(|(name, u)| format!("{name} {:.0}/{:.0} MB", mb(u.read), mb(u.written)))
            .collect();
        if !list.is_empty() {
            println!(
                "  I/O by thread (read/written by system calls, page cache included): {}",
                list.join(", ")
            );
        }
    }
    println!(
        "  phases: rows published at {:.1} s, identities resolved at {:.1} s, views caught up at {:.1} s",
        phases.published.as_secs_f64(),
        phases.resolved.as_secs_f64(),
        phases.projected.as_secs_f64()
    );
    if let Some(path) = &b.result_json {
        let figures = ImportFigures {
            rows: summary.rows_read,
            seconds: elapsed.as_secs_f64(),
            peak_rss_bytes: peak_rss,
            cpu_seconds,
        };
        std::fs::write(path, serde_json::to_vec(&figures)?)
            .with_context(|| format!("cannot write this run's figures to {}", path.display()))?;
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// `--repeat N`: this command again N times, each in a process of its own (a fresh heap, so
/// each peak RSS is its own run's) with its output shown as it comes, then a summary.
async fn repeat(b: &ImportBench) -> anyhow::Result<()> {
    if b.keep.is_some() {
        anyhow::bail!("--keep keeps one run's data directory: use it without --repeat");
    }
    let exe = std::env::current_exe().context("cannot find this program to run it again")?;
    let args = without_repeat(std::env::args_os().skip(1));
    // The runs' temporary directories go in this one, so an interrupted series leaves nothing.
    let dir = tempfile::tempdir()?;
    let mut runs = Vec::new();
    for i in 1..=b.repeat {
        println!("run {i} of {}", b.repeat);
        let json = dir.path().join(format!("run-{i}.json"));
        let status = tokio::process::Command::new(&exe)
            .args(&args)
            .arg("--result-json")
            .arg(&json)
            .env("TMPDIR", dir.path())
            .kill_on_drop(true)
            .status()
            .await
            .context("cannot start a run")?;
        anyhow::ensure!(
            status.success(),
            "run {i} of {} failed ({status}); its output is above",
            b.repeat
        );
        let figures: ImportFigures = serde_json::from_slice(&std::fs::read(&json)?)
            .with_context(|| format!("run {i} left unreadable figures in {}", json.display()))?;
        runs.push(figures);
    }
    println!("{}", repeat_summary(&runs));
    Ok(())
}

/// The program's arguments without `--repeat N` (or `--repeat=N`).
fn without_repeat(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        match arg.to_str() {
            Some("--repeat") => skip_value = true,
            Some(a) if a.starts_with("--repeat=") => {}
            _ => out.push(arg),
        }
    }
    out
}

/// Fastest, median and slowest of each figure over the runs.
fn repeat_summary(runs: &[ImportFigures]) -> String {
    let spread = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n.is_multiple_of(2) {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        } else {
            v[n / 2]
        };
        (v[0], median, v[n - 1])
    };
    let (fast, median, slow) = spread(runs.iter().map(|r| r.seconds).collect());
    let rows = runs[0].rows as f64;
    let (low, mid, high) = spread(runs.iter().map(|r| mib(r.peak_rss_bytes)).collect());
    let mut out = format!(
        "bench import, {} runs of {} rows: {fast:.1} / {median:.1} / {slow:.1} s (fastest / median / slowest) \
         = {:.0} / {:.0} / {:.0} rows/s; peak RSS {low:.0} / {mid:.0} / {high:.0} MiB (lowest / median / highest)",
        runs.len(),
        runs[0].rows,
        rows / fast,
        rows / median,
        rows / slow,
    );
    let cpu: Vec<f64> = runs.iter().filter_map(|r| r.cpu_seconds).collect();
    if cpu.len() == runs.len() {
        let (least, mid, most) = spread(cpu);
        out.push_str(&format!(
            "; CPU {least:.1} / {mid:.1} / {most:.1} s (least / median / most)"
        ));
    }
    out
}

/// CPU seconds and I/O of this process's threads by name while a benchmark runs, from
/// `/proc/self/task` (Linux; elsewhere nothing). Sampled every 250 ms, so a thread that ends
/// keeps its last sample; threads of one name are summed (`tokio-rt-worker`: the domain,
/// the HTTP side and the projector's reads; `projector`: applying views; `store-writer`;
/// `bus-writer`). Less noisy than wall time for comparing two builds on a busy host. The
/// I/O is what the threads passed to `read`/`write` system calls (`rchar`/`wchar`), whether
/// the page cache answered or the disk: how much redb's small caches make each thread copy.
struct ThreadUsage {
    before: HashMap<u32, Usage>,
    seen: Arc<std::sync::Mutex<HashMap<u32, (String, Usage)>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    sampler: tokio::task::JoinHandle<()>,
}

/// What one thread (or the threads of one name) used.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Usage {
    /// User + system CPU seconds.
    cpu: f64,
    /// Bytes read and written by system calls.
    read: u64,
    written: u64,
}

impl ThreadUsage {
    fn start() -> Self {
        let before = thread_usage().into_iter().map(|(tid, _, usage)| (tid, usage)).collect();
        let seen = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let into = seen.clone();
        let sampler = tokio::spawn(async move {
            loop {
                sample(&mut into.lock().unwrap_or_else(|p| p.into_inner()));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = &mut stopped => return,
                }
            }
        });
        ThreadUsage {
            before,
            seen,
            stop,
            sampler,
        }
    }

    /// Use by thread name since `start`, most CPU first (names under 0.1 s left out).
    async fn finish(self) -> Vec<(String, Usage)> {
        let _ = self.stop.send(());
        let _ = self.sampler.await;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        sample(&mut seen);
        let mut by_name: HashMap<String, Usage> = HashMap::new();
        for (tid, (name, now)) in seen {
            let before = self.before.get(&tid).copied().unwrap_or_default();
            let total = by_name.entry(name).or_default();
            total.cpu += now.cpu - before.cpu;
            total.read += now.read.saturating_sub(before.read);
            total.written += now.written.saturating_sub(before.written);
        }
        let mut list: Vec<(String, Usage)> = by_name.into_iter().filter(|(_, u)| u.cpu >= 0.1).collect();
        list.sort_by(|a, b| b.1.cpu.total_cmp(&a.1.cpu).then_with(|| a.0.cmp(&b.0)));
        list
    }
}

/// Records each live thread's name and use so far, by thread id.
fn sample(seen: &mut HashMap<u32, (String, Usage)>) {
    for (tid, name, usage) in thread_usage() {
        seen.insert(tid, (name, usage));
    }
}

/// (thread id, name, use so far) of each live thread of this process; I/O 0 where
/// `/proc/self/task/<tid>/io` cannot be read.
fn thread_usage() -> Vec<(u32, String, Usage)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // `tid (name) state …`: the name may hold spaces and parentheses.
            let name = stat.rsplit_once(") ")?.0.split_once(" (")?.1.to_string();
            let (user, system) = matching::cli::stat_cpu_seconds(&stat)?;
            let io = std::fs::read_to_string(task.path().join("io")).unwrap_or_default();
            let (read, written) = io_chars(&io);
            Some((
                tid,
                name,
                Usage {
                    cpu: user + system,
                    read,
                    written,
                },
            ))
        })
        .collect()
}

/// `rchar` and `wchar` of a `/proc/<pid>/task/<tid>/io` text (0 for a field missing).
fn io_chars(io: &str) -> (u64, u64) {
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("rchar:"), field("wchar:"))
}

/// A server started for the benchmark; stops when dropped.
struct LocalServer {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start_local(mut config: Config, bus: crate::config::BusKind) -> anyhow::Result<LocalServer> {
    let dir = tempfile::tempdir()?;
    config.data_dir = dir.path().to_path_buf();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    config.http.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    config.bus.kind = bus;
    config.bus.kafka.topic_prefix = format!("crm-bench-{:x}.", rand::random::<u32>());
    config.store.kind = crate::config::StoreKind::Embedded;
    let metrics = crate::telemetry::init_metrics()?;
    let node = crate::node::Node::open(config).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        crate::node::serve(node, &[crate::node::Role::All], metrics, async move {
            let _ = rx.await;
        })
        .await
    });
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("{url}/readyz"))
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
    {
        if Instant::now() > deadline {
            anyhow::bail!("the benchmark server did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(LocalServer {
        url,
        stop: Some(tx),
        task,
        _dir: dir,
    })
}

fn form_body(run: &str, i: usize) -> (String, String) {
    let email = format!("bench{i}.{run}@example.com");
    let body = serde_urlencoded::to_string([
        ("name", format!("压测用户{i}")),
        ("phone", format!("139{:08}", i % 100_000_000)),
        ("email", email.clone()),
        ("utm_source", "bench".to_string()),
    ])
    .unwrap_or_default();
    (email, body)
}

async fn post_form(client: &reqwest::Client, url: &str, body: String) -> anyhow::Result<()> {
    let resp = client
        .post(format!("{url}/v1/channels/web-form/bench"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?;
    if resp.status() != reqwest::StatusCode::ACCEPTED {
        anyhow::bail!(
            "form answered {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// Which of these emails are visible in GraphQL (one aliased query).
async fn visible(client: &reqwest::Client, url: &str, emails: &[String]) -> anyhow::Result<Vec<bool>> {
    let mut q = String::from("{");
    for (i, e) in emails.iter().enumerate() {
        q.push_str(&format!(
            " q{i}: customerByIdentifier(kind: \"email\", value: \"{e}\") {{ id }}"
        ));
    }
    q.push('}');
    let resp: serde_json::Value = client
        .post(format!("{url}/graphql"))
        .json(&serde_json::json!({ "query": q }))
        .send()
        .await?
        .json()
        .await?;
    let data = &resp["data"];
    Ok((0..emails.len()).map(|i| !data[format!("q{i}")].is_null()).collect())
}

async fn ingest(b: &IngestBench, config: Config) -> anyhow::Result<()> {
    let local = match &b.url {
        Some(_) => None,
        None => Some(
            start_local(config, b.bus)
                .await
                .context("cannot start the benchmark server")?,
        ),
    };
    let url = b
        .url
        .clone()
        .or_else(|| local.as_ref().map(|l| l.url.clone()))
        .unwrap_or_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(b.concurrency.max(16))
        .build()?;
    let run_id = format!("{:x}", rand::random::<u32>());
    println!("bench ingest against {url} (run {run_id}, {:?} bus)", b.bus);

    // Phase 1: throughput.
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..b.concurrency {
        let (client, url, next, run_id, n) = (client.clone(), url.clone(), next.clone(), run_id.clone(), b.forms);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                post_form(&client, &url, form_body(&run_id, i).1).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let accepted_in = started.elapsed();
    let last = form_body(&run_id, b.forms - 1).0;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let all: Vec<String> = (0..b.forms)
            .rev()
            .step_by((b.forms / 50).max(1))
            .map(|i| form_body(&run_id, i).0)
            .collect();
        if visible(&client, &url, std::slice::from_ref(&last)).await?[0]
            && visible(&client, &url, &all).await?.iter().all(|v| *v)
        {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("forms were not all visible within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let visible_in = started.elapsed();
    println!(
        "throughput: {} forms, {} clients: accepted (202) at {:.0} forms/s; all visible in GraphQL after {:.2} s = {:.0} forms/s sustained",
        b.forms,
        b.concurrency,
        b.forms as f64 / accepted_in.as_secs_f64(),
        visible_in.as_secs_f64(),
        b.forms as f64 / visible_in.as_secs_f64()
    );

    // Phase 2: latency at a fixed rate.
    let total = (b.rate * b.seconds) as usize;
    let pending: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let accept_hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let visible_hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let done = Arc::new(AtomicU64::new(0));
    let lat_run = format!("{run_id}l");
    let watcher = {
        let (client, url, pending, visible_hist, done) = (
            client.clone(),
            url.clone(),
            pending.clone(),
            visible_hist.clone(),
            done.clone(),
        );
        tokio::spawn(async move {
            while (done.load(Ordering::Relaxed) as usize) < total {
                let batch: Vec<(String, Instant)> = pending
                    .lock()
                    .await
                    .iter()
                    .take(200)
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let emails: Vec<String> = batch.iter().map(|(e, _)| e.clone()).collect();
                let seen = visible(&client, &url, &emails).await?;
                let now = Instant::now();
                let mut p = pending.lock().await;
                let mut h = visible_hist.lock().await;
                for ((email, at), seen) in batch.into_iter().zip(seen) {
                    if seen {
                        p.remove(&email);
                        h.record(now.duration_since(at).as_micros() as u64)?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop((p, h));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / b.rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut senders = tokio::task::JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        let (client, url, pending, accept_hist) = (client.clone(), url.clone(), pending.clone(), accept_hist.clone());
        let (email, body) = form_body(&lat_run, i);
        senders.spawn(async move {
            let at = Instant::now();
            post_form(&client, &url, body).await?;
            accept_hist.lock().await.record(at.elapsed().as_micros() as u64)?;
            pending.lock().await.insert(email, at);
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = senders.join_next().await {
        r??;
    }
    tokio::time::timeout(Duration::from_secs(120), watcher)
        .await
        .context("forms of the latency phase were not all visible within 120 s")???;
    let a = accept_hist.lock().await;
    let v = visible_hist.lock().await;
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "latency at {} forms/s for {} s: submit→202 p50 {:.1} ms p99 {:.1} ms; submit→visible in GraphQL p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        b.rate,
        b.seconds,
        ms(a.value_at_quantile(0.5)),
        ms(a.value_at_quantile(0.99)),
        ms(v.value_at_quantile(0.5)),
        ms(v.value_at_quantile(0.99)),
        ms(v.max())
    );
    if let Some(mut l) = local {
        if let Some(stop) = l.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut l.task).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_run_drops_only_the_repeat_option() {
        let args = |list: &[&str]| list.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            without_repeat(
                args(&[
                    "--config",
                    "c.toml",
                    "bench",
                    "import",
                    "--repeat",
                    "3",
                    "--rows",
                    "10",
                    "--repeat=2"
                ])
                .into_iter()
            ),
            args(&["--config", "c.toml", "bench", "import", "--rows", "10"])
        );
    }

    #[test]
    fn a_summary_of_runs_gives_fastest_median_and_slowest() {
        let run = |seconds: f64, rss_mib: u64, cpu: f64| ImportFigures {
            rows: 1000,
            seconds,
            peak_rss_bytes: rss_mib << 20,
            cpu_seconds: Some(cpu),
        };
        let two = repeat_summary(&[run(2.0, 300, 3.0), run(1.0, 310, 2.0)]);
        assert!(
            two.contains(": 1.0 / 1.5 / 2.0 s"),
            "an even count's median is the middle two's mean: {two}"
        );
        let summary = repeat_summary(&[run(2.0, 300, 3.0), run(1.0, 310, 2.0), run(4.0, 290, 5.0)]);
        assert_eq!(
            summary,
            "bench import, 3 runs of 1000 rows: 1.0 / 2.0 / 4.0 s (fastest / median / slowest) = 1000 / 500 / 250 \
             rows/s; peak RSS 290 / 300 / 310 MiB (lowest / median / highest); CPU 2.0 / 3.0 / 5.0 s (least / \
             median / most)"
        );
    }

    #[test]
    fn io_chars_reads_rchar_and_wchar_of_a_task_io_file() {
        let io = "rchar: 3460012345\nwchar: 5874000001\nsyscr: 12\nsyscw: 1435049\n\
                  read_bytes: 0\nwrite_bytes: 3235000000\ncancelled_write_bytes: 0\n";
        assert_eq!(io_chars(io), (3_460_012_345, 5_874_000_001));
        assert_eq!(io_chars(""), (0, 0), "an unreadable file counts nothing");
    }
}
