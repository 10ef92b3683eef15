//! Sessions, their refresh tokens, and a session's standing.

use chrono::{DateTime, Utc};
use diesel::{dsl::now, prelude::*};
use uuid::Uuid;

use super::{
    Session, User,
    schema::{refresh_tokens, user_sessions, users},
};

impl Session {
    pub fn create(
        conn: &mut PgConnection,
        user_id: Uuid,
        user_agent: &str,
        client_address: &str,
        expires_at: DateTime<Utc>,
    ) -> QueryResult<Session> {
        diesel::insert_into(user_sessions::table)
            .values((
                user_sessions::user_id.eq(user_id),
                user_sessions::user_agent.eq(user_agent),
                user_sessions::client_address.eq(client_address),
                user_sessions::expires_at.eq(expires_at),
            ))
            .returning(Session::as_returning())
            .get_result(conn)
    }

    /// The session if it is live and its user active.
    /// Whether a session is live, and its user's role, live or not.
    pub fn standing(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<(bool, String)>> {
        let live = Self::live(conn, id)?.is_some();
        let role = user_sessions::table
            .inner_join(users::table)
            .filter(user_sessions::id.eq(id))
            .select(users::role)
            .first::<String>(conn)
            .optional()?;
        Ok(role.map(|role| (live, role)))
    }

    pub fn live(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<(Session, User)>> {
        user_sessions::table
            .inner_join(users::table)
            .filter(user_sessions::id.eq(id))
            .filter(user_sessions::revoked_at.is_null())
            .filter(user_sessions::expires_at.gt(now))
            .filter(users::is_active.eq(true))
            .select((Session::as_select(), User::as_select()))
            .first(conn)
            .optional()
    }

    pub fn revoke(conn: &mut PgConnection, id: Uuid, reason: &str) -> QueryResult<usize> {
        diesel::update(
            user_sessions::table
                .find(id)
                .filter(user_sessions::revoked_at.is_null()),
        )
        .set((
            user_sessions::revoked_at.eq(now),
            user_sessions::revoked_reason.eq(reason),
        ))
        .execute(conn)
    }

    /// Revokes every live session of a user but `keep`.
    pub fn revoke_all(conn: &mut PgConnection, user_id: Uuid, keep: Option<Uuid>, reason: &str) -> QueryResult<usize> {
        diesel::update(
            user_sessions::table
                .filter(user_sessions::user_id.eq(user_id))
                .filter(user_sessions::revoked_at.is_null())
                .filter(user_sessions::id.ne(keep.unwrap_or_else(Uuid::nil))),
        )
        .set((
            user_sessions::revoked_at.eq(now),
            user_sessions::revoked_reason.eq(reason),
        ))
        .execute(conn)
    }

    pub fn list_live(
        conn: &mut PgConnection,
        user_id: Uuid,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> QueryResult<Vec<Session>> {
        let mut query = user_sessions::table
            .filter(user_sessions::user_id.eq(user_id))
            .filter(user_sessions::revoked_at.is_null())
            .filter(user_sessions::expires_at.gt(now))
            .select(Session::as_select())
            .order((user_sessions::created_at.desc(), user_sessions::id.desc()))
            .limit(limit)
            .into_boxed();
        if let Some((time, id)) = after {
            query = query.filter(
                user_sessions::created_at
                    .lt(time)
                    .or(user_sessions::created_at.eq(time).and(user_sessions::id.lt(id))),
            );
        }
        query.load(conn)
    }
}

/// What presenting a refresh token did.
pub enum Spent {
    /// The token was live and is now spent: here is its session.
    Fresh { session_id: Uuid },
    /// The token had been spent before: its session is now revoked.
    Reused,
    /// Unknown or expired.
    Invalid,
}

pub fn insert_refresh_token(
    conn: &mut PgConnection,
    hash: &[u8],
    session_id: Uuid,
    expires_at: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::insert_into(refresh_tokens::table)
        .values((
            refresh_tokens::token_hash.eq(hash),
            refresh_tokens::session_id.eq(session_id),
            refresh_tokens::expires_at.eq(expires_at),
        ))
        .execute(conn)
}

/// Spends a refresh token, atomically: of two concurrent uses only one
/// wins; a second use revokes the session (the token family).
pub fn spend_refresh_token(conn: &mut PgConnection, hash: &[u8]) -> QueryResult<Spent> {
    let spent: Option<Uuid> = diesel::update(
        refresh_tokens::table
            .filter(refresh_tokens::token_hash.eq(hash))
            .filter(refresh_tokens::used_at.is_null())
            .filter(refresh_tokens::expires_at.gt(now)),
    )
    .set(refresh_tokens::used_at.eq(now))
    .returning(refresh_tokens::session_id)
    .get_result(conn)
    .optional()?;
    if let Some(session_id) = spent {
        return Ok(Spent::Fresh { session_id });
    }
    let reused: Option<Uuid> = refresh_tokens::table
        .filter(refresh_tokens::token_hash.eq(hash))
        .filter(refresh_tokens::used_at.is_not_null())
        .select(refresh_tokens::session_id)
        .first(conn)
        .optional()?;
    match reused {
        Some(session_id) => {
            Session::revoke(conn, session_id, "refresh token reused")?;
            Ok(Spent::Reused)
        }
        None => Ok(Spent::Invalid),
    }
}

/// Session `session_id` and its user as they are now.
pub async fn standing(db: &capsule::db::Database, session_id: Uuid) -> Result<capsule::auth::Standing, tonic::Status> {
    use capsule::auth::{Role, Standing};
    let found = db.run(move |conn| Session::standing(conn, session_id)).await?;
    Ok(match found {
        None => Standing {
            live: false,
            role: None,
        },
        Some((live, role)) => Standing {
            live,
            role: Some(if role == "admin" { Role::Admin } else { Role::User }),
        },
    })
}
