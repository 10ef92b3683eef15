//! Email flows with single-use tokens: verification and password reset.

use std::time::Duration;

use capsule::{client, proto::auth::v1 as pb, rpc::FieldViolations};
use tonic::{Request, Response, Status};

use crate::{
    db::{self, Session, User},
    validate,
};

use super::api::{AuthServiceApi, token_hash};

pub(super) async fn send_verification_email(
    api: &AuthServiceApi,
    request: Request<pb::SendVerificationEmailRequest>,
) -> Result<Response<pb::SendVerificationEmailResponse>, Status> {
    let (_, _, user) = api.live_caller(&request).await?;
    if user.email_verified {
        return Err(Status::failed_precondition("your email address is already verified"));
    }
    api.send_token_email(&user, "verify_email", Duration::from_secs(24 * 3600))
        .await?;
    Ok(Response::new(pb::SendVerificationEmailResponse {}))
}

pub(super) async fn verify_email(
    api: &AuthServiceApi,
    request: Request<pb::VerifyEmailRequest>,
) -> Result<Response<pb::VerifyEmailResponse>, Status> {
    let address = client::address_of(&request);
    let token = request.into_inner().token;
    let throttles = vec![api.address_throttle(&address)?];
    api.take_attempt(&throttles).await?;
    let hash = token_hash(&token);
    let verified = api
        .inner
        .db
        .run(move |conn| {
            diesel::Connection::transaction(conn, |conn| {
                let user_id = db::consume_email_token(conn, &hash, "verify_email")?;
                if let Some(user_id) = user_id {
                    User::mark_email_verified(conn, user_id)?;
                }
                Ok(user_id)
            })
        })
        .await?;
    let user_id = verified.ok_or_else(unknown_token)?;
    api.attempt_succeeded(throttles).await?;
    Ok(Response::new(pb::VerifyEmailResponse {
        user: Some(api.load_user(user_id).await?),
    }))
}

pub(super) async fn request_password_reset(
    api: &AuthServiceApi,
    request: Request<pb::RequestPasswordResetRequest>,
) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
    let mut violations = FieldViolations::new();
    let email = validate::email(&request.get_ref().email, "email", &mut violations);
    violations.check()?;
    let user = api.inner.db.run(move |conn| User::find_by_email(conn, &email)).await?;
    // The answer is the same whether or not the account exists.
    if let Some(user) = user.filter(|user| user.is_active) {
        api.send_token_email(&user, "reset_password", Duration::from_secs(3600))
            .await?;
    }
    Ok(Response::new(pb::RequestPasswordResetResponse {}))
}

pub(super) async fn reset_password(
    api: &AuthServiceApi,
    request: Request<pb::ResetPasswordRequest>,
) -> Result<Response<pb::ResetPasswordResponse>, Status> {
    let address = client::address_of(&request);
    let body = request.into_inner();
    let throttles = vec![api.address_throttle(&address)?];
    api.take_attempt(&throttles).await?;
    let hash = api.inner.hasher.hash(body.new_password).await?;
    let token_hash = token_hash(&body.token);
    let reset = api
        .inner
        .db
        .run(move |conn| {
            diesel::Connection::transaction(conn, |conn| {
                let Some(user_id) = db::consume_email_token(conn, &token_hash, "reset_password")? else {
                    return Ok(None);
                };
                User::set_password_hash(conn, user_id, &hash)?;
                Session::revoke_all(conn, user_id, None, "password reset")?;
                Ok(Some(user_id))
            })
        })
        .await?;
    let user_id = reset.ok_or_else(unknown_token)?;
    api.attempt_succeeded(throttles).await?;
    tracing::info!(user.id = %user_id, "password reset");
    Ok(Response::new(pb::ResetPasswordResponse {}))
}

/// A well-formed token that names no pending email: NOT_FOUND, the same
/// answer whether it never existed, was used or has expired.
fn unknown_token() -> Status {
    Status::not_found("this token is not valid, was already used or has expired; ask for a new email")
}

/// For the project service: the email that invites someone to an
/// organisation, queued in the outbox. The token is the project service's
/// (it keeps only its hash); this service writes the words and the link.
pub(super) async fn send_invitation_email(
    api: &AuthServiceApi,
    request: Request<pb::SendInvitationEmailRequest>,
) -> Result<Response<pb::SendInvitationEmailResponse>, Status> {
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let inviter_id = capsule::rpc::parse_id("inviter_id", &body.inviter_id, &mut violations);
    violations.check()?;
    let inviter = api
        .inner
        .db
        .run(move |conn| User::find(conn, inviter_id))
        .await?
        .map(|(user, _)| user.name)
        .ok_or_else(|| Status::not_found("no such inviter"))?;
    let expires = body
        .expire_time
        .map(|time| time.seconds)
        .and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0))
        .ok_or_else(|| Status::invalid_argument("expire_time is required"))?;
    let link = format!("{}/accept-invitation?token={}", api.inner.config.public_url, body.token);
    let subject = format!("{inviter} invited you to {}", body.organization_name);
    let text = format!(
        "Hello,\n\n{inviter} invited you to join the organisation {} on Capsule as {}.\n\
         Sign in (or create an account with this address), then open this link before {}:\n{link}\n",
        body.organization_name,
        body.role,
        expires.format("%Y-%m-%d %H:%M UTC"),
    );
    let recipient = body.email;
    let mail_id = api
        .inner
        .db
        .run({
            let subject = subject.clone();
            move |conn| db::push_email(conn, &recipient, &subject, &text)
        })
        .await?;
    if api.inner.config.log_mail {
        // Development only (CAPSULE_DEV_MAILER=log): the link is a secret.
        tracing::info!(mail.id = %mail_id, %link, "development mailer: {subject}");
    } else {
        tracing::debug!(mail.id = %mail_id, "queued mail: {subject}");
    }
    Ok(Response::new(pb::SendInvitationEmailResponse {}))
}
