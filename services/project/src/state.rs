//! The project service's state, and who may do what to a project: the one
//! place that decides it, for every RPC (`authorize`, `member`).

use std::sync::Arc;

use capsule::{
    audit::{Actor, Event},
    auth::{Caller, OrgRole, Permission},
    db::{Batcher, Database},
    proto::auth::v1::auth_service_client::AuthServiceClient,
    trace::TracedChannel,
};
use tonic::{Request, Status};
use uuid::Uuid;

use crate::db::{Project, ProjectToCreate, Variable, Viewer, organizations};

pub const NOT_FOUND: &str = "no such project";

/// The project service's gRPC API.
#[derive(Clone)]
pub struct ProjectServiceApi {
    pub(crate) db: Arc<Database>,
    /// Lookups by id, batched while the connections are busy
    /// ([`Self::find_project`]).
    finds: Batcher<Uuid, Option<Project>>,
    /// CreateProject's inserts, batched the same way
    /// ([`Self::create_project`]).
    creates: Batcher<ProjectToCreate, Project>,
    /// The auth service, which mails invitations; `None` without the
    /// internal secret (then nobody can be invited).
    auth: Option<(AuthServiceClient<TracedChannel>, Arc<str>)>,
    /// The keys variables' values are sealed with.
    pub(crate) keys: Arc<capsule::crypto::Keyring>,
    /// The most a project's deployments may be given.
    pub(crate) maxima: Maxima,
}

/// One call as authorisation sees it: its caller, the permission its
/// method declares, and who acted from where, for the audit trail.
pub struct Call {
    pub caller: Caller,
    pub permission: Permission,
    pub actor: Actor,
}

impl Call {
    pub fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        Ok(Self {
            caller: Caller::of(request)?.clone(),
            permission: Permission::required(request)?,
            actor: Actor::of(request),
        })
    }

    /// An API token bound to one project: it may not list, create or act
    /// on anything else.
    pub fn bound_to_one_project(&self) -> Result<(), Status> {
        match self.caller.scope.as_ref().and_then(|scope| scope.project_id) {
            Some(project_id) => Err(Status::permission_denied(format!(
                "this API token may act on project {project_id} only"
            ))),
            None => Ok(()),
        }
    }

    /// The organisation whose own API token is calling, if one is: it
    /// acts there, where a person would act on their personal account.
    pub fn token_organization(&self) -> Option<Uuid> {
        self.caller.scope.as_ref().and_then(|scope| scope.organization_id)
    }

    /// A call that acts on the caller's personal account: not for an
    /// organisation's token, which has none.
    pub fn personal(&self) -> Result<(), Status> {
        self.bound_to_one_project()?;
        match self.token_organization() {
            Some(organization_id) => Err(Status::permission_denied(format!(
                "this is organization {organization_id}'s API token: it acts within that organization only"
            ))),
            None => Ok(()),
        }
    }

    /// The same caller asking for another permission.
    pub fn with(&self, permission: Permission) -> Self {
        Self {
            caller: self.caller.clone(),
            permission,
            actor: self.actor.clone(),
        }
    }
}

/// A project the caller may act on, and how.
pub struct Granted {
    pub project: Project,
    /// The caller's role in the owning organisation; `None` for the owner
    /// of a personal project or an admin, who hold every permission.
    pub role: Option<OrgRole>,
}

impl Granted {
    pub fn holds(&self, permission: Permission) -> bool {
        self.role.is_none_or(|role| role.grants(permission))
    }

    /// PERMISSION_DENIED unless the caller holds `permission` too.
    pub fn require(&self, permission: Permission) -> Result<(), Status> {
        self.role.map_or(Ok(()), |role| role.require(permission))
    }
}

pub fn viewer(caller: &Caller) -> Viewer {
    Viewer {
        user_id: caller.user_id,
        admin: caller.is_admin(),
    }
}

impl ProjectServiceApi {
    pub fn new(
        db: Database,
        auth: Option<(AuthServiceClient<TracedChannel>, Arc<str>)>,
        keys: Arc<capsule::crypto::Keyring>,
        maxima: Maxima,
    ) -> Self {
        Self {
            maxima,
            finds: Batcher::new(db.clone(), "project_by_id", Project::find_each),
            creates: Batcher::new(db.clone(), "project_create", Project::create_each),
            db: Arc::new(db),
            auth,
            keys,
        }
    }

    /// The project with this id, deleted or not, whoever owns it: one
    /// `Project::find_each` for every lookup queued meanwhile.
    pub async fn find_project(&self, id: Uuid) -> Result<Option<Project>, capsule::db::DbError> {
        self.finds.call(id).await
    }

    /// Inserts a project: one `Project::create_each` for every CreateProject
    /// queued meanwhile.
    pub async fn create_project(&self, project: ProjectToCreate) -> Result<Project, capsule::db::DbError> {
        self.creates.call(project).await
    }

    /// A project's variables with their values as given (see `vault`).
    pub fn reveal(&self, project_id: Uuid, variables: Vec<Variable>) -> Result<Vec<Variable>, Status> {
        crate::vault::reveal(&self.keys, project_id, variables)
    }

    /// The project if the caller may see it and holds the permission asked
    /// for (deleted ones included). NOT_FOUND when the caller may not see
    /// it at all, so ids of other people's projects reveal nothing;
    /// PERMISSION_DENIED, naming the permission, for a member without it.
    /// Membership is read at every call: a removed member is out at once.
    pub async fn authorize_deleted_too(&self, call: &Call, project_id: Uuid) -> Result<Granted, Status> {
        let project = self
            .find_project(project_id)
            .await?
            .ok_or_else(|| Status::not_found(NOT_FOUND))?;
        let caller = &call.caller;
        if caller.scope.as_ref().is_some_and(|scope| !scope.reaches(project.id)) {
            return Err(Status::not_found(NOT_FOUND));
        }
        if caller.is_admin() || project.owner_id == caller.user_id {
            return Ok(Granted { project, role: None });
        }
        let Some(organization_id) = project.organization_id else {
            return Err(Status::not_found(NOT_FOUND));
        };
        let role = self
            .role_of(organization_id, caller.user_id)
            .await?
            .ok_or_else(|| Status::not_found(NOT_FOUND))?;
        let granted = Granted {
            project,
            role: Some(role),
        };
        granted.require(call.permission)?;
        Ok(granted)
    }

    /// Like [`Self::authorize_deleted_too`], and not deleted: a deleted project is gone
    /// for every call but listing with `show_deleted` and undeleting it.
    /// Its owner is told how to bring it back.
    pub async fn authorize(&self, call: &Call, project_id: Uuid) -> Result<Granted, Status> {
        let granted = self.authorize_deleted_too(call, project_id).await?;
        if granted.project.deleted_at.is_some() {
            let until = granted
                .project
                .purge_after
                .map(|purge| format!(" until {}", purge.format("%Y-%m-%d %H:%M UTC")))
                .unwrap_or_default();
            return Err(Status::not_found(format!(
                "the project is deleted; UndeleteProject (POST /v1/projects/{project_id}:undelete) brings it back{until}"
            )));
        }
        Ok(granted)
    }

    pub async fn role_of(&self, organization_id: Uuid, user_id: Uuid) -> Result<Option<OrgRole>, Status> {
        Ok(self
            .db
            .run(move |conn| organizations::role_of(conn, organization_id, user_id))
            .await?)
    }

    /// The caller's role in an organisation, if it holds the permission
    /// asked for: NOT_FOUND for a non-member (admins see every
    /// organisation, as an owner), PERMISSION_DENIED for a member without
    /// it.
    ///
    /// An organisation's own API token counts as an admin there (the most
    /// any token can be: it never carries organization.members.write),
    /// bounded by its scopes, which the layer checked; anywhere else, and
    /// for a token bound to one project, the organisation does not exist.
    pub async fn member(&self, call: &Call, organization_id: Uuid) -> Result<OrgRole, Status> {
        if let Some(scope) = &call.caller.scope
            && (scope.project_id.is_some() || scope.organization_id.is_some())
        {
            return match scope.reaches_organization(organization_id) {
                true => Ok(OrgRole::Admin),
                false => Err(Status::not_found("no such organization")),
            };
        }
        let role = match self.role_of(organization_id, call.caller.user_id).await? {
            Some(role) => role,
            None if call.caller.is_admin() => OrgRole::Owner,
            None => return Err(Status::not_found("no such organization")),
        };
        role.require(call.permission)?;
        Ok(role)
    }

    /// Appends `event` to the audit trail, after the change it records has
    /// been made. A failure to record is logged as an error with the
    /// event; the change stands.
    pub async fn audit(&self, event: Event) {
        capsule::audit::append(&self.db, event).await;
    }

    /// The auth service, called with the internal secret.
    pub fn auth<T>(&self, message: T) -> Result<(AuthServiceClient<TracedChannel>, Request<T>), Status> {
        let (client, secret) = self.auth.clone().ok_or_else(|| {
            Status::failed_precondition(
                "invitations and organization API tokens are not enabled: set CAPSULE_INTERNAL_SECRET on auth and \
                 project",
            )
        })?;
        let mut request = Request::new(message);
        request.set_timeout(std::time::Duration::from_secs(5));
        capsule::auth::as_service(&mut request, &secret)?;
        Ok((client, request))
    }
}

/// An event about `project`, by the caller of `call`.
pub fn project_event(call: &Call, action: &'static str, project: &Project) -> Event {
    Event::new(&call.actor, action, format!("projects/{}", project.id))
        .organization(project.organization_id)
        .project(project.id)
}

/// An event about organisation `id` (and `below` it: `/members/<id>`).
pub fn org_event(actor: &Actor, action: &'static str, id: Uuid, below: String) -> Event {
    Event::new(actor, action, format!("organizations/{id}{below}")).organization(Some(id))
}

/// The most a project may ask for its deployments' share of a runner
/// (`ProjectSettings.resources`), set by the operator:
///
/// | variable | default |
/// |---|---|
/// | `PROJECT_MAX_MEMORY_MB` | `4096`: memory of a deployment's processes together |
/// | `PROJECT_MAX_CPUS` | `2`: CPU time, in CPUs (0.5: half of one) |
/// | `PROJECT_MAX_PROCESSES` | `4096`: processes and threads at once |
/// | `PROJECT_MAX_REPLICAS` | `4`: copies of a live app |
///
/// A setting above a maximum is refused when written, and a maximum
/// lowered later bounds the settings already stored when deployments are
/// prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maxima {
    pub memory_mb: u32,
    pub cpu_millis: u32,
    pub processes: u32,
    pub replicas: u32,
}

impl Default for Maxima {
    fn default() -> Self {
        Self {
            memory_mb: 4096,
            cpu_millis: 2000,
            processes: 4096,
            replicas: 4,
        }
    }
}

impl Maxima {
    pub fn from_source(source: &dyn capsule::config::Source) -> Result<Self, capsule::config::ConfigError> {
        use capsule::config::{ConfigError, parse_or, positive};
        let default = Self::default();
        let cpus = parse_or::<f64>(
            source,
            "PROJECT_MAX_CPUS",
            2.0,
            "expected a number of CPUs such as 2 or 0.5",
        )?;
        if !(0.1..=64.0).contains(&cpus) {
            return Err(ConfigError::invalid(
                "PROJECT_MAX_CPUS",
                &cpus.to_string(),
                "expected 0.1 to 64 CPUs",
            ));
        }
        Ok(Self {
            memory_mb: positive(source, "PROJECT_MAX_MEMORY_MB", default.memory_mb)?,
            cpu_millis: (cpus * 1000.0).round() as u32,
            processes: positive(source, "PROJECT_MAX_PROCESSES", default.processes)?,
            replicas: positive(source, "PROJECT_MAX_REPLICAS", default.replicas)?,
        })
    }

    /// `resources` within these maxima.
    pub fn bound(&self, resources: capsule::proto::project::v1::Resources) -> capsule::proto::project::v1::Resources {
        capsule::proto::project::v1::Resources {
            memory_mb: resources.memory_mb.min(self.memory_mb),
            cpu_millis: resources.cpu_millis.min(self.cpu_millis),
            processes: resources.processes.min(self.processes),
            replicas: resources.replicas.min(self.replicas),
        }
    }

    /// Each field of `resources` above its maximum, as a violation naming
    /// the maximum and the variable that sets it.
    pub fn check(
        &self,
        resources: &capsule::proto::project::v1::Resources,
        violations: &mut capsule::rpc::FieldViolations,
    ) {
        let over = [
            (
                "memory_mb",
                resources.memory_mb,
                self.memory_mb,
                format!("{} MiB", self.memory_mb),
                "PROJECT_MAX_MEMORY_MB",
            ),
            (
                "cpu_millis",
                resources.cpu_millis,
                self.cpu_millis,
                format!("{} thousandths of a CPU", self.cpu_millis),
                "PROJECT_MAX_CPUS",
            ),
            (
                "processes",
                resources.processes,
                self.processes,
                self.processes.to_string(),
                "PROJECT_MAX_PROCESSES",
            ),
            (
                "replicas",
                resources.replicas,
                self.replicas,
                self.replicas.to_string(),
                "PROJECT_MAX_REPLICAS",
            ),
        ];
        for (field, asked, most, said, variable) in over {
            if asked > most {
                violations.add(
                    format!("settings.resources.{field}"),
                    format!("must be at most {said}, this platform's maximum ({variable}); 0 takes the default"),
                );
            }
        }
    }
}
