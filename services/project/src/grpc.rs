//! The `capsule.project.v1.ProjectService` implementation: parse,
//! authorize (`api`), call the domain, convert.

use capsule::{
    auth::Permission,
    proto::{
        auth::v1::{
            ApiToken, CreateApiTokenResponse, ListApiTokensResponse, ListOrganizationApiTokensRequest,
            RevokeOrganizationApiTokenRequest,
        },
        project::v1::{self as pb, project_service_server::ProjectService},
    },
    rpc::{self, FieldViolations, PageToken},
};
use chrono::{Duration, Utc};
use diesel::OptionalExtension;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    api::{Ask, NOT_FOUND, ProjectServiceApi, viewer},
    convert::{plan_proto, project_proto, settings_proto, variable_proto},
    db::{Project, ProjectChanges, ProjectToCreate, Settings, SettingsChanges, Variable, VariableRefusal, Viewer},
    organizations, validate,
};

/// How long a soft-deleted project can be brought back.
pub const RETENTION_DAYS: i64 = 30;

fn slug_taken(slug: &str) -> Status {
    Status::already_exists(format!(
        "the owner already has a project with the slug {slug:?}; choose another"
    ))
}

fn refused(refusal: VariableRefusal, granted: &crate::api::Granted) -> Status {
    match refusal {
        VariableRefusal::Full => Status::failed_precondition(format!(
            "a project has at most {} environment variables; delete one first",
            validate::MAX_VARIABLES
        )),
        VariableRefusal::Secret => granted.role.map_or_else(
            || Status::internal("internal error"),
            |role| Permission::ProjectSecretsWrite.denied(role),
        ),
        VariableRefusal::NotFound => Status::not_found("no such environment variable"),
    }
}

#[tonic::async_trait]
impl ProjectService for ProjectServiceApi {
    async fn create_project(
        &self,
        request: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let ask = Ask::of(&request)?;
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
        let organization_id = (!wanted.organization_id.is_empty())
            .then(|| rpc::parse_id("project.organization_id", &wanted.organization_id, &mut violations));
        violations.check()?;
        ask.bound_to_one_project()?;
        // An organisation's token creates in its organisation.
        let organization_id = organization_id.or(ask.token_organization());
        match organization_id {
            Some(organization_id) => {
                self.member(&ask, organization_id).await?;
            }
            None => ask.personal()?,
        }
        let owner_id = organization_id.unwrap_or(ask.caller.user_id);
        let description = wanted.description;
        let created = self
            .creates
            .call(ProjectToCreate {
                name,
                description,
                owner_id,
                organization_id,
                slug: slug.clone(),
                slug_derived,
            })
            .await;
        match created {
            Ok(project) => {
                tracing::info!(project.id = %project.id, owner.id = %owner_id, user.id = %ask.caller.user_id, "project created");
                self.audit(Self::project_event(&ask, "project.create", &project).detail("slug", &project.slug))
                    .await;
                Ok(Response::new(project_proto(&project)))
            }
            Err(err) if err.is_unique_violation(None) => Err(slug_taken(&slug)),
            Err(err) => Err(err.into()),
        }
    }

    async fn get_project(&self, request: Request<pb::GetProjectRequest>) -> Result<Response<pb::Project>, Status> {
        let ask = Ask::of(&request)?;
        let id = Self::parse_id("project_id", &request.get_ref().project_id)?;
        Ok(Response::new(project_proto(&self.live(&ask, id).await?.project)))
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let ask = Ask::of(&request)?;
        ask.bound_to_one_project()?;
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let limit = rpc::page_size(body.page_size, 20, 100, &mut violations);
        let after = PageToken::decode(&body.page_token, &mut violations);
        let organization_id = (!body.organization_id.is_empty())
            .then(|| rpc::parse_id("organization_id", &body.organization_id, &mut violations));
        violations.check()?;
        let viewer = match organization_id.or(ask.token_organization()) {
            // An organisation's projects are those it owns.
            Some(organization_id) => {
                self.member(&ask, organization_id).await?;
                Viewer {
                    user_id: organization_id,
                    admin: false,
                }
            }
            None => viewer(&ask.caller),
        };
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
        let ask = Ask::of(&request)?;
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
        let current = self.live(&ask, id).await?.project;
        // An empty slug is derived from the name, as when creating.
        if changes.slug.as_deref() == Some("") {
            changes.slug = Some(validate::slug_from(changes.name.as_deref().unwrap_or(&current.name)));
        }
        let slug = changes.slug.clone().unwrap_or_default();
        match self.db.run(move |conn| Project::update(conn, id, &changes)).await {
            Ok(project) => {
                self.audit(Self::project_event(&ask, "project.update", &project).detail("fields", paths.join(",")))
                    .await;
                Ok(Response::new(project_proto(&project)))
            }
            Err(err) if err.is_unique_violation(None) => Err(slug_taken(&slug)),
            Err(err) => Err(err.into()),
        }
    }

    async fn delete_project(
        &self,
        request: Request<pb::DeleteProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let ask = Ask::of(&request)?;
        let id = Self::parse_id("project_id", &request.get_ref().project_id)?;
        self.live(&ask, id).await?;
        let purge_after = Utc::now() + Duration::days(RETENTION_DAYS);
        let project = self
            .db
            .run(move |conn| Project::soft_delete(conn, id, purge_after))
            .await?;
        tracing::info!(project.id = %id, user.id = %ask.caller.user_id, "project deleted");
        self.audit(Self::project_event(&ask, "project.delete", &project)).await;
        Ok(Response::new(project_proto(&project)))
    }

    async fn undelete_project(
        &self,
        request: Request<pb::UndeleteProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let ask = Ask::of(&request)?;
        let id = Self::parse_id("project_id", &request.get_ref().project_id)?;
        let project = self.visible(&ask, id).await?.project;
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
            Ok(project) => {
                self.audit(Self::project_event(&ask, "project.undelete", &project))
                    .await;
                Ok(Response::new(project_proto(&project)))
            }
            Err(err) if err.is_unique_violation(None) => Err(Status::already_exists(format!(
                "another project of its owner now uses the slug {slug:?}; change its slug first"
            ))),
            Err(err) => Err(err.into()),
        }
    }

    async fn get_project_settings(
        &self,
        request: Request<pb::GetProjectSettingsRequest>,
    ) -> Result<Response<pb::ProjectSettings>, Status> {
        let ask = Ask::of(&request)?;
        let id = Self::parse_id("project_id", &request.get_ref().project_id)?;
        self.live(&ask, id).await?;
        let (settings, variables) = self
            .db
            .run(move |conn| Ok((Settings::get(conn, id)?, Variable::list(conn, id)?)))
            .await?;
        Ok(Response::new(settings_proto(&settings, &self.reveal(id, variables)?)))
    }

    async fn update_project_settings(
        &self,
        request: Request<pb::UpdateProjectSettingsRequest>,
    ) -> Result<Response<pb::ProjectSettings>, Status> {
        let ask = Ask::of(&request)?;
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
        let granted = self.live(&ask, id).await?;
        let (settings, variables) = self
            .db
            .run(move |conn| Ok((Settings::update(conn, id, &changes)?, Variable::list(conn, id)?)))
            .await?;
        self.audit(
            Self::project_event(&ask, "project.settings.update", &granted.project).detail("fields", paths.join(",")),
        )
        .await;
        Ok(Response::new(settings_proto(&settings, &self.reveal(id, variables)?)))
    }

    async fn set_environment_variable(
        &self,
        request: Request<pb::SetEnvironmentVariableRequest>,
    ) -> Result<Response<pb::EnvironmentVariable>, Status> {
        let ask = Ask::of(&request)?;
        let body = request.into_inner();
        let variable = body.variable.unwrap_or_default();
        let mut violations = FieldViolations::new();
        // The rules in the protos checked the name and the value's size.
        let id = rpc::parse_id("project_id", &body.project_id, &mut violations);
        violations.check()?;
        let granted = self.live(&ask, id).await?;
        let secrets = granted.holds(Permission::ProjectSecretsWrite);
        let (name, secret) = (variable.name.clone(), variable.secret);
        let (sealed, key_id) = crate::vault::seal(&self.keys, id, &name, &variable.value)?;
        let mut saved = self
            .db
            .run(move |conn| Variable::set(conn, id, &name, (&sealed, &key_id), secret, secrets))
            .await?
            .map_err(|refusal| refused(refusal, &granted))?;
        saved.value = variable.value;
        tracing::info!(project.id = %id, variable.name = %saved.name, variable.secret = saved.secret, "environment variable set");
        self.audit(
            Self::project_event(&ask, "project.variable.set", &granted.project)
                .detail("name", &saved.name)
                .detail("secret", saved.secret),
        )
        .await;
        Ok(Response::new(variable_proto(&saved)))
    }

    async fn delete_environment_variable(
        &self,
        request: Request<pb::DeleteEnvironmentVariableRequest>,
    ) -> Result<Response<pb::DeleteEnvironmentVariableResponse>, Status> {
        let ask = Ask::of(&request)?;
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let id = rpc::parse_id("project_id", &body.project_id, &mut violations);
        violations.check()?;
        let granted = self.live(&ask, id).await?;
        let secrets = granted.holds(Permission::ProjectSecretsWrite);
        let name = body.name;
        let removed = name.clone();
        self.db
            .run(move |conn| Variable::remove(conn, id, &name, secrets))
            .await?
            .map_err(|refusal| refused(refusal, &granted))?;
        self.audit(Self::project_event(&ask, "project.variable.delete", &granted.project).detail("name", removed))
            .await;
        Ok(Response::new(pb::DeleteEnvironmentVariableResponse {}))
    }

    async fn prepare_deployment(
        &self,
        request: Request<pb::PrepareDeploymentRequest>,
    ) -> Result<Response<pb::DeploymentPlan>, Status> {
        let ask = Ask::of(&request)?;
        let id = Self::parse_id("project_id", &request.get_ref().project_id)?;
        let project = self.live(&ask, id).await?.project;
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
        let id = Self::parse_id("project_id", &request.get_ref().project_id)?;
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
        let ask = Ask::of(&request)?;
        let id = Self::parse_id("project_id", &request.get_ref().project_id)?;
        let granted = self.live(&ask, id).await?;
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|_| Status::unavailable("no randomness available; retry"))?;
        let secret: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let stored = secret.clone();
        self.db
            .run(move |conn| Settings::set_webhook_secret(conn, id, &stored))
            .await?;
        tracing::info!(project.id = %id, user.id = %ask.caller.user_id, "webhook secret rotated");
        self.audit(Self::project_event(
            &ask,
            "project.webhook_secret.rotate",
            &granted.project,
        ))
        .await;
        Ok(Response::new(pb::RotateWebhookSecretResponse {
            webhook_secret: secret,
        }))
    }

    async fn get_deployment_environment(
        &self,
        request: Request<pb::GetDeploymentEnvironmentRequest>,
    ) -> Result<Response<pb::DeploymentEnvironment>, Status> {
        let id = Self::parse_id("project_id", &request.get_ref().project_id)?;
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
            environment_variables: self
                .reveal(id, variables)?
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
    async fn transfer_project(
        &self,
        request: Request<pb::TransferProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        organizations::transfer_project(self, request).await
    }

    async fn check_project_permission(
        &self,
        request: Request<pb::CheckProjectPermissionRequest>,
    ) -> Result<Response<pb::CheckProjectPermissionResponse>, Status> {
        organizations::check_project_permission(self, request).await
    }

    async fn check_organization_permission(
        &self,
        request: Request<pb::CheckOrganizationPermissionRequest>,
    ) -> Result<Response<pb::CheckOrganizationPermissionResponse>, Status> {
        organizations::check_organization_permission(self, request).await
    }

    async fn create_organization(
        &self,
        request: Request<pb::CreateOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        organizations::create(self, request).await
    }

    async fn get_organization(
        &self,
        request: Request<pb::GetOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        organizations::get(self, request).await
    }

    async fn list_organizations(
        &self,
        request: Request<pb::ListOrganizationsRequest>,
    ) -> Result<Response<pb::ListOrganizationsResponse>, Status> {
        organizations::list(self, request).await
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        organizations::list_members(self, request).await
    }

    async fn invite_member(
        &self,
        request: Request<pb::InviteMemberRequest>,
    ) -> Result<Response<pb::Invitation>, Status> {
        organizations::invite(self, request).await
    }

    async fn accept_invitation(
        &self,
        request: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        organizations::accept(self, request).await
    }

    async fn list_invitations(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<pb::ListInvitationsResponse>, Status> {
        organizations::list_invitations(self, request).await
    }

    async fn delete_invitation(
        &self,
        request: Request<pb::DeleteInvitationRequest>,
    ) -> Result<Response<pb::DeleteInvitationResponse>, Status> {
        organizations::delete_invitation(self, request).await
    }

    async fn update_member(&self, request: Request<pb::UpdateMemberRequest>) -> Result<Response<pb::Member>, Status> {
        organizations::update_member(self, request).await
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        organizations::remove_member(self, request).await
    }

    async fn create_organization_api_token(
        &self,
        request: Request<pb::CreateOrganizationApiTokenRequest>,
    ) -> Result<Response<CreateApiTokenResponse>, Status> {
        crate::tokens::create(self, request).await
    }

    async fn list_organization_api_tokens(
        &self,
        request: Request<ListOrganizationApiTokensRequest>,
    ) -> Result<Response<ListApiTokensResponse>, Status> {
        crate::tokens::list(self, request).await
    }

    async fn revoke_organization_api_token(
        &self,
        request: Request<RevokeOrganizationApiTokenRequest>,
    ) -> Result<Response<ApiToken>, Status> {
        crate::tokens::revoke(self, request).await
    }

    async fn list_audit_events(
        &self,
        request: Request<capsule::proto::audit::v1::ListAuditEventsRequest>,
    ) -> Result<Response<capsule::proto::audit::v1::ListAuditEventsResponse>, Status> {
        crate::trail::list_audit_events(self, request).await
    }
}
