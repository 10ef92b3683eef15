//! Signing keys.

use chrono::{DateTime, Duration, Utc};
use diesel::{dsl::now, prelude::*};

use super::schema::signing_keys;

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
