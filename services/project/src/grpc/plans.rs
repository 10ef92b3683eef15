//! What the deploy service reads of a project to deploy it: its plan (the
//! settings a deployment snapshots), the projects that deploy on push,
//! a push event's target and, for the runner holding a deployment, the
//! variables with their values.

use capsule::{
    proto::project::v1 as pb,
    rpc::{self, FieldViolations},
};
use diesel::OptionalExtension;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    convert::plan_proto,
    db::{DeployKey, Project, Settings, Variable, Viewer},
    state::{Call, NOT_FOUND, ProjectServiceApi},
};

pub(super) async fn prepare_deployment(
    api: &ProjectServiceApi,
    request: Request<pb::PrepareDeploymentRequest>,
) -> Result<Response<pb::DeploymentPlan>, Status> {
    let call = Call::of(&request)?;
    let id = rpc::require_id("project_id", &request.get_ref().project_id)?;
    let project = api.authorize(&call, id).await?.project;
    let settings = api.db.run(move |conn| Settings::get(conn, id)).await?;
    Ok(Response::new(plan_proto(&project, settings, &api.maxima)))
}

pub(super) async fn list_auto_deploy_projects(
    api: &ProjectServiceApi,
    request: Request<pb::ListAutoDeployProjectsRequest>,
) -> Result<Response<pb::ListAutoDeployProjectsResponse>, Status> {
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let limit = rpc::page_size(body.page_size, 100, 500, &mut violations);
    let after = (!body.page_token.is_empty()).then(|| rpc::parse_id("page_token", &body.page_token, &mut violations));
    violations.check()?;
    let rows = api
        .db
        .run(move |conn| Settings::auto_deploying(conn, after, limit))
        .await?;
    let full = i64::try_from(rows.len()).unwrap_or(0) == limit;
    let next_page_token = if full {
        rows.last()
            .map(|(project, _)| project.id.to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(Response::new(pb::ListAutoDeployProjectsResponse {
        plans: rows
            .into_iter()
            .map(|(project, settings)| plan_proto(&project, settings, &api.maxima))
            .collect(),
        next_page_token,
    }))
}

pub(super) async fn get_push_target(
    api: &ProjectServiceApi,
    request: Request<pb::GetPushTargetRequest>,
) -> Result<Response<pb::PushTarget>, Status> {
    let id = rpc::require_id("project_id", &request.get_ref().project_id)?;
    let service = Viewer {
        user_id: Uuid::nil(),
        admin: true,
    };
    let (project, settings, secret) = api
        .db
        .run(move |conn| {
            Ok((
                Project::find(conn, id, service)?,
                Settings::get(conn, id).optional()?,
                Settings::webhook_secret(conn, id).optional()?,
            ))
        })
        .await?;
    let (Some(project), Some(settings)) = (project.filter(|project| project.deleted_at.is_none()), settings) else {
        return Err(Status::not_found(NOT_FOUND));
    };
    let auto_deploy = settings.auto_deploy;
    let secret = match secret {
        Some((text, key_id)) => crate::vault::open_webhook_secret(&api.keys, id, text, key_id.as_deref())?,
        None => String::new(),
    };
    Ok(Response::new(pb::PushTarget {
        plan: Some(plan_proto(&project, settings, &api.maxima)),
        auto_deploy,
        webhook_secret: secret,
    }))
}

pub(super) async fn get_deployment_environment(
    api: &ProjectServiceApi,
    request: Request<pb::GetDeploymentEnvironmentRequest>,
) -> Result<Response<pb::DeploymentEnvironment>, Status> {
    let id = rpc::require_id("project_id", &request.get_ref().project_id)?;
    // The deploy service asks for itself (no user): any live project.
    let service = Viewer {
        user_id: Uuid::nil(),
        admin: true,
    };
    let (project, variables, deploy_key) = api
        .db
        .run(move |conn| {
            // The key only where it is used: an ssh:// repository.
            let ssh = Settings::get(conn, id)
                .optional()?
                .is_some_and(|settings| settings.repository_url.starts_with("ssh://"));
            Ok((
                Project::find(conn, id, service)?,
                Variable::list(conn, id)?,
                if ssh { DeployKey::find(conn, id)? } else { None },
            ))
        })
        .await?;
    if project.is_none_or(|project| project.deleted_at.is_some()) {
        return Err(Status::not_found(NOT_FOUND));
    }
    let deploy_key = match deploy_key {
        Some(key) => crate::vault::open_deploy_key(&api.keys, &key)?,
        None => String::new(),
    };
    Ok(Response::new(pb::DeploymentEnvironment {
        deploy_key,
        // For the runner holding a deployment only: secret values included.
        environment_variables: api
            .reveal(id, variables)?
            .into_iter()
            .map(|variable| pb::EnvironmentVariable {
                name: variable.name,
                value: variable.value,
                secret: variable.secret,
                update_time: Some(rpc::timestamp(variable.updated_at)),
            })
            .collect(),
    }))
}
