//! What a member of an organisation may do: the permission each RPC
//! declares (`(capsule.auth.v1.permission)`, read from the descriptors) and
//! the permissions each role holds. The service that owns a project or an
//! organisation checks the caller against them; this module only says what
//! the rules are.

use std::{collections::HashMap, sync::OnceLock};

use prost_reflect::Value;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::proto::{self, project::v1::OrganizationRole};

/// A permission on a project or an organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    ProjectRead,
    ProjectCreate,
    ProjectSettingsWrite,
    ProjectVariablesWrite,
    ProjectSecretsWrite,
    ProjectDeploy,
    /// Running a command with the project's variables (RunCommand): more
    /// than deploying its own repository, so a scope of its own.
    ProjectRun,
    ProjectDelete,
    ProjectTransfer,
    OrganizationRead,
    OrganizationMembersWrite,
    AuditRead,
    WebhooksManage,
}

impl Permission {
    pub const ALL: [Self; 13] = [
        Self::ProjectRead,
        Self::ProjectCreate,
        Self::ProjectSettingsWrite,
        Self::ProjectVariablesWrite,
        Self::ProjectSecretsWrite,
        Self::ProjectDeploy,
        Self::ProjectRun,
        Self::ProjectDelete,
        Self::ProjectTransfer,
        Self::OrganizationRead,
        Self::OrganizationMembersWrite,
        Self::AuditRead,
        Self::WebhooksManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProjectRead => "project.read",
            Self::ProjectCreate => "project.create",
            Self::ProjectSettingsWrite => "project.settings.write",
            Self::ProjectVariablesWrite => "project.variables.write",
            Self::ProjectSecretsWrite => "project.secrets.write",
            Self::ProjectDeploy => "project.deploy",
            Self::ProjectRun => "project.run",
            Self::ProjectDelete => "project.delete",
            Self::ProjectTransfer => "project.transfer",
            Self::OrganizationRead => "organization.read",
            Self::OrganizationMembersWrite => "organization.members.write",
            Self::AuditRead => "audit.read",
            Self::WebhooksManage => "webhooks.manage",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|permission| permission.as_str() == value)
    }

    /// The least role that holds this permission.
    fn least_role(self) -> OrgRole {
        match self {
            Self::ProjectRead | Self::OrganizationRead => OrgRole::Viewer,
            Self::ProjectCreate
            | Self::ProjectSettingsWrite
            | Self::ProjectVariablesWrite
            | Self::ProjectDeploy
            | Self::ProjectRun => OrgRole::Developer,
            Self::ProjectSecretsWrite
            | Self::ProjectDelete
            | Self::ProjectTransfer
            | Self::OrganizationMembersWrite
            | Self::AuditRead
            | Self::WebhooksManage => OrgRole::Admin,
        }
    }

    /// PERMISSION_DENIED for a member without this permission, with a
    /// `google.rpc.ErrorInfo` (reason `PERMISSION_MISSING`, the permission
    /// in its metadata) that other services pass on as it is.
    pub fn denied(self, role: OrgRole) -> Status {
        let mut details = ErrorDetails::new();
        details.set_error_info(
            MISSING,
            "capsule.dev",
            [
                ("permission".to_owned(), self.as_str().to_owned()),
                ("role".to_owned(), role.as_str().to_owned()),
            ],
        );
        Status::with_error_details(
            Code::PermissionDenied,
            format!(
                "this needs the {} permission, which a {} of the organisation does not have; ask one of its admins",
                self.as_str(),
                role.as_str()
            ),
            details,
        )
    }

    /// The permission `path` (`/package.Service/Method`) declares.
    /// PERMISSION_DENIED for an API token whose `scopes` lack it.
    pub fn denied_to_token(self, scopes: &[Self]) -> Status {
        let names: Vec<&str> = scopes.iter().map(|scope| scope.as_str()).collect();
        let mut details = ErrorDetails::new();
        details.set_error_info(
            MISSING,
            "capsule.dev",
            [
                ("permission".to_owned(), self.as_str().to_owned()),
                ("scopes".to_owned(), names.join(",")),
            ],
        );
        Status::with_error_details(
            Code::PermissionDenied,
            format!(
                "this API token's scopes ({}) do not include {}, which this method needs",
                names.join(", "),
                self.as_str()
            ),
            details,
        )
    }

    pub fn of_method(path: &str) -> Option<Self> {
        permissions().get(path).copied()
    }

    /// The permission the method serving `request` declares (put in its
    /// extensions by [`crate::auth::AuthLayer`]): what its handler checks
    /// the caller's membership against.
    pub fn required<T>(request: &tonic::Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Self>()
            .copied()
            .ok_or_else(|| crate::rpc::internal("a method that checks a permission declares none in its proto"))
    }
}

const MISSING: &str = "PERMISSION_MISSING";

/// Whether `status` is a member's missing permission ([`Permission::denied`]),
/// not a refused credential.
pub fn is_missing_permission(status: &Status) -> bool {
    status.code() == Code::PermissionDenied
        && status
            .get_details_error_info()
            .is_some_and(|info| info.reason == MISSING)
}

/// A member's role in an organisation; each holds every permission of the
/// ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OrgRole {
    Viewer,
    Developer,
    Admin,
    Owner,
}

impl OrgRole {
    pub const ALL: [Self; 4] = [Self::Viewer, Self::Developer, Self::Admin, Self::Owner];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Developer => "developer",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == value)
    }

    pub fn grants(self, permission: Permission) -> bool {
        self >= permission.least_role()
    }

    /// PERMISSION_DENIED ([`Permission::denied`]) unless this role holds
    /// `permission`.
    pub fn require(self, permission: Permission) -> Result<(), Status> {
        if self.grants(permission) {
            Ok(())
        } else {
            Err(permission.denied(self))
        }
    }

    pub fn to_proto(self) -> OrganizationRole {
        match self {
            Self::Viewer => OrganizationRole::Viewer,
            Self::Developer => OrganizationRole::Developer,
            Self::Admin => OrganizationRole::Admin,
            Self::Owner => OrganizationRole::Owner,
        }
    }

    pub fn from_proto(role: OrganizationRole) -> Option<Self> {
        match role {
            OrganizationRole::Unspecified => None,
            OrganizationRole::Viewer => Some(Self::Viewer),
            OrganizationRole::Developer => Some(Self::Developer),
            OrganizationRole::Admin => Some(Self::Admin),
            OrganizationRole::Owner => Some(Self::Owner),
        }
    }
}

/// The permission of every Capsule RPC that declares one, by
/// `/package.Service/Method` path, read once from the descriptors.
pub fn permissions() -> &'static HashMap<String, Permission> {
    static PERMISSIONS: OnceLock<HashMap<String, Permission>> = OnceLock::new();
    PERMISSIONS.get_or_init(|| {
        let pool = proto::pool();
        let mut permissions = HashMap::new();
        for service in pool
            .services()
            .filter(|service| service.full_name().starts_with("capsule."))
        {
            for method in service.methods() {
                if let Some(declared) = declared_permission(&method) {
                    let path = format!("/{}/{}", service.full_name(), method.name());
                    // A name no role knows is a mistake in the protos:
                    // `tests/authorization.rs` fails on it; here the method
                    // stays closed to members (admins and owners only).
                    let permission = Permission::parse(&declared).unwrap_or(Permission::OrganizationMembersWrite);
                    permissions.insert(path, permission);
                }
            }
        }
        permissions
    })
}

/// The `(capsule.auth.v1.permission)` a method declares, as written.
pub fn declared_permission(method: &prost_reflect::MethodDescriptor) -> Option<String> {
    let extension = method
        .parent_pool()
        .get_extension_by_name("capsule.auth.v1.permission")?;
    match method.options().get_extension(&extension).as_ref() {
        Value::String(value) if !value.is_empty() => Some(value.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_holds_the_permissions_of_the_ones_before_it() {
        for permission in Permission::ALL {
            let holders: Vec<_> = OrgRole::ALL
                .into_iter()
                .filter(|role| role.grants(permission))
                .collect();
            assert!(holders.contains(&OrgRole::Owner), "{permission:?}");
            assert!(holders.windows(2).all(|pair| pair[0] < pair[1]));
            assert_eq!(Permission::parse(permission.as_str()), Some(permission));
        }
        assert!(!OrgRole::Viewer.grants(Permission::ProjectDeploy));
        assert!(OrgRole::Developer.grants(Permission::ProjectDeploy));
        assert!(!OrgRole::Developer.grants(Permission::ProjectSecretsWrite));
        assert!(OrgRole::Admin.grants(Permission::ProjectSecretsWrite));
    }

    #[test]
    fn a_denial_is_told_apart_from_a_refused_credential() {
        let denied = Permission::ProjectDeploy.denied(OrgRole::Viewer);
        assert!(is_missing_permission(&denied));
        assert!(denied.message().contains("project.deploy"));
        assert!(!is_missing_permission(&Status::permission_denied(
            "only a Capsule service may call this method"
        )));
    }

    #[test]
    fn methods_declare_their_permissions_in_the_protos() {
        assert_eq!(
            Permission::of_method("/capsule.project.v1.ProjectService/PrepareDeployment"),
            Some(Permission::ProjectDeploy)
        );
        assert_eq!(
            Permission::of_method("/capsule.project.v1.ProjectService/CreateOrganization"),
            None
        );
    }
}
