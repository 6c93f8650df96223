//! `crm demo`: posts a small realistic data set to a running server: the same
//! people through several forms, with phones and emails written differently,
//! full-width digits and a typo. Then prints GraphQL queries to try.

use anyhow::Context;

/// (form id, form fields): in order.
const SUBMISSIONS: &[(&str, &[(&str, &str)])] = &[
    (
        "contact",
        &[
            ("name", "张伟"),
            ("phone", "138 0013 8000"),
            ("email", "ZW@Example.com"),
            ("utm_source", "douyin"),
            ("utm_campaign", "spring-launch"),
            ("message", "想了解企业版报价"),
        ],
    ),
    (
        "trial",
        &[
            ("姓名", "张伟"),
            ("手机", "+86 １３８-００１３-８０００"),
            ("email", "zhangwei@xingchen-tech.cn"),
            ("company", "上海星辰科技"),
            ("utm_source", "baidu"),
        ],
    ),
    (
        "webinar",
        &[("name", "Zhang Wei"), ("email", " zw@example.COM "), ("title", "CTO")],
    ),
    (
        "contact",
        &[
            ("name", "李娜"),
            ("phone", "13912345678"),
            ("email", "lina@example.cn"),
            ("utm_source", "wechat-article"),
        ],
    ),
    (
        "expo-signup",
        &[("name", "李娜"), ("email", "lina@example,cn"), ("company", "杭州云帆")],
    ),
    (
        "expo-signup",
        &[
            ("name", "李娜"),
            ("email", "lina@example.cn"),
            ("company", "杭州云帆"),
            ("industry", "制造业"),
        ],
    ),
    (
        "newsletter",
        &[
            ("email", "fang.wang@example.com"),
            ("utm_source", "google"),
            ("utm_medium", "cpc"),
        ],
    ),
    (
        "contact",
        &[
            ("name", "Wang Fang"),
            ("phone", "186-0000-1234"),
            ("company", "Acme Shanghai"),
        ],
    ),
    (
        "trial",
        &[
            ("name", "王芳"),
            ("phone", "18600001234"),
            ("email", "Fang.Wang@example.com"),
            ("region", "上海"),
        ],
    ),
    (
        "contact",
        &[("name", "陈杰"), ("phone", "12345"), ("email", "chenjie@example")],
    ),
];

pub async fn run(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let base = url.trim_end_matches('/');
    for (form, fields) in SUBMISSIONS {
        let endpoint = format!("{base}/v1/channels/web-form/{form}");
        let body = serde_urlencoded::to_string(fields).context("cannot encode the demo form")?;
        let resp = client
            .post(&endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("referer", "https://www.example.cn/landing")
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach {endpoint}; is `crm serve` running at {base}?"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        println!("POST /v1/channels/web-form/{form:<12} → {status} {text}");
    }
    println!(
        r#"
Now open {base}/graphql (GraphiQL) and try:

  {{ customerByIdentifier(kind: "phone", value: "13800138000") {{
      id name
      identifiers {{ kind normalized raw provenance {{ channel instance occurredAt }} }}
      fields {{ name value previousValues provenance {{ instance }} }}
      channels {{ instance count attributions {{ utmSource utmCampaign }} }}
      firstTouch {{ instance attribution {{ utmSource }} }}
      timeline(first: 10) {{ totalCount edges {{ node {{ at instance kind summary }} }} }} }} }}

  {{ customerByIdentifier(kind: "email", value: "FANG.WANG@example.com") {{ id name mergedFrom identifiers {{ kind normalized }} }} }}

  {{ customers(first: 10) {{ totalCount edges {{ cursor node {{ id name }} }} pageInfo {{ hasNextPage endCursor }} }} }}

The projection is asynchronous: if a query returns null, run it again a moment later."#
    );
    Ok(())
}
