//! Rows and queries of the auth database. Every function takes a
//! `&mut PgConnection` and runs on a pooled connection's thread.

pub mod schema;

use chrono::{DateTime, Duration, Utc};
use diesel::{dsl::now, prelude::*};
use uuid::Uuid;

use schema::{
    email_outbox, email_tokens, login_throttles, refresh_tokens, signing_keys, user_preferences, user_profiles,
    user_sessions, users,
};

diesel::define_sql_function!(fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text);

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = users)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub name: String,
    pub role: String,
    pub is_active: bool,
    pub email_verified: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub email: &'a str,
    pub password_hash: &'a str,
    pub name: &'a str,
    pub role: &'a str,
}

#[derive(Queryable, Selectable, Debug, Clone, Default)]
#[diesel(table_name = user_profiles)]
pub struct Profile {
    pub avatar_url: String,
    pub bio: String,
}

#[derive(AsChangeset, Default)]
#[diesel(table_name = user_profiles)]
pub struct ProfileChanges {
    pub avatar_url: Option<String>,
    pub bio: Option<String>,
}

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = user_preferences)]
pub struct Preferences {
    pub theme: String,
    pub language: String,
    pub timezone: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(AsChangeset, Default)]
#[diesel(table_name = user_preferences)]
pub struct PreferencesChanges {
    pub theme: Option<String>,
    pub language: Option<String>,
    pub timezone: Option<String>,
}

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = user_sessions)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub user_agent: String,
    pub client_address: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A user with the profile shown beside it.
pub type UserWithProfile = (User, Option<Profile>);

/// Filters of the admin user list.
pub struct UserFilter {
    pub role: Option<String>,
    pub active: Option<bool>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

impl User {
    pub fn find(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<UserWithProfile>> {
        users::table
            .left_join(user_profiles::table)
            .filter(users::id.eq(id))
            .select((User::as_select(), Option::<Profile>::as_select()))
            .first(conn)
            .optional()
    }

    /// By email, whatever its letter case (uses the `lower(email)` index).
    pub fn find_by_email(conn: &mut PgConnection, email: &str) -> QueryResult<Option<User>> {
        users::table
            .filter(lower(users::email).eq(email.to_lowercase()))
            .select(User::as_select())
            .first(conn)
            .optional()
    }

    /// Creates the user with an empty profile and default preferences.
    pub fn create(conn: &mut PgConnection, new: &NewUser<'_>) -> QueryResult<User> {
        conn.transaction(|conn| {
            let user: User = diesel::insert_into(users::table)
                .values(new)
                .returning(User::as_returning())
                .get_result(conn)?;
            diesel::insert_into(user_profiles::table)
                .values(user_profiles::user_id.eq(user.id))
                .execute(conn)?;
            diesel::insert_into(user_preferences::table)
                .values(user_preferences::user_id.eq(user.id))
                .execute(conn)?;
            Ok(user)
        })
    }

    pub fn list(conn: &mut PgConnection, filter: &UserFilter) -> QueryResult<Vec<UserWithProfile>> {
        let mut query = users::table
            .left_join(user_profiles::table)
            .select((User::as_select(), Option::<Profile>::as_select()))
            .order((users::created_at.desc(), users::id.desc()))
            .limit(filter.limit)
            .into_boxed();
        if let Some(role) = &filter.role {
            query = query.filter(users::role.eq(role.clone()));
        }
        if let Some(active) = filter.active {
            query = query.filter(users::is_active.eq(active));
        }
        if let Some((time, id)) = filter.after {
            query = query.filter(
                users::created_at
                    .lt(time)
                    .or(users::created_at.eq(time).and(users::id.lt(id))),
            );
        }
        query.load(conn)
    }

    pub fn set_role(conn: &mut PgConnection, id: Uuid, role: &str) -> QueryResult<usize> {
        diesel::update(users::table.find(id))
            .set(users::role.eq(role))
            .execute(conn)
    }

    pub fn set_active(conn: &mut PgConnection, id: Uuid, active: bool) -> QueryResult<usize> {
        diesel::update(users::table.find(id))
            .set(users::is_active.eq(active))
            .execute(conn)
    }

    pub fn set_password_hash(conn: &mut PgConnection, id: Uuid, hash: &str) -> QueryResult<usize> {
        diesel::update(users::table.find(id))
            .set(users::password_hash.eq(hash))
            .execute(conn)
    }

    pub fn set_name(conn: &mut PgConnection, id: Uuid, name: &str) -> QueryResult<usize> {
        diesel::update(users::table.find(id))
            .set(users::name.eq(name))
            .execute(conn)
    }

    pub fn mark_email_verified(conn: &mut PgConnection, id: Uuid) -> QueryResult<usize> {
        diesel::update(users::table.find(id))
            .set((users::email_verified.eq(true), users::email_verified_at.eq(now)))
            .execute(conn)
    }
}

impl Profile {
    pub fn update(conn: &mut PgConnection, user_id: Uuid, changes: &ProfileChanges) -> QueryResult<usize> {
        if changes.avatar_url.is_none() && changes.bio.is_none() {
            return Ok(0);
        }
        diesel::update(user_profiles::table.find(user_id))
            .set(changes)
            .execute(conn)
    }
}

impl Preferences {
    pub fn get(conn: &mut PgConnection, user_id: Uuid) -> QueryResult<Preferences> {
        user_preferences::table
            .find(user_id)
            .select(Preferences::as_select())
            .first(conn)
    }

    pub fn update(conn: &mut PgConnection, user_id: Uuid, changes: &PreferencesChanges) -> QueryResult<Preferences> {
        if changes.theme.is_none() && changes.language.is_none() && changes.timezone.is_none() {
            return Self::get(conn, user_id);
        }
        diesel::update(user_preferences::table.find(user_id))
            .set(changes)
            .returning(Preferences::as_returning())
            .get_result(conn)
    }
}

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

pub fn insert_email_token(
    conn: &mut PgConnection,
    hash: &[u8],
    user_id: Uuid,
    purpose: &str,
    expires_at: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::insert_into(email_tokens::table)
        .values((
            email_tokens::token_hash.eq(hash),
            email_tokens::user_id.eq(user_id),
            email_tokens::purpose.eq(purpose),
            email_tokens::expires_at.eq(expires_at),
        ))
        .execute(conn)
}

/// Spends a single-use email token; its user when it was live.
pub fn consume_email_token(conn: &mut PgConnection, hash: &[u8], purpose: &str) -> QueryResult<Option<Uuid>> {
    diesel::update(
        email_tokens::table
            .filter(email_tokens::token_hash.eq(hash))
            .filter(email_tokens::purpose.eq(purpose))
            .filter(email_tokens::used_at.is_null())
            .filter(email_tokens::expires_at.gt(now)),
    )
    .set(email_tokens::used_at.eq(now))
    .returning(email_tokens::user_id)
    .get_result(conn)
    .optional()
}

pub fn push_email(conn: &mut PgConnection, recipient: &str, subject: &str, body: &str) -> QueryResult<Uuid> {
    diesel::insert_into(email_outbox::table)
        .values((
            email_outbox::recipient.eq(recipient),
            email_outbox::subject.eq(subject),
            email_outbox::body.eq(body),
        ))
        .returning(email_outbox::id)
        .get_result(conn)
}

/// How failed sign-ins are counted.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleRule {
    pub max_failures: i32,
    pub window: Duration,
    pub lockout: Duration,
}

/// When the latest lock on any of `scopes` lifts, if one is in force.
pub fn locked_until(conn: &mut PgConnection, scopes: &[String]) -> QueryResult<Option<DateTime<Utc>>> {
    login_throttles::table
        .filter(login_throttles::scope.eq_any(scopes))
        .filter(login_throttles::locked_until.gt(now))
        .select(diesel::dsl::max(login_throttles::locked_until))
        .first::<Option<DateTime<Utc>>>(conn)
}

/// Counts one failure on `scope`; locks it when the window holds
/// `max_failures`.
pub fn record_failure(conn: &mut PgConnection, scope: &str, rule: ThrottleRule) -> QueryResult<()> {
    let now_utc = Utc::now();
    let window_start = now_utc - rule.window;
    conn.transaction(|conn| {
        let row: Option<(i32, DateTime<Utc>)> = login_throttles::table
            .find(scope)
            .select((login_throttles::failures, login_throttles::window_started_at))
            .for_update()
            .first(conn)
            .optional()?;
        let (failures, started) = match row {
            Some((failures, started)) if started > window_start => (failures + 1, started),
            _ => (1, now_utc),
        };
        let locked = (failures >= rule.max_failures).then(|| now_utc + rule.lockout);
        diesel::insert_into(login_throttles::table)
            .values((
                login_throttles::scope.eq(scope),
                login_throttles::failures.eq(failures),
                login_throttles::window_started_at.eq(started),
                login_throttles::locked_until.eq(locked),
            ))
            .on_conflict(login_throttles::scope)
            .do_update()
            .set((
                login_throttles::failures.eq(failures),
                login_throttles::window_started_at.eq(started),
                login_throttles::locked_until.eq(locked),
            ))
            .execute(conn)?;
        Ok(())
    })
}

pub fn clear_failures(conn: &mut PgConnection, scope: &str) -> QueryResult<usize> {
    diesel::delete(login_throttles::table.find(scope)).execute(conn)
}

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = signing_keys)]
pub struct SigningKeyRow {
    pub kid: String,
    pub private_key: Vec<u8>,
    pub public_key: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

impl SigningKeyRow {
    /// Active keys and keys retired less than `grace` ago, newest first.
    pub fn published(conn: &mut PgConnection, grace: Duration) -> QueryResult<Vec<SigningKeyRow>> {
        signing_keys::table
            .filter(
                signing_keys::retired_at
                    .is_null()
                    .or(signing_keys::retired_at.gt(Utc::now() - grace)),
            )
            .select(SigningKeyRow::as_select())
            .order(signing_keys::created_at.desc())
            .load(conn)
    }

    pub fn insert(conn: &mut PgConnection, kid: &str, private_key: &[u8], public_key: &[u8]) -> QueryResult<usize> {
        diesel::insert_into(signing_keys::table)
            .values((
                signing_keys::kid.eq(kid),
                signing_keys::private_key.eq(private_key),
                signing_keys::public_key.eq(public_key),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
    }

    /// Retires every active key but `keep`.
    pub fn retire_all_but(conn: &mut PgConnection, keep: &str) -> QueryResult<usize> {
        diesel::update(
            signing_keys::table
                .filter(signing_keys::retired_at.is_null())
                .filter(signing_keys::kid.ne(keep)),
        )
        .set(signing_keys::retired_at.eq(now))
        .execute(conn)
    }
}

/// Creates an active, verified admin with this email, or makes the existing
/// account one with this password hash.
pub fn upsert_admin(conn: &mut PgConnection, email: &str, password_hash: &str) -> QueryResult<Uuid> {
    conn.transaction(|conn| match User::find_by_email(conn, email)? {
        Some(user) => {
            diesel::update(users::table.find(user.id))
                .set((
                    users::password_hash.eq(password_hash),
                    users::role.eq("admin"),
                    users::is_active.eq(true),
                ))
                .execute(conn)?;
            Ok(user.id)
        }
        None => {
            let user = User::create(
                conn,
                &NewUser {
                    email,
                    password_hash,
                    name: "Capsule Admin",
                    role: "admin",
                },
            )?;
            User::mark_email_verified(conn, user.id)?;
            Ok(user.id)
        }
    })
}
