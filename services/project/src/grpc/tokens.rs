//! An organisation's API tokens, for its CI: who may manage them is
//! decided here, where the organisations are; the tokens themselves are
//! kept (hashed) and checked by the auth service, like personal ones.

use capsule::{
    audit::Event,
    proto::{
        auth::v1::{self as auth_pb},
        project::v1 as pb,
    },
    rpc,
};
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::state::{Call, ProjectServiceApi, org_event};

/// The auth service's answer, in this service's words: its refusals of
/// what was asked stand; anything else means it could not be asked.
fn from_auth(status: Status) -> Status {
    match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound => status,
        _ => {
            tracing::warn!(error = %status.message(), code = ?status.code(), "the auth service could not be asked about API tokens");
            Status::unavailable("API tokens cannot be managed now; retry shortly")
        }
    }
}

/// The caller, signed in with a password, if they may manage the tokens
/// of organisation `id`.
async fn manager(api: &ProjectServiceApi, call: &Call, id: &str) -> Result<Uuid, Status> {
    call.caller.in_person("manage API tokens")?;
    let id = rpc::require_id("organization_id", id)?;
    api.member(call, id).await?;
    Ok(id)
}

pub(super) async fn create_organization_api_token(
    api: &ProjectServiceApi,
    request: Request<pb::CreateOrganizationApiTokenRequest>,
) -> Result<Response<auth_pb::CreateApiTokenResponse>, Status> {
    let call = Call::of(&request)?;
    let body = request.into_inner();
    let organization_id = manager(api, &call, &body.organization_id).await?;
    // The rules in the protos checked the name, the scopes (never
    // organization.members.write) and the days.
    if !body.project_id.is_empty() {
        let project_id = rpc::require_id("project_id", &body.project_id)?;
        let project = api.find_project(project_id).await?;
        if project.is_none_or(|project| project.organization_id != Some(organization_id)) {
            return Err(Status::not_found("project_id: the organization has no such project"));
        }
    }
    let (mut auth, issue) = api.auth(auth_pb::IssueOrganizationApiTokenRequest {
        organization_id: organization_id.to_string(),
        creator_id: call.caller.user_id.to_string(),
        api_token: Some(auth_pb::CreateApiTokenRequest {
            name: body.name,
            scopes: body.scopes,
            project_id: body.project_id,
            expire_days: body.expire_days,
        }),
    })?;
    let created = auth
        .issue_organization_api_token(issue)
        .await
        .map_err(from_auth)?
        .into_inner();
    let token = created.api_token.clone().unwrap_or_default();
    tracing::info!(organization.id = %organization_id, api_token.id = %token.id, scopes = ?token.scopes, "organization API token created");
    let mut event = token_event(&call, "api_token.create", organization_id, &token)
        .detail("scopes", token.scopes.join(","))
        .detail(
            "expires",
            token.expire_time.map(|time| time.to_string()).unwrap_or_default(),
        );
    if !token.project_id.is_empty() {
        event = event.detail("project_id", &token.project_id);
    }
    api.audit(event).await;
    Ok(Response::new(created))
}

pub(super) async fn list_organization_api_tokens(
    api: &ProjectServiceApi,
    request: Request<auth_pb::ListOrganizationApiTokensRequest>,
) -> Result<Response<auth_pb::ListApiTokensResponse>, Status> {
    let call = Call::of(&request)?;
    let body = request.into_inner();
    manager(api, &call, &body.organization_id).await?;
    let (mut auth, list) = api.auth(body)?;
    auth.list_organization_api_tokens(list).await.map_err(from_auth)
}

pub(super) async fn revoke_organization_api_token(
    api: &ProjectServiceApi,
    request: Request<auth_pb::RevokeOrganizationApiTokenRequest>,
) -> Result<Response<auth_pb::ApiToken>, Status> {
    let call = Call::of(&request)?;
    let body = request.into_inner();
    let organization_id = manager(api, &call, &body.organization_id).await?;
    let (mut auth, revoke) = api.auth(body)?;
    let revoked = auth
        .revoke_organization_api_token(revoke)
        .await
        .map_err(from_auth)?
        .into_inner();
    tracing::info!(organization.id = %organization_id, api_token.id = %revoked.id, "organization API token revoked");
    api.audit(token_event(&call, "api_token.revoke", organization_id, &revoked))
        .await;
    Ok(Response::new(revoked))
}

fn token_event(call: &Call, action: &'static str, organization_id: Uuid, token: &auth_pb::ApiToken) -> Event {
    org_event(&call.actor, action, organization_id, format!("/apiTokens/{}", token.id)).detail("name", &token.name)
}
