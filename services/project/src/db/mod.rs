//! Rows and queries of the project database.

pub mod schema;

use chrono::{DateTime, Utc};
use diesel::{dsl::now, prelude::*};
use uuid::Uuid;

use schema::{environment_variables, project_settings, projects};

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = projects)]
pub struct Project {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub owner_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub slug: String,
    pub deleted_at: Option<DateTime<Utc>>,
    pub purge_after: Option<DateTime<Utc>>,
}

#[derive(Insertable)]
#[diesel(table_name = projects)]
pub struct NewProject<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub owner_id: Uuid,
    pub slug: &'a str,
}

#[derive(AsChangeset, Default)]
#[diesel(table_name = projects)]
pub struct ProjectChanges {
    pub name: Option<String>,
    pub slug: Option<String>,
    pub description: Option<String>,
}

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = project_settings)]
pub struct Settings {
    pub project_id: Uuid,
    pub build_command: String,
    pub start_command: String,
    pub root_directory: String,
    pub branch: String,
    pub auto_deploy: bool,
    pub updated_at: DateTime<Utc>,
}

#[derive(AsChangeset, Default)]
#[diesel(table_name = project_settings)]
pub struct SettingsChanges {
    pub build_command: Option<String>,
    pub start_command: Option<String>,
    pub root_directory: Option<String>,
    pub branch: Option<String>,
    pub auto_deploy: Option<bool>,
}

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = environment_variables)]
pub struct Variable {
    pub name: String,
    pub value: String,
    pub secret: bool,
    pub updated_at: DateTime<Utc>,
}

/// Who may see a project: its owner, or anyone for an admin.
#[derive(Debug, Clone, Copy)]
pub struct Viewer {
    pub user_id: Uuid,
    pub admin: bool,
}

impl Project {
    /// The project if `viewer` may see it (deleted ones included).
    pub fn find(conn: &mut PgConnection, id: Uuid, viewer: Viewer) -> QueryResult<Option<Project>> {
        let mut query = projects::table.find(id).select(Project::as_select()).into_boxed();
        if !viewer.admin {
            query = query.filter(projects::owner_id.eq(viewer.user_id));
        }
        query.first(conn).optional()
    }

    /// Creates the project and its default settings.
    pub fn create(conn: &mut PgConnection, new: &NewProject<'_>) -> QueryResult<Project> {
        conn.transaction(|conn| {
            let project: Project = diesel::insert_into(projects::table)
                .values(new)
                .returning(Project::as_returning())
                .get_result(conn)?;
            diesel::insert_into(project_settings::table)
                .values(project_settings::project_id.eq(project.id))
                .execute(conn)?;
            Ok(project)
        })
    }

    /// One page, newest first.
    pub fn list(
        conn: &mut PgConnection,
        viewer: Viewer,
        show_deleted: bool,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> QueryResult<Vec<Project>> {
        let mut query = projects::table
            .select(Project::as_select())
            .order((projects::created_at.desc(), projects::id.desc()))
            .limit(limit)
            .into_boxed();
        if !viewer.admin {
            query = query.filter(projects::owner_id.eq(viewer.user_id));
        }
        if !show_deleted {
            query = query.filter(projects::deleted_at.is_null());
        }
        if let Some((time, id)) = after {
            query = query.filter(
                projects::created_at
                    .lt(time)
                    .or(projects::created_at.eq(time).and(projects::id.lt(id))),
            );
        }
        query.load(conn)
    }

    pub fn update(conn: &mut PgConnection, id: Uuid, changes: &ProjectChanges) -> QueryResult<Project> {
        if changes.name.is_none() && changes.slug.is_none() && changes.description.is_none() {
            return projects::table.find(id).select(Project::as_select()).first(conn);
        }
        diesel::update(projects::table.find(id))
            .set(changes)
            .returning(Project::as_returning())
            .get_result(conn)
    }

    pub fn soft_delete(conn: &mut PgConnection, id: Uuid, purge_after: DateTime<Utc>) -> QueryResult<Project> {
        diesel::update(projects::table.find(id))
            .set((projects::deleted_at.eq(now), projects::purge_after.eq(purge_after)))
            .returning(Project::as_returning())
            .get_result(conn)
    }

    pub fn undelete(conn: &mut PgConnection, id: Uuid) -> QueryResult<Project> {
        diesel::update(projects::table.find(id))
            .set((
                projects::deleted_at.eq(None::<DateTime<Utc>>),
                projects::purge_after.eq(None::<DateTime<Utc>>),
            ))
            .returning(Project::as_returning())
            .get_result(conn)
    }
}

impl Settings {
    pub fn get(conn: &mut PgConnection, project_id: Uuid) -> QueryResult<Settings> {
        project_settings::table
            .find(project_id)
            .select(Settings::as_select())
            .first(conn)
    }

    pub fn update(conn: &mut PgConnection, project_id: Uuid, changes: &SettingsChanges) -> QueryResult<Settings> {
        if changes.build_command.is_none()
            && changes.start_command.is_none()
            && changes.root_directory.is_none()
            && changes.branch.is_none()
            && changes.auto_deploy.is_none()
        {
            return Self::get(conn, project_id);
        }
        diesel::update(project_settings::table.find(project_id))
            .set(changes)
            .returning(Settings::as_returning())
            .get_result(conn)
    }
}

impl Variable {
    pub fn list(conn: &mut PgConnection, project_id: Uuid) -> QueryResult<Vec<Variable>> {
        environment_variables::table
            .filter(environment_variables::project_id.eq(project_id))
            .select(Variable::as_select())
            .order(environment_variables::name.asc())
            .load(conn)
    }

    pub fn count(conn: &mut PgConnection, project_id: Uuid) -> QueryResult<i64> {
        environment_variables::table
            .filter(environment_variables::project_id.eq(project_id))
            .count()
            .get_result(conn)
    }

    pub fn upsert(
        conn: &mut PgConnection,
        project_id: Uuid,
        name: &str,
        value: &str,
        secret: bool,
    ) -> QueryResult<Variable> {
        diesel::insert_into(environment_variables::table)
            .values((
                environment_variables::project_id.eq(project_id),
                environment_variables::name.eq(name),
                environment_variables::value.eq(value),
                environment_variables::secret.eq(secret),
            ))
            .on_conflict((environment_variables::project_id, environment_variables::name))
            .do_update()
            .set((
                environment_variables::value.eq(value),
                environment_variables::secret.eq(secret),
            ))
            .returning(Variable::as_returning())
            .get_result(conn)
    }

    pub fn delete(conn: &mut PgConnection, project_id: Uuid, name: &str) -> QueryResult<usize> {
        diesel::delete(environment_variables::table.find((project_id, name))).execute(conn)
    }
}
