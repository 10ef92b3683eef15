//! The auth service's state, and what every RPC shares: its audit trail,
//! the caller checked against the database (a live session, an active
//! user), and the user as the contracts show it.

use std::sync::Arc;

use capsule::{auth::Caller, db::Database, proto::auth::v1 as pb};
use tonic::{Request, Status};
use uuid::Uuid;

use crate::{
    config::AuthConfig,
    convert::user_proto,
    db::{Session, User},
    keys::KeyRing,
    password,
};

/// The auth service's gRPC API.
#[derive(Clone)]
pub struct AuthServiceApi {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) db: Database,
    pub(crate) keys: Arc<KeyRing>,
    pub(crate) config: AuthConfig,
    pub(crate) hasher: password::Hasher,
}

pub(crate) const WRONG_CREDENTIALS: &str = "email or password is incorrect";
pub(crate) const SESSION_ENDED: &str = "your session has ended; sign in again";

pub(crate) use capsule::auth::token_hash;

impl AuthServiceApi {
    /// Appends an audit event of this service's, after its change.
    pub(crate) async fn audit(&self, event: capsule::audit::Event) {
        capsule::audit::append(&self.inner.db, event).await;
    }

    /// Appends an audit event without making the caller wait for it.
    pub(crate) fn audit_later(&self, event: capsule::audit::Event) {
        let db = self.inner.db.clone();
        tokio::spawn(async move { capsule::audit::append(&db, event).await });
    }

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

    pub(crate) fn user_agent<T>(request: &Request<T>) -> String {
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
    pub(crate) async fn live_caller<T>(&self, request: &Request<T>) -> Result<(Caller, Session, User), Status> {
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

    pub(crate) async fn load_user(&self, user_id: Uuid) -> Result<pb::User, Status> {
        let (user, profile) = self
            .inner
            .db
            .run(move |conn| User::find(conn, user_id))
            .await?
            .ok_or_else(|| Status::not_found("no such user"))?;
        Ok(user_proto(&user, profile.as_ref()))
    }
}
