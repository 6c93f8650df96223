//! Web forms: `POST /v1/channels/web-form/{form_id}`, form-urlencoded or JSON.
//! Captures UTM parameters and the referrer; keeps unknown fields in the raw payload.

use std::collections::BTreeMap;

use proto::inbound::{Attribution, Consent, FormSubmittedV1, InboundHeader, Interaction, Observation, RawIdentifier, SubjectData};
use proto::{InboundEvent, normalize};

use super::ChannelConfigError;
use crate::channel::{Accepted, Channel, ChannelRequest, FieldError, RejectReason, Rejection};

pub const KIND: &str = "web-form";

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
        }
    }
}

pub struct WebForm {
    config: WebFormConfig,
    region: phonenumber::country::Id,
}

impl WebForm {
    pub fn new(config: WebFormConfig) -> Result<Self, ChannelConfigError> {
        let region = normalize::region(&config.default_region).ok_or_else(|| ChannelConfigError::Invalid {
            channel: format!("{KIND}/{}", config.name),
            message: format!(
                "default_region {:?} is not an ISO 3166 region code such as CN or US",
                config.default_region
            ),
        })?;
        Ok(WebForm { config, region })
    }
}

/// Which known field a posted key is, by its usual names in English and Chinese.
fn known_field(key: &str) -> Option<&'static str> {
    let k = key.trim().to_lowercase();
    Some(match k.as_str() {
        "name" | "full_name" | "fullname" | "姓名" | "联系人" | "客户名称" => "name",
        "phone" | "mobile" | "tel" | "telephone" | "phone_number" | "手机" | "手机号" | "电话" | "联系方式" => "phone",
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
                Rejection::new(RejectReason::Undecodable, format!("body is not valid form-urlencoded data: {e}"))
            })?;
            Ok(pairs.into_iter().collect())
        }
        "application/json" => {
            let value: serde_json::Value = serde_json::from_slice(&request.body).map_err(|e| {
                Rejection::new(RejectReason::Undecodable, format!("body is not valid JSON: {e}"))
            })?;
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
            format!("content type {other:?} is not accepted; send application/x-www-form-urlencoded or application/json"),
        )),
    }
}

fn truthy(v: &str) -> bool {
    matches!(v.trim().to_lowercase().as_str(), "1" | "true" | "yes" | "on" | "y" | "是" | "同意")
}

impl Channel for WebForm {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn instance(&self) -> &str {
        &self.config.name
    }

    fn handle(&self, request: &ChannelRequest) -> Result<Accepted, Rejection> {
        if request.method != "POST" {
            return Err(Rejection::new(RejectReason::FailedValidation, "web forms accept POST only"));
        }
        if request.body.len() > self.config.max_body_bytes {
            return Err(Rejection::new(
                RejectReason::PayloadTooLarge,
                format!("body is {} bytes; the limit is {} bytes", request.body.len(), self.config.max_body_bytes),
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
        if fields.get(&self.config.honeypot_field).is_some_and(|v| !v.trim().is_empty()) {
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
                Ok(_) => identifiers.push(RawIdentifier { kind: "phone".into(), value: p.clone(), scope: String::new() }),
                Err(e) => errors.push(FieldError { field: "phone".into(), reason: e.to_string() }),
            }
        }
        if let Some(e) = known.get("email") {
            match normalize::email(e) {
                Ok(_) => identifiers.push(RawIdentifier { kind: "email".into(), value: e.clone(), scope: String::new() }),
                Err(err) => errors.push(FieldError { field: "email".into(), reason: err.to_string() }),
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

    #[test]
    fn urlencoded_form_becomes_one_event_with_utm_and_unknown_fields() {
        let req = post(
            "application/x-www-form-urlencoded",
            "name=%E5%BC%A0%E4%BC%9F&phone=138+0013+8000&email=ZW@Example.com&utm_source=douyin&shoe_size=42",
        );
        let out = form().handle(&req).unwrap();
        let InboundEvent::FormSubmitted(ev) = &out.events[0] else { panic!() };
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
        assert_eq!(form().handle(&post("text/csv", "a")).unwrap_err().reason, RejectReason::UnsupportedMediaType);
        let big = format!("email=a@b.com&x={}", "a".repeat(70_000));
        assert_eq!(form().handle(&post("", &big)).unwrap_err().reason, RejectReason::PayloadTooLarge);
        assert_eq!(
            form().handle(&post("", "email=a@b.com&website=spam.example")).unwrap_err().reason,
            RejectReason::Spam
        );
        assert_eq!(form().handle(&post("", "name=x")).unwrap_err().reason, RejectReason::FailedValidation);
    }
}
