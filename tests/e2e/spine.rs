//! The spine: web forms in, merged customers out of GraphQL; crash safety; replay.

use crate::harness::{Server, crm};

const FORM: &str = "application/x-www-form-urlencoded";

fn customer_query(kind: &str, value: &str) -> String {
    format!(
        r#"{{ customerByIdentifier(kind: "{kind}", value: "{value}") {{
            id name mergedFrom
            identifiers {{ kind normalized raw provenance {{ channel instance eventId }} }}
            fields {{ name value provenance {{ instance }} }}
            channels {{ instance count attributions {{ utmSource }} }}
            firstTouch {{ instance attribution {{ utmSource }} }}
            timeline(first: 10) {{ totalCount edges {{ node {{ instance kind }} }} }}
        }} }}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_merge_into_one_customer_survive_kill9_and_replay_equal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data).await;

    // The same person through three forms, written three ways.
    let (s, body) = server
        .post_form(
            "contact",
            FORM,
            "name=张伟&phone=138 0013 8000&email=ZW@Example.com&utm_source=douyin&shoe_size=42",
        )
        .await;
    assert_eq!(s, 202, "{body}");
    assert!(body["event_id"].as_str().is_some_and(|id| !id.is_empty()));
    let (s, _) = server
        .post_form(
            "trial",
            "application/json",
            r#"{"手机":"+86 １３８-００１３-８０００","email":"zhangwei@corp.cn","company":"星辰科技"}"#,
        )
        .await;
    assert_eq!(s, 202);
    let (s, _) = server
        .post_form("webinar", FORM, "email=+zw@example.com+&utm_source=baidu")
        .await;
    assert_eq!(s, 202);
    // Two people who turn out to be one: the third form carries both identifiers.
    assert_eq!(server.post_form("news", FORM, "email=fang@example.com").await.0, 202);
    assert_eq!(server.post_form("contact", FORM, "phone=18600001234").await.0, 202);
    assert_eq!(
        server
            .post_form("trial", FORM, "phone=186 0000 1234&email=FANG@example.com&name=王芳")
            .await
            .0,
        202
    );

    // Bad input: each bad field named, nothing written.
    let (s, body) = server.post_form("contact", FORM, "phone=12&email=zw@").await;
    assert_eq!(s, 400);
    let fields: Vec<&str> = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["phone", "email"], "{body}");
    assert_eq!(server.post_form("contact", "text/csv", "a,b").await.0, 415);
    let big = format!("email=a@b.com&x={}", "a".repeat(70 * 1024));
    assert_eq!(server.post_form("contact", FORM, big).await.0, 413);
    let (s, body) = server.post_form("contact", "application/json", "{not json").await;
    assert_eq!(s, 400, "{body}");

    let q = customer_query("email", "ZW@example.com");
    let data_zw = server
        .eventually(&q, |d| d["customerByIdentifier"]["timeline"]["totalCount"] == 3)
        .await;
    let c = &data_zw["customerByIdentifier"];
    let idents: Vec<String> = c["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("{}:{}", i["kind"].as_str().unwrap(), i["normalized"].as_str().unwrap()))
        .collect();
    assert_eq!(
        idents,
        ["email:zw@example.com", "phone:+8613800138000", "email:zhangwei@corp.cn"]
    );
    let phone = &c["identifiers"][1];
    assert_eq!(
        phone["raw"],
        serde_json::json!(["138 0013 8000", "+86 １３８-００１３-８０００"])
    );
    assert_eq!(phone["provenance"]["instance"], "contact");
    assert_eq!(c["firstTouch"]["instance"], "contact");
    assert_eq!(c["firstTouch"]["attribution"]["utmSource"], "douyin");
    assert_eq!(c["channels"].as_array().unwrap().len(), 3);
    // The same customer by phone, normalised like the domain does.
    let by_phone = server.graphql(&customer_query("phone", "13800138000")).await;
    assert_eq!(by_phone["customerByIdentifier"]["id"], c["id"]);

    let fang = server
        .eventually(&customer_query("phone", "18600001234"), |d| {
            // The merge is written before the merging form's own activity: wait for both.
            d["customerByIdentifier"]["mergedFrom"]
                .as_array()
                .is_some_and(|m| m.len() == 1)
                && d["customerByIdentifier"]["timeline"]["totalCount"] == 3
        })
        .await;
    let fang = &fang["customerByIdentifier"];
    assert_eq!(fang["timeline"]["totalCount"], 3);
    let absorbed = fang["mergedFrom"][0].as_str().unwrap().to_string();
    // The absorbed id keeps resolving to the survivor.
    let again = server
        .graphql(&format!(r#"{{ customer(id: "{absorbed}") {{ id }} }}"#))
        .await;
    assert_eq!(again["customer"]["id"], fang["id"]);
    let all = server
        .graphql("{ customers(first: 1) { totalCount edges { cursor } pageInfo { hasNextPage endCursor } } }")
        .await;
    assert_eq!(all["customers"]["totalCount"], 2);
    assert_eq!(all["customers"]["pageInfo"]["hasNextPage"], true);
    let cursor = all["customers"]["pageInfo"]["endCursor"].as_str().unwrap();
    let page2 = server
        .graphql(&format!(
            r#"{{ customers(first: 5, after: "{cursor}") {{ edges {{ node {{ id }} }} pageInfo {{ hasNextPage }} }} }}"#
        ))
        .await;
    assert_eq!(page2["customers"]["edges"].as_array().unwrap().len(), 1);

    // Crash: many acknowledged forms, then SIGKILL while the domain may be mid-batch.
    let mut handles = Vec::new();
    for i in 0..300 {
        let client = server.client.clone();
        let url = server.url.clone();
        handles.push(tokio::spawn(async move {
            let r = client
                .post(format!("{url}/v1/channels/web-form/crash"))
                .header("content-type", FORM)
                .body(format!("email=crash{i}@example.com&name=c{i}"))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap(), 202);
    }
    server.kill9();
    let server = Server::start(&data).await;
    let total = server
        .eventually("{ customers(first: 1) { totalCount } }", |d| {
            d["customers"]["totalCount"] == 302
        })
        .await;
    assert_eq!(total["customers"]["totalCount"], 302);
    // Every acknowledged form exactly once.
    for i in (0..300).step_by(7) {
        let d = server
            .eventually(&format!(r#"{{ customerByIdentifier(kind: "email", value: "crash{i}@example.com") {{ timeline {{ totalCount }} }} }}"#), |d| {
                !d["customerByIdentifier"].is_null()
            })
            .await;
        assert_eq!(d["customerByIdentifier"]["timeline"]["totalCount"], 1, "crash{i}");
    }
    let zw = server.graphql(&q).await;
    assert_eq!(zw["customerByIdentifier"]["timeline"]["totalCount"], 3);
    // The restarted bus appends after what it already holds.
    assert_eq!(server.post_form("after", FORM, "email=after@example.com").await.0, 202);
    server
        .eventually("{ customers(first: 1) { totalCount } }", |d| {
            d["customers"]["totalCount"] == 303
        })
        .await;
    let first = server.graphql(&customer_query("email", "crash0@example.com")).await;
    assert_eq!(first["customerByIdentifier"]["timeline"]["totalCount"], 1);

    // Graceful stop, then a replay from position zero equals the live views.
    let mut server = server;
    assert!(server.stop().success());
    let out = crm().arg("--data-dir").arg(&data).arg("replay").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("rebuilt views equal the live views"), "{stdout}");
    assert!(stdout.contains("events/s"), "{stdout}");

    // The rejected forms were kept: listed and shown by the CLI, raw body included.
    let out = crm()
        .arg("--data-dir")
        .arg(&data)
        .args(["quarantine", "list", "--dead-letters"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{list}");
    for reason in [
        "failed_validation",
        "unsupported_media_type",
        "payload_too_large",
        "undecodable",
    ] {
        assert!(list.contains(reason), "{reason} missing from:\n{list}");
    }
    assert!(
        list.contains("4 quarantined request(s)") && list.contains("0 dead letter(s)"),
        "{list}"
    );
    let id = list
        .lines()
        .find(|l| l.contains("failed_validation"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    let out = crm()
        .arg("--data-dir")
        .arg(&data)
        .args(["quarantine", "show", id])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("phone=12&email=zw@") && shown.contains("field:     phone"),
        "{shown}"
    );
    // Replaying it through the same form fails again (the data, not the config, is wrong) and says so.
    let out = crm()
        .arg("--data-dir")
        .arg(&data)
        .args(["quarantine", "replay", id])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rejected again"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_on_the_same_data_dir_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _server = Server::start(&data).await;
    let out = crm().arg("--data-dir").arg(&data).arg("replay").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another crm process is using data directory"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_config_keys_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crm.toml");
    std::fs::write(&file, "[http]\nlissen = \"127.0.0.1:1\"\n").unwrap();
    let out = crm().arg("--config").arg(&file).arg("config").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lissen"), "{err}");
}
