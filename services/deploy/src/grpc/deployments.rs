//! Deployments: creating, reading, listing, cancelling and rolling back.

use capsule::{
    audit::{Actor as AuditActor, Event},
    auth::{Caller, Permission},
    proto::deploy::v1 as pb,
    rpc::{self, FieldViolations, PageToken},
};
use tonic::{Request, Response, Status};

use crate::{
    db::{self, Actor, NewDeployment, Outcome},
    lifecycle::State,
};

use crate::{
    convert::deployment_proto,
    state::DeployServiceApi,
    validate::{check_environment, check_source_ref},
};

pub(super) async fn create_deployment(
    api: &DeployServiceApi,
    request: Request<pb::CreateDeploymentRequest>,
) -> Result<Response<pb::Deployment>, Status> {
    let caller = Caller::of(&request)?.clone();
    let actor = AuditActor::of(&request);
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let project_id = rpc::parse_id("project_id", &body.project_id, &mut violations);
    let environment = check_environment(&body.environment, &mut violations);
    check_source_ref(&body.source_ref, &mut violations);
    violations.check()?;
    let plan = api.prepare(&caller, project_id).await?;
    let organization = organization_of(&plan);
    let deployment = api.queue(plan, caller.user_id, environment, body.source_ref).await?;
    tracing::info!(deployment.id = %deployment.id, project.id = %project_id, user.id = %caller.user_id, "deployment queued");
    api.audit(
        deployment_event(&actor, "deployment.create", &deployment, organization)
            .detail("environment", &deployment.environment)
            .detail("source_ref", &deployment.source_ref)
            .detail("commit_sha", &deployment.commit_sha),
    )
    .await;
    Ok(Response::new(deployment_proto(&deployment)))
}

pub(super) async fn get_deployment(
    api: &DeployServiceApi,
    request: Request<pb::GetDeploymentRequest>,
) -> Result<Response<pb::Deployment>, Status> {
    let caller = Caller::of(&request)?;
    let permission = Permission::required(&request)?;
    let id = rpc::require_id("deployment_id", &request.get_ref().deployment_id)?;
    Ok(Response::new(deployment_proto(
        &api.authorize(caller, permission, id).await?,
    )))
}

pub(super) async fn list_deployments(
    api: &DeployServiceApi,
    request: Request<pb::ListDeploymentsRequest>,
) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let permission = Permission::required(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let project_id = rpc::parse_id("project_id", &body.project_id, &mut violations);
    let limit = rpc::page_size(body.page_size, 20, 100, &mut violations);
    let after = PageToken::decode(&body.page_token, &mut violations);
    let state = match pb::DeploymentState::try_from(body.state) {
        Ok(state) => State::from_proto(state),
        Err(_) => {
            violations.add("state", "is not a DeploymentState");
            None
        }
    };
    violations.check()?;
    api.check_project(&caller, permission, project_id).await?;
    let rows = api
        .inner
        .db
        .run(move |conn| db::list(conn, project_id, state, after.map(|t| (t.time, t.id)), limit + 1))
        .await?;
    let next_page_token = rpc::next_page_token(&rows, limit, |row| (row.created_at, row.id));
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(Response::new(pb::ListDeploymentsResponse {
        deployments: rows.iter().take(limit).map(deployment_proto).collect(),
        next_page_token,
    }))
}

pub(super) async fn cancel_deployment(
    api: &DeployServiceApi,
    request: Request<pb::CancelDeploymentRequest>,
) -> Result<Response<pb::Deployment>, Status> {
    let caller = Caller::of(&request)?.clone();
    let actor = AuditActor::of(&request);
    let permission = Permission::required(&request)?;
    let id = rpc::require_id("deployment_id", &request.get_ref().deployment_id)?;
    let (_, organization) = api.authorize_with_organization(&caller, permission, id).await?;
    let outcome = Outcome {
        message: "canceled by the user".to_owned(),
        ..Outcome::default()
    };
    let deployment = api.change(id, State::Canceled, Actor::User, outcome).await?;
    tracing::info!(deployment.id = %id, user.id = %caller.user_id, "deployment canceled");
    api.audit(deployment_event(&actor, "deployment.cancel", &deployment, organization))
        .await;
    Ok(Response::new(deployment_proto(&deployment)))
}

pub(super) async fn rollback_deployment(
    api: &DeployServiceApi,
    request: Request<pb::RollbackDeploymentRequest>,
) -> Result<Response<pb::Deployment>, Status> {
    let caller = Caller::of(&request)?.clone();
    let actor = AuditActor::of(&request);
    let permission = Permission::required(&request)?;
    let id = rpc::require_id("deployment_id", &request.get_ref().deployment_id)?;
    let earlier = api.authorize(&caller, permission, id).await?;
    if !matches!(earlier.state(), State::Live | State::Superseded) {
        return Err(Status::failed_precondition(format!(
            "only a deployment that went live can be rolled back to; this one is {}",
            earlier.state().as_str()
        )));
    }
    // The project must still exist and be the caller's to deploy. The
    // commands are the earlier deployment's; the variables, as for every
    // deployment, are the project's when a runner claims it.
    let plan = api.prepare(&caller, earlier.project_id).await?;
    let organization = organization_of(&plan);
    let new = NewDeployment {
        project_id: earlier.project_id,
        creator_id: caller.user_id,
        // The project's owner now: it may have moved to an organisation.
        owner_id: plan
            .project
            .as_ref()
            .and_then(|project| project.owner_id.parse().ok())
            .or(earlier.owner_id),
        source_ref: earlier.source_ref.clone(),
        environment: earlier.environment.clone(),
        snapshot: earlier.snapshot.clone(),
        rollback_of: Some(earlier.id),
        // Its release, if runners kept it: started without a build.
        artifact_digest: earlier.artifact_digest.clone(),
        commit_sha: earlier.commit_sha.clone(),
        commit_message: earlier.commit_message.clone(),
        commit_author: earlier.commit_author.clone(),
        host_label: earlier.host_label.clone(),
    };
    let deployment = api.create(new).await?;
    api.audit(
        deployment_event(&actor, "deployment.rollback", &deployment, organization).detail("rollback_of", earlier.id),
    )
    .await;
    Ok(Response::new(deployment_proto(&deployment)))
}

/// The organisation of the project a plan is for.
pub(super) fn organization_of(plan: &capsule::proto::project::v1::DeploymentPlan) -> Option<uuid::Uuid> {
    plan.project
        .as_ref()
        .and_then(|project| project.organization_id.parse().ok())
}

/// An audit event about a deployment.
pub(super) fn deployment_event(
    actor: &AuditActor,
    action: &'static str,
    deployment: &db::Deployment,
    organization: Option<uuid::Uuid>,
) -> Event {
    Event::new(actor, action, format!("deployments/{}", deployment.id))
        .organization(organization)
        .project(deployment.project_id)
}
