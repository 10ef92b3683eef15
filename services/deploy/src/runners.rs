//! Runners as the deploy service knows them: registered by an admin, each
//! with a token of its own, checked against the registered runners on
//! every call (a deleted runner is refused at once).

use capsule::{auth::Caller, db::Database};
use tonic::{Request, Status};
use uuid::Uuid;

use crate::db::runners::Runner;

/// The registered runner making a runner-API call.
pub(crate) fn runner_of<T>(request: &Request<T>) -> Result<String, Status> {
    Caller::of(request)?
        .runner_id()
        .map(|id| id.to_string())
        .ok_or_else(|| Status::permission_denied("only a registered runner may call the runner API"))
}

/// A new runner token (256 random bits) and the hash that is stored.
pub fn new_runner_token() -> Result<(String, Vec<u8>), Status> {
    capsule::auth::new_token("capsule_runner_")
}

pub use capsule::auth::token_hash as runner_token_hash;

/// Runner tokens checked against the registered runners, on every call:
/// a deleted runner is refused at once.
pub struct RegisteredRunners(pub Database);

#[tonic::async_trait]
impl capsule::auth::RunnerVerifier for RegisteredRunners {
    async fn runner(&self, token: &str) -> Result<Option<Uuid>, Status> {
        let hash = runner_token_hash(token);
        Ok(self.0.run(move |conn| Runner::by_token(conn, &hash)).await?)
    }
}
