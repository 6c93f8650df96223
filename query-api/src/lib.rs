//! The GraphQL API over the projected views (async-graphql on axum, GraphiQL at
//! `GET /graphql`). Read-only here; it never touches the event store directly.

use async_graphql::connection::{Connection, Edge, EmptyFields, query};
use async_graphql::http::GraphiQLSource;
use async_graphql::{Context, EmptySubscription, MergedObject, Object, Result, Schema, SimpleObject};
use async_graphql_axum::GraphQL;
use axum::Router;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use projections::{CustomerView, TimelineEntry, ViewStore};

pub mod admin;
pub mod identity;

pub type CrmSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

/// Every query: customers and the admin views (quarantine, imports).
#[derive(MergedObject, Default)]
pub struct QueryRoot(CustomerQuery, admin::AdminQuery, identity::IdentityQuery);

/// Every mutation.
#[derive(MergedObject, Default)]
pub struct MutationRoot(admin::AdminMutation, identity::IdentityMutation);

/// Settings the API needs to read input the way the domain does.
#[derive(Clone)]
pub struct ApiContext {
    pub views: ViewStore,
    pub default_region: phonenumber::country::Id,
    /// Identity decisions (approve, reject, split); `None` answers them with an error.
    pub identity: Option<std::sync::Arc<domain::IdentityCommands>>,
}

/// The schema; admin ports are optional (a role without them answers a clear error).
pub fn schema(ctx: ApiContext, admin: admin::AdminPorts) -> CrmSchema {
    let identity = ctx.identity.clone();
    let mut builder = Schema::build(QueryRoot::default(), MutationRoot::default(), EmptySubscription).data(ctx);
    if let Some(commands) = identity {
        builder = builder.data(commands);
    }
    if let Some(q) = admin.quarantine {
        builder = builder.data(q);
    }
    if let Some(i) = admin.imports {
        builder = builder.data(i);
    }
    builder.limit_depth(12).limit_complexity(5_000).finish()
}

/// `GET /graphql` → GraphiQL, `POST /graphql` → queries.
pub fn router(schema: CrmSchema) -> Router {
    Router::new().route("/graphql", get(graphiql).post_service(GraphQL::new(schema)))
}

async fn graphiql() -> impl IntoResponse {
    Html(GraphiQLSource::build().endpoint("/graphql").finish())
}

fn us_to_rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

#[derive(SimpleObject)]
pub struct Provenance {
    /// Inbound event that brought the value.
    pub event_id: String,
    pub channel: String,
    pub instance: String,
    pub occurred_at: String,
}

impl From<&projections::Source> for Provenance {
    fn from(s: &projections::Source) -> Self {
        Provenance {
            event_id: s.event_id.clone(),
            channel: s.channel.clone(),
            instance: s.instance.clone(),
            occurred_at: us_to_rfc3339(s.occurred_at_us),
        }
    }
}

#[derive(SimpleObject)]
pub struct IdentifierOut {
    pub kind: String,
    pub normalized: String,
    pub scope: String,
    pub raw: Vec<String>,
    pub provenance: Provenance,
}

#[derive(SimpleObject)]
pub struct FieldOut {
    pub name: String,
    pub value: String,
    pub provenance: Provenance,
    pub previous_values: Vec<String>,
}

#[derive(SimpleObject, Clone)]
pub struct AttributionOut {
    pub utm_source: String,
    pub utm_medium: String,
    pub utm_campaign: String,
    pub utm_term: String,
    pub utm_content: String,
    pub referrer: String,
}

impl From<&projections::Attribution> for AttributionOut {
    fn from(a: &projections::Attribution) -> Self {
        AttributionOut {
            utm_source: a.utm_source.clone(),
            utm_medium: a.utm_medium.clone(),
            utm_campaign: a.utm_campaign.clone(),
            utm_term: a.utm_term.clone(),
            utm_content: a.utm_content.clone(),
            referrer: a.referrer.clone(),
        }
    }
}

#[derive(SimpleObject)]
pub struct ChannelOut {
    pub channel: String,
    pub instance: String,
    pub first_at: String,
    pub last_at: String,
    pub count: u64,
    pub attributions: Vec<AttributionOut>,
}

#[derive(SimpleObject)]
pub struct TouchOut {
    pub channel: String,
    pub instance: String,
    pub at: String,
    pub attribution: Option<AttributionOut>,
    pub event_id: String,
}

#[derive(SimpleObject)]
pub struct ConsentOut {
    pub scope: String,
    pub status: String,
    pub provenance: Provenance,
}

#[derive(SimpleObject)]
pub struct TimelineItem {
    pub at: String,
    pub channel: String,
    pub instance: String,
    pub kind: String,
    pub event_type: String,
    pub summary: String,
    pub event_id: String,
    pub attribution: Option<AttributionOut>,
    pub order_id: String,
    pub order_total_cents: i64,
}

impl From<TimelineEntry> for TimelineItem {
    fn from(t: TimelineEntry) -> Self {
        TimelineItem {
            at: us_to_rfc3339(t.at_us),
            channel: t.channel,
            instance: t.instance,
            kind: t.kind,
            event_type: t.event_type,
            summary: t.summary,
            event_id: t.event_id,
            attribution: t.attribution.as_ref().map(Into::into),
            order_id: t.order_id,
            order_total_cents: t.order_total_cents,
        }
    }
}

/// A merged customer.
pub struct Customer(CustomerView);

#[Object]
impl Customer {
    /// The surviving customer id (a merged-away id resolves to this).
    async fn id(&self) -> &str {
        &self.0.id
    }
    async fn created_at(&self) -> String {
        us_to_rfc3339(self.0.created_at_us)
    }
    async fn updated_at(&self) -> String {
        us_to_rfc3339(self.0.updated_at_us)
    }
    /// Display name (the latest name seen), if any.
    async fn name(&self) -> Option<&str> {
        self.0.fields.get("name").map(|f| f.value.as_str())
    }
    async fn identifiers(&self) -> Vec<IdentifierOut> {
        self.0
            .identifiers
            .iter()
            .map(|i| IdentifierOut {
                kind: i.kind.clone(),
                normalized: i.normalized.clone(),
                scope: i.scope.clone(),
                raw: i.raw.clone(),
                provenance: (&i.source).into(),
            })
            .collect()
    }
    /// Contact and profile fields, each with where it came from.
    async fn fields(&self) -> Vec<FieldOut> {
        self.0
            .fields
            .iter()
            .map(|(name, f)| FieldOut {
                name: name.clone(),
                value: f.value.clone(),
                provenance: (&f.source).into(),
                previous_values: f.previous.iter().map(|p| p.value.clone()).collect(),
            })
            .collect()
    }
    async fn channels(&self) -> Vec<ChannelOut> {
        self.0
            .channels
            .iter()
            .map(|c| ChannelOut {
                channel: c.channel.clone(),
                instance: c.instance.clone(),
                first_at: us_to_rfc3339(c.first_at_us),
                last_at: us_to_rfc3339(c.last_at_us),
                count: c.count,
                attributions: c.attributions.iter().map(Into::into).collect(),
            })
            .collect()
    }
    async fn first_touch(&self) -> Option<TouchOut> {
        self.0.first_touch.as_ref().map(|t| TouchOut {
            channel: t.channel.clone(),
            instance: t.instance.clone(),
            at: us_to_rfc3339(t.at_us),
            attribution: t.attribution.as_ref().map(Into::into),
            event_id: t.event_id.clone(),
        })
    }
    async fn consent(&self) -> Vec<ConsentOut> {
        self.0
            .consent
            .iter()
            .map(|(scope, c)| ConsentOut {
                scope: scope.clone(),
                status: c.status.clone(),
                provenance: (&c.source).into(),
            })
            .collect()
    }
    async fn order_count(&self) -> u64 {
        self.0.order_count
    }
    async fn order_total_cents(&self) -> i64 {
        self.0.order_total_cents
    }
    /// Ids of customers merged into this one.
    async fn merged_from(&self) -> &[String] {
        &self.0.merged_from
    }
    /// Every merge and split of this customer and the customers merged into it, oldest
    /// first: when, survivor, absorbed, rule, score, each field's level and weight, who decided.
    async fn merge_history(&self, ctx: &Context<'_>) -> Result<Vec<identity::MergeRecord>> {
        let api = ctx.data::<ApiContext>()?;
        let ids: Vec<String> = std::iter::once(self.0.id.clone())
            .chain(self.0.merged_from.iter().cloned())
            .collect();
        Ok(api.views.merge_history(&ids)?.into_iter().map(Into::into).collect())
    }
    /// Interactions, newest first, paginated with Relay cursors.
    async fn timeline(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
        first: Option<i32>,
    ) -> Result<Connection<String, TimelineItem, TimelineInfo, EmptyFields>> {
        let api = ctx.data::<ApiContext>()?;
        let id = self.0.id.clone();
        let total = self.0.timeline_count;
        query(
            after,
            None,
            first,
            None,
            |after: Option<String>, _before: Option<String>, first, _last| async move {
                let offset = match after {
                    Some(c) => c.parse::<usize>().map_err(|_| "cursor is not one this API gave out")? + 1,
                    None => 0,
                };
                let limit = first.unwrap_or(20).min(200);
                let items = api.views.timeline(&id, offset, limit + 1)?;
                let has_next = items.len() > limit;
                let mut conn =
                    Connection::with_additional_fields(offset > 0, has_next, TimelineInfo { total_count: total });
                for (i, item) in items.into_iter().take(limit).enumerate() {
                    conn.edges.push(Edge::new((offset + i).to_string(), item.into()));
                }
                Ok::<_, async_graphql::Error>(conn)
            },
        )
        .await
    }
}

#[derive(SimpleObject)]
pub struct TimelineInfo {
    pub total_count: u64,
}

#[derive(SimpleObject)]
pub struct CustomersInfo {
    /// Live customers in total (all channels).
    pub total_count: u64,
}

#[derive(Default)]
pub struct CustomerQuery;

fn normalise_input(api: &ApiContext, kind: &str, value: &str) -> Result<String> {
    Ok(match kind {
        "phone" => proto::normalize::phone(value, api.default_region)?,
        "email" => proto::normalize::email(value)?,
        _ => proto::normalize::nfkc(value),
    })
}

#[Object]
impl CustomerQuery {
    /// A customer by id; an id merged into another customer resolves to the survivor.
    async fn customer(&self, ctx: &Context<'_>, id: String) -> Result<Option<Customer>> {
        let api = ctx.data::<ApiContext>()?;
        Ok(api.views.customer(&id)?.map(Customer))
    }

    /// A customer by one of its identifiers, normalised like the domain does
    /// (kind: phone, email, wechat_openid, wechat_unionid, ...; scope for scoped kinds).
    async fn customer_by_identifier(
        &self,
        ctx: &Context<'_>,
        kind: String,
        value: String,
        #[graphql(default)] scope: String,
    ) -> Result<Option<Customer>> {
        let api = ctx.data::<ApiContext>()?;
        let kind = kind.trim().to_ascii_lowercase();
        let normalized = normalise_input(api, &kind, &value)?;
        Ok(api
            .views
            .by_identifier(&kind, &proto::normalize::nfkc(&scope), &normalized)?
            .map(Customer))
    }

    /// Customers in id order with Relay cursors, optionally only those seen on a channel.
    async fn customers(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
        first: Option<i32>,
        channel: Option<String>,
    ) -> Result<Connection<String, Customer, CustomersInfo, EmptyFields>> {
        let api = ctx.data::<ApiContext>()?;
        query(
            after,
            None,
            first,
            None,
            |after: Option<String>, _before: Option<String>, first, _last| async move {
                let limit = first.unwrap_or(20).min(500);
                // Count before listing, as `matchReviews` does: a customer counted here is
                // then certainly on the page read after it.
                let total_count = api.views.count() as u64;
                let ids = api
                    .views
                    .customer_ids(after.as_deref(), channel.as_deref(), limit + 1)?;
                let has_next = ids.len() > limit;
                let mut conn =
                    Connection::with_additional_fields(after.is_some(), has_next, CustomersInfo { total_count });
                for id in ids.into_iter().take(limit) {
                    if let Some(v) = api.views.customer(&id)? {
                        conn.edges.push(Edge::new(id, Customer(v)));
                    }
                }
                Ok::<_, async_graphql::Error>(conn)
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_render_as_rfc3339() {
        assert_eq!(super::us_to_rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            super::us_to_rfc3339(1_764_115_200_000_001),
            "2025-11-26T00:00:00.000001Z"
        );
    }
}
