//! Sessions and their tokens: refresh, sign-out, listing, the key set and a session's standing.

use capsule::{
    auth::{AUDIENCE, Claims, ISSUER},
    proto::auth::v1 as pb,
    rpc::{self, FieldViolations, PageToken},
};
use chrono::Utc;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    db::{self, Session, Spent, User},
    state::{AuthServiceApi, SESSION_ENDED, token_hash},
};

pub(super) async fn refresh(
    api: &AuthServiceApi,
    request: Request<pb::RefreshRequest>,
) -> Result<Response<pb::RefreshResponse>, Status> {
    let presented = request.into_inner().refresh_token;
    if presented.is_empty() {
        return Err(rpc::invalid_field("refresh_token", "is required"));
    }
    let hash = token_hash(&presented);
    let (next, next_hash) = capsule::auth::new_token("")?;
    let expires = Utc::now() + chrono::Duration::from_std(api.inner.config.refresh_token_ttl).map_err(rpc::internal)?;
    let outcome = api
        .inner
        .db
        .run(move |conn| {
            diesel::Connection::transaction(conn, |conn| match db::spend_refresh_token(conn, &hash)? {
                Spent::Fresh { session_id } => match Session::live(conn, session_id)? {
                    Some((session, user)) => {
                        db::insert_refresh_token(conn, &next_hash, session.id, expires)?;
                        Ok(Ok((session, user)))
                    }
                    None => Ok(Err(SESSION_ENDED)),
                },
                Spent::Reused => Ok(Err(
                    "this refresh token was already used, so its session has been ended; sign in again",
                )),
                Spent::Invalid => Ok(Err("the refresh token is not valid or has expired; sign in again")),
            })
        })
        .await?;
    let (session, user) = outcome.map_err(Status::unauthenticated)?;
    let (access, access_expires) = api.access_token(user.id, &user.role, session.id)?;
    Ok(Response::new(pb::RefreshResponse {
        tokens: Some(pb::TokenPair {
            access_token: access,
            access_token_expire_time: Some(access_expires),
            refresh_token: next,
            refresh_token_expire_time: Some(rpc::timestamp(expires)),
            token_type: "Bearer".to_owned(),
        }),
    }))
}

pub(super) async fn logout(
    api: &AuthServiceApi,
    request: Request<pb::LogoutRequest>,
) -> Result<Response<pb::LogoutResponse>, Status> {
    let (_, session, _) = api.live_caller(&request).await?;
    api.inner
        .db
        .run(move |conn| Session::revoke(conn, session.id, "logout"))
        .await?;
    Ok(Response::new(pb::LogoutResponse {}))
}

pub(super) async fn logout_all(
    api: &AuthServiceApi,
    request: Request<pb::LogoutAllRequest>,
) -> Result<Response<pb::LogoutAllResponse>, Status> {
    let (_, _, user) = api.live_caller(&request).await?;
    let revoked = api
        .inner
        .db
        .run(move |conn| Session::revoke_all(conn, user.id, None, "logout everywhere"))
        .await?;
    Ok(Response::new(pb::LogoutAllResponse {
        revoked_sessions: i32::try_from(revoked).unwrap_or(i32::MAX),
    }))
}

pub(super) async fn list_sessions(
    api: &AuthServiceApi,
    request: Request<pb::ListSessionsRequest>,
) -> Result<Response<pb::ListSessionsResponse>, Status> {
    let (caller, _, user) = api.live_caller(&request).await?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let limit = rpc::page_size(body.page_size, 20, 100, &mut violations);
    let after = PageToken::decode(&body.page_token, &mut violations);
    violations.check()?;
    let sessions = api
        .inner
        .db
        .run(move |conn| Session::list_live(conn, user.id, after.map(|t| (t.time, t.id)), limit + 1))
        .await?;
    let next_page_token = rpc::next_page_token(&sessions, limit, |s| (s.created_at, s.id));
    Ok(Response::new(pb::ListSessionsResponse {
        sessions: sessions
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|session| pb::Session {
                current: session.id == caller.session_id,
                id: session.id.to_string(),
                user_agent: session.user_agent,
                client_address: session.client_address,
                create_time: Some(rpc::timestamp(session.created_at)),
                last_use_time: Some(rpc::timestamp(session.last_used_at)),
                expire_time: Some(rpc::timestamp(session.expires_at)),
            })
            .collect(),
        next_page_token,
    }))
}

pub(super) async fn get_jwks(
    api: &AuthServiceApi,
    _request: Request<pb::GetJwksRequest>,
) -> Result<Response<pb::Jwks>, Status> {
    Ok(Response::new(pb::Jwks {
        keys: api.inner.keys.jwks(),
    }))
}

pub(super) async fn check_session(
    api: &AuthServiceApi,
    request: Request<pb::CheckSessionRequest>,
) -> Result<Response<pb::SessionStanding>, Status> {
    let mut violations = FieldViolations::new();
    let session_id = rpc::parse_id("session_id", &request.get_ref().session_id, &mut violations);
    violations.check()?;
    let standing = db::standing(&api.inner.db, session_id).await?;
    Ok(Response::new(pb::SessionStanding {
        live: standing.live,
        role: match standing.role {
            Some(capsule::auth::Role::Admin) => pb::Role::Admin as i32,
            Some(_) => pb::Role::User as i32,
            None => pb::Role::Unspecified as i32,
        },
    }))
}

impl AuthServiceApi {
    pub(crate) fn access_token(
        &self,
        user_id: Uuid,
        role: &str,
        session_id: Uuid,
    ) -> Result<(String, prost_types::Timestamp), Status> {
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(self.inner.config.access_token_ttl).map_err(rpc::internal)?;
        let claims = Claims {
            sub: user_id.to_string(),
            role: role.to_owned(),
            sid: session_id.to_string(),
            iat: now.timestamp(),
            exp: (now + ttl).timestamp(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
        };
        let token = self.inner.keys.sign(&claims).map_err(rpc::internal)?;
        Ok((token, rpc::timestamp(now + ttl)))
    }

    /// A new session with its first token pair.
    pub(crate) async fn start_session(
        &self,
        user: &User,
        user_agent: String,
        address: String,
    ) -> Result<pb::TokenPair, Status> {
        let (refresh, hash) = capsule::auth::new_token("")?;
        let expires =
            Utc::now() + chrono::Duration::from_std(self.inner.config.refresh_token_ttl).map_err(rpc::internal)?;
        let user_id = user.id;
        let session = self
            .inner
            .db
            .run(move |conn| {
                diesel::Connection::transaction(conn, |conn| {
                    let session = Session::create(conn, user_id, &user_agent, &address, expires)?;
                    db::insert_refresh_token(conn, &hash, session.id, expires)?;
                    Ok(session)
                })
            })
            .await?;
        let (access, access_expires) = self.access_token(user.id, &user.role, session.id)?;
        Ok(pb::TokenPair {
            access_token: access,
            access_token_expire_time: Some(access_expires),
            refresh_token: refresh,
            refresh_token_expire_time: Some(rpc::timestamp(expires)),
            token_type: "Bearer".to_owned(),
        })
    }
}
