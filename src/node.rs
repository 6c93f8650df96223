//! Composition: opens the bus, the store and the views from the config, and
//! runs the roles (ingest, domain, projector, api) in this process.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use bus::Bus;
use domain::{CustomerService, DomainConfig, DomainWorker, WorkerConfig};
use projections::{Projector, ViewStore};
use store::EventStore;
use tokio::sync::watch;

use crate::config::{BusKind, Config, StoreKind};

/// A role this process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Channel endpoints: publish inbound events on the bus.
    Ingest,
    /// Identity resolution: bus → event store.
    Domain,
    /// Views: event store → views.
    Projector,
    /// GraphQL over this process's views (it runs a projector to keep them).
    Api,
    /// Everything in one process (the default).
    All,
}

/// What an open node holds.
pub struct Node {
    pub config: Config,
    pub bus: Arc<dyn Bus>,
    pub store: Arc<dyn EventStore>,
    pub views: ViewStore,
    /// sled database for local state that is not views (quarantine, import ledger).
    pub local: sled::Db,
    _lock: File,
}

/// Takes an exclusive lock on the data directory so two processes never write one log.
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let path = dir.join("LOCK");
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another crm process is using data directory {}; stop it, or give this one another --data-dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Page cache of the small sled database for local state (quarantine, import ledger).
const LOCAL_CACHE_BYTES: u64 = 16 << 20;

/// Local state that is not views (quarantine, import ledger) stays on this node in a sled database.
fn open_local_state(config: &Config) -> anyhow::Result<sled::Db> {
    let dir = config.data_dir.join("local");
    sled::Config::new()
        .path(&dir)
        .cache_capacity(LOCAL_CACHE_BYTES)
        .open()
        .with_context(|| {
            format!(
                "cannot open the local state (quarantine, import ledger) at {}",
                dir.display()
            )
        })
}

impl Node {
    pub async fn open(config: Config) -> anyhow::Result<Node> {
        let lock = lock_data_dir(&config.data_dir)?;
        let bus: Arc<dyn Bus> = match config.bus.kind {
            BusKind::Embedded => Arc::new(bus::embedded::EmbeddedBus::open(&config.data_dir.join("bus"))?),
            BusKind::Kafka => Arc::new(bus::kafka::KafkaBus::connect(config.bus.kafka.clone()).await?),
        };
        let store: Arc<dyn EventStore> = match config.store.kind {
            StoreKind::Embedded => Arc::new(store::embedded::EmbeddedStore::open_with_cache(
                &config.data_dir.join("store"),
                config.store.cache_mb << 20,
            )?),
            StoreKind::Eventstoredb => {
                let url = config.store.url.clone().unwrap_or_default();
                Arc::new(
                    store::kurrent::KurrentStore::connect(&url)
                        .await
                        .context("cannot use EventStoreDB/KurrentDB as the event store (store.url)")?,
                )
            }
            StoreKind::Remote => {
                let url = config.store.url.clone().unwrap_or_default();
                Arc::new(store::remote::RemoteStore::new(&url)?)
            }
        };
        let local = open_local_state(&config)?;
        let views_dir = config.data_dir.join("views");
        let views = ViewStore::open(&views_dir, config.store.cache_mb << 20)
            .with_context(|| format!("cannot open the view store at {}", views_dir.display()))?;
        Ok(Node {
            config,
            bus,
            store,
            views,
            local,
            _lock: lock,
        })
    }

    pub fn domain_config(&self) -> anyhow::Result<DomainConfig> {
        Ok(DomainConfig {
            default_region: self.config.region()?,
            matching: self.config.identity.matching.clone(),
        })
    }
}

#[derive(Clone)]
struct OpsState {
    ready: Arc<AtomicBool>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    store: Arc<dyn EventStore>,
    views: ViewStore,
    bus: Arc<dyn Bus>,
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(s): State<OpsState>) -> impl IntoResponse {
    let checkpoint = s.views.checkpoint().ok().flatten().map(|p| p.commit).unwrap_or(0);
    let tip = s.store.read_all(None, 0).await.is_ok();
    let ready = s.ready.load(Ordering::Relaxed) && tip;
    let body = serde_json::json!({
        "ready": ready,
        "bus": s.bus.kind(),
        "store": s.store.kind(),
        "projection_checkpoint": checkpoint,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

async fn metrics_endpoint(State(s): State<OpsState>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// Waits for SIGTERM or Ctrl-C.
/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when
/// the future is first polled: a signal that arrives while a caller's first poll of other
/// work is still running (a benchmark generating its file, say) is caught, not fatal.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        [SignalKind::terminate(), SignalKind::interrupt()].map(|kind| signal(kind).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let [term, int] = signals;
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {},
                _ = wait(int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown requested; finishing in-flight work");
    }
}

/// Runs the given roles until SIGTERM/Ctrl-C, then shuts down gracefully.
pub async fn serve(
    node: Node,
    roles: &[Role],
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let has = |r: Role| roles.contains(&r) || roles.contains(&Role::All);
    let config = node.config.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();

    let mut domain_backlog = watch::Sender::new(0i64).subscribe();
    if has(Role::Domain) {
        let service = Arc::new(CustomerService::new(node.store.clone(), node.domain_config()?));
        let worker = DomainWorker::new(node.bus.clone(), service, WorkerConfig::default());
        domain_backlog = worker.backlog();
        let rx = stop_rx.clone();
        workers.spawn(async move { worker.run(rx).await.map_err(anyhow::Error::from) });
    }
    // Every process serving the API keeps its own views, built by its own projector.
    if has(Role::Projector) || has(Role::Api) {
        let projector = Arc::new(Projector::new(node.views.clone(), config.region()?));
        let store = node.store.clone();
        let rx = stop_rx.clone();
        workers.spawn(async move {
            projections::worker::follow(store, projector, rx)
                .await
                .map_err(anyhow::Error::from)
        });
    }

    let mut app = Router::new();
    if has(Role::Domain) && config.store.kind == StoreKind::Embedded {
        // Projector/api roles in other processes read the embedded store from here.
        app = app.merge(store::remote::router(node.store.clone()));
    }
    let mut admin = query_api::admin::AdminPorts::default();
    if has(Role::Ingest) {
        let channels = ingest::channels::build(&config.channels, &|var| std::env::var(var).ok())?;
        let quarantine = Arc::new(ingest::quarantine::Quarantine::open(&node.local)?);
        let state = ingest::http::IngestState {
            bus: node.bus.clone(),
            channels: Arc::new(channels),
            rejections: Some(quarantine.clone()),
            publish_timeout: Duration::from_millis(config.http.publish_timeout_ms),
        };
        let jobs = ingest::import::ImportJobs::new(
            node.bus.clone(),
            config.data_dir.join("imports"),
            Some(ingest::import::ImportLedger::in_db(&node.local)?),
        );
        admin.quarantine = Some(Arc::new(crate::admin::QuarantinePort {
            quarantine,
            ingest: state.clone(),
        }));
        admin.imports = Some(Arc::new(crate::admin::ImportPort {
            jobs: jobs.clone(),
            store: node.store.clone(),
            domain_backlog: domain_backlog.clone(),
        }));
        app = app
            .merge(ingest::http::router(state))
            .merge(ingest::import::router(jobs));
    }
    if has(Role::Api) {
        let schema = query_api::schema(
            query_api::ApiContext {
                views: node.views.clone(),
                default_region: config.region()?,
                // Review decisions and splits append to the store: not from a read-only remote store.
                identity: (config.store.kind != StoreKind::Remote)
                    .then(|| Arc::new(domain::IdentityCommands::new(node.store.clone()))),
            },
            admin,
        );
        app = app.merge(query_api::router(schema));
    }
    let ops = OpsState {
        ready: ready.clone(),
        metrics,
        store: node.store.clone(),
        views: node.views.clone(),
        bus: node.bus.clone(),
    };
    app = app
        .merge(
            Router::new()
                .route("/healthz", get(healthz))
                .route("/readyz", get(readyz))
                .route("/metrics", get(metrics_endpoint))
                .with_state(ops),
        )
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(config.http.request_timeout_ms),
        ));

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another process using that port?",
                config.http.listen
            )
        })?;
    let local = listener.local_addr()?;
    ready.store(true, Ordering::Relaxed);
    tracing::info!(
        addr = %local,
        roles = ?roles,
        bus = node.bus.kind(),
        store = node.store.kind(),
        data_dir = %config.data_dir.display(),
        "crm serving; GraphiQL at http://{local}/graphql"
    );
    println!("listening on http://{local}");

    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("http server failed")?;

    ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let grace = Duration::from_millis(config.http.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, async {
        while let Some(r) = workers.join_next().await {
            match r {
                Ok(Err(e)) => tracing::error!(error = %e, "worker ended with an error"),
                Err(e) => tracing::error!(error = %e, "worker panicked"),
                Ok(Ok(())) => {}
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "workers did not stop in time; unacknowledged work will be redone on restart"
        );
    }
    node.store.sync().await?;
    node.views.flush().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}
