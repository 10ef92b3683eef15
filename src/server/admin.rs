//! `capsule.admin.v1.DatabaseAdmin`: the database's own figures, for admins.

use crate::{db::stats::collect, proto::admin::v1 as pb};

/// `capsule.admin.v1.DatabaseAdmin`, served beside every service that owns
/// a database. Reads on a connection of its own, outside the pool: the
/// timeouts it sets must not leak into pooled connections.
pub struct DatabaseAdminApi {
    db: crate::db::Database,
}

impl DatabaseAdminApi {
    pub fn server(db: crate::db::Database) -> pb::database_admin_server::DatabaseAdminServer<Self> {
        pb::database_admin_server::DatabaseAdminServer::new(Self { db })
            .max_decoding_message_size(crate::rpc::MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl pb::database_admin_server::DatabaseAdmin for DatabaseAdminApi {
    async fn get_database_stats(
        &self,
        _request: tonic::Request<pb::GetDatabaseStatsRequest>,
    ) -> Result<tonic::Response<pb::DatabaseStats>, tonic::Status> {
        let mut conn = self.db.connect_direct().await.map_err(|err| {
            tracing::warn!(error = %err, "database stats: cannot connect");
            tonic::Status::unavailable("the database is unavailable; try again")
        })?;
        let stats = tokio::task::spawn_blocking(move || collect(&mut conn))
            .await
            .map_err(|err| crate::rpc::internal(format_args!("the stats task failed: {err}")))?
            .map_err(crate::db::DbError::from)?;
        let mut answer = pb::DatabaseStats::from(stats);
        answer.service = self.db.config.service.name().to_owned();
        Ok(tonic::Response::new(answer))
    }
}
