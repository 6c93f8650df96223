//! Youzan (有赞) push messages: `POST /v1/channels/youzan/{name}`, JSON.
//!
//! Verified by the `Event-Sign` header = md5(client_id + raw body + client_secret), lower-case
//! hex, compared in constant time; a `Client-Id` header naming another app is refused as a
//! wrong recipient. The envelope's `msg` is URL-encoded JSON. Deduplicated on `msg_id`
//! (event id `youzan/{name}/{msg_id}`: Youzan retries up to 4 times over 2 hours).
//!
//! Read: trade messages (`trade_*`: order with lines and amounts in cents, buyer mobile,
//! `yz_open_id`, `fans_id`) and customer/member messages (`SCRM_*`, types naming a customer
//! or member: mobile, `yz_open_id`, name). Any other type becomes a generic `youzan_event`
//! with whatever identifiers it carries, so nothing a shop subscribes to is refused.
//! Scopes: `youzan_uid` (yz_open_id, unique per developer app) is scoped to the client_id;
//! `youzan_fans_id` to the shop (root_kdt_id, else kdt_id). Masked or encrypted phones go
//! to attributes, never identifiers. The reply is Youzan's `{"code":0,"msg":"success"}`.

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use proto::inbound::{
    ChannelEventV1, InboundHeader, Interaction, Observation, Order, OrderLine, RawIdentifier, SubjectData,
};
use proto::{InboundEvent, normalize};
use serde_json::Value;

use super::ChannelConfigError;
use super::wechat::constant_time_eq;
use crate::channel::{Accepted, Channel, ChannelRequest, FieldError, RejectReason, Rejection, Reply};

pub const KIND: &str = "youzan";

const MAX_BODY_BYTES: usize = 1024 * 1024;

/// One Youzan app (client), as written in the config file.
///
/// ```toml
/// [[channels]]
/// type = "youzan"
/// name = "shop"
/// client_id = "4e96eb2fbc4f24f26f"
/// client_secret_env = "CRM_YOUZAN_SHOP_SECRET"
/// ```
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct YouzanConfig {
    /// Mount name: `/v1/channels/youzan/{name}`.
    pub name: String,
    /// The app's client_id (not secret: it is part of the signed string and sent in headers).
    pub client_id: String,
    /// Environment variable holding the app's client_secret.
    pub client_secret_env: String,
    /// Region for mobiles without a country code.
    #[serde(default = "default_region")]
    pub default_region: String,
}

fn default_region() -> String {
    "CN".into()
}

pub struct Youzan {
    config: YouzanConfig,
    secret: String,
    region: phonenumber::country::Id,
}

impl Youzan {
    pub fn new(config: YouzanConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ChannelConfigError> {
        let channel = format!("{KIND}/{}", config.name);
        if config.client_id.trim().is_empty() {
            return Err(ChannelConfigError::Invalid {
                channel,
                message: "client_id is empty: copy it from the Youzan cloud console (应用管理)".into(),
            });
        }
        let secret = super::secret(env, &channel, &config.client_secret_env, "Youzan app client_secret")?;
        let region = super::region(&channel, &config.default_region)?;
        Ok(Youzan { config, secret, region })
    }
}

/// md5(client_id + body + client_secret) in lower-case hex: Youzan's `Event-Sign`.
pub fn event_sign(client_id: &str, body: &[u8], client_secret: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(client_id.as_bytes());
    md5.update(body);
    md5.update(client_secret.as_bytes());
    hex::encode(md5.finalize())
}

/// Decodes `application/x-www-form-urlencoded`-style text (`%XX` and `+` for space), as
/// Youzan's Java `URLEncoder` writes `msg`.
pub fn url_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Yuan (string or number, at most 2 decimals) to cents, without floating point.
pub fn yuan_to_cents(v: &Value) -> Option<i64> {
    let text = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    decimal_to_cents(&text)
}

/// "12.3" → 1230, "-0.05" → -5; `None` for anything else (more than 2 decimals, garbage).
pub fn decimal_to_cents(text: &str) -> Option<i64> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 2 {
        return None;
    }
    let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let frac: i64 = format!("{frac:0<2}").parse().ok()?;
    let cents = whole.checked_mul(100)?.checked_add(frac)?;
    Some(if neg { -cents } else { cents })
}

/// A JSON value as text: strings as is, numbers printed, anything else empty.
fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// "2020-12-16 17:14:50" (Beijing time, as Youzan writes it) to unix micros.
fn beijing_time_us(s: &str) -> Option<i64> {
    let t = chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S").ok()?;
    let offset = chrono::FixedOffset::east_opt(8 * 3600)?;
    t.and_local_timezone(offset).single().map(|t| t.timestamp_micros())
}

impl Youzan {
    fn verify(&self, request: &ChannelRequest) -> Result<(), Rejection> {
        if let Some(client_id) = request.header("client-id")
            && client_id.trim() != self.config.client_id
        {
            return Err(Rejection::new(
                RejectReason::WrongRecipient,
                format!(
                    "Client-Id {client_id:?} is not this channel's client_id {:?}: point that app at its own channel",
                    self.config.client_id
                ),
            ));
        }
        let given = request
            .header("event-sign")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Rejection::new(
                    RejectReason::BadSignature,
                    "header Event-Sign is missing: Youzan signs every push",
                )
            })?;
        let expected = event_sign(&self.config.client_id, &request.body, &self.secret);
        if constant_time_eq(expected.as_bytes(), given.to_ascii_lowercase().as_bytes()) {
            Ok(())
        } else {
            Err(Rejection::new(
                RejectReason::BadSignature,
                "Event-Sign does not match md5(client_id + body + client_secret): check client_secret_env",
            ))
        }
    }

    fn phone_identifier(
        &self,
        raw: &str,
        attributes: &mut BTreeMap<String, String>,
        attr: &str,
    ) -> Option<RawIdentifier> {
        let raw = raw.trim();
        if raw.is_empty() {
            return None;
        }
        // Masked (138****8000) or encrypted ($...$) values are not identifiers.
        if !raw.contains('*') && !raw.contains('$') && normalize::phone(raw, self.region).is_ok() {
            return Some(RawIdentifier {
                kind: "phone".into(),
                value: raw.to_string(),
                scope: String::new(),
            });
        }
        attributes.insert(attr.to_string(), raw.to_string());
        None
    }
}

/// What we read from one push, before it becomes an event.
#[derive(Default)]
struct Reading {
    kind: &'static str,
    identifiers: Vec<RawIdentifier>,
    attributes: BTreeMap<String, String>,
    name: String,
    region: String,
    address: String,
    order: Option<Order>,
    summary: String,
    details: BTreeMap<String, String>,
    occurred_at_us: Option<i64>,
}

fn trade_kind(event_type: &str) -> &'static str {
    match event_type {
        "trade_TradeCreate" => "order_created",
        "trade_TradePaid" | "trade_TradeBuyerPay" => "order_paid",
        "trade_TradeSuccess" => "order_completed",
        "trade_TradeClose" => "order_closed",
        "trade_TradeSellerShip" | "trade_TradePartlySellerShip" => "order_shipped",
        _ => "order_updated",
    }
}

fn is_customer_type(event_type: &str) -> bool {
    let t = event_type.to_ascii_lowercase();
    t.starts_with("scrm") || t.contains("customer") || t.contains("member")
}

impl Youzan {
    fn push_ids(&self, reading: &mut Reading, obj: &serde_json::Map<String, Value>, shop_scope: &str) {
        let yz_open_id = text(obj.get("yz_open_id"));
        if !yz_open_id.is_empty() && !reading.identifiers.iter().any(|i| i.kind == "youzan_uid") {
            reading.identifiers.push(RawIdentifier {
                kind: "youzan_uid".into(),
                value: yz_open_id,
                scope: self.config.client_id.clone(),
            });
        }
        let fans_id = text(obj.get("fans_id"));
        if !fans_id.is_empty() && fans_id != "0" && !reading.identifiers.iter().any(|i| i.kind == "youzan_fans_id") {
            reading.identifiers.push(RawIdentifier {
                kind: "youzan_fans_id".into(),
                value: fans_id,
                scope: shop_scope.to_string(),
            });
        }
    }

    fn read_trade(&self, reading: &mut Reading, msg: &Value, shop_scope: &str, fallback_tid: &str) {
        let info = msg.get("full_order_info").unwrap_or(msg);
        let order_info = info.get("order_info").and_then(Value::as_object);
        let get = |k: &str| order_info.map(|o| text(o.get(k))).unwrap_or_default();
        let mut tid = get("tid");
        if tid.is_empty() {
            tid = text(msg.get("tid"));
        }
        if tid.is_empty() {
            tid = fallback_tid.to_string();
        }
        let status = {
            let s = get("status");
            if s.is_empty() { text(msg.get("status")) } else { s }
        };
        for k in ["pay_time", "created", "update_time"] {
            let t = get(k);
            if let Some(us) = beijing_time_us(&t) {
                reading.occurred_at_us.get_or_insert(us);
            }
        }
        if let Some(buyer) = info.get("buyer_info").and_then(Value::as_object) {
            let phone = text(buyer.get("buyer_phone"));
            if let Some(id) = self.phone_identifier(&phone, &mut reading.attributes, "buyer_phone_unusable") {
                reading.identifiers.push(id);
            }
            self.push_ids(reading, buyer, shop_scope);
            let nickname = text(buyer.get("fans_nickname"));
            if !nickname.is_empty() && !nickname.starts_with('$') {
                reading.attributes.insert("youzan_nickname".into(), nickname);
            }
            // The WeChat openid of the buyer, but of which AppID Youzan does not say: not an identifier.
            let outer = text(buyer.get("outer_user_id"));
            if !outer.is_empty() {
                reading.attributes.insert("youzan_outer_user_id".into(), outer);
            }
        }
        if let Some(addr) = info.get("address_info").and_then(Value::as_object) {
            let parts: Vec<String> = ["delivery_province", "delivery_city", "delivery_district"]
                .iter()
                .map(|k| text(addr.get(*k)))
                .filter(|s| !s.is_empty())
                .collect();
            reading.region = parts.join(" ");
            let street = text(addr.get("delivery_address"));
            if !street.is_empty() && !street.starts_with('$') {
                reading.address = format!("{} {street}", reading.region).trim().to_string();
            }
            // The receiver may be someone else than the buyer: kept, not matched.
            let receiver_tel = text(addr.get("receiver_tel"));
            if !receiver_tel.is_empty() {
                reading.attributes.insert("receiver_tel".into(), receiver_tel);
            }
            let receiver = text(addr.get("receiver_name"));
            if !receiver.is_empty() && !receiver.starts_with('$') {
                reading.attributes.insert("receiver_name".into(), receiver);
            }
        }
        let pay = info.get("pay_info");
        let total = pay
            .and_then(|p| {
                p.get("payment")
                    .and_then(yuan_to_cents)
                    .or_else(|| p.get("total_fee").and_then(yuan_to_cents))
            })
            .unwrap_or_default();
        if let Some(p) = pay.and_then(Value::as_object) {
            for k in ["total_fee", "post_fee"] {
                if let Some(c) = p.get(k).and_then(yuan_to_cents) {
                    reading.details.insert(format!("{k}_cents"), c.to_string());
                }
            }
        }
        let lines = info
            .get("orders")
            .and_then(Value::as_array)
            .map(|orders| {
                orders
                    .iter()
                    .filter_map(Value::as_object)
                    .map(|line| {
                        let quantity = int(line.get("num")).unwrap_or(1);
                        let amount_cents = line
                            .get("payment")
                            .and_then(yuan_to_cents)
                            .or_else(|| {
                                line.get("price")
                                    .and_then(yuan_to_cents)
                                    .map(|p| p.saturating_mul(quantity))
                            })
                            .unwrap_or_default();
                        let mut sku = text(line.get("outer_sku_id"));
                        if sku.is_empty() {
                            sku = match text(line.get("sku_id")).as_str() {
                                "" | "0" => text(line.get("item_id")),
                                s => s.to_string(),
                            };
                        }
                        OrderLine {
                            sku,
                            title: text(line.get("title")),
                            quantity,
                            amount_cents,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let remark = info
            .get("remark_info")
            .map(|r| text(r.get("buyer_message")))
            .unwrap_or_default();
        if !remark.is_empty() {
            reading.summary = remark;
        }
        reading.order = Some(Order {
            order_id: tid,
            status,
            total_cents: total,
            currency: "CNY".into(),
            lines,
        });
    }

    fn read_customer(&self, reading: &mut Reading, msg: &Value, shop_scope: &str) {
        let Some(obj) = msg.as_object() else { return };
        for key in ["mobile", "phone", "buyer_phone"] {
            let raw = text(obj.get(key));
            if let Some(id) = self.phone_identifier(&raw, &mut reading.attributes, "mobile_unusable") {
                reading.identifiers.push(id);
                break;
            }
        }
        self.push_ids(reading, obj, shop_scope);
        if text(obj.get("account_type")) == "YouZanAccount" {
            let account = text(obj.get("account_id"));
            if !account.is_empty() && !reading.identifiers.iter().any(|i| i.kind == "youzan_uid") {
                reading.identifiers.push(RawIdentifier {
                    kind: "youzan_uid".into(),
                    value: account,
                    scope: self.config.client_id.clone(),
                });
            }
        }
        reading.name = text(obj.get("name"));
        for key in ["gender", "birthday", "event_type"] {
            let v = text(obj.get(key));
            if !v.is_empty() {
                reading.details.insert(key.to_string(), v);
            }
        }
        if let Some(t) = int(obj.get("created_at")) {
            reading.occurred_at_us = Some(t.saturating_mul(1_000_000));
        }
    }
}

impl Channel for Youzan {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn instance(&self) -> &str {
        &self.config.name
    }

    fn handle(&self, request: &ChannelRequest) -> Result<Accepted, Rejection> {
        request.require_post_within("Youzan pushes", MAX_BODY_BYTES)?;
        self.verify(request)?;
        let envelope: Value = serde_json::from_slice(&request.body)
            .map_err(|e| Rejection::new(RejectReason::Undecodable, format!("body is not JSON: {e}")))?;
        let Some(env) = envelope.as_object() else {
            return Err(Rejection::new(
                RejectReason::Undecodable,
                "body must be a JSON object (Youzan's push envelope)",
            ));
        };
        let ok = Reply::json(200, &serde_json::json!({"code": 0, "msg": "success"}));
        // Youzan's "test push" from the console: answer so the URL is accepted, publish nothing.
        if env.get("test").and_then(Value::as_bool) == Some(true) && env.get("msg_id").is_none() {
            return Ok(Accepted {
                events: Vec::new(),
                reply: Some(ok),
            });
        }
        let body_client = text(env.get("client_id"));
        if !body_client.is_empty() && body_client != self.config.client_id {
            return Err(Rejection::new(
                RejectReason::WrongRecipient,
                format!(
                    "the push is for client_id {body_client:?}, not {:?}",
                    self.config.client_id
                ),
            ));
        }
        let mut event_type = text(env.get("type"));
        if event_type.is_empty() {
            event_type = request.header("event-type").unwrap_or_default().trim().to_string();
        }
        let msg_id = text(env.get("msg_id"));
        let mut errors = Vec::new();
        if msg_id.is_empty() {
            errors.push(FieldError {
                field: "msg_id".into(),
                reason: "required: it is how retries are recognised".into(),
            });
        }
        if event_type.is_empty() {
            errors.push(FieldError {
                field: "type".into(),
                reason: "required (or the Event-Type header)".into(),
            });
        }
        let raw_msg = text(env.get("msg"));
        let msg: Value = if raw_msg.is_empty() {
            Value::Null
        } else {
            match url_decode(&raw_msg).and_then(|s| serde_json::from_str(&s).ok()) {
                Some(v) => v,
                None => {
                    errors.push(FieldError {
                        field: "msg".into(),
                        reason: "must be URL-encoded JSON".into(),
                    });
                    Value::Null
                }
            }
        };
        if !errors.is_empty() {
            return Err(
                Rejection::new(RejectReason::FailedValidation, "the Youzan push is incomplete").with_fields(errors),
            );
        }

        let kdt = text(env.get("kdt_id"));
        let root = text(env.get("root_kdt_id"));
        let shop_scope = if !root.is_empty() && root != "0" {
            root
        } else {
            kdt.clone()
        };
        let mut reading = Reading::default();
        reading.details.insert("kdt_id".into(), kdt.clone());
        let kdt_name = text(env.get("kdt_name"));
        if !kdt_name.is_empty() {
            reading.details.insert("kdt_name".into(), kdt_name);
        }
        if event_type.starts_with("trade_") && !event_type.starts_with("trade_refund") {
            reading.kind = trade_kind(&event_type);
            self.read_trade(&mut reading, &msg, &shop_scope, &text(env.get("id")));
        } else if is_customer_type(&event_type) {
            reading.kind = "customer_updated";
            self.read_customer(&mut reading, &msg, &shop_scope);
        } else {
            reading.kind = "youzan_event";
            reading.details.insert("id".into(), text(env.get("id")));
            if let Some(obj) = msg.as_object() {
                self.push_ids(&mut reading, obj, &shop_scope);
            }
        }

        let event_id = proto::derived_id(&format!("{KIND}/{}/{msg_id}", self.config.name)).to_string();
        let event = ChannelEventV1 {
            header: Some(InboundHeader {
                event_id,
                occurred_at_us: reading.occurred_at_us.unwrap_or(request.received_at_us),
                recorded_at_us: request.received_at_us,
                channel: KIND.into(),
                channel_instance: self.config.name.clone(),
                source_ref: msg_id,
                raw: request.body.clone(),
                raw_content_type: request.content_type().to_string(),
            }),
            event_type,
            observation: Some(Observation {
                subject: Some(SubjectData {
                    identifiers: reading.identifiers,
                    name: reading.name,
                    region: reading.region,
                    address: reading.address,
                    attributes: reading.attributes.into_iter().collect(),
                    ..Default::default()
                }),
                attribution: None,
                consent: None,
                interaction: Some(Interaction {
                    kind: reading.kind.into(),
                    summary: reading.summary,
                    order: reading.order,
                    details: reading.details.into_iter().collect(),
                }),
            }),
        };
        Ok(Accepted {
            events: vec![InboundEvent::Channel(event)],
            reply: Some(ok),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "test-client-secret";
    const CLIENT_ID: &str = "4e96eb2fbc4f24f26f";

    fn youzan() -> Youzan {
        Youzan::new(
            YouzanConfig {
                name: "shop".into(),
                client_id: CLIENT_ID.into(),
                client_secret_env: "S".into(),
                default_region: "CN".into(),
            },
            &|_| Some(SECRET.into()),
        )
        .unwrap()
    }

    fn push(body: &str, event_type: &str) -> ChannelRequest {
        ChannelRequest {
            method: "POST".into(),
            subpath: String::new(),
            query: BTreeMap::new(),
            headers: [
                ("content-type".to_string(), "application/json".to_string()),
                ("event-sign".to_string(), event_sign(CLIENT_ID, body.as_bytes(), SECRET)),
                ("event-type".to_string(), event_type.to_string()),
                ("client-id".to_string(), CLIENT_ID.to_string()),
            ]
            .into(),
            body: body.as_bytes().to_vec(),
            peer: None,
            received_at_us: 1,
        }
    }

    fn event(out: &Accepted) -> &ChannelEventV1 {
        out.events[0].as_channel_event().expect("a channel event")
    }

    const CREATE: &str = include_str!("testdata/youzan/trade_TradeCreate.json");
    const PAID: &str = include_str!("testdata/youzan/trade_TradePaid.json");
    const CUSTOMER: &str = include_str!("testdata/youzan/SCRM_CUSTOMER_EVENT.json");

    #[test]
    fn trade_create_becomes_an_order_with_buyer_ids_and_lines_in_cents() {
        let out = youzan().handle(&push(CREATE, "trade_TradeCreate")).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.reply.as_ref().unwrap().body),
            r#"{"code":0,"msg":"success"}"#
        );
        let ev = event(&out);
        assert_eq!(ev.event_type, "trade_TradeCreate");
        let obs = ev.observation.as_ref().unwrap();
        let subject = obs.subject.as_ref().unwrap();
        let ids: Vec<_> = subject
            .identifiers
            .iter()
            .map(|i| (i.kind.as_str(), i.value.as_str(), i.scope.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("phone", "13800138000", ""),
                ("youzan_uid", "lDWyZBas807636140352864256", CLIENT_ID),
                ("youzan_fans_id", "19582175287", "43387399"),
            ]
        );
        assert_eq!(subject.attributes["receiver_tel"], "13700000000");
        assert_eq!(subject.region, "浙江省 杭州市 西湖区");
        let interaction = obs.interaction.as_ref().unwrap();
        assert_eq!(interaction.kind, "order_created");
        let order = interaction.order.as_ref().unwrap();
        assert_eq!(order.order_id, "E20201216171450086900211");
        assert_eq!(order.status, "WAIT_BUYER_PAY");
        assert_eq!(order.total_cents, 13914);
        assert_eq!(order.currency, "CNY");
        let lines: Vec<_> = order
            .lines
            .iter()
            .map(|l| (l.sku.as_str(), l.quantity, l.amount_cents))
            .collect();
        assert_eq!(lines, [("spbm001", 2, 300), ("482711410", 1, 13614)]);
        assert_eq!(interaction.details["total_fee_cents"], "28170");
        // 2020-12-16 17:14:50 +08:00
        assert_eq!(ev.header.as_ref().unwrap().occurred_at_us, 1_608_110_090_000_000);
    }

    #[test]
    fn masked_mobile_is_an_attribute_not_an_identifier() {
        let out = youzan().handle(&push(PAID, "trade_TradePaid")).unwrap();
        let ev = event(&out);
        let obs = ev.observation.as_ref().unwrap();
        let subject = obs.subject.as_ref().unwrap();
        assert!(subject.identifiers.iter().all(|i| i.kind != "phone"));
        assert_eq!(subject.attributes["buyer_phone_unusable"], "138****8000");
        assert_eq!(obs.interaction.as_ref().unwrap().kind, "order_paid");
    }

    #[test]
    fn customer_message_gives_mobile_and_youzan_id() {
        let out = youzan().handle(&push(CUSTOMER, "SCRM_CUSTOMER_EVENT")).unwrap();
        let ev = event(&out);
        let subject = ev.observation.as_ref().unwrap().subject.as_ref().unwrap();
        assert_eq!(subject.name, "张伟");
        let kinds: Vec<_> = subject.identifiers.iter().map(|i| i.kind.as_str()).collect();
        assert_eq!(kinds, ["phone", "youzan_uid"]);
        assert_eq!(
            ev.observation.as_ref().unwrap().interaction.as_ref().unwrap().kind,
            "customer_updated"
        );
    }

    #[test]
    fn retries_of_one_msg_id_are_one_event_id() {
        let ch = youzan();
        let ids: std::collections::BTreeSet<String> = (0..3)
            .map(|_| {
                ch.handle(&push(CREATE, "trade_TradeCreate")).unwrap().events[0]
                    .event_id()
                    .to_string()
            })
            .collect();
        assert_eq!(ids.len(), 1);
        let paid = ch.handle(&push(PAID, "trade_TradePaid")).unwrap();
        assert!(
            !ids.contains(paid.events[0].event_id()),
            "another msg_id is another event"
        );
    }

    #[test]
    fn forged_or_foreign_pushes_are_refused() {
        let ch = youzan();
        let mut req = push(CREATE, "trade_TradeCreate");
        req.headers
            .insert("event-sign".into(), event_sign(CLIENT_ID, CREATE.as_bytes(), "wrong"));
        let err = ch.handle(&req).unwrap_err();
        assert_eq!((err.reason, err.reason.status()), (RejectReason::BadSignature, 401));
        req.headers.remove("event-sign");
        assert_eq!(ch.handle(&req).unwrap_err().reason, RejectReason::BadSignature);
        let mut req = push(CREATE, "trade_TradeCreate");
        req.headers.insert("client-id".into(), "someone-else".into());
        assert_eq!(ch.handle(&req).unwrap_err().reason, RejectReason::WrongRecipient);
        let mut tampered = push(CREATE, "trade_TradeCreate");
        tampered.body = CREATE.replace("90731021", "90731022").into_bytes();
        assert_eq!(ch.handle(&tampered).unwrap_err().reason, RejectReason::BadSignature);
    }

    #[test]
    fn console_test_push_is_answered_without_events() {
        let out = youzan().handle(&push(r#"{"test":true}"#, "")).unwrap();
        assert!(out.events.is_empty());
    }

    #[test]
    fn yuan_amounts_convert_exactly() {
        assert_eq!(decimal_to_cents("281.70"), Some(28170));
        assert_eq!(decimal_to_cents("0.07"), Some(7));
        assert_eq!(decimal_to_cents("12"), Some(1200));
        assert_eq!(decimal_to_cents("1.5"), Some(150));
        assert_eq!(decimal_to_cents("-3.20"), Some(-320));
        assert_eq!(decimal_to_cents("1.234"), None);
        assert_eq!(decimal_to_cents("abc"), None);
        assert_eq!(decimal_to_cents("."), None);
        assert_eq!(url_decode("a%20b+c%E5%BC%A0"), Some("a b c张".into()));
        assert_eq!(url_decode("%G1"), None);
        assert_eq!(url_decode("%4"), None);
    }

    proptest! {
        #![proptest_config(crate::channels::proptest_config())]
        #[test]
        fn arbitrary_signed_bodies_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            msg in ".{0,200}",
            event_type in prop_oneof![Just("trade_TradeCreate"), Just("SCRM_CUSTOMER_EVENT"), Just("x"), Just("")],
        ) {
            let ch = youzan();
            let _ = ch.handle(&push(&String::from_utf8_lossy(&body), event_type));
            let envelope = serde_json::json!({"client_id": CLIENT_ID, "msg_id": "m", "type": event_type, "msg": msg}).to_string();
            let _ = ch.handle(&push(&envelope, event_type));
            let encoded: String = msg.bytes().map(|b| format!("%{b:02X}")).collect();
            let envelope = serde_json::json!({"client_id": CLIENT_ID, "msg_id": "m", "type": event_type, "msg": encoded}).to_string();
            let _ = ch.handle(&push(&envelope, event_type));
        }

        #[test]
        fn arbitrary_order_json_never_panics(v in arb_json()) {
            let ch = youzan();
            for event_type in ["trade_TradePaid", "SCRM_CUSTOMER_EVENT", "other"] {
                let msg: String = v.to_string().bytes().map(|b| format!("%{b:02X}")).collect();
                let envelope = serde_json::json!({"client_id": CLIENT_ID, "msg_id": "m", "type": event_type, "msg": msg}).to_string();
                let _ = ch.handle(&push(&envelope, event_type));
            }
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[0-9.$*-]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let keys = prop_oneof![
                Just("full_order_info".to_string()),
                Just("order_info".to_string()),
                Just("buyer_info".to_string()),
                Just("pay_info".to_string()),
                Just("orders".to_string()),
                Just("payment".to_string()),
                Just("num".to_string()),
                Just("mobile".to_string()),
                Just("yz_open_id".to_string()),
                Just("address_info".to_string()),
                "[a-z_]{1,8}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(keys, inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
