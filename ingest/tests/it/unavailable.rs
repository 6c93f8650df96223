//! When the bus cannot persist an event, the caller gets 503 + Retry-After after a
//! bounded wait, never a 202 for something that was not stored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use bus::{Ack, Bus, BusConsumer, BusError, BusRecord, DeadLetter, Delivery};
use ingest::http::{IngestState, router};
use tower::ServiceExt;

/// A bus whose broker is gone: publishes hang (like a producer waiting for acks).
struct LostBroker;

#[async_trait::async_trait]
impl Bus for LostBroker {
    async fn publish(&self, _: BusRecord) -> Result<Ack, BusError> {
        std::future::pending().await
    }
    async fn consumer(&self, _: &str) -> Result<Box<dyn BusConsumer>, BusError> {
        Err(BusError::Unavailable("broker lost".into()))
    }
    async fn dead_letter(&self, _: &Delivery, _: &str) -> Result<(), BusError> {
        Err(BusError::Unavailable("broker lost".into()))
    }
    async fn dead_letters(&self, _: usize) -> Result<Vec<DeadLetter>, BusError> {
        Ok(Vec::new())
    }
    fn kind(&self) -> &'static str {
        "lost"
    }
}

/// A bus that refuses at once.
struct Refusing;

#[async_trait::async_trait]
impl Bus for Refusing {
    async fn publish(&self, _: BusRecord) -> Result<Ack, BusError> {
        Err(BusError::Unavailable("all brokers down".into()))
    }
    async fn consumer(&self, _: &str) -> Result<Box<dyn BusConsumer>, BusError> {
        Err(BusError::Unavailable("all brokers down".into()))
    }
    async fn dead_letter(&self, _: &Delivery, _: &str) -> Result<(), BusError> {
        Err(BusError::Unavailable("all brokers down".into()))
    }
    async fn dead_letters(&self, _: usize) -> Result<Vec<DeadLetter>, BusError> {
        Ok(Vec::new())
    }
    fn kind(&self) -> &'static str {
        "refusing"
    }
}

async fn post(bus: Arc<dyn Bus>) -> (u16, Option<String>, String, Duration) {
    let state = IngestState {
        bus,
        channels: Arc::new(ingest::channels::build(&[], &|_| None).unwrap()),
        rejections: None,
        publish_timeout: Duration::from_millis(300),
    };
    let started = Instant::now();
    let resp = router(state)
        .oneshot(
            Request::post("/v1/channels/web-form/contact")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from("email=a@example.com"))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (
        status,
        retry,
        String::from_utf8_lossy(&body).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_lost_broker_gets_503_with_retry_after_within_the_publish_timeout() {
    let (status, retry, body, took) = post(Arc::new(LostBroker)).await;
    assert_eq!(status, 503, "{body}");
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok()));
    assert!(
        body.contains("bus_unavailable") && body.contains("send it again later"),
        "{body}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_refusing_bus_gets_503_at_once() {
    let (status, retry, body, took) = post(Arc::new(Refusing)).await;
    assert_eq!(status, 503, "{body}");
    assert!(retry.is_some());
    assert!(body.contains("all brokers down"), "{body}");
    assert!(took < Duration::from_secs(1), "{took:?}");
}
