//! The four services and the names derived from each.

use std::{fmt, str::FromStr};

/// One of the four Capsule services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKind {
    Auth,
    Project,
    Deploy,
    Gateway,
}

impl ServiceKind {
    /// All four, in start-up order.
    pub const ALL: [ServiceKind; 4] = [Self::Auth, Self::Project, Self::Deploy, Self::Gateway];
    /// The three that own a database.
    pub const WITH_DATABASE: [ServiceKind; 3] = [Self::Auth, Self::Project, Self::Deploy];

    /// Lowercase name, as used on the command line and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Project => "project",
            Self::Deploy => "deploy",
            Self::Gateway => "gateway",
        }
    }

    /// Prefix of the service's environment variables.
    pub fn env_prefix(self) -> &'static str {
        match self {
            Self::Auth => "AUTH",
            Self::Project => "PROJECT",
            Self::Deploy => "DEPLOY",
            Self::Gateway => "GATEWAY",
        }
    }

    /// The fully-qualified name of the service's gRPC API.
    pub fn grpc_service_name(self) -> &'static str {
        match self {
            Self::Auth => "capsule.auth.v1.AuthService",
            Self::Project => "capsule.project.v1.ProjectService",
            Self::Deploy => "capsule.deploy.v1.DeployService",
            Self::Gateway => "capsule.gateway.v1.GatewayService",
        }
    }

    /// The gRPC packages a process that serves only this service answers:
    /// its own, and `capsule.admin.v1` (every service that owns a database
    /// mounts `DatabaseAdmin`, `GrpcServer::serve_with_database`); `None`
    /// for the gateway, which routes and transcodes every package.
    pub fn served_packages(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Auth => Some(&["capsule.auth.v1", "capsule.admin.v1"]),
            Self::Project => Some(&["capsule.project.v1", "capsule.admin.v1"]),
            Self::Deploy => Some(&["capsule.deploy.v1", "capsule.admin.v1"]),
            Self::Gateway => None,
        }
    }

    /// The default gRPC port (DESIGN.md).
    pub fn default_grpc_port(self) -> u16 {
        match self {
            Self::Gateway => 50050,
            Self::Auth => 50051,
            Self::Project => 50052,
            Self::Deploy => 50053,
        }
    }

    /// The variable that holds the service's gRPC listen address.
    pub fn grpc_addr_variable(self) -> String {
        format!("{}_GRPC_ADDR", self.env_prefix())
    }

    /// The variable other services read to find this one.
    pub fn service_url_variable(self) -> String {
        format!("{}_SERVICE_URL", self.env_prefix())
    }

    /// Default database name and role, after the original design.
    pub fn default_database_name(self) -> String {
        format!("usecapsule_{}", self.name())
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ServiceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| format!("unknown service {s:?}: expected auth, project, deploy or gateway"))
    }
}
