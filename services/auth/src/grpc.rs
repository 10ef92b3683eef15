//! The `capsule.auth.v1.AuthService` implementation: parse, authorize, call
//! the domain, convert.

use std::{sync::Arc, time::Duration};

use capsule::{
    auth::{AUDIENCE, Caller, Claims, ISSUER},
    client,
    db::Database,
    proto::auth::v1::{self as pb, auth_service_server::AuthService},
    rpc::{self, FieldViolations, PageToken},
};
use chrono::Utc;
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

use crate::{
    config::AuthConfig,
    db::{self, NewUser, Preferences, PreferencesChanges, Profile, ProfileChanges, Session, Spent, User, UserFilter},
    keys::KeyRing,
    password, validate,
};

/// The auth service's gRPC API.
#[derive(Clone)]
pub struct AuthServiceApi {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    keys: Arc<KeyRing>,
    config: AuthConfig,
    hasher: password::Hasher,
}

const WRONG_CREDENTIALS: &str = "email or password is incorrect";
const SESSION_ENDED: &str = "your session has ended; sign in again";

fn random_token() -> Result<String, Status> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| Status::internal("internal error"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Tokens are stored only as SHA-256 hashes.
fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn internal(err: impl std::fmt::Display) -> Status {
    tracing::error!(error = %err, "auth internal error");
    Status::internal("internal error")
}

fn role_name(role: i32) -> Option<&'static str> {
    match pb::Role::try_from(role).ok()? {
        pb::Role::User => Some("user"),
        pb::Role::Admin => Some("admin"),
        pb::Role::Unspecified => None,
    }
}

fn role_proto(role: &str) -> i32 {
    match role {
        "admin" => pb::Role::Admin as i32,
        _ => pb::Role::User as i32,
    }
}

fn user_proto(user: &User, profile: Option<&Profile>) -> pb::User {
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

fn preferences_proto(preferences: Preferences) -> pb::Preferences {
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

    fn user_agent<T>(request: &Request<T>) -> String {
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
    async fn live_caller<T>(&self, request: &Request<T>) -> Result<(Caller, Session, User), Status> {
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

    fn access_token(
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
    async fn start_session(&self, user: &User, user_agent: String, address: String) -> Result<pb::TokenPair, Status> {
        let refresh = random_token()?;
        let hash = token_hash(&refresh);
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
    async fn send_token_email(&self, user: &User, purpose: &'static str, ttl: Duration) -> Result<(), Status> {
        let token = random_token()?;
        let hash = token_hash(&token);
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
        if self.inner.config.log_mail {
            // Development only (CAPSULE_DEV_MAILER=log): the link is a secret.
            tracing::info!(mail.id = %mail_id, user.id = %user_id, %link, "development mailer: {subject}");
        } else {
            tracing::debug!(mail.id = %mail_id, user.id = %user_id, "queued mail: {subject}");
        }
        Ok(())
    }

    /// The counters an attempt at `email`'s password from `address` counts
    /// against: that account from that address (a few failures lock the
    /// pair), that address for any account (a flood), and that account
    /// from anywhere (a distributed guesser, with a high ceiling) — so a
    /// flood from one address does not lock its victim out elsewhere.
    fn password_throttles(&self, email: &str, address: &str) -> Result<Vec<db::Throttle>, Status> {
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
    fn address_throttle(&self, address: &str) -> Result<db::Throttle, Status> {
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
    async fn take_attempt(&self, throttles: &[db::Throttle]) -> Result<(), Status> {
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
    async fn attempt_succeeded(&self, throttles: Vec<db::Throttle>) -> Result<(), Status> {
        Ok(self
            .inner
            .db
            .run(move |conn| db::attempt_succeeded(conn, &throttles))
            .await?)
    }

    fn throttled(until: chrono::DateTime<Utc>) -> Status {
        let wait = (until - Utc::now()).num_seconds().max(1);
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(Duration::from_secs(u64::try_from(wait).unwrap_or(1))));
        Status::with_error_details(
            Code::ResourceExhausted,
            format!("too many failed attempts; retry in {wait} s"),
            details,
        )
    }

    async fn load_user(&self, user_id: Uuid) -> Result<pb::User, Status> {
        let (user, profile) = self
            .inner
            .db
            .run(move |conn| User::find(conn, user_id))
            .await?
            .ok_or_else(|| Status::not_found("no such user"))?;
        Ok(user_proto(&user, profile.as_ref()))
    }
}

#[tonic::async_trait]
impl AuthService for AuthServiceApi {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let (user_agent, address) = (Self::user_agent(&request), client::address_of(&request));
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let email = validate::email(&body.email, "email", &mut violations);
        let name = validate::name(&body.name, "name", &mut violations);
        password::check_policy(&body.password, &email, "password", &mut violations);
        violations.check()?;

        let hash = self.inner.hasher.hash(body.password).await?;
        let created = self
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
        self.send_token_email(&user, "verify_email", Duration::from_secs(24 * 3600))
            .await?;
        let tokens = self.start_session(&user, user_agent, address).await?;
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user_proto(&user, Some(&Profile::default()))),
            tokens: Some(tokens),
        }))
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let (user_agent, address) = (Self::user_agent(&request), client::address_of(&request));
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
        let throttles = self.password_throttles(&email, &address)?;
        self.take_attempt(&throttles).await?;
        let lookup_email = email.clone();
        let user = self
            .inner
            .db
            .run(move |conn| User::find_by_email(conn, &lookup_email))
            .await?;
        let matches = self
            .inner
            .hasher
            .verify(body.password, user.as_ref().map(|user| user.password_hash.clone()))
            .await?;
        let Some(user) = user.filter(|_| matches) else {
            return Err(Status::unauthenticated(WRONG_CREDENTIALS));
        };
        if !user.is_active {
            return Err(Status::permission_denied(
                "this account is deactivated; contact an administrator",
            ));
        }
        self.attempt_succeeded(throttles).await?;
        let tokens = self.start_session(&user, user_agent, address).await?;
        tracing::info!(user.id = %user.id, "signed in");
        let user_id = user.id;
        let profile = self
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

    async fn refresh(&self, request: Request<pb::RefreshRequest>) -> Result<Response<pb::RefreshResponse>, Status> {
        let presented = request.into_inner().refresh_token;
        if presented.is_empty() {
            return Err(rpc::invalid_field("refresh_token", "is required"));
        }
        let hash = token_hash(&presented);
        let next = random_token()?;
        let next_hash = token_hash(&next);
        let expires = Utc::now() + chrono::Duration::from_std(self.inner.config.refresh_token_ttl).map_err(internal)?;
        let outcome = self
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
        let (access, access_expires) = self.access_token(user.id, &user.role, session.id)?;
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

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let (_, session, _) = self.live_caller(&request).await?;
        self.inner
            .db
            .run(move |conn| Session::revoke(conn, session.id, "logout"))
            .await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn logout_all(
        &self,
        request: Request<pb::LogoutAllRequest>,
    ) -> Result<Response<pb::LogoutAllResponse>, Status> {
        let (_, _, user) = self.live_caller(&request).await?;
        let revoked = self
            .inner
            .db
            .run(move |conn| Session::revoke_all(conn, user.id, None, "logout everywhere"))
            .await?;
        Ok(Response::new(pb::LogoutAllResponse {
            revoked_sessions: i32::try_from(revoked).unwrap_or(i32::MAX),
        }))
    }

    async fn get_me(&self, request: Request<pb::GetMeRequest>) -> Result<Response<pb::User>, Status> {
        let (_, _, user) = self.live_caller(&request).await?;
        Ok(Response::new(self.load_user(user.id).await?))
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::Profile>, Status> {
        let (_, _, user) = self.live_caller(&request).await?;
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let paths = rpc::mask_paths(
            body.update_mask.as_ref(),
            &["name", "avatar_url", "bio"],
            &mut violations,
        );
        let profile = body.profile.unwrap_or_default();
        let mut name = None;
        let mut changes = ProfileChanges::default();
        for path in &paths {
            match path.as_str() {
                "name" => name = Some(validate::name(&profile.name, "profile.name", &mut violations)),
                "avatar_url" => {
                    validate::avatar_url(&profile.avatar_url, "profile.avatar_url", &mut violations);
                    changes.avatar_url = Some(profile.avatar_url.clone());
                }
                "bio" => {
                    validate::bio(&profile.bio, "profile.bio", &mut violations);
                    changes.bio = Some(profile.bio.clone());
                }
                _ => {}
            }
        }
        violations.check()?;
        let user_id = user.id;
        let (user, profile) = self
            .inner
            .db
            .run(move |conn| {
                diesel::Connection::transaction(conn, |conn| {
                    if let Some(name) = &name {
                        User::set_name(conn, user_id, name)?;
                    }
                    Profile::update(conn, user_id, &changes)?;
                    User::find(conn, user_id)?.ok_or(diesel::result::Error::NotFound)
                })
            })
            .await?;
        let profile = profile.unwrap_or_default();
        Ok(Response::new(pb::Profile {
            name: user.name,
            avatar_url: profile.avatar_url,
            bio: profile.bio,
        }))
    }

    async fn get_public_profile(
        &self,
        request: Request<pb::GetPublicProfileRequest>,
    ) -> Result<Response<pb::PublicProfile>, Status> {
        let mut violations = FieldViolations::new();
        let user_id = rpc::parse_id("user_id", &request.get_ref().user_id, &mut violations);
        violations.check()?;
        let found = self.inner.db.run(move |conn| User::find(conn, user_id)).await?;
        let (user, profile) = found
            .filter(|(user, _)| user.is_active)
            .ok_or_else(|| Status::not_found("no such user"))?;
        let profile = profile.unwrap_or_default();
        Ok(Response::new(pb::PublicProfile {
            user_id: user.id.to_string(),
            name: user.name,
            avatar_url: profile.avatar_url,
            bio: profile.bio,
        }))
    }

    async fn get_preferences(
        &self,
        request: Request<pb::GetPreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        let (_, _, user) = self.live_caller(&request).await?;
        let preferences = self.inner.db.run(move |conn| Preferences::get(conn, user.id)).await?;
        Ok(Response::new(preferences_proto(preferences)))
    }

    async fn update_preferences(
        &self,
        request: Request<pb::UpdatePreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        let (_, _, user) = self.live_caller(&request).await?;
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let paths = rpc::mask_paths(
            body.update_mask.as_ref(),
            &["theme", "language", "timezone"],
            &mut violations,
        );
        let wanted = body.preferences.unwrap_or_default();
        let mut changes = PreferencesChanges::default();
        for path in &paths {
            match path.as_str() {
                "theme" => {
                    validate::theme(&wanted.theme, "preferences.theme", &mut violations);
                    changes.theme = Some(wanted.theme.clone());
                }
                "language" => {
                    validate::language(&wanted.language, "preferences.language", &mut violations);
                    changes.language = Some(wanted.language.clone());
                }
                "timezone" => {
                    validate::timezone(&wanted.timezone, "preferences.timezone", &mut violations);
                    changes.timezone = Some(wanted.timezone.clone());
                }
                _ => {}
            }
        }
        violations.check()?;
        let preferences = self
            .inner
            .db
            .run(move |conn| Preferences::update(conn, user.id, &changes))
            .await?;
        Ok(Response::new(preferences_proto(preferences)))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let (_, session, user) = self.live_caller(&request).await?;
        let address = client::address_of(&request);
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        if body.current_password.is_empty() {
            violations.add("current_password", "is required");
        }
        password::check_policy(&body.new_password, &user.email, "new_password", &mut violations);
        violations.check()?;
        // A stolen session must not become a way to guess the password.
        let throttles = self.password_throttles(&user.email, &address)?;
        self.take_attempt(&throttles).await?;
        if !self
            .inner
            .hasher
            .verify(body.current_password, Some(user.password_hash.clone()))
            .await?
        {
            return Err(rpc::invalid_field("current_password", "is not your current password"));
        }
        self.attempt_succeeded(throttles).await?;
        let hash = self.inner.hasher.hash(body.new_password).await?;
        let revoked = self
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
        Ok(Response::new(pb::ChangePasswordResponse {
            revoked_sessions: i32::try_from(revoked).unwrap_or(i32::MAX),
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let (caller, _, user) = self.live_caller(&request).await?;
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let limit = rpc::page_size(body.page_size, 20, 100, &mut violations);
        let after = PageToken::decode(&body.page_token, &mut violations);
        violations.check()?;
        let sessions = self
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

    async fn send_verification_email(
        &self,
        request: Request<pb::SendVerificationEmailRequest>,
    ) -> Result<Response<pb::SendVerificationEmailResponse>, Status> {
        let (_, _, user) = self.live_caller(&request).await?;
        if user.email_verified {
            return Err(Status::failed_precondition("your email address is already verified"));
        }
        self.send_token_email(&user, "verify_email", Duration::from_secs(24 * 3600))
            .await?;
        Ok(Response::new(pb::SendVerificationEmailResponse {}))
    }

    async fn verify_email(
        &self,
        request: Request<pb::VerifyEmailRequest>,
    ) -> Result<Response<pb::VerifyEmailResponse>, Status> {
        let address = client::address_of(&request);
        let token = request.into_inner().token;
        if token.is_empty() {
            return Err(rpc::invalid_field("token", "is required"));
        }
        let throttles = vec![self.address_throttle(&address)?];
        self.take_attempt(&throttles).await?;
        let hash = token_hash(&token);
        let verified = self
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
        let user_id = verified.ok_or_else(|| {
            rpc::invalid_field(
                "token",
                "is not valid, was already used or has expired; ask for a new email",
            )
        })?;
        self.attempt_succeeded(throttles).await?;
        Ok(Response::new(pb::VerifyEmailResponse {
            user: Some(self.load_user(user_id).await?),
        }))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
        let mut violations = FieldViolations::new();
        let email = validate::email(&request.get_ref().email, "email", &mut violations);
        violations.check()?;
        let user = self.inner.db.run(move |conn| User::find_by_email(conn, &email)).await?;
        // The answer is the same whether or not the account exists.
        if let Some(user) = user.filter(|user| user.is_active) {
            self.send_token_email(&user, "reset_password", Duration::from_secs(3600))
                .await?;
        }
        Ok(Response::new(pb::RequestPasswordResetResponse {}))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let address = client::address_of(&request);
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        if body.token.is_empty() {
            violations.add("token", "is required");
        }
        password::check_policy(&body.new_password, "", "new_password", &mut violations);
        violations.check()?;
        let throttles = vec![self.address_throttle(&address)?];
        self.take_attempt(&throttles).await?;
        let hash = self.inner.hasher.hash(body.new_password).await?;
        let token_hash = token_hash(&body.token);
        let reset = self
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
        let user_id = reset.ok_or_else(|| {
            rpc::invalid_field(
                "token",
                "is not valid, was already used or has expired; ask for a new email",
            )
        })?;
        self.attempt_succeeded(throttles).await?;
        tracing::info!(user.id = %user_id, "password reset");
        Ok(Response::new(pb::ResetPasswordResponse {}))
    }

    async fn get_jwks(&self, _request: Request<pb::GetJwksRequest>) -> Result<Response<pb::Jwks>, Status> {
        Ok(Response::new(pb::Jwks {
            keys: self.inner.keys.jwks(),
        }))
    }

    async fn check_session(
        &self,
        request: Request<pb::CheckSessionRequest>,
    ) -> Result<Response<pb::SessionStanding>, Status> {
        let mut violations = FieldViolations::new();
        let session_id = rpc::parse_id("session_id", &request.get_ref().session_id, &mut violations);
        violations.check()?;
        let standing = db::standing(&self.inner.db, session_id).await?;
        Ok(Response::new(pb::SessionStanding {
            live: standing.live,
            role: match standing.role {
                Some(capsule::auth::Role::Admin) => pb::Role::Admin as i32,
                Some(_) => pb::Role::User as i32,
                None => pb::Role::Unspecified as i32,
            },
        }))
    }

    async fn get_user_status(
        &self,
        request: Request<pb::GetUserStatusRequest>,
    ) -> Result<Response<pb::UserStatus>, Status> {
        let mut violations = FieldViolations::new();
        let user_id = rpc::parse_id("user_id", &request.get_ref().user_id, &mut violations);
        violations.check()?;
        let found = self.inner.db.run(move |conn| User::find(conn, user_id)).await?;
        Ok(Response::new(pb::UserStatus {
            exists: found.is_some(),
            active: found.is_some_and(|(user, _)| user.is_active),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.live_caller(&request).await?;
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
        let users = self.inner.db.run(move |conn| User::list(conn, &filter)).await?;
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

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        self.live_caller(&request).await?;
        let mut violations = FieldViolations::new();
        let user_id = rpc::parse_id("user_id", &request.get_ref().user_id, &mut violations);
        violations.check()?;
        Ok(Response::new(self.load_user(user_id).await?))
    }

    async fn set_role(&self, request: Request<pb::SetRoleRequest>) -> Result<Response<pb::User>, Status> {
        let (caller, _, _) = self.live_caller(&request).await?;
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
        let changed = self
            .inner
            .db
            .run(move |conn| User::change_role(conn, user_id, role))
            .await?;
        if changed == 0 {
            return Err(Status::not_found("no such user"));
        }
        Ok(Response::new(self.load_user(user_id).await?))
    }

    async fn deactivate_user(&self, request: Request<pb::DeactivateUserRequest>) -> Result<Response<pb::User>, Status> {
        let (caller, _, _) = self.live_caller(&request).await?;
        let mut violations = FieldViolations::new();
        let user_id = rpc::parse_id("user_id", &request.get_ref().user_id, &mut violations);
        violations.check()?;
        if user_id == caller.user_id {
            return Err(Status::failed_precondition(
                "you cannot deactivate yourself; ask another admin",
            ));
        }
        let changed = self
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
        Ok(Response::new(self.load_user(user_id).await?))
    }

    async fn reactivate_user(&self, request: Request<pb::ReactivateUserRequest>) -> Result<Response<pb::User>, Status> {
        self.live_caller(&request).await?;
        let mut violations = FieldViolations::new();
        let user_id = rpc::parse_id("user_id", &request.get_ref().user_id, &mut violations);
        violations.check()?;
        let changed = self
            .inner
            .db
            .run(move |conn| User::set_active(conn, user_id, true))
            .await?;
        if changed == 0 {
            return Err(Status::not_found("no such user"));
        }
        Ok(Response::new(self.load_user(user_id).await?))
    }
}
