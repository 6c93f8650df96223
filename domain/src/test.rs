//! given/when/then for business rules: `given(inbound events).when(inbound event)
//! .then_expect(expect![[...]])` renders the customer events the `when` appended,
//! with customer ids shown as C1, C2, ... in order of appearance.

use std::collections::HashMap;
use std::sync::Arc;

use expect_test::Expect;
use proto::InboundEvent;
use proto::inbound::*;
use store::EventStore;
use store::embedded::SledStore;

use crate::events::CustomerEvent;
use crate::service::{CustomerService, DomainConfig};

pub struct Scenario {
    given: Vec<InboundEvent>,
}

pub fn given(events: Vec<InboundEvent>) -> Scenario {
    Scenario { given: events }
}

/// A web-form style inbound event with the given id and identifiers (kind=value[@scope]).
pub fn form(event_id: &str, identifiers: &[&str]) -> InboundEvent {
    let identifiers = identifiers
        .iter()
        .map(|s| {
            let (kind, rest) = s.split_once('=').unwrap_or(("phone", s));
            let (value, scope) = rest.split_once('@').filter(|_| kind != "email").unwrap_or((rest, ""));
            RawIdentifier {
                kind: kind.into(),
                value: value.into(),
                scope: scope.into(),
            }
        })
        .collect();
    InboundEvent::FormSubmitted(FormSubmittedV1 {
        header: Some(InboundHeader {
            event_id: event_id.into(),
            channel: "web-form".into(),
            channel_instance: "contact".into(),
            ..Default::default()
        }),
        form_id: "contact".into(),
        fields: Default::default(),
        observation: Some(Observation {
            subject: Some(SubjectData {
                identifiers,
                ..Default::default()
            }),
            ..Default::default()
        }),
    })
}

impl Scenario {
    pub fn when(self, event: InboundEvent) -> Outcome {
        self.when_all(vec![event])
    }

    pub fn when_all(self, events: Vec<InboundEvent>) -> Outcome {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let store: Arc<dyn EventStore> = Arc::new(SledStore::temporary().unwrap());
            let service = CustomerService::new(store.clone(), DomainConfig::default());
            for e in &self.given {
                service.handle(e).await.unwrap();
            }
            let before = store.read_all(None, usize::MAX).await.unwrap();
            let mut aliases = HashMap::new();
            for e in before.iter().filter(|e| e.stream.starts_with("customer-")) {
                alias_of(&mut aliases, &e.stream);
            }
            for e in &events {
                service.handle(e).await.unwrap();
            }
            let after = store
                .read_all(before.last().map(|e| e.position), usize::MAX)
                .await
                .unwrap();
            let mut lines = Vec::new();
            for e in after {
                let ev = CustomerEvent::from_recorded(&e).unwrap();
                let stream = if e.stream.starts_with("customer-") {
                    alias_of(&mut aliases, &e.stream)
                } else {
                    "identity".to_string()
                };
                let detail = render(&ev, &mut aliases);
                lines.push(format!("{stream}: {}{detail}", ev.type_name()));
            }
            if lines.is_empty() {
                lines.push("(nothing appended)".into());
            }
            Outcome {
                text: lines.join("\n") + "\n",
            }
        })
    }
}

fn alias_of(aliases: &mut HashMap<String, String>, stream_or_id: &str) -> String {
    let id = stream_or_id.trim_start_matches("customer-").to_string();
    let n = aliases.len() + 1;
    aliases.entry(id).or_insert_with(|| format!("C{n}")).clone()
}

fn render(ev: &CustomerEvent, aliases: &mut HashMap<String, String>) -> String {
    let id = |i: &Option<proto::customer::Identifier>| {
        i.as_ref()
            .map(|i| {
                format!(
                    "{}:{}{}",
                    i.kind,
                    i.normalized,
                    if i.scope.is_empty() {
                        String::new()
                    } else {
                        format!("@{}", i.scope)
                    }
                )
            })
            .unwrap_or_default()
    };
    match ev {
        CustomerEvent::IdentifierClaimed(c) => {
            format!(" {} by {}", id(&c.identifier), alias_of(aliases, &c.customer_id))
        }
        CustomerEvent::IdentifierAttached(a) => format!(" {}", id(&a.identifier)),
        CustomerEvent::Merged(m) => format!(
            " absorbed {} ({})",
            alias_of(aliases, &m.absorbed_id),
            m.evidence.as_ref().map(|e| e.rule.as_str()).unwrap_or_default()
        ),
        CustomerEvent::MergedInto(m) => format!(" survivor {}", alias_of(aliases, &m.survivor_id)),
        _ => String::new(),
    }
}

pub struct Outcome {
    text: String,
}

impl Outcome {
    pub fn then_expect(self, expect: Expect) {
        expect.assert_eq(&self.text);
    }
}

mod rules {
    use expect_test::expect;

    use super::*;

    #[test]
    fn a_new_phone_and_email_make_a_new_customer() {
        given(vec![])
            .when(form("e1", &["phone=138 0013 8000", "email=ZW@Example.com"]))
            .then_expect(expect![[r#"
            C1: CustomerRegisteredV1
            identity: IdentifierClaimedV1 email:zw@example.com by C1
            identity: IdentifierClaimedV1 phone:+8613800138000 by C1
            C1: IdentifierAttachedV1 email:zw@example.com
            C1: IdentifierAttachedV1 phone:+8613800138000
            C1: ActivityRecordedV1
        "#]]);
    }

    #[test]
    fn the_same_phone_written_differently_joins_the_existing_customer() {
        given(vec![form("e1", &["phone=138 0013 8000"])])
            .when(form("e2", &["phone=+86 １３８-0013-8000", "email=zw@example.com"]))
            .then_expect(expect![[r#"
                identity: IdentifierClaimedV1 email:zw@example.com by C1
                C1: IdentifierAttachedV1 email:zw@example.com
                C1: ActivityRecordedV1
            "#]]);
    }

    #[test]
    fn a_redelivered_event_appends_nothing() {
        given(vec![form("e1", &["phone=13800138000", "email=a@b.com"])])
            .when(form("e1", &["phone=13800138000", "email=a@b.com"]))
            .then_expect(expect![[r#"
                (nothing appended)
            "#]]);
    }

    #[test]
    fn an_event_carrying_two_customers_identifiers_merges_them_into_the_older() {
        given(vec![
            form("e1", &["phone=13800138000"]),
            form("e2", &["email=zw@example.com"]),
        ])
        .when(form("e3", &["phone=13800138000", "email=zw@example.com"]))
        .then_expect(expect![[r#"
                C1: CustomersMergedV1 absorbed C2 (shared_identifier)
                C2: MergedIntoV1 survivor C1
                C1: ActivityRecordedV1
            "#]]);
    }

    #[test]
    fn an_absorbed_customers_identifier_resolves_to_the_survivor() {
        given(vec![
            form("e1", &["phone=13800138000"]),
            form("e2", &["email=zw@example.com"]),
            form("e3", &["phone=13800138000", "email=zw@example.com"]),
        ])
        .when(form("e4", &["email=ZW@example.com"]))
        .then_expect(expect![[r#"
            C1: ActivityRecordedV1
        "#]]);
    }

    #[test]
    fn openids_of_different_appids_are_different_people() {
        given(vec![form("e1", &["wechat_openid=oX@wx1"])])
            .when(form("e2", &["wechat_openid=oX@wx2"]))
            .then_expect(expect![[r#"
                C2: CustomerRegisteredV1
                identity: IdentifierClaimedV1 wechat_openid:oX@wx2 by C2
                C2: IdentifierAttachedV1 wechat_openid:oX@wx2
                C2: ActivityRecordedV1
            "#]]);
    }

    #[test]
    fn an_unusable_identifier_is_not_matched_on() {
        given(vec![form("e1", &["phone=138****8000"])])
            .when(form("e2", &["phone=138****8000"]))
            .then_expect(expect![[r#"
                C2: CustomerRegisteredV1
                C2: ActivityRecordedV1
            "#]]);
    }
}
