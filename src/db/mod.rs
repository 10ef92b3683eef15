//! The database side of a service: its connection pool, its embedded
//! migrations, and the supervisor that keeps its health honest.
//!
//! Blocking diesel work runs on the pool's threads (`interact`) or on
//! `spawn_blocking`, never on a tokio worker.
//!
//! [`Database::run`] is the one way a service reaches its database.
//! `query` holds the SQL pieces services share (keyset pages, EXPLAIN);
//! `error` maps database trouble to statuses once; `supervise` reports
//! readiness through [`Readiness`], which the server implements; `stats`
//! is what a database says about itself.

pub mod batch;
mod error;
mod instrument;
pub mod query;
mod sealed;
pub mod stats;
mod supervise;

use std::{sync::Arc, time::Duration};

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use deadpool_diesel::{Runtime, postgres::Manager};
use diesel::{Connection, PgConnection, RunQueryDsl};
use secrecy::ExposeSecret;

pub use batch::Batcher;
pub use error::DbError;

pub use instrument::install_query_instrumentation;
pub use sealed::refuse_unknown_keys;
pub use supervise::{Readiness, ReadyCheck, supervise};

use crate::config::DbConfig;

/// How long a request waits for a pooled connection before it is answered
/// UNAVAILABLE.
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pool of a service's connections.
pub type Pool = deadpool::managed::Pool<ConnectionManager>;

/// deadpool-diesel's manager opens the connections; handing one out again
/// is checked in place. Its own recycling runs `SELECT 1` on the
/// connection's thread at every checkout: a round trip and two thread
/// hops per call, for a check the next query makes anyway. A connection
/// returned with a broken transaction is dropped here; one whose socket
/// died is dropped by [`Database::run`] when its query fails.
#[derive(Debug)]
pub struct ConnectionManager(Manager);

impl deadpool::managed::Manager for ConnectionManager {
    type Type = <Manager as deadpool::managed::Manager>::Type;
    type Error = <Manager as deadpool::managed::Manager>::Error;

    async fn create(&self) -> Result<Self::Type, Self::Error> {
        self.0.create().await
    }

    async fn recycle(&self, conn: &mut Self::Type, _: &Metrics) -> RecycleResult<Self::Error> {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        // Idle in the pool, so nobody else holds its lock.
        let mut guard = conn
            .try_lock()
            .map_err(|_| RecycleError::message("the connection is still in use or its thread panicked"))?;
        if AnsiTransactionManager::is_broken_transaction_manager(&mut *guard) {
            return Err(RecycleError::message("the connection was left in a broken transaction"));
        }
        Ok(())
    }
}

/// A service's database: configuration and pool.
#[derive(Clone)]
pub struct Database {
    pub config: Arc<DbConfig>,
    pub pool: Pool,
    /// `db_pool_wait_seconds` of this service, found once.
    pool_wait: Arc<std::sync::OnceLock<metrics::Histogram>>,
}

impl Database {
    /// Runs blocking diesel work on a pooled connection's thread.
    pub async fn run<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut diesel::PgConnection) -> diesel::QueryResult<T> + Send + 'static,
        T: Send + 'static,
    {
        use tracing::Instrument;
        let waited = std::time::Instant::now();
        let wait = if crate::trace::sampled() {
            tracing::debug_span!(
                target: crate::trace::TRACE,
                "db.pool.wait",
                db.system.name = "postgresql",
                db.namespace = self.config.service.name(),
            )
        } else {
            tracing::Span::none()
        };
        let conn = self
            .pool
            .get()
            .instrument(wait)
            .await
            .map_err(|err| DbError::Unavailable(err.to_string()))?;
        self.pool_wait
            .get_or_init(|| {
                // A handle taken before the recorder is in place would count nowhere.
                crate::telemetry::metrics_handle();
                metrics::histogram!("db_pool_wait_seconds", "service" => self.config.service.name())
            })
            .record(waited.elapsed().as_secs_f64());
        // In a sampled trace, the statements are spans of the caller's request.
        let result = match crate::trace::carry() {
            Some(carried) => conn.interact(move |conn| carried.run(|| work(conn))).await,
            None => conn.interact(work).await,
        };
        let result = result.map_err(|err| DbError::Unavailable(format!("the connection thread failed: {err}")))?;
        // A connection whose server went away (restart, failover, a killed
        // backend) is not handed out again.
        if result.as_ref().is_err_and(error::connection_lost) {
            drop(deadpool::managed::Object::take(conn));
        }
        result.map_err(DbError::from)
    }

    /// Builds the pool. Connections are opened on first use, so this
    /// succeeds whether or not the database is up.
    pub fn new(config: DbConfig) -> anyhow::Result<Self> {
        let manager = Manager::new(config.connection_url().expose_secret(), Runtime::Tokio1);
        let statement_timeout_ms = config.statement_timeout.as_millis();
        // Every pooled connection gets the statement timeout, whatever the
        // URL says: a runaway query fails instead of holding a connection.
        let set_timeout = deadpool::managed::Hook::async_fn(
            move |conn: &mut <ConnectionManager as deadpool::managed::Manager>::Type, _| {
                Box::pin(async move {
                    conn.interact(move |conn| {
                        diesel::connection::SimpleConnection::batch_execute(
                            conn,
                            &format!("SET statement_timeout = {statement_timeout_ms}"),
                        )
                    })
                    .await
                    .map_err(|err| deadpool::managed::HookError::message(err.to_string()))?
                    .map_err(|err| deadpool::managed::HookError::message(err.to_string()))
                })
            },
        );
        let pool = Pool::builder(ConnectionManager(manager))
            .post_create(set_timeout)
            .max_size(config.pool_size)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(config.connect_timeout.max(Duration::from_secs(1))))
            .recycle_timeout(Some(Duration::from_secs(2)))
            .runtime(Runtime::Tokio1)
            .build()?;
        Ok(Self {
            config: Arc::new(config),
            pool,
            pool_wait: Arc::default(),
        })
    }

    /// Publishes the pool's size, idle connections and waiters.
    pub fn record_pool_metrics(&self) {
        let status = self.pool.status();
        let service = self.config.service.name();
        #[expect(clippy::cast_precision_loss, reason = "pool sizes are small")]
        {
            metrics::gauge!("db_pool_size", "service" => service).set(status.size as f64);
            metrics::gauge!("db_pool_available", "service" => service).set(status.available as f64);
            metrics::gauge!("db_pool_waiting", "service" => service).set(status.waiting as f64);
            metrics::gauge!("db_pool_max_size", "service" => service).set(status.max_size as f64);
        }
    }

    /// Runs `SELECT 1` on a pooled connection.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let conn = self.pool.get().await?;
        conn.interact(|conn| diesel::sql_query("SELECT 1").execute(conn))
            .await
            .map_err(|err| anyhow::anyhow!("the connection thread failed: {err}"))??;
        Ok(())
    }

    /// Opens one connection outside the pool (migrations, admin work).
    pub async fn connect_direct(&self) -> anyhow::Result<PgConnection> {
        let url = self.config.connection_url();
        tokio::task::spawn_blocking(move || PgConnection::establish(url.expose_secret()))
            .await?
            .map_err(Into::into)
    }
}
