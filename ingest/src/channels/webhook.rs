//! Signed generic webhook for call centres, email systems, partner referrals and ad-lead
//! forms: `POST /v1/channels/webhook/{name}`, JSON Segment-style `identify` and `track`
//! calls, one call or `{"batch": [...]}`. The contract is `docs/webhook.schema.json`.
//!
//! Signing: `X-Crm-Timestamp: <unix seconds>` and `X-Crm-Signature: sha256=<hex>` where the
//! hex is HMAC-SHA256(secret, timestamp + "." + raw body), checked in constant time. A
//! timestamp more than 5 minutes from the time of receipt (either way) is refused as
//! replayed; "now" is `ChannelRequest::received_at_us`, so a quarantined request replayed
//! later is judged by when it first arrived. Each call is deduplicated on its `messageId`
//! (event id `webhook/{name}/{messageId}`). A batch is all or nothing.

use std::collections::BTreeMap;

use hmac::{KeyInit, Mac};
use proto::inbound::{
    Attribution, ChannelEventV1, InboundHeader, Interaction, Observation, Order, OrderLine, RawIdentifier, SubjectData,
};
use proto::{InboundEvent, normalize};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::ChannelConfigError;
use super::youzan::decimal_to_cents;
use crate::channel::{Accepted, Channel, ChannelRequest, FieldError, RejectReason, Rejection};

pub const KIND: &str = "webhook";

/// How far the signed timestamp may be from the time of receipt.
pub const REPLAY_WINDOW_SECONDS: i64 = 300;
/// Most calls in one batch.
pub const MAX_BATCH: usize = 100;
const MAX_BODY_BYTES: usize = 512 * 1024;

/// One webhook source (a call centre, an email system, a partner), as written in the config.
///
/// ```toml
/// [[channels]]
/// type = "webhook"
/// name = "callcenter"                 # also the scope of its userIds
/// secret_env = "CRM_WEBHOOK_CALLCENTER_SECRET"
/// default_region = "CN"               # optional, for phones without a country code
/// ```
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Source name: mount point `/v1/channels/webhook/{name}` and scope of its user ids.
    pub name: String,
    /// Environment variable holding the shared HMAC secret.
    pub secret_env: String,
    #[serde(default = "default_region")]
    pub default_region: String,
}

fn default_region() -> String {
    "CN".into()
}

pub struct Webhook {
    config: WebhookConfig,
    secret: String,
    region: phonenumber::country::Id,
}

type HmacSha256 = hmac::Hmac<Sha256>;

/// The `X-Crm-Signature` value for a timestamp and body: `sha256=<hex>`.
pub fn signature_header(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhook {
    pub fn new(config: WebhookConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ChannelConfigError> {
        let channel = format!("{KIND}/{}", config.name);
        let secret = super::secret(
            env,
            &channel,
            &config.secret_env,
            "shared secret the sender signs webhooks with",
        )?;
        let region = super::region(&channel, &config.default_region)?;
        Ok(Webhook { config, secret, region })
    }

    fn verify(&self, request: &ChannelRequest) -> Result<(), Rejection> {
        let timestamp = request.header("x-crm-timestamp").map(str::trim).unwrap_or_default();
        if timestamp.is_empty() {
            return Err(Rejection::new(
                RejectReason::BadSignature,
                "header X-Crm-Timestamp is missing: send the unix seconds you signed",
            ));
        }
        let signature = request.header("x-crm-signature").map(str::trim).unwrap_or_default();
        let Some(hex_sig) = signature.strip_prefix("sha256=") else {
            return Err(Rejection::new(
                RejectReason::BadSignature,
                "header X-Crm-Signature must be sha256=<hex of HMAC-SHA256(secret, timestamp + \".\" + body)>",
            ));
        };
        let given = hex::decode(hex_sig)
            .map_err(|_| Rejection::new(RejectReason::BadSignature, "X-Crm-Signature is not hex after sha256="))?;
        let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(self.secret.as_bytes()) else {
            return Err(Rejection::new(
                RejectReason::BadSignature,
                "the configured secret cannot key an HMAC",
            ));
        };
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(&request.body);
        mac.verify_slice(&given).map_err(|_| {
            Rejection::new(
                RejectReason::BadSignature,
                "X-Crm-Signature does not match HMAC-SHA256(secret, timestamp + \".\" + body): check the shared secret",
            )
        })?;
        let ts: i64 = timestamp.parse().map_err(|_| {
            Rejection::new(
                RejectReason::BadSignature,
                format!("X-Crm-Timestamp {timestamp:?} is not unix seconds"),
            )
        })?;
        let now = request.received_at_us.div_euclid(1_000_000);
        let skew = now.saturating_sub(ts);
        if skew.saturating_abs() > REPLAY_WINDOW_SECONDS {
            return Err(Rejection::new(
                RejectReason::Replayed,
                format!(
                    "X-Crm-Timestamp is {skew} s from our clock; it must be within {REPLAY_WINDOW_SECONDS} s: sign at send time and keep the sender's clock in sync"
                ),
            ));
        }
        Ok(())
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// Any JSON value as one line of text (nested values as compact JSON).
fn flat(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => match other {
            Value::Number(_) | Value::Bool(_) => text(Some(other)),
            _ => other.to_string(),
        },
    }
}

/// "Call Completed" → "call_completed".
fn snake(event: &str) -> String {
    let mut out = String::new();
    let mut prev_sep = true;
    for c in event.trim().chars() {
        if c.is_alphanumeric() {
            if c.is_uppercase() && !prev_sep && !out.is_empty() {
                out.push('_');
            }
            out.extend(c.to_lowercase());
            prev_sep = false;
        } else if !prev_sep {
            out.push('_');
            prev_sep = true;
        }
    }
    out.trim_end_matches('_').to_string()
}

fn money(v: Option<&Value>) -> Option<i64> {
    decimal_to_cents(&text(v))
}

struct Call<'a> {
    path: String,
    obj: &'a Map<String, Value>,
}

impl Webhook {
    fn read_call(
        &self,
        call: &Call<'_>,
        request: &ChannelRequest,
        errors: &mut Vec<FieldError>,
    ) -> Option<InboundEvent> {
        let obj = call.obj;
        let field = |name: &str| format!("{}{name}", call.path);
        let mut err = |name: &str, reason: &str| {
            errors.push(FieldError {
                field: field(name),
                reason: reason.into(),
            })
        };
        let call_type = text(obj.get("type")).to_ascii_lowercase();
        if call_type != "identify" && call_type != "track" {
            err("type", "must be \"identify\" or \"track\"");
            return None;
        }
        let message_id = text(obj.get("messageId"));
        if message_id.is_empty() {
            err(
                "messageId",
                "required: a unique id per call, reused on retries so they are recognised",
            );
        } else if message_id.len() > 200 {
            err("messageId", "longer than 200 characters");
        }
        let event_name = text(obj.get("event"));
        if call_type == "track" && event_name.is_empty() {
            err("event", "a track call names what happened, e.g. \"Call Completed\"");
        }
        let occurred = match obj.get("timestamp") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => match chrono::DateTime::parse_from_rfc3339(t) {
                Ok(t) => Some(t.timestamp_micros()),
                Err(_) => {
                    err(
                        "timestamp",
                        "must be an RFC 3339 time such as 2026-11-25T08:30:00+08:00",
                    );
                    None
                }
            },
            Some(_) => {
                err("timestamp", "must be an RFC 3339 string");
                None
            }
        };
        let context = obj.get("context").and_then(Value::as_object);
        let traits = match call_type.as_str() {
            "identify" => obj.get("traits"),
            _ => context.and_then(|c| c.get("traits")),
        }
        .and_then(Value::as_object);

        let mut identifiers = Vec::new();
        let user_id = text(obj.get("userId"));
        if !user_id.is_empty() {
            identifiers.push(RawIdentifier {
                kind: "external".into(),
                value: user_id,
                scope: self.config.name.clone(),
            });
        }
        let mut subject = SubjectData::default();
        let mut attributes = BTreeMap::new();
        let anonymous = text(obj.get("anonymousId"));
        if !anonymous.is_empty() {
            attributes.insert("anonymous_id".to_string(), anonymous);
        }
        if let Some(traits) = traits {
            let email = text(traits.get("email"));
            if !email.is_empty() {
                match normalize::email(&email) {
                    Ok(_) => identifiers.push(RawIdentifier {
                        kind: "email".into(),
                        value: email,
                        scope: String::new(),
                    }),
                    Err(e) => err("traits.email", &e.to_string()),
                }
            }
            let phone = text(traits.get("phone"));
            if !phone.is_empty() {
                if phone.contains('*') {
                    attributes.insert("masked_phone".to_string(), phone);
                } else {
                    match normalize::phone(&phone, self.region) {
                        Ok(_) => identifiers.push(RawIdentifier {
                            kind: "phone".into(),
                            value: phone,
                            scope: String::new(),
                        }),
                        Err(e) => err("traits.phone", &e.to_string()),
                    }
                }
            }
            subject.name = text(traits.get("name"));
            if subject.name.is_empty() {
                let first = [traits.get("firstName"), traits.get("first_name")]
                    .into_iter()
                    .map(text)
                    .find(|s| !s.is_empty());
                let last = [traits.get("lastName"), traits.get("last_name")]
                    .into_iter()
                    .map(text)
                    .find(|s| !s.is_empty());
                subject.name = [first, last].into_iter().flatten().collect::<Vec<_>>().join(" ");
            }
            subject.company = match traits.get("company") {
                Some(Value::Object(c)) => text(c.get("name")),
                other => text(other),
            };
            subject.title = text(traits.get("title"));
            subject.industry = text(traits.get("industry"));
            subject.birth_date = text(traits.get("birthday"));
            match traits.get("address") {
                Some(Value::Object(a)) => {
                    subject.region = ["city", "state", "country"]
                        .iter()
                        .map(|k| text(a.get(*k)))
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(", ");
                    subject.address = text(a.get("street"));
                }
                other => subject.address = text(other),
            }
            const KNOWN: &[&str] = &[
                "email",
                "phone",
                "name",
                "firstName",
                "first_name",
                "lastName",
                "last_name",
                "company",
                "title",
                "industry",
                "birthday",
                "address",
            ];
            for (k, v) in traits {
                if !KNOWN.contains(&k.as_str()) && !v.is_null() {
                    attributes.insert(k.clone(), flat(v));
                }
            }
        }
        if identifiers.is_empty() {
            err(
                "userId",
                "a call needs userId, traits.email or traits.phone to know who it is about",
            );
        }

        let properties = obj.get("properties").and_then(Value::as_object);
        let mut details: BTreeMap<String, String> = BTreeMap::new();
        let mut order = None;
        if let Some(props) = properties {
            for (k, v) in props {
                if k != "products" && !v.is_null() {
                    details.insert(k.clone(), flat(v));
                }
            }
            let order_id = [props.get("order_id"), props.get("orderId")]
                .into_iter()
                .map(text)
                .find(|s| !s.is_empty());
            if let Some(order_id) = order_id {
                let lines = props
                    .get("products")
                    .and_then(Value::as_array)
                    .map(|products| {
                        products
                            .iter()
                            .filter_map(Value::as_object)
                            .map(|p| {
                                let quantity = p.get("quantity").and_then(Value::as_i64).unwrap_or(1);
                                OrderLine {
                                    sku: [p.get("sku"), p.get("product_id")]
                                        .into_iter()
                                        .map(text)
                                        .find(|s| !s.is_empty())
                                        .unwrap_or_default(),
                                    title: text(p.get("name")),
                                    quantity,
                                    amount_cents: money(p.get("price")).unwrap_or_default().saturating_mul(quantity),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                order = Some(Order {
                    order_id,
                    status: text(props.get("status")),
                    total_cents: money(props.get("total"))
                        .or_else(|| money(props.get("revenue")))
                        .unwrap_or_default(),
                    currency: text(props.get("currency")),
                    lines,
                });
            }
        }
        let attribution = context.map(|c| {
            let campaign = c.get("campaign");
            let get = |k: &str| text(campaign.and_then(|x| x.get(k)));
            let page = c.get("page");
            Attribution {
                utm_source: get("source"),
                utm_medium: get("medium"),
                utm_campaign: get("name"),
                utm_term: get("term"),
                utm_content: get("content"),
                referrer: text(page.and_then(|p| p.get("referrer"))),
                landing_page: text(page.and_then(|p| p.get("url"))),
            }
        });
        if !errors.is_empty() {
            return None;
        }
        subject.identifiers = identifiers;
        subject.attributes = attributes.into_iter().collect();
        let (kind, summary) = match call_type.as_str() {
            "identify" => ("profile_updated".to_string(), String::new()),
            _ => {
                let summary = properties.map(|p| text(p.get("summary"))).unwrap_or_default();
                (
                    snake(&event_name),
                    if summary.is_empty() {
                        event_name.clone()
                    } else {
                        summary
                    },
                )
            }
        };
        let event_id = proto::derived_id(&format!("{KIND}/{}/{message_id}", self.config.name)).to_string();
        Some(InboundEvent::Channel(ChannelEventV1 {
            header: Some(InboundHeader {
                event_id,
                occurred_at_us: occurred.unwrap_or(request.received_at_us),
                recorded_at_us: request.received_at_us,
                channel: KIND.into(),
                channel_instance: self.config.name.clone(),
                source_ref: message_id,
                raw: serde_json::to_vec(obj).unwrap_or_default(),
                raw_content_type: "application/json".into(),
            }),
            event_type: call_type,
            observation: Some(Observation {
                subject: Some(subject),
                attribution,
                consent: None,
                interaction: Some(Interaction {
                    kind,
                    summary,
                    order,
                    details: details.into_iter().collect(),
                }),
            }),
        }))
    }
}

impl Channel for Webhook {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn instance(&self) -> &str {
        &self.config.name
    }

    fn handle(&self, request: &ChannelRequest) -> Result<Accepted, Rejection> {
        request.require_post_within("webhook calls (split a batch that is too big)", MAX_BODY_BYTES)?;
        self.verify(request)?;
        let mime = request
            .content_type()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if !mime.is_empty() && mime != "application/json" {
            return Err(Rejection::new(
                RejectReason::UnsupportedMediaType,
                format!("content type {mime:?} is not accepted; send application/json"),
            ));
        }
        let body: Value = serde_json::from_slice(&request.body)
            .map_err(|e| Rejection::new(RejectReason::Undecodable, format!("body is not JSON: {e}")))?;
        let Some(root) = body.as_object() else {
            return Err(Rejection::new(
                RejectReason::Undecodable,
                "body must be a JSON object: one call or {\"batch\": [...]}",
            ));
        };
        let calls: Vec<Call<'_>> = match root.get("batch") {
            Some(Value::Array(items)) => {
                if items.is_empty() || items.len() > MAX_BATCH {
                    return Err(Rejection::new(
                        RejectReason::FailedValidation,
                        format!("a batch holds 1 to {MAX_BATCH} calls, this one {}", items.len()),
                    ));
                }
                let mut calls = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let Some(obj) = item.as_object() else {
                        return Err(Rejection::new(
                            RejectReason::FailedValidation,
                            "every batch item must be an object",
                        )
                        .with_fields(vec![FieldError {
                            field: format!("batch[{i}]"),
                            reason: "not an object".into(),
                        }]));
                    };
                    calls.push(Call {
                        path: format!("batch[{i}]."),
                        obj,
                    });
                }
                calls
            }
            Some(_) => {
                return Err(Rejection::new(
                    RejectReason::FailedValidation,
                    "batch must be an array of calls",
                ));
            }
            None => vec![Call {
                path: String::new(),
                obj: root,
            }],
        };
        let mut errors = Vec::new();
        let mut events = Vec::with_capacity(calls.len());
        let mut seen = std::collections::BTreeSet::new();
        for call in &calls {
            let id = text(call.obj.get("messageId"));
            if !id.is_empty() && !seen.insert(id) {
                errors.push(FieldError {
                    field: format!("{}messageId", call.path),
                    reason: "used twice in this batch".into(),
                });
            }
            if let Some(event) = self.read_call(call, request, &mut errors) {
                events.push(event);
            }
        }
        if !errors.is_empty() {
            return Err(Rejection::new(
                RejectReason::FailedValidation,
                "some calls are invalid; nothing from this request was accepted",
            )
            .with_fields(errors));
        }
        Ok(Accepted { events, reply: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "whsec-test";
    const NOW: i64 = 1_764_057_600;

    fn webhook() -> Webhook {
        Webhook::new(
            WebhookConfig {
                name: "callcenter".into(),
                secret_env: "S".into(),
                default_region: "CN".into(),
            },
            &|_| Some(SECRET.into()),
        )
        .unwrap()
    }

    fn signed(body: &str, ts: i64) -> ChannelRequest {
        let ts = ts.to_string();
        ChannelRequest {
            method: "POST".into(),
            subpath: String::new(),
            query: BTreeMap::new(),
            headers: [
                ("content-type".to_string(), "application/json".to_string()),
                ("x-crm-timestamp".to_string(), ts.clone()),
                (
                    "x-crm-signature".to_string(),
                    signature_header(SECRET, &ts, body.as_bytes()),
                ),
            ]
            .into(),
            body: body.as_bytes().to_vec(),
            peer: None,
            received_at_us: NOW * 1_000_000,
        }
    }

    const IDENTIFY: &str = include_str!("testdata/webhook/identify.json");
    const TRACK_BATCH: &str = include_str!("testdata/webhook/track_batch.json");

    fn channel_event(e: &InboundEvent) -> &ChannelEventV1 {
        e.as_channel_event().expect("a channel event")
    }

    #[test]
    fn identify_gives_identifiers_and_traits() {
        let out = webhook().handle(&signed(IDENTIFY, NOW - 10)).unwrap();
        assert_eq!(out.events.len(), 1);
        let ev = channel_event(&out.events[0]);
        assert_eq!(ev.event_type, "identify");
        let subject = ev.observation.as_ref().unwrap().subject.as_ref().unwrap();
        let ids: Vec<_> = subject
            .identifiers
            .iter()
            .map(|i| (i.kind.as_str(), i.value.as_str(), i.scope.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("external", "cc-10086", "callcenter"),
                ("email", "zhang.wei@example.com", ""),
                ("phone", "138 0013 8000", "")
            ]
        );
        assert_eq!(subject.name, "张伟");
        assert_eq!(subject.company, "示例科技");
        assert_eq!(subject.attributes["plan"], "enterprise");
        let header = ev.header.as_ref().unwrap();
        assert_eq!(header.source_ref, "msg-identify-0001");
        assert_eq!(header.occurred_at_us, 1_795_566_600_000_000);
    }

    #[test]
    fn track_batch_gives_one_event_per_call_with_orders_and_campaigns() {
        let out = webhook().handle(&signed(TRACK_BATCH, NOW + 30)).unwrap();
        assert_eq!(out.events.len(), 3);
        let call = channel_event(&out.events[0]);
        let interaction = call.observation.as_ref().unwrap().interaction.as_ref().unwrap();
        assert_eq!(interaction.kind, "call_completed");
        assert_eq!(interaction.details["duration_seconds"], "312");
        let referral = channel_event(&out.events[1]);
        let obs = referral.observation.as_ref().unwrap();
        assert_eq!(obs.interaction.as_ref().unwrap().kind, "partner_referral");
        assert_eq!(obs.subject.as_ref().unwrap().identifiers[0].kind, "phone");
        let order = channel_event(&out.events[2]);
        let obs = order.observation.as_ref().unwrap();
        let o = obs.interaction.as_ref().unwrap().order.as_ref().unwrap();
        assert_eq!(
            (o.order_id.as_str(), o.total_cents, o.currency.as_str()),
            ("SO-2026-0042", 1_299_900, "CNY")
        );
        assert_eq!(o.lines[0].amount_cents, 1_299_900);
        assert_eq!(obs.attribution.as_ref().unwrap().utm_source, "douyin");
    }

    #[test]
    fn replay_window_is_five_minutes_either_way() {
        let ch = webhook();
        assert!(ch.handle(&signed(IDENTIFY, NOW - 300)).is_ok());
        assert!(ch.handle(&signed(IDENTIFY, NOW + 300)).is_ok());
        for ts in [NOW - 301, NOW + 301, 0, i64::MIN, i64::MAX] {
            let err = ch.handle(&signed(IDENTIFY, ts)).unwrap_err();
            assert_eq!((err.reason, err.reason.status()), (RejectReason::Replayed, 409), "{ts}");
        }
    }

    #[test]
    fn forged_or_missing_signatures_are_refused() {
        let ch = webhook();
        let mut req = signed(IDENTIFY, NOW);
        req.headers.insert(
            "x-crm-signature".into(),
            signature_header("wrong", &NOW.to_string(), IDENTIFY.as_bytes()),
        );
        assert_eq!(
            ch.handle(&req).unwrap_err().status_pair(),
            (RejectReason::BadSignature, 401)
        );
        // A signature for another timestamp does not carry over.
        let mut req = signed(IDENTIFY, NOW);
        req.headers.insert("x-crm-timestamp".into(), (NOW - 1).to_string());
        assert_eq!(ch.handle(&req).unwrap_err().reason, RejectReason::BadSignature);
        for header in ["x-crm-signature", "x-crm-timestamp"] {
            let mut req = signed(IDENTIFY, NOW);
            req.headers.remove(header);
            assert_eq!(
                ch.handle(&req).unwrap_err().reason,
                RejectReason::BadSignature,
                "{header}"
            );
        }
    }

    #[test]
    fn the_same_message_three_times_is_one_event_id() {
        let ch = webhook();
        let ids: std::collections::BTreeSet<String> = (0..3)
            .map(|i| {
                ch.handle(&signed(IDENTIFY, NOW - i)).unwrap().events[0]
                    .event_id()
                    .to_string()
            })
            .collect();
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn invalid_calls_name_their_fields_and_reject_the_whole_batch() {
        let body = r#"{"batch":[
            {"type":"identify","messageId":"a","userId":"u1"},
            {"type":"track","messageId":"a","traits":{}},
            {"type":"page","messageId":"c"},
            {"type":"identify","messageId":"d","traits":{"email":"nope@","phone":"12"}}
        ]}"#;
        let err = webhook().handle(&signed(body, NOW)).unwrap_err();
        assert_eq!(err.reason, RejectReason::FailedValidation);
        let fields: Vec<_> = err.fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "batch[1].messageId",
                "batch[1].event",
                "batch[1].userId",
                "batch[2].type",
                "batch[3].traits.email",
                "batch[3].traits.phone",
                "batch[3].userId"
            ]
        );
    }

    /// The TOML examples in docs/channels.md are real configs: they parse and build.
    #[test]
    fn documented_channel_configs_parse_and_build() {
        #[derive(serde::Deserialize)]
        struct File {
            channels: Vec<crate::channels::ChannelConfig>,
        }
        let doc = include_str!("../../../docs/channels.md");
        let blocks: Vec<&str> = doc
            .split("```toml\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .filter(|b| b.contains("[[channels]]"))
            .collect();
        assert_eq!(blocks.len(), 5, "one example per channel");
        let configs: Vec<crate::channels::ChannelConfig> = blocks
            .iter()
            .flat_map(|b| {
                toml::from_str::<File>(b)
                    .unwrap_or_else(|e| panic!("{e}\n{b}"))
                    .channels
            })
            .collect();
        let env = |var: &str| {
            Some(if var.contains("AES") {
                "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into()
            } else {
                "secret".into()
            })
        };
        let built = crate::channels::build(&configs, &env).unwrap();
        let kinds: Vec<_> = built.iter().map(|c| (c.kind(), c.instance().to_string())).collect();
        assert!(kinds.contains(&("web-form", "contact".to_string())), "{kinds:?}");
        for expected in ["wechat", "youzan", "shopify", "webhook"] {
            assert!(
                kinds.iter().any(|(k, _)| *k == expected),
                "{expected} missing from {kinds:?}"
            );
        }
        let err = crate::channels::build(&configs, &|_| None).err().unwrap();
        assert!(err.to_string().contains("CRM_WECHAT_MAIN_TOKEN"), "{err}");
    }

    /// Checks docs/webhook.schema.json and the samples with Python's jsonschema when CI
    /// provides the peer venv (`CRM_PEERS_PYTHON`).
    #[test]
    fn schema_agrees_with_an_independent_validator() {
        let Ok(python) = std::env::var("CRM_PEERS_PYTHON") else {
            eprintln!("CRM_PEERS_PYTHON not set: webhook schema not checked by jsonschema");
            return;
        };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/peers/check_webhook_schema.py");
        let out = std::process::Command::new(&python)
            .arg(script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python} {script}: {e}"));
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn event_names_become_snake_case_kinds() {
        assert_eq!(snake("Call Completed"), "call_completed");
        assert_eq!(snake("emailOpened"), "email_opened");
        assert_eq!(snake("  Lead -- Submitted! "), "lead_submitted");
    }

    trait StatusPair {
        fn status_pair(&self) -> (RejectReason, u16);
    }
    impl StatusPair for Rejection {
        fn status_pair(&self) -> (RejectReason, u16) {
            (self.reason, self.reason.status())
        }
    }

    proptest! {
        #![proptest_config(crate::channels::proptest_config())]
        #[test]
        fn arbitrary_signed_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), skew in -400i64..400) {
            let body = String::from_utf8_lossy(&body).into_owned();
            let _ = webhook().handle(&signed(&body, NOW + skew));
        }

        #[test]
        fn arbitrary_headers_never_panic(ts in ".{0,24}", sig in ".{0,80}", received in any::<i64>()) {
            let mut req = signed(IDENTIFY, NOW);
            req.headers.insert("x-crm-timestamp".into(), ts);
            req.headers.insert("x-crm-signature".into(), sig);
            req.received_at_us = received;
            let _ = webhook().handle(&req);
        }

        #[test]
        fn arbitrary_calls_never_panic(
            kind in prop_oneof![Just("identify"), Just("track"), Just("x")],
            id in ".{0,8}",
            email in ".{0,16}",
            price in "[0-9.a-]{0,8}",
            quantity in any::<i64>(),
            ts in ".{0,30}",
        ) {
            let body = serde_json::json!({"batch": [{
                "type": kind, "messageId": id, "userId": id, "event": id, "timestamp": ts,
                "traits": {"email": email, "phone": email, "company": {"name": email}, "address": {"city": email}},
                "properties": {"order_id": id, "total": price, "products": [{"price": price, "quantity": quantity}]},
                "context": {"traits": {"email": email}, "campaign": {"source": email}, "page": {"url": email}},
            }]}).to_string();
            let _ = webhook().handle(&signed(&body, NOW));
        }
    }
}
