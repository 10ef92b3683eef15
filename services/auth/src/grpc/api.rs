//! What the AuthService's concerns share: the service's state, conversions
//! to the contracts, live callers, sessions and their tokens, token emails,
//! and sign-in throttling.

use std::{sync::Arc, time::Duration};

use capsule::{
    auth::{AUDIENCE, Caller, Claims, ISSUER},
    db::Database,
    proto::auth::v1 as pb,
    rpc,
};
use chrono::Utc;
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

use crate::{
    config::AuthConfig,
    db::{self, Preferences, Profile, Session, User},
    keys::KeyRing,
    password,
};

/// The auth service's gRPC API.
#[derive(Clone)]
pub struct AuthServiceApi {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) db: Database,
    pub(super) keys: Arc<KeyRing>,
    pub(super) config: AuthConfig,
    pub(super) hasher: password::Hasher,
}

pub(super) const WRONG_CREDENTIALS: &str = "email or password is incorrect";
pub(super) const SESSION_ENDED: &str = "your session has ended; sign in again";

pub(super) use capsule::auth::token_hash;

impl AuthServiceApi {
    /// Appends an audit event of this service's, after its change.
    pub(super) async fn audit(&self, event: capsule::audit::Event) {
        capsule::audit::append(&self.inner.db, event).await;
    }

    /// Appends an audit event without making the caller wait for it.
    pub(super) fn audit_later(&self, event: capsule::audit::Event) {
        let db = self.inner.db.clone();
        tokio::spawn(async move { capsule::audit::append(&db, event).await });
    }
}

pub(super) fn internal(err: impl std::fmt::Display) -> Status {
    tracing::error!(error = %err, "auth internal error");
    Status::internal("internal error")
}

pub(super) fn role_name(role: i32) -> Option<&'static str> {
    match pb::Role::try_from(role).ok()? {
        pb::Role::User => Some("user"),
        pb::Role::Admin => Some("admin"),
        pb::Role::Unspecified => None,
    }
}

pub(super) fn role_proto(role: &str) -> i32 {
    match role {
        "admin" => pb::Role::Admin as i32,
        _ => pb::Role::User as i32,
    }
}

pub(super) fn user_proto(user: &User, profile: Option<&Profile>) -> pb::User {
    let profile = profile.cloned().unwrap_or_default();
    pb::User {
        id: user.id.to_string(),
        email: user.email.clone(),
        email_verified: user.email_verified,
        role: role_proto(&user.role),
        active: user.is_active,
        profile: Some(pb::Profile {
            name: user.name.clone(),
            avatar_url: profile.avatar_url,
            bio: profile.bio,
        }),
        create_time: Some(rpc::timestamp(user.created_at)),
        update_time: Some(rpc::timestamp(user.updated_at)),
    }
}

pub(super) fn preferences_proto(preferences: Preferences) -> pb::Preferences {
    pb::Preferences {
        theme: preferences.theme,
        language: preferences.language,
        timezone: preferences.timezone,
        update_time: Some(rpc::timestamp(preferences.updated_at)),
    }
}

impl AuthServiceApi {
    pub fn new(db: Database, keys: Arc<KeyRing>, config: AuthConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                keys,
                hasher: password::Hasher::new(config.hash_concurrency, config.hash_max_wait),
                config,
            }),
        }
    }

    pub(super) fn user_agent<T>(request: &Request<T>) -> String {
        request
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .take(512)
            .collect()
    }

    /// The caller, checked against the database: the session must be live
    /// and the user active (revocation takes effect at once here).
    pub(super) async fn live_caller<T>(&self, request: &Request<T>) -> Result<(Caller, Session, User), Status> {
        let caller = Caller::of(request)?.clone();
        let session_id = caller.session_id;
        let (session, user) = self
            .inner
            .db
            .run(move |conn| Session::live(conn, session_id))
            .await?
            .ok_or_else(|| Status::unauthenticated(SESSION_ENDED))?;
        if session.user_id != caller.user_id {
            return Err(Status::unauthenticated(SESSION_ENDED));
        }
        Ok((caller, session, user))
    }

    pub(super) fn access_token(
        &self,
        user_id: Uuid,
        role: &str,
        session_id: Uuid,
    ) -> Result<(String, prost_types::Timestamp), Status> {
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(self.inner.config.access_token_ttl).map_err(internal)?;
        let claims = Claims {
            sub: user_id.to_string(),
            role: role.to_owned(),
            sid: session_id.to_string(),
            iat: now.timestamp(),
            exp: (now + ttl).timestamp(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
        };
        let token = self.inner.keys.sign(&claims).map_err(internal)?;
        Ok((token, rpc::timestamp(now + ttl)))
    }

    /// A new session with its first token pair.
    pub(super) async fn start_session(
        &self,
        user: &User,
        user_agent: String,
        address: String,
    ) -> Result<pb::TokenPair, Status> {
        let (refresh, hash) = capsule::auth::new_token("")?;
        let expires = Utc::now() + chrono::Duration::from_std(self.inner.config.refresh_token_ttl).map_err(internal)?;
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

    /// Writes a single-use token and its email to the outbox, in one
    /// transaction.
    pub(super) async fn send_token_email(
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
        let expires = Utc::now() + chrono::Duration::from_std(ttl).map_err(internal)?;
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
    pub(super) fn mail_queued(&self, mail_id: Uuid, user_id: Option<Uuid>, link: &str, subject: &str) {
        let user_id = user_id.map(tracing::field::display);
        if self.inner.config.log_mail {
            tracing::info!(mail.id = %mail_id, user.id = user_id, %link, "development mailer: {subject}");
        } else {
            tracing::debug!(mail.id = %mail_id, user.id = user_id, "queued mail: {subject}");
        }
    }

    /// The counters an attempt at `email`'s password from `address` counts
    /// against: that account from that address (a few failures lock the
    /// pair), that address for any account (a flood), and that account
    /// from anywhere (a distributed guesser, with a high ceiling) — so a
    /// flood from one address does not lock its victim out elsewhere.
    pub(super) fn password_throttles(&self, email: &str, address: &str) -> Result<Vec<db::Throttle>, Status> {
        let config = &self.inner.config;
        let window = chrono::Duration::from_std(config.failure_window).map_err(internal)?;
        let lockout = chrono::Duration::from_std(config.lockout).map_err(internal)?;
        let rule = |max_failures, window| db::ThrottleRule {
            max_failures,
            window,
            lockout,
        };
        Ok(vec![
            db::Throttle {
                scope: format!("pair:{email}|{address}"),
                rule: rule(config.max_failures_per_pair, window),
                shared: false,
            },
            self.address_throttle(address)?,
            db::Throttle {
                scope: format!("account:{email}"),
                rule: rule(config.max_failures_per_account, chrono::Duration::days(1)),
                shared: false,
            },
        ])
    }

    /// The counter of failed attempts from `address`, for any account or
    /// token.
    pub(super) fn address_throttle(&self, address: &str) -> Result<db::Throttle, Status> {
        let config = &self.inner.config;
        Ok(db::Throttle {
            scope: format!("address:{address}"),
            rule: db::ThrottleRule {
                max_failures: config.max_failures_per_address,
                window: chrono::Duration::from_std(config.failure_window).map_err(internal)?,
                lockout: chrono::Duration::from_std(config.lockout).map_err(internal)?,
            },
            shared: true,
        })
    }

    /// Counts an attempt as a failure in advance (see
    /// [`db::take_attempt`]); RESOURCE_EXHAUSTED with the wait while one of
    /// its counters is locked.
    pub(super) async fn take_attempt(&self, throttles: &[db::Throttle]) -> Result<(), Status> {
        let throttles = throttles.to_vec();
        match self
            .inner
            .db
            .run(move |conn| db::take_attempt(conn, &throttles))
            .await?
        {
            Ok(()) => Ok(()),
            Err(until) => Err(Self::throttled(until)),
        }
    }

    /// The attempt counted by [`Self::take_attempt`] succeeded.
    pub(super) async fn attempt_succeeded(&self, throttles: Vec<db::Throttle>) -> Result<(), Status> {
        Ok(self
            .inner
            .db
            .run(move |conn| db::attempt_succeeded(conn, &throttles))
            .await?)
    }

    pub(super) fn throttled(until: chrono::DateTime<Utc>) -> Status {
        let wait = (until - Utc::now()).num_seconds().max(1);
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(Duration::from_secs(u64::try_from(wait).unwrap_or(1))));
        Status::with_error_details(
            Code::ResourceExhausted,
            format!("too many failed attempts; retry in {wait} s"),
            details,
        )
    }

    pub(super) async fn load_user(&self, user_id: Uuid) -> Result<pb::User, Status> {
        let (user, profile) = self
            .inner
            .db
            .run(move |conn| User::find(conn, user_id))
            .await?
            .ok_or_else(|| Status::not_found("no such user"))?;
        Ok(user_proto(&user, profile.as_ref()))
    }
}
