//! Real channels end to end: one config file declaring WeChat, Youzan, Shopify, a signed
//! webhook and web forms; the real `crm` binary; requests signed the way each platform signs
//! them, by an implementation other than ours (wechatpy's fixtures or a live wechatpy run for
//! WeChat, Python's standard `hmac`/`hashlib` for the others). Checks: one person across four
//! channels is one customer with every identifier's provenance; retried deliveries are one
//! timeline entry; forged signatures and a wrong AppID are refused and quarantined; a
//! quarantined webhook replays once its secret is fixed (twice → still one event); web-form
//! CORS and rate limits on the wire; the per-channel metrics.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::Server;

const WECHAT_FIXTURES: &str = include_str!("../../ingest/src/channels/testdata/wechat/fixtures.json");
const YOUZAN_TRADE_CREATE: &str = include_str!("../../ingest/src/channels/testdata/youzan/trade_TradeCreate.json");
const SHOPIFY_ORDER: &str = include_str!("../../ingest/src/channels/testdata/shopify/orders_create.json");

const SHOP: &str = "example.myshopify.com";
const SHOPIFY_SECRET: &str = "hush";
const YOUZAN_CLIENT_ID: &str = "4e96eb2fbc4f24f26f";
const YOUZAN_SECRET: &str = "test-client-secret";
const WEBHOOK_OLD_SECRET: &str = "callcenter-old-secret";
const WEBHOOK_NEW_SECRET: &str = "callcenter-new-secret";
const SITE: &str = "https://www.example.com";
/// The person of the sample payloads: Youzan's buyer phone, Shopify's order contact email.
const PHONE: &str = "13800138000";
const EMAIL: &str = "jon@example.com";

fn config(wechat_app_id: &str) -> String {
    format!(
        r#"
[[channels]]
type = "web-form"
name = "signup"
default_region = "CN"
cors_origins = ["{SITE}"]

[[channels]]
type = "web-form"
name = "promo"
rate_limit_per_minute = 2
client_ip_header = "x-forwarded-for"

[[channels]]
type = "wechat"
name = "main-oa"
app_id = "{wechat_app_id}"
token_env = "CRM_E2E_WECHAT_TOKEN"
encoding_aes_key_env = "CRM_E2E_WECHAT_AES_KEY"

[[channels]]
type = "youzan"
name = "shop"
client_id = "{YOUZAN_CLIENT_ID}"
client_secret_env = "CRM_E2E_YOUZAN_SECRET"

[[channels]]
type = "shopify"
name = "{SHOP}"
secret_env = "CRM_E2E_SHOPIFY_SECRET"
default_region = "US"

[[channels]]
type = "webhook"
name = "callcenter"
secret_env = "CRM_E2E_WEBHOOK_SECRET"
"#
    )
}

fn python() -> String {
    std::env::var("CRM_PEERS_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Signs with Python's standard library, not with our code: `kind` is `shopify`
/// (base64 HMAC-SHA256), `webhook` (hex HMAC-SHA256) or `md5` (hex MD5 of the message).
fn peer_sign(kind: &str, secret: &str, message: &[u8]) -> String {
    const SCRIPT: &str = r#"
import base64, hashlib, hmac, sys
kind, secret, msg = sys.argv[1], sys.argv[2].encode(), sys.stdin.buffer.read()
if kind == "shopify":
    print(base64.b64encode(hmac.new(secret, msg, hashlib.sha256).digest()).decode())
elif kind == "webhook":
    print(hmac.new(secret, msg, hashlib.sha256).hexdigest())
else:
    print(hashlib.md5(msg).hexdigest())
"#;
    let python = python();
    let mut child = Command::new(&python)
        .args(["-c", SCRIPT, kind, secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python} to sign the test requests: {e}; install python3"));
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{python} could not sign");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// wechatpy's requests: made live when the peer venv is there, else the committed ones.
fn wechat_fixtures() -> Value {
    if let Ok(python) = std::env::var("CRM_PEERS_PYTHON") {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/wechat_client.py");
        let out = Command::new(&python).arg(script).output().unwrap();
        assert!(
            out.status.success(),
            "wechat_client.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    } else {
        serde_json::from_str(WECHAT_FIXTURES).unwrap()
    }
}

fn case<'a>(fixtures: &'a Value, name: &str) -> &'a Value {
    fixtures["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no wechat fixture {name}"))
}

async fn send_wechat(server: &Server, case: &Value) -> (u16, String) {
    let query: Vec<(String, String)> = case["query"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let resp = server
        .client
        .request(
            case["method"].as_str().unwrap().parse().unwrap(),
            format!(
                "{}/v1/channels/wechat/main-oa?{}",
                server.url,
                serde_urlencoded::to_string(&query).unwrap()
            ),
        )
        .header("content-type", "text/xml")
        .body(case["body"].as_str().unwrap().to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn send_shopify(server: &Server, body: &str, secret: &str, event_id: &str) -> (u16, String) {
    let resp = server
        .client
        .post(format!("{}/v1/channels/shopify/{SHOP}", server.url))
        .header("content-type", "application/json")
        .header("x-shopify-topic", "orders/create")
        .header("x-shopify-shop-domain", SHOP)
        .header("x-shopify-api-version", "2025-10")
        .header("x-shopify-webhook-id", format!("wh-{event_id}"))
        .header("x-shopify-event-id", event_id)
        .header("x-shopify-hmac-sha256", peer_sign("shopify", secret, body.as_bytes()))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn send_youzan(server: &Server, body: &str) -> (u16, String) {
    let signed = format!("{YOUZAN_CLIENT_ID}{body}{YOUZAN_SECRET}");
    let resp = server
        .client
        .post(format!("{}/v1/channels/youzan/shop", server.url))
        .header("content-type", "application/json")
        .header("client-id", YOUZAN_CLIENT_ID)
        .header("event-type", "trade_TradeCreate")
        .header("event-sign", peer_sign("md5", "", signed.as_bytes()))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn send_webhook(server: &Server, body: &str, secret: &str) -> (u16, Value) {
    let ts = (proto::now_us() / 1_000_000).to_string();
    let sig = peer_sign("webhook", secret, format!("{ts}.{body}").as_bytes());
    let resp = server
        .client
        .post(format!("{}/v1/channels/webhook/callcenter", server.url))
        .header("content-type", "application/json")
        .header("x-crm-timestamp", ts)
        .header("x-crm-signature", format!("sha256={sig}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn person_query(kind: &str, value: &str, scope: &str) -> String {
    format!(
        r#"{{ customerByIdentifier(kind: "{kind}", value: "{value}", scope: "{scope}") {{
            id mergedFrom
            identifiers {{ kind normalized scope raw provenance {{ channel instance eventId }} }}
            channels {{ channel instance count }}
            timeline(first: 20) {{ totalCount edges {{ node {{ channel instance kind eventId }} }} }}
        }} }}"#
    )
}

async fn customer_count(server: &Server) -> u64 {
    server.graphql("{ customers(first: 1) { totalCount } }").await["customers"]["totalCount"]
        .as_u64()
        .unwrap()
}

async fn quarantined(server: &Server, channel: &str) -> Vec<Value> {
    server
        .graphql(&format!(
            r#"{{ quarantined(channel: "{channel}") {{ id channel instance reason message status replays }} }}"#
        ))
        .await["quarantined"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn four_channels_one_customer_quarantine_and_replay() {
    let wechat = wechat_fixtures();
    let app_id = wechat["app_id"].as_str().unwrap().to_string();
    let openid = case(&wechat, "subscribe_aes")["expect"]["openid"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config_path = dir.path().join("crm.toml");
    std::fs::write(&config_path, config(&app_id)).unwrap();
    let config_arg = config_path.to_str().unwrap().to_string();
    let token = wechat["token"].as_str().unwrap().to_string();
    let aes_key = wechat["encoding_aes_key"].as_str().unwrap().to_string();
    let env = |webhook_secret: &'static str| {
        vec![
            ("CRM_E2E_WECHAT_TOKEN", token.clone()),
            ("CRM_E2E_WECHAT_AES_KEY", aes_key.clone()),
            ("CRM_E2E_YOUZAN_SECRET", YOUZAN_SECRET.to_string()),
            ("CRM_E2E_SHOPIFY_SECRET", SHOPIFY_SECRET.to_string()),
            ("CRM_E2E_WEBHOOK_SECRET", webhook_secret.to_string()),
        ]
    };
    let start = |env: Vec<(&'static str, String)>| {
        let data = data.clone();
        let config_arg = config_arg.clone();
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Server::start_with(&data, &["--config", &config_arg], &env).await
        }
    };
    let mut server = start(env(WEBHOOK_OLD_SECRET)).await;

    // 1. WeChat: the person follows the account (safe mode, built by wechatpy); WeChat retries twice.
    for _ in 0..3 {
        let (s, body) = send_wechat(&server, case(&wechat, "subscribe_aes")).await;
        assert_eq!((s, body.as_str()), (200, "success"));
    }
    let by_openid = person_query("wechat_openid", &openid, &app_id);
    server
        .eventually(&by_openid, |d| !d["customerByIdentifier"].is_null())
        .await;

    // 2. Shopify: the documented orders/create sample (contact email jon@example.com), delivered three times.
    for _ in 0..3 {
        let (s, body) = send_shopify(&server, SHOPIFY_ORDER, SHOPIFY_SECRET, "evt-order-820982911946154508").await;
        assert_eq!(s, 202, "{body}");
    }
    let by_email = person_query("email", EMAIL, "");
    server
        .eventually(&by_email, |d| !d["customerByIdentifier"].is_null())
        .await;

    // 3. Youzan: the documented TradeCreate push (buyer phone 13800138000), pushed three times.
    for _ in 0..3 {
        let (s, body) = send_youzan(&server, YOUZAN_TRADE_CREATE).await;
        assert_eq!(s, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["code"], 0, "{body}");
    }
    let by_phone = person_query("phone", PHONE, "");
    server
        .eventually(&by_phone, |d| !d["customerByIdentifier"].is_null())
        .await;
    assert_eq!(customer_count(&server).await, 3, "nothing links the three yet");

    // 4. The web form carries phone, email and the openid: the three become one customer.
    let resp = server
        .client
        .post(format!("{}/v1/channels/web-form/signup", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", SITE)
        .body(
            serde_urlencoded::to_string([
                ("name", "Jon Snow"),
                ("phone", PHONE),
                ("email", EMAIL),
                ("wechat_openid", openid.as_str()),
                ("wechat_appid", app_id.as_str()),
                ("consent", "yes"),
                ("utm_source", "wechat-article"),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(
        resp.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(SITE)
    );

    let person = server
        .eventually(&by_phone, |d| {
            d["customerByIdentifier"]["timeline"]["totalCount"] == 4
                && d["customerByIdentifier"]["channels"]
                    .as_array()
                    .is_some_and(|c| c.len() == 4)
        })
        .await;
    let c = &person["customerByIdentifier"];
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(customer_count(&server).await, 1, "one person, one customer: {c}");
    assert_eq!(
        c["mergedFrom"].as_array().map(Vec::len),
        Some(2),
        "the WeChat, Shopify and Youzan customers were merged: {c}"
    );
    for q in [&by_openid, &by_email] {
        assert_eq!(server.graphql(q).await["customerByIdentifier"]["id"], id.as_str());
    }
    // Four channels on the timeline, each delivery once although three were sent.
    let mut channels: Vec<(String, u64)> = c["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| {
            (
                ch["channel"].as_str().unwrap().to_string(),
                ch["count"].as_u64().unwrap(),
            )
        })
        .collect();
    channels.sort();
    assert_eq!(
        channels,
        [
            ("shopify".to_string(), 1),
            ("web-form".to_string(), 1),
            ("wechat".to_string(), 1),
            ("youzan".to_string(), 1)
        ],
        "{c}"
    );
    // Every identifier with its provenance: the channel, instance and event it first came from.
    let identifiers = c["identifiers"].as_array().unwrap();
    for ident in identifiers {
        let p = &ident["provenance"];
        assert!(
            p["eventId"].as_str().is_some_and(|e| !e.is_empty()) && p["instance"].as_str().is_some(),
            "identifier without provenance: {ident}"
        );
    }
    let first_seen = |kind: &str, normalized_contains: &str| -> String {
        identifiers
            .iter()
            .find(|i| i["kind"] == kind && i["normalized"].as_str().unwrap().contains(normalized_contains))
            .unwrap_or_else(|| panic!("no {kind} identifier {normalized_contains}: {c}"))["provenance"]["channel"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(first_seen("wechat_openid", &openid), "wechat");
    assert_eq!(first_seen("email", EMAIL), "shopify");
    assert_eq!(first_seen("phone", "13800138000"), "youzan");
    let openid_ident = identifiers.iter().find(|i| i["kind"] == "wechat_openid").unwrap();
    assert_eq!(
        openid_ident["scope"],
        app_id.as_str(),
        "openids are scoped to their AppID"
    );
    let kinds: std::collections::BTreeSet<&str> = identifiers.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert!(
        kinds.is_superset(&["email", "phone", "wechat_openid", "shopify_customer", "youzan_uid"].into()),
        "{kinds:?}"
    );
    let timeline_events: std::collections::BTreeSet<&str> = c["timeline"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(timeline_events.len(), 4);

    // 5. Forged signature → 401, wrong AppID → 403; both quarantined, nothing published.
    let (s, _) = send_wechat(&server, case(&wechat, "forged_plain")).await;
    assert_eq!(s, 401);
    let (s, _) = send_wechat(&server, case(&wechat, "wrong_appid_aes")).await;
    assert_eq!(s, 403);
    let (s, _) = send_shopify(&server, SHOPIFY_ORDER, "not-the-secret", "evt-forged-1").await;
    assert_eq!(s, 401);
    let mut reasons: Vec<String> = quarantined(&server, "wechat")
        .await
        .iter()
        .map(|q| q["reason"].as_str().unwrap().to_string())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["bad_signature", "wrong_recipient"]);
    assert_eq!(quarantined(&server, "shopify").await[0]["reason"], "bad_signature");

    // 6. Web-form CORS and rate limit on the wire.
    let preflight = server
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/channels/web-form/signup", server.url),
        )
        .header("origin", SITE)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 204);
    assert!(
        preflight
            .headers()
            .get("access-control-allow-methods")
            .is_some_and(|v| v.to_str().unwrap().contains("POST"))
    );
    let denied = server
        .client
        .post(format!("{}/v1/channels/web-form/signup", server.url))
        .header("origin", "https://phish.example")
        .body("email=a@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 403);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["error"], "origin_not_allowed");
    assert!(body["message"].as_str().unwrap().contains("cors_origins"), "{body}");
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..3 {
        let r = server
            .client
            .post(format!("{}/v1/channels/web-form/promo", server.url))
            .header("x-forwarded-for", "203.0.113.9")
            .body(format!("email=promo{i}@example.com"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    }
    assert_eq!(statuses, [202, 202, 429]);
    let retry_after: u64 = retry_after.expect("429 carries Retry-After").parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");

    // 7. A call-centre webhook signed with a secret the server does not have yet → 401, quarantined.
    let call = serde_json::json!({
        "type": "identify",
        "messageId": "cc-msg-7001",
        "userId": "cc-7001",
        "traits": { "name": "李娜", "email": "li.na@example.com" }
    })
    .to_string();
    let (s, body) = send_webhook(&server, &call, WEBHOOK_NEW_SECRET).await;
    assert_eq!(s, 401, "{body}");
    assert_eq!(body["error"], "bad_signature");
    let held = quarantined(&server, "webhook").await;
    assert_eq!(held.len(), 1);
    let qid = held[0]["id"].as_str().unwrap().to_string();
    assert_eq!(held[0]["status"], "pending");
    let detail = server
        .graphql(&format!(
            r#"{{ quarantinedRequest(id: "{qid}") {{ headers bodyText item {{ reason }} }} }}"#
        ))
        .await;
    assert_eq!(detail["quarantinedRequest"]["bodyText"], call.as_str());
    // Replaying before the fix is refused again and says so.
    let replay = format!(r#"mutation {{ replayQuarantined(id: "{qid}") {{ accepted eventIds message }} }}"#);
    assert_eq!(server.graphql(&replay).await["replayQuarantined"]["accepted"], false);

    // 8. The metrics: accepted, rejected by reason, latency, per channel.
    let metrics = server
        .client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let has = |name: &str, labels: &[&str]| {
        metrics
            .lines()
            .any(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
    };
    for channel in ["wechat", "shopify", "youzan", "web-form"] {
        let label = format!("channel=\"{channel}\"");
        assert!(has("channel_events_accepted_total", &[&label]), "{channel}:\n{metrics}");
        assert!(has("channel_request_seconds", &[&label]), "{channel}:\n{metrics}");
    }
    assert!(has("channel_events_accepted_total", &["instance=\"main-oa\""]));
    assert!(has(
        "channel_requests_rejected_total",
        &["channel=\"wechat\"", "reason=\"bad_signature\""]
    ));
    assert!(has(
        "channel_requests_rejected_total",
        &["channel=\"wechat\"", "reason=\"wrong_recipient\""]
    ));
    assert!(has(
        "channel_requests_rejected_total",
        &["channel=\"web-form\"", "reason=\"rate_limited\""]
    ));
    assert!(has(
        "channel_requests_rejected_total",
        &["channel=\"webhook\"", "reason=\"bad_signature\""]
    ));

    // 9. Fix the secret (restart with the corrected environment), replay: accepted; twice: same events.
    assert!(server.stop().success());
    let server = start(env(WEBHOOK_NEW_SECRET)).await;
    let first = server.graphql(&replay).await["replayQuarantined"].clone();
    assert_eq!(first["accepted"], true, "{first}");
    let second = server.graphql(&replay).await["replayQuarantined"].clone();
    assert_eq!(second["accepted"], true, "{second}");
    assert_eq!(first["eventIds"], second["eventIds"]);
    let by_li = person_query("email", "li.na@example.com", "");
    server
        .eventually(&by_li, |d| !d["customerByIdentifier"].is_null())
        .await;
    // A later form shows up only after both replays went through the domain (one bus, in order),
    // so a second copy of the call, had there been one, would be on the timeline by then.
    assert_eq!(
        server
            .post_form(
                "sentinel",
                "application/x-www-form-urlencoded",
                "email=sentinel@example.com"
            )
            .await
            .0,
        202
    );
    server
        .eventually(&person_query("email", "sentinel@example.com", ""), |d| {
            !d["customerByIdentifier"].is_null()
        })
        .await;
    let li = server.graphql(&by_li).await;
    assert_eq!(li["customerByIdentifier"]["timeline"]["totalCount"], 1, "{li}");
    let held = quarantined(&server, "webhook").await;
    assert_eq!(held[0]["status"], "replayed");
    assert_eq!(held[0]["replays"], 3, "one refused before the fix, two accepted after");
    // After the restart: still one Jon, plus Li Na, two promo sign-ups and the sentinel.
    assert_eq!(
        server.graphql(&by_phone).await["customerByIdentifier"]["id"],
        id.as_str()
    );
    assert_eq!(customer_count(&server).await, 5);
}
