//! given/when/then for business rules: `given(inbound events).when(inbound event)
//! .then_expect(expect![[...]])` renders the customer events the `when` appended,
//! with customer ids shown as C1, C2, ... in order of appearance. Steps may also be
//! reviewer commands (`Step::Approve(n)`, `Step::Reject(n)` on the n-th review task,
//! `Step::Split("C1", "C2")`).

use std::collections::HashMap;
use std::sync::Arc;

use expect_test::Expect;
use proto::InboundEvent;
use proto::inbound::*;
use store::EventStore;
use store::embedded::EmbeddedStore;

use crate::commands::IdentityCommands;
use crate::events::CustomerEvent;
use crate::service::{CustomerService, DomainConfig};

/// One thing that happens: an inbound event or a person's decision.
pub enum Step {
    Inbound(Box<InboundEvent>),
    /// Approve the n-th review task (1-based, in log order).
    Approve(usize),
    /// Reject the n-th review task.
    Reject(usize),
    /// Split the second customer (alias) from the first.
    Split(&'static str, &'static str),
}

impl From<InboundEvent> for Step {
    fn from(e: InboundEvent) -> Self {
        Step::Inbound(Box::new(e))
    }
}

pub struct Scenario {
    given: Vec<Step>,
    config: DomainConfig,
}

pub fn given(events: Vec<InboundEvent>) -> Scenario {
    given_steps(events.into_iter().map(Step::from).collect())
}

pub fn given_steps(steps: Vec<Step>) -> Scenario {
    Scenario {
        given: steps,
        config: DomainConfig::default(),
    }
}

/// A person as a form sends them: name, address, birth date and identifiers.
pub fn person(event_id: &str, name: &str, address: &str, birth_date: &str, identifiers: &[&str]) -> InboundEvent {
    let mut e = form(event_id, identifiers);
    if let InboundEvent::FormSubmitted(f) = &mut e
        && let Some(s) = f.observation.as_mut().and_then(|o| o.subject.as_mut())
    {
        s.name = name.into();
        s.address = address.into();
        s.birth_date = birth_date.into();
    }
    e
}

async fn run_step(store: &Arc<dyn EventStore>, service: &CustomerService, step: &Step) {
    let commands = IdentityCommands::new(store.clone());
    let all = store.read_all(None, usize::MAX).await.unwrap();
    match step {
        Step::Inbound(e) => {
            service.handle(e).await.unwrap();
        }
        Step::Approve(n) | Step::Reject(n) => {
            let reviews: Vec<String> = all
                .iter()
                .filter(|e| e.event_type == "MatchReviewRequestedV1")
                .map(|e| e.stream.trim_start_matches("review-").to_string())
                .collect();
            let id = &reviews[n - 1];
            if matches!(step, Step::Approve(_)) {
                commands.approve(id, "alice").await.unwrap();
            } else {
                commands.reject(id, "alice").await.unwrap();
            }
        }
        Step::Split(survivor, absorbed) => {
            let mut ids: Vec<String> = Vec::new();
            for e in all.iter().filter(|e| e.stream.starts_with("customer-")) {
                let id = e.stream.trim_start_matches("customer-").to_string();
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            let by_alias = |a: &str| ids[a.trim_start_matches('C').parse::<usize>().unwrap() - 1].clone();
            commands
                .split(&by_alias(survivor), &by_alias(absorbed), "not the same person", "alice")
                .await
                .unwrap();
        }
    }
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
    /// Overrides the matching settings.
    pub fn with_matching(mut self, matching: crate::matcher::MatchingConfig) -> Self {
        self.config.matching = matching;
        self
    }

    pub fn when(self, event: InboundEvent) -> Outcome {
        self.when_all(vec![event])
    }

    pub fn when_step(self, step: Step) -> Outcome {
        self.when_steps(vec![step])
    }

    pub fn when_all(self, events: Vec<InboundEvent>) -> Outcome {
        self.when_steps(events.into_iter().map(Step::from).collect())
    }

    pub fn when_steps(self, events: Vec<Step>) -> Outcome {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::temporary().unwrap());
            let service = CustomerService::new(store.clone(), self.config.clone());
            for step in &self.given {
                run_step(&store, &service, step).await;
            }
            let before = store.read_all(None, usize::MAX).await.unwrap();
            let mut aliases = HashMap::new();
            for e in before.iter().filter(|e| e.stream.starts_with("customer-")) {
                alias_of(&mut aliases, &e.stream);
            }
            for step in &events {
                run_step(&store, &service, step).await;
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
                } else if e.stream.starts_with("review-") {
                    "review".to_string()
                } else {
                    "identity".to_string()
                };
                let mut detail = render(&ev, &mut aliases);
                // An attachment or registration that holds its identifiers' reservations
                // (embedded store).
                if let Some(held_here) = attached(&ev) {
                    let mut claimed = Vec::new();
                    for i in held_here {
                        let held = store.claimant(&crate::identity::reservation_stream(i)).await.unwrap();
                        if held.is_some_and(|h| h.event_id == e.event_id) {
                            claimed.push(identifier(i));
                        }
                    }
                    match claimed.len() {
                        0 => {}
                        n if n == held_here.len() => {
                            detail.push_str(if n == 1 { " (claims it)" } else { " (claims them)" })
                        }
                        _ => detail.push_str(&format!(" (claims {})", claimed.join(" "))),
                    }
                }
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

/// `kind:normalized[@scope]`.
fn identifier(i: &proto::customer::Identifier) -> String {
    let scope = if i.scope.is_empty() {
        String::new()
    } else {
        format!("@{}", i.scope)
    };
    format!("{}:{}{scope}", i.kind, i.normalized)
}

/// The identifiers an event attaches.
fn attached(ev: &CustomerEvent) -> Option<&[proto::customer::Identifier]> {
    match ev {
        CustomerEvent::IdentifierAttached(a) => Some(&a.identifiers),
        CustomerEvent::RegisteredWith(r) => Some(&r.identifiers),
        _ => None,
    }
}

fn render(ev: &CustomerEvent, aliases: &mut HashMap<String, String>) -> String {
    let id = |i: &Option<proto::customer::Identifier>| i.as_ref().map(identifier).unwrap_or_default();
    match ev {
        CustomerEvent::IdentifierClaimed(c) => {
            format!(" {} by {}", id(&c.identifier), alias_of(aliases, &c.customer_id))
        }
        CustomerEvent::IdentifierAttached(_) | CustomerEvent::RegisteredWith(_) => attached(ev)
            .unwrap_or_default()
            .iter()
            .map(|i| format!(" {}", identifier(i)))
            .collect(),
        CustomerEvent::Merged(m) => {
            let e = m.evidence.clone().unwrap_or_default();
            let score = if e.rule == "shared_identifier" {
                String::new()
            } else {
                format!(
                    " p={:.2} by {}",
                    e.score,
                    e.decided_by.split(':').next().unwrap_or_default()
                )
            };
            format!(" absorbed {} ({}{score})", alias_of(aliases, &m.absorbed_id), e.rule)
        }
        CustomerEvent::MergedInto(m) => format!(" survivor {}", alias_of(aliases, &m.survivor_id)),
        CustomerEvent::MarkedShared(m) => format!(" {} ({} customers > {})", id(&m.identifier), m.customers, m.limit),
        CustomerEvent::ReviewRequested(r) => format!(
            " {} ~ {} ({}, p={:.2})",
            alias_of(aliases, &r.customer_id),
            alias_of(aliases, &r.candidate_id),
            r.reason,
            r.evidence.as_ref().map(|e| e.score).unwrap_or_default()
        ),
        CustomerEvent::ReviewDecided(d) => format!(" {} by {}", d.decision, d.reviewer),
        CustomerEvent::Split(s) => format!(
            " restored {} with {} identifiers ({})",
            alias_of(aliases, &s.restored_id),
            s.identifiers.len(),
            s.reason
        ),
        CustomerEvent::Restored(r) => format!(" survivor was {}", alias_of(aliases, &r.survivor_id)),
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
                C1: CustomerRegisteredV2 email:zw@example.com phone:+8613800138000 (claims them)
            "#]]);
    }

    #[test]
    fn the_same_phone_written_differently_joins_the_existing_customer() {
        given(vec![form("e1", &["phone=138 0013 8000"])])
            .when(form("e2", &["phone=+86 １３８-0013-8000", "email=zw@example.com"]))
            .then_expect(expect![[r#"
                C1: IdentifierAttachedV2 email:zw@example.com (claims it)
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
                C2: CustomerRegisteredV2 wechat_openid:oX@wx2 (claims it)
            "#]]);
    }

    #[test]
    fn an_unusable_identifier_is_not_matched_on() {
        given(vec![form("e1", &["phone=138****8000"])])
            .when(form("e2", &["phone=138****8000"]))
            .then_expect(expect![[r#"
                C2: CustomerRegisteredV2
            "#]]);
    }
}

mod matching_rules {
    use expect_test::expect;

    use super::*;
    use crate::matcher::MatchingConfig;

    const ADDRESS: &str = "上海市浦东新区世纪大道100号";

    fn zhang(event_id: &str, identifiers: &[&str]) -> InboundEvent {
        person(event_id, "张伟", ADDRESS, "1985-03-12", identifiers)
    }

    #[test]
    fn a_new_customer_that_scores_above_the_merge_threshold_is_merged_with_its_evidence() {
        given(vec![zhang("e1", &["phone=13800138000"])])
            .when(zhang("e2", &["email=zw@example.com"]))
            .then_expect(expect![[r#"
                C2: CustomerRegisteredV2 email:zw@example.com (claims it)
                C1: CustomersMergedV1 absorbed C2 (probabilistic p=1.00 by live matching)
                C2: MergedIntoV1 survivor C1
            "#]]);
    }

    #[test]
    fn a_new_customer_in_the_review_band_is_created_with_a_review_task() {
        given(vec![zhang("e1", &["phone=13800138000"])])
            .when(person("e2", "张伟", ADDRESS, "", &["email=zw@example.com"]))
            .then_expect(expect![[r#"
                C2: CustomerRegisteredV2 email:zw@example.com (claims it)
                review: MatchReviewRequestedV1 C2 ~ C1 (review_band, p=0.57)
            "#]]);
    }

    #[test]
    fn a_mistyped_phone_with_the_same_name_is_the_same_person() {
        given(vec![zhang("e1", &["phone=13800138000"])])
            .when(person("e2", "张伟", "", "", &["phone=13800138001"]))
            .then_expect(expect![[r#"
                C2: CustomerRegisteredV2 phone:+8613800138001 (claims it)
                C1: CustomersMergedV1 absorbed C2 (probabilistic p=0.94 by live matching)
                C2: MergedIntoV1 survivor C1
            "#]]);
    }

    #[test]
    fn a_dissimilar_new_customer_stays_distinct() {
        given(vec![zhang("e1", &["phone=13800138000"])])
            .when(person(
                "e2",
                "李娜",
                "北京市朝阳区建国路8号",
                "1990-01-01",
                &["email=ln@example.com"],
            ))
            .then_expect(expect![[r#"
                C2: CustomerRegisteredV2 email:ln@example.com (claims it)
            "#]]);
    }

    #[test]
    fn an_approved_review_merges_with_the_reviewer_as_rule() {
        given_steps(vec![
            zhang("e1", &["phone=13800138000"]).into(),
            person("e2", "张伟", ADDRESS, "", &["email=zw@example.com"]).into(),
        ])
        .when_step(Step::Approve(1))
        .then_expect(expect![[r#"
            review: MatchReviewDecidedV1 approve by alice
            C1: CustomersMergedV1 absorbed C2 (reviewer p=0.57 by alice)
            C2: MergedIntoV1 survivor C1
        "#]]);
    }

    #[test]
    fn a_rejected_pair_is_not_proposed_again_for_the_same_evidence() {
        given_steps(vec![
            zhang("e1", &["phone=13800138000"]).into(),
            person("e2", "张伟", ADDRESS, "", &["email=zw@example.com"]).into(),
            Step::Reject(1),
        ])
        .when(person("e3", "张伟", ADDRESS, "", &["email=zw@example.com"]))
        .then_expect(expect![[r#"
            C2: ActivityRecordedV1
        "#]]);
    }

    #[test]
    fn new_evidence_after_a_rejection_is_proposed_again() {
        given_steps(vec![
            zhang("e1", &["phone=13800138000"]).into(),
            person("e2", "张伟", ADDRESS, "", &["email=zw@example.com"]).into(),
            Step::Reject(1),
        ])
        .when(person("e3", "张伟", ADDRESS, "1985-03-12", &["email=zw@example.com"]))
        .then_expect(expect![[r#"
            C2: ActivityRecordedV1
            review: MatchReviewRequestedV1 C2 ~ C1 (existing_customers, p=0.99)
        "#]]);
    }

    #[test]
    fn an_identifier_presented_by_too_many_customers_is_marked_shared_and_not_matched_on() {
        given(vec![
            form("e1", &["phone=13800138000", "email=a@shop.com"]),
            form("e2", &["phone=13800138000", "email=b@shop.com"]),
        ])
        .with_matching(MatchingConfig {
            max_shared_identifier_customers: 2,
            ..Default::default()
        })
        .when_all(vec![
            form("e3", &["phone=13800138000", "email=c@shop.com"]),
            form("e4", &["phone=13800138000"]),
        ])
        .then_expect(expect![[r#"
            identity: IdentifierMarkedSharedV1 phone:+8613800138000 (3 customers > 2)
            C2: CustomerRegisteredV2 email:c@shop.com (claims it)
            C3: CustomerRegisteredV2
        "#]]);
    }

    #[test]
    fn a_merge_that_would_grow_a_cluster_past_its_limit_goes_to_review() {
        given(vec![
            form("e1", &["phone=13800138000"]),
            form("e2", &["email=zw@example.com"]),
            form("e3", &["phone=13800138000", "email=zw@example.com"]),
            form("e4", &["wechat_openid=oX@wx1"]),
        ])
        .with_matching(MatchingConfig {
            max_cluster_size: 2,
            ..Default::default()
        })
        .when(form("e5", &["email=zw@example.com", "wechat_openid=oX@wx1"]))
        .then_expect(expect![[r#"
            review: MatchReviewRequestedV1 C3 ~ C1 (cluster_size, p=1.00)
            C1: ActivityRecordedV1
        "#]]);
    }

    #[test]
    fn a_split_gives_the_absorbed_customer_its_identifiers_back_and_it_can_merge_again() {
        given(vec![
            form("e1", &["phone=13800138000"]),
            form("e2", &["email=zw@example.com"]),
            form("e3", &["phone=13800138000", "email=zw@example.com"]),
        ])
        .when_steps(vec![
            Step::Split("C1", "C2"),
            form("e4", &["email=zw@example.com"]).into(),
            form("e5", &["phone=13800138000", "email=zw@example.com"]).into(),
        ])
        .then_expect(expect![[r#"
            C1: CustomerSplitV1 restored C2 with 1 identifiers (not the same person)
            C2: CustomerRestoredV1 survivor was C1
            C2: ActivityRecordedV1
            C1: CustomersMergedV1 absorbed C2 (shared_identifier)
            C2: MergedIntoV1 survivor C1
            C1: ActivityRecordedV1
        "#]]);
    }

    #[test]
    fn a_split_of_a_probabilistic_merge_restores_the_new_customer() {
        given(vec![
            zhang("e1", &["phone=13800138000"]),
            zhang("e2", &["email=zw@example.com"]),
        ])
        .when_steps(vec![
            Step::Split("C1", "C2"),
            form("e3", &["email=zw@example.com"]).into(),
        ])
        .then_expect(expect![[r#"
            C1: CustomerSplitV1 restored C2 with 1 identifiers (not the same person)
            C2: CustomerRestoredV1 survivor was C1
            C2: ActivityRecordedV1
        "#]]);
    }

    #[test]
    fn redelivered_probabilistic_decisions_append_nothing() {
        given(vec![
            zhang("e1", &["phone=13800138000"]),
            zhang("e2", &["email=zw@example.com"]),
            person("e3", "张伟", ADDRESS, "", &["email=w@example.com"]),
        ])
        .when_all(vec![
            zhang("e2", &["email=zw@example.com"]),
            person("e3", "张伟", ADDRESS, "", &["email=w@example.com"]),
        ])
        .then_expect(expect![[r#"
            (nothing appended)
        "#]]);
    }
}

/// A channel's retry received again later: the same inbound event with a new receipt time,
/// so another new-customer id than the first delivery's.
mod retried_later {
    use super::hooked::Hooked;
    use super::*;

    fn received_at(mut event: InboundEvent, recorded_at_us: i64) -> InboundEvent {
        if let InboundEvent::FormSubmitted(f) = &mut event {
            f.header.get_or_insert_default().recorded_at_us = recorded_at_us;
        }
        event
    }

    /// Finds the customer the first delivery registered, and appends nothing: the
    /// registration is this event's activity, and holds its identifiers (in the customer's
    /// commit, or behind marker streams).
    #[tokio::test]
    async fn a_retry_of_the_event_that_registered_a_customer_appends_nothing() {
        for markers in [false, true] {
            let store: Arc<dyn EventStore> = Arc::new(Hooked {
                markers,
                ..Hooked::new(EmbeddedStore::temporary().unwrap())
            });
            let service = CustomerService::new(store.clone(), DomainConfig::default());
            let ids = ["phone=13800138000", "email=zw@example.com"];
            let first = service
                .handle(&received_at(form("e1", &ids), 1_780_000_000_000_000))
                .await
                .unwrap();
            assert!(first.created);
            let retry = received_at(form("e1", &ids), 1_780_000_060_000_000);
            let again = service.handle(&retry).await.unwrap();
            assert_eq!(again.customer_id, first.customer_id, "markers: {markers}");
            assert!(!again.created, "markers: {markers}");
            assert_eq!(again.appended, 0, "markers: {markers}");
        }
    }
}

/// The crash window of a new customer: its claims are written, then the process stops
/// before the customer's own stream is. The redelivered event must finish the job.
mod crash_after_claims {
    use std::sync::atomic::{AtomicBool, Ordering};

    use store::{RecordedEvent, StoreError};

    use super::hooked::Hooked;
    use super::*;

    /// A store whose first append to a customer stream fails as if the process had died
    /// right before it; `markers`: claims as marker streams (KurrentDB) or in the customer's
    /// commit (embedded).
    fn dies_before_the_first_customer_append(markers: bool) -> Arc<dyn EventStore> {
        let died = AtomicBool::new(false);
        Arc::new(Hooked {
            before_append: Box::new(move |stream| {
                (stream.starts_with("customer-") && !died.swap(true, Ordering::SeqCst))
                    .then(|| StoreError::Unavailable("the process died".into()))
            }),
            markers,
            ..Hooked::new(EmbeddedStore::temporary().unwrap())
        })
    }

    #[tokio::test]
    async fn a_redelivery_finishes_a_new_customer_whose_claims_were_already_written() {
        let store = dies_before_the_first_customer_append(true);
        let service = CustomerService::new(store.clone(), DomainConfig::default());
        let event = form("e1", &["phone=13800138000", "email=zw@example.com"]);
        let err = service.handle(&event).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        let types = |log: &[RecordedEvent]| log.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>();
        assert_eq!(
            types(&store.read_all(None, usize::MAX).await.unwrap()),
            ["IdentifierClaimedV1", "IdentifierClaimedV1"],
            "the claims are written, the customer stream is not"
        );

        // Redelivered: the claims are recognised as this event's own, not a dangling owner.
        let resolution = service.handle(&event).await.unwrap();
        assert!(resolution.created);
        let log = store.read_all(None, usize::MAX).await.unwrap();
        assert_eq!(types(&log)[2..], ["CustomerRegisteredV2"]);
        assert_eq!(log[2].stream, format!("customer-{}", resolution.customer_id));
        // And once more: nothing.
        assert_eq!(service.handle(&event).await.unwrap().appended, 0);
    }

    /// The embedded store takes the claims with the customer's events: a crash before that
    /// commit leaves nothing, and the redelivery writes the customer whole.
    #[tokio::test]
    async fn with_claims_in_the_customers_commit_a_crash_leaves_nothing_half_written() {
        let store = dies_before_the_first_customer_append(false);
        let service = CustomerService::new(store.clone(), DomainConfig::default());
        let event = form("e1", &["phone=13800138000", "email=zw@example.com"]);
        assert!(service.handle(&event).await.unwrap_err().is_transient());
        assert!(store.read_all(None, usize::MAX).await.unwrap().is_empty());

        let resolution = service.handle(&event).await.unwrap();
        assert!(resolution.created);
        let log = store.read_all(None, usize::MAX).await.unwrap();
        let types: Vec<&str> = log.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["CustomerRegisteredV2"]);
        for raw in ["email=zw@example.com", "phone=13800138000"] {
            let (kind, value) = raw.split_once('=').unwrap();
            let id = crate::identity::normalise(
                &proto::inbound::RawIdentifier {
                    kind: kind.into(),
                    value: value.into(),
                    ..Default::default()
                },
                phonenumber::country::Id::CN,
            )
            .unwrap();
            let held = store.claimant(&crate::identity::reservation_stream(&id)).await.unwrap();
            assert_eq!(
                held.map(|e| e.event_id),
                Some(log[0].event_id),
                "{raw} is held by the registration"
            );
        }
        assert_eq!(service.handle(&event).await.unwrap().appended, 0);
    }
}

/// Stores written before V2 hold one `IdentifierAttachedV1` per identifier, each the
/// claimant of its identifier's reservation.
mod written_before_v2 {
    use prost::Message;
    use proto::customer::*;
    use store::{Claim, ExpectedRevision, NewEvent};

    use super::*;
    use crate::identity;
    use crate::service::{event_id, keyed_event_id, new_customer_id};

    /// What V1 appended for the new customer `event` made: its registration, one
    /// attachment per identifier (each claiming its reservation) and its activity.
    async fn as_v1_wrote(store: &Arc<dyn EventStore>, event: &InboundEvent) -> String {
        let inbound = event.event_id();
        let customer = new_customer_id(inbound, 0);
        let provenance = Provenance {
            inbound_event_id: inbound.into(),
            channel: "web-form".into(),
            channel_instance: "contact".into(),
            ..Default::default()
        };
        let registered = CustomerEvent::Registered(CustomerRegisteredV1 {
            customer_id: customer.clone(),
            provenance: Some(provenance.clone()),
        });
        let mut events = vec![registered.to_new(event_id(inbound, "register"))];
        let mut claims = Vec::new();
        let subject = event.observation().and_then(|o| o.subject.as_ref()).unwrap();
        for raw in &subject.identifiers {
            let id = identity::normalise(raw, phonenumber::country::Id::CN).unwrap();
            let key = identity::key(&id);
            claims.push(Claim {
                key: identity::reservation_of_key(&id.kind, &key),
                by: events.len(),
                marker: None,
            });
            let attached = IdentifierAttachedV1 {
                customer_id: customer.clone(),
                identifier: Some(id),
                provenance: Some(provenance.clone()),
            };
            events.push(NewEvent {
                event_id: keyed_event_id(inbound, "attach", &key),
                event_type: "IdentifierAttachedV1".into(),
                data: attached.encode_to_vec(),
                metadata: Vec::new(),
            });
        }
        let activity = CustomerEvent::ActivityRecorded(ActivityRecordedV1 {
            customer_id: customer.clone(),
            provenance: Some(provenance),
            event_type: event.event_type().to_string(),
            observation: event.observation().cloned(),
            ..Default::default()
        });
        events.push(activity.to_new(event_id(inbound, "activity")));
        let stream = identity::customer_stream(&customer);
        store
            .append_claiming(&stream, ExpectedRevision::NoStream, events, claims, None)
            .await
            .unwrap();
        customer
    }

    #[tokio::test]
    async fn a_customer_v1_wrote_is_matched_and_nothing_it_attached_is_attached_again() {
        let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::temporary().unwrap());
        let service = CustomerService::new(store.clone(), DomainConfig::default());
        let e1 = form("e1", &["phone=13800138000", "email=zw@example.com"]);
        let c1 = as_v1_wrote(&store, &e1).await;
        let before = store.read_all(None, usize::MAX).await.unwrap().len();
        assert_eq!(before, 4);

        // A redelivery of the event V1 handled: its identifiers are attached already.
        let again = service.handle(&e1).await.unwrap();
        assert_eq!((again.customer_id.as_str(), again.appended), (c1.as_str(), 0));

        // A later event with one of its identifiers joins it; only the new one is attached.
        let e2 = form("e2", &["phone=+86 138-0013-8000", "email=w@example.com"]);
        let joined = service.handle(&e2).await.unwrap();
        assert_eq!(joined.customer_id, c1);
        assert!(!joined.created);
        let log = store.read_all(None, usize::MAX).await.unwrap();
        let types: Vec<&str> = log[before..].iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["IdentifierAttachedV2", "ActivityRecordedV1"]);
        match CustomerEvent::from_recorded(&log[before]).unwrap() {
            CustomerEvent::IdentifierAttached(a) => {
                let attached: Vec<&str> = a.identifiers.iter().map(|i| i.normalized.as_str()).collect();
                assert_eq!(attached, ["w@example.com"]);
            }
            other => panic!("{other:?}"),
        }
    }
}

/// The worker commits a batch's bus offsets only after the store made its appends
/// durable, and handles the next batch while that sync runs.
mod worker_commits_after_sync {
    use std::time::Duration;

    use bus::Bus;
    use store::RecordedEvent;
    use tokio::sync::watch;

    use super::hooked::Hooked;
    use super::*;
    use crate::worker::{DomainWorker, WorkerConfig};

    /// Publishes `event` as the channels do: keyed, with its schema header.
    async fn publish(bus: &dyn Bus, event: &InboundEvent) {
        let record = bus::BusRecord {
            key: event.bus_key(),
            headers: [(bus::HEADER_SCHEMA.to_string(), event.schema().to_string())].into(),
            payload: event.encode(),
        };
        bus.publish(record).await.unwrap();
    }

    /// Activities, a new customer's (in its registration) among them.
    fn activities(log: &[RecordedEvent]) -> usize {
        log.iter()
            .filter(|e| ["ActivityRecordedV1", "CustomerRegisteredV2"].contains(&e.event_type.as_str()))
            .count()
    }

    #[tokio::test]
    async fn offsets_wait_for_the_sync_and_the_next_batch_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let bus: Arc<dyn Bus> = Arc::new(bus::embedded::EmbeddedBus::open(dir.path()).unwrap());
        for (i, phone) in ["13800138001", "13800138002", "13800138003"].iter().enumerate() {
            publish(bus.as_ref(), &form(&format!("e{i}"), &[&format!("phone={phone}")])).await;
        }
        let (open, gate) = watch::channel(false);
        // `sync` waits until the test opens the gate.
        let store: Arc<dyn EventStore> = Arc::new(Hooked {
            sync_gate: Some(gate),
            ..Hooked::new(EmbeddedStore::temporary().unwrap())
        });
        let service = Arc::new(CustomerService::new(store.clone(), DomainConfig::default()));
        let config = WorkerConfig {
            batch: 2,
            poll_wait: Duration::from_millis(20),
            ..WorkerConfig::default()
        };
        let worker = DomainWorker::new(bus.clone(), service, config);
        let mut backlog = worker.backlog();
        let (stop, shutdown) = watch::channel(false);
        let running = tokio::spawn(worker.run(shutdown));

        // Both batches (2 + 1 events) are handled while the first batch's sync is held.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while activities(&store.read_all(None, usize::MAX).await.unwrap()) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the second batch was not handled during the first sync"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_ne!(
            *backlog.borrow(),
            0,
            "offsets were committed before the store sync finished"
        );

        open.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), backlog.wait_for(|b| *b == 0))
            .await
            .expect("offsets committed once the sync finished")
            .unwrap();
        stop.send_replace(true);
        running.await.unwrap().unwrap();
    }

    /// A batch of more lanes than tasks: every event is resolved, and a lane's events in
    /// bus order (the second form of a person joins the customer the first created).
    #[tokio::test]
    async fn a_few_tasks_take_every_lane_of_a_batch_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let bus: Arc<dyn Bus> = Arc::new(bus::embedded::EmbeddedBus::open(dir.path()).unwrap());
        let people = 40;
        for round in 0..2 {
            for p in 0..people {
                let identifiers = [format!("phone=1390013{p:04}"), format!("email=p{p}r{round}@lanes.cn")];
                let ids: Vec<&str> = identifiers.iter().map(String::as_str).collect();
                publish(bus.as_ref(), &form(&format!("p{p}-r{round}"), &ids)).await;
            }
        }
        let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::temporary().unwrap());
        let service = Arc::new(CustomerService::new(store.clone(), DomainConfig::default()));
        let config = WorkerConfig {
            poll_wait: Duration::from_millis(20),
            lane_tasks: 3,
            ..WorkerConfig::default()
        };
        let worker = DomainWorker::new(bus.clone(), service, config);
        let mut backlog = worker.backlog();
        let (stop, shutdown) = watch::channel(false);
        let running = tokio::spawn(worker.run(shutdown));
        tokio::time::timeout(Duration::from_secs(20), backlog.wait_for(|b| *b == 0))
            .await
            .expect("every event resolved")
            .unwrap();
        stop.send_replace(true);
        running.await.unwrap().unwrap();

        let log = store.read_all(None, usize::MAX).await.unwrap();
        assert_eq!(activities(&log), 2 * people);
        let registered = log.iter().filter(|e| e.event_type == "CustomerRegisteredV2").count();
        assert_eq!(registered, people, "each person's second form joined their customer");
        for p in 0..people {
            let stream_of = |round: usize| {
                // The first form's activity is the customer's registration.
                let id = crate::service::event_id(&format!("p{p}-r{round}"), "activity");
                log.iter()
                    .find(|e| e.event_id == id)
                    .map(|e| (e.stream.clone(), e.revision))
            };
            let (first, second) = (stream_of(0).unwrap(), stream_of(1).unwrap());
            assert_eq!(first.0, second.0, "person {p}: one customer");
            assert!(first.1 < second.1, "person {p}: the lane kept bus order");
        }
    }
}

/// The embedded store with hooks: an append can be made to fail, `sync` can be held.
mod hooked {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::stream::BoxStream;
    use store::{AppendOutcome, ExpectedRevision, GlobalPosition, NewEvent, RecordedEvent, StoreError};
    use tokio::sync::watch;

    use super::*;

    /// Called with the stream before each append; an error fails the append unwritten.
    pub type BeforeAppend = Box<dyn Fn(&str) -> Option<StoreError> + Send + Sync>;

    pub struct Hooked {
        pub inner: EmbeddedStore,
        pub before_append: BeforeAppend,
        /// When set, `sync` waits until it is true.
        pub sync_gate: Option<watch::Receiver<bool>>,
        /// Events `read_all` has handed out.
        pub read: AtomicUsize,
        /// Claims as marker streams written before the events (how a store without a key
        /// index, KurrentDB, takes them) instead of the embedded store's single commit.
        pub markers: bool,
    }

    impl Hooked {
        pub fn new(inner: EmbeddedStore) -> Self {
            Hooked {
                inner,
                before_append: Box::new(|_| None),
                sync_gate: None,
                read: AtomicUsize::new(0),
                markers: false,
            }
        }
    }

    #[async_trait::async_trait]
    impl EventStore for Hooked {
        async fn append(
            &self,
            stream: &str,
            expected: ExpectedRevision,
            events: Vec<NewEvent>,
        ) -> Result<AppendOutcome, StoreError> {
            if let Some(e) = (self.before_append)(stream) {
                return Err(e);
            }
            self.inner.append(stream, expected, events).await
        }
        async fn append_then(
            &self,
            stream: &str,
            expected: ExpectedRevision,
            events: Vec<NewEvent>,
            on_commit: store::OnCommit,
        ) -> Result<AppendOutcome, StoreError> {
            if let Some(e) = (self.before_append)(stream) {
                return Err(e);
            }
            self.inner.append_then(stream, expected, events, on_commit).await
        }
        async fn append_claiming(
            &self,
            stream: &str,
            expected: ExpectedRevision,
            events: Vec<NewEvent>,
            claims: Vec<store::Claim>,
            on_commit: Option<store::OnCommit>,
        ) -> Result<AppendOutcome, StoreError> {
            if self.markers {
                return store::claim_with_markers(self, stream, expected, events, claims, on_commit).await;
            }
            if let Some(e) = (self.before_append)(stream) {
                return Err(e);
            }
            self.inner
                .append_claiming(stream, expected, events, claims, on_commit)
                .await
        }
        fn claims_need_markers(&self) -> bool {
            self.markers || self.inner.claims_need_markers()
        }
        async fn read_stream(&self, stream: &str, from: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
            self.inner.read_stream(stream, from, max).await
        }
        async fn stream_revision(&self, stream: &str) -> Result<Option<u64>, StoreError> {
            self.inner.stream_revision(stream).await
        }
        async fn read_all(&self, after: Option<GlobalPosition>, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
            let events = self.inner.read_all(after, max).await?;
            self.read.fetch_add(events.len(), Ordering::Relaxed);
            Ok(events)
        }
        fn subscribe_all(
            &self,
            after: Option<GlobalPosition>,
        ) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
            self.inner.subscribe_all(after)
        }
        async fn sync(&self) -> Result<(), StoreError> {
            if let Some(gate) = &self.sync_gate {
                let _ = gate.clone().wait_for(|open| *open).await;
            }
            self.inner.sync().await
        }
        fn kind(&self) -> &'static str {
            "embedded (with test hooks)"
        }
        fn last_position(&self) -> Option<GlobalPosition> {
            self.inner.last_position()
        }
        fn position_at(&self, from: Option<GlobalPosition>, offset: i64) -> Option<GlobalPosition> {
            self.inner.position_at(from, offset)
        }
    }
}

/// The matching state takes the service's own appends as they were instead of reading them
/// back (`OwnAppends`): it must end exactly where a state built from the log ends, with
/// lanes racing each other and reviewer commands writing in between.
mod own_appends {
    use std::sync::atomic::Ordering;

    use super::hooked::Hooked;
    use super::*;
    use crate::matcher::{MatchState, MatchingConfig};

    const NAMES: [&str; 4] = ["张伟", "王芳", "Zhang Wei", "李娜"];
    const ADDRESSES: [&str; 2] = ["上海市浦东新区世纪大道100号", "北京市朝阳区建国路88号"];

    /// Lane `lane`'s `i`-th arrival: its own phones and emails (some repeated within the
    /// lane, so identifiers merge), names and addresses shared with other lanes (so
    /// probabilistic merges and reviews cross lanes).
    fn arrival(lane: usize, i: usize) -> InboundEvent {
        let phone = format!("phone=1380013{lane}{:03}", i % 7);
        let email = format!("email=p{}@l{lane}.cn", i % 5);
        let ids: Vec<&str> = match i % 3 {
            0 => vec![&phone],
            1 => vec![&email],
            _ => vec![&phone, &email],
        };
        let birth = if i.is_multiple_of(4) { "1985-03-12" } else { "" };
        person(
            &format!("l{lane}-e{i}"),
            NAMES[(lane + i) % NAMES.len()],
            ADDRESSES[i % ADDRESSES.len()],
            birth,
            &ids,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_live_matching_state_equals_one_built_from_the_log() {
        let counting = Arc::new(Hooked::new(EmbeddedStore::temporary().unwrap()));
        let store: Arc<dyn EventStore> = counting.clone();
        let config = DomainConfig {
            matching: MatchingConfig {
                max_shared_identifier_customers: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        let service = Arc::new(CustomerService::new(store.clone(), config.clone()));
        let lanes = 4;
        let per_lane = 40;
        let (mut read_while_deciding, mut foreign) = (0, 0);
        for round in 0..2 {
            let read_before = counting.read.load(Ordering::Relaxed);
            let tasks: Vec<_> = (0..lanes)
                .map(|lane| {
                    let service = service.clone();
                    tokio::spawn(async move {
                        for i in round * per_lane / 2..(round + 1) * per_lane / 2 {
                            service.handle(&arrival(lane, i)).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            read_while_deciding += counting.read.load(Ordering::Relaxed) - read_before;
            // A reviewer writes between the rounds: events the service did not append.
            let all = store.read_all(None, usize::MAX).await.unwrap();
            if let Some(review) = all.iter().find(|e| e.event_type == "MatchReviewRequestedV1") {
                IdentityCommands::new(store.clone())
                    .approve(review.stream.trim_start_matches("review-"), "alice")
                    .await
                    .unwrap();
            }
            foreign += store
                .read_all(all.last().map(|e| e.position), usize::MAX)
                .await
                .unwrap()
                .len();
        }

        let log = store.read_all(None, usize::MAX).await.unwrap();
        let kinds = |t: &str| log.iter().filter(|e| e.event_type == t).count();
        assert!(kinds("CustomersMergedV1") > 0, "the arrivals must merge");
        assert!(kinds("IdentifierMarkedSharedV1") + kinds("MatchReviewRequestedV1") > 0);

        let live = service.matching_state().await.unwrap();
        let mut rebuilt = MatchState::new(&config.matching, config.default_region);
        for e in &log {
            rebuilt.apply(e);
        }
        assert_eq!(live.position(), rebuilt.position());
        assert_eq!(live.indexed(), rebuilt.indexed());
        let customers: std::collections::BTreeSet<&str> =
            log.iter().filter_map(|e| e.stream.strip_prefix("customer-")).collect();
        for c in &customers {
            assert_eq!(live.root(c), rebuilt.root(c), "{c}");
            assert_eq!(live.cluster_size(c), rebuilt.cluster_size(c), "{c}");
        }
        for lane in 0..lanes {
            for i in 0..per_lane {
                let InboundEvent::FormSubmitted(f) = arrival(lane, i) else {
                    unreachable!()
                };
                let subject = f.observation.as_ref().and_then(|o| o.subject.as_ref());
                let ids: Vec<proto::customer::Identifier> = subject
                    .unwrap()
                    .identifiers
                    .iter()
                    .filter_map(|raw| crate::identity::normalise(raw, config.default_region).ok())
                    .collect();
                for id in &ids {
                    let key = crate::identity::key(id);
                    assert_eq!(live.is_shared(&key), rebuilt.is_shared(&key), "{key}");
                    assert_eq!(
                        live.customers_with(&key, &["x"]),
                        rebuilt.customers_with(&key, &["x"]),
                        "{key}"
                    );
                }
                let record = crate::matcher::record_of(subject, &ids.iter().collect::<Vec<_>>());
                let best = |s: &MatchState| {
                    s.best_candidate(&record, "nobody")
                        .map(|c| (c.customer_id, c.scored.id, c.scored.probability))
                };
                assert_eq!(best(&live), best(&rebuilt), "lane {lane} arrival {i}");
            }
        }
        // The catch-up read back only the events the service did not append itself.
        assert!(foreign > 0, "the reviewer wrote nothing");
        assert!(
            read_while_deciding <= foreign,
            "read {read_while_deciding} events back; only {foreign} were not the service's own"
        );
    }
}
