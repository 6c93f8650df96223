//! `crm`: the composition root and CLI. It wires the crates together and owns no
//! business logic: serve, demo, replay, bench, dedup, import, config.

mod admin;
mod bench;
mod config;
mod demo;
mod node;
mod offline;
mod replay;
mod telemetry;

use std::path::PathBuf;

// jemalloc: every thread allocates and frees what others allocated (the domain's events are
// freed by the store's writer, the log's records by the projector). Measured, 1M-row import in
// alternating runs: 70.3–76.5 s and 117–128 s of CPU against 79.4–88.0 s and 134–151 s with
// mimalloc v3 (whose malloc and cross-thread frees were ~14% of all samples), the same peak RSS.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options unless `_RJEM_MALLOC_CONF` says otherwise: four arenas instead of one
/// per thread up to 4 × cores (8 here); a thread's freed memory waits for reuse by the threads
/// of its own arena only. Measured, 1M-row import, the same binary with `narenas` set
/// alternately: peak RSS 418–424 MiB with four against 422–456 MiB with eight, the
/// projector's CPU per CPU-second of the store's writer the same (1.10–1.20 against
/// 1.13–1.21); two arenas gave 411–416 MiB but made the projector ~7% dearer (1.23–1.28).
///
/// Freed pages go back to the system after 2 s instead of jemalloc's 10 s: with 10 s, a
/// 1M-row import peaked at 419–436 MiB in most runs but 449–485 MiB in about one run in
/// four (more freed memory still resident; 485 MiB is over 500 MB); with 2 s, 410–423 MiB
/// in eight runs, for ~2% more CPU (three pairs alternating: 79.3–83.9 s against 74.4–82.6 s).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Option<&'static std::ffi::c_char> = Some(unsafe { &*c"narenas:4,dirty_decay_ms:2000".as_ptr() });

use clap::{Parser, Subcommand};

use crate::config::{BusKind, Config, StoreKind};
use crate::node::Role;

#[derive(Parser)]
#[command(name = "crm", version, about = "Event-sourced multi-channel customer platform")]
struct Cli {
    /// Config file (TOML); see deploy/crm.example.toml. Environment: CRM__SECTION__KEY overrides.
    #[arg(long, global = true, env = "CRM_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory for the embedded bus, store and views (overrides data_dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: channel endpoints, domain, projections and GraphQL.
    Serve {
        /// Roles to run in this process (repeatable).
        #[arg(long = "role", value_enum, default_values_t = [Role::All])]
        roles: Vec<Role>,
        /// Address to listen on (overrides http.listen).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Bus implementation (overrides bus.kind).
        #[arg(long, value_enum)]
        bus: Option<BusKind>,
        /// Event store implementation (overrides store.kind).
        #[arg(long, value_enum)]
        store: Option<StoreKind>,
    },
    /// Post a small realistic data set to a running server and print queries to try.
    Demo {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
    },
    /// Rebuild every view from position zero into a fresh store and check it equals the live one.
    Replay,
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Deduplicate (or link) CSV records in batch with the matching engine.
    Dedup(matching::cli::DedupArgs),
    /// Import a spreadsheet or marketplace export (CSV, XLSX, XLS) into the data directory.
    Import(ingest::import::ImportArgs),
    /// Inspect and replay rejected requests (and, with --dead-letters, poison bus messages).
    #[command(subcommand)]
    Quarantine(offline::QuarantineCommand),
    /// Print the effective configuration (defaults + file + environment) as TOML.
    Config,
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    Ok(config)
}

/// No transparent huge pages for this process: the allocator's arenas are madvised for
/// them, and a 2 MiB page faulted in for a few live objects inflated resident memory
/// (measured: a 200k-row import peaked at 698 MiB with them, 631 MiB without, as fast) and its
/// zeroing showed up in profiles.
fn no_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE only sets this process's huge-page policy; no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        // Old kernels lack the option: memory use is then only higher, nothing breaks.
        eprintln!(
            "note: cannot disable transparent huge pages: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    // kurrentdb and reqwest both bring rustls: pick one crypto provider before any TLS client exists.
    store::kurrent::install_tls_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", causes_once(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each joined with ": " unless what is printed already says it
/// (many of our errors put their cause in their own message, where a job's status or a log
/// line, which keep only the message, still show it).
fn causes_once(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve {
            roles,
            listen,
            bus,
            store,
        } => {
            let mut config = load_config(&cli)?;
            if let Some(l) = listen {
                config.http.listen = *l;
            }
            if let Some(b) = bus {
                config.bus.kind = *b;
            }
            if let Some(s) = store {
                config.store.kind = *s;
            }
            config.validate()?;
            telemetry::init_logging(&config.log);
            let metrics = telemetry::init_metrics()?;
            let node = node::Node::open(config).await?;
            node::serve(node, roles, metrics, node::shutdown_signal()).await
        }
        Command::Demo { url } => demo::run(url).await,
        Command::Replay => {
            let config = load_config(&cli)?;
            telemetry::init_logging(&config.log);
            replay::run(config).await
        }
        Command::Bench(cmd) => {
            // A benchmark starts from nothing, in a temporary directory; the option would be ignored.
            if let Some(dir) = &cli.data_dir {
                anyhow::bail!(
                    "--data-dir {} does not apply to a benchmark: it runs in a fresh temporary \
                     directory (`crm bench import --keep DIR` imports into DIR and keeps it)",
                    dir.display()
                );
            }
            let config = load_config(&cli)?;
            bench::run(cmd, config).await
        }
        Command::Dedup(args) => {
            let args = args.clone();
            tokio::task::spawn_blocking(move || matching::cli::run(&args)).await??;
            Ok(())
        }
        Command::Import(args) => {
            let config = load_config(&cli)?;
            // The progress bar and the summary are the output; logs only when something is wrong.
            let mut log = config.log.clone();
            if log.filter == "info" {
                log.filter = "warn".into();
            }
            telemetry::init_logging(&log);
            offline::import(args, config).await
        }
        Command::Quarantine(cmd) => {
            let config = load_config(&cli)?;
            offline::quarantine(cmd, config).await
        }
        Command::Config => {
            let config = load_config(&cli)?;
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that puts its cause in its message and returns it as its source too.
    #[derive(Debug)]
    struct SaysItsCause {
        path: &'static str,
        source: std::io::Error,
    }

    impl std::fmt::Display for SaysItsCause {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read {}: {}; check the path", self.path, self.source)
        }
    }

    impl std::error::Error for SaysItsCause {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let inline = anyhow::Error::from(SaysItsCause {
            path: "/x.csv",
            source: io(),
        });
        assert_eq!(causes_once(&inline), "cannot read /x.csv: no such file; check the path");
        let context = anyhow::Error::from(io()).context("loading the config");
        assert_eq!(causes_once(&context), "loading the config: no such file");
    }
}
