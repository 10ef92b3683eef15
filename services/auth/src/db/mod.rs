//! Rows and queries of the auth database. Every function takes a
//! `&mut PgConnection` and runs on a pooled connection's thread.
//!
//! The rows live here; their queries by concern: `accounts` (users,
//! profiles, preferences), `sessions` (and refresh tokens), `outbox` (email
//! tokens and mail), `throttle`, `keys` (signing keys).

pub mod schema;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use schema::{user_preferences, user_profiles, user_sessions, users};

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

mod accounts;
pub mod api_tokens;
mod keys;
mod outbox;
mod sessions;
mod throttle;

pub use accounts::upsert_admin;
pub use keys::SigningKeyRow;
pub use outbox::{consume_email_token, insert_email_token, push_email};
pub use sessions::{Spent, insert_refresh_token, spend_refresh_token, standing};
pub use throttle::{Throttle, ThrottleRule, attempt_succeeded, prune_throttles, take_attempt};
