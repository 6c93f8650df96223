//! The HTTP framework shared by every channel: `ANY /v1/channels/{kind}/{name}`.
//! It reads the request, lets the channel verify and parse it, publishes the
//! events on the bus and answers only once the bus has durably accepted all of
//! them. Rejections are answered with a JSON body and kept by the
//! [`RejectionSink`] (the quarantine). Per channel: metrics (accepted, rejected by
//! reason, latency) and a tracing span.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use bus::{Ack, Bus, BusError, BusRecord};
use proto::InboundEvent;
use tracing::Instrument;

use crate::channel::{Channel, ChannelRequest, RejectReason, Rejection, Reply};

/// Largest body the framework reads; channels apply their own, smaller limits.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Where rejected requests are kept (the quarantine).
pub trait RejectionSink: Send + Sync + 'static {
    fn keep(&self, channel: &dyn Channel, request: &ChannelRequest, rejection: &Rejection);
}

impl RejectionSink for crate::quarantine::Quarantine {
    fn keep(&self, channel: &dyn Channel, request: &ChannelRequest, rejection: &Rejection) {
        let entry = crate::quarantine::QuarantineEntry::new(channel, request, rejection);
        match self.put(entry) {
            Ok(id) => {
                tracing::info!(quarantine_id = %id, reason = rejection.reason.as_str(), "request quarantined");
                metrics::counter!("quarantine_entries_total", "channel" => channel.kind(), "reason" => rejection.reason.as_str())
                    .increment(1);
            }
            Err(e) => tracing::error!(error = %e, "cannot write the rejected request to the quarantine"),
        }
    }
}

/// A bus record for an inbound event: key, schema headers, payload.
pub fn bus_record(event: &InboundEvent) -> BusRecord {
    let schema = event.schema();
    let version = schema.rsplit('V').next().unwrap_or("1").to_string();
    BusRecord {
        key: event.bus_key(),
        headers: [
            (bus::HEADER_EVENT_ID.to_string(), event.event_id().to_string()),
            (bus::HEADER_SCHEMA.to_string(), schema.to_string()),
            (bus::HEADER_SCHEMA_VERSION.to_string(), version),
        ]
        .into(),
        payload: event.encode(),
    }
}

/// Publishes events concurrently; returns once every one is durable.
pub async fn publish_all(bus: &dyn Bus, events: &[InboundEvent]) -> Result<Vec<Ack>, BusError> {
    futures_join(events.iter().map(|e| bus.publish(bus_record(e)))).await
}

async fn futures_join<F>(futs: impl Iterator<Item = F>) -> Result<Vec<Ack>, BusError>
where
    F: std::future::Future<Output = Result<Ack, BusError>>,
{
    let mut out = Vec::new();
    for r in futures::future::join_all(futs).await {
        out.push(r?);
    }
    Ok(out)
}

/// Shared state of the channel endpoints.
#[derive(Clone)]
pub struct IngestState {
    pub bus: Arc<dyn Bus>,
    pub channels: Arc<Vec<Arc<dyn Channel>>>,
    pub rejections: Option<Arc<dyn RejectionSink>>,
    /// How long to wait for the bus before answering 503.
    pub publish_timeout: Duration,
}

impl IngestState {
    /// The channel mounted at `/v1/channels/{kind}/{name}`: an exact name first, then `*`.
    pub fn channel(&self, kind: &str, name: &str) -> Option<Arc<dyn Channel>> {
        let by = |n: &str| {
            self.channels
                .iter()
                .find(|c| c.kind() == kind && c.instance() == n)
                .cloned()
        };
        by(name).or_else(|| by("*"))
    }

    /// Runs a live request through a channel (admission, then verify and parse) and
    /// publishes what it yields; returns the reply and the number of events published.
    /// Rejections by [`Channel::handle`] are quarantined; refusals by [`Channel::admit`]
    /// (rate limits) are not.
    pub async fn process(
        &self,
        channel: &dyn Channel,
        request: &ChannelRequest,
    ) -> Result<(Reply, usize), ProcessError> {
        channel.admit(request).map_err(ProcessError::Rejected)?;
        self.run(channel, request, true)
            .await
            .map(|(reply, ids)| (reply, ids.len()))
    }

    /// Replays a quarantined request through its channel's current configuration and
    /// publishes what it yields. Idempotent: the event ids are deterministic per delivery.
    pub async fn replay_quarantined(
        &self,
        quarantine: &crate::quarantine::Quarantine,
        id: &str,
    ) -> Result<crate::quarantine::QuarantinedRequest, String> {
        let stored = quarantine
            .get(id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no quarantined request has id {id:?}; list them with `crm quarantine list`"))?;
        let mut request = stored.to_request();
        // Channels without a delivery id (web forms) derive their event id from this key,
        // so replaying the same quarantined request twice publishes the same event.
        request
            .headers
            .entry("idempotency-key".into())
            .or_insert_with(|| format!("quarantine/{id}"));
        let channel = self.channel(&stored.entry.channel, &request.subpath).ok_or_else(|| {
            format!(
                "channel {}/{} is not configured any more: add it back to the config, then replay",
                stored.entry.channel, stored.entry.instance
            )
        })?;
        let outcome = match self.run(channel.as_ref(), &request, false).await {
            Ok((_, event_ids)) => crate::quarantine::ReplayOutcome::Accepted { event_ids },
            Err(ProcessError::Rejected(r)) => crate::quarantine::ReplayOutcome::Rejected {
                reason: r.reason,
                message: r.message,
            },
            Err(ProcessError::Unavailable(m)) => return Err(format!("{m}; the request stays in the quarantine")),
        };
        metrics::counter!("quarantine_replays_total", "channel" => stored.entry.channel.clone()).increment(1);
        quarantine.mark_replayed(id, outcome).map_err(|e| e.to_string())
    }

    async fn run(
        &self,
        channel: &dyn Channel,
        request: &ChannelRequest,
        quarantine: bool,
    ) -> Result<(Reply, Vec<String>), ProcessError> {
        let accepted = match channel.handle(request) {
            Ok(a) => a,
            Err(rejection) => {
                if quarantine && let Some(sink) = &self.rejections {
                    sink.keep(channel, request, &rejection);
                }
                return Err(ProcessError::Rejected(rejection));
            }
        };
        let acks = tokio::time::timeout(self.publish_timeout, publish_all(self.bus.as_ref(), &accepted.events))
            .await
            .map_err(|_| {
                ProcessError::Unavailable(format!(
                    "the bus did not accept the event within {} ms",
                    self.publish_timeout.as_millis()
                ))
            })?
            .map_err(|e| ProcessError::Unavailable(e.to_string()))?;
        let ids: Vec<String> = accepted.events.iter().map(|e| e.event_id().to_string()).collect();
        let reply = accepted.reply.unwrap_or_else(|| {
            let body = match ids.as_slice() {
                [one] => serde_json::json!({ "event_id": one, "offset": acks.first().map(|a| a.position.offset) }),
                many => serde_json::json!({ "event_ids": many }),
            };
            Reply::json(202, &body)
        });
        Ok((reply, ids))
    }
}

/// Why a request was not accepted.
#[derive(Debug)]
pub enum ProcessError {
    Rejected(Rejection),
    /// The bus could not persist it: nothing was accepted, the caller should retry.
    Unavailable(String),
}

/// Notable things that happen here, each logged once and counted.
mod emit {
    use crate::channel::Rejection;

    pub fn accepted(kind: &str, instance: &str, events: usize) {
        metrics::counter!("channel_events_accepted_total", "channel" => kind.to_string(), "instance" => instance.to_string())
            .increment(events as u64);
    }
    /// Every answer, accepted or not, with how long it took.
    pub fn answered(kind: &str, elapsed: std::time::Duration) {
        metrics::histogram!("channel_request_seconds", "channel" => kind.to_string()).record(elapsed.as_secs_f64());
    }
    pub fn rejected(kind: &str, instance: &str, rejection: &Rejection) {
        tracing::info!(reason = rejection.reason.as_str(), message = %rejection.message, "request rejected");
        metrics::counter!("channel_requests_rejected_total", "channel" => kind.to_string(), "instance" => instance.to_string(), "reason" => rejection.reason.as_str())
            .increment(1);
    }
    pub fn unavailable(kind: &str, message: &str) {
        tracing::warn!(message, "bus unavailable; answered 503");
        metrics::counter!("channel_bus_unavailable_total", "channel" => kind.to_string()).increment(1);
    }
}

pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/v1/channels/{kind}/{name}", any(handle))
        .with_state(state)
}

/// The HTTP answer for a channel's reply: status, content type, body and its headers.
pub fn reply_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let mut resp = (status, reply.body).into_response();
    if reply.content_type.is_empty() {
        resp.headers_mut().remove(header::CONTENT_TYPE);
    } else if let Ok(v) = HeaderValue::from_str(&reply.content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    add_headers(&mut resp, &reply.headers);
    resp
}

/// The HTTP answer for a rejection: its status, the JSON body and its headers
/// (a rate limit without its own `Retry-After` gets one of 60 seconds).
pub fn rejection_response(rejection: &Rejection) -> Response {
    let status = StatusCode::from_u16(rejection.reason.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = (status, Json(rejection.body())).into_response();
    add_headers(&mut resp, &rejection.headers);
    if rejection.reason == RejectReason::RateLimited && !resp.headers().contains_key(header::RETRY_AFTER) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    resp
}

/// Appends headers; a name or value HTTP cannot carry is logged and skipped (channels build
/// them from configuration, so this is a configuration mistake, not a reason to fail the answer).
fn add_headers(resp: &mut Response, headers: &[(String, String)]) {
    for (name, value) in headers {
        match (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                resp.headers_mut().append(n, v);
            }
            _ => tracing::warn!(header = %name, value = %value, "response header skipped: not a valid HTTP header"),
        }
    }
}

async fn handle(
    State(state): State<IngestState>,
    Path((kind, name)): Path<(String, String)>,
    http_request: axum::extract::Request,
) -> Response {
    let started = Instant::now();
    let (parts, body) = http_request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(serde_json::json!({
                    "error": RejectReason::PayloadTooLarge.as_str(),
                    "message": format!("body is over {MAX_BODY_BYTES} bytes (or was cut off)"),
                })),
            )
                .into_response();
        }
    };
    let connect = parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned();
    let (method, query, headers) = (parts.method, parts.uri.query().map(str::to_string), parts.headers);
    let Some(channel) = state.channel(&kind, &name) else {
        let known: Vec<String> = state
            .channels
            .iter()
            .map(|c| format!("/v1/channels/{}/{}", c.kind(), c.instance()))
            .collect();
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({
                "error": "unknown_channel",
                "message": format!("no channel is mounted at /v1/channels/{kind}/{name}"),
                "channels": known,
            })),
        )
            .into_response();
    };
    let request = ChannelRequest {
        method: method.as_str().to_string(),
        subpath: name.clone(),
        query: query
            .as_deref()
            .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
            .unwrap_or_default()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_string())))
            .collect(),
        body: body.to_vec(),
        peer: connect.map(|c| c.0.ip()),
        received_at_us: proto::now_us(),
    };
    let span = tracing::info_span!("channel", channel = channel.kind(), instance = %name);
    // Metric label: the mount name, except for a catch-all channel (`*`), whose URL segment
    // is whatever the caller chose and would let anyone create unbounded label values.
    let label = if channel.instance() == "*" {
        "*".to_string()
    } else {
        name.clone()
    };
    async move {
        let extra = channel.response_headers(&request);
        let mut resp = match state.process(channel.as_ref(), &request).await {
            Ok((reply, events)) => {
                emit::accepted(channel.kind(), &label, events);
                reply_response(reply)
            }
            Err(ProcessError::Rejected(rejection)) => {
                emit::rejected(channel.kind(), &label, &rejection);
                rejection_response(&rejection)
            }
            Err(ProcessError::Unavailable(message)) => {
                emit::unavailable(channel.kind(), &message);
                let mut resp = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(serde_json::json!({
                        "error": "bus_unavailable",
                        "message": format!("{message}; nothing was accepted, send it again later"),
                    })),
                )
                    .into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                resp
            }
        };
        add_headers(&mut resp, &extra);
        emit::answered(channel.kind(), started.elapsed());
        resp
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;
    use crate::channels::web_form::{WebForm, WebFormConfig};

    fn app(dir: &std::path::Path) -> Router {
        let form = WebForm::new(WebFormConfig {
            name: "contact".into(),
            rate_limit_per_minute: 2,
            cors_origins: vec!["https://www.example.com".into()],
            ..WebFormConfig::default()
        })
        .unwrap();
        router(IngestState {
            bus: Arc::new(bus::embedded::EmbeddedBus::open(dir).unwrap()),
            channels: Arc::new(vec![Arc::new(form) as Arc<dyn Channel>]),
            rejections: None,
            publish_timeout: Duration::from_secs(5),
        })
    }

    fn request(method: &str, origin: &str, peer: &str) -> axum::extract::Request {
        let mut r = axum::http::Request::builder()
            .method(method)
            .uri("/v1/channels/web-form/contact")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", origin)
            .body(Body::from("email=a@example.com"))
            .unwrap();
        r.extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(peer.parse().unwrap(), 40000)));
        r
    }

    fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
        resp.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn cors_and_rate_limit_headers_reach_the_wire() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let ok = "https://www.example.com";

        let preflight = app
            .clone()
            .oneshot(request("OPTIONS", ok, "203.0.113.7"))
            .await
            .unwrap();
        assert_eq!(preflight.status(), 204);
        assert_eq!(header(&preflight, "access-control-allow-origin"), Some(ok));
        assert_eq!(
            header(&preflight, "access-control-allow-methods"),
            Some("POST, OPTIONS")
        );
        assert_eq!(header(&preflight, "content-type"), None);

        for _ in 0..2 {
            let accepted = app.clone().oneshot(request("POST", ok, "203.0.113.7")).await.unwrap();
            assert_eq!(accepted.status(), 202);
            assert_eq!(header(&accepted, "access-control-allow-origin"), Some(ok));
            assert_eq!(header(&accepted, "vary"), Some("Origin"));
        }
        let limited = app.clone().oneshot(request("POST", ok, "203.0.113.7")).await.unwrap();
        assert_eq!(limited.status(), 429);
        let retry: u64 = header(&limited, "retry-after").unwrap().parse().unwrap();
        assert!((1..=30).contains(&retry), "{retry}");
        // The browser can read the refusal too.
        assert_eq!(header(&limited, "access-control-allow-origin"), Some(ok));

        let denied = app
            .clone()
            .oneshot(request("POST", "https://evil.example", "198.51.100.1"))
            .await
            .unwrap();
        assert_eq!(denied.status(), 403);
        assert_eq!(header(&denied, "access-control-allow-origin"), None);
        let body = axum::body::to_bytes(denied.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "origin_not_allowed");
    }

    #[test]
    fn invalid_reply_headers_are_skipped_not_fatal() {
        let resp = reply_response(
            Reply::text(200, "ok")
                .with_header("x-good", "1")
                .with_header("bad header", "x")
                .with_header("x-bad-value", "a\nb"),
        );
        assert_eq!(header(&resp, "x-good"), Some("1"));
        assert_eq!(resp.headers().len(), 2, "{:?}", resp.headers());
    }
}
