//! The audit trail every service keeps in its own database: one
//! append-only row per change (`audit_events`, the same table in each
//! service's migrations, where a trigger refuses UPDATE, DELETE and
//! TRUNCATE), written by [`record`] and read back newest first by [`list`].

use std::{collections::BTreeMap, net::IpAddr};

use chrono::{DateTime, Utc};
use diesel::{pg::Pg, prelude::*};
use tonic::metadata::{Ascii, MetadataValue};
use uuid::Uuid;

use crate::{auth::Caller, proto::audit::v1 as pb, rpc};

diesel::table! {
    audit_events (id) {
        id -> Int8,
        occurred_at -> Timestamptz,
        actor_id -> Nullable<Uuid>,
        actor_token_id -> Nullable<Uuid>,
        action -> Varchar,
        target -> Varchar,
        organization_id -> Nullable<Uuid>,
        project_id -> Nullable<Uuid>,
        client_address -> Varchar,
        request_id -> Varchar,
        details -> Jsonb,
    }
}

/// Who acted and from where: taken from a request before its body is
/// consumed. Cheap to take (no text is made until an event is recorded):
/// handlers that only read take one too.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub user_id: Option<Uuid>,
    pub token_id: Option<Uuid>,
    client: Option<IpAddr>,
    request_id: Option<MetadataValue<Ascii>>,
}

impl Actor {
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let caller = request.extensions().get::<Caller>();
        Self {
            // An organisation's token is no user: the token is the actor.
            user_id: caller
                .filter(|caller| {
                    caller
                        .scope
                        .as_ref()
                        .is_none_or(|scope| scope.organization_id.is_none())
                })
                .map(|caller| caller.user_id)
                .filter(|id| !id.is_nil()),
            token_id: caller
                .and_then(|caller| caller.scope.as_ref())
                .map(|scope| scope.token_id),
            client: crate::client::ip_of(request),
            request_id: request.metadata().get("x-request-id").cloned(),
        }
    }

    fn client_address(&self) -> String {
        self.client.map(|ip| ip.to_string()).unwrap_or_default()
    }

    /// A client may send its own id: it is kept, bounded.
    fn request_id(&self) -> String {
        let id = self
            .request_id
            .as_ref()
            .and_then(|id| id.to_str().ok())
            .unwrap_or_default();
        id.chars().take(64).collect()
    }
}

/// One change, as recorded.
#[derive(Debug, Clone)]
pub struct Event {
    pub actor: Actor,
    pub action: &'static str,
    pub target: String,
    pub organization_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    /// Names and states, never a secret's value.
    pub details: BTreeMap<&'static str, String>,
}

impl Event {
    pub fn new(actor: &Actor, action: &'static str, target: String) -> Self {
        Self {
            actor: actor.clone(),
            action,
            target,
            organization_id: None,
            project_id: None,
            details: BTreeMap::new(),
        }
    }

    pub fn organization(mut self, id: Option<Uuid>) -> Self {
        self.organization_id = id;
        self
    }

    pub fn project(mut self, id: Uuid) -> Self {
        self.project_id = Some(id);
        self
    }

    pub fn detail(mut self, key: &'static str, value: impl ToString) -> Self {
        self.details.insert(key, value.to_string());
        self
    }
}

/// Appends the event.
pub fn record(conn: &mut PgConnection, event: &Event) -> QueryResult<()> {
    let details = serde_json::to_value(&event.details).unwrap_or_default();
    diesel::insert_into(audit_events::table)
        .values((
            audit_events::actor_id.eq(event.actor.user_id),
            audit_events::actor_token_id.eq(event.actor.token_id),
            audit_events::action.eq(event.action),
            audit_events::target.eq(&event.target),
            audit_events::organization_id.eq(event.organization_id),
            audit_events::project_id.eq(event.project_id),
            audit_events::client_address.eq(event.actor.client_address()),
            audit_events::request_id.eq(event.actor.request_id()),
            audit_events::details.eq(details),
        ))
        .execute(conn)
        .map(drop)
}

#[derive(Queryable, Selectable, Debug)]
#[diesel(table_name = audit_events)]
pub struct Row {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    pub actor_id: Option<Uuid>,
    pub actor_token_id: Option<Uuid>,
    pub action: String,
    pub target: String,
    pub organization_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub client_address: String,
    pub request_id: String,
    pub details: serde_json::Value,
}

/// Which events a page holds.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub organization_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub actor_id: Option<Uuid>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    /// Only events older than this id (the page token).
    pub before: Option<i64>,
}

/// A page of events, newest first.
pub fn list(conn: &mut PgConnection, filter: &Filter, limit: i64) -> QueryResult<Vec<Row>> {
    let mut query = audit_events::table
        .select(Row::as_select())
        .order(audit_events::id.desc())
        .limit(limit)
        .into_boxed::<Pg>();
    if let Some(id) = filter.organization_id {
        query = query.filter(audit_events::organization_id.eq(id));
    }
    if let Some(id) = filter.project_id {
        query = query.filter(audit_events::project_id.eq(id));
    }
    if let Some(id) = filter.actor_id {
        query = query.filter(audit_events::actor_id.eq(id));
    }
    if let Some(start) = filter.start {
        query = query.filter(audit_events::occurred_at.ge(start));
    }
    if let Some(end) = filter.end {
        query = query.filter(audit_events::occurred_at.lt(end));
    }
    if let Some(before) = filter.before {
        query = query.filter(audit_events::id.lt(before));
    }
    query.load(conn)
}

/// A row as the API answers it.
pub fn to_proto(row: &Row, service: &str) -> pb::AuditEvent {
    let text = |id: Option<Uuid>| id.map(|id| id.to_string()).unwrap_or_default();
    pb::AuditEvent {
        id: row.id,
        service: service.to_owned(),
        create_time: Some(rpc::timestamp(row.occurred_at)),
        actor_id: text(row.actor_id),
        actor_token_id: text(row.actor_token_id),
        action: row.action.clone(),
        target: row.target.clone(),
        organization_id: text(row.organization_id),
        project_id: text(row.project_id),
        client_address: row.client_address.clone(),
        request_id: row.request_id.clone(),
        details: row
            .details
            .as_object()
            .map(|object| {
                object
                    .iter()
                    .map(|(key, value)| (key.clone(), value.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The filter, page size and page token of a request, checked.
pub fn filter_of(request: &pb::ListAuditEventsRequest) -> Result<(Filter, i64), tonic::Status> {
    let mut violations = rpc::FieldViolations::new();
    let id = |field: &str, value: &str, violations: &mut rpc::FieldViolations| {
        (!value.is_empty()).then(|| rpc::parse_id(field, value, violations))
    };
    let time = |value: &Option<prost_types::Timestamp>| {
        value
            .as_ref()
            .and_then(|time| DateTime::<Utc>::from_timestamp(time.seconds, u32::try_from(time.nanos).unwrap_or(0)))
    };
    let filter = Filter {
        organization_id: id("organization_id", &request.organization_id, &mut violations),
        project_id: id("project_id", &request.project_id, &mut violations),
        actor_id: id("actor_id", &request.actor_id, &mut violations),
        start: time(&request.start_time),
        end: time(&request.end_time),
        before: (!request.page_token.is_empty())
            .then(|| request.page_token.parse().ok())
            .flatten(),
    };
    let limit = rpc::page_size(request.page_size, 50, 200, &mut violations);
    violations.check()?;
    Ok((filter, limit))
}

/// Appends `event` after the change it records has been made. A failure
/// to record is logged as an error with the event; the change stands.
pub async fn append(db: &crate::db::Database, event: Event) {
    let recorded = event.clone();
    if let Err(err) = db.run(move |conn| record(conn, &recorded)).await {
        tracing::error!(error = %err, action = event.action, target = %event.target, "the audit event could not be recorded");
    }
}

/// Without an organisation or a project to read, a caller reads only
/// their own events (platform admins: anyone's).
pub fn restrict_to_caller(filter: &mut Filter, caller: &Caller) -> Result<(), tonic::Status> {
    if filter.project_id.is_some() || filter.organization_id.is_some() || caller.is_admin() {
        return Ok(());
    }
    match filter.actor_id {
        Some(actor) if actor != caller.user_id => Err(tonic::Status::permission_denied(
            "only your own events, or those of an organisation or project you administer",
        )),
        _ => {
            filter.actor_id = Some(caller.user_id);
            Ok(())
        }
    }
}

/// The page of `rows` (read with one more than `limit`) as `service`
/// answers it.
pub fn page(rows: &[Row], limit: i64, service: &str) -> pb::ListAuditEventsResponse {
    let next_page_token = next_page_token(rows, limit);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    pb::ListAuditEventsResponse {
        events: rows.iter().take(limit).map(|row| to_proto(row, service)).collect(),
        next_page_token,
    }
}

/// The token of the page after `rows` (one more than a page was read).
pub fn next_page_token(rows: &[Row], limit: i64) -> String {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows[limit - 1].id.to_string()
    } else {
        String::new()
    }
}
