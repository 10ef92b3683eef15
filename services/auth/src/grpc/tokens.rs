//! Personal API tokens: created by their user, shown once, listed,
//! revoked; checked by every service (through `CheckApiToken`) on every
//! call they make.

use capsule::{
    audit::{Actor, Event},
    auth::{API_TOKEN_PREFIX, Caller, new_token},
    proto::auth::v1 as pb,
    rpc::{self, FieldViolations},
};
use chrono::Utc;
use tonic::{Request, Response, Status};

use super::api::AuthServiceApi;
use crate::db::api_tokens::{self, ApiTokenRow, NewApiToken};

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
    }
}

/// The caller, who must be a user signed in with a password: a token
/// cannot make, list or revoke tokens (the layer refuses API tokens here
/// already, as these methods declare no permission).
fn account_holder<T>(request: &Request<T>) -> Result<Caller, Status> {
    let caller = Caller::of(request)?.clone();
    if caller.scope.is_some() {
        return Err(Status::permission_denied("an API token cannot manage API tokens"));
    }
    Ok(caller)
}

pub(super) async fn create_api_token(
    api: &AuthServiceApi,
    request: Request<pb::CreateApiTokenRequest>,
) -> Result<Response<pb::CreateApiTokenResponse>, Status> {
    let caller = account_holder(&request)?;
    let actor = Actor::of(&request);
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let name = rpc::name(&body.name, "name", 100, &mut violations);
    let project_id =
        (!body.project_id.is_empty()).then(|| rpc::parse_id("project_id", &body.project_id, &mut violations));
    violations.check()?;
    let (token, hash) = new_token(API_TOKEN_PREFIX)?;
    let (scopes, user_id) = (body.scopes, caller.user_id);
    // The rules in the protos bound the days (1 to 366).
    let expires_at = Utc::now() + chrono::Duration::days(i64::from(body.expire_days));
    let created = api
        .inner
        .db
        .run(move |conn| {
            api_tokens::create(
                conn,
                &NewApiToken {
                    user_id,
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
                "you hold {} live API tokens already; revoke one first",
                api_tokens::MAX_PER_USER
            ))
        })?;
    tracing::info!(user.id = %user_id, api_token.id = %created.id, scopes = ?created.scopes, "API token created");
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

pub(super) async fn list_api_tokens(
    api: &AuthServiceApi,
    request: Request<pb::ListApiTokensRequest>,
) -> Result<Response<pb::ListApiTokensResponse>, Status> {
    let user_id = account_holder(&request)?.user_id;
    let rows = api.inner.db.run(move |conn| api_tokens::list(conn, user_id)).await?;
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
        .run(move |conn| api_tokens::revoke(conn, user_id, id))
        .await?
        .ok_or_else(|| Status::not_found("no such API token"))?;
    tracing::info!(user.id = %user_id, api_token.id = %id, "API token revoked");
    api.audit(Event::new(&actor, "api_token.revoke", format!("apiTokens/{id}")).detail("name", &revoked.name))
        .await;
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
