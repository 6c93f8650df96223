//! Web forms: `POST /v1/channels/web-form/{form_id}`, form-urlencoded or JSON.
//! Captures UTM parameters and the referrer; keeps unknown fields in the raw payload.
//! Per form: a consent flag, a honeypot field, a per-IP rate limit ([`WebForm::admit`],
//! a GCRA limiter from `governor` keyed by client address) and CORS (`cors_origins`:
//! preflights answered, `Access-Control-Allow-Origin` on every answer to an allowed
//! origin, other origins refused with 403).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use proto::inbound::{
    Attribution, Consent, FormSubmittedV1, InboundHeader, Interaction, Observation, RawIdentifier, SubjectData,
};
use proto::{InboundEvent, normalize};

use super::ChannelConfigError;
use crate::channel::{Accepted, Channel, ChannelRequest, FieldError, RejectReason, Rejection, Reply};

pub const KIND: &str = "web-form";

/// Request headers a cross-origin page may send (answered to preflights).
const CORS_ALLOWED_HEADERS: &str = "Content-Type, Idempotency-Key";
/// How long a browser may cache a preflight answer (seconds).
const CORS_MAX_AGE_SECS: &str = "600";
/// Forget idle per-address limiter state every this many checks, so memory stays bounded.
const LIMITER_SWEEP_EVERY: u64 = 4096;

/// One web form (or `name = "*"`: every form id without a config of its own).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebFormConfig {
    /// Form id in the URL, or `*` for any.
    pub name: String,
    /// Region for phone numbers written without a country code (ISO 3166 code).
    pub default_region: String,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// A field real people leave empty (hidden by CSS); filled in → rejected as spam.
    pub honeypot_field: String,
    /// Field that carries marketing consent ("yes", "true", "1", "on" → granted).
    pub consent_field: String,
    /// Reject submissions without consent.
    pub require_consent: bool,
    /// Submissions one client address may make per minute (bursts up to this many);
    /// 0 turns the limit off. Loopback clients are never limited.
    pub rate_limit_per_minute: u32,
    /// Header that carries the client address when the platform sits behind a reverse
    /// proxy (`x-forwarded-for`: its last entry, the one the proxy added; or `x-real-ip`).
    /// Empty: the TCP peer address. Set it only behind a proxy that writes the header,
    /// as clients can write it themselves.
    pub client_ip_header: String,
    /// Origins (`https://www.example.com`, scheme + host + optional port) whose pages may
    /// post to this form from the browser, or `*` for any. Empty: no CORS (plain HTML
    /// form posts from any page still work; scripts cannot read the answer).
    pub cors_origins: Vec<String>,
}

impl Default for WebFormConfig {
    fn default() -> Self {
        WebFormConfig {
            name: "*".into(),
            default_region: "CN".into(),
            max_body_bytes: 64 * 1024,
            honeypot_field: "website".into(),
            consent_field: "consent".into(),
            require_consent: false,
            rate_limit_per_minute: 120,
            client_ip_header: String::new(),
            cors_origins: Vec::new(),
        }
    }
}

pub struct WebForm {
    config: WebFormConfig,
    region: phonenumber::country::Id,
    /// `None` when `rate_limit_per_minute = 0`.
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    checks: AtomicU64,
    /// Lower-cased allowed origins; `any_origin` for `*`.
    origins: Vec<String>,
    any_origin: bool,
}

/// What the `Origin` header of a request says about CORS for this form.
#[derive(Debug, PartialEq, Eq)]
enum OriginCheck {
    /// No `Origin` header (not a cross-origin browser request), or CORS is not configured.
    NotChecked,
    /// An allowed origin: echo it in `Access-Control-Allow-Origin`.
    Allowed(String),
    /// An origin the form does not list.
    Denied(String),
}

impl WebForm {
    pub fn new(config: WebFormConfig) -> Result<Self, ChannelConfigError> {
        let channel = format!("{KIND}/{}", config.name);
        let region = super::region(&channel, &config.default_region)?;
        let limiter = NonZeroU32::new(config.rate_limit_per_minute)
            .map(|n| DefaultKeyedRateLimiter::dashmap(Quota::per_minute(n)));
        let mut origins = Vec::new();
        let mut any_origin = false;
        for origin in &config.cors_origins {
            let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
            if o == "*" {
                any_origin = true;
                continue;
            }
            let host = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"))
                .unwrap_or_default();
            if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
                return Err(ChannelConfigError::Invalid {
                    channel,
                    message: format!(
                        "cors_origins entry {origin:?} is not an origin: write scheme, host and optional port \
                         only, such as \"https://www.example.com\" or \"http://localhost:3000\", or \"*\" for any"
                    ),
                });
            }
            origins.push(o);
        }
        let client_ip_header = config.client_ip_header.trim().to_ascii_lowercase();
        Ok(WebForm {
            config: WebFormConfig {
                client_ip_header,
                ..config
            },
            region,
            limiter,
            checks: AtomicU64::new(0),
            origins,
            any_origin,
        })
    }

    fn check_origin(&self, request: &ChannelRequest) -> OriginCheck {
        let Some(origin) = request.header("origin") else {
            return OriginCheck::NotChecked;
        };
        if !self.any_origin && self.origins.is_empty() {
            return OriginCheck::NotChecked;
        }
        let lower = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.any_origin || self.origins.contains(&lower) {
            OriginCheck::Allowed(origin.trim().to_string())
        } else {
            OriginCheck::Denied(origin.to_string())
        }
    }

    /// The address a submission is counted against, or `None` when it is not limited
    /// (loopback: local tools, benchmarks, a health check).
    fn client_key(&self, request: &ChannelRequest) -> Option<IpAddr> {
        let from_header = (!self.config.client_ip_header.is_empty())
            .then(|| request.header(&self.config.client_ip_header))
            .flatten()
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        let ip = from_header.or(request.peer)?.to_canonical();
        match ip {
            _ if ip.is_loopback() => None,
            IpAddr::V4(_) => Some(ip),
            // One IPv6 client usually holds a whole /64: count the prefix, not the address.
            IpAddr::V6(v6) => Some(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1)))),
        }
    }
}
/// Which known field a posted key is, by its usual names in English and Chinese.
fn known_field(key: &str) -> Option<&'static str> {
    let k = key.trim().to_lowercase();
    Some(match k.as_str() {
        "name" | "full_name" | "fullname" | "姓名" | "联系人" | "客户名称" => "name",
        "phone" | "mobile" | "tel" | "telephone" | "phone_number" | "手机" | "手机号" | "电话" | "联系方式" => {
            "phone"
        }
        "email" | "e-mail" | "mail" | "邮箱" | "电子邮箱" => "email",
        "company" | "organization" | "公司" | "公司名称" => "company",
        "title" | "job_title" | "职位" => "title",
        "industry" | "所属行业" | "行业" => "industry",
        "region" | "city" | "地区" | "城市" => "region",
        "message" | "comment" | "留言" | "备注" => "message",
        "utm_source" => "utm_source",
        "utm_medium" => "utm_medium",
        "utm_campaign" => "utm_campaign",
        "utm_term" => "utm_term",
        "utm_content" => "utm_content",
        "referrer" | "referer" => "referrer",
        "wechat_openid" | "openid" => "wechat_openid",
        "wechat_appid" | "appid" => "wechat_appid",
        _ => return None,
    })
}

/// Decodes the body into field → value, by content type.
pub fn decode_fields(request: &ChannelRequest) -> Result<BTreeMap<String, String>, Rejection> {
    let content_type = request.content_type().to_ascii_lowercase();
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    match mime {
        "application/x-www-form-urlencoded" | "" => {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&request.body).map_err(|e| {
                Rejection::new(
                    RejectReason::Undecodable,
                    format!("body is not valid form-urlencoded data: {e}"),
                )
            })?;
            Ok(pairs.into_iter().collect())
        }
        "application/json" => {
            let value: serde_json::Value = serde_json::from_slice(&request.body)
                .map_err(|e| Rejection::new(RejectReason::Undecodable, format!("body is not valid JSON: {e}")))?;
            let serde_json::Value::Object(map) = value else {
                return Err(Rejection::new(
                    RejectReason::Undecodable,
                    "JSON body must be an object of field names to values",
                ));
            };
            let mut out = BTreeMap::new();
            let mut bad = Vec::new();
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) => {
                        out.insert(k, s);
                    }
                    serde_json::Value::Number(n) => {
                        out.insert(k, n.to_string());
                    }
                    serde_json::Value::Bool(b) => {
                        out.insert(k, b.to_string());
                    }
                    serde_json::Value::Null => {}
                    _ => bad.push(FieldError {
                        field: k,
                        reason: "must be a string, number or boolean, not an array or object".into(),
                    }),
                }
            }
            if bad.is_empty() {
                Ok(out)
            } else {
                Err(Rejection::new(RejectReason::Undecodable, "some JSON fields have nested values").with_fields(bad))
            }
        }
        other => Err(Rejection::new(
            RejectReason::UnsupportedMediaType,
            format!(
                "content type {other:?} is not accepted; send application/x-www-form-urlencoded or application/json"
            ),
        )),
    }
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_lowercase().as_str(),
        "1" | "true" | "yes" | "on" | "y" | "是" | "同意"
    )
}

impl Channel for WebForm {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn instance(&self) -> &str {
        &self.config.name
    }

    fn admit(&self, request: &ChannelRequest) -> Result<(), Rejection> {
        // Preflights are not submissions: a script's POST would otherwise count twice.
        if request.method != "POST" {
            return Ok(());
        }
        let (Some(limiter), Some(key)) = (&self.limiter, self.client_key(request)) else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % LIMITER_SWEEP_EVERY == LIMITER_SWEEP_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let secs = secs.max(1);
            Rejection::new(
                RejectReason::RateLimited,
                format!(
                    "more than {} submissions a minute from {key} to form {:?}; retry in {secs} s",
                    self.config.rate_limit_per_minute, self.config.name
                ),
            )
            .with_header("Retry-After", secs.to_string())
        })
    }

    fn response_headers(&self, request: &ChannelRequest) -> Vec<(String, String)> {
        match self.check_origin(request) {
            OriginCheck::Allowed(origin) => vec![
                ("Access-Control-Allow-Origin".into(), origin),
                ("Vary".into(), "Origin".into()),
            ],
            OriginCheck::NotChecked | OriginCheck::Denied(_) => Vec::new(),
        }
    }

    fn handle(&self, request: &ChannelRequest) -> Result<Accepted, Rejection> {
        let cross_origin = match self.check_origin(request) {
            OriginCheck::Denied(origin) => {
                return Err(Rejection::new(
                    RejectReason::OriginNotAllowed,
                    format!(
                        "pages from origin {origin:?} may not post to form {:?}: add the origin to its cors_origins",
                        self.config.name
                    ),
                ));
            }
            OriginCheck::Allowed(_) => true,
            OriginCheck::NotChecked => false,
        };
        if request.method == "OPTIONS" {
            if !cross_origin {
                return Err(Rejection::new(
                    RejectReason::OriginNotAllowed,
                    format!(
                        "form {:?} does not answer CORS preflights: list the page's origin in its cors_origins",
                        self.config.name
                    ),
                ));
            }
            let reply = Reply::empty(204)
                .with_header("Access-Control-Allow-Methods", "POST, OPTIONS")
                .with_header("Access-Control-Allow-Headers", CORS_ALLOWED_HEADERS)
                .with_header("Access-Control-Max-Age", CORS_MAX_AGE_SECS);
            return Ok(Accepted {
                events: Vec::new(),
                reply: Some(reply),
            });
        }
        if request.method != "POST" {
            return Err(Rejection::new(
                RejectReason::FailedValidation,
                format!("web forms accept POST only, not {}", request.method),
            ));
        }
        if request.body.len() > self.config.max_body_bytes {
            return Err(Rejection::new(
                RejectReason::PayloadTooLarge,
                format!(
                    "body is {} bytes; the limit is {} bytes",
                    request.body.len(),
                    self.config.max_body_bytes
                ),
            ));
        }
        let form_id = request.subpath.trim_matches('/').to_string();
        if form_id.is_empty() {
            return Err(Rejection::new(
                RejectReason::FailedValidation,
                "missing form id: post to /v1/channels/web-form/<form_id>",
            ));
        }
        let fields = decode_fields(request)?;
        if fields
            .get(&self.config.honeypot_field)
            .is_some_and(|v| !v.trim().is_empty())
        {
            return Err(Rejection::new(
                RejectReason::Spam,
                format!("the hidden field {:?} was filled in", self.config.honeypot_field),
            ));
        }

        let mut known: BTreeMap<&'static str, String> = BTreeMap::new();
        for (k, v) in &fields {
            if let Some(f) = known_field(k)
                && !v.trim().is_empty()
            {
                known.entry(f).or_insert_with(|| v.clone());
            }
        }
        if let Some(r) = request.header("referer")
            && !known.contains_key("referrer")
        {
            known.insert("referrer", r.to_string());
        }

        let mut errors = Vec::new();
        let mut identifiers = Vec::new();
        if let Some(p) = known.get("phone") {
            match normalize::phone(p, self.region) {
                Ok(_) => identifiers.push(RawIdentifier {
                    kind: "phone".into(),
                    value: p.clone(),
                    scope: String::new(),
                }),
                Err(e) => errors.push(FieldError {
                    field: "phone".into(),
                    reason: e.to_string(),
                }),
            }
        }
        if let Some(e) = known.get("email") {
            match normalize::email(e) {
                Ok(_) => identifiers.push(RawIdentifier {
                    kind: "email".into(),
                    value: e.clone(),
                    scope: String::new(),
                }),
                Err(err) => errors.push(FieldError {
                    field: "email".into(),
                    reason: err.to_string(),
                }),
            }
        }
        if let Some(openid) = known.get("wechat_openid") {
            match known.get("wechat_appid") {
                Some(appid) => identifiers.push(RawIdentifier {
                    kind: "wechat_openid".into(),
                    value: openid.clone(),
                    scope: appid.clone(),
                }),
                None => errors.push(FieldError {
                    field: "wechat_openid".into(),
                    reason: "an openid is only unique within one AppID: send wechat_appid with it".into(),
                }),
            }
        }
        let consent = fields.get(&self.config.consent_field).map(|v| truthy(v));
        if self.config.require_consent && consent != Some(true) {
            errors.push(FieldError {
                field: self.config.consent_field.clone(),
                reason: "this form requires consent".into(),
            });
        }
        if errors.is_empty() && identifiers.is_empty() {
            errors.push(FieldError {
                field: "phone".into(),
                reason: "a phone or an email is required to know who this is".into(),
            });
        }
        if !errors.is_empty() {
            return Err(
                Rejection::new(RejectReason::FailedValidation, "the form has invalid fields").with_fields(errors),
            );
        }

        let get = |k: &str| known.get(k).cloned().unwrap_or_default();
        let event_id = match request.header("idempotency-key") {
            Some(key) => proto::derived_id(&format!("{KIND}/{form_id}/{key}")).to_string(),
            None => uuid::Uuid::new_v4().to_string(),
        };
        let observation = Observation {
            subject: Some(SubjectData {
                identifiers,
                name: get("name"),
                company: get("company"),
                title: get("title"),
                industry: get("industry"),
                region: get("region"),
                ..Default::default()
            }),
            attribution: Some(Attribution {
                utm_source: get("utm_source"),
                utm_medium: get("utm_medium"),
                utm_campaign: get("utm_campaign"),
                utm_term: get("utm_term"),
                utm_content: get("utm_content"),
                referrer: get("referrer"),
                landing_page: request.header("origin").unwrap_or_default().to_string(),
            }),
            consent: consent.map(|granted| Consent {
                marketing: if granted { "granted" } else { "withdrawn" }.into(),
                scope: format!("{KIND}/{form_id}"),
            }),
            interaction: Some(Interaction {
                kind: "form_submitted".into(),
                summary: get("message"),
                ..Default::default()
            }),
        };
        let event = FormSubmittedV1 {
            header: Some(InboundHeader {
                event_id,
                occurred_at_us: request.received_at_us,
                recorded_at_us: request.received_at_us,
                channel: KIND.into(),
                channel_instance: form_id.clone(),
                source_ref: request.header("idempotency-key").unwrap_or_default().to_string(),
                raw: request.body.clone(),
                raw_content_type: request.content_type().to_string(),
            }),
            form_id,
            fields,
            observation: Some(observation),
        };
        Ok(Accepted {
            events: vec![InboundEvent::FormSubmitted(event)],
            reply: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(content_type: &str, body: &str) -> ChannelRequest {
        ChannelRequest {
            method: "POST".into(),
            subpath: "contact".into(),
            query: BTreeMap::new(),
            headers: [("content-type".to_string(), content_type.to_string())].into(),
            body: body.as_bytes().to_vec(),
            peer: None,
            received_at_us: 1,
        }
    }

    fn form() -> WebForm {
        WebForm::new(WebFormConfig::default()).unwrap()
    }

    fn form_with(config: WebFormConfig) -> WebForm {
        WebForm::new(config).unwrap()
    }

    fn from(mut request: ChannelRequest, peer: &str) -> ChannelRequest {
        request.peer = Some(peer.parse().unwrap());
        request
    }

    fn with_header(mut request: ChannelRequest, name: &str, value: &str) -> ChannelRequest {
        request.headers.insert(name.into(), value.into());
        request
    }

    #[test]
    fn rate_limit_counts_submissions_per_client_address() {
        let form = form_with(WebFormConfig {
            rate_limit_per_minute: 3,
            ..WebFormConfig::default()
        });
        let ok = post("", "email=a@b.com");
        for _ in 0..3 {
            form.admit(&from(ok.clone(), "203.0.113.7")).unwrap();
        }
        let refused = form.admit(&from(ok.clone(), "203.0.113.7")).unwrap_err();
        assert_eq!(refused.reason, RejectReason::RateLimited);
        assert_eq!(refused.reason.status(), 429);
        assert!(refused.message.contains("203.0.113.7"), "{}", refused.message);
        let retry: u64 = refused
            .headers
            .iter()
            .find(|(n, _)| n == "Retry-After")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap();
        // 3 a minute: one comes back every 20 s.
        assert!((1..=20).contains(&retry), "Retry-After {retry}");
        // Another address has its own allowance; loopback and unknown peers are never limited.
        form.admit(&from(ok.clone(), "198.51.100.1")).unwrap();
        for _ in 0..10 {
            form.admit(&from(ok.clone(), "127.0.0.1")).unwrap();
            form.admit(&from(ok.clone(), "::1")).unwrap();
            form.admit(&ok).unwrap();
        }
        // Preflights are not submissions.
        let mut preflight = from(ok.clone(), "203.0.113.7");
        preflight.method = "OPTIONS".into();
        form.admit(&preflight).unwrap();
    }

    #[test]
    fn rate_limit_keys_ipv6_by_64_prefix_and_can_be_turned_off() {
        let form = form_with(WebFormConfig {
            rate_limit_per_minute: 2,
            ..WebFormConfig::default()
        });
        let ok = post("", "email=a@b.com");
        form.admit(&from(ok.clone(), "2001:db8:1:2::1")).unwrap();
        form.admit(&from(ok.clone(), "2001:db8:1:2::ffff")).unwrap();
        assert!(form.admit(&from(ok.clone(), "2001:db8:1:2:aaaa::9")).is_err());
        form.admit(&from(ok.clone(), "2001:db8:1:3::1")).unwrap();

        let off = form_with(WebFormConfig {
            rate_limit_per_minute: 0,
            ..WebFormConfig::default()
        });
        for _ in 0..500 {
            off.admit(&from(ok.clone(), "203.0.113.7")).unwrap();
        }
    }

    #[test]
    fn rate_limit_behind_a_proxy_reads_the_configured_header() {
        let form = form_with(WebFormConfig {
            rate_limit_per_minute: 1,
            client_ip_header: "X-Forwarded-For".into(),
            ..WebFormConfig::default()
        });
        // The proxy is on loopback; the client is the entry the proxy appended (the last).
        let via = |xff: &str| {
            from(
                with_header(post("", "email=a@b.com"), "x-forwarded-for", xff),
                "127.0.0.1",
            )
        };
        form.admit(&via("10.9.9.9, 203.0.113.7")).unwrap();
        assert!(form.admit(&via("1.2.3.4, 203.0.113.7")).is_err());
        form.admit(&via("203.0.113.8")).unwrap();
        // Without the header: the peer (loopback, not limited).
        form.admit(&from(post("", "email=a@b.com"), "127.0.0.1")).unwrap();
    }

    fn cors_form() -> WebForm {
        form_with(WebFormConfig {
            name: "contact".into(),
            cors_origins: vec!["https://www.Example.com/".into(), "http://localhost:3000".into()],
            ..WebFormConfig::default()
        })
    }

    #[test]
    fn cors_preflight_from_an_allowed_origin_is_answered() {
        let mut preflight = with_header(post("", ""), "origin", "https://www.example.com");
        preflight.method = "OPTIONS".into();
        preflight = with_header(preflight, "access-control-request-method", "POST");
        let form = cors_form();
        let out = form.handle(&preflight).unwrap();
        assert!(out.events.is_empty());
        let reply = out.reply.unwrap();
        assert_eq!(reply.status, 204);
        let header = |name: &str| reply.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(header("Access-Control-Allow-Methods"), Some("POST, OPTIONS"));
        assert_eq!(header("Access-Control-Allow-Headers"), Some(CORS_ALLOWED_HEADERS));
        assert_eq!(
            form.response_headers(&preflight),
            vec![
                (
                    "Access-Control-Allow-Origin".to_string(),
                    "https://www.example.com".to_string()
                ),
                ("Vary".to_string(), "Origin".to_string())
            ]
        );
    }

    #[test]
    fn cors_post_from_an_allowed_origin_gets_the_allow_origin_header() {
        let form = cors_form();
        let req = with_header(post("", "email=a@b.com"), "origin", "http://localhost:3000");
        let out = form.handle(&req).unwrap();
        assert_eq!(out.events.len(), 1);
        assert!(form.response_headers(&req).contains(&(
            "Access-Control-Allow-Origin".to_string(),
            "http://localhost:3000".to_string()
        )));
        // Without an Origin (server to server, curl): accepted, no CORS headers.
        let plain = post("", "email=a@b.com");
        assert_eq!(form.handle(&plain).unwrap().events.len(), 1);
        assert!(form.response_headers(&plain).is_empty());
    }

    #[test]
    fn cors_refuses_other_origins_with_403_and_says_what_to_do() {
        let form = cors_form();
        let req = with_header(post("", "email=a@b.com"), "origin", "https://evil.example");
        let err = form.handle(&req).unwrap_err();
        assert_eq!(err.reason, RejectReason::OriginNotAllowed);
        assert_eq!(err.reason.status(), 403);
        assert!(err.message.contains("https://evil.example") && err.message.contains("cors_origins"));
        assert!(form.response_headers(&req).is_empty());
        let mut preflight = req.clone();
        preflight.method = "OPTIONS".into();
        assert_eq!(
            form.handle(&preflight).unwrap_err().reason,
            RejectReason::OriginNotAllowed
        );
        // A form without cors_origins answers no preflight, but plain posts from any page work.
        let mut preflight = with_header(post("", ""), "origin", "https://www.example.com");
        preflight.method = "OPTIONS".into();
        assert_eq!(
            form_with(WebFormConfig::default())
                .handle(&preflight)
                .unwrap_err()
                .reason
                .status(),
            403
        );
        let html_post = with_header(post("", "email=a@b.com"), "origin", "https://anywhere.example");
        assert_eq!(super::tests::form().handle(&html_post).unwrap().events.len(), 1);
        // `*` allows any origin.
        let any = form_with(WebFormConfig {
            cors_origins: vec!["*".into()],
            ..WebFormConfig::default()
        });
        assert_eq!(any.handle(&html_post).unwrap().events.len(), 1);
        assert_eq!(any.response_headers(&html_post)[0].1, "https://anywhere.example");
    }

    #[test]
    fn cors_origins_that_are_not_origins_are_refused_at_startup() {
        for bad in [
            "www.example.com",
            "https://www.example.com/contact",
            "ftp://x",
            "https://",
        ] {
            let err = WebForm::new(WebFormConfig {
                cors_origins: vec![bad.into()],
                ..WebFormConfig::default()
            })
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(err.to_string().contains("cors_origins"), "{err}");
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::channels::proptest_config())]
        #[test]
        fn arbitrary_requests_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            content_type in "(application/x-www-form-urlencoded|application/json|text/plain|)(; charset=[a-z0-9-]{0,8})?",
            method in "(POST|OPTIONS|GET)",
            origin in proptest::option::of("(https?://)?[a-zA-Z0-9.:/-]{0,24}"),
            peer in proptest::option::of(proptest::prelude::any::<[u8; 16]>()),
        ) {
            let form = cors_form();
            let mut req = post(&content_type, "");
            req.body = body;
            req.method = method;
            req.peer = peer.map(|b| IpAddr::V6(Ipv6Addr::from(b)));
            if let Some(o) = origin {
                req.headers.insert("origin".into(), o);
            }
            let _ = form.admit(&req);
            let _ = form.response_headers(&req);
            let _ = form.handle(&req);
        }

        #[test]
        fn arbitrary_field_values_never_panic(
            fields in proptest::collection::btree_map(
                "(name|phone|email|wechat_openid|wechat_appid|consent|website|utm_source|手机|[a-z]{1,8})",
                ".{0,40}",
                0..8,
            ),
        ) {
            let body = serde_urlencoded::to_string(&fields).unwrap();
            let _ = form().handle(&post("application/x-www-form-urlencoded", &body));
            let json = serde_json::to_string(&fields).unwrap();
            let _ = form().handle(&post("application/json", &json));
        }
    }

    #[test]
    fn urlencoded_form_becomes_one_event_with_utm_and_unknown_fields() {
        let req = post(
            "application/x-www-form-urlencoded",
            "name=%E5%BC%A0%E4%BC%9F&phone=138+0013+8000&email=ZW@Example.com&utm_source=douyin&shoe_size=42",
        );
        let out = form().handle(&req).unwrap();
        let InboundEvent::FormSubmitted(ev) = &out.events[0] else {
            panic!()
        };
        assert_eq!(ev.form_id, "contact");
        assert_eq!(ev.fields["shoe_size"], "42");
        let obs = ev.observation.as_ref().unwrap();
        assert_eq!(obs.attribution.as_ref().unwrap().utm_source, "douyin");
        let subject = obs.subject.as_ref().unwrap();
        assert_eq!(subject.name, "张伟");
        assert_eq!(subject.identifiers.len(), 2);
    }

    #[test]
    fn bad_fields_are_named() {
        let err = form()
            .handle(&post("application/json", r#"{"phone":"12","email":"zw@"}"#))
            .unwrap_err();
        assert_eq!(err.reason, RejectReason::FailedValidation);
        let fields: Vec<_> = err.fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["phone", "email"]);
    }

    #[test]
    fn content_type_size_and_honeypot_are_checked() {
        assert_eq!(
            form().handle(&post("text/csv", "a")).unwrap_err().reason,
            RejectReason::UnsupportedMediaType
        );
        let big = format!("email=a@b.com&x={}", "a".repeat(70_000));
        assert_eq!(
            form().handle(&post("", &big)).unwrap_err().reason,
            RejectReason::PayloadTooLarge
        );
        assert_eq!(
            form()
                .handle(&post("", "email=a@b.com&website=spam.example"))
                .unwrap_err()
                .reason,
            RejectReason::Spam
        );
        assert_eq!(
            form().handle(&post("", "name=x")).unwrap_err().reason,
            RejectReason::FailedValidation
        );
    }
}
