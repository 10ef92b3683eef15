//! The `capsule.project.v1.ProjectService` implementation: parse, authorize, call the
//! domain, convert. RPCs not written yet answer UNIMPLEMENTED.

use capsule::{db::Database, proto::project::v1::project_service_server::ProjectService};

/// The project service's gRPC API.
#[derive(Clone)]
pub struct ProjectServiceApi {
    // Read by the RPCs as they are implemented.
    #[expect(dead_code)]
    db: Database,
}

impl ProjectServiceApi {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl ProjectService for ProjectServiceApi {}
