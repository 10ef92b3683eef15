//! The `capsule.deploy.v1.DeployService` implementation: parse, authorize, call the
//! domain, convert. RPCs not written yet answer UNIMPLEMENTED.

use capsule::{db::Database, proto::deploy::v1::deploy_service_server::DeployService};

/// The deploy service's gRPC API.
#[derive(Clone)]
pub struct DeployServiceApi {
    // Read by the RPCs as they are implemented.
    #[expect(dead_code)]
    db: Database,
}

impl DeployServiceApi {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl DeployService for DeployServiceApi {}
