//! Rows and queries of the project database.

mod keys;
pub mod organizations;
pub mod schema;
mod variables;

pub use keys::DeployKey;
pub use variables::VariableRefusal;

use chrono::{DateTime, Utc};
use diesel::{
    dsl::{AsSelect, EqAny, Filter, Select, SqlTypeOf, now},
    pg::Pg,
    prelude::*,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
    result::DatabaseErrorKind,
    sql_types::{Array, Bool, Nullable, Text, Untyped},
};
use uuid::Uuid;

/// [`Project::by_ids`]' statement.
type ByIds<'a> = Select<Filter<projects::table, EqAny<projects::id, &'a [Uuid]>>, AsSelect<Project, Pg>>;

use schema::{environment_variables, project_settings, projects};

#[derive(Queryable, QueryableByName, Selectable, Debug, Clone)]
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
    pub host_label: String,
    /// Set when an organisation owns the project (then `owner_id` is the
    /// organisation's id too).
    pub organization_id: Option<Uuid>,
}

pub struct NewProject<'a> {
    pub name: &'a str,
    pub description: &'a str,
    /// The user, or the organisation when `organization_id` is set.
    pub owner_id: Uuid,
    pub organization_id: Option<Uuid>,
    pub slug: &'a str,
    /// The slug was derived from the name, not chosen: when the owner
    /// already uses it, a short random suffix makes it free.
    pub slug_derived: bool,
}

/// The project and its default settings in one statement (one round trip;
/// atomic without an explicit transaction). The foreign key of the settings
/// row is checked at the end of the statement, when the project exists.
const CREATE_PROJECT: &str = "\
WITH project AS (
    INSERT INTO projects (name, description, owner_id, organization_id, slug)
    VALUES ($1, $2, $3, $6, CASE
        WHEN $5 AND EXISTS (
            SELECT 1 FROM projects WHERE owner_id = $3 AND slug = $4 AND deleted_at IS NULL
        ) THEN left($4, 54) || '-' || substr(md5(random()::text), 1, 8)
        ELSE $4
    END)
    RETURNING id, name, description, owner_id, created_at, updated_at, slug, deleted_at, purge_after, host_label,
        organization_id
), settings AS (
    INSERT INTO project_settings (project_id) SELECT id FROM project
)
SELECT * FROM project";

/// [`CREATE_PROJECT`] with its parameters bound. Unlike `sql_query`, whose
/// statements diesel never caches, it has a static query id: prepared once
/// per connection, not parsed and planned on every insert.
struct CreateProject<'a>(&'a NewProject<'a>);

impl QueryId for CreateProject<'_> {
    type QueryId = CreateProject<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for CreateProject<'_> {
    type SqlType = Untyped;
}

impl RunQueryDsl<PgConnection> for CreateProject<'_> {}

impl QueryFragment<Pg> for CreateProject<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // `$n` in the text names the parameter; diesel numbers the binds.
        let mut rest = CREATE_PROJECT;
        while let Some(at) = rest.find('$') {
            out.push_sql(&rest[..at]);
            match rest.as_bytes().get(at + 1) {
                Some(b'1') => out.push_bind_param::<Text, _>(&self.0.name)?,
                Some(b'2') => out.push_bind_param::<Text, _>(&self.0.description)?,
                Some(b'3') => out.push_bind_param::<diesel::sql_types::Uuid, _>(&self.0.owner_id)?,
                Some(b'4') => out.push_bind_param::<Text, _>(&self.0.slug)?,
                Some(b'5') => out.push_bind_param::<Bool, _>(&self.0.slug_derived)?,
                Some(b'6') => {
                    out.push_bind_param::<Nullable<diesel::sql_types::Uuid>, _>(&self.0.organization_id)?;
                }
                _ => {
                    return Err(diesel::result::Error::QueryBuilderError(
                        "CREATE_PROJECT: unknown parameter".into(),
                    ));
                }
            }
            rest = &rest[at + 2..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

/// Many projects and their default settings in one statement: the batched
/// form of [`CREATE_PROJECT`]. A row that would break a unique index (a
/// slug or host label taken, also by another row of the same batch) is
/// left out, not an error: its caller is then served alone.
const CREATE_PROJECTS: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::bool[], $6::uuid[])
        AS i(name, description, owner_id, slug, slug_derived, organization_id)
), project AS (
    INSERT INTO projects (name, description, owner_id, organization_id, slug)
    SELECT name, description, owner_id, organization_id, CASE
        WHEN slug_derived AND EXISTS (
            SELECT 1 FROM projects p
            WHERE p.owner_id = input.owner_id AND p.slug = input.slug AND p.deleted_at IS NULL
        ) THEN left(slug, 54) || '-' || substr(md5(random()::text), 1, 8)
        ELSE slug
    END FROM input
    ON CONFLICT DO NOTHING
    RETURNING id, name, description, owner_id, created_at, updated_at, slug, deleted_at, purge_after, host_label,
        organization_id
), settings AS (
    INSERT INTO project_settings (project_id) SELECT id FROM project
)
SELECT * FROM project";

/// A project to create, owned: what a queued CreateProject carries.
#[derive(Clone, Debug)]
pub struct ProjectToCreate {
    pub name: String,
    pub description: String,
    pub owner_id: Uuid,
    pub organization_id: Option<Uuid>,
    pub slug: String,
    pub slug_derived: bool,
}

impl ProjectToCreate {
    fn as_new(&self) -> NewProject<'_> {
        NewProject {
            name: &self.name,
            description: &self.description,
            owner_id: self.owner_id,
            organization_id: self.organization_id,
            slug: &self.slug,
            slug_derived: self.slug_derived,
        }
    }

    /// Whether `project` is the row this request asked for.
    fn asked_for(&self, project: &Project) -> bool {
        project.owner_id == self.owner_id
            && project.name == self.name
            && project.description == self.description
            && (project.slug == self.slug || self.slug_derived)
    }
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
    pub repository_url: String,
    pub health_check_path: String,
    pub release_command: String,
    pub build_egress: bool,
    pub app_egress: bool,
    pub memory_mb: i32,
    pub cpu_millis: i32,
    pub processes: i32,
    pub replicas: i32,
    /// [`capsule::schedule::ProcessType`]s, as stored.
    pub process_types: serde_json::Value,
    pub idle_timeout_secs: i32,
}

#[derive(AsChangeset, Default)]
#[diesel(table_name = project_settings)]
pub struct SettingsChanges {
    pub build_command: Option<String>,
    pub start_command: Option<String>,
    pub root_directory: Option<String>,
    pub branch: Option<String>,
    pub auto_deploy: Option<bool>,
    pub repository_url: Option<String>,
    pub health_check_path: Option<String>,
    pub release_command: Option<String>,
    pub build_egress: Option<bool>,
    pub app_egress: Option<bool>,
    pub memory_mb: Option<i32>,
    pub cpu_millis: Option<i32>,
    pub processes: Option<i32>,
    pub replicas: Option<i32>,
    pub process_types: Option<serde_json::Value>,
    pub idle_timeout_secs: Option<i32>,
}

impl SettingsChanges {
    fn is_empty(&self) -> bool {
        let Self {
            build_command,
            start_command,
            root_directory,
            branch,
            auto_deploy,
            repository_url,
            health_check_path,
            release_command,
            build_egress,
            app_egress,
            memory_mb,
            cpu_millis,
            processes,
            replicas,
            process_types,
            idle_timeout_secs,
        } = self;
        [
            build_command,
            start_command,
            root_directory,
            branch,
            repository_url,
            health_check_path,
            release_command,
        ]
        .iter()
        .all(|change| change.is_none())
            && [auto_deploy, build_egress, app_egress]
                .iter()
                .all(|change| change.is_none())
            && [memory_mb, cpu_millis, processes, replicas, idle_timeout_secs]
                .iter()
                .all(|change| change.is_none())
            && process_types.is_none()
    }
}

impl Settings {
    /// Its workers and cron entries (none when the column holds something
    /// else: every write is checked).
    pub fn process_types(&self) -> Vec<capsule::schedule::ProcessType> {
        serde_json::from_value(self.process_types.clone()).unwrap_or_default()
    }
}

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = environment_variables)]
pub struct Variable {
    pub name: String,
    /// Sealed (see `vault`) when `key_id` is set.
    pub value: String,
    pub secret: bool,
    pub updated_at: DateTime<Utc>,
    /// The key that sealed `value`; `None` for a value written before
    /// values were sealed.
    pub key_id: Option<String>,
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

    /// The projects with these ids (one statement, `id = ANY($1)`), each
    /// answer in the order of `ids`: the batched read behind every lookup
    /// by id. Who may see it is the caller's to check.
    pub fn find_each(conn: &mut PgConnection, ids: &[Uuid]) -> QueryResult<Vec<QueryResult<Option<Project>>>> {
        let rows: Vec<Project> = Project::by_ids(ids).load(conn)?;
        let mut by_id: std::collections::HashMap<Uuid, Project> = rows.into_iter().map(|row| (row.id, row)).collect();
        Ok(ids
            .iter()
            .map(|id| {
                Ok(if ids.len() == 1 {
                    by_id.remove(id)
                } else {
                    by_id.get(id).cloned()
                })
            })
            .collect())
    }

    /// Creates the project and its default settings. A derived slug that
    /// two requests took at the same moment is retried once, suffixed.
    pub fn create(conn: &mut PgConnection, new: &NewProject<'_>) -> QueryResult<Project> {
        match CreateProject(new).get_result(conn) {
            Err(diesel::result::Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) if new.slug_derived => {
                CreateProject(new).get_result(conn)
            }
            result => result,
        }
    }

    /// Creates each project, answering in the order of `wanted`: the
    /// batched insert behind CreateProject. One alone takes the prepared
    /// single-row statement; many go in one statement, and a row it left
    /// out (or every row, if the statement failed) is created alone, so
    /// each caller gets its own project or its own error.
    pub fn create_each(conn: &mut PgConnection, wanted: &[ProjectToCreate]) -> QueryResult<Vec<QueryResult<Project>>> {
        if let [one] = wanted {
            return Ok(vec![Project::create(conn, &one.as_new())]);
        }
        let inserted = diesel::sql_query(CREATE_PROJECTS)
            .bind::<Array<Text>, _>(wanted.iter().map(|w| w.name.as_str()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(wanted.iter().map(|w| w.description.as_str()).collect::<Vec<_>>())
            .bind::<Array<diesel::sql_types::Uuid>, _>(wanted.iter().map(|w| w.owner_id).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(wanted.iter().map(|w| w.slug.as_str()).collect::<Vec<_>>())
            .bind::<Array<Bool>, _>(wanted.iter().map(|w| w.slug_derived).collect::<Vec<_>>())
            .bind::<Array<Nullable<diesel::sql_types::Uuid>>, _>(
                wanted.iter().map(|w| w.organization_id).collect::<Vec<_>>(),
            )
            .load::<Project>(conn);
        let mut inserted: Vec<Option<Project>> = match inserted {
            Ok(rows) => rows.into_iter().map(Some).collect(),
            Err(err) => {
                tracing::debug!(error = %err, rows = wanted.len(), "batched insert failed; creating each alone");
                Vec::new()
            }
        };
        Ok(wanted
            .iter()
            .map(|one| {
                let mine = inserted
                    .iter_mut()
                    .find(|row| row.as_ref().is_some_and(|project| one.asked_for(project)))
                    .and_then(Option::take);
                match mine {
                    Some(project) => Ok(project),
                    None => Project::create(conn, &one.as_new()),
                }
            })
            .collect())
    }

    /// The statement behind [`Project::find_each`].
    fn by_ids(ids: &[Uuid]) -> ByIds<'_> {
        projects::table
            .filter(projects::id.eq_any(ids))
            .select(Project::as_select())
    }

    /// One page, newest first.
    pub fn list(
        conn: &mut PgConnection,
        viewer: Viewer,
        show_deleted: bool,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> QueryResult<Vec<Project>> {
        Project::page(viewer, show_deleted, after, limit).load(conn)
    }

    /// The statement behind [`Project::list`]: an owner's page seeks in
    /// `idx_projects_owner_created`, an admin's in `idx_projects_created`.
    fn page<'a>(
        viewer: Viewer,
        show_deleted: bool,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> projects::BoxedQuery<'a, Pg, SqlTypeOf<AsSelect<Project, Pg>>> {
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
        if let Some(cursor) = after {
            query = query.filter(capsule::db::query::older_than("projects", cursor));
        }
        query
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
    /// Live projects with auto-deploy on and a repository, by id after
    /// `after`, with their settings.
    pub fn auto_deploying(
        conn: &mut PgConnection,
        after: Option<Uuid>,
        limit: i64,
    ) -> QueryResult<Vec<(Project, Settings)>> {
        let mut query = projects::table
            .inner_join(project_settings::table)
            .filter(project_settings::auto_deploy.eq(true))
            .filter(project_settings::repository_url.ne(""))
            .filter(projects::deleted_at.is_null())
            .order(projects::id.asc())
            .limit(limit)
            .select((Project::as_select(), Settings::as_select()))
            .into_boxed();
        if let Some(after) = after {
            query = query.filter(projects::id.gt(after));
        }
        query.load(conn)
    }

    /// The secret push events must be signed with (empty for none), as
    /// stored: sealed with the key named, or as it was made.
    pub fn webhook_secret(conn: &mut PgConnection, project_id: Uuid) -> QueryResult<(String, Option<String>)> {
        project_settings::table
            .find(project_id)
            .select((
                project_settings::webhook_secret,
                project_settings::webhook_secret_key_id,
            ))
            .first(conn)
    }

    /// Stores the sealed secret (`sealed`: text, key id), if the stored
    /// one is still `was` (any, when `None`).
    pub fn set_webhook_secret(
        conn: &mut PgConnection,
        project_id: Uuid,
        sealed: (&str, &str),
        was: Option<&str>,
    ) -> QueryResult<usize> {
        let mut update = diesel::update(project_settings::table.find(project_id)).into_boxed();
        if let Some(was) = was {
            update = update.filter(project_settings::webhook_secret.eq(was.to_owned()));
        }
        update
            .set((
                project_settings::webhook_secret.eq(sealed.0),
                project_settings::webhook_secret_key_id.eq(sealed.1),
            ))
            .execute(conn)
    }

    /// Every stored webhook secret not sealed by `current`: (project,
    /// text, key id).
    pub fn stale_webhook_secrets(
        conn: &mut PgConnection,
        current: &str,
    ) -> QueryResult<Vec<(Uuid, String, Option<String>)>> {
        project_settings::table
            .filter(project_settings::webhook_secret.ne(""))
            .filter(
                project_settings::webhook_secret_key_id
                    .is_null()
                    .or(project_settings::webhook_secret_key_id.ne(current)),
            )
            .select((
                project_settings::project_id,
                project_settings::webhook_secret,
                project_settings::webhook_secret_key_id,
            ))
            .load(conn)
    }

    pub fn get(conn: &mut PgConnection, project_id: Uuid) -> QueryResult<Settings> {
        project_settings::table
            .find(project_id)
            .select(Settings::as_select())
            .first(conn)
    }

    pub fn update(conn: &mut PgConnection, project_id: Uuid, changes: &SettingsChanges) -> QueryResult<Settings> {
        if changes.is_empty() {
            return Self::get(conn, project_id);
        }
        diesel::update(project_settings::table.find(project_id))
            .set(changes)
            .returning(Settings::as_returning())
            .get_result(conn)
    }
}

/// The plans of the statements behind GetProject and ListProjects (an
/// owner's first page, an admin's first page and an admin's page after
/// `cursor`), with these values bound: what `bench/scale` checks for index
/// use on a large database.
pub fn explain_reads(
    conn: &mut PgConnection,
    owner: Uuid,
    project: Uuid,
    cursor: (DateTime<Utc>, Uuid),
    limit: i64,
) -> QueryResult<Vec<(&'static str, serde_json::Value)>> {
    use capsule::db::query::explain;
    let (user, admin) = (
        Viewer {
            user_id: owner,
            admin: false,
        },
        Viewer {
            user_id: owner,
            admin: true,
        },
    );
    Ok(vec![
        ("GetProject", explain(conn, &Project::by_ids(&[project]))?),
        (
            "ListProjects, owner, first page",
            explain(conn, &Project::page(user, false, None, limit))?,
        ),
        (
            "ListProjects, admin, first page",
            explain(conn, &Project::page(admin, false, None, limit))?,
        ),
        (
            "ListProjects, admin, deep page",
            explain(conn, &Project::page(admin, false, Some(cursor), limit))?,
        ),
    ])
}
