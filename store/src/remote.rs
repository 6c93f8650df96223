//! The embedded store served over HTTP to other processes, read-only: the domain
//! role (which owns the embedded store) mounts [`router`]; projector/api roles in
//! other processes read it through [`RemoteStore`]. Appends stay with the domain.
//!
//! Wire format: a body of length-delimited protobuf `WireEvent` messages.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::stream::BoxStream;
use prost::Message;

use crate::{AppendOutcome, EventStore, ExpectedRevision, GlobalPosition, NewEvent, RecordedEvent, StoreError};

#[derive(Clone, PartialEq, prost::Message)]
struct WireEvent {
    #[prost(string, tag = "1")]
    stream: String,
    #[prost(uint64, tag = "2")]
    revision: u64,
    #[prost(uint64, tag = "3")]
    commit: u64,
    #[prost(uint64, tag = "4")]
    prepare: u64,
    #[prost(bytes = "vec", tag = "5")]
    event_id: Vec<u8>,
    #[prost(string, tag = "6")]
    event_type: String,
    #[prost(bytes = "vec", tag = "7")]
    data: Vec<u8>,
    #[prost(bytes = "vec", tag = "8")]
    metadata: Vec<u8>,
    #[prost(int64, tag = "9")]
    recorded_at_us: i64,
}

fn encode(events: &[RecordedEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        let w = WireEvent {
            stream: e.stream.clone(),
            revision: e.revision,
            commit: e.position.commit,
            prepare: e.position.prepare,
            event_id: e.event_id.as_bytes().to_vec(),
            event_type: e.event_type.clone(),
            data: e.data.clone(),
            metadata: e.metadata.clone(),
            recorded_at_us: e.recorded_at_us,
        };
        // Writing into a Vec cannot fail.
        let _ = w.encode_length_delimited(&mut out);
    }
    out
}

fn decode(mut body: &[u8]) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let w = WireEvent::decode_length_delimited(&mut body)
            .map_err(|e| StoreError::Corrupt(format!("remote store answer does not decode: {e}")))?;
        out.push(RecordedEvent {
            stream: w.stream,
            revision: w.revision,
            position: GlobalPosition {
                commit: w.commit,
                prepare: w.prepare,
            },
            event_id: uuid::Uuid::from_slice(&w.event_id)
                .map_err(|e| StoreError::Corrupt(format!("remote store sent a bad event id: {e}")))?,
            event_type: w.event_type,
            data: w.data,
            metadata: w.metadata,
            recorded_at_us: w.recorded_at_us,
        });
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct AllQuery {
    after_commit: Option<u64>,
    after_prepare: Option<u64>,
    #[serde(default = "default_max")]
    max: usize,
    #[serde(default)]
    wait_ms: u64,
}

#[derive(serde::Deserialize)]
struct StreamQuery {
    #[serde(default)]
    from: u64,
    #[serde(default = "default_max")]
    max: usize,
}

fn default_max() -> usize {
    1000
}

fn error_response(e: StoreError) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
}

/// Read-only HTTP access to a store, for roles in other processes.
pub fn router(store: Arc<dyn EventStore>) -> Router {
    Router::new()
        .route("/v1/store/all", get(all))
        .route("/v1/store/streams/{name}", get(stream))
        .route("/v1/store/streams/{name}/revision", get(revision))
        .with_state(store)
}

async fn all(State(store): State<Arc<dyn EventStore>>, Query(q): Query<AllQuery>) -> Response {
    let after = q.after_commit.map(|commit| GlobalPosition {
        commit,
        prepare: q.after_prepare.unwrap_or(commit),
    });
    let max = q.max.clamp(1, 10_000);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.wait_ms.min(30_000));
    loop {
        // Only what is durable: a crash may lose later events and give their positions to others.
        let durable = store.durable_position();
        match store.read_all(after, max).await {
            Ok(mut events) => {
                if let Some(d) = durable {
                    events.retain(|e| e.position <= d);
                }
                if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                    return encode(&events).into_response();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return error_response(e),
        }
    }
}

async fn stream(
    State(store): State<Arc<dyn EventStore>>,
    Path(name): Path<String>,
    Query(q): Query<StreamQuery>,
) -> Response {
    match store.read_stream(&name, q.from, q.max.clamp(1, 10_000)).await {
        Ok(events) => encode(&events).into_response(),
        Err(e) => error_response(e),
    }
}

async fn revision(State(store): State<Arc<dyn EventStore>>, Path(name): Path<String>) -> Response {
    match store.stream_revision(&name).await {
        Ok(Some(r)) => r.to_string().into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no stream").into_response(),
        Err(e) => error_response(e),
    }
}

/// A store served by another process's [`router`]; reads only.
#[derive(Clone)]
pub struct RemoteStore {
    base: String,
    client: reqwest::Client,
}

impl RemoteStore {
    /// `base` is the serving process's URL, e.g. `http://127.0.0.1:8081`.
    pub fn new(base: &str) -> Result<Self, StoreError> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(StoreError::Config(format!(
                "remote store url {base:?} must start with http:// or https:// (the address of the process running the domain role)"
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| StoreError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(RemoteStore {
            base: base.trim_end_matches('/').to_string(),
            client,
        })
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Option<Vec<u8>>, StoreError> {
        let qs = serde_urlencoded::to_string(query).unwrap_or_default();
        let url = if qs.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{qs}", self.base)
        };
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(format!("remote store {url}: {e}")))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(StoreError::Unavailable(format!(
                "remote store {url} answered {status}: {text}"
            )));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| StoreError::Unavailable(format!("remote store {url}: {e}")))?;
        Ok(Some(bytes.to_vec()))
    }

    async fn all(
        &self,
        after: Option<GlobalPosition>,
        max: usize,
        wait_ms: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut q = vec![("max", max.to_string()), ("wait_ms", wait_ms.to_string())];
        if let Some(a) = after {
            q.push(("after_commit", a.commit.to_string()));
            q.push(("after_prepare", a.prepare.to_string()));
        }
        decode(&self.get("/v1/store/all", &q).await?.unwrap_or_default())
    }
}

#[async_trait::async_trait]
impl EventStore for RemoteStore {
    async fn append(&self, stream: &str, _: ExpectedRevision, _: Vec<NewEvent>) -> Result<AppendOutcome, StoreError> {
        Err(StoreError::Config(format!(
            "cannot append to {stream}: the remote store is read-only; appends belong to the domain role"
        )))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_revision: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let path = format!("/v1/store/streams/{stream}");
        let q = [
            ("from", from_revision.to_string()),
            ("max", max.min(10_000).to_string()),
        ];
        decode(&self.get(&path, &q).await?.unwrap_or_default())
    }

    async fn stream_revision(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        match self.get(&format!("/v1/store/streams/{stream}/revision"), &[]).await? {
            None => Ok(None),
            Some(b) => String::from_utf8_lossy(&b)
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Corrupt("remote store sent a revision that is not a number".into())),
        }
    }

    async fn read_all(&self, after: Option<GlobalPosition>, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.all(after, max.min(10_000), 0).await
    }

    fn subscribe_all(&self, after: Option<GlobalPosition>) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
        let this = self.clone();
        let stream = async_stream_unfold(this, after);
        Box::pin(stream)
    }

    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "remote"
    }
}

/// Long-polls the serving process; on errors waits and tries again (reported as items).
fn async_stream_unfold(
    store: RemoteStore,
    after: Option<GlobalPosition>,
) -> impl futures::Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'static {
    use futures::StreamExt;
    let state = (
        store,
        after,
        std::collections::VecDeque::new(),
        Duration::from_millis(100),
    );
    futures::stream::unfold(state, |(store, mut after, mut buffer, mut backoff)| async move {
        loop {
            if let Some(e) = buffer.pop_front() {
                return Some((Ok(e), (store, after, buffer, backoff)));
            }
            match store.all(after, 2000, 10_000).await {
                Ok(events) => {
                    backoff = Duration::from_millis(100);
                    if let Some(last) = events.last() {
                        after = Some(last.position);
                    }
                    buffer.extend(events);
                }
                Err(e) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    return Some((Err(e), (store, after, buffer, backoff)));
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::embedded::EmbeddedStore;

    #[tokio::test(flavor = "multi_thread")]
    async fn reads_and_follows_a_store_served_by_another_process() {
        let local: Arc<dyn EventStore> = Arc::new(EmbeddedStore::temporary().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, router(local.clone())).into_future());
        let remote = RemoteStore::new(&format!("http://{addr}")).unwrap();

        let ev = |n: u8| NewEvent {
            event_id: uuid::Uuid::from_bytes([n; 16]),
            event_type: "T".into(),
            data: vec![n],
            metadata: vec![],
        };
        local
            .append("customer-a", ExpectedRevision::NoStream, vec![ev(1), ev(2)])
            .await
            .unwrap();
        assert!(
            remote.read_all(None, 10).await.unwrap().is_empty(),
            "not served before sync"
        );
        local.sync().await.unwrap();
        assert_eq!(remote.stream_revision("customer-a").await.unwrap(), Some(1));
        assert_eq!(remote.stream_revision("customer-b").await.unwrap(), None);
        let s = remote.read_stream("customer-a", 1, 10).await.unwrap();
        assert_eq!((s.len(), s[0].data.clone()), (1, vec![2]));
        assert_eq!(
            remote.read_all(None, 10).await.unwrap(),
            local.read_all(None, 10).await.unwrap()
        );
        assert!(matches!(
            remote.append("customer-a", ExpectedRevision::Any, vec![ev(3)]).await,
            Err(StoreError::Config(_))
        ));

        let mut sub = remote.subscribe_all(None);
        assert_eq!(sub.next().await.unwrap().unwrap().data, vec![1]);
        assert_eq!(sub.next().await.unwrap().unwrap().data, vec![2]);
        local
            .append("customer-b", ExpectedRevision::NoStream, vec![ev(3)])
            .await
            .unwrap();
        local.sync().await.unwrap();
        let live = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((live.stream.as_str(), live.data.clone()), ("customer-b", vec![3]));
    }
}
