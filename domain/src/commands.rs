//! Identity decisions made by people (through the API): approve or reject a match
//! review, split a merge. Each appends events to the store directly, with ids derived
//! from the review or the split so a retried command appends nothing new. The domain
//! worker's matching state picks them up from `$all` like any other event.

use std::sync::Arc;

use proto::customer::*;
use store::{EventStore, ExpectedRevision, StoreError};

use crate::events::CustomerEvent;
use crate::identity;
use crate::service::{DomainError, append_merge, event_id, live_customer, review_stream};

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no match review {0:?}: list pending ones with matchReviews")]
    UnknownReview(String),
    #[error("match review {review} was already {decision}ed by {reviewer:?}; a decision is final")]
    AlreadyDecided {
        review: String,
        decision: String,
        reviewer: String,
    },
    #[error("no customer {0:?}")]
    UnknownCustomer(String),
    #[error(
        "customer {absorbed} is not merged into {survivor} (it is {actual}); split it from the customer its mergeHistory names as survivor"
    )]
    NotMerged {
        survivor: String,
        absorbed: String,
        actual: String,
    },
    #[error("{field} is empty: say who decided and why")]
    Missing { field: &'static str },
    #[error(transparent)]
    Domain(#[from] DomainError),
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        CommandError::Domain(DomainError::Store(e))
    }
}

/// What a review decision did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewOutcome {
    pub review_id: String,
    /// "approved" or "rejected".
    pub status: String,
    /// The live customer after an approval.
    pub survivor_id: Option<String>,
    pub absorbed_id: Option<String>,
}

/// What a split did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitOutcome {
    pub survivor_id: String,
    pub restored_id: String,
    /// False when the customer had already been split (a retried command).
    pub split_now: bool,
}

/// Approve, reject and split: the identity commands of the API.
pub struct IdentityCommands {
    store: Arc<dyn EventStore>,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

fn provenance(cause: &str, who: &str) -> Provenance {
    let now = now_us();
    Provenance {
        inbound_event_id: cause.to_string(),
        channel: "identity-api".into(),
        channel_instance: who.to_string(),
        source_ref: String::new(),
        occurred_at_us: now,
        recorded_at_us: now,
    }
}

impl IdentityCommands {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        IdentityCommands { store }
    }

    async fn review(
        &self,
        review_id: &str,
    ) -> Result<(MatchReviewRequestedV1, Option<MatchReviewDecidedV1>, u64), CommandError> {
        let stream = review_stream(review_id);
        let events = self.store.read_stream(&stream, 0, 64).await?;
        let mut request = None;
        let mut decided = None;
        for e in &events {
            match CustomerEvent::from_recorded(e) {
                Ok(CustomerEvent::ReviewRequested(r)) => request = Some(r),
                Ok(CustomerEvent::ReviewDecided(d)) => decided = decided.or(Some(d)),
                Ok(_) => {}
                Err(source) => {
                    return Err(DomainError::Corrupt {
                        stream: stream.clone(),
                        source,
                    }
                    .into());
                }
            }
        }
        let revision = events.last().map(|e| e.revision).unwrap_or_default();
        let request = request.ok_or_else(|| CommandError::UnknownReview(review_id.to_string()))?;
        Ok((request, decided, revision))
    }

    async fn decide(
        &self,
        review_id: &str,
        decision: &str,
        reviewer: &str,
    ) -> Result<MatchReviewRequestedV1, CommandError> {
        if reviewer.trim().is_empty() {
            return Err(CommandError::Missing { field: "reviewer" });
        }
        let (request, decided, revision) = self.review(review_id).await?;
        match decided {
            Some(d) if d.decision == decision => return Ok(request),
            Some(d) => {
                return Err(CommandError::AlreadyDecided {
                    review: review_id.to_string(),
                    decision: d.decision,
                    reviewer: d.reviewer,
                });
            }
            None => {}
        }
        let event = CustomerEvent::ReviewDecided(MatchReviewDecidedV1 {
            review_id: review_id.to_string(),
            decision: decision.to_string(),
            reviewer: reviewer.to_string(),
            decided_at_us: now_us(),
        });
        let out = self
            .store
            .append(
                &review_stream(review_id),
                ExpectedRevision::Exact(revision),
                vec![event.to_new(event_id(&format!("review/{review_id}"), "decided"))],
            )
            .await;
        match out {
            Ok(_) => Ok(request),
            // Someone decided at the same time: report what they decided.
            Err(StoreError::WrongExpectedRevision { .. }) => match self.review(review_id).await? {
                (request, Some(d), _) if d.decision == decision => Ok(request),
                (_, Some(d), _) => Err(CommandError::AlreadyDecided {
                    review: review_id.to_string(),
                    decision: d.decision,
                    reviewer: d.reviewer,
                }),
                (request, None, _) => Ok(request),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Approves a review: the two customers merge (the older survives), rule "reviewer".
    /// Approving an approved review again merges nothing new.
    pub async fn approve(&self, review_id: &str, reviewer: &str) -> Result<ReviewOutcome, CommandError> {
        let request = self.decide(review_id, "approve", reviewer).await?;
        let a = live_customer(self.store.as_ref(), &request.customer_id, &review_stream(review_id)).await?;
        let b = live_customer(self.store.as_ref(), &request.candidate_id, &review_stream(review_id)).await?;
        let (survivor, absorbed) = if (a.first, &a.id) <= (b.first, &b.id) {
            (a, b)
        } else {
            (b, a)
        };
        if survivor.id != absorbed.id {
            let mut evidence = request.evidence.clone().unwrap_or_default();
            evidence.rule = "reviewer".into();
            evidence.decided_by = reviewer.to_string();
            evidence.review_id = review_id.to_string();
            let cause = format!("review/{review_id}");
            append_merge(
                &self.store,
                None,
                &survivor.id,
                &absorbed.id,
                evidence,
                &provenance(&cause, reviewer),
                &cause,
            )
            .await?;
        }
        self.store.sync().await?;
        Ok(ReviewOutcome {
            review_id: review_id.to_string(),
            status: "approved".into(),
            survivor_id: Some(survivor.id),
            absorbed_id: Some(absorbed.id),
        })
    }

    /// Rejects a review: the pair stays distinct and is never proposed again with the same evidence.
    pub async fn reject(&self, review_id: &str, reviewer: &str) -> Result<ReviewOutcome, CommandError> {
        self.decide(review_id, "reject", reviewer).await?;
        self.store.sync().await?;
        Ok(ReviewOutcome {
            review_id: review_id.to_string(),
            status: "rejected".into(),
            survivor_id: None,
            absorbed_id: None,
        })
    }

    /// Undoes the merge of `absorbed` into `survivor`: `CustomerSplitV1` in the survivor's
    /// stream (the audit record), then `CustomerRestoredV1` in the absorbed one, which makes
    /// it live again: its identifiers resolve to it from now on.
    pub async fn split(
        &self,
        survivor: &str,
        absorbed: &str,
        reason: &str,
        decided_by: &str,
    ) -> Result<SplitOutcome, CommandError> {
        if decided_by.trim().is_empty() {
            return Err(CommandError::Missing { field: "decidedBy" });
        }
        if reason.trim().is_empty() {
            return Err(CommandError::Missing { field: "reason" });
        }
        let stream = identity::customer_stream(absorbed);
        let Some(revision) = self.store.stream_revision(&stream).await? else {
            return Err(CommandError::UnknownCustomer(absorbed.to_string()));
        };
        let last = self.store.read_stream(&stream, revision, 1).await?;
        let last = last.first().map(CustomerEvent::from_recorded);
        let not_merged = |actual: String| CommandError::NotMerged {
            survivor: survivor.to_string(),
            absorbed: absorbed.to_string(),
            actual,
        };
        match last {
            Some(Ok(CustomerEvent::MergedInto(m))) if m.survivor_id == survivor => {}
            Some(Ok(CustomerEvent::MergedInto(m))) => {
                return Err(not_merged(format!("merged into {}", m.survivor_id)));
            }
            Some(Ok(CustomerEvent::Restored(r))) if r.survivor_id == survivor => {
                return Ok(SplitOutcome {
                    survivor_id: survivor.to_string(),
                    restored_id: absorbed.to_string(),
                    split_now: false,
                });
            }
            Some(Err(source)) => return Err(DomainError::Corrupt { stream, source }.into()),
            _ => return Err(not_merged("not merged".into())),
        }
        // The identifiers it claimed itself go back with it.
        let mut identifiers = Vec::new();
        let mut from = 0;
        loop {
            let events = self.store.read_stream(&stream, from, 1024).await?;
            let Some(last) = events.last() else { break };
            from = last.revision + 1;
            for e in &events {
                let Ok(event) = CustomerEvent::from_recorded(e) else {
                    continue;
                };
                for part in event.into_parts() {
                    if let CustomerEvent::IdentifierAttached(a) = part
                        && a.customer_id == absorbed
                    {
                        identifiers.extend(a.identifiers);
                    }
                }
            }
        }
        let cause = format!("split/{survivor}/{absorbed}/{revision}");
        let prov = provenance(&cause, decided_by);
        let split = CustomerEvent::Split(CustomerSplitV1 {
            survivor_id: survivor.to_string(),
            restored_id: absorbed.to_string(),
            reason: reason.to_string(),
            decided_by: decided_by.to_string(),
            identifiers,
            provenance: Some(prov.clone()),
        });
        self.store
            .append(
                &identity::customer_stream(survivor),
                ExpectedRevision::StreamExists,
                vec![split.to_new(event_id(&cause, "split"))],
            )
            .await?;
        let restored = CustomerEvent::Restored(CustomerRestoredV1 {
            customer_id: absorbed.to_string(),
            survivor_id: survivor.to_string(),
            provenance: Some(prov),
        });
        self.store
            .append(
                &stream,
                ExpectedRevision::StreamExists,
                vec![restored.to_new(event_id(&cause, "restored"))],
            )
            .await?;
        self.store.sync().await?;
        metrics::counter!("domain_customers_split_total").increment(1);
        Ok(SplitOutcome {
            survivor_id: survivor.to_string(),
            restored_id: absorbed.to_string(),
            split_now: true,
        })
    }
}
