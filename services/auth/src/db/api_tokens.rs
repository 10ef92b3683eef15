//! API tokens, personal or an organisation's.

use capsule::proto::auth::v1 as pb;
use chrono::{DateTime, Utc};
use diesel::{dsl::now, prelude::*};
use uuid::Uuid;

use super::schema::{api_tokens, users};

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = api_tokens)]
pub struct ApiTokenRow {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub created_by: Option<Uuid>,
    pub name: String,
    pub scopes: Vec<String>,
    pub project_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Whose tokens: a user's own, or an organisation's (which the project
/// service vouches the caller may manage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    User(Uuid),
    Organization(Uuid),
}

impl Owner {
    /// The owner's tokens, as a filter.
    fn tokens(
        self,
    ) -> Box<dyn BoxableExpression<api_tokens::table, diesel::pg::Pg, SqlType = diesel::sql_types::Bool>> {
        match self {
            Self::User(id) => Box::new(api_tokens::user_id.eq(id).assume_not_null()),
            Self::Organization(id) => Box::new(api_tokens::organization_id.eq(id).assume_not_null()),
        }
    }
}

pub struct NewApiToken<'a> {
    pub owner: Owner,
    pub created_by: Uuid,
    pub name: &'a str,
    pub token_hash: &'a [u8],
    pub scopes: &'a [String],
    pub project_id: Option<Uuid>,
    pub expires_at: DateTime<Utc>,
}

/// How many live tokens a user, or an organisation, may hold.
pub const MAX_LIVE: i64 = 50;

/// Creates the token unless its owner already holds [`MAX_LIVE`] live
/// ones (`None`), counted under a lock on the owner (a user's row; an
/// organisation, whose row is in the project database, by an advisory
/// lock on its id).
pub fn create(conn: &mut PgConnection, new: &NewApiToken<'_>) -> QueryResult<Option<ApiTokenRow>> {
    conn.transaction(|conn| {
        match new.owner {
            Owner::User(id) => {
                users::table
                    .find(id)
                    .select(users::id)
                    .for_update()
                    .first::<Uuid>(conn)?;
            }
            Owner::Organization(id) => {
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 8))")
                    .bind::<diesel::sql_types::Uuid, _>(id)
                    .execute(conn)?;
            }
        }
        let live: i64 = api_tokens::table
            .filter(new.owner.tokens())
            .filter(api_tokens::revoked_at.is_null())
            .filter(api_tokens::expires_at.gt(now))
            .count()
            .get_result(conn)?;
        if live >= MAX_LIVE {
            return Ok(None);
        }
        let (user_id, organization_id) = match new.owner {
            Owner::User(id) => (Some(id), None),
            Owner::Organization(id) => (None, Some(id)),
        };
        diesel::insert_into(api_tokens::table)
            .values((
                api_tokens::user_id.eq(user_id),
                api_tokens::organization_id.eq(organization_id),
                api_tokens::created_by.eq(new.created_by),
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

/// An owner's tokens, newest first (revoked and expired ones included).
pub fn list(conn: &mut PgConnection, owner: Owner) -> QueryResult<Vec<ApiTokenRow>> {
    api_tokens::table
        .filter(owner.tokens())
        .select(ApiTokenRow::as_select())
        .order((api_tokens::created_at.desc(), api_tokens::id.desc()))
        .limit(200)
        .load(conn)
}

/// Revokes one of `owner`'s tokens (again is a no-op); `None` when the
/// owner has no such token.
pub fn revoke(conn: &mut PgConnection, owner: Owner, id: Uuid) -> QueryResult<Option<ApiTokenRow>> {
    diesel::update(api_tokens::table.filter(api_tokens::id.eq(id)).filter(owner.tokens()))
        .set(api_tokens::revoked_at.eq(diesel::dsl::sql::<
            diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
        >("coalesce(revoked_at, now())")))
        .returning(ApiTokenRow::as_returning())
        .get_result(conn)
        .optional()
}

/// The live token with this hash and, for a personal one, its user's
/// role; its use recorded (at most once a minute, so a busy token does not
/// write on every call). `None` when unknown, revoked, expired or its user
/// is deactivated (an organisation's token does not depend on its
/// creator).
pub fn check(conn: &mut PgConnection, token_hash: &[u8]) -> QueryResult<Option<(ApiTokenRow, Option<String>)>> {
    let found: Option<(ApiTokenRow, Option<String>)> = api_tokens::table
        .left_join(users::table)
        .filter(api_tokens::token_hash.eq(token_hash))
        .filter(api_tokens::revoked_at.is_null())
        .filter(api_tokens::expires_at.gt(now))
        .filter(
            api_tokens::organization_id
                .is_not_null()
                .or(users::is_active.nullable().eq(true)),
        )
        .select((ApiTokenRow::as_select(), users::role.nullable()))
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
/// service's own token layer reads it). An organisation's token acts as
/// the organisation: its id is the grant's user too, and its role is a
/// user's, never an admin's.
pub async fn grant(db: &capsule::db::Database, token_hash: Vec<u8>) -> Result<pb::ApiTokenGrant, tonic::Status> {
    let found = db.run(move |conn| check(conn, &token_hash)).await?;
    let Some((token, role)) = found else {
        return Ok(pb::ApiTokenGrant::default());
    };
    let Some(acting) = token.user_id.or(token.organization_id) else {
        return Ok(pb::ApiTokenGrant::default());
    };
    Ok(pb::ApiTokenGrant {
        live: true,
        api_token_id: token.id.to_string(),
        user_id: acting.to_string(),
        role: if role.as_deref() == Some("admin") {
            pb::Role::Admin
        } else {
            pb::Role::User
        }
        .into(),
        scopes: token.scopes,
        project_id: token.project_id.map(|id| id.to_string()).unwrap_or_default(),
        organization_id: token.organization_id.map(|id| id.to_string()).unwrap_or_default(),
    })
}
