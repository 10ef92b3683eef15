//! Test support (feature `testing`): a fresh, migrated database per test,
//! and helpers to run services on free ports.
//!
//! Each service's migrations are applied once to a template database whose
//! name carries a fingerprint of the migration files; every test then gets
//! `CREATE DATABASE … TEMPLATE …` (a file copy, milliseconds) and drops it
//! when done. Tests therefore run in parallel, in separate processes, and
//! leave nothing behind.
//!
//! The server is `CAPSULE_TEST_DATABASE_URL` (a superuser URL), by default
//! `postgres://postgres@127.0.0.1:5432/postgres`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use diesel::{Connection, PgConnection, RunQueryDsl};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::config::{DbConfig, ProcessEnv, ServeConfig, ServiceKind};

/// The superuser URL of the test server.
pub fn admin_url() -> String {
    std::env::var("CAPSULE_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn with_database(url: &str, database: &str) -> String {
    let mut url = url::Url::parse(url).expect("CAPSULE_TEST_DATABASE_URL is a URL");
    url.set_path(database);
    url.to_string()
}

/// The migration directory of a service in this repository.
pub fn migrations_dir(service: ServiceKind) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(service.name())
}

/// A short hash of every file under the service's migration directory.
fn fingerprint(service: ServiceKind) -> String {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir)
            .expect("the migrations directory is readable")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let root = migrations_dir(service);
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.strip_prefix(&root).unwrap_or(&file).to_string_lossy().as_bytes());
        hasher.update(std::fs::read(&file).expect("a migration file is readable"));
    }
    hasher
        .finalize()
        .iter()
        .take(6)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A database of its own for one test, dropped at the end of the test.
pub struct TestDatabase {
    pub service: ServiceKind,
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    /// A fresh database with every migration of `service` applied.
    pub async fn migrated(service: ServiceKind, migrations: &'static crate::migrate::MigrationSet) -> Self {
        let admin = admin_url();
        let name = format!("capsule_test_{}_{}", service.name(), uuid::Uuid::new_v4().simple());
        let created = name.clone();
        let admin_for_task = admin.clone();
        tokio::task::spawn_blocking(move || {
            let template = ensure_template(&admin_for_task, service, migrations);
            let mut conn = PgConnection::establish(&admin_for_task).expect("the test PostgreSQL server is reachable");
            diesel::sql_query(format!("CREATE DATABASE \"{created}\" TEMPLATE \"{template}\""))
                .execute(&mut conn)
                .expect("a test database can be created from the template");
        })
        .await
        .expect("creating the test database does not panic");
        Self {
            service,
            url: with_database(&admin, &name),
            name,
            admin_url: admin,
        }
    }

    /// An empty database (no migrations), for tests of the migrations
    /// themselves.
    pub async fn empty(service: ServiceKind) -> Self {
        let admin = admin_url();
        let name = format!("capsule_test_{}_{}", service.name(), uuid::Uuid::new_v4().simple());
        let created = name.clone();
        let admin_for_task = admin.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = PgConnection::establish(&admin_for_task).expect("the test PostgreSQL server is reachable");
            diesel::sql_query(format!("CREATE DATABASE \"{created}\""))
                .execute(&mut conn)
                .expect("a test database can be created");
        })
        .await
        .expect("creating the test database does not panic");
        Self {
            service,
            url: with_database(&admin, &name),
            name,
            admin_url: admin,
        }
    }

    /// The service's database configuration, pointing here.
    pub fn db_config(&self) -> DbConfig {
        let mut config = DbConfig::from_source(self.service, &|_: &str| None).expect("defaults are valid");
        config.url_override = Some(SecretString::from(self.url.clone()));
        config.pool_size = 4;
        config
    }

    /// A blocking connection, for assertions.
    pub fn connect(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("the test database is reachable")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime: do the blocking work on a
        // thread of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(mut conn) = PgConnection::establish(&admin) {
                let _ =
                    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut conn);
            }
        })
        .join();
    }
}

/// Creates the migrated template for `service` once per migration
/// fingerprint, under an advisory lock so parallel test processes build it
/// once.
fn ensure_template(admin: &str, service: ServiceKind, migrations: &'static crate::migrate::MigrationSet) -> String {
    #[derive(diesel::QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }

    // The harness's own tables are part of the template: bump the suffix
    // when the harness changes what it creates.
    let template = format!("capsule_template_{}_{}_h1", service.name(), fingerprint(service));
    let mut conn = PgConnection::establish(admin).unwrap_or_else(|err| {
        panic!(
            "cannot reach the test PostgreSQL server at {}: {err}. Start one (scripts/test does) or set CAPSULE_TEST_DATABASE_URL",
            crate::config::redact_url(admin)
        )
    });
    diesel::sql_query("SELECT pg_advisory_lock(7262817) ")
        .execute(&mut conn)
        .expect("the template lock can be taken");
    let exists = diesel::sql_query(format!(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{template}') AS exists"
    ))
    .get_result::<Exists>(&mut conn)
    .expect("pg_database is readable")
    .exists;
    if !exists {
        let building = format!("{template}_building");
        diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"))
            .execute(&mut conn)
            .expect("a half-built template can be dropped");
        diesel::sql_query(format!("CREATE DATABASE \"{building}\""))
            .execute(&mut conn)
            .expect("the template database can be created");
        {
            let mut template_conn =
                PgConnection::establish(&with_database(admin, &building)).expect("the new template is reachable");
            crate::migrate::migrate(
                &mut template_conn,
                migrations,
                &crate::migrate::MigrateOptions::default(),
            )
            .unwrap_or_else(|err| panic!("the {service} migrations do not apply: {err:#}"));
        }
        diesel::sql_query(format!("ALTER DATABASE \"{building}\" RENAME TO \"{template}\""))
            .execute(&mut conn)
            .expect("the template can be renamed");
    }
    diesel::sql_query("SELECT pg_advisory_unlock(7262817)")
        .execute(&mut conn)
        .expect("the template lock can be released");
    template
}

/// A listener on a free loopback port.
pub async fn free_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("a loopback port is free")
}

/// Serve settings for tests: no drain delay, a short grace.
pub fn serve_config(addr: SocketAddr) -> ServeConfig {
    let mut config = ServeConfig::from_source(ServiceKind::Gateway, &ProcessEnv).expect("defaults are valid");
    config.grpc_addr = addr;
    config.drain_delay = Duration::ZERO;
    config.shutdown_grace = Duration::from_secs(5);
    config.metrics_addr = None;
    config
}

/// A connected gRPC channel to `addr`.
pub async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a URL")
        .connect()
        .await
        .unwrap_or_else(|err| panic!("cannot connect to {addr}: {err}"))
}

/// The health status a server reports for `service`, or `None` when it
/// cannot be reached.
pub async fn health_status(addr: SocketAddr, service: &str) -> Option<i32> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .ok()?;
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()?;
    Some(response.into_inner().status)
}

/// Waits until `service` at `addr` reports `status` (1 SERVING, 2
/// NOT_SERVING), or panics after `within`.
pub async fn wait_for_health(addr: SocketAddr, service: &str, status: i32, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let current = health_status(addr, service).await;
        if current == Some(status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service} at {addr} did not report status {status} within {within:?} (last: {current:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
