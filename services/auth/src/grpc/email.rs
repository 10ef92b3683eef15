//! Email flows with single-use tokens: verification and password reset.

use std::time::Duration;

use capsule::{
    client,
    proto::auth::v1 as pb,
    rpc::{self, FieldViolations},
};
use chrono::Utc;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    db::{self, Session, User},
    state::{AuthServiceApi, token_hash},
    validate,
};

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
    let expires = body
        .expire_time
        .map(|time| time.seconds)
        .and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0))
        .ok_or_else(|| Status::invalid_argument("expire_time is required"))?;
    let link = format!("{}/accept-invitation?token={}", api.inner.config.public_url, body.token);
    let text_link = link.clone();
    // The inviter's name and the mail, in one trip to the pool.
    let queued = api
        .inner
        .db
        .run(move |conn| {
            let Some((inviter, _)) = User::find(conn, inviter_id)? else {
                return Ok(None);
            };
            let subject = format!("{} invited you to {}", inviter.name, body.organization_name);
            let text = format!(
                "Hello,\n\n{} invited you to join the organisation {} on Capsule as {}.\n\
                 Sign in (or create an account with this address), then open this link before {}:\n{text_link}\n",
                inviter.name,
                body.organization_name,
                body.role,
                expires.format("%Y-%m-%d %H:%M UTC"),
            );
            db::push_email(conn, &body.email, &subject, &text).map(|id| Some((id, subject)))
        })
        .await?;
    let (mail_id, subject) = queued.ok_or_else(|| Status::not_found("no such inviter"))?;
    api.mail_queued(mail_id, None, &link, &subject);
    Ok(Response::new(pb::SendInvitationEmailResponse {}))
}

impl AuthServiceApi {
    /// Writes a single-use token and its email to the outbox, in one
    /// transaction.
    pub(crate) async fn send_token_email(
        &self,
        user: &User,
        purpose: &'static str,
        ttl: Duration,
    ) -> Result<(), Status> {
        let (token, hash) = capsule::auth::new_token("")?;
        let (subject, path) = match purpose {
            "verify_email" => ("Verify your email address", "verify-email"),
            _ => ("Reset your password", "reset-password"),
        };
        let link = format!("{}/{path}?token={token}", self.inner.config.public_url);
        let body = format!(
            "Hello {},\n\nOpen this link within {} minutes:\n{link}\n",
            user.name,
            ttl.as_secs() / 60
        );
        let (user_id, recipient) = (user.id, user.email.clone());
        let expires = Utc::now() + chrono::Duration::from_std(ttl).map_err(rpc::internal)?;
        let mail_id = self
            .inner
            .db
            .run(move |conn| {
                diesel::Connection::transaction(conn, |conn| {
                    db::insert_email_token(conn, &hash, user_id, purpose, expires)?;
                    db::push_email(conn, &recipient, subject, &body)
                })
            })
            .await?;
        self.mail_queued(mail_id, Some(user_id), &link, subject);
        Ok(())
    }

    /// Says that a mail was queued; in development (CAPSULE_DEV_MAILER=log)
    /// with its link, which is a secret everywhere else.
    pub(crate) fn mail_queued(&self, mail_id: Uuid, user_id: Option<Uuid>, link: &str, subject: &str) {
        let user_id = user_id.map(tracing::field::display);
        if self.inner.config.log_mail {
            tracing::info!(mail.id = %mail_id, user.id = user_id, %link, "development mailer: {subject}");
        } else {
            tracing::debug!(mail.id = %mail_id, user.id = user_id, "queued mail: {subject}");
        }
    }
}
