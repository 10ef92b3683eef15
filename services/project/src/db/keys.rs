//! A project's deploy key: one row per project, the private half sealed.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::schema::deploy_keys;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = deploy_keys)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct DeployKey {
    pub project_id: Uuid,
    pub public_key: String,
    pub fingerprint: String,
    /// Sealed with `key_id`'s key.
    pub private_key: String,
    pub key_id: String,
    pub created_at: DateTime<Utc>,
}

impl DeployKey {
    pub fn find(conn: &mut PgConnection, project_id: Uuid) -> QueryResult<Option<DeployKey>> {
        deploy_keys::table
            .find(project_id)
            .select(DeployKey::as_select())
            .first(conn)
            .optional()
    }

    /// Stores `key` in place of the project's previous one.
    pub fn replace(conn: &mut PgConnection, key: &DeployKey) -> QueryResult<DeployKey> {
        diesel::insert_into(deploy_keys::table)
            .values(key)
            .on_conflict(deploy_keys::project_id)
            .do_update()
            .set((
                deploy_keys::public_key.eq(&key.public_key),
                deploy_keys::fingerprint.eq(&key.fingerprint),
                deploy_keys::private_key.eq(&key.private_key),
                deploy_keys::key_id.eq(&key.key_id),
                deploy_keys::created_at.eq(key.created_at),
            ))
            .returning(DeployKey::as_returning())
            .get_result(conn)
    }

    /// Every stored key, for sealing anew.
    pub fn all(conn: &mut PgConnection) -> QueryResult<Vec<DeployKey>> {
        deploy_keys::table.select(DeployKey::as_select()).load(conn)
    }

    /// Replaces the sealed private half, if it is still `was`.
    pub fn reseal(conn: &mut PgConnection, project_id: Uuid, was: &str, sealed: (&str, &str)) -> QueryResult<usize> {
        diesel::update(
            deploy_keys::table
                .find(project_id)
                .filter(deploy_keys::private_key.eq(was)),
        )
        .set((deploy_keys::private_key.eq(sealed.0), deploy_keys::key_id.eq(sealed.1)))
        .execute(conn)
    }
}
