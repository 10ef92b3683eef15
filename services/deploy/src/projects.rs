//! The project service, as the deploy service asks it: on the caller's
//! behalf (may they read or deploy this project, or act in this
//! organisation), and as itself with the internal secret (a project's plan
//! and, for the runner holding a deployment, its variables). Its refusals
//! are passed on in its words; its failures become UNAVAILABLE.

use std::time::Duration;

use capsule::{
    auth::{Caller, OrgRole, Permission, is_missing_permission},
    proto::project::v1::{
        CheckOrganizationPermissionRequest, CheckProjectPermissionRequest, DeploymentPlan,
        GetDeploymentEnvironmentRequest, GetProjectRequest, PrepareDeploymentRequest,
    },
    rpc,
};
use tonic::{Code, Request, Status};
use uuid::Uuid;

use crate::state::DeployServiceApi;

/// The deadline of calls to the project service.
pub(crate) const PROJECT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl DeployServiceApi {
    /// A request to the project service on the caller's behalf.
    pub(crate) fn as_caller<T>(caller: &Caller, message: T) -> Result<Request<T>, Status> {
        caller.request(message, PROJECT_CALL_TIMEOUT)
    }

    /// The project service's answer, in this service's words.
    pub(crate) fn project_status(status: Status) -> Status {
        match status.code() {
            Code::NotFound | Code::FailedPrecondition | Code::InvalidArgument | Code::Unauthenticated => status,
            // A member without the permission: the project service's words.
            Code::PermissionDenied if is_missing_permission(&status) => status,
            Code::PermissionDenied => rpc::internal(format_args!(
                "the project service refused this service's credentials: {}",
                status.message()
            )),
            _ => Status::unavailable(format!(
                "the project service is unavailable ({}); retry shortly",
                status.message()
            )),
        }
    }

    /// Asks the project service, as the caller, whether the project exists
    /// and the caller may deploy it, and for the settings to snapshot (this
    /// call needs the internal secret).
    pub(crate) async fn prepare(&self, caller: &Caller, project_id: Uuid) -> Result<DeploymentPlan, Status> {
        let mut request = Self::as_caller(
            caller,
            PrepareDeploymentRequest {
                project_id: project_id.to_string(),
            },
        )?;
        self.as_service(&mut request)?;
        match self.inner.projects.clone().prepare_deployment(request).await {
            Ok(plan) => Ok(plan.into_inner()),
            Err(status) => Err(Self::project_status(status)),
        }
    }

    /// Adds the service credential to a request to the project service.
    pub(crate) fn as_service<T>(&self, request: &mut Request<T>) -> Result<(), Status> {
        let secret = self.inner.internal_secret.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "deployments are not enabled: set CAPSULE_INTERNAL_SECRET on project and deploy",
            )
        })?;
        capsule::auth::as_service(request, secret)
    }

    /// The project's variables and deploy key as they are now, for the
    /// runner that claimed one of its deployments: `Ok(None)` when the
    /// project is gone.
    pub(crate) async fn environment(
        &self,
        project_id: Uuid,
    ) -> Result<Option<capsule::proto::project::v1::DeploymentEnvironment>, Status> {
        let mut request = Request::new(GetDeploymentEnvironmentRequest {
            project_id: project_id.to_string(),
        });
        request.set_timeout(PROJECT_CALL_TIMEOUT);
        self.as_service(&mut request)?;
        match self.inner.projects.clone().get_deployment_environment(request).await {
            Ok(environment) => Ok(Some(environment.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(Self::project_status(status)),
        }
    }

    /// Whether the caller holds `permission` on the project: the project
    /// service's call (NOT_FOUND there is NOT_FOUND here, a member's
    /// missing permission is PERMISSION_DENIED). No settings, no secrets.
    pub(crate) async fn check_project(
        &self,
        caller: &Caller,
        permission: Permission,
        project_id: Uuid,
    ) -> Result<Option<Uuid>, Status> {
        if let Some(scope) = &caller.scope {
            scope.require(Some(permission))?;
        }
        if permission == Permission::ProjectRead {
            // GetProject declares project.read itself, and needs no
            // internal secret: reads work on a mesh without one.
            let request = Self::as_caller(
                caller,
                GetProjectRequest {
                    project_id: project_id.to_string(),
                },
            )?;
            return match self.inner.projects.clone().get_project(request).await {
                Ok(project) => Ok(project.get_ref().organization_id.parse().ok()),
                Err(status) => Err(Self::project_status(status)),
            };
        }
        let mut request = Self::as_caller(
            caller,
            CheckProjectPermissionRequest {
                project_id: project_id.to_string(),
                permission: permission.as_str().to_owned(),
            },
        )?;
        self.as_service(&mut request)?;
        match self.inner.projects.clone().check_project_permission(request).await {
            Ok(answer) if answer.get_ref().granted => Ok(answer.get_ref().organization_id.parse().ok()),
            Ok(answer) => {
                Err(permission.denied(OrgRole::from_proto(answer.get_ref().role()).unwrap_or(OrgRole::Viewer)))
            }
            Err(status) => Err(Self::project_status(status)),
        }
    }

    /// Whether the caller holds `permission` in the organisation, as the
    /// project service says.
    pub(crate) async fn check_organization(
        &self,
        caller: &Caller,
        permission: Permission,
        organization_id: Uuid,
    ) -> Result<(), Status> {
        if let Some(scope) = &caller.scope {
            scope.require(Some(permission))?;
        }
        let mut request = Self::as_caller(
            caller,
            CheckOrganizationPermissionRequest {
                organization_id: organization_id.to_string(),
                permission: permission.as_str().to_owned(),
            },
        )?;
        self.as_service(&mut request)?;
        match self.inner.projects.clone().check_organization_permission(request).await {
            Ok(answer) => match OrgRole::from_proto(answer.get_ref().role()) {
                Some(role) if role.grants(permission) => Ok(()),
                role => Err(permission.denied(role.unwrap_or(OrgRole::Viewer))),
            },
            Err(status) => Err(Self::project_status(status)),
        }
    }
}
