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

    /// Sets a user's role; when it changes, their sessions end (reason
    /// "role changed") so no token of the old role lives on. How many
    /// users were found.
    pub fn change_role(conn: &mut PgConnection, id: Uuid, role: &str) -> QueryResult<usize> {
        conn.transaction(|conn| {
            let current: Option<String> = users::table
                .find(id)
                .select(users::role)
                .for_update()
                .first(conn)
                .optional()?;
            match current {
                None => Ok(0),
                Some(current) if current == role => Ok(1),
                Some(_) => {
                    Self::set_role(conn, id, role)?;
                    Session::revoke_all(conn, id, None, "role changed")?;
                    Ok(1)
                }
            }
        })
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

/// How failed attempts on one scope are counted.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleRule {
    pub max_failures: i32,
    pub window: Duration,
    pub lockout: Duration,
}

/// One counter of failed attempts (an account, an address, or an account
/// from one address) and its rule.
#[derive(Debug, Clone)]
pub struct Throttle {
    pub scope: String,
    pub rule: ThrottleRule,
    /// Counts many people's attempts (an address): a success takes back
    /// one failure rather than starting again from nothing.
    pub shared: bool,
}

/// Why [`take_attempt`] undid its transaction.
enum Refused {
    Locked(DateTime<Utc>),
    Database(diesel::result::Error),
}

impl From<diesel::result::Error> for Refused {
    fn from(err: diesel::result::Error) -> Self {
        Self::Database(err)
    }
}

/// Counts one attempt, in advance, as a failure on every scope at once —
/// so that N guesses in parallel count as N — unless one of the scopes is
/// locked: then nothing is counted and the answer is when its lock lifts.
/// A scope reaching its maximum is locked for its lockout (the attempt
/// that reached it still runs). Callers give the scopes in one order, so
/// two attempts never wait for each other in a circle.
pub fn take_attempt(conn: &mut PgConnection, throttles: &[Throttle]) -> QueryResult<Result<(), DateTime<Utc>>> {
    use diesel::sql_types::{Double, Integer, Nullable, Text, Timestamptz};

    #[derive(QueryableByName)]
    struct Lock {
        #[diesel(sql_type = Nullable<Timestamptz>)]
        locked_until: Option<DateTime<Utc>>,
    }

    let taken = conn.transaction(|conn| {
        for throttle in throttles {
            let counted = diesel::sql_query(
                "INSERT INTO login_throttles AS t (scope, failures, window_started_at, locked_until) \
                 VALUES ($1, 1, now(), CASE WHEN $2 <= 1 THEN now() + $4 * interval '1 second' END) \
                 ON CONFLICT (scope) DO UPDATE SET \
                   failures = CASE WHEN t.window_started_at > now() - $3 * interval '1 second' \
                                   THEN t.failures + 1 ELSE 1 END, \
                   window_started_at = CASE WHEN t.window_started_at > now() - $3 * interval '1 second' \
                                            THEN t.window_started_at ELSE now() END, \
                   locked_until = CASE WHEN (CASE WHEN t.window_started_at > now() - $3 * interval '1 second' \
                                                  THEN t.failures + 1 ELSE 1 END) >= $2 \
                                       THEN now() + $4 * interval '1 second' END \
                 WHERE t.locked_until IS NULL OR t.locked_until <= now()",
            )
            .bind::<Text, _>(&throttle.scope)
            .bind::<Integer, _>(throttle.rule.max_failures)
            .bind::<Double, _>(seconds(throttle.rule.window))
            .bind::<Double, _>(seconds(throttle.rule.lockout))
            .execute(conn)?;
            if counted == 0 {
                let lock: Lock = diesel::sql_query("SELECT locked_until FROM login_throttles WHERE scope = $1")
                    .bind::<Text, _>(&throttle.scope)
                    .get_result(conn)?;
                return Err(Refused::Locked(lock.locked_until.unwrap_or_else(Utc::now)));
            }
        }
        Ok(())
    });
    match taken {
        Ok(()) => Ok(Ok(())),
        Err(Refused::Locked(until)) => Ok(Err(until)),
        Err(Refused::Database(err)) => Err(err),
    }
}

/// The attempt counted by [`take_attempt`] succeeded: a scope of one
/// person starts again from nothing (failures are counted consecutively),
/// a shared one takes back the failure counted in advance.
pub fn attempt_succeeded(conn: &mut PgConnection, throttles: &[Throttle]) -> QueryResult<()> {
    use diesel::sql_types::{Integer, Text};

    let personal: Vec<&str> = throttles
        .iter()
        .filter(|throttle| !throttle.shared)
        .map(|throttle| throttle.scope.as_str())
        .collect();
    diesel::delete(login_throttles::table.filter(login_throttles::scope.eq_any(personal))).execute(conn)?;
    for throttle in throttles.iter().filter(|throttle| throttle.shared) {
        diesel::sql_query(
            "UPDATE login_throttles SET failures = greatest(failures - 1, 0), \
               locked_until = CASE WHEN failures - 1 < $2 THEN NULL ELSE locked_until END \
             WHERE scope = $1",
        )
        .bind::<Text, _>(&throttle.scope)
        .bind::<Integer, _>(throttle.rule.max_failures)
        .execute(conn)?;
    }
    Ok(())
}

/// Forgets counters whose window and lock are both over.
pub fn prune_throttles(conn: &mut PgConnection, older_than: Duration) -> QueryResult<usize> {
    diesel::delete(
        login_throttles::table
            .filter(login_throttles::window_started_at.lt(Utc::now() - older_than))
            .filter(
                login_throttles::locked_until
                    .is_null()
                    .or(login_throttles::locked_until.lt(now)),
            ),
    )
    .execute(conn)
}

fn seconds(duration: Duration) -> f64 {
    duration.as_seconds_f64()
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
