//! The permission checks other services ask for: may this caller do that
//! to a project, or in an organisation.

use capsule::{
    audit::Actor,
    auth::{Caller, Permission},
    proto::project::v1 as pb,
    rpc,
};
use tonic::{Request, Response, Status};

use crate::state::{Call, ProjectServiceApi};

pub(super) async fn check_project_permission(
    api: &ProjectServiceApi,
    request: Request<pb::CheckProjectPermissionRequest>,
) -> Result<Response<pb::CheckProjectPermissionResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let actor = Actor::of(&request);
    let body = request.into_inner();
    let project_id = rpc::require_id("project_id", &body.project_id)?;
    let permission = Permission::parse(&body.permission)
        .ok_or_else(|| rpc::invalid_field("permission", "is not a permission Capsule knows"))?;
    // An API token holds no more than its scopes.
    let scoped = caller.scope.as_ref().is_none_or(|scope| scope.covers(Some(permission)));
    // Every member reads; the role says whether the permission is held.
    let granted = api
        .authorize(
            &Call {
                caller,
                permission: Permission::ProjectRead,
                actor,
            },
            project_id,
        )
        .await?;
    Ok(Response::new(pb::CheckProjectPermissionResponse {
        granted: scoped && granted.holds(permission),
        role: granted.role.map_or(0, |role| role.to_proto().into()),
        organization_id: granted
            .project
            .organization_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
    }))
}

pub(super) async fn check_organization_permission(
    api: &ProjectServiceApi,
    request: Request<pb::CheckOrganizationPermissionRequest>,
) -> Result<Response<pb::CheckOrganizationPermissionResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let actor = Actor::of(&request);
    let body = request.into_inner();
    let organization_id = rpc::require_id("organization_id", &body.organization_id)?;
    let permission = Permission::parse(&body.permission)
        .ok_or_else(|| rpc::invalid_field("permission", "is not a permission Capsule knows"))?;
    if let Some(scope) = &caller.scope {
        scope.require(Some(permission))?;
    }
    let role = api
        .member(
            &Call {
                caller,
                permission,
                actor,
            },
            organization_id,
        )
        .await?;
    Ok(Response::new(pb::CheckOrganizationPermissionResponse {
        role: role.to_proto().into(),
    }))
}
