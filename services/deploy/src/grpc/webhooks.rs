//! Webhooks: subscribing, listing, deleting, the delivery log and
//! redelivery. Who may manage a project's or an organisation's webhooks is
//! the project service's to say (`webhooks.manage`: admins and owners).

use capsule::{
    audit::{Actor, Event as AuditEvent},
    auth::{Caller, Permission},
    proto::deploy::v1 as pb,
    rpc::{self, FieldViolations, PageToken},
};
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::{
    db::webhooks::{self as db, Attempt, Delivery, NewWebhook, Webhook},
    state::DeployServiceApi,
    webhooks::{Event, Scope},
};

/// Webhooks per project or organisation.
const MAX_WEBHOOKS: i64 = 20;
const NO_WEBHOOK: &str = "no such webhook";

pub(super) async fn create_webhook(
    api: &DeployServiceApi,
    request: Request<pb::CreateWebhookRequest>,
) -> Result<Response<pb::CreateWebhookResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let actor = Actor::of(&request);
    let permission = Permission::required(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let scope = scope_of(&body.parent, &mut violations);
    let mut events = Vec::new();
    for event in &body.events {
        match pb::WebhookEvent::try_from(*event).ok().and_then(Event::from_proto) {
            Some(event) if !events.contains(&event.as_str().to_owned()) => events.push(event.as_str().to_owned()),
            Some(_) => violations.add("events", "must not repeat an event"),
            None => violations.add("events", "must be WebhookEvent values other than UNSPECIFIED"),
        }
    }
    if events.is_empty() {
        violations.add(
            "events",
            "must name at least one event, such as WEBHOOK_EVENT_DEPLOYMENT_FAILED",
        );
    }
    violations.check()?;
    let scope = scope.ok_or_else(|| rpc::internal("a webhook parent passed its check without a scope"))?;
    let organization = check_scope(api, &caller, permission, scope).await?;
    let url = crate::webhooks::guard::check_url(&api.inner.webhook_guard, &body.url)
        .await
        .map_err(|why| rpc::invalid_field("url", &why))?;
    let (secret, sealed, key_id) = crate::webhooks::new_secret(&api.inner.encryption, scope.id())?;
    let new = NewWebhook {
        project_id: matches!(scope, Scope::Project(_)).then_some(scope.id()),
        organization_id: matches!(scope, Scope::Organization(_)).then_some(scope.id()),
        url: url.to_string(),
        secret: sealed,
        key_id: Some(key_id),
        events,
        created_by: caller.user_id,
    };
    let Some(webhook) = api
        .inner
        .db
        .run(move |conn| db::create(conn, &new, MAX_WEBHOOKS))
        .await?
    else {
        return Err(Status::resource_exhausted(format!(
            "at most {MAX_WEBHOOKS} webhooks per project or organisation; delete one first"
        )));
    };
    tracing::info!(webhook.id = %webhook.id, user.id = %caller.user_id, "webhook created");
    api.audit(
        webhook_event(&actor, "webhook.create", &webhook, organization)
            .detail("url", &webhook.url)
            .detail("events", webhook.events.join(",")),
    )
    .await;
    Ok(Response::new(pb::CreateWebhookResponse {
        webhook: Some(webhook_proto(&webhook)),
        secret,
    }))
}

pub(super) async fn list_webhooks(
    api: &DeployServiceApi,
    request: Request<pb::ListWebhooksRequest>,
) -> Result<Response<pb::ListWebhooksResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let permission = Permission::required(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let scope = scope_of(&body.parent, &mut violations);
    violations.check()?;
    let scope = scope.ok_or_else(|| rpc::internal("a webhook parent passed its check without a scope"))?;
    check_scope(api, &caller, permission, scope).await?;
    let webhooks = api.inner.db.run(move |conn| db::list(conn, scope)).await?;
    Ok(Response::new(pb::ListWebhooksResponse {
        webhooks: webhooks.iter().map(webhook_proto).collect(),
    }))
}

pub(super) async fn delete_webhook(
    api: &DeployServiceApi,
    request: Request<pb::DeleteWebhookRequest>,
) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let actor = Actor::of(&request);
    let permission = Permission::required(&request)?;
    let id = rpc::require_id("webhook_id", &request.get_ref().webhook_id)?;
    let (webhook, organization) = managed(api, &caller, permission, id).await?;
    api.inner.db.run(move |conn| db::delete(conn, id)).await?;
    tracing::info!(webhook.id = %id, user.id = %caller.user_id, "webhook deleted");
    api.audit(webhook_event(&actor, "webhook.delete", &webhook, organization).detail("url", &webhook.url))
        .await;
    Ok(Response::new(pb::DeleteWebhookResponse {}))
}

pub(super) async fn list_webhook_deliveries(
    api: &DeployServiceApi,
    request: Request<pb::ListWebhookDeliveriesRequest>,
) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let permission = Permission::required(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id("webhook_id", &body.webhook_id, &mut violations);
    let limit = rpc::page_size(body.page_size, 20, 100, &mut violations);
    let after = PageToken::decode(&body.page_token, &mut violations);
    violations.check()?;
    managed(api, &caller, permission, id).await?;
    let rows = api
        .inner
        .db
        .run(move |conn| db::deliveries(conn, id, after.map(|t| (t.time, t.id)), limit + 1))
        .await?;
    let next_page_token = rpc::next_page_token(&rows, limit, |(row, _)| (row.created_at, row.id));
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(Response::new(pb::ListWebhookDeliveriesResponse {
        deliveries: rows
            .iter()
            .take(limit)
            .map(|(delivery, attempts)| delivery_proto(delivery, attempts))
            .collect(),
        next_page_token,
    }))
}

pub(super) async fn redeliver_webhook_delivery(
    api: &DeployServiceApi,
    request: Request<pb::RedeliverWebhookDeliveryRequest>,
) -> Result<Response<pb::WebhookDelivery>, Status> {
    let caller = Caller::of(&request)?.clone();
    let actor = Actor::of(&request);
    let permission = Permission::required(&request)?;
    let id = rpc::require_id("delivery_id", &request.get_ref().delivery_id)?;
    let not_found = || Status::not_found("no such webhook delivery");
    let (_, webhook) = api
        .inner
        .db
        .run(move |conn| db::find_delivery(conn, id))
        .await?
        .ok_or_else(not_found)?;
    let organization = check_hidden(api, &caller, permission, webhook.scope(), not_found).await?;
    let (delivery, attempts) = api
        .inner
        .db
        .run(move |conn| db::redeliver(conn, id))
        .await?
        .ok_or_else(not_found)?;
    tracing::info!(webhook.delivery = %id, user.id = %caller.user_id, "webhook delivery sent again");
    api.audit(webhook_event(&actor, "webhook.redeliver", &webhook, organization).detail("delivery_id", id))
        .await;
    Ok(Response::new(delivery_proto(&delivery, &attempts)))
}

/// `projects/<id>` or `organizations/<id>`.
fn scope_of(parent: &str, violations: &mut FieldViolations) -> Option<Scope> {
    let scope = match parent.split_once('/') {
        Some(("projects", id)) => id.parse().ok().map(Scope::Project),
        Some(("organizations", id)) => id.parse().ok().map(Scope::Organization),
        _ => None,
    };
    if scope.is_none() {
        violations.add(
            "parent",
            "must be projects/<project id> or organizations/<organization id>",
        );
    }
    scope
}

/// The webhook, if the caller may manage it (NOT_FOUND otherwise, as if
/// it did not exist).
async fn managed(
    api: &DeployServiceApi,
    caller: &Caller,
    permission: Permission,
    id: Uuid,
) -> Result<(Webhook, Option<Uuid>), Status> {
    let webhook = api
        .inner
        .db
        .run(move |conn| db::find(conn, id))
        .await?
        .ok_or_else(|| Status::not_found(NO_WEBHOOK))?;
    let organization = check_hidden(api, caller, permission, webhook.scope(), || {
        Status::not_found(NO_WEBHOOK)
    })
    .await?;
    Ok((webhook, organization))
}

/// As [`check_scope`], with `not_found` for a caller who may not see the
/// scope: what they asked about does not exist for them.
async fn check_hidden(
    api: &DeployServiceApi,
    caller: &Caller,
    permission: Permission,
    scope: Scope,
    not_found: impl Fn() -> Status,
) -> Result<Option<Uuid>, Status> {
    check_scope(api, caller, permission, scope).await.map_err(|status| {
        if status.code() == Code::NotFound {
            not_found()
        } else {
            status
        }
    })
}

/// Whether the caller holds `permission` on the project or organisation,
/// as the project service says; the organisation the scope is in.
pub(super) async fn check_scope(
    api: &DeployServiceApi,
    caller: &Caller,
    permission: Permission,
    scope: Scope,
) -> Result<Option<Uuid>, Status> {
    match scope {
        Scope::Project(project_id) => api.check_project(caller, permission, project_id).await,
        Scope::Organization(id) => api.check_organization(caller, permission, id).await.map(|()| Some(id)),
    }
}

/// An audit event about a webhook.
fn webhook_event(actor: &Actor, action: &'static str, webhook: &Webhook, organization: Option<Uuid>) -> AuditEvent {
    let event = AuditEvent::new(actor, action, format!("webhooks/{}", webhook.id)).organization(organization);
    match webhook.project_id {
        Some(project) => event.project(project),
        None => event,
    }
}

fn webhook_proto(webhook: &Webhook) -> pb::Webhook {
    pb::Webhook {
        id: webhook.id.to_string(),
        project_id: webhook.project_id.map(|id| id.to_string()).unwrap_or_default(),
        organization_id: webhook.organization_id.map(|id| id.to_string()).unwrap_or_default(),
        url: webhook.url.clone(),
        events: webhook
            .events
            .iter()
            .filter_map(|event| Event::parse(event))
            .map(|event| event.proto() as i32)
            .collect(),
        creator_id: webhook.created_by.to_string(),
        create_time: Some(rpc::timestamp(webhook.created_at)),
    }
}

fn delivery_proto(delivery: &Delivery, attempts: &[Attempt]) -> pb::WebhookDelivery {
    let state = match delivery.state.as_str() {
        "pending" => pb::WebhookDeliveryState::Pending,
        "delivered" => pb::WebhookDeliveryState::Delivered,
        _ => pb::WebhookDeliveryState::Failed,
    };
    pb::WebhookDelivery {
        id: delivery.id.to_string(),
        webhook_id: delivery.webhook_id.to_string(),
        event: Event::parse(&delivery.event).map_or(pb::WebhookEvent::Unspecified, Event::proto) as i32,
        deployment_id: delivery.deployment_id.map(|id| id.to_string()).unwrap_or_default(),
        state: state as i32,
        create_time: Some(rpc::timestamp(delivery.created_at)),
        next_attempt_time: (state == pb::WebhookDeliveryState::Pending)
            .then(|| rpc::timestamp(delivery.next_attempt_at)),
        attempts: attempts
            .iter()
            .map(|attempt| pb::WebhookAttempt {
                attempt: attempt.attempt,
                attempt_time: Some(rpc::timestamp(attempt.attempted_at)),
                status_code: attempt.status_code.unwrap_or(0),
                error: attempt.error.clone(),
                duration_ms: attempt.duration_ms,
            })
            .collect(),
    }
}
