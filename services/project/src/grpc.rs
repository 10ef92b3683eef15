//! The `capsule.project.v1.ProjectService` implementation: parse,
//! authorize, call the domain, convert.

use std::sync::Arc;

use capsule::{
    auth::Caller,
    db::{Batcher, Database},
    proto::project::v1::{self as pb, project_service_server::ProjectService},
    rpc::{self, FieldViolations, PageToken},
};
use chrono::{Duration, Utc};
use diesel::OptionalExtension;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    db::{Project, ProjectChanges, ProjectToCreate, Settings, SettingsChanges, Variable, Viewer},
    validate,
};

/// How long a soft-deleted project can be brought back.
pub const RETENTION_DAYS: i64 = 30;

/// The project service's gRPC API.
#[derive(Clone)]
pub struct ProjectServiceApi {
    db: Arc<Database>,
    /// Lookups by id, batched while the connections are busy.
    by_id: Batcher<Uuid, Option<Project>>,
    /// CreateProject's inserts, batched the same way.
    creates: Batcher<ProjectToCreate, Project>,
}

const NOT_FOUND: &str = "no such project";

fn viewer(caller: &Caller) -> Viewer {
    Viewer {
        user_id: caller.user_id,
        admin: caller.is_admin(),
    }
}

fn project_proto(project: &Project) -> pb::Project {
    pb::Project {
        id: project.id.to_string(),
        name: project.name.clone(),
        slug: project.slug.clone(),
        description: project.description.clone(),
        owner_id: project.owner_id.to_string(),
        create_time: Some(rpc::timestamp(project.created_at)),
        update_time: Some(rpc::timestamp(project.updated_at)),
        delete_time: project.deleted_at.map(rpc::timestamp),
        purge_time: project.purge_after.map(rpc::timestamp),
        url: capsule::config::app_url(&project.host_label),
        host_label: project.host_label.clone(),
    }
}

/// A variable as users see it: a secret's value is never returned.
fn variable_proto(variable: &Variable) -> pb::EnvironmentVariable {
    pb::EnvironmentVariable {
        name: variable.name.clone(),
        value: if variable.secret {
            String::new()
        } else {
            variable.value.clone()
        },
        secret: variable.secret,
        update_time: Some(rpc::timestamp(variable.updated_at)),
    }
}

fn settings_proto(settings: &Settings, variables: &[Variable]) -> pb::ProjectSettings {
    pb::ProjectSettings {
        project_id: settings.project_id.to_string(),
        build_command: settings.build_command.clone(),
        start_command: settings.start_command.clone(),
        root_directory: settings.root_directory.clone(),
        branch: settings.branch.clone(),
        auto_deploy: settings.auto_deploy,
        repository_url: settings.repository_url.clone(),
        health_check_path: settings.health_check_path.clone(),
        release_command: settings.release_command.clone(),
        environment_variables: variables.iter().map(variable_proto).collect(),
        update_time: Some(rpc::timestamp(settings.updated_at)),
    }
}

/// What a deployment of the project runs (no variables).
fn plan_proto(project: &Project, settings: Settings) -> pb::DeploymentPlan {
    pb::DeploymentPlan {
        project: Some(project_proto(project)),
        build_command: settings.build_command,
        start_command: settings.start_command,
        root_directory: settings.root_directory,
        branch: settings.branch,
        repository_url: settings.repository_url,
        health_check_path: settings.health_check_path,
        release_command: settings.release_command,
        environment_variables: Vec::new(),
    }
}

fn slug_taken(slug: &str) -> Status {
    Status::already_exists(format!(
        "you already have a project with the slug {slug:?}; choose another"
    ))
}

impl ProjectServiceApi {
    pub fn new(db: Database) -> Self {
        Self {
            by_id: Batcher::new(db.clone(), "project_by_id", Project::find_each),
            creates: Batcher::new(db.clone(), "project_create", Project::create_each),
            db: Arc::new(db),
        }
    }

    /// The project, if the caller may see it; NOT_FOUND otherwise, so ids
    /// of other people's projects reveal nothing.
    async fn visible(&self, caller: &Caller, project_id: Uuid) -> Result<Project, Status> {
        let viewer = viewer(caller);
        self.by_id
            .call(project_id)
            .await?
            .filter(|project| viewer.admin || project.owner_id == viewer.user_id)
            .ok_or_else(|| Status::not_found(NOT_FOUND))
    }

    /// Like [`Self::visible`], and not deleted: a deleted project is gone
    /// for every call but listing with `show_deleted` and undeleting it.
    /// Its owner is told how to bring it back.
    async fn live(&self, caller: &Caller, project_id: Uuid) -> Result<Project, Status> {
        let project = self.visible(caller, project_id).await?;
        if project.deleted_at.is_some() {
            let until = project
                .purge_after
                .map(|purge| format!(" until {}", purge.format("%Y-%m-%d %H:%M UTC")))
                .unwrap_or_default();
            return Err(Status::not_found(format!(
                "the project is deleted; UndeleteProject (POST /v1/projects/{project_id}:undelete) brings it back{until}"
            )));
        }
        Ok(project)
    }

    fn project_id(field: &str, value: &str) -> Result<Uuid, Status> {
        let mut violations = FieldViolations::new();
        let id = rpc::parse_id(field, value, &mut violations);
        violations.check()?;
        Ok(id)
    }
}

#[tonic::async_trait]
impl ProjectService for ProjectServiceApi {
    async fn create_project(
        &self,
        request: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let caller = Caller::of(&request)?.clone();
        let wanted = request.into_inner().project.unwrap_or_default();
        let mut violations = FieldViolations::new();
        let name = validate::name(&wanted.name, "project.name", &mut violations);
        // The rules in the protos checked the slug and description.
        let slug_derived = wanted.slug.is_empty();
        let slug = if slug_derived {
            validate::slug_from(&name)
        } else {
            wanted.slug.clone()
        };
        violations.check()?;
        let owner_id = caller.user_id;
        let description = wanted.description;
        let created = self
            .creates
            .call(ProjectToCreate {
                name,
                description,
                owner_id,
                slug: slug.clone(),
                slug_derived,
            })
            .await;
        match created {
            Ok(project) => {
                tracing::info!(project.id = %project.id, user.id = %owner_id, "project created");
                Ok(Response::new(project_proto(&project)))
            }
            Err(err) if err.is_unique_violation(None) => Err(slug_taken(&slug)),
            Err(err) => Err(err.into()),
        }
    }

    async fn get_project(&self, request: Request<pb::GetProjectRequest>) -> Result<Response<pb::Project>, Status> {
        let caller = Caller::of(&request)?;
        let id = Self::project_id("project_id", &request.get_ref().project_id)?;
        Ok(Response::new(project_proto(&self.live(caller, id).await?)))
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let viewer = viewer(Caller::of(&request)?);
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let limit = rpc::page_size(body.page_size, 20, 100, &mut violations);
        let after = PageToken::decode(&body.page_token, &mut violations);
        violations.check()?;
        let show_deleted = body.show_deleted;
        let rows = self
            .db
            .run(move |conn| Project::list(conn, viewer, show_deleted, after.map(|t| (t.time, t.id)), limit + 1))
            .await?;
        let next_page_token = rpc::next_page_token(&rows, limit, |row| (row.created_at, row.id));
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(Response::new(pb::ListProjectsResponse {
            projects: rows.iter().take(limit).map(project_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_project(
        &self,
        request: Request<pb::UpdateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let caller = Caller::of(&request)?.clone();
        let body = request.into_inner();
        let wanted = body.project.unwrap_or_default();
        let mut violations = FieldViolations::new();
        let id = rpc::parse_id("project.id", &wanted.id, &mut violations);
        let paths = rpc::mask_paths(
            body.update_mask.as_ref(),
            &["name", "slug", "description"],
            &mut violations,
        );
        let mut changes = ProjectChanges::default();
        for path in &paths {
            match path.as_str() {
                "name" => changes.name = Some(validate::name(&wanted.name, "project.name", &mut violations)),
                // The rules in the protos checked the slug and description.
                "slug" => changes.slug = Some(wanted.slug.clone()),
                "description" => changes.description = Some(wanted.description.clone()),
                _ => {}
            }
        }
        violations.check()?;
        let current = self.live(&caller, id).await?;
        // An empty slug is derived from the name, as when creating.
        if changes.slug.as_deref() == Some("") {
            changes.slug = Some(validate::slug_from(changes.name.as_deref().unwrap_or(&current.name)));
        }
        let slug = changes.slug.clone().unwrap_or_default();
        match self.db.run(move |conn| Project::update(conn, id, &changes)).await {
            Ok(project) => Ok(Response::new(project_proto(&project))),
            Err(err) if err.is_unique_violation(None) => Err(slug_taken(&slug)),
            Err(err) => Err(err.into()),
        }
    }

    async fn delete_project(
        &self,
        request: Request<pb::DeleteProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let caller = Caller::of(&request)?.clone();
        let id = Self::project_id("project_id", &request.get_ref().project_id)?;
        self.live(&caller, id).await?;
        let purge_after = Utc::now() + Duration::days(RETENTION_DAYS);
        let project = self
            .db
            .run(move |conn| Project::soft_delete(conn, id, purge_after))
            .await?;
        tracing::info!(project.id = %id, user.id = %caller.user_id, "project deleted");
        Ok(Response::new(project_proto(&project)))
    }

    async fn undelete_project(
        &self,
        request: Request<pb::UndeleteProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let caller = Caller::of(&request)?.clone();
        let id = Self::project_id("project_id", &request.get_ref().project_id)?;
        let project = self.visible(&caller, id).await?;
        match project.purge_after {
            None => return Err(Status::failed_precondition("the project is not deleted")),
            Some(purge) if purge <= Utc::now() => {
                return Err(Status::failed_precondition(
                    "the project's retention window has ended; it can no longer be restored",
                ));
            }
            Some(_) => {}
        }
        let slug = project.slug.clone();
        match self.db.run(move |conn| Project::undelete(conn, id)).await {
            Ok(project) => Ok(Response::new(project_proto(&project))),
            Err(err) if err.is_unique_violation(None) => Err(Status::already_exists(format!(
                "another project of yours now uses the slug {slug:?}; change its slug first"
            ))),
            Err(err) => Err(err.into()),
        }
    }

    async fn get_project_settings(
        &self,
        request: Request<pb::GetProjectSettingsRequest>,
    ) -> Result<Response<pb::ProjectSettings>, Status> {
        let caller = Caller::of(&request)?;
        let id = Self::project_id("project_id", &request.get_ref().project_id)?;
        self.live(caller, id).await?;
        let (settings, variables) = self
            .db
            .run(move |conn| Ok((Settings::get(conn, id)?, Variable::list(conn, id)?)))
            .await?;
        Ok(Response::new(settings_proto(&settings, &variables)))
    }

    async fn update_project_settings(
        &self,
        request: Request<pb::UpdateProjectSettingsRequest>,
    ) -> Result<Response<pb::ProjectSettings>, Status> {
        let caller = Caller::of(&request)?.clone();
        let body = request.into_inner();
        let wanted = body.settings.unwrap_or_default();
        let mut violations = FieldViolations::new();
        let id = rpc::parse_id("settings.project_id", &wanted.project_id, &mut violations);
        let paths = rpc::mask_paths(
            body.update_mask.as_ref(),
            &[
                "build_command",
                "start_command",
                "release_command",
                "root_directory",
                "branch",
                "auto_deploy",
                "repository_url",
                "health_check_path",
            ],
            &mut violations,
        );
        let mut changes = SettingsChanges::default();
        for path in &paths {
            match path.as_str() {
                // The rules in the protos are the whole check of each.
                "build_command" => changes.build_command = Some(wanted.build_command.clone()),
                "start_command" => changes.start_command = Some(wanted.start_command.clone()),
                "release_command" => changes.release_command = Some(wanted.release_command.clone()),
                "root_directory" => changes.root_directory = Some(wanted.root_directory.clone()),
                "branch" => changes.branch = Some(wanted.branch.clone()),
                "auto_deploy" => changes.auto_deploy = Some(wanted.auto_deploy),
                "repository_url" => changes.repository_url = Some(wanted.repository_url.clone()),
                "health_check_path" => changes.health_check_path = Some(wanted.health_check_path.clone()),
                _ => {}
            }
        }
        violations.check()?;
        self.live(&caller, id).await?;
        let (settings, variables) = self
            .db
            .run(move |conn| Ok((Settings::update(conn, id, &changes)?, Variable::list(conn, id)?)))
            .await?;
        Ok(Response::new(settings_proto(&settings, &variables)))
    }

    async fn set_environment_variable(
        &self,
        request: Request<pb::SetEnvironmentVariableRequest>,
    ) -> Result<Response<pb::EnvironmentVariable>, Status> {
        let caller = Caller::of(&request)?.clone();
        let body = request.into_inner();
        let variable = body.variable.unwrap_or_default();
        let mut violations = FieldViolations::new();
        // The rules in the protos checked the name and the value's size.
        let id = rpc::parse_id("project_id", &body.project_id, &mut violations);
        violations.check()?;
        self.live(&caller, id).await?;
        let (name, value, secret) = (variable.name.clone(), variable.value, variable.secret);
        let saved = self
            .db
            .run(move |conn| {
                conn.build_transaction().run(|conn| {
                    use diesel::{QueryDsl, RunQueryDsl};
                    // Lock the project row: concurrent writers count in turn.
                    crate::db::schema::projects::table
                        .find(id)
                        .select(crate::db::schema::projects::id)
                        .for_update()
                        .first::<Uuid>(conn)?;
                    let exists = crate::db::schema::environment_variables::table
                        .find((id, &name))
                        .count()
                        .get_result::<i64>(conn)?
                        > 0;
                    if !exists && Variable::count(conn, id)? >= validate::MAX_VARIABLES {
                        return Ok(None);
                    }
                    Variable::upsert(conn, id, &name, &value, secret).map(Some)
                })
            })
            .await?;
        let saved = saved.ok_or_else(|| {
            Status::failed_precondition(format!(
                "a project has at most {} environment variables; delete one first",
                validate::MAX_VARIABLES
            ))
        })?;
        tracing::info!(project.id = %id, variable.name = %saved.name, variable.secret = saved.secret, "environment variable set");
        Ok(Response::new(variable_proto(&saved)))
    }

    async fn delete_environment_variable(
        &self,
        request: Request<pb::DeleteEnvironmentVariableRequest>,
    ) -> Result<Response<pb::DeleteEnvironmentVariableResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let id = rpc::parse_id("project_id", &body.project_id, &mut violations);
        violations.check()?;
        self.live(&caller, id).await?;
        let name = body.name;
        let deleted = self.db.run(move |conn| Variable::delete(conn, id, &name)).await?;
        if deleted == 0 {
            return Err(Status::not_found("no such environment variable"));
        }
        Ok(Response::new(pb::DeleteEnvironmentVariableResponse {}))
    }

    async fn prepare_deployment(
        &self,
        request: Request<pb::PrepareDeploymentRequest>,
    ) -> Result<Response<pb::DeploymentPlan>, Status> {
        let caller = Caller::of(&request)?.clone();
        let id = Self::project_id("project_id", &request.get_ref().project_id)?;
        let project = self.live(&caller, id).await?;
        let settings = self.db.run(move |conn| Settings::get(conn, id)).await?;
        Ok(Response::new(plan_proto(&project, settings)))
    }

    async fn list_auto_deploy_projects(
        &self,
        request: Request<pb::ListAutoDeployProjectsRequest>,
    ) -> Result<Response<pb::ListAutoDeployProjectsResponse>, Status> {
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let limit = rpc::page_size(body.page_size, 100, 500, &mut violations);
        let after =
            (!body.page_token.is_empty()).then(|| rpc::parse_id("page_token", &body.page_token, &mut violations));
        violations.check()?;
        let rows = self
            .db
            .run(move |conn| Settings::auto_deploying(conn, after, limit))
            .await?;
        let full = i64::try_from(rows.len()).unwrap_or(0) == limit;
        let next_page_token = if full {
            rows.last()
                .map(|(project, _)| project.id.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListAutoDeployProjectsResponse {
            plans: rows
                .into_iter()
                .map(|(project, settings)| plan_proto(&project, settings))
                .collect(),
            next_page_token,
        }))
    }

    async fn get_push_target(
        &self,
        request: Request<pb::GetPushTargetRequest>,
    ) -> Result<Response<pb::PushTarget>, Status> {
        let id = Self::project_id("project_id", &request.get_ref().project_id)?;
        let service = Viewer {
            user_id: Uuid::nil(),
            admin: true,
        };
        let (project, settings, secret) = self
            .db
            .run(move |conn| {
                Ok((
                    Project::find(conn, id, service)?,
                    Settings::get(conn, id).optional()?,
                    Settings::webhook_secret(conn, id).optional()?,
                ))
            })
            .await?;
        let (Some(project), Some(settings)) = (project.filter(|project| project.deleted_at.is_none()), settings) else {
            return Err(Status::not_found(NOT_FOUND));
        };
        let auto_deploy = settings.auto_deploy;
        Ok(Response::new(pb::PushTarget {
            plan: Some(plan_proto(&project, settings)),
            auto_deploy,
            webhook_secret: secret.unwrap_or_default(),
        }))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let id = Self::project_id("project_id", &request.get_ref().project_id)?;
        self.live(&caller, id).await?;
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|_| Status::unavailable("no randomness available; retry"))?;
        let secret: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let stored = secret.clone();
        self.db
            .run(move |conn| Settings::set_webhook_secret(conn, id, &stored))
            .await?;
        tracing::info!(project.id = %id, user.id = %caller.user_id, "webhook secret rotated");
        Ok(Response::new(pb::RotateWebhookSecretResponse {
            webhook_secret: secret,
        }))
    }

    async fn get_deployment_environment(
        &self,
        request: Request<pb::GetDeploymentEnvironmentRequest>,
    ) -> Result<Response<pb::DeploymentEnvironment>, Status> {
        let id = Self::project_id("project_id", &request.get_ref().project_id)?;
        // The deploy service asks for itself (no user): any live project.
        let service = Viewer {
            user_id: Uuid::nil(),
            admin: true,
        };
        let (project, variables) = self
            .db
            .run(move |conn| Ok((Project::find(conn, id, service)?, Variable::list(conn, id)?)))
            .await?;
        if project.is_none_or(|project| project.deleted_at.is_some()) {
            return Err(Status::not_found(NOT_FOUND));
        }
        Ok(Response::new(pb::DeploymentEnvironment {
            // For the runner holding a deployment only: secret values included.
            environment_variables: variables
                .into_iter()
                .map(|variable| pb::EnvironmentVariable {
                    name: variable.name,
                    value: variable.value,
                    secret: variable.secret,
                    update_time: Some(rpc::timestamp(variable.updated_at)),
                })
                .collect(),
        }))
    }
}
