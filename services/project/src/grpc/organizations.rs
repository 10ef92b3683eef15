//! Organisations: creating them, reading and listing the caller's.

use capsule::{
    audit::Actor,
    auth::{Caller, OrgRole},
    proto::project::v1 as pb,
    rpc::{self, FieldViolations},
};
use tonic::{Request, Response, Status};

use crate::{
    convert::organization_proto,
    db::organizations,
    state::{Call, ProjectServiceApi, org_event},
    validate,
};

pub(super) async fn create_organization(
    api: &ProjectServiceApi,
    request: Request<pb::CreateOrganizationRequest>,
) -> Result<Response<pb::Organization>, Status> {
    let caller = Caller::of(&request)?.clone();
    let actor = Actor::of(&request);
    let wanted = request.into_inner().organization.unwrap_or_default();
    let mut violations = FieldViolations::new();
    let name = validate::name(&wanted.name, "organization.name", &mut violations);
    violations.check()?;
    let creator = caller.user_id;
    let organization = api
        .db
        .run(move |conn| organizations::create(conn, &name, creator))
        .await?;
    tracing::info!(organization.id = %organization.id, user.id = %creator, "organization created");
    api.audit(
        org_event(&actor, "organization.create", organization.id, String::new()).detail("name", &organization.name),
    )
    .await;
    Ok(Response::new(organization_proto(&organization, OrgRole::Owner)))
}

pub(super) async fn get_organization(
    api: &ProjectServiceApi,
    request: Request<pb::GetOrganizationRequest>,
) -> Result<Response<pb::Organization>, Status> {
    let call = Call::of(&request)?;
    let id = rpc::require_id("organization_id", &request.get_ref().organization_id)?;
    let role = api.member(&call, id).await?;
    let organization = api
        .db
        .run(move |conn| organizations::find(conn, id))
        .await?
        .ok_or_else(|| Status::not_found("no such organization"))?;
    Ok(Response::new(organization_proto(&organization, role)))
}

pub(super) async fn list_organizations(
    api: &ProjectServiceApi,
    request: Request<pb::ListOrganizationsRequest>,
) -> Result<Response<pb::ListOrganizationsResponse>, Status> {
    let user_id = Caller::of(&request)?.user_id;
    let rows = api.db.run(move |conn| organizations::of_user(conn, user_id)).await?;
    Ok(Response::new(pb::ListOrganizationsResponse {
        organizations: rows
            .iter()
            .map(|(organization, role)| {
                organization_proto(organization, OrgRole::parse(role).unwrap_or(OrgRole::Viewer))
            })
            .collect(),
    }))
}
