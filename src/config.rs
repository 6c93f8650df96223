//! The configuration tree: defaults here, a TOML file (`--config` or `CRM_CONFIG`),
//! then environment overrides `CRM__SECTION__KEY=value`. This is the only module
//! that reads the environment for configuration. Unknown keys are an error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the embedded bus, store and views live.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub bus: BusConfig,
    pub store: StoreConfig,
    pub identity: IdentityConfig,
    pub log: LogConfig,
    /// Channels beyond the default web form (`[[channels]]` with `type = "..."`).
    pub channels: Vec<ingest::channels::ChannelConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            http: HttpConfig::default(),
            bus: BusConfig::default(),
            store: StoreConfig::default(),
            identity: IdentityConfig::default(),
            log: LogConfig::default(),
            channels: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// How long ingest waits for the bus before answering 503.
    pub publish_timeout_ms: u64,
    /// Longest time a request may take.
    pub request_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests and workers.
    pub shutdown_grace_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            publish_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            shutdown_grace_ms: 20_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BusKind {
    #[default]
    Embedded,
    Kafka,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    pub kind: BusKind,
    pub kafka: bus::kafka::KafkaConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    #[default]
    Embedded,
    #[serde(alias = "kurrentdb")]
    #[value(alias = "kurrentdb")]
    Eventstoredb,
    /// The embedded store of another process running the domain role, read over HTTP
    /// (projector/api roles on other machines); `url` is that process's address.
    Remote,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// EventStoreDB/KurrentDB connection string (`esdb://admin:changeit@127.0.0.1:2113?tls=false`),
    /// or for `remote` the domain process's URL (`http://127.0.0.1:8081`).
    pub url: Option<String>,
    /// Page cache of the embedded event store and, as much again, of the view store (both redb), in MiB.
    pub cache_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::default(),
            url: None,
            cache_mb: store::embedded::CACHE_BYTES >> 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Region for phone numbers written without a country code.
    pub default_region: String,
    /// Live probabilistic matching, review band and guardrails.
    pub matching: domain::matcher::MatchingConfig,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            default_region: "CN".into(),
            matching: domain::matcher::MatchingConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// Filter when RUST_LOG is not set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

impl Config {
    /// Loads defaults, then the file (if any), then `CRM__*` environment overrides.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                anyhow::bail!(
                    "config file {} does not exist; see deploy/crm.example.toml for a commented example",
                    file.display()
                );
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("CRM__").split("__").lowercase(true));
        let config: Config = figment.extract().map_err(|e| {
            let mut msg = String::from("configuration is invalid:");
            for err in e {
                msg.push_str(&format!("\n  - {err}"));
            }
            msg.push_str("\n(see deploy/crm.example.toml for every key and its default)");
            anyhow::anyhow!(msg)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Turns a bad configuration into one clear message before anything starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.region()?;
        self.identity
            .matching
            .validate()
            .map_err(|e| anyhow::anyhow!("identity.matching: {e}"))?;
        if self.store.kind == StoreKind::Eventstoredb && self.store.url.as_deref().unwrap_or("").is_empty() {
            anyhow::bail!(
                "store.kind is eventstoredb but store.url is empty: set it (or CRM__STORE__URL) to a connection string like esdb://admin:changeit@127.0.0.1:2113?tls=false"
            );
        }
        if self.store.kind == StoreKind::Remote && self.store.url.as_deref().unwrap_or("").is_empty() {
            anyhow::bail!(
                "store.kind is remote but store.url is empty: set it (or CRM__STORE__URL) to the address of the process running the domain role, e.g. http://127.0.0.1:8081"
            );
        }
        if !(8..=65_536).contains(&self.store.cache_mb) {
            anyhow::bail!(
                "store.cache_mb is {}: give the page cache between 8 and 65536 MiB (default {})",
                self.store.cache_mb,
                store::embedded::CACHE_BYTES >> 20
            );
        }
        if self.bus.kind == BusKind::Kafka {
            self.bus
                .kafka
                .validate()
                .map_err(|e| anyhow::anyhow!("bus.kafka: {e}"))?;
        }
        Ok(())
    }

    pub fn region(&self) -> anyhow::Result<phonenumber::country::Id> {
        proto::normalize::region(&self.identity.default_region).ok_or_else(|| {
            anyhow::anyhow!(
                "identity.default_region {:?} is not an ISO 3166 region code such as CN or US",
                self.identity.default_region
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crm.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config: Config = toml::from_str(&text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.http.listen.port(), 8080);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = toml::from_str::<Config>("[http]\nlisten = \"127.0.0.1:1\"\nlissen = 1\n").unwrap_err();
        assert!(err.to_string().contains("lissen"), "{err}");
    }

    #[test]
    fn a_cache_size_out_of_range_is_refused_with_the_range() {
        let config: Config = toml::from_str("[store]\ncache_mb = 1\n").unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("store.cache_mb is 1") && err.contains("between 8 and 65536"),
            "{err}"
        );
        let config: Config = toml::from_str("[store]\nkind = \"embedded\"\n").unwrap();
        assert_eq!(config.store.cache_mb, 8, "the default applies when the key is absent");
    }
}
