//! Webhooks, their deliveries (the outbox) and every attempt at them.

use chrono::{DateTime, Utc};
use diesel::{
    dsl::now,
    pg::Pg,
    prelude::*,
    sql_types::{BigInt, Bool, Nullable},
};
use uuid::Uuid;

use capsule::proto::deploy::v1 as pb;

use super::schema::{webhook_attempts, webhook_deliveries, webhooks};
use crate::lifecycle::State;

/// Whose deployments a webhook hears about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Project(Uuid),
    Organization(Uuid),
}

impl Scope {
    pub fn id(self) -> Uuid {
        match self {
            Self::Project(id) | Self::Organization(id) => id,
        }
    }
}

/// A deployment event a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Created,
    Live,
    Failed,
    Crashed,
    RolledBack,
    Canceled,
    DomainIssued,
    DomainFailed,
    PreviewOpened,
    PreviewClosed,
    DatabaseRestored,
}

impl Event {
    pub const ALL: [Self; 11] = [
        Self::Created,
        Self::Live,
        Self::Failed,
        Self::Crashed,
        Self::RolledBack,
        Self::Canceled,
        Self::DomainIssued,
        Self::DomainFailed,
        Self::PreviewOpened,
        Self::PreviewClosed,
        Self::DatabaseRestored,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "deployment.created",
            Self::Live => "deployment.live",
            Self::Failed => "deployment.failed",
            Self::Crashed => "deployment.crashed",
            Self::RolledBack => "deployment.rolled_back",
            Self::Canceled => "deployment.canceled",
            Self::DomainIssued => "domain.issued",
            Self::DomainFailed => "domain.failed",
            Self::PreviewOpened => "preview.opened",
            Self::PreviewClosed => "preview.closed",
            Self::DatabaseRestored => "database.restored",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|event| event.as_str() == value)
    }

    pub fn proto(self) -> pb::WebhookEvent {
        match self {
            Self::Created => pb::WebhookEvent::DeploymentCreated,
            Self::Live => pb::WebhookEvent::DeploymentLive,
            Self::Failed => pb::WebhookEvent::DeploymentFailed,
            Self::Crashed => pb::WebhookEvent::DeploymentCrashed,
            Self::RolledBack => pb::WebhookEvent::DeploymentRolledBack,
            Self::Canceled => pb::WebhookEvent::DeploymentCanceled,
            Self::DomainIssued => pb::WebhookEvent::DomainIssued,
            Self::DomainFailed => pb::WebhookEvent::DomainFailed,
            Self::PreviewOpened => pb::WebhookEvent::PreviewOpened,
            Self::PreviewClosed => pb::WebhookEvent::PreviewClosed,
            Self::DatabaseRestored => pb::WebhookEvent::DatabaseRestored,
        }
    }

    pub fn from_proto(event: pb::WebhookEvent) -> Option<Self> {
        Self::ALL.into_iter().find(|known| known.proto() == event)
    }

    /// The event a deployment's move to `to` is, if any.
    pub fn of_state(to: State) -> Option<Self> {
        match to {
            State::Live => Some(Self::Live),
            State::Failed => Some(Self::Failed),
            State::Crashed => Some(Self::Crashed),
            State::Canceled => Some(Self::Canceled),
            State::Queued | State::Building | State::Deploying | State::Superseded => None,
        }
    }
}

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = webhooks)]
pub struct Webhook {
    pub id: Uuid,
    pub project_id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub url: String,
    pub events: Vec<String>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
}

impl Scope {
    /// The scope a row's columns name (exactly one is set).
    fn of(project_id: Option<Uuid>, organization_id: Option<Uuid>) -> Option<Self> {
        match (project_id, organization_id) {
            (Some(project), _) => Some(Self::Project(project)),
            (None, Some(organization)) => Some(Self::Organization(organization)),
            (None, None) => None,
        }
    }
}

impl Webhook {
    pub fn scope(&self) -> Scope {
        // The table's CHECK rules out a row with neither.
        Scope::of(self.project_id, self.organization_id).unwrap_or(Scope::Project(Uuid::nil()))
    }
}

#[derive(Insertable)]
#[diesel(table_name = webhooks)]
pub struct NewWebhook {
    pub project_id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub url: String,
    /// Sealed by the key `key_id` names (see `webhooks::sealed_place`).
    pub secret: String,
    pub key_id: Option<String>,
    pub events: Vec<String>,
    pub created_by: Uuid,
}

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = webhook_deliveries)]
pub struct Delivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event: String,
    /// None for an event about no deployment (a domain's).
    pub deployment_id: Option<Uuid>,
    pub state: String,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = webhook_attempts)]
pub struct Attempt {
    pub delivery_id: Uuid,
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub error: String,
    pub duration_ms: i32,
}

type InScope = Box<dyn BoxableExpression<webhooks::table, Pg, SqlType = Nullable<Bool>>>;

fn in_scope(scope: Scope) -> InScope {
    match scope {
        Scope::Project(id) => Box::new(webhooks::project_id.eq(id)),
        Scope::Organization(id) => Box::new(webhooks::organization_id.eq(id)),
    }
}

/// Subscribes a URL, unless its scope already has `limit` webhooks
/// (counted under a lock on the scope, so concurrent creations count in
/// turn).
pub fn create(conn: &mut PgConnection, new: &NewWebhook, limit: i64) -> QueryResult<Option<Webhook>> {
    let Some(scope) = Scope::of(new.project_id, new.organization_id) else {
        return Ok(None);
    };
    conn.transaction(|conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<BigInt, _>(scope.id().as_u64_pair().0.cast_signed())
            .execute(conn)?;
        let existing: i64 = webhooks::table.filter(in_scope(scope)).count().get_result(conn)?;
        if existing >= limit {
            return Ok(None);
        }
        diesel::insert_into(webhooks::table)
            .values(new)
            .returning(Webhook::as_returning())
            .get_result(conn)
            .map(Some)
    })
}

/// A scope's webhooks, oldest first.
pub fn list(conn: &mut PgConnection, scope: Scope) -> QueryResult<Vec<Webhook>> {
    webhooks::table
        .filter(in_scope(scope))
        .order((webhooks::created_at, webhooks::id))
        .select(Webhook::as_select())
        .load(conn)
}

pub fn find(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<Webhook>> {
    webhooks::table
        .find(id)
        .select(Webhook::as_select())
        .first(conn)
        .optional()
}

/// Deletes a webhook with its deliveries and their attempts.
pub fn delete(conn: &mut PgConnection, id: Uuid) -> QueryResult<bool> {
    Ok(diesel::delete(webhooks::table.find(id)).execute(conn)? > 0)
}

/// What an event is about: a deployment, or only a project (a domain).
#[derive(Debug, Clone, Copy)]
pub struct About {
    pub deployment_id: Option<Uuid>,
    pub project_id: Uuid,
    /// The project's owner: a user, or its organisation.
    pub owner_id: Option<Uuid>,
}

/// Queues `event` with `payload` for every webhook subscribed to it: the
/// project's own, and its organisation's. Called inside the transaction
/// that makes the change (`db::create`, `db::transition`), so an event is
/// queued exactly when its change is committed.
pub fn enqueue(conn: &mut PgConnection, about: About, event: Event, payload: serde_json::Value) -> QueryResult<usize> {
    use diesel::sql_types;
    // A personal project's owner is a user, never an organisation's id.
    let organization = about.owner_id.unwrap_or(Uuid::nil());
    let rows = webhooks::table
        .filter(
            webhooks::project_id
                .eq(about.project_id)
                .or(webhooks::organization_id.eq(organization)),
        )
        .filter(webhooks::events.contains(vec![event.as_str()]))
        .select((
            webhooks::id,
            event.as_str().into_sql::<sql_types::Varchar>(),
            about.deployment_id.into_sql::<sql_types::Nullable<sql_types::Uuid>>(),
            payload.into_sql::<sql_types::Jsonb>(),
        ));
    diesel::insert_into(webhook_deliveries::table)
        .values(rows)
        .into_columns((
            webhook_deliveries::webhook_id,
            webhook_deliveries::event,
            webhook_deliveries::deployment_id,
            webhook_deliveries::payload,
        ))
        .execute(conn)
}

/// A page of a webhook's deliveries, newest first, with their attempts.
pub fn deliveries(
    conn: &mut PgConnection,
    webhook_id: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<(Delivery, Vec<Attempt>)>> {
    let mut query = webhook_deliveries::table
        .filter(webhook_deliveries::webhook_id.eq(webhook_id))
        .order((webhook_deliveries::created_at.desc(), webhook_deliveries::id.desc()))
        .limit(limit)
        .select(Delivery::as_select())
        .into_boxed();
    if let Some(cursor) = after {
        query = query.filter(capsule::db::query::older_than("webhook_deliveries", cursor));
    }
    let page: Vec<Delivery> = query.load(conn)?;
    with_attempts(conn, page)
}

fn with_attempts(conn: &mut PgConnection, page: Vec<Delivery>) -> QueryResult<Vec<(Delivery, Vec<Attempt>)>> {
    let ids: Vec<Uuid> = page.iter().map(|delivery| delivery.id).collect();
    let attempts: Vec<Attempt> = webhook_attempts::table
        .filter(webhook_attempts::delivery_id.eq_any(&ids))
        .order((webhook_attempts::delivery_id, webhook_attempts::attempt))
        .select(Attempt::as_select())
        .load(conn)?;
    Ok(page
        .into_iter()
        .map(|delivery| {
            let of_it = attempts
                .iter()
                .filter(|attempt| attempt.delivery_id == delivery.id)
                .cloned()
                .collect();
            (delivery, of_it)
        })
        .collect())
}

/// A delivery with the webhook it belongs to.
pub fn find_delivery(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<(Delivery, Webhook)>> {
    webhook_deliveries::table
        .inner_join(webhooks::table)
        .filter(webhook_deliveries::id.eq(id))
        .select((Delivery::as_select(), Webhook::as_select()))
        .first(conn)
        .optional()
}

/// Makes a delivery due now, whatever its state; its attempts are kept.
pub fn redeliver(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<(Delivery, Vec<Attempt>)>> {
    let Some(delivery) = diesel::update(webhook_deliveries::table.find(id))
        .set((
            webhook_deliveries::state.eq("pending"),
            webhook_deliveries::next_attempt_at.eq(now),
        ))
        .returning(Delivery::as_returning())
        .get_result(conn)
        .optional()?
    else {
        return Ok(None);
    };
    Ok(with_attempts(conn, vec![delivery])?.pop())
}

/// A delivery taken for an attempt.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: Uuid,
    /// The subscription it goes to: its endpoint.
    pub webhook_id: Uuid,
    /// This attempt's number, from 1.
    pub attempt: i32,
    pub event: String,
    pub payload: serde_json::Value,
    pub url: String,
    /// The signing secret as stored: sealed when `key_id` is set, for the
    /// webhook's scope (`scope_id`).
    pub secret: String,
    pub key_id: Option<String>,
    pub scope_id: Uuid,
}

/// The due deliveries a sender takes, fairly: at most `$2` of one
/// endpoint's, none of the endpoints in `$3` (already at their share in
/// flight), oldest first, `$1` in all. A few slow endpoints thus never
/// hold every slot.
const DUE: &str = "\
SELECT id FROM webhook_deliveries WHERE id IN (
    SELECT id FROM (
        SELECT id, next_attempt_at,
            row_number() OVER (PARTITION BY webhook_id ORDER BY next_attempt_at) AS nth
        FROM webhook_deliveries
        WHERE state = 'pending' AND next_attempt_at <= now() AND NOT (webhook_id = ANY($3))
    ) due
    WHERE nth <= $2
    ORDER BY next_attempt_at
    LIMIT $1
)
FOR UPDATE SKIP LOCKED";

#[derive(QueryableByName)]
struct DueId {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

/// Takes up to `limit` due deliveries ([`DUE`]: at most `per_endpoint` of
/// one endpoint's, none of `busy`'s) for `lease` (another sender takes a
/// delivery again only when its lease runs out: a sender that died
/// mid-attempt loses nothing), counting the attempt.
pub fn claim_due(
    conn: &mut PgConnection,
    limit: i64,
    per_endpoint: i64,
    busy: &[Uuid],
    lease: chrono::Duration,
) -> QueryResult<Vec<Due>> {
    conn.transaction(|conn| {
        let ids: Vec<Uuid> = diesel::sql_query(DUE)
            .bind::<BigInt, _>(limit)
            .bind::<BigInt, _>(per_endpoint)
            .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(busy)
            .load::<DueId>(conn)?
            .into_iter()
            .map(|due| due.id)
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let taken: Vec<(Uuid, i32, String, serde_json::Value, Uuid)> =
            diesel::update(webhook_deliveries::table.filter(webhook_deliveries::id.eq_any(&ids)))
                .set((
                    webhook_deliveries::attempts.eq(webhook_deliveries::attempts + 1),
                    webhook_deliveries::next_attempt_at.eq(Utc::now() + lease),
                ))
                .returning((
                    webhook_deliveries::id,
                    webhook_deliveries::attempts,
                    webhook_deliveries::event,
                    webhook_deliveries::payload,
                    webhook_deliveries::webhook_id,
                ))
                .get_results(conn)?;
        type Hook = (Uuid, String, String, Option<String>, Option<Uuid>, Option<Uuid>);
        let hooks: Vec<Hook> = webhooks::table
            .filter(webhooks::id.eq_any(taken.iter().map(|row| row.4)))
            .select((
                webhooks::id,
                webhooks::url,
                webhooks::secret,
                webhooks::key_id,
                webhooks::project_id,
                webhooks::organization_id,
            ))
            .load(conn)?;
        Ok(taken
            .into_iter()
            .filter_map(|(id, attempt, event, payload, webhook_id)| {
                let (_, url, secret, key_id, project_id, organization_id) =
                    hooks.iter().find(|hook| hook.0 == webhook_id)?;
                Some(Due {
                    id,
                    webhook_id,
                    attempt,
                    event,
                    payload,
                    url: url.clone(),
                    secret: secret.clone(),
                    key_id: key_id.clone(),
                    scope_id: project_id.or(*organization_id).unwrap_or_default(),
                })
            })
            .collect())
    })
}

/// What came of an attempt, and what the delivery does next.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status_code: Option<i32>,
    pub error: String,
    pub duration_ms: i32,
    /// None: delivered or given up (`failed`); else retried then.
    pub retry_at: Option<DateTime<Utc>>,
    pub delivered: bool,
    /// The endpoint did not answer in time.
    pub timed_out: bool,
}

/// Logs an attempt and settles or reschedules its delivery.
pub fn record(conn: &mut PgConnection, due: &Due, outcome: &Outcome) -> QueryResult<()> {
    conn.transaction(|conn| {
        diesel::insert_into(webhook_attempts::table)
            .values((
                webhook_attempts::delivery_id.eq(due.id),
                webhook_attempts::attempt.eq(due.attempt),
                webhook_attempts::status_code.eq(outcome.status_code),
                webhook_attempts::error.eq(&outcome.error),
                webhook_attempts::duration_ms.eq(outcome.duration_ms),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        let (state, next) = match (outcome.delivered, outcome.retry_at) {
            (true, _) => ("delivered", Utc::now()),
            (false, Some(at)) => ("pending", at),
            (false, None) => ("failed", Utc::now()),
        };
        diesel::update(webhook_deliveries::table.find(due.id))
            .set((
                webhook_deliveries::state.eq(state),
                webhook_deliveries::next_attempt_at.eq(next),
            ))
            .execute(conn)?;
        // An endpoint that timed out is given a rest: its other pending
        // deliveries wait as long as this one's retry.
        if let (true, Some(at)) = (outcome.timed_out, outcome.retry_at) {
            diesel::update(
                webhook_deliveries::table
                    .filter(webhook_deliveries::webhook_id.eq(due.webhook_id))
                    .filter(webhook_deliveries::state.eq("pending"))
                    .filter(webhook_deliveries::next_attempt_at.lt(at)),
            )
            .set(webhook_deliveries::next_attempt_at.eq(at))
            .execute(conn)?;
        }
        Ok(())
    })
}

/// Deletes settled deliveries created before `cutoff`, with their
/// attempts.
pub fn prune(conn: &mut PgConnection, cutoff: DateTime<Utc>) -> QueryResult<usize> {
    diesel::delete(
        webhook_deliveries::table
            .filter(webhook_deliveries::state.ne("pending"))
            .filter(webhook_deliveries::created_at.lt(cutoff)),
    )
    .execute(conn)
}
