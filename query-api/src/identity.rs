//! Identity resolution in GraphQL: the match review queue (`matchReviews`, with both
//! customers side by side and the per-field explanation), the decisions people make
//! (`approveMatch`, `rejectMatch`, `splitCustomer`) and the identifiers marked shared.
//! Reads come from the views; decisions go through `domain::IdentityCommands`, which the
//! composition root hands in (a process without it answers with a clear error).

use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, EmptyFields, query};
use async_graphql::{Context, Enum, Object, Result, SimpleObject};
use domain::IdentityCommands;
use projections::{FieldComparisonEntry, MatchReviewEntry, MergeHistoryEntry, SharedIdentifierEntry};

use crate::{ApiContext, Customer, us_to_rfc3339};

/// Status of a match review.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ReviewStatus {
    Pending,
    Approved,
    Rejected,
}

impl ReviewStatus {
    fn key(self) -> &'static str {
        match self {
            ReviewStatus::Pending => "pending",
            ReviewStatus::Approved => "approved",
            ReviewStatus::Rejected => "rejected",
        }
    }
}

/// How one field compared, and what it weighed (log2 Bayes factor).
#[derive(SimpleObject, Clone)]
pub struct FieldComparisonOut {
    pub field: String,
    /// exact, a similarity band (e.g. jaro_winkler_0.92), else; null fields are left out.
    pub level: String,
    pub weight: f64,
}

fn comparisons(c: &[FieldComparisonEntry]) -> Vec<FieldComparisonOut> {
    c.iter()
        .map(|c| FieldComparisonOut {
            field: c.field.clone(),
            level: c.level.clone(),
            weight: c.weight,
        })
        .collect()
}

/// A merge or a split of this customer, with its evidence.
#[derive(SimpleObject)]
pub struct MergeRecord {
    /// MERGE or SPLIT.
    pub kind: String,
    pub at: String,
    pub survivor_id: String,
    /// The customer absorbed (merge) or restored (split).
    pub absorbed_id: String,
    /// shared_identifier, probabilistic or reviewer (empty for a split).
    pub rule: String,
    /// Posterior match probability (1 for a shared identifier).
    pub score: f64,
    /// log2 odds of a match, and the prior they started from.
    pub match_weight: f64,
    pub prior_weight: f64,
    pub comparisons: Vec<FieldComparisonOut>,
    /// `kind:value` of the identifiers the evidence names.
    pub identifiers: Vec<String>,
    /// The rule's reading, or who decided (reviewer, person splitting).
    pub decided_by: String,
    pub reason: String,
    pub review_id: Option<String>,
}

impl From<MergeHistoryEntry> for MergeRecord {
    fn from(e: MergeHistoryEntry) -> Self {
        MergeRecord {
            kind: e.kind.to_uppercase(),
            at: us_to_rfc3339(e.at_us),
            survivor_id: e.survivor_id,
            absorbed_id: e.absorbed_id,
            rule: e.rule,
            score: e.score,
            match_weight: e.match_weight,
            prior_weight: e.prior_weight,
            comparisons: comparisons(&e.comparisons),
            identifiers: e.identifiers,
            decided_by: e.decided_by,
            reason: e.reason,
            review_id: Some(e.review_id).filter(|r| !r.is_empty()),
        }
    }
}

/// A probable duplicate waiting for (or decided by) a person.
pub struct MatchReview(MatchReviewEntry);

#[Object]
impl MatchReview {
    async fn id(&self) -> &str {
        &self.0.id
    }
    async fn status(&self) -> ReviewStatus {
        match self.0.status.as_str() {
            "approved" => ReviewStatus::Approved,
            "rejected" => ReviewStatus::Rejected,
            _ => ReviewStatus::Pending,
        }
    }
    /// review_band, cluster_size or existing_customers.
    async fn reason(&self) -> &str {
        &self.0.reason
    }
    async fn rule(&self) -> &str {
        &self.0.rule
    }
    /// Posterior match probability.
    async fn score(&self) -> f64 {
        self.0.score
    }
    async fn match_weight(&self) -> f64 {
        self.0.match_weight
    }
    async fn prior_weight(&self) -> f64 {
        self.0.prior_weight
    }
    /// Each field's comparison level and weight.
    async fn comparisons(&self) -> Vec<FieldComparisonOut> {
        comparisons(&self.0.comparisons)
    }
    async fn requested_at(&self) -> String {
        us_to_rfc3339(self.0.requested_at_us)
    }
    async fn reviewer(&self) -> Option<&str> {
        Some(self.0.reviewer.as_str()).filter(|r| !r.is_empty())
    }
    async fn decided_at(&self) -> Option<String> {
        (self.0.decided_at_us != 0).then(|| us_to_rfc3339(self.0.decided_at_us))
    }
    /// Id of the customer the event created or updated (as recorded).
    async fn customer_id(&self) -> &str {
        &self.0.customer_id
    }
    async fn candidate_id(&self) -> &str {
        &self.0.candidate_id
    }
    /// That customer as it is now (following merges).
    async fn customer(&self, ctx: &Context<'_>) -> Result<Option<Customer>> {
        let api = ctx.data::<ApiContext>()?;
        Ok(api.views.customer(&self.0.customer_id)?.map(Customer))
    }
    /// The existing customer it resembles, as it is now.
    async fn candidate(&self, ctx: &Context<'_>) -> Result<Option<Customer>> {
        let api = ctx.data::<ApiContext>()?;
        Ok(api.views.customer(&self.0.candidate_id)?.map(Customer))
    }
}

#[derive(SimpleObject)]
pub struct ReviewsInfo {
    pub total_count: u64,
}

#[derive(SimpleObject)]
pub struct SharedIdentifier {
    pub kind: String,
    pub normalized: String,
    pub scope: String,
    /// Distinct customers seen with it when it was marked.
    pub customers: u32,
    pub limit: u32,
    pub marked_at: String,
}

impl From<SharedIdentifierEntry> for SharedIdentifier {
    fn from(s: SharedIdentifierEntry) -> Self {
        SharedIdentifier {
            kind: s.kind,
            normalized: s.normalized,
            scope: s.scope,
            customers: s.customers,
            limit: s.limit,
            marked_at: us_to_rfc3339(s.at_us),
        }
    }
}

#[derive(Default)]
pub struct IdentityQuery;

#[Object]
impl IdentityQuery {
    /// Match reviews by status, oldest request first, with Relay cursors.
    async fn match_reviews(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "ReviewStatus::Pending")] status: ReviewStatus,
        after: Option<String>,
        first: Option<i32>,
    ) -> Result<Connection<String, MatchReview, ReviewsInfo, EmptyFields>> {
        let api = ctx.data::<ApiContext>()?;
        query(
            after,
            None,
            first,
            None,
            |after: Option<String>, _before: Option<String>, first, _last| async move {
                let limit = first.unwrap_or(20).min(200);
                // Count before listing: the projector writes concurrently, and a review
                // counted here is then certainly in the page read after it.
                let total_count = api.views.review_count(status.key()) as u64;
                let items = api.views.reviews(status.key(), after.as_deref(), limit + 1)?;
                let has_next = items.len() > limit;
                let mut conn =
                    Connection::with_additional_fields(after.is_some(), has_next, ReviewsInfo { total_count });
                for r in items.into_iter().take(limit) {
                    conn.edges.push(Edge::new(r.id.clone(), MatchReview(r)));
                }
                Ok::<_, async_graphql::Error>(conn)
            },
        )
        .await
    }

    /// One match review by id.
    async fn match_review(&self, ctx: &Context<'_>, id: String) -> Result<Option<MatchReview>> {
        let api = ctx.data::<ApiContext>()?;
        Ok(api.views.review(&id)?.map(MatchReview))
    }

    /// Identifiers marked shared (a shop's phone): no longer matched on.
    async fn shared_identifiers(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] first: i32,
    ) -> Result<Vec<SharedIdentifier>> {
        let api = ctx.data::<ApiContext>()?;
        Ok(api
            .views
            .shared_identifiers(first.clamp(1, 1000) as usize)?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}

/// What a review decision did.
#[derive(SimpleObject)]
pub struct MatchDecision {
    pub review_id: String,
    pub status: ReviewStatus,
    /// After an approval: the customer that survives and the one merged into it.
    pub survivor_id: Option<String>,
    pub absorbed_id: Option<String>,
}

/// What a split did.
#[derive(SimpleObject)]
pub struct SplitResult {
    pub survivor_id: String,
    pub restored_id: String,
    /// False when it had already been split (a retried request).
    pub split_now: bool,
}

fn commands<'a>(ctx: &'a Context<'_>) -> Result<&'a Arc<IdentityCommands>> {
    ctx.data::<Arc<IdentityCommands>>().map_err(|_| {
        "identity decisions are not served by this process: send them to a process running the api role with the event store"
            .into()
    })
}

fn decision(o: domain::commands::ReviewOutcome) -> MatchDecision {
    MatchDecision {
        review_id: o.review_id,
        status: if o.status == "approved" {
            ReviewStatus::Approved
        } else {
            ReviewStatus::Rejected
        },
        survivor_id: o.survivor_id,
        absorbed_id: o.absorbed_id,
    }
}

#[derive(Default)]
pub struct IdentityMutation;

#[Object]
impl IdentityMutation {
    /// The pair is the same person: merge them (the older customer survives), rule "reviewer".
    async fn approve_match(&self, ctx: &Context<'_>, id: String, reviewer: String) -> Result<MatchDecision> {
        Ok(decision(commands(ctx)?.approve(&id, &reviewer).await?))
    }

    /// The pair are different people: keep them apart; this pair is never proposed again
    /// with the same evidence.
    async fn reject_match(&self, ctx: &Context<'_>, id: String, reviewer: String) -> Result<MatchDecision> {
        Ok(decision(commands(ctx)?.reject(&id, &reviewer).await?))
    }

    /// Undoes the merge of `absorbedId` into `customerId`: the absorbed customer gets its own
    /// identifiers, fields, channels and timeline back, and its identifiers resolve to it again.
    async fn split_customer(
        &self,
        ctx: &Context<'_>,
        customer_id: String,
        absorbed_id: String,
        reason: String,
        decided_by: String,
    ) -> Result<SplitResult> {
        let o = commands(ctx)?
            .split(&customer_id, &absorbed_id, &reason, &decided_by)
            .await?;
        Ok(SplitResult {
            survivor_id: o.survivor_id,
            restored_id: o.restored_id,
            split_now: o.split_now,
        })
    }
}
