//! The `capsule.project.v1.ProjectService` implementation: one line per
//! RPC, handing it to the module of its resource. Each handler parses its
//! request (ids once, with `rpc::require_id`), authorises it through
//! [`crate::state`], calls the database (`crate::db`) and converts the rows
//! (`crate::convert`).

mod members;
mod organizations;
mod permissions;
mod plans;
mod projects;
mod settings;
mod tokens;
mod trail;
mod variables;

use capsule::proto::{
    audit::v1 as audit_pb,
    auth::v1 as auth_pb,
    project::v1::{self as pb, project_service_server::ProjectService},
};
use tonic::{Request, Response, Status};

use crate::state::ProjectServiceApi;

pub use projects::RETENTION_DAYS;

#[tonic::async_trait]
impl ProjectService for ProjectServiceApi {
    async fn create_project(
        &self,
        request: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        projects::create_project(self, request).await
    }

    async fn get_project(&self, request: Request<pb::GetProjectRequest>) -> Result<Response<pb::Project>, Status> {
        projects::get_project(self, request).await
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        projects::list_projects(self, request).await
    }

    async fn update_project(
        &self,
        request: Request<pb::UpdateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        projects::update_project(self, request).await
    }

    async fn delete_project(
        &self,
        request: Request<pb::DeleteProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        projects::delete_project(self, request).await
    }

    async fn undelete_project(
        &self,
        request: Request<pb::UndeleteProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        projects::undelete_project(self, request).await
    }

    async fn get_project_settings(
        &self,
        request: Request<pb::GetProjectSettingsRequest>,
    ) -> Result<Response<pb::ProjectSettings>, Status> {
        settings::get_project_settings(self, request).await
    }

    async fn update_project_settings(
        &self,
        request: Request<pb::UpdateProjectSettingsRequest>,
    ) -> Result<Response<pb::ProjectSettings>, Status> {
        settings::update_project_settings(self, request).await
    }

    async fn set_environment_variable(
        &self,
        request: Request<pb::SetEnvironmentVariableRequest>,
    ) -> Result<Response<pb::EnvironmentVariable>, Status> {
        variables::set_environment_variable(self, request).await
    }

    async fn delete_environment_variable(
        &self,
        request: Request<pb::DeleteEnvironmentVariableRequest>,
    ) -> Result<Response<pb::DeleteEnvironmentVariableResponse>, Status> {
        variables::delete_environment_variable(self, request).await
    }

    async fn prepare_deployment(
        &self,
        request: Request<pb::PrepareDeploymentRequest>,
    ) -> Result<Response<pb::DeploymentPlan>, Status> {
        plans::prepare_deployment(self, request).await
    }

    async fn list_auto_deploy_projects(
        &self,
        request: Request<pb::ListAutoDeployProjectsRequest>,
    ) -> Result<Response<pb::ListAutoDeployProjectsResponse>, Status> {
        plans::list_auto_deploy_projects(self, request).await
    }

    async fn get_push_target(
        &self,
        request: Request<pb::GetPushTargetRequest>,
    ) -> Result<Response<pb::PushTarget>, Status> {
        plans::get_push_target(self, request).await
    }

    async fn get_deploy_key(
        &self,
        request: Request<pb::GetDeployKeyRequest>,
    ) -> Result<Response<pb::DeployKey>, Status> {
        settings::get_deploy_key(self, request).await
    }

    async fn rotate_deploy_key(
        &self,
        request: Request<pb::RotateDeployKeyRequest>,
    ) -> Result<Response<pb::DeployKey>, Status> {
        settings::rotate_deploy_key(self, request).await
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        settings::rotate_webhook_secret(self, request).await
    }

    async fn get_deployment_environment(
        &self,
        request: Request<pb::GetDeploymentEnvironmentRequest>,
    ) -> Result<Response<pb::DeploymentEnvironment>, Status> {
        plans::get_deployment_environment(self, request).await
    }

    async fn transfer_project(
        &self,
        request: Request<pb::TransferProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        projects::transfer_project(self, request).await
    }

    async fn check_project_permission(
        &self,
        request: Request<pb::CheckProjectPermissionRequest>,
    ) -> Result<Response<pb::CheckProjectPermissionResponse>, Status> {
        permissions::check_project_permission(self, request).await
    }

    async fn check_organization_permission(
        &self,
        request: Request<pb::CheckOrganizationPermissionRequest>,
    ) -> Result<Response<pb::CheckOrganizationPermissionResponse>, Status> {
        permissions::check_organization_permission(self, request).await
    }

    async fn create_organization(
        &self,
        request: Request<pb::CreateOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        organizations::create_organization(self, request).await
    }

    async fn get_organization(
        &self,
        request: Request<pb::GetOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        organizations::get_organization(self, request).await
    }

    async fn list_organizations(
        &self,
        request: Request<pb::ListOrganizationsRequest>,
    ) -> Result<Response<pb::ListOrganizationsResponse>, Status> {
        organizations::list_organizations(self, request).await
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        members::list_members(self, request).await
    }

    async fn invite_member(
        &self,
        request: Request<pb::InviteMemberRequest>,
    ) -> Result<Response<pb::Invitation>, Status> {
        members::invite_member(self, request).await
    }

    async fn accept_invitation(
        &self,
        request: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        members::accept_invitation(self, request).await
    }

    async fn list_invitations(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<pb::ListInvitationsResponse>, Status> {
        members::list_invitations(self, request).await
    }

    async fn delete_invitation(
        &self,
        request: Request<pb::DeleteInvitationRequest>,
    ) -> Result<Response<pb::DeleteInvitationResponse>, Status> {
        members::delete_invitation(self, request).await
    }

    async fn update_member(&self, request: Request<pb::UpdateMemberRequest>) -> Result<Response<pb::Member>, Status> {
        members::update_member(self, request).await
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        members::remove_member(self, request).await
    }

    async fn create_organization_api_token(
        &self,
        request: Request<pb::CreateOrganizationApiTokenRequest>,
    ) -> Result<Response<auth_pb::CreateApiTokenResponse>, Status> {
        tokens::create_organization_api_token(self, request).await
    }

    async fn list_organization_api_tokens(
        &self,
        request: Request<auth_pb::ListOrganizationApiTokensRequest>,
    ) -> Result<Response<auth_pb::ListApiTokensResponse>, Status> {
        tokens::list_organization_api_tokens(self, request).await
    }

    async fn revoke_organization_api_token(
        &self,
        request: Request<auth_pb::RevokeOrganizationApiTokenRequest>,
    ) -> Result<Response<auth_pb::ApiToken>, Status> {
        tokens::revoke_organization_api_token(self, request).await
    }

    async fn list_audit_events(
        &self,
        request: Request<audit_pb::ListAuditEventsRequest>,
    ) -> Result<Response<audit_pb::ListAuditEventsResponse>, Status> {
        trail::list_audit_events(self, request).await
    }
}
