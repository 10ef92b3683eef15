//! Users, their profiles and preferences, and the admin bootstrap.

use diesel::{dsl::now, prelude::*};
use uuid::Uuid;

use super::{
    NewUser, Preferences, PreferencesChanges, Profile, ProfileChanges, Session, User, UserFilter, UserWithProfile,
    lower,
    schema::{user_preferences, user_profiles, users},
};

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
