//! WeChat official account (公众号) callbacks: `GET|POST /v1/channels/wechat/{name}`.
//!
//! GET is WeChat's URL verification (echo `echostr` when `signature` matches). POST carries
//! one XML message or event, in plain mode (`signature` = sha1 of the sorted token,
//! timestamp and nonce) or safe mode (`encrypt_type=aes`, `msg_signature` also covers the
//! `Encrypt` element, AES-256-CBC, PKCS#7 padded to 32-byte blocks, AppID at the tail).
//!
//! The answer is always the plain text `success`, in safe mode too: WeChat accepts it
//! there, and an encrypted empty reply would cost an encryption per request for nothing
//! (we never answer with a passive reply message).
//!
//! Delivery ids are deterministic so WeChat's retries (3 within 15 s) produce one event:
//! `wechat/{appid}/{MsgId}` for messages, `wechat/{appid}/{FromUserName}/{CreateTime}/{Event}`
//! for events (the event name is added so a LOCATION report and a click in the same
//! second stay two events). Not here: sending messages, OAuth, WeCom.

use std::collections::BTreeMap;

use aes::cipher::{BlockModeDecrypt, KeyIvInit, block_padding::NoPadding};
use base64::Engine;
use proto::InboundEvent;
use proto::inbound::{ChannelEventV1, Consent, InboundHeader, Interaction, Observation, RawIdentifier, SubjectData};
use sha1::{Digest, Sha1};

use super::ChannelConfigError;
use crate::channel::{Accepted, Channel, ChannelRequest, FieldError, RejectReason, Rejection, Reply};

pub const KIND: &str = "wechat";

/// Largest accepted body: WeChat messages are a few KiB.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// One official account, as written in the config file.
///
/// ```toml
/// [[channels]]
/// type = "wechat"
/// name = "main-oa"
/// app_id = "wx5823bf96d3bd56c7"
/// token_env = "CRM_WECHAT_MAIN_TOKEN"
/// encoding_aes_key_env = "CRM_WECHAT_MAIN_AES_KEY"   # omit for plain mode only
/// ```
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeChatConfig {
    /// Mount name: `/v1/channels/wechat/{name}`.
    pub name: String,
    /// The account's AppID (wx...): scope of its openids, checked in safe mode.
    pub app_id: String,
    /// Environment variable holding the Token set in the WeChat console.
    pub token_env: String,
    /// Environment variable holding the 43-character EncodingAESKey (safe and compatible mode).
    #[serde(default)]
    pub encoding_aes_key_env: Option<String>,
}

pub struct WeChat {
    config: WeChatConfig,
    token: String,
    /// AES key (32 bytes) decoded from the EncodingAESKey, when safe mode is configured.
    aes_key: Option<[u8; 32]>,
}

/// Decodes a 43-character EncodingAESKey into the 32-byte AES key (base64 of key + "=").
pub fn decode_encoding_aes_key(key: &str) -> Option<[u8; 32]> {
    // WeChat's keys may carry non-zero trailing bits in the last character; accept them
    // as every other implementation (wechatpy, the official SDKs) does.
    const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::general_purpose::PAD.with_decode_allow_trailing_bits(true),
    );
    let bytes = LENIENT.decode(format!("{}=", key.trim())).ok()?;
    bytes.try_into().ok()
}

impl WeChat {
    pub fn new(config: WeChatConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ChannelConfigError> {
        let channel = format!("{KIND}/{}", config.name);
        if config.app_id.trim().is_empty() {
            return Err(ChannelConfigError::Invalid {
                channel,
                message: "app_id is empty: set it to the account's AppID (wx...)".into(),
            });
        }
        let token = super::secret(
            env,
            &channel,
            &config.token_env,
            "Token from the WeChat console (服务器配置)",
        )?;
        let aes_key = match &config.encoding_aes_key_env {
            None => None,
            Some(var) => {
                let raw = super::secret(
                    env,
                    &channel,
                    var,
                    "EncodingAESKey from the WeChat console (43 characters)",
                )?;
                Some(decode_encoding_aes_key(&raw).ok_or_else(|| ChannelConfigError::Invalid {
                    channel: channel.clone(),
                    message: format!(
                        "the EncodingAESKey in {var} is not 43 base64 characters; copy it again from the WeChat console"
                    ),
                })?)
            }
        };
        Ok(WeChat { config, token, aes_key })
    }
}

/// sha1 hex of the sorted, concatenated parts: WeChat's signature scheme.
pub fn signature(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    hex::encode(Sha1::digest(sorted.concat().as_bytes()))
}

/// Compares two byte strings in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The fields of a WeChat XML message or event that we read; every one optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct WireMessage {
    #[serde(rename = "ToUserName")]
    to_user_name: Option<String>,
    #[serde(rename = "FromUserName")]
    from_user_name: Option<String>,
    #[serde(rename = "CreateTime")]
    create_time: Option<String>,
    #[serde(rename = "MsgType")]
    msg_type: Option<String>,
    #[serde(rename = "Event")]
    event: Option<String>,
    #[serde(rename = "EventKey")]
    event_key: Option<String>,
    #[serde(rename = "Ticket")]
    ticket: Option<String>,
    #[serde(rename = "MenuId")]
    menu_id: Option<String>,
    #[serde(rename = "Latitude")]
    latitude: Option<String>,
    #[serde(rename = "Longitude")]
    longitude: Option<String>,
    #[serde(rename = "Precision")]
    precision: Option<String>,
    #[serde(rename = "Content")]
    content: Option<String>,
    #[serde(rename = "MsgId")]
    msg_id: Option<String>,
    #[serde(rename = "PicUrl")]
    pic_url: Option<String>,
    #[serde(rename = "MediaId")]
    media_id: Option<String>,
    #[serde(rename = "Format")]
    format: Option<String>,
    #[serde(rename = "Recognition")]
    recognition: Option<String>,
    #[serde(rename = "UnionId")]
    union_id: Option<String>,
    #[serde(rename = "Encrypt")]
    encrypt: Option<String>,
}

fn parse_xml(xml: &str) -> Result<WireMessage, Rejection> {
    quick_xml::de::from_str(xml).map_err(|e| {
        Rejection::new(
            RejectReason::Undecodable,
            format!("body is not a WeChat XML message: {e}"),
        )
    })
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Why a safe-mode `Encrypt` payload could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("Encrypt is not base64")]
    NotBase64,
    #[error("Encrypt is {0} bytes, not a non-empty multiple of the 16-byte AES block")]
    BadLength(usize),
    #[error("padding is invalid: the EncodingAESKey is probably not this account's")]
    BadPadding,
    #[error("the decrypted layout (random16 | length | message | appid) is inconsistent")]
    BadLayout,
    #[error("the message is not UTF-8")]
    NotUtf8,
}

/// Opens a safe-mode payload: returns (message, appid at the tail).
pub fn decrypt(key: &[u8; 32], encrypt_b64: &str) -> Result<(String, String), DecryptError> {
    let mut buf = base64::engine::general_purpose::STANDARD
        .decode(encrypt_b64.trim())
        .map_err(|_| DecryptError::NotBase64)?;
    if buf.is_empty() || !buf.len().is_multiple_of(16) {
        return Err(DecryptError::BadLength(buf.len()));
    }
    let iv = &key[..16];
    let decryptor = cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv).map_err(|_| DecryptError::BadPadding)?;
    // WeChat pads PKCS#7 to 32-byte blocks, which no 16-byte-block padding type accepts:
    // decrypt without padding and strip it here.
    let plain = decryptor
        .decrypt_padded::<NoPadding>(&mut buf)
        .map_err(|_| DecryptError::BadPadding)?;
    let pad = usize::from(*plain.last().ok_or(DecryptError::BadPadding)?);
    if pad == 0 || pad > 32 || pad > plain.len() {
        return Err(DecryptError::BadPadding);
    }
    let content = &plain[..plain.len() - pad];
    if content.len() < 20 {
        return Err(DecryptError::BadLayout);
    }
    let len_bytes: [u8; 4] = content[16..20].try_into().map_err(|_| DecryptError::BadLayout)?;
    let msg_len = u32::from_be_bytes(len_bytes) as usize;
    let rest = &content[20..];
    if msg_len > rest.len() {
        return Err(DecryptError::BadLayout);
    }
    let (msg, app_id) = rest.split_at(msg_len);
    let msg = String::from_utf8(msg.to_vec()).map_err(|_| DecryptError::NotUtf8)?;
    let app_id = String::from_utf8(app_id.to_vec()).map_err(|_| DecryptError::NotUtf8)?;
    Ok((msg, app_id))
}

impl WeChat {
    fn query<'a>(&self, request: &'a ChannelRequest, name: &str) -> Result<&'a str, Rejection> {
        request.query.get(name).map(String::as_str).filter(|v| !v.is_empty()).ok_or_else(|| {
            Rejection::new(
                RejectReason::BadSignature,
                format!("query parameter {name} is missing: WeChat signs every callback with signature, timestamp and nonce"),
            )
        })
    }

    fn check_signature(&self, request: &ChannelRequest, param: &str, extra: Option<&str>) -> Result<(), Rejection> {
        let given = self.query(request, param)?;
        let timestamp = self.query(request, "timestamp")?;
        let nonce = self.query(request, "nonce")?;
        let mut parts = vec![self.token.as_str(), timestamp, nonce];
        parts.extend(extra);
        let expected = signature(&parts);
        if constant_time_eq(expected.as_bytes(), given.to_ascii_lowercase().as_bytes()) {
            Ok(())
        } else {
            Err(Rejection::new(
                RejectReason::BadSignature,
                format!("{param} does not match: check that token_env holds this account's Token"),
            ))
        }
    }

    /// Verifies and opens the POST body; returns the inner XML message.
    fn open(&self, request: &ChannelRequest) -> Result<WireMessage, Rejection> {
        let body = std::str::from_utf8(&request.body)
            .map_err(|_| Rejection::new(RejectReason::Undecodable, "body is not UTF-8 XML"))?;
        let safe_mode = request
            .query
            .get("encrypt_type")
            .is_some_and(|t| t.eq_ignore_ascii_case("aes"));
        if !safe_mode {
            self.check_signature(request, "signature", None)?;
            return parse_xml(body);
        }
        let Some(key) = &self.aes_key else {
            return Err(Rejection::new(
                RejectReason::Undecodable,
                "the message is encrypted (encrypt_type=aes) but this channel has no encoding_aes_key_env",
            ));
        };
        let outer = parse_xml(body)?;
        let encrypt = non_empty(&outer.encrypt).ok_or_else(|| {
            Rejection::new(
                RejectReason::Undecodable,
                "encrypt_type=aes but the XML has no Encrypt element",
            )
        })?;
        self.check_signature(request, "msg_signature", Some(encrypt))?;
        let (inner, app_id) = decrypt(key, encrypt)
            .map_err(|e| Rejection::new(RejectReason::Undecodable, format!("cannot decrypt the message: {e}")))?;
        if !constant_time_eq(app_id.as_bytes(), self.config.app_id.as_bytes()) {
            return Err(Rejection::new(
                RejectReason::WrongRecipient,
                format!(
                    "the message is addressed to AppID {app_id:?}, not {:?}: point that account at its own channel",
                    self.config.app_id
                ),
            ));
        }
        parse_xml(&inner)
    }

    fn to_event(&self, request: &ChannelRequest, msg: WireMessage) -> Result<InboundEvent, Rejection> {
        let app_id = &self.config.app_id;
        let mut missing = Vec::new();
        for (field, value) in [
            ("FromUserName", &msg.from_user_name),
            ("CreateTime", &msg.create_time),
            ("MsgType", &msg.msg_type),
        ] {
            if non_empty(value).is_none() {
                missing.push(FieldError {
                    field: field.into(),
                    reason: "required in every WeChat message".into(),
                });
            }
        }
        let create_time = non_empty(&msg.create_time).and_then(|t| t.parse::<i64>().ok());
        if non_empty(&msg.create_time).is_some() && create_time.is_none() {
            missing.push(FieldError {
                field: "CreateTime".into(),
                reason: "must be unix seconds".into(),
            });
        }
        if !missing.is_empty() {
            return Err(Rejection::new(
                RejectReason::FailedValidation,
                "the WeChat message lacks required fields",
            )
            .with_fields(missing));
        }
        let openid = non_empty(&msg.from_user_name).unwrap_or_default().to_string();
        let create_time = create_time.unwrap_or_default();
        let msg_type = non_empty(&msg.msg_type).unwrap_or_default().to_ascii_lowercase();
        let event_name = non_empty(&msg.event).unwrap_or_default().to_string();

        let mut details: BTreeMap<String, String> = BTreeMap::new();
        fn put(details: &mut BTreeMap<String, String>, k: &str, v: &Option<String>) {
            if let Some(v) = non_empty(v) {
                details.insert(k.to_string(), v.to_string());
            }
        }
        put(&mut details, "to_user_name", &msg.to_user_name);
        put(&mut details, "msg_id", &msg.msg_id);
        let mut consent = None;
        let mut summary = String::new();
        let (event_type, kind) = if msg_type == "event" {
            let lower = event_name.to_ascii_lowercase();
            match lower.as_str() {
                "subscribe" => {
                    if let Some(key) = non_empty(&msg.event_key) {
                        details.insert("scene".into(), key.strip_prefix("qrscene_").unwrap_or(key).to_string());
                    }
                    put(&mut details, "ticket", &msg.ticket);
                    // Following an account is asking for its messages: consent scoped to that account.
                    consent = Some(Consent {
                        marketing: "granted".into(),
                        scope: format!("{KIND}/{app_id}"),
                    });
                    ("subscribe".to_string(), "wechat_subscribe")
                }
                "unsubscribe" => {
                    consent = Some(Consent {
                        marketing: "withdrawn".into(),
                        scope: format!("{KIND}/{app_id}"),
                    });
                    // WeChat's rules expect the account to delete the follower's data on unfollow;
                    // the domain decides (erasure is its business), we only flag it.
                    details.insert("platform_expects_erasure".into(), "true".into());
                    ("unsubscribe".to_string(), "wechat_unsubscribe")
                }
                "scan" => {
                    put(&mut details, "scene", &msg.event_key);
                    put(&mut details, "ticket", &msg.ticket);
                    ("SCAN".to_string(), "wechat_scan")
                }
                "click" => {
                    put(&mut details, "menu_key", &msg.event_key);
                    summary = non_empty(&msg.event_key).unwrap_or_default().to_string();
                    ("CLICK".to_string(), "wechat_menu_click")
                }
                "view" => {
                    put(&mut details, "url", &msg.event_key);
                    put(&mut details, "menu_id", &msg.menu_id);
                    summary = non_empty(&msg.event_key).unwrap_or_default().to_string();
                    ("VIEW".to_string(), "wechat_menu_view")
                }
                "location" => {
                    put(&mut details, "latitude", &msg.latitude);
                    put(&mut details, "longitude", &msg.longitude);
                    put(&mut details, "precision", &msg.precision);
                    ("LOCATION".to_string(), "wechat_location")
                }
                _ => {
                    put(&mut details, "event_key", &msg.event_key);
                    (event_name.clone(), "wechat_event")
                }
            }
        } else {
            details.insert("msg_type".into(), msg_type.clone());
            match msg_type.as_str() {
                "text" => summary = non_empty(&msg.content).unwrap_or_default().to_string(),
                "image" => {
                    put(&mut details, "pic_url", &msg.pic_url);
                    put(&mut details, "media_id", &msg.media_id);
                }
                "voice" => {
                    put(&mut details, "media_id", &msg.media_id);
                    put(&mut details, "format", &msg.format);
                    put(&mut details, "recognition", &msg.recognition);
                    summary = non_empty(&msg.recognition).unwrap_or_default().to_string();
                }
                _ => {
                    put(&mut details, "media_id", &msg.media_id);
                    summary = non_empty(&msg.content).unwrap_or_default().to_string();
                }
            }
            (msg_type.clone(), "wechat_message")
        };

        let source_ref = match non_empty(&msg.msg_id) {
            Some(msg_id) => msg_id.to_string(),
            None => format!("{openid}/{create_time}/{event_name}"),
        };
        let event_id = proto::derived_id(&format!("{KIND}/{app_id}/{source_ref}")).to_string();

        let mut identifiers = vec![RawIdentifier {
            kind: "wechat_openid".into(),
            value: openid.clone(),
            scope: app_id.clone(),
        }];
        if let Some(union_id) = non_empty(&msg.union_id) {
            identifiers.push(RawIdentifier {
                kind: "wechat_unionid".into(),
                value: union_id.to_string(),
                scope: String::new(),
            });
        }
        Ok(InboundEvent::Channel(ChannelEventV1 {
            header: Some(InboundHeader {
                event_id,
                occurred_at_us: create_time.saturating_mul(1_000_000),
                recorded_at_us: request.received_at_us,
                channel: KIND.into(),
                channel_instance: app_id.clone(),
                source_ref,
                raw: request.body.clone(),
                raw_content_type: request.content_type().to_string(),
            }),
            event_type,
            observation: Some(Observation {
                subject: Some(SubjectData {
                    identifiers,
                    ..Default::default()
                }),
                attribution: None,
                consent,
                interaction: Some(Interaction {
                    kind: kind.into(),
                    summary,
                    order: None,
                    details: details.into_iter().collect(),
                }),
            }),
        }))
    }
}

impl Channel for WeChat {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn instance(&self) -> &str {
        &self.config.name
    }

    fn handle(&self, request: &ChannelRequest) -> Result<Accepted, Rejection> {
        match request.method.as_str() {
            "GET" => {
                self.check_signature(request, "signature", None)?;
                let echostr = self
                    .query(request, "echostr")
                    .map_err(|_| Rejection::new(RejectReason::FailedValidation, "URL verification without echostr"))?;
                Ok(Accepted {
                    events: Vec::new(),
                    reply: Some(Reply::text(200, echostr)),
                })
            }
            "POST" => {
                if request.body.len() > MAX_BODY_BYTES {
                    return Err(Rejection::new(
                        RejectReason::PayloadTooLarge,
                        format!(
                            "body is {} bytes; WeChat messages are under {MAX_BODY_BYTES}",
                            request.body.len()
                        ),
                    ));
                }
                let msg = self.open(request)?;
                let event = self.to_event(request, msg)?;
                Ok(Accepted {
                    events: vec![event],
                    reply: Some(Reply::text(200, "success")),
                })
            }
            other => Err(Rejection::new(
                RejectReason::FailedValidation,
                format!("method {other} is not used by WeChat: it sends GET (verification) and POST (messages)"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Requests and expectations produced by wechatpy (tests/peers/wechat_client.py).
    #[derive(serde::Deserialize)]
    struct Fixtures {
        generator: String,
        token: String,
        encoding_aes_key: String,
        app_id: String,
        cases: Vec<Case>,
    }

    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        method: String,
        query: BTreeMap<String, String>,
        body: String,
        expect: serde_json::Value,
    }

    const COMMITTED: &str = include_str!("testdata/wechat/fixtures.json");

    fn channel(f: &Fixtures) -> WeChat {
        let env = |var: &str| match var {
            "TOKEN" => Some(f.token.clone()),
            "AES" => Some(f.encoding_aes_key.clone()),
            _ => None,
        };
        WeChat::new(
            WeChatConfig {
                name: "main".into(),
                app_id: f.app_id.clone(),
                token_env: "TOKEN".into(),
                encoding_aes_key_env: Some("AES".into()),
            },
            &env,
        )
        .unwrap()
    }

    fn request(case: &Case) -> ChannelRequest {
        ChannelRequest {
            method: case.method.clone(),
            subpath: String::new(),
            query: case.query.clone(),
            headers: [("content-type".to_string(), "text/xml".to_string())].into(),
            body: case.body.as_bytes().to_vec(),
            peer: None,
            received_at_us: 1_764_057_600_000_000,
        }
    }

    fn check_all(fixtures: &Fixtures) {
        assert!(fixtures.generator.starts_with("wechatpy"), "{}", fixtures.generator);
        let ch = channel(fixtures);
        let mut seen_types = std::collections::BTreeSet::new();
        for case in &fixtures.cases {
            let name = &case.name;
            let exp = &case.expect;
            let got = ch.handle(&request(case));
            if exp["outcome"] == "rejected" {
                let err = got
                    .err()
                    .unwrap_or_else(|| panic!("{name}: accepted, expected a rejection"));
                assert_eq!(err.reason.as_str(), exp["reason"], "{name}: {err:?}");
                assert_eq!(
                    i64::from(err.reason.status()),
                    exp["status"].as_i64().unwrap(),
                    "{name}"
                );
                continue;
            }
            let out = got.unwrap_or_else(|e| panic!("{name}: rejected: {e:?}"));
            let reply = out.reply.as_ref().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&reply.body),
                exp["reply"].as_str().unwrap(),
                "{name}"
            );
            assert_eq!(out.events.len() as u64, exp["events"].as_u64().unwrap(), "{name}");
            let Some(InboundEvent::Channel(ev)) = out.events.first() else {
                continue;
            };
            seen_types.insert(ev.event_type.clone());
            assert_eq!(ev.event_type, exp["event_type"].as_str().unwrap(), "{name}");
            let header = ev.header.as_ref().unwrap();
            assert_eq!(header.channel, KIND);
            assert_eq!(header.channel_instance, fixtures.app_id);
            assert_eq!(
                header.occurred_at_us,
                exp["create_time"].as_i64().unwrap() * 1_000_000,
                "{name}"
            );
            if let Some(source_ref) = exp.get("source_ref") {
                assert_eq!(header.source_ref, source_ref.as_str().unwrap(), "{name}");
            }
            let obs = ev.observation.as_ref().unwrap();
            let ids = &obs.subject.as_ref().unwrap().identifiers;
            assert_eq!(ids[0].kind, "wechat_openid");
            assert_eq!(ids[0].value, exp["openid"].as_str().unwrap());
            assert_eq!(ids[0].scope, fixtures.app_id, "openids are scoped to their AppID");
            let interaction = obs.interaction.as_ref().unwrap();
            assert_eq!(interaction.kind, exp["kind"].as_str().unwrap(), "{name}");
            if let Some(summary) = exp.get("summary") {
                assert_eq!(interaction.summary, summary.as_str().unwrap(), "{name}");
            }
            if let Some(details) = exp.get("details").and_then(|d| d.as_object()) {
                for (k, v) in details {
                    assert_eq!(
                        interaction.details.get(k).map(String::as_str),
                        v.as_str(),
                        "{name}: detail {k}"
                    );
                }
            }
            match exp.get("consent").and_then(|c| c.as_str()) {
                Some(c) => {
                    let consent = obs.consent.as_ref().unwrap();
                    assert_eq!(consent.marketing, c, "{name}");
                    assert_eq!(consent.scope, format!("wechat/{}", fixtures.app_id));
                }
                None => assert!(obs.consent.is_none(), "{name}"),
            }
        }
        for t in [
            "subscribe",
            "unsubscribe",
            "SCAN",
            "CLICK",
            "VIEW",
            "LOCATION",
            "text",
            "image",
            "voice",
        ] {
            assert!(seen_types.contains(t), "no fixture produced {t}");
        }
    }

    #[test]
    fn committed_wechatpy_fixtures_are_read_as_wechatpy_meant() {
        let fixtures: Fixtures = serde_json::from_str(COMMITTED).unwrap();
        check_all(&fixtures);
    }

    /// Regenerates the requests with wechatpy (fresh timestamps, nonces and random prefixes)
    /// when CI provides the peer venv: `CRM_PEERS_PYTHON=$HOME/.cache/crm/pyenv/bin/python`.
    #[test]
    fn live_wechatpy_requests_are_read_as_wechatpy_meant() {
        let Ok(python) = std::env::var("CRM_PEERS_PYTHON") else {
            eprintln!("CRM_PEERS_PYTHON not set: only the committed wechatpy fixtures were checked");
            return;
        };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/peers/wechat_client.py");
        let out = std::process::Command::new(&python)
            .arg(script)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {python} {script}: {e}; install tests/peers/requirements.txt into that venv")
            });
        assert!(
            out.status.success(),
            "wechat_client.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fixtures: Fixtures = serde_json::from_slice(&out.stdout).unwrap();
        check_all(&fixtures);
    }

    #[test]
    fn the_same_delivery_three_times_is_one_event_id() {
        let fixtures: Fixtures = serde_json::from_str(COMMITTED).unwrap();
        let ch = channel(&fixtures);
        for name in ["text_aes", "subscribe_plain", "location_aes"] {
            let case = fixtures.cases.iter().find(|c| c.name == name).unwrap();
            let ids: std::collections::BTreeSet<String> = (0..3)
                .map(|_| ch.handle(&request(case)).unwrap().events[0].event_id().to_string())
                .collect();
            assert_eq!(ids.len(), 1, "{name}: {ids:?}");
        }
        // The same message in plain and safe mode is the same delivery too.
        let plain = ch
            .handle(&request(
                fixtures.cases.iter().find(|c| c.name == "text_plain").unwrap(),
            ))
            .unwrap();
        let aes = ch
            .handle(&request(fixtures.cases.iter().find(|c| c.name == "text_aes").unwrap()))
            .unwrap();
        assert_eq!(plain.events[0].event_id(), aes.events[0].event_id());
    }

    #[test]
    fn missing_secrets_and_bad_keys_are_named() {
        let config = WeChatConfig {
            name: "main".into(),
            app_id: "wx1".into(),
            token_env: "T".into(),
            encoding_aes_key_env: Some("K".into()),
        };
        let err = WeChat::new(config.clone(), &|_| None).err().unwrap();
        assert!(err.to_string().contains("T is not set"), "{err}");
        let err = WeChat::new(config, &|v| Some(if v == "K" { "short".into() } else { "t".into() }))
            .err()
            .unwrap();
        assert!(err.to_string().contains("43 base64 characters"), "{err}");
    }

    #[test]
    fn encrypted_message_without_a_configured_key_is_undecodable() {
        let fixtures: Fixtures = serde_json::from_str(COMMITTED).unwrap();
        let plain_only = WeChat::new(
            WeChatConfig {
                name: "main".into(),
                app_id: fixtures.app_id.clone(),
                token_env: "T".into(),
                encoding_aes_key_env: None,
            },
            &|_| Some(fixtures.token.clone()),
        )
        .unwrap();
        let case = fixtures.cases.iter().find(|c| c.name == "text_aes").unwrap();
        assert_eq!(
            plain_only.handle(&request(case)).unwrap_err().reason,
            RejectReason::Undecodable
        );
    }

    proptest! {
        #![proptest_config(crate::channels::proptest_config())]
        #[test]
        fn arbitrary_requests_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            xmlish in "<xml>(<[A-Za-z]{1,12}>[^<]{0,20}</[A-Za-z]{1,12}>){0,6}</xml>",
            query in proptest::collection::btree_map("[a-z_]{1,14}", ".{0,40}", 0..6),
            aes in any::<bool>(),
            method in prop_oneof![Just("GET"), Just("POST"), Just("PUT")],
        ) {
            let fixtures: Fixtures = serde_json::from_str(COMMITTED).unwrap();
            let ch = channel(&fixtures);
            let mut query = query;
            if aes {
                query.insert("encrypt_type".into(), "aes".into());
            }
            for body in [body, xmlish.into_bytes()] {
                let req = ChannelRequest {
                    method: method.to_string(),
                    subpath: String::new(),
                    query: query.clone(),
                    headers: BTreeMap::new(),
                    body,
                    peer: None,
                    received_at_us: 0,
                };
                let _ = ch.handle(&req);
            }
        }

        #[test]
        fn arbitrary_ciphertexts_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let key = decode_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
            let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
            let _ = decrypt(&key, &b64);
        }

        #[test]
        fn arbitrary_inner_xml_never_panics(xml in "<xml>(<(FromUserName|CreateTime|MsgType|Event|EventKey|MsgId)>[^<]{0,16}</(FromUserName|CreateTime|MsgType|Event|EventKey|MsgId)>){0,8}</xml>") {
            let fixtures: Fixtures = serde_json::from_str(COMMITTED).unwrap();
            let ch = channel(&fixtures);
            if let Ok(msg) = parse_xml(&xml) {
                let req = ChannelRequest {
                    method: "POST".into(),
                    subpath: String::new(),
                    query: BTreeMap::new(),
                    headers: BTreeMap::new(),
                    body: xml.into_bytes(),
                    peer: None,
                    received_at_us: 0,
                };
                let _ = ch.to_event(&req, msg);
            }
        }
    }
}
