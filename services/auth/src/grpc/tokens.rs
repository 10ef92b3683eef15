//! API tokens: personal ones created by their user, an organisation's
//! through the project service; shown once, listed, revoked; checked by
//! every service (through `CheckApiToken`) on every call they make.

use capsule::{
    audit::{Actor, Event},
    auth::{API_TOKEN_PREFIX, Caller, new_token},
    proto::auth::v1 as pb,
    rpc::{self, FieldViolations},
};
use chrono::Utc;
use tonic::{Request, Response, Status};

use crate::state::AuthServiceApi;
use uuid::Uuid;

use crate::db::api_tokens::{self, ApiTokenRow, NewApiToken, Owner};

fn token_proto(row: &ApiTokenRow) -> pb::ApiToken {
    pb::ApiToken {
        id: row.id.to_string(),
        name: row.name.clone(),
        scopes: row.scopes.clone(),
        project_id: row.project_id.map(|id| id.to_string()).unwrap_or_default(),
        create_time: Some(rpc::timestamp(row.created_at)),
        expire_time: Some(rpc::timestamp(row.expires_at)),
        last_use_time: row.last_used_at.map(rpc::timestamp),
        revoke_time: row.revoked_at.map(rpc::timestamp),
        organization_id: row.organization_id.map(|id| id.to_string()).unwrap_or_default(),
        creator_id: row
            .organization_id
            .and(row.created_by)
            .map(|id| id.to_string())
            .unwrap_or_default(),
    }
}

/// The caller, who must be a user signed in with a password: a token
/// cannot make, list or revoke tokens (the layer refuses API tokens here
/// already, as these methods declare no permission).
fn account_holder<T>(request: &Request<T>) -> Result<Caller, Status> {
    let caller = Caller::of(request)?.clone();
    caller.in_person("manage API tokens")?;
    Ok(caller)
}

pub(super) async fn create_api_token(
    api: &AuthServiceApi,
    request: Request<pb::CreateApiTokenRequest>,
) -> Result<Response<pb::CreateApiTokenResponse>, Status> {
    let caller = account_holder(&request)?;
    let actor = Actor::of(&request);
    let (created, token) = issue(api, Owner::User(caller.user_id), caller.user_id, request.into_inner()).await?;
    let mut event = Event::new(&actor, "api_token.create", format!("apiTokens/{}", created.id))
        .detail("name", &created.name)
        .detail("scopes", created.scopes.join(","))
        .detail("expires", created.expires_at.to_rfc3339());
    if let Some(project_id) = created.project_id {
        event = event.detail("project_id", project_id);
    }
    api.audit(event).await;
    Ok(Response::new(pb::CreateApiTokenResponse {
        api_token: Some(token_proto(&created)),
        token,
    }))
}

/// For the project service, which checked that the creator may manage the
/// organisation's tokens (and records the event in its trail).
pub(super) async fn issue_organization_api_token(
    api: &AuthServiceApi,
    request: Request<pb::IssueOrganizationApiTokenRequest>,
) -> Result<Response<pb::CreateApiTokenResponse>, Status> {
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let organization_id = rpc::parse_id("organization_id", &body.organization_id, &mut violations);
    let creator = rpc::parse_id("creator_id", &body.creator_id, &mut violations);
    violations.check()?;
    let wanted = body.api_token.unwrap_or_default();
    let (created, token) = issue(api, Owner::Organization(organization_id), creator, wanted).await?;
    Ok(Response::new(pb::CreateApiTokenResponse {
        api_token: Some(token_proto(&created)),
        token,
    }))
}

/// Makes a token for `owner` as `wanted` describes it.
async fn issue(
    api: &AuthServiceApi,
    owner: Owner,
    created_by: Uuid,
    wanted: pb::CreateApiTokenRequest,
) -> Result<(ApiTokenRow, String), Status> {
    let mut violations = FieldViolations::new();
    let name = rpc::name(&wanted.name, "name", 100, &mut violations);
    let project_id =
        (!wanted.project_id.is_empty()).then(|| rpc::parse_id("project_id", &wanted.project_id, &mut violations));
    violations.check()?;
    let (token, hash) = new_token(API_TOKEN_PREFIX)?;
    let scopes = wanted.scopes;
    // The rules in the protos bound the days (1 to 366).
    let expires_at = Utc::now() + chrono::Duration::days(i64::from(wanted.expire_days));
    let created = api
        .inner
        .db
        .run(move |conn| {
            api_tokens::create(
                conn,
                &NewApiToken {
                    owner,
                    created_by,
                    name: &name,
                    token_hash: &hash,
                    scopes: &scopes,
                    project_id,
                    expires_at,
                },
            )
        })
        .await?
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "{} {} live API tokens already; revoke one first",
                match owner {
                    Owner::User(_) => "you hold",
                    Owner::Organization(_) => "the organization holds",
                },
                api_tokens::MAX_LIVE
            ))
        })?;
    tracing::info!(owner = ?owner, api_token.id = %created.id, scopes = ?created.scopes, "API token created");
    Ok((created, token))
}

pub(super) async fn list_api_tokens(
    api: &AuthServiceApi,
    request: Request<pb::ListApiTokensRequest>,
) -> Result<Response<pb::ListApiTokensResponse>, Status> {
    let user_id = account_holder(&request)?.user_id;
    let rows = api
        .inner
        .db
        .run(move |conn| api_tokens::list(conn, Owner::User(user_id)))
        .await?;
    Ok(Response::new(pb::ListApiTokensResponse {
        api_tokens: rows.iter().map(token_proto).collect(),
    }))
}

pub(super) async fn revoke_api_token(
    api: &AuthServiceApi,
    request: Request<pb::RevokeApiTokenRequest>,
) -> Result<Response<pb::ApiToken>, Status> {
    let user_id = account_holder(&request)?.user_id;
    let actor = Actor::of(&request);
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id("api_token_id", &request.get_ref().api_token_id, &mut violations);
    violations.check()?;
    let revoked = api
        .inner
        .db
        .run(move |conn| api_tokens::revoke(conn, Owner::User(user_id), id))
        .await?
        .ok_or_else(|| Status::not_found("no such API token"))?;
    tracing::info!(user.id = %user_id, api_token.id = %id, "API token revoked");
    api.audit(Event::new(&actor, "api_token.revoke", format!("apiTokens/{id}")).detail("name", &revoked.name))
        .await;
    Ok(Response::new(token_proto(&revoked)))
}

/// For the project service: an organisation's tokens.
pub(super) async fn list_organization_api_tokens(
    api: &AuthServiceApi,
    request: Request<pb::ListOrganizationApiTokensRequest>,
) -> Result<Response<pb::ListApiTokensResponse>, Status> {
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id("organization_id", &request.get_ref().organization_id, &mut violations);
    violations.check()?;
    let rows = api
        .inner
        .db
        .run(move |conn| api_tokens::list(conn, Owner::Organization(id)))
        .await?;
    Ok(Response::new(pb::ListApiTokensResponse {
        api_tokens: rows.iter().map(token_proto).collect(),
    }))
}

/// For the project service: revokes one of an organisation's tokens.
pub(super) async fn revoke_organization_api_token(
    api: &AuthServiceApi,
    request: Request<pb::RevokeOrganizationApiTokenRequest>,
) -> Result<Response<pb::ApiToken>, Status> {
    let body = request.get_ref();
    let mut violations = FieldViolations::new();
    let organization_id = rpc::parse_id("organization_id", &body.organization_id, &mut violations);
    let id = rpc::parse_id("api_token_id", &body.api_token_id, &mut violations);
    violations.check()?;
    let revoked = api
        .inner
        .db
        .run(move |conn| api_tokens::revoke(conn, Owner::Organization(organization_id), id))
        .await?
        .ok_or_else(|| Status::not_found("no such API token"))?;
    tracing::info!(organization.id = %organization_id, api_token.id = %id, "API token revoked");
    Ok(Response::new(token_proto(&revoked)))
}

pub(super) async fn check_api_token(
    api: &AuthServiceApi,
    request: Request<pb::CheckApiTokenRequest>,
) -> Result<Response<pb::ApiTokenGrant>, Status> {
    Ok(Response::new(
        api_tokens::grant(&api.inner.db, request.into_inner().token_hash).await?,
    ))
}
