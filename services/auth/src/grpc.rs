//! The `capsule.auth.v1.AuthService` implementation: parse, authorize, call the
//! domain, convert. RPCs not written yet answer UNIMPLEMENTED.

use capsule::{db::Database, proto::auth::v1::auth_service_server::AuthService};

/// The auth service's gRPC API.
#[derive(Clone)]
pub struct AuthServiceApi {
    // Read by the RPCs as they are implemented.
    #[expect(dead_code)]
    db: Database,
}

impl AuthServiceApi {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl AuthService for AuthServiceApi {}
