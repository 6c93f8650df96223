//! Identity resolution over HTTP against the real binary: a mistyped phone merges
//! probabilistically, `mergeHistory` explains it, `splitCustomer` undoes it (identifiers
//! resolve to the restored customer again), a later event re-merges them, and a review
//! task is approved through GraphQL.

use crate::harness::Server;

const FORM: &str = "application/x-www-form-urlencoded";

fn by_email(email: &str) -> String {
    format!(
        r#"{{ customerByIdentifier(kind: "email", value: "{email}") {{
            id name mergedFrom identifiers {{ kind normalized }}
            timeline(first: 10) {{ totalCount }}
            mergeHistory {{ kind survivorId absorbedId rule score decidedBy reason comparisons {{ field level weight }} }}
        }} }}"#
    )
}

fn customer(data: &serde_json::Value) -> &serde_json::Value {
    &data["customerByIdentifier"]
}

#[tokio::test(flavor = "multi_thread")]
async fn merges_explains_splits_and_merges_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data")).await;

    // The same person twice; the second time the phone has a typo and the email is new.
    let (s, body) = server
        .post_form(
            "contact",
            FORM,
            "name=李雷&phone=139 1234 5678&email=lilei@example.com&region=上海",
        )
        .await;
    assert_eq!(s, 202, "{body}");
    let first = server
        .eventually(&by_email("lilei@example.com"), |d| !customer(d).is_null())
        .await;
    let a = customer(&first)["id"].as_str().unwrap().to_string();
    let (s, _) = server
        .post_form(
            "trial",
            FORM,
            "name=李雷&phone=13912345679&email=li.lei@corp.cn&region=上海",
        )
        .await;
    assert_eq!(s, 202);

    // Merged into the first customer, with its evidence.
    let merged = server
        .eventually(&by_email("li.lei@corp.cn"), |d| customer(d)["id"] == a.as_str())
        .await;
    let c = customer(&merged);
    let b = c["mergedFrom"][0].as_str().unwrap().to_string();
    let history = c["mergeHistory"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{c}");
    assert_eq!(history[0]["rule"], "probabilistic");
    assert_eq!(history[0]["survivorId"], a.as_str());
    assert_eq!(history[0]["absorbedId"], b.as_str());
    assert!(history[0]["score"].as_f64().unwrap() >= 0.9, "{c}");
    let fields: Vec<(String, String)> = history[0]["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["field"].as_str().unwrap().into(), f["level"].as_str().unwrap().into()))
        .collect();
    assert!(fields.contains(&("full_name".into(), "exact".into())), "{fields:?}");
    assert!(fields.iter().any(|(f, l)| f == "phone" && l != "exact"), "{fields:?}");

    // Split: the restored customer gets its own identifiers and timeline back.
    let split = server
        .graphql(&format!(
            r#"mutation {{ splitCustomer(customerId: "{a}", absorbedId: "{b}", reason: "different people", decidedBy: "alice") {{ survivorId restoredId splitNow }} }}"#
        ))
        .await;
    assert_eq!(split["splitCustomer"]["splitNow"], true);
    let restored = server
        .eventually(&by_email("li.lei@corp.cn"), |d| customer(d)["id"] == b.as_str())
        .await;
    let r = customer(&restored);
    assert_eq!(r["name"], "李雷");
    assert_eq!(r["timeline"]["totalCount"], 1);
    assert_eq!(r["mergedFrom"].as_array().unwrap().len(), 0);
    let kinds: Vec<&str> = r["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["normalized"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 2, "{r}");
    assert!(
        kinds.contains(&"+8613912345679") && kinds.contains(&"li.lei@corp.cn"),
        "{r}"
    );
    let survivor = server.graphql(&by_email("lilei@example.com")).await;
    assert_eq!(customer(&survivor)["mergedFrom"].as_array().unwrap().len(), 0);
    let history: Vec<String> = customer(&survivor)["mergeHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| format!("{} {} {}", h["kind"].as_str().unwrap(), h["rule"], h["decidedBy"]))
        .collect();
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(
        history[1].starts_with("SPLIT") && history[1].ends_with("\"alice\""),
        "{history:?}"
    );

    // After the split, the restored customer's identifiers resolve to it.
    assert_eq!(
        server
            .post_form("news", FORM, "email=LI.LEI@corp.cn&utm_source=baidu")
            .await
            .0,
        202
    );
    server
        .eventually(&by_email("li.lei@corp.cn"), |d| {
            customer(d)["timeline"]["totalCount"] == 2
        })
        .await;
    assert_eq!(
        customer(&server.graphql(&by_email("li.lei@corp.cn")).await)["id"],
        b.as_str()
    );

    // An event carrying both customers' identifiers merges them again.
    assert_eq!(
        server
            .post_form("contact", FORM, "phone=13912345678&email=li.lei@corp.cn")
            .await
            .0,
        202
    );
    let again = server
        .eventually(&by_email("li.lei@corp.cn"), |d| {
            customer(d)["id"] == a.as_str() && customer(d)["timeline"]["totalCount"] == 4
        })
        .await;
    let rules: Vec<String> = customer(&again)["mergeHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| format!("{}:{}", h["kind"].as_str().unwrap(), h["rule"].as_str().unwrap()))
        .collect();
    assert_eq!(rules, vec!["MERGE:probabilistic", "SPLIT:", "MERGE:shared_identifier"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_review_task_is_listed_side_by_side_and_approved() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data")).await;
    assert_eq!(
        server
            .post_form("contact", FORM, "name=韩梅梅&region=北京&email=hmm@example.com")
            .await
            .0,
        202
    );
    server
        .eventually(&by_email("hmm@example.com"), |d| !customer(d).is_null())
        .await;
    assert_eq!(
        server
            .post_form("trial", FORM, "name=韩梅梅&region=北京&openid=oMEI&appid=wx1")
            .await
            .0,
        202
    );
    let reviews = r#"{ matchReviews(status: PENDING, first: 10) { totalCount edges { node {
        id reason score comparisons { field level weight }
        customer { id name identifiers { normalized } } candidate { id name identifiers { normalized } }
    } } } }"#;
    let pending = server
        .eventually(reviews, |d| {
            d["matchReviews"]["totalCount"] == 1 && !d["matchReviews"]["edges"][0]["node"].is_null()
        })
        .await;
    let review = &pending["matchReviews"]["edges"][0]["node"];
    assert_eq!(review["reason"], "review_band", "{review}");
    assert_eq!(review["customer"]["name"], "韩梅梅");
    assert_eq!(review["candidate"]["name"], "韩梅梅");
    assert_ne!(review["customer"]["id"], review["candidate"]["id"]);
    let id = review["id"].as_str().unwrap();

    let approved = server
        .graphql(&format!(
            r#"mutation {{ approveMatch(id: "{id}", reviewer: "bob") {{ status survivorId absorbedId }} }}"#
        ))
        .await;
    assert_eq!(approved["approveMatch"]["status"], "APPROVED");
    let merged = server
        .eventually(&by_email("hmm@example.com"), |d| {
            customer(d)["mergedFrom"].as_array().is_some_and(|m| m.len() == 1)
        })
        .await;
    let history = &customer(&merged)["mergeHistory"][0];
    assert_eq!(history["rule"], "reviewer");
    assert_eq!(history["decidedBy"], "bob");
    server
        .eventually(reviews, |d| d["matchReviews"]["totalCount"] == 0)
        .await;
}
