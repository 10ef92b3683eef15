//! A project's environment variables: set and deleted one at a time,
//! sealed at rest; secret ones only by those who may write secrets.

use capsule::{auth::Permission, proto::project::v1 as pb, rpc};
use tonic::{Request, Response, Status};

use crate::{
    convert::variable_proto,
    db::{Variable, VariableRefusal},
    state::{Call, ProjectServiceApi, project_event},
    validate,
};

fn refused(refusal: VariableRefusal, granted: &crate::state::Granted) -> Status {
    match refusal {
        VariableRefusal::Full => Status::failed_precondition(format!(
            "a project has at most {} environment variables; delete one first",
            validate::MAX_VARIABLES
        )),
        VariableRefusal::Secret => granted.role.map_or_else(
            || rpc::internal("a secret variable refused to a caller without a role"),
            |role| Permission::ProjectSecretsWrite.denied(role),
        ),
        VariableRefusal::NotFound => Status::not_found("no such environment variable"),
    }
}

pub(super) async fn set_environment_variable(
    api: &ProjectServiceApi,
    request: Request<pb::SetEnvironmentVariableRequest>,
) -> Result<Response<pb::EnvironmentVariable>, Status> {
    let call = Call::of(&request)?;
    let body = request.into_inner();
    let variable = body.variable.unwrap_or_default();
    // The rules in the protos checked the name and the value's size.
    let id = rpc::require_id("project_id", &body.project_id)?;
    let granted = api.authorize(&call, id).await?;
    let secrets = granted.holds(Permission::ProjectSecretsWrite);
    let (name, secret) = (variable.name.clone(), variable.secret);
    let (sealed, key_id) = crate::vault::seal(&api.keys, id, &name, &variable.value)?;
    let mut saved = api
        .db
        .run(move |conn| Variable::set(conn, id, &name, (&sealed, &key_id), secret, secrets))
        .await?
        .map_err(|refusal| refused(refusal, &granted))?;
    saved.value = variable.value;
    tracing::info!(project.id = %id, variable.name = %saved.name, variable.secret = saved.secret, "environment variable set");
    api.audit(
        project_event(&call, "project.variable.set", &granted.project)
            .detail("name", &saved.name)
            .detail("secret", saved.secret),
    )
    .await;
    Ok(Response::new(variable_proto(&saved)))
}

pub(super) async fn delete_environment_variable(
    api: &ProjectServiceApi,
    request: Request<pb::DeleteEnvironmentVariableRequest>,
) -> Result<Response<pb::DeleteEnvironmentVariableResponse>, Status> {
    let call = Call::of(&request)?;
    let body = request.into_inner();
    let id = rpc::require_id("project_id", &body.project_id)?;
    let granted = api.authorize(&call, id).await?;
    let secrets = granted.holds(Permission::ProjectSecretsWrite);
    let name = body.name;
    let removed = name.clone();
    api.db
        .run(move |conn| Variable::remove(conn, id, &name, secrets))
        .await?
        .map_err(|refusal| refused(refusal, &granted))?;
    api.audit(project_event(&call, "project.variable.delete", &granted.project).detail("name", removed))
        .await;
    Ok(Response::new(pb::DeleteEnvironmentVariableResponse {}))
}
