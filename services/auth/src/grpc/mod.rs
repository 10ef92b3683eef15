//! The `capsule.auth.v1.AuthService` implementation: one line per RPC,
//! handing it to the module of its resource. The service's state and what
//! every handler shares are in [`crate::state`]; conversions in
//! [`crate::convert`], sign-in throttling in [`crate::throttle`].

mod accounts;
mod admin;
mod email;
mod profile;
mod sessions;
mod tokens;
mod trail;

use capsule::proto::auth::v1::{self as pb, auth_service_server::AuthService};
use tonic::{Request, Response, Status};

use crate::state::AuthServiceApi;

#[tonic::async_trait]
impl AuthService for AuthServiceApi {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        accounts::register(self, request).await
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        accounts::login(self, request).await
    }

    async fn refresh(&self, request: Request<pb::RefreshRequest>) -> Result<Response<pb::RefreshResponse>, Status> {
        sessions::refresh(self, request).await
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        sessions::logout(self, request).await
    }

    async fn logout_all(
        &self,
        request: Request<pb::LogoutAllRequest>,
    ) -> Result<Response<pb::LogoutAllResponse>, Status> {
        sessions::logout_all(self, request).await
    }

    async fn get_me(&self, request: Request<pb::GetMeRequest>) -> Result<Response<pb::User>, Status> {
        profile::get_me(self, request).await
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::Profile>, Status> {
        profile::update_profile(self, request).await
    }

    async fn get_public_profile(
        &self,
        request: Request<pb::GetPublicProfileRequest>,
    ) -> Result<Response<pb::PublicProfile>, Status> {
        profile::get_public_profile(self, request).await
    }

    async fn get_preferences(
        &self,
        request: Request<pb::GetPreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        profile::get_preferences(self, request).await
    }

    async fn update_preferences(
        &self,
        request: Request<pb::UpdatePreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        profile::update_preferences(self, request).await
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        accounts::change_password(self, request).await
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        sessions::list_sessions(self, request).await
    }

    async fn send_verification_email(
        &self,
        request: Request<pb::SendVerificationEmailRequest>,
    ) -> Result<Response<pb::SendVerificationEmailResponse>, Status> {
        email::send_verification_email(self, request).await
    }

    async fn verify_email(
        &self,
        request: Request<pb::VerifyEmailRequest>,
    ) -> Result<Response<pb::VerifyEmailResponse>, Status> {
        email::verify_email(self, request).await
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
        email::request_password_reset(self, request).await
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        email::reset_password(self, request).await
    }

    async fn get_jwks(&self, _request: Request<pb::GetJwksRequest>) -> Result<Response<pb::Jwks>, Status> {
        sessions::get_jwks(self, _request).await
    }

    async fn check_session(
        &self,
        request: Request<pb::CheckSessionRequest>,
    ) -> Result<Response<pb::SessionStanding>, Status> {
        sessions::check_session(self, request).await
    }

    async fn get_user_status(
        &self,
        request: Request<pb::GetUserStatusRequest>,
    ) -> Result<Response<pb::UserStatus>, Status> {
        accounts::get_user_status(self, request).await
    }

    async fn create_api_token(
        &self,
        request: Request<pb::CreateApiTokenRequest>,
    ) -> Result<Response<pb::CreateApiTokenResponse>, Status> {
        tokens::create_api_token(self, request).await
    }

    async fn list_api_tokens(
        &self,
        request: Request<pb::ListApiTokensRequest>,
    ) -> Result<Response<pb::ListApiTokensResponse>, Status> {
        tokens::list_api_tokens(self, request).await
    }

    async fn revoke_api_token(
        &self,
        request: Request<pb::RevokeApiTokenRequest>,
    ) -> Result<Response<pb::ApiToken>, Status> {
        tokens::revoke_api_token(self, request).await
    }

    async fn issue_organization_api_token(
        &self,
        request: Request<pb::IssueOrganizationApiTokenRequest>,
    ) -> Result<Response<pb::CreateApiTokenResponse>, Status> {
        tokens::issue_organization_api_token(self, request).await
    }

    async fn list_organization_api_tokens(
        &self,
        request: Request<pb::ListOrganizationApiTokensRequest>,
    ) -> Result<Response<pb::ListApiTokensResponse>, Status> {
        tokens::list_organization_api_tokens(self, request).await
    }

    async fn revoke_organization_api_token(
        &self,
        request: Request<pb::RevokeOrganizationApiTokenRequest>,
    ) -> Result<Response<pb::ApiToken>, Status> {
        tokens::revoke_organization_api_token(self, request).await
    }

    async fn check_api_token(
        &self,
        request: Request<pb::CheckApiTokenRequest>,
    ) -> Result<Response<pb::ApiTokenGrant>, Status> {
        tokens::check_api_token(self, request).await
    }

    async fn send_invitation_email(
        &self,
        request: Request<pb::SendInvitationEmailRequest>,
    ) -> Result<Response<pb::SendInvitationEmailResponse>, Status> {
        email::send_invitation_email(self, request).await
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        admin::list_users(self, request).await
    }

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        admin::get_user(self, request).await
    }

    async fn set_role(&self, request: Request<pb::SetRoleRequest>) -> Result<Response<pb::User>, Status> {
        admin::set_role(self, request).await
    }

    async fn deactivate_user(&self, request: Request<pb::DeactivateUserRequest>) -> Result<Response<pb::User>, Status> {
        admin::deactivate_user(self, request).await
    }

    async fn reactivate_user(&self, request: Request<pb::ReactivateUserRequest>) -> Result<Response<pb::User>, Status> {
        admin::reactivate_user(self, request).await
    }

    async fn list_audit_events(
        &self,
        request: Request<capsule::proto::audit::v1::ListAuditEventsRequest>,
    ) -> Result<Response<capsule::proto::audit::v1::ListAuditEventsResponse>, Status> {
        trail::list_audit_events(self, request).await
    }
}
