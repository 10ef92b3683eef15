//! Accounts: registering, signing in, the password, and what another service may ask about a user.

use std::time::Duration;

use capsule::{
    audit::{Actor, Event},
    client,
    proto::auth::v1 as pb,
    rpc::{self, FieldViolations},
};
use tonic::{Request, Response, Status};

use crate::{
    db::{NewUser, Profile, Session, User},
    password, validate,
};

use crate::{
    convert::user_proto,
    state::{AuthServiceApi, WRONG_CREDENTIALS},
};

pub(super) async fn register(
    api: &AuthServiceApi,
    request: Request<pb::RegisterRequest>,
) -> Result<Response<pb::RegisterResponse>, Status> {
    let (user_agent, address) = (AuthServiceApi::user_agent(&request), client::address_of(&request));
    let mut actor = Actor::of(&request);
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let email = validate::email(&body.email, "email", &mut violations);
    let name = validate::name(&body.name, "name", &mut violations);
    password::not_the_email(&body.password, &email, "password", &mut violations);
    violations.check()?;

    let hash = api.inner.hasher.hash(body.password).await?;
    let created = api
        .inner
        .db
        .run(move |conn| {
            User::create(
                conn,
                &NewUser {
                    email: &email,
                    password_hash: &hash,
                    name: &name,
                    role: "user",
                },
            )
        })
        .await;
    let user = match created {
        Ok(user) => user,
        Err(err) if err.is_unique_violation(None) => {
            return Err(Status::already_exists(
                "an account with this email already exists; sign in instead",
            ));
        }
        Err(err) => return Err(err.into()),
    };
    tracing::info!(user.id = %user.id, "registered");
    actor.user_id = Some(user.id);
    api.audit(Event::new(&actor, "user.register", format!("users/{}", user.id)))
        .await;
    api.send_token_email(&user, "verify_email", Duration::from_secs(24 * 3600))
        .await?;
    let tokens = api.start_session(&user, user_agent, address).await?;
    Ok(Response::new(pb::RegisterResponse {
        user: Some(user_proto(&user, Some(&Profile::default()))),
        tokens: Some(tokens),
    }))
}

pub(super) async fn login(
    api: &AuthServiceApi,
    request: Request<pb::LoginRequest>,
) -> Result<Response<pb::LoginResponse>, Status> {
    let (user_agent, address) = (AuthServiceApi::user_agent(&request), client::address_of(&request));
    let mut actor = Actor::of(&request);
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    if body.email.trim().is_empty() {
        violations.add("email", "is required");
    } else if body.email.chars().count() > validate::MAX_EMAIL_CHARS {
        violations.add(
            "email",
            format!("must be at most {} characters", validate::MAX_EMAIL_CHARS),
        );
    }
    if body.password.is_empty() {
        violations.add("password", "is required");
    } else if body.password.chars().count() > password::MAX_CHARS {
        violations.add(
            "password",
            format!("must be at most {} characters", password::MAX_CHARS),
        );
    }
    violations.check()?;
    let email = body.email.trim().to_lowercase();
    let throttles = api.password_throttles(&email, &address)?;
    api.take_attempt(&throttles).await?;
    let lookup_email = email.clone();
    let user = api
        .inner
        .db
        .run(move |conn| User::find_by_email(conn, &lookup_email))
        .await?;
    let matches = api
        .inner
        .hasher
        .verify(body.password, user.as_ref().map(|user| user.password_hash.clone()))
        .await?;
    // Recorded against the account tried: its owner sees them among their
    // own events (who tried is unknown; from where is kept).
    actor.user_id = user.as_ref().map(|user| user.id);
    let Some(user) = user.filter(|_| matches) else {
        if let Some(account) = actor.user_id {
            // Written in the background: an answer no slower for a known
            // email than for an unknown one tells nobody which is which.
            let event = Event::new(&actor, "user.sign_in.fail", format!("users/{account}"));
            api.audit_later(event.detail("reason", "wrong password"));
        }
        return Err(Status::unauthenticated(WRONG_CREDENTIALS));
    };
    if !user.is_active {
        let event = Event::new(&actor, "user.sign_in.fail", format!("users/{}", user.id));
        api.audit_later(event.detail("reason", "deactivated"));
        return Err(Status::permission_denied(
            "this account is deactivated; contact an administrator",
        ));
    }
    api.attempt_succeeded(throttles).await?;
    let tokens = api.start_session(&user, user_agent, address).await?;
    tracing::info!(user.id = %user.id, "signed in");
    api.audit(Event::new(&actor, "user.sign_in", format!("users/{}", user.id)))
        .await;
    let user_id = user.id;
    let profile = api
        .inner
        .db
        .run(move |conn| User::find(conn, user_id))
        .await?
        .and_then(|(_, p)| p);
    Ok(Response::new(pb::LoginResponse {
        user: Some(user_proto(&user, profile.as_ref())),
        tokens: Some(tokens),
    }))
}

pub(super) async fn change_password(
    api: &AuthServiceApi,
    request: Request<pb::ChangePasswordRequest>,
) -> Result<Response<pb::ChangePasswordResponse>, Status> {
    let (_, session, user) = api.live_caller(&request).await?;
    let address = client::address_of(&request);
    let actor = Actor::of(&request);
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    password::not_the_email(&body.new_password, &user.email, "new_password", &mut violations);
    violations.check()?;
    // A stolen session must not become a way to guess the password.
    let throttles = api.password_throttles(&user.email, &address)?;
    api.take_attempt(&throttles).await?;
    if !api
        .inner
        .hasher
        .verify(body.current_password, Some(user.password_hash.clone()))
        .await?
    {
        // The proof of who is asking failed, not the request's form: the
        // caller is refused this change (and the session stays signed in).
        return Err(Status::permission_denied(
            "current_password is not your current password",
        ));
    }
    api.attempt_succeeded(throttles).await?;
    let hash = api.inner.hasher.hash(body.new_password).await?;
    let revoked = api
        .inner
        .db
        .run(move |conn| {
            diesel::Connection::transaction(conn, |conn| {
                User::set_password_hash(conn, user.id, &hash)?;
                Session::revoke_all(conn, user.id, Some(session.id), "password changed")
            })
        })
        .await?;
    tracing::info!(user.id = %user.id, revoked_sessions = revoked, "password changed");
    api.audit(
        Event::new(&actor, "user.password.change", format!("users/{}", user.id)).detail("revoked_sessions", revoked),
    )
    .await;
    Ok(Response::new(pb::ChangePasswordResponse {
        revoked_sessions: i32::try_from(revoked).unwrap_or(i32::MAX),
    }))
}

pub(super) async fn get_user_status(
    api: &AuthServiceApi,
    request: Request<pb::GetUserStatusRequest>,
) -> Result<Response<pb::UserStatus>, Status> {
    let mut violations = FieldViolations::new();
    let user_id = rpc::parse_id("user_id", &request.get_ref().user_id, &mut violations);
    violations.check()?;
    let found = api.inner.db.run(move |conn| User::find(conn, user_id)).await?;
    Ok(Response::new(pb::UserStatus {
        exists: found.is_some(),
        active: found.as_ref().is_some_and(|(user, _)| user.is_active),
        email: found.map(|(user, _)| user.email.to_lowercase()).unwrap_or_default(),
    }))
}
