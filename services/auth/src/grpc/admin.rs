//! Administration: listing users, roles, deactivation.

use capsule::{
    audit::{Actor, Event},
    proto::auth::v1 as pb,
    rpc::{self, FieldViolations, PageToken},
};
use tonic::{Request, Response, Status};

use crate::db::{Session, User, UserFilter};

use crate::{
    convert::{role_name, user_proto},
    state::AuthServiceApi,
};

pub(super) async fn list_users(
    api: &AuthServiceApi,
    request: Request<pb::ListUsersRequest>,
) -> Result<Response<pb::ListUsersResponse>, Status> {
    api.live_caller(&request).await?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let limit = rpc::page_size(body.page_size, 20, 100, &mut violations);
    let after = PageToken::decode(&body.page_token, &mut violations);
    let role = match pb::Role::try_from(body.role) {
        Ok(pb::Role::Unspecified) => None,
        Ok(_) => role_name(body.role).map(str::to_owned),
        Err(_) => {
            violations.add("role", "must be ROLE_USER, ROLE_ADMIN or unspecified");
            None
        }
    };
    violations.check()?;
    let filter = UserFilter {
        role,
        active: body.active,
        after: after.map(|t| (t.time, t.id)),
        limit: limit + 1,
    };
    let users = api.inner.db.run(move |conn| User::list(conn, &filter)).await?;
    let next_page_token = rpc::next_page_token(&users, limit, |(user, _)| (user.created_at, user.id));
    Ok(Response::new(pb::ListUsersResponse {
        users: users
            .iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(user, profile)| user_proto(user, profile.as_ref()))
            .collect(),
        next_page_token,
    }))
}

pub(super) async fn get_user(
    api: &AuthServiceApi,
    request: Request<pb::GetUserRequest>,
) -> Result<Response<pb::User>, Status> {
    api.live_caller(&request).await?;
    let mut violations = FieldViolations::new();
    let user_id = rpc::parse_id("user_id", &request.get_ref().user_id, &mut violations);
    violations.check()?;
    Ok(Response::new(api.load_user(user_id).await?))
}

pub(super) async fn set_role(
    api: &AuthServiceApi,
    request: Request<pb::SetRoleRequest>,
) -> Result<Response<pb::User>, Status> {
    let (caller, _, _) = api.live_caller(&request).await?;
    let actor = Actor::of(&request);
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let user_id = rpc::parse_id("user_id", &body.user_id, &mut violations);
    let role = role_name(body.role);
    if role.is_none() {
        violations.add("role", "must be ROLE_USER or ROLE_ADMIN");
    }
    violations.check()?;
    let role = role.unwrap_or("user");
    if user_id == caller.user_id && role != "admin" {
        return Err(Status::failed_precondition(
            "you cannot remove your own admin role; ask another admin",
        ));
    }
    let changed = api
        .inner
        .db
        .run(move |conn| User::change_role(conn, user_id, role))
        .await?;
    if changed == 0 {
        return Err(Status::not_found("no such user"));
    }
    api.audit(Event::new(&actor, "user.role.set", format!("users/{user_id}")).detail("role", role))
        .await;
    Ok(Response::new(api.load_user(user_id).await?))
}

pub(super) async fn deactivate_user(
    api: &AuthServiceApi,
    request: Request<pb::DeactivateUserRequest>,
) -> Result<Response<pb::User>, Status> {
    let (caller, _, _) = api.live_caller(&request).await?;
    let actor = Actor::of(&request);
    let mut violations = FieldViolations::new();
    let user_id = rpc::parse_id("user_id", &request.get_ref().user_id, &mut violations);
    violations.check()?;
    if user_id == caller.user_id {
        return Err(Status::failed_precondition(
            "you cannot deactivate yourself; ask another admin",
        ));
    }
    let changed = api
        .inner
        .db
        .run(move |conn| {
            diesel::Connection::transaction(conn, |conn| {
                let changed = User::set_active(conn, user_id, false)?;
                Session::revoke_all(conn, user_id, None, "deactivated")?;
                Ok(changed)
            })
        })
        .await?;
    if changed == 0 {
        return Err(Status::not_found("no such user"));
    }
    tracing::info!(user.id = %user_id, by.user.id = %caller.user_id, "user deactivated");
    api.audit(Event::new(&actor, "user.deactivate", format!("users/{user_id}")))
        .await;
    Ok(Response::new(api.load_user(user_id).await?))
}

pub(super) async fn reactivate_user(
    api: &AuthServiceApi,
    request: Request<pb::ReactivateUserRequest>,
) -> Result<Response<pb::User>, Status> {
    api.live_caller(&request).await?;
    let actor = Actor::of(&request);
    let mut violations = FieldViolations::new();
    let user_id = rpc::parse_id("user_id", &request.get_ref().user_id, &mut violations);
    violations.check()?;
    let changed = api
        .inner
        .db
        .run(move |conn| User::set_active(conn, user_id, true))
        .await?;
    if changed == 0 {
        return Err(Status::not_found("no such user"));
    }
    api.audit(Event::new(&actor, "user.reactivate", format!("users/{user_id}")))
        .await;
    Ok(Response::new(api.load_user(user_id).await?))
}
