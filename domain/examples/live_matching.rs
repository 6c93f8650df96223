//! Live identity decisions at scale on the embedded store: registers N synthetic
//! customers through `CustomerService::handle`, measures how long a restarted service
//! takes to rebuild its matching state from `$all`, then handles new arrivals (half of
//! them the same people with a mistyped phone and a new email) and prints p50/p99 of the
//! whole decision and of the scoring alone:
//! `cargo run --release -p domain --example live_matching -- [CUSTOMERS] [ARRIVALS]`.

use std::sync::Arc;
use std::time::Instant;

use domain::{CustomerService, DomainConfig};
use proto::InboundEvent;
use proto::inbound::*;
use store::EventStore;

const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭", "何", "高", "林",
    "罗",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀英", "霞",
    "平", "刚", "桂英", "建华", "文", "华", "金凤", "志强", "海燕", "婷", "雪",
];
const CITIES: &[&str] = &[
    "上海", "北京", "广州", "深圳", "杭州", "成都", "武汉", "南京", "西安", "苏州",
];

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() as usize) % xs.len()]
    }
}

struct Person {
    name: String,
    city: &'static str,
    phone: u64,
}

fn event(id: &str, p: &Person, phone: u64, email: &str) -> InboundEvent {
    InboundEvent::FormSubmitted(FormSubmittedV1 {
        header: Some(InboundHeader {
            event_id: id.into(),
            channel: "web-form".into(),
            channel_instance: "contact".into(),
            ..Default::default()
        }),
        form_id: "contact".into(),
        fields: Default::default(),
        observation: Some(Observation {
            subject: Some(SubjectData {
                identifiers: vec![
                    RawIdentifier {
                        kind: "phone".into(),
                        value: phone.to_string(),
                        scope: String::new(),
                    },
                    RawIdentifier {
                        kind: "email".into(),
                        value: email.into(),
                        scope: String::new(),
                    },
                ],
                name: p.name.clone(),
                region: p.city.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let customers = args.first().copied().unwrap_or(10_000);
    let arrivals = args.get(1).copied().unwrap_or(2_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn EventStore> =
        Arc::new(store::embedded::EmbeddedStore::open(&dir.path().join("store")).expect("embedded store opens"));
    let mut rng = Lcg(42);
    let people: Vec<Person> = (0..customers)
        .map(|i| Person {
            name: format!("{}{}{}", rng.pick(SURNAMES), rng.pick(GIVEN), rng.pick(GIVEN)),
            city: rng.pick(CITIES),
            phone: 13_000_000_000 + (i as u64) * 7919 % 999_999_999,
        })
        .collect();

    let service = CustomerService::new(store.clone(), DomainConfig::default());
    let started = Instant::now();
    for (i, p) in people.iter().enumerate() {
        service
            .handle(&event(&format!("c{i}"), p, p.phone, &format!("p{i}@example.com")))
            .await
            .expect("handled");
    }
    store.sync().await.expect("sync");
    println!(
        "registered {customers} customers in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // A restarted domain rebuilds its matching state from the log on its first decision.
    let service = CustomerService::new(store.clone(), DomainConfig::default());
    let started = Instant::now();
    let indexed = service.matching_state().await.expect("state").indexed();
    println!(
        "matching state rebuilt from $all: {indexed} customers in {:.3} s",
        started.elapsed().as_secs_f64()
    );

    let mut decide = Vec::new();
    let mut score = Vec::new();
    let mut merged = 0;
    for n in 0..arrivals {
        let i = (rng.next() as usize) % customers;
        let p = &people[i];
        // Half the arrivals are a known person with a mistyped phone and a new email.
        let (phone, email) = if n % 2 == 0 {
            (p.phone + 1, format!("again{n}@example.com"))
        } else {
            (14_000_000_000 + n as u64, format!("new{n}@example.com"))
        };
        let e = event(&format!("a{n}"), p, phone, &email);
        let t = Instant::now();
        let r = service.handle(&e).await.expect("handled");
        decide.push(t.elapsed().as_secs_f64() * 1000.0);
        merged += usize::from(r.customer_id != domain::service::new_customer_id(&format!("a{n}"), 0));
        let state = service.matching_state().await.expect("state");
        let phone = proto::customer::Identifier {
            kind: "phone".into(),
            normalized: format!("+86{phone}"),
            ..Default::default()
        };
        let record = domain::matcher::record_of(e.observation().and_then(|o| o.subject.as_ref()), &[&phone]);
        let t = Instant::now();
        let _ = state.best_candidate(&record, "none");
        score.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    decide.sort_by(f64::total_cmp);
    score.sort_by(f64::total_cmp);
    println!(
        "{arrivals} arrivals ({merged} merged into a known customer): decision p50 {:.2} ms p99 {:.2} ms; scoring p50 {:.3} ms p99 {:.3} ms",
        percentile(&decide, 0.5),
        percentile(&decide, 0.99),
        percentile(&score, 0.5),
        percentile(&score, 0.99)
    );
}
