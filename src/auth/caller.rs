//! Who may call what, and who is calling: access levels from the
//! descriptors, roles, claims and the verified caller.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use prost_reflect::Value;
use tonic::Status;
use uuid::Uuid;

use super::Permission;
use crate::proto::{self};

/// Who may call an RPC (`capsule.auth.v1.Access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Unspecified,
    Public,
    Authenticated,
    Admin,
    Runner,
    Internal,
    Service,
}

impl Access {
    fn from_number(number: i32) -> Self {
        match number {
            1 => Self::Public,
            2 => Self::Authenticated,
            3 => Self::Admin,
            4 => Self::Runner,
            5 => Self::Internal,
            6 => Self::Service,
            _ => Self::Unspecified,
        }
    }
}

/// The access level of every Capsule RPC, by `/package.Service/Method`
/// path, read once from the descriptors.
pub fn policies() -> &'static HashMap<String, Access> {
    static POLICIES: OnceLock<HashMap<String, Access>> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let pool = proto::pool();
        let mut policies = HashMap::new();
        for service in pool
            .services()
            .filter(|service| service.full_name().starts_with("capsule."))
        {
            for method in service.methods() {
                policies.insert(
                    format!("/{}/{}", service.full_name(), method.name()),
                    method_access(&method),
                );
            }
        }
        policies
    })
}

/// The `(capsule.auth.v1.access)` level a method declares in its own
/// descriptor pool; `Unspecified` when it declares none.
pub fn method_access(method: &prost_reflect::MethodDescriptor) -> Access {
    let Some(extension) = method.parent_pool().get_extension_by_name("capsule.auth.v1.access") else {
        return Access::Unspecified;
    };
    match method.options().get_extension(&extension).as_ref() {
        Value::EnumNumber(number) => Access::from_number(*number),
        _ => Access::Unspecified,
    }
}

/// A role in a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Admin,
    /// A build runner.
    Runner,
    /// Another Capsule service.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
            Self::Runner => "runner",
            Self::Service => "service",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "user" => Some(Self::User),
            "admin" => Some(Self::Admin),
            "runner" => Some(Self::Runner),
            "service" => Some(Self::Service),
            _ => None,
        }
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
}

/// The verified caller of a request, in its extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user; for an organisation's API token, the organisation (which
    /// owns its projects as a user owns theirs); for a runner, the
    /// runner's id; nil for a service.
    pub user_id: Uuid,
    pub role: Role,
    pub session_id: Uuid,
    /// The bearer token, to pass on to other services on the caller's
    /// behalf. Never logged.
    pub(super) token: Arc<str>,
    /// Set when the caller is an API token: what it may do.
    pub scope: Option<Arc<TokenScope>>,
}

/// What an API token may do: the permissions it carries, on one project or
/// on whatever its user (or organisation) may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenScope {
    pub token_id: Uuid,
    pub permissions: Vec<Permission>,
    pub project_id: Option<Uuid>,
    /// Set for an organisation's token: it acts as that organisation, on
    /// its projects only.
    pub organization_id: Option<Uuid>,
}

impl TokenScope {
    /// Whether a call needing `permission` (none: a call that acts on no
    /// project, such as managing the account) is within the scope.
    pub fn covers(&self, permission: Option<Permission>) -> bool {
        permission.is_some_and(|permission| self.permissions.contains(&permission))
    }

    /// PERMISSION_DENIED, naming what is missing, unless the scopes cover
    /// `permission` (none: a call that acts on no project or organisation).
    pub fn require(&self, permission: Option<Permission>) -> Result<(), Status> {
        match permission {
            _ if self.covers(permission) => Ok(()),
            Some(permission) => Err(permission.denied_to_token(&self.permissions)),
            None => Err(Status::permission_denied(
                "an API token cannot call this method: only methods that act on a project or an organisation, within \
                 its scopes",
            )),
        }
    }

    /// Whether the token may act on `project_id`.
    pub fn reaches(&self, project_id: Uuid) -> bool {
        self.project_id.is_none_or(|only| only == project_id)
    }

    /// Whether the token may act on organisation `organization_id` as a
    /// whole: an organisation's own token, not bound to one project.
    pub fn reaches_organization(&self, organization_id: Uuid) -> bool {
        self.project_id.is_none() && self.organization_id == Some(organization_id)
    }
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The registered runner making the call, for the runner API.
    pub fn runner_id(&self) -> Option<Uuid> {
        (self.role == Role::Runner).then_some(self.user_id)
    }

    /// The `authorization` header value that calls another service as this
    /// caller.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// A request to another service on this caller's behalf, with its own
    /// deadline.
    pub fn request<T>(&self, message: T, deadline: std::time::Duration) -> Result<tonic::Request<T>, Status> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(deadline);
        request.metadata_mut().insert(
            "authorization",
            self.authorization()
                .parse()
                .map_err(|_| Status::unauthenticated("the access token is not a valid header value"))?,
        );
        Ok(request)
    }

    /// PERMISSION_DENIED for an API token: what only a person signed in
    /// with a password may do (`what`, such as "manage API tokens").
    pub fn in_person(&self, what: &str) -> Result<(), Status> {
        match self.scope {
            Some(_) => Err(Status::permission_denied(format!(
                "an API token cannot {what}: sign in with your password"
            ))),
            None => Ok(()),
        }
    }

    /// The caller of a request that passed [`AuthLayer`]; UNAUTHENTICATED
    /// when there is none (a public method, or no layer).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
        request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::unauthenticated("sign in first: send `authorization: Bearer <access token>`"))
    }
}
