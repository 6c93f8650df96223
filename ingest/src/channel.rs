//! The `Channel` trait: what every channel adapter implements, and the types a
//! request and its outcome are made of. The HTTP plumbing (routing, publishing,
//! quarantine, metrics, spans) lives in `crate::http` and is the same for all.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proto::InboundEvent;

/// An HTTP request as a channel sees it: everything needed to verify and parse.
#[derive(Debug, Clone)]
pub struct ChannelRequest {
    pub method: String,
    /// Path after the channel's mount point (e.g. `contact` for `/v1/channels/web-form/contact`).
    pub subpath: String,
    pub query: BTreeMap<String, String>,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub peer: Option<IpAddr>,
    /// When the platform received it (unix micros).
    pub received_at_us: i64,
}

impl ChannelRequest {
    /// The checks every webhook starts with: a POST, with a body of at most `max_bytes`.
    /// `what` names the calls in the message, e.g. "Shopify webhooks".
    pub fn require_post_within(&self, what: &str, max_bytes: usize) -> Result<(), Rejection> {
        if self.method != "POST" {
            return Err(Rejection::new(
                RejectReason::FailedValidation,
                format!("{what} are POST requests"),
            ));
        }
        if self.body.len() > max_bytes {
            return Err(Rejection::new(
                RejectReason::PayloadTooLarge,
                format!("body is {} bytes; the limit is {max_bytes}", self.body.len()),
            ));
        }
        Ok(())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or_default()
    }
}

/// The HTTP answer a channel wants sent once its events are durably on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    /// Extra response headers (name, value), e.g. a CORS preflight's `Access-Control-Allow-Methods`.
    /// `Content-Type` comes from `content_type`, not from here.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            body: body.into().into_bytes(),
            headers: Vec::new(),
        }
    }
    /// An answer without a body (e.g. 204 to a CORS preflight).
    pub fn empty(status: u16) -> Self {
        Reply {
            status,
            content_type: String::new(),
            body: Vec::new(),
            headers: Vec::new(),
        }
    }
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Reply {
            status,
            content_type: "application/json".into(),
            body: value.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A successful reading of a request.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Events to publish (possibly none, e.g. a URL verification GET).
    pub events: Vec<InboundEvent>,
    /// Sent after every event is durably on the bus. `None` → 202 with the event ids.
    pub reply: Option<Reply>,
}

/// Why a request was refused. Every rejection is quarantined with its raw body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    BadSignature,
    Replayed,
    Undecodable,
    FailedValidation,
    PayloadTooLarge,
    UnsupportedMediaType,
    WrongRecipient,
    RateLimited,
    Spam,
    /// A browser request from an `Origin` the channel does not allow (CORS).
    OriginNotAllowed,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadSignature => "bad_signature",
            RejectReason::Replayed => "replayed",
            RejectReason::Undecodable => "undecodable",
            RejectReason::FailedValidation => "failed_validation",
            RejectReason::PayloadTooLarge => "payload_too_large",
            RejectReason::UnsupportedMediaType => "unsupported_media_type",
            RejectReason::WrongRecipient => "wrong_recipient",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::Spam => "spam",
            RejectReason::OriginNotAllowed => "origin_not_allowed",
        }
    }
    /// HTTP status the caller gets.
    pub fn status(self) -> u16 {
        match self {
            RejectReason::BadSignature => 401,
            RejectReason::Replayed => 409,
            RejectReason::Undecodable | RejectReason::FailedValidation | RejectReason::Spam => 400,
            RejectReason::PayloadTooLarge => 413,
            RejectReason::UnsupportedMediaType => 415,
            RejectReason::WrongRecipient | RejectReason::OriginNotAllowed => 403,
            RejectReason::RateLimited => 429,
        }
    }
}

/// One bad field and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

/// A refused request: reason, message and per-field details for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
    pub fields: Vec<FieldError>,
    /// Extra response headers (name, value), e.g. `Retry-After` for a rate limit.
    pub headers: Vec<(String, String)>,
}

impl Rejection {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
            fields: Vec::new(),
            headers: Vec::new(),
        }
    }
    pub fn with_fields(mut self, fields: Vec<FieldError>) -> Self {
        self.fields = fields;
        self
    }
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// JSON body sent to the caller.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": self.reason.as_str(),
            "message": self.message,
            "fields": self.fields,
        })
    }
}

/// A channel adapter: verifies and parses requests into inbound events. Pure
/// with respect to I/O (no bus, no disk): the framework publishes and quarantines.
pub trait Channel: Send + Sync + 'static {
    /// Channel kind, also the URL segment: `/v1/channels/<kind>/...`.
    fn kind(&self) -> &'static str;

    /// Instance name from the config (form id, AppID, shop), for metrics and provenance.
    fn instance(&self) -> &str;

    /// Reads one request. `Err` → the framework answers with the rejection and quarantines it.
    fn handle(&self, request: &ChannelRequest) -> Result<Accepted, Rejection>;

    /// Admission control (rate limits) for a request as it arrives, before [`Channel::handle`].
    /// The framework calls it for live requests only, never on a quarantine replay (an
    /// operator's replay is not traffic). A refusal here is answered and counted but NOT
    /// quarantined: the sender is told to come back later, and storing a flood would let
    /// one client fill the disk.
    fn admit(&self, _request: &ChannelRequest) -> Result<(), Rejection> {
        Ok(())
    }

    /// Headers added to every answer to this request, accepted, refused or 503 (e.g. CORS
    /// `Access-Control-Allow-Origin`, so a browser page can read field errors too).
    fn response_headers(&self, _request: &ChannelRequest) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Header names whose values are secrets, redacted in quarantine (lower-case).
    fn secret_headers(&self) -> &'static [&'static str] {
        &[]
    }
}
