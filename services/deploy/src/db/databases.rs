//! Apps' databases, their backups and open previews, as the deploy
//! database keeps them (the databases themselves live on the apps'
//! server: `crate::databases`).

use chrono::{DateTime, Utc};
use diesel::{dsl::now, prelude::*};
use uuid::Uuid;

use super::schema::{app_database_backups, app_databases, previews};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = app_databases)]
pub struct AppDatabase {
    pub id: Uuid,
    pub project_id: Uuid,
    pub environment: String,
    pub name: String,
    pub password_sealed: String,
    pub key_id: String,
    pub connection_limit: i32,
    pub statement_timeout_secs: i32,
    pub ready_at: Option<DateTime<Utc>>,
    pub next_backup_at: DateTime<Utc>,
    pub backup_lease_until: Option<DateTime<Utc>>,
    pub creator_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = app_database_backups)]
pub struct Backup {
    pub id: Uuid,
    pub database_id: Uuid,
    pub project_id: Uuid,
    pub environment: String,
    pub reason: String,
    pub size_bytes: i64,
    pub digest: String,
    pub created_at: DateTime<Utc>,
}

/// The environment's database, if it has one.
pub fn find(conn: &mut PgConnection, project_id: Uuid, environment: &str) -> QueryResult<Option<AppDatabase>> {
    app_databases::table
        .filter(app_databases::project_id.eq(project_id))
        .filter(app_databases::environment.eq(environment))
        .select(AppDatabase::as_select())
        .first(conn)
        .optional()
}

/// Records a new database; `false` when the environment has one already.
pub fn insert(conn: &mut PgConnection, database: &AppDatabase) -> QueryResult<bool> {
    let inserted = diesel::insert_into(app_databases::table)
        .values(database)
        .on_conflict_do_nothing()
        .execute(conn)?;
    Ok(inserted == 1)
}

pub fn mark_ready(conn: &mut PgConnection, id: Uuid) -> QueryResult<()> {
    diesel::update(app_databases::table.find(id))
        .set(app_databases::ready_at.eq(Some(Utc::now())))
        .execute(conn)
        .map(drop)
}

/// Forgets a database (its backups go with it).
pub fn delete(conn: &mut PgConnection, id: Uuid) -> QueryResult<()> {
    diesel::delete(app_databases::table.find(id)).execute(conn).map(drop)
}

/// Takes the lease on one database whose scheduled backup is due, moving
/// its next backup `interval` on: each is backed up by one deploy process.
pub fn take_due(
    conn: &mut PgConnection,
    interval: chrono::Duration,
    lease: chrono::Duration,
) -> QueryResult<Option<AppDatabase>> {
    conn.transaction(|conn| {
        let due: Option<AppDatabase> = app_databases::table
            .filter(app_databases::ready_at.is_not_null())
            .filter(app_databases::next_backup_at.le(now))
            .filter(
                app_databases::backup_lease_until
                    .is_null()
                    .or(app_databases::backup_lease_until.lt(now)),
            )
            .order(app_databases::next_backup_at)
            .for_update()
            .skip_locked()
            .select(AppDatabase::as_select())
            .first(conn)
            .optional()?;
        let Some(due) = due else { return Ok(None) };
        let at = Utc::now();
        diesel::update(app_databases::table.find(due.id))
            .set((
                app_databases::next_backup_at.eq(at + interval),
                app_databases::backup_lease_until.eq(Some(at + lease)),
            ))
            .execute(conn)?;
        Ok(Some(due))
    })
}

pub fn end_lease(conn: &mut PgConnection, id: Uuid) -> QueryResult<()> {
    diesel::update(app_databases::table.find(id))
        .set(app_databases::backup_lease_until.eq(None::<DateTime<Utc>>))
        .execute(conn)
        .map(drop)
}

/// Records a backup and drops the oldest beyond `keep` of its database's
/// backups: the digests no backup names any more, whose files may go.
pub fn add_backup(conn: &mut PgConnection, backup: &Backup, keep: i64) -> QueryResult<Vec<String>> {
    conn.transaction(|conn| {
        diesel::insert_into(app_database_backups::table)
            .values(backup)
            .execute(conn)?;
        let kept: Vec<Uuid> = app_database_backups::table
            .filter(app_database_backups::database_id.eq(backup.database_id))
            .order(app_database_backups::created_at.desc())
            .limit(keep)
            .select(app_database_backups::id)
            .load(conn)?;
        let dropped: Vec<String> = diesel::delete(
            app_database_backups::table
                .filter(app_database_backups::database_id.eq(backup.database_id))
                .filter(app_database_backups::id.ne_all(kept)),
        )
        .returning(app_database_backups::digest)
        .get_results(conn)?;
        unreferenced(conn, dropped)
    })
}

/// Of `digests`, those no backup names.
pub fn unreferenced(conn: &mut PgConnection, digests: Vec<String>) -> QueryResult<Vec<String>> {
    let still: Vec<String> = app_database_backups::table
        .filter(app_database_backups::digest.eq_any(&digests))
        .select(app_database_backups::digest)
        .load(conn)?;
    Ok(digests.into_iter().filter(|digest| !still.contains(digest)).collect())
}

/// A database's backups' digests (before it is forgotten).
pub fn digests_of(conn: &mut PgConnection, database_id: Uuid) -> QueryResult<Vec<String>> {
    app_database_backups::table
        .filter(app_database_backups::database_id.eq(database_id))
        .select(app_database_backups::digest)
        .load(conn)
}

/// An environment database's backups, newest first.
pub fn backups(conn: &mut PgConnection, database_id: Uuid) -> QueryResult<Vec<Backup>> {
    app_database_backups::table
        .filter(app_database_backups::database_id.eq(database_id))
        .order(app_database_backups::created_at.desc())
        .select(Backup::as_select())
        .load(conn)
}

/// One of a project's backups.
pub fn backup(conn: &mut PgConnection, project_id: Uuid, id: Uuid) -> QueryResult<Option<Backup>> {
    app_database_backups::table
        .filter(app_database_backups::id.eq(id))
        .filter(app_database_backups::project_id.eq(project_id))
        .select(Backup::as_select())
        .first(conn)
        .optional()
}

/// Opens (or moves to a new head) a request's preview, unless the project
/// has `max` open already: `Some(true)` when it is new, `None` when
/// refused. Under the lock of the project's previews, so that two events
/// cannot both pass the cap.
pub fn open_preview(
    conn: &mut PgConnection,
    project_id: Uuid,
    number: i32,
    environment: &str,
    head_sha: &str,
    max: i64,
) -> QueryResult<Option<bool>> {
    conn.transaction(|conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind::<diesel::sql_types::Text, _>(format!("previews:{project_id}"))
            .execute(conn)?;
        let updated = diesel::update(previews::table.find((project_id, number)))
            .set(previews::head_sha.eq(head_sha))
            .execute(conn)?;
        if updated == 1 {
            return Ok(Some(false));
        }
        let open: i64 = previews::table
            .filter(previews::project_id.eq(project_id))
            .count()
            .get_result(conn)?;
        if open >= max {
            return Ok(None);
        }
        diesel::insert_into(previews::table)
            .values((
                previews::project_id.eq(project_id),
                previews::number.eq(number),
                previews::environment.eq(environment),
                previews::head_sha.eq(head_sha),
            ))
            .execute(conn)?;
        Ok(Some(true))
    })
}

/// Closes a request's preview: its environment, if it was open.
pub fn close_preview(conn: &mut PgConnection, project_id: Uuid, number: i32) -> QueryResult<Option<String>> {
    diesel::delete(previews::table.find((project_id, number)))
        .returning(previews::environment)
        .get_result(conn)
        .optional()
}

/// The deployments of an environment that are not settled (queued,
/// building, deploying, live), with their state: what closing a preview
/// stops.
pub fn unsettled_in(conn: &mut PgConnection, project_id: Uuid, environment: &str) -> QueryResult<Vec<(Uuid, String)>> {
    use super::schema::deployments;
    deployments::table
        .filter(deployments::project_id.eq(project_id))
        .filter(deployments::environment.eq(environment))
        .filter(deployments::state.eq_any(["queued", "building", "deploying", "live"]))
        .select((deployments::id, deployments::state))
        .load(conn)
}

/// Queues a webhook event about a database or a preview (no deployment).
pub fn queue_event(
    conn: &mut PgConnection,
    project_id: Uuid,
    organization_id: Option<Uuid>,
    event: super::webhooks::Event,
    detail: serde_json::Value,
) -> QueryResult<usize> {
    let about = super::webhooks::About {
        deployment_id: None,
        project_id,
        owner_id: organization_id,
    };
    let payload = serde_json::json!({
        "type": event.as_str(),
        "created_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "project_id": project_id.to_string(),
        "detail": detail,
    });
    super::webhooks::enqueue(conn, about, event, payload)
}
