//! Personal API tokens.

use capsule::proto::auth::v1 as pb;
use chrono::{DateTime, Utc};
use diesel::{dsl::now, prelude::*};
use uuid::Uuid;

use super::schema::{api_tokens, users};

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = api_tokens)]
pub struct ApiTokenRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
    pub project_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub struct NewApiToken<'a> {
    pub user_id: Uuid,
    pub name: &'a str,
    pub token_hash: &'a [u8],
    pub scopes: &'a [String],
    pub project_id: Option<Uuid>,
    pub expires_at: DateTime<Utc>,
}

/// How many live tokens a user may hold.
pub const MAX_PER_USER: i64 = 50;

/// Creates the token unless the user already holds [`MAX_PER_USER`] live
/// ones (`None`), counted under the user's row lock.
pub fn create(conn: &mut PgConnection, new: &NewApiToken<'_>) -> QueryResult<Option<ApiTokenRow>> {
    conn.transaction(|conn| {
        users::table
            .find(new.user_id)
            .select(users::id)
            .for_update()
            .first::<Uuid>(conn)?;
        let live: i64 = api_tokens::table
            .filter(api_tokens::user_id.eq(new.user_id))
            .filter(api_tokens::revoked_at.is_null())
            .filter(api_tokens::expires_at.gt(now))
            .count()
            .get_result(conn)?;
        if live >= MAX_PER_USER {
            return Ok(None);
        }
        diesel::insert_into(api_tokens::table)
            .values((
                api_tokens::user_id.eq(new.user_id),
                api_tokens::name.eq(new.name),
                api_tokens::token_hash.eq(new.token_hash),
                api_tokens::scopes.eq(new.scopes),
                api_tokens::project_id.eq(new.project_id),
                api_tokens::expires_at.eq(new.expires_at),
            ))
            .returning(ApiTokenRow::as_returning())
            .get_result(conn)
            .map(Some)
    })
}

/// A user's tokens, newest first (revoked and expired ones included).
pub fn list(conn: &mut PgConnection, user_id: Uuid) -> QueryResult<Vec<ApiTokenRow>> {
    api_tokens::table
        .filter(api_tokens::user_id.eq(user_id))
        .select(ApiTokenRow::as_select())
        .order((api_tokens::created_at.desc(), api_tokens::id.desc()))
        .limit(200)
        .load(conn)
}

/// Revokes one of `user_id`'s tokens (again is a no-op); `None` when the
/// user has no such token.
pub fn revoke(conn: &mut PgConnection, user_id: Uuid, id: Uuid) -> QueryResult<Option<ApiTokenRow>> {
    diesel::update(
        api_tokens::table
            .filter(api_tokens::id.eq(id))
            .filter(api_tokens::user_id.eq(user_id)),
    )
    .set(api_tokens::revoked_at.eq(diesel::dsl::sql::<
        diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
    >("coalesce(revoked_at, now())")))
    .returning(ApiTokenRow::as_returning())
    .get_result(conn)
    .optional()
}

/// The live token with this hash and its user's role, its use recorded
/// (at most once a minute, so a busy token does not write on every call).
/// `None` when unknown, revoked, expired or its user is deactivated.
pub fn check(conn: &mut PgConnection, token_hash: &[u8]) -> QueryResult<Option<(ApiTokenRow, String)>> {
    let found: Option<(ApiTokenRow, String)> = api_tokens::table
        .inner_join(users::table)
        .filter(api_tokens::token_hash.eq(token_hash))
        .filter(api_tokens::revoked_at.is_null())
        .filter(api_tokens::expires_at.gt(now))
        .filter(users::is_active.eq(true))
        .select((ApiTokenRow::as_select(), users::role))
        .first(conn)
        .optional()?;
    if let Some((token, _)) = &found
        && token
            .last_used_at
            .is_none_or(|used| used < Utc::now() - chrono::Duration::minutes(1))
    {
        diesel::update(api_tokens::table.find(token.id))
            .set(api_tokens::last_used_at.eq(now))
            .execute(conn)?;
    }
    Ok(found)
}

/// What a token may do now, as `CheckApiToken` answers it (and this
/// service's own token layer reads it).
pub async fn grant(db: &capsule::db::Database, token_hash: Vec<u8>) -> Result<pb::ApiTokenGrant, tonic::Status> {
    let found = db.run(move |conn| check(conn, &token_hash)).await?;
    Ok(match found {
        Some((token, role)) => pb::ApiTokenGrant {
            live: true,
            api_token_id: token.id.to_string(),
            user_id: token.user_id.to_string(),
            role: if role == "admin" {
                pb::Role::Admin
            } else {
                pb::Role::User
            }
            .into(),
            scopes: token.scopes,
            project_id: token.project_id.map(|id| id.to_string()).unwrap_or_default(),
        },
        None => pb::ApiTokenGrant::default(),
    })
}
