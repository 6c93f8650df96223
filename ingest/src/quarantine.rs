//! The quarantine: every request a channel refuses, kept with its raw body so an
//! integration engineer can list it, read it, fix the cause and replay it.
//!
//! Stored in its own sled tree ([`TREE`]) of the platform's embedded database, keyed by a
//! ULID (time-ordered, so listing is in arrival order and `after` pages through it). A
//! record is JSON: the request (method, subpath, query, headers, body), why it was refused
//! (reason, message, field errors), when, and the history of its replays.
//!
//! Redaction vs replay: the channel must be able to verify a request again on replay, so
//! signature headers (`X-Shopify-Hmac-Sha256`, `Event-Sign`, `X-Crm-Signature`, WeChat's
//! `signature`/`msg_signature` query parameters) are KEPT: each is a MAC over this one body,
//! useless for forging any other request. What is redacted is true credentials that would
//! grant access elsewhere: [`ALWAYS_REDACTED_HEADERS`] (Authorization, cookies, API keys and
//! tokens), the channel's own [`Channel::secret_headers`], and credential-like query
//! parameters ([`REDACTED_QUERY_KEYS`]). No channel verifies with those, so replay is not
//! affected. Replay re-verifies with the channel's CURRENT configuration (a corrected
//! secret takes effect), and is idempotent because channel event ids are deterministic per
//! delivery: replaying twice publishes the same event ids, which the store skips.
//!
//! Not here: publishing (the framework publishes the replayed events, then calls
//! [`Quarantine::mark_replayed`]), the CLI and GraphQL front ends.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use crate::channel::{Accepted, Channel, ChannelRequest, RejectReason, Rejection};

/// Name of the sled tree holding quarantined requests (versioned with the record format).
pub const TREE: &str = "ingest/quarantine/v1";

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Header names (lower-case) whose values are credentials, redacted for every channel.
pub const ALWAYS_REDACTED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
    "x-shopify-access-token",
    "x-csrf-token",
];

/// Query parameter names (lower-case) whose values are credentials.
pub const REDACTED_QUERY_KEYS: &[&str] = &[
    "access_token",
    "token",
    "api_key",
    "apikey",
    "client_secret",
    "secret",
    "password",
];

/// Why the quarantine store failed.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("quarantine store: cannot open tree {TREE}: {0}; check the data directory is writable")]
    Open(#[source] sled::Error),
    #[error("quarantine store: {op} failed: {source}; the request was not stored, retry or check the disk")]
    Storage {
        op: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("quarantine record {id} does not decode ({source}); it was written by an incompatible version")]
    Corrupt {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("quarantine record cannot be encoded: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("no quarantined request {0}: list them with `crm quarantine list`")]
    NotFound(String),
    #[error("{0:?} is not a quarantine id: ids are 26-character ULIDs as printed by `crm quarantine list`")]
    BadId(String),
    #[error("the id generator ran out of ids for this millisecond; retry")]
    IdOverflow,
}

/// One field error as stored (the channel's [`crate::channel::FieldError`], deserializable).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuarantinedField {
    pub field: String,
    pub reason: String,
}

/// A refused request as it is written to the quarantine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuarantineEntry {
    /// Channel kind (`wechat`, `shopify`, ...).
    pub channel: String,
    /// Channel instance (mount name).
    pub instance: String,
    pub subpath: String,
    pub method: String,
    pub query: BTreeMap<String, String>,
    /// Lower-case names; credential values replaced by [`REDACTED`] when stored.
    pub headers: BTreeMap<String, String>,
    pub peer: Option<String>,
    /// When the platform first received the request (unix micros); kept on replay.
    pub received_at_us: i64,
    pub reason: RejectReason,
    pub message: String,
    pub fields: Vec<QuarantinedField>,
    /// The body exactly as received.
    #[serde(with = "base64_bytes")]
    pub body: Vec<u8>,
    /// Extra header names to redact (the channel's `secret_headers()`), applied by `put`.
    #[serde(default)]
    pub secret_headers: Vec<String>,
    /// Names of headers and query parameters whose values were redacted.
    #[serde(default)]
    pub redacted: Vec<String>,
}

impl QuarantineEntry {
    /// The entry for a request `channel` refused with `rejection`.
    pub fn new(channel: &dyn Channel, request: &ChannelRequest, rejection: &Rejection) -> Self {
        QuarantineEntry {
            channel: channel.kind().to_string(),
            instance: channel.instance().to_string(),
            subpath: request.subpath.clone(),
            method: request.method.clone(),
            query: request.query.clone(),
            headers: request
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            peer: request.peer.map(|p| p.to_string()),
            received_at_us: request.received_at_us,
            reason: rejection.reason,
            message: rejection.message.clone(),
            fields: rejection
                .fields
                .iter()
                .map(|f| QuarantinedField {
                    field: f.field.clone(),
                    reason: f.reason.clone(),
                })
                .collect(),
            body: request.body.clone(),
            secret_headers: channel
                .secret_headers()
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            redacted: Vec::new(),
        }
    }

    /// Replaces credential values; records which names were redacted.
    fn redact(&mut self) {
        for (name, value) in self.headers.iter_mut() {
            let lower = name.to_ascii_lowercase();
            if (ALWAYS_REDACTED_HEADERS.contains(&lower.as_str()) || self.secret_headers.contains(&lower))
                && value != REDACTED
            {
                *value = REDACTED.to_string();
                self.redacted.push(format!("header:{lower}"));
            }
        }
        for (name, value) in self.query.iter_mut() {
            let lower = name.to_ascii_lowercase();
            if REDACTED_QUERY_KEYS.contains(&lower.as_str()) && value != REDACTED {
                *value = REDACTED.to_string();
                self.redacted.push(format!("query:{lower}"));
            }
        }
    }

    /// The request to hand to the channel again (redacted values stay redacted).
    pub fn to_request(&self) -> ChannelRequest {
        ChannelRequest {
            method: self.method.clone(),
            subpath: self.subpath.clone(),
            query: self.query.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
            peer: self.peer.as_deref().and_then(|p| p.parse().ok()),
            received_at_us: self.received_at_us,
        }
    }
}

/// Where a quarantined request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineStatus {
    /// Not replayed yet.
    Pending,
    /// Replayed and accepted: its events are on the bus.
    Replayed,
    /// Replayed and refused again (see the last replay's outcome).
    ReplayFailed,
}

impl QuarantineStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineStatus::Pending => "pending",
            QuarantineStatus::Replayed => "replayed",
            QuarantineStatus::ReplayFailed => "replay_failed",
        }
    }
}

/// What one replay gave.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// The channel accepted it; these events were published.
    Accepted { event_ids: Vec<String> },
    /// The channel refused it again.
    Rejected { reason: RejectReason, message: String },
}

impl ReplayOutcome {
    /// The outcome of running a channel on a quarantined request.
    pub fn of(result: &Result<Accepted, Rejection>) -> Self {
        match result {
            Ok(accepted) => ReplayOutcome::Accepted {
                event_ids: accepted.events.iter().map(|e| e.event_id().to_string()).collect(),
            },
            Err(rejection) => ReplayOutcome::Rejected {
                reason: rejection.reason,
                message: rejection.message.clone(),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplayRecord {
    /// When the replay was recorded (unix micros).
    pub at_us: i64,
    #[serde(flatten)]
    pub outcome: ReplayOutcome,
}

/// A stored quarantined request with its id and replay history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuarantinedRequest {
    pub id: String,
    #[serde(flatten)]
    pub entry: QuarantineEntry,
    pub status: QuarantineStatus,
    #[serde(default)]
    pub replays: Vec<ReplayRecord>,
}

impl QuarantinedRequest {
    /// The request to hand to the channel's current configuration again.
    pub fn to_request(&self) -> ChannelRequest {
        self.entry.to_request()
    }

    pub fn summary(&self) -> QuarantineSummary {
        QuarantineSummary {
            id: self.id.clone(),
            channel: self.entry.channel.clone(),
            instance: self.entry.instance.clone(),
            method: self.entry.method.clone(),
            reason: self.entry.reason,
            message: self.entry.message.clone(),
            received_at_us: self.entry.received_at_us,
            body_bytes: self.entry.body.len(),
            status: self.status,
            replays: self.replays.len(),
        }
    }
}

/// One line of `crm quarantine list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QuarantineSummary {
    pub id: String,
    pub channel: String,
    pub instance: String,
    pub method: String,
    pub reason: RejectReason,
    pub message: String,
    pub received_at_us: i64,
    pub body_bytes: usize,
    pub status: QuarantineStatus,
    pub replays: usize,
}

/// Which quarantined requests to list; `None` matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuarantineFilter {
    pub channel: Option<String>,
    pub instance: Option<String>,
    pub reason: Option<RejectReason>,
    pub status: Option<QuarantineStatus>,
}

impl QuarantineFilter {
    fn matches(&self, r: &QuarantinedRequest) -> bool {
        self.channel.as_ref().is_none_or(|c| *c == r.entry.channel)
            && self.instance.as_ref().is_none_or(|i| *i == r.entry.instance)
            && self.reason.is_none_or(|reason| reason == r.entry.reason)
            && self.status.is_none_or(|s| s == r.status)
    }
}

/// The quarantine store (cheap to clone the underlying tree; share one per process).
pub struct Quarantine {
    tree: sled::Tree,
    ids: Mutex<ulid::Generator>,
}

impl Quarantine {
    /// Opens (or creates) the quarantine tree in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, QuarantineError> {
        let tree = db.open_tree(TREE).map_err(QuarantineError::Open)?;
        Ok(Quarantine {
            tree,
            ids: Mutex::new(ulid::Generator::new()),
        })
    }

    fn next_id(&self) -> Result<String, QuarantineError> {
        // A poisoned lock only means another thread panicked mid-generate; the generator is still usable.
        let mut generator = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        generator
            .generate()
            .map(|u| u.to_string())
            .map_err(|_| QuarantineError::IdOverflow)
    }

    fn check_id(id: &str) -> Result<(), QuarantineError> {
        id.parse::<ulid::Ulid>()
            .map(|_| ())
            .map_err(|_| QuarantineError::BadId(id.to_string()))
    }

    fn decode(id: &str, bytes: &[u8]) -> Result<QuarantinedRequest, QuarantineError> {
        serde_json::from_slice(bytes).map_err(|source| QuarantineError::Corrupt {
            id: id.to_string(),
            source,
        })
    }

    fn write(&self, record: &QuarantinedRequest) -> Result<(), QuarantineError> {
        let bytes = serde_json::to_vec(record).map_err(QuarantineError::Encode)?;
        self.tree
            .insert(record.id.as_bytes(), bytes)
            .map_err(|source| QuarantineError::Storage { op: "insert", source })?;
        // A refused request must survive a crash right after we answered it: flush now.
        self.tree
            .flush()
            .map_err(|source| QuarantineError::Storage { op: "flush", source })?;
        Ok(())
    }

    /// Stores a refused request (credentials redacted) and returns its id.
    pub fn put(&self, mut entry: QuarantineEntry) -> Result<String, QuarantineError> {
        entry.redact();
        let record = QuarantinedRequest {
            id: self.next_id()?,
            entry,
            status: QuarantineStatus::Pending,
            replays: Vec::new(),
        };
        self.write(&record)?;
        Ok(record.id)
    }

    /// The quarantined request `id`, if there is one.
    pub fn get(&self, id: &str) -> Result<Option<QuarantinedRequest>, QuarantineError> {
        Self::check_id(id)?;
        match self
            .tree
            .get(id.as_bytes())
            .map_err(|source| QuarantineError::Storage { op: "get", source })?
        {
            Some(bytes) => Ok(Some(Self::decode(id, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` requests matching `filter`, oldest first, strictly after the id `after`.
    pub fn list(
        &self,
        filter: &QuarantineFilter,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<QuarantineSummary>, QuarantineError> {
        let start = match after {
            Some(id) => {
                Self::check_id(id)?;
                Bound::Excluded(id.as_bytes().to_vec())
            }
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self.tree.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(|source| QuarantineError::Storage { op: "scan", source })?;
            let id = String::from_utf8_lossy(&key).into_owned();
            let record = Self::decode(&id, &value)?;
            if filter.matches(&record) {
                out.push(record.summary());
            }
        }
        Ok(out)
    }

    /// Records a replay of `id` and its outcome; returns the updated record.
    pub fn mark_replayed(&self, id: &str, outcome: ReplayOutcome) -> Result<QuarantinedRequest, QuarantineError> {
        Self::check_id(id)?;
        loop {
            let current = self
                .tree
                .get(id.as_bytes())
                .map_err(|source| QuarantineError::Storage { op: "get", source })?
                .ok_or_else(|| QuarantineError::NotFound(id.to_string()))?;
            let mut record = Self::decode(id, &current)?;
            record.status = match outcome {
                ReplayOutcome::Accepted { .. } => QuarantineStatus::Replayed,
                // Once accepted, a later failed replay does not undo that its events were published.
                ReplayOutcome::Rejected { .. } if record.status == QuarantineStatus::Replayed => {
                    QuarantineStatus::Replayed
                }
                ReplayOutcome::Rejected { .. } => QuarantineStatus::ReplayFailed,
            };
            record.replays.push(ReplayRecord {
                at_us: proto::now_us(),
                outcome: outcome.clone(),
            });
            let bytes = serde_json::to_vec(&record).map_err(QuarantineError::Encode)?;
            let swapped = self
                .tree
                .compare_and_swap(id.as_bytes(), Some(current), Some(bytes))
                .map_err(|source| QuarantineError::Storage {
                    op: "compare_and_swap",
                    source,
                })?;
            if swapped.is_ok() {
                self.tree
                    .flush()
                    .map_err(|source| QuarantineError::Storage { op: "flush", source })?;
                return Ok(record);
            }
            // Someone else updated it between our read and write: read again.
        }
    }

    /// Runs `channel` (with its current configuration) on the quarantined request `id`.
    /// The caller publishes the accepted events, then calls [`Quarantine::mark_replayed`]
    /// with [`ReplayOutcome::of`] the result.
    pub fn rerun(&self, id: &str, channel: &dyn Channel) -> Result<Result<Accepted, Rejection>, QuarantineError> {
        let record = self.get(id)?.ok_or_else(|| QuarantineError::NotFound(id.to_string()))?;
        Ok(channel.handle(&record.to_request()))
    }

    /// Number of stored requests.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

/// Bodies are arbitrary bytes: stored as base64 text inside the JSON record.
mod base64_bytes {
    use base64::Engine;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::webhook::{Webhook, WebhookConfig, signature_header};

    const NOW: i64 = 1_764_057_600;

    fn db() -> sled::Db {
        sled::Config::new().temporary(true).open().unwrap()
    }

    fn webhook(secret: &str) -> Webhook {
        let secret = secret.to_string();
        Webhook::new(
            WebhookConfig {
                name: "callcenter".into(),
                secret_env: "S".into(),
                default_region: "CN".into(),
            },
            &move |_| Some(secret.clone()),
        )
        .unwrap()
    }

    /// A request signed with `secret` carrying credentials the quarantine must not keep.
    fn request(secret: &str, message_id: &str) -> ChannelRequest {
        let body = format!(r#"{{"type":"identify","messageId":"{message_id}","userId":"u1"}}"#);
        let ts = NOW.to_string();
        ChannelRequest {
            method: "POST".into(),
            subpath: String::new(),
            query: [
                ("access_token".to_string(), "tok".to_string()),
                ("page".to_string(), "2".to_string()),
            ]
            .into(),
            headers: [
                ("content-type".to_string(), "application/json".to_string()),
                ("x-crm-timestamp".to_string(), ts.clone()),
                (
                    "x-crm-signature".to_string(),
                    signature_header(secret, &ts, body.as_bytes()),
                ),
                ("authorization".to_string(), "Bearer hunter2".to_string()),
                ("cookie".to_string(), "session=abc".to_string()),
            ]
            .into(),
            body: body.into_bytes(),
            peer: "203.0.113.7".parse().ok(),
            received_at_us: NOW * 1_000_000,
        }
    }

    fn quarantine_one(q: &Quarantine, channel: &dyn Channel, request: &ChannelRequest) -> String {
        let rejection = channel.handle(request).unwrap_err();
        q.put(QuarantineEntry::new(channel, request, &rejection)).unwrap()
    }

    #[test]
    fn a_bad_signature_is_stored_redacted_and_replays_after_the_secret_is_fixed() {
        let db = db();
        let q = Quarantine::open(&db).unwrap();
        // The sender signs with the new secret; our config still has the old one.
        let req = request("new-secret", "m-1");
        let stale = webhook("old-secret");
        let id = quarantine_one(&q, &stale, &req);

        let stored = q.get(&id).unwrap().unwrap();
        assert_eq!(stored.entry.reason, RejectReason::BadSignature);
        assert_eq!(stored.entry.channel, "webhook");
        assert_eq!(stored.entry.instance, "callcenter");
        assert_eq!(stored.entry.body, req.body);
        assert_eq!(stored.entry.headers["authorization"], REDACTED);
        assert_eq!(stored.entry.headers["cookie"], REDACTED);
        assert_eq!(stored.entry.query["access_token"], REDACTED);
        assert_eq!(stored.entry.query["page"], "2");
        assert_eq!(
            stored.entry.headers["x-crm-signature"], req.headers["x-crm-signature"],
            "kept for replay"
        );
        assert_eq!(stored.status, QuarantineStatus::Pending);
        assert_eq!(stored.entry.peer.as_deref(), Some("203.0.113.7"));

        // Replaying with the stale config fails again and says so.
        let result = q.rerun(&id, &stale).unwrap();
        let after = q.mark_replayed(&id, ReplayOutcome::of(&result)).unwrap();
        assert_eq!(after.status, QuarantineStatus::ReplayFailed);

        // The secret is corrected: replay is accepted, twice with the same event id.
        let fixed = webhook("new-secret");
        let first = q.rerun(&id, &fixed).unwrap().unwrap();
        let second = q.rerun(&id, &fixed).unwrap().unwrap();
        assert_eq!(first.events[0].event_id(), second.events[0].event_id());
        let direct = fixed.handle(&req).unwrap();
        assert_eq!(
            first.events[0].event_id(),
            direct.events[0].event_id(),
            "replay = the original delivery"
        );
        let after = q.mark_replayed(&id, ReplayOutcome::of(&Ok(first))).unwrap();
        assert_eq!(after.status, QuarantineStatus::Replayed);
        assert_eq!(after.replays.len(), 2);
        let again = q.mark_replayed(
            &id,
            ReplayOutcome::Rejected {
                reason: RejectReason::Replayed,
                message: "x".into(),
            },
        );
        assert_eq!(
            again.unwrap().status,
            QuarantineStatus::Replayed,
            "a published replay stays replayed"
        );
    }

    #[test]
    fn list_filters_and_pages_in_arrival_order() {
        let db = db();
        let q = Quarantine::open(&db).unwrap();
        let ch = webhook("s");
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(quarantine_one(&q, &ch, &request("wrong", &format!("m{i}"))));
        }
        let mut stale = request("s", "old");
        stale.received_at_us += 3_600 * 1_000_000;
        let replayed_id = quarantine_one(&q, &ch, &stale);
        assert_eq!(q.len(), 6);

        let all = q.list(&QuarantineFilter::default(), 100, None).unwrap();
        let listed: Vec<_> = all.iter().map(|s| s.id.clone()).collect();
        let mut expected = ids.clone();
        expected.push(replayed_id.clone());
        assert_eq!(listed, expected, "ULIDs sort in arrival order");

        let page1 = q.list(&QuarantineFilter::default(), 2, None).unwrap();
        let page2 = q.list(&QuarantineFilter::default(), 2, Some(&page1[1].id)).unwrap();
        assert_eq!(page2[0].id, ids[2]);

        let replayed = QuarantineFilter {
            reason: Some(RejectReason::Replayed),
            ..QuarantineFilter::default()
        };
        let only = q.list(&replayed, 10, None).unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].id, replayed_id);
        let other_channel = QuarantineFilter {
            channel: Some("shopify".into()),
            ..QuarantineFilter::default()
        };
        assert!(q.list(&other_channel, 10, None).unwrap().is_empty());
        q.mark_replayed(
            &ids[0],
            ReplayOutcome::Accepted {
                event_ids: vec!["e".into()],
            },
        )
        .unwrap();
        let done = QuarantineFilter {
            status: Some(QuarantineStatus::Replayed),
            ..QuarantineFilter::default()
        };
        assert_eq!(q.list(&done, 10, None).unwrap()[0].id, ids[0]);
    }

    #[test]
    fn unknown_and_malformed_ids_are_named() {
        let q = Quarantine::open(&db()).unwrap();
        assert!(matches!(q.get("nope"), Err(QuarantineError::BadId(_))));
        let unknown = ulid::Ulid::generate().to_string();
        assert!(q.get(&unknown).unwrap().is_none());
        let err = q
            .mark_replayed(&unknown, ReplayOutcome::Accepted { event_ids: vec![] })
            .unwrap_err();
        assert!(err.to_string().contains("crm quarantine list"), "{err}");
    }

    #[test]
    fn records_survive_reopening_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let db = sled::open(dir.path()).unwrap();
            let q = Quarantine::open(&db).unwrap();
            quarantine_one(&q, &webhook("s"), &request("wrong", "m"))
        };
        let db = sled::open(dir.path()).unwrap();
        let q = Quarantine::open(&db).unwrap();
        assert_eq!(q.get(&id).unwrap().unwrap().entry.reason, RejectReason::BadSignature);
    }

    #[test]
    fn channel_secret_headers_are_redacted_too() {
        struct Leaky;
        impl Channel for Leaky {
            fn kind(&self) -> &'static str {
                "leaky"
            }
            fn instance(&self) -> &str {
                "x"
            }
            fn handle(&self, _: &ChannelRequest) -> Result<Accepted, Rejection> {
                Err(Rejection::new(RejectReason::BadSignature, "no"))
            }
            fn secret_headers(&self) -> &'static [&'static str] {
                &["X-Partner-Password"]
            }
        }
        let q = Quarantine::open(&db()).unwrap();
        let mut req = request("s", "m");
        req.headers.insert("x-partner-password".into(), "pw".into());
        let id = quarantine_one(&q, &Leaky, &req);
        let stored = q.get(&id).unwrap().unwrap();
        assert_eq!(stored.entry.headers["x-partner-password"], REDACTED);
        assert!(stored.entry.redacted.contains(&"header:x-partner-password".to_string()));
    }
}
