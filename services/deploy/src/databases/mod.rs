//! Apps' databases: a PostgreSQL database and role per project
//! environment on the apps' server — never the control plane's — which
//! the operator names with `DEPLOY_APPS_DATABASE_URL` ([`server`]); their
//! backups ([`dump`]): on a schedule, before release commands, asked for,
//! restored into the same database or another; and the copies previews
//! get of their source environment's data (`crate::preview`).
//!
//! | variable | default |
//! |---|---|
//! | `DEPLOY_APPS_DATABASE_URL` | unset: no managed databases. An admin (superuser) URL of the apps' PostgreSQL server, such as `postgres://postgres:<password>@10.0.5.2:5432/postgres` |
//! | `DEPLOY_APPS_DATABASE_ADDRESS` | the URL's `host:port`: where runners reach the server, the one address a sandbox's database forwarder connects to |
//! | `DEPLOY_APPS_DATABASE_CONNECTIONS` | `20`: connections one database's role may hold at once |
//! | `DEPLOY_APPS_DATABASE_STATEMENT_TIMEOUT_SECS` | `30`: the longest one statement of an app may run |
//! | `DEPLOY_BACKUPS_DIR` | `capsule-backups-<uid>` in the system temp directory: where dumps are kept, by digest |
//! | `DEPLOY_BACKUP_INTERVAL_SECS` | `86400`: how often each database is backed up |
//! | `DEPLOY_BACKUP_KEEP` | `7`: backups kept per database, the oldest dropped |
//! | `DEPLOY_BACKUP_BEFORE_RELEASE` | `true`: a deployment with a release command backs its environment's database up before it is built |
//! | `DEPLOY_MAX_PREVIEWS` | `5`: open pull request previews per project |

mod dump;
pub mod server;

use std::{path::PathBuf, sync::Arc, time::Duration};

use capsule::{
    config::{ConfigError, Source, parse_bool, positive},
    db::Database,
    rpc,
};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::db::databases::{self as rows, AppDatabase, Backup};

pub use dump::path_of;

/// Where the app reaches its database: the sandbox's own forwarder.
pub const SANDBOX_ADDRESS: &str = "127.0.0.1:5432";
/// The variable an app reads its database from.
pub const VARIABLE: &str = "DATABASE_URL";

#[derive(Debug, Clone)]
pub struct DatabasesConfig {
    pub admin_url: Option<SecretString>,
    /// `host:port` runners connect to.
    pub address: String,
    pub connection_limit: i32,
    pub statement_timeout_secs: i32,
    pub backups_dir: PathBuf,
    pub backup_interval: Duration,
    pub backup_keep: i64,
    pub backup_before_release: bool,
    pub max_previews: i64,
}

impl DatabasesConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let admin_url = source.get("DEPLOY_APPS_DATABASE_URL");
        let mut address = String::new();
        if let Some(raw) = &admin_url {
            let invalid = || {
                ConfigError::invalid(
                    "DEPLOY_APPS_DATABASE_URL",
                    "<redacted>",
                    "expected postgres://<admin>:<password>@<host>:<port>/<database>",
                )
            };
            let url = url::Url::parse(raw).map_err(|_| invalid())?;
            if !matches!(url.scheme(), "postgres" | "postgresql") {
                return Err(invalid());
            }
            let host = url.host_str().ok_or_else(invalid)?;
            address = format!("{host}:{}", url.port().unwrap_or(5432));
        }
        if let Some(given) = source.get("DEPLOY_APPS_DATABASE_ADDRESS") {
            if given.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::invalid(
                    "DEPLOY_APPS_DATABASE_ADDRESS",
                    &given,
                    "expected an IP address and port, such as 10.0.5.2:5432",
                ));
            }
            address = given;
        }
        Ok(Self {
            admin_url: admin_url.map(SecretString::from),
            address,
            connection_limit: positive(source, "DEPLOY_APPS_DATABASE_CONNECTIONS", 20)?,
            statement_timeout_secs: positive(source, "DEPLOY_APPS_DATABASE_STATEMENT_TIMEOUT_SECS", 30)?,
            backups_dir: source.get("DEPLOY_BACKUPS_DIR").map_or_else(
                || std::env::temp_dir().join(format!("capsule-backups-{}", nix::unistd::geteuid())),
                PathBuf::from,
            ),
            backup_interval: Duration::from_secs(positive(source, "DEPLOY_BACKUP_INTERVAL_SECS", 86_400)?),
            backup_keep: positive(source, "DEPLOY_BACKUP_KEEP", 7)?,
            backup_before_release: parse_bool(source, "DEPLOY_BACKUP_BEFORE_RELEASE", true)?,
            max_previews: positive(source, "DEPLOY_MAX_PREVIEWS", 5)?,
        })
    }
}

/// Why a backup is taken, as the table keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Scheduled,
    Release,
    Manual,
    Preview,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Release => "release",
            Self::Manual => "manual",
            Self::Preview => "preview",
        }
    }
}

/// The apps' databases as the deploy service keeps them.
pub struct Databases {
    config: DatabasesConfig,
    db: Database,
    keys: Arc<capsule::crypto::Keyring>,
}

fn unavailable(err: impl std::fmt::Display) -> Status {
    tracing::warn!(error = %err, "the apps' database server");
    Status::unavailable(format!("{err}; retry later"))
}

fn sealed_place(id: Uuid) -> Vec<u8> {
    format!("app_databases/{id}/password").into_bytes()
}

impl Databases {
    pub fn new(config: DatabasesConfig, db: Database, keys: Arc<capsule::crypto::Keyring>) -> Self {
        Self { config, db, keys }
    }

    pub fn config(&self) -> &DatabasesConfig {
        &self.config
    }

    /// The admin URL, or why databases cannot be had here.
    fn admin(&self) -> Result<&str, Status> {
        self.config
            .admin_url
            .as_ref()
            .map(|url| url.expose_secret())
            .ok_or_else(|| {
                Status::failed_precondition(
                    "managed databases are not enabled on this platform (the operator sets DEPLOY_APPS_DATABASE_URL)",
                )
            })
    }

    /// The environment's database, if it has one.
    pub async fn find(&self, project_id: Uuid, environment: &str) -> Result<Option<AppDatabase>, Status> {
        let environment = environment.to_owned();
        Ok(self
            .db
            .run(move |conn| rows::find(conn, project_id, &environment))
            .await?)
    }

    /// Creates the environment's database and role (or finishes one a
    /// failure left half made). ALREADY_EXISTS when it has one.
    pub async fn create(
        &self,
        project_id: Uuid,
        environment: &str,
        creator: Option<Uuid>,
    ) -> Result<AppDatabase, Status> {
        let admin = self.admin()?.to_owned();
        let database = match self.find(project_id, environment).await? {
            Some(existing) if existing.ready_at.is_some() => {
                return Err(Status::already_exists(format!(
                    "the {environment} environment has a database already"
                )));
            }
            Some(half_made) => half_made,
            None => {
                let id = Uuid::now_v7();
                let password = capsule::auth::new_token("")?.0;
                let sealed = self
                    .keys
                    .seal(&password, &sealed_place(id))
                    .map_err(|err| err.status("database passwords"))?;
                let now = chrono::Utc::now();
                let database = AppDatabase {
                    id,
                    project_id,
                    environment: environment.to_owned(),
                    name: format!("capsule_{}", id.simple()),
                    password_sealed: sealed.text,
                    key_id: sealed.key_id,
                    connection_limit: self.config.connection_limit,
                    statement_timeout_secs: self.config.statement_timeout_secs,
                    ready_at: None,
                    next_backup_at: now + chrono::Duration::from_std(self.config.backup_interval).unwrap_or_default(),
                    backup_lease_until: None,
                    creator_id: creator,
                    created_at: now,
                };
                let row = database.clone();
                if !self.db.run(move |conn| rows::insert(conn, &row)).await? {
                    return Err(Status::aborted(format!(
                        "the {environment} environment's database is being created; retry"
                    )));
                }
                database
            }
        };
        self.provision(&admin, &database).await?;
        let id = database.id;
        self.db.run(move |conn| rows::mark_ready(conn, id)).await?;
        Ok(AppDatabase {
            ready_at: Some(chrono::Utc::now()),
            ..database
        })
    }

    async fn provision(&self, admin: &str, database: &AppDatabase) -> Result<(), Status> {
        let password = self.password(database)?;
        let grant = server::Grant {
            name: &database.name,
            password: &password,
            connection_limit: database.connection_limit,
            statement_timeout_secs: database.statement_timeout_secs,
        };
        server::provision(admin, &grant).await.map_err(unavailable)
    }

    fn password(&self, database: &AppDatabase) -> Result<String, Status> {
        self.keys
            .open(&database.key_id, &database.password_sealed, &sealed_place(database.id))
            .map_err(|err| rpc::internal(format_args!("a database password cannot be opened: {err}")))
    }

    /// The app's `DATABASE_URL` and the address its forwarder reaches, when
    /// the environment has a database that is ready.
    pub async fn for_app(&self, project_id: Uuid, environment: &str) -> Result<Option<(String, String)>, Status> {
        if self.config.admin_url.is_none() {
            return Ok(None);
        }
        let Some(database) = self.find(project_id, environment).await? else {
            return Ok(None);
        };
        if database.ready_at.is_none() {
            return Ok(None);
        }
        let password = self.password(&database)?;
        let name = &database.name;
        Ok(Some((
            format!("postgresql://{name}:{password}@{SANDBOX_ADDRESS}/{name}"),
            self.config.address.clone(),
        )))
    }

    /// Drops the environment's database, its role and its backups.
    pub async fn remove(&self, database: &AppDatabase) -> Result<(), Status> {
        server::drop(self.admin()?, &database.name).await.map_err(unavailable)?;
        let id = database.id;
        let orphans = self
            .db
            .run(move |conn| {
                let digests = rows::digests_of(conn, id)?;
                rows::delete(conn, id)?;
                rows::unreferenced(conn, digests)
            })
            .await?;
        self.remove_files(orphans).await;
        Ok(())
    }

    async fn remove_files(&self, digests: Vec<String>) {
        for digest in digests {
            if let Some(path) = path_of(&self.config.backups_dir, &digest) {
                let _ = tokio::fs::remove_file(path).await;
            }
        }
    }

    /// Takes a backup of `database` now.
    pub async fn backup(&self, database: &AppDatabase, reason: Reason) -> Result<Backup, Status> {
        let password = self.password(database)?;
        let login = dump::Login {
            admin_url: self.admin()?,
            name: &database.name,
            password: &password,
        };
        let dump = dump::dump(&login, &self.config.backups_dir)
            .await
            .map_err(unavailable)?;
        let backup = Backup {
            id: Uuid::now_v7(),
            database_id: database.id,
            project_id: database.project_id,
            environment: database.environment.clone(),
            reason: reason.as_str().to_owned(),
            size_bytes: i64::try_from(dump.size).unwrap_or(i64::MAX),
            digest: dump.digest,
            // As the database keeps it: to the microsecond.
            created_at: chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6),
        };
        let (row, keep) = (backup.clone(), self.config.backup_keep);
        let dropped = self.db.run(move |conn| rows::add_backup(conn, &row, keep)).await?;
        self.remove_files(dropped).await;
        tracing::info!(database = %database.name, reason = reason.as_str(), bytes = backup.size_bytes, "database backed up");
        Ok(backup)
    }

    /// Replaces what `target` holds by the backup's data: the database is
    /// made again, empty, and the dump restored into it as its role.
    pub async fn restore(&self, backup: &Backup, target: &AppDatabase) -> Result<(), Status> {
        let admin = self.admin()?;
        let path = path_of(&self.config.backups_dir, &backup.digest)
            .filter(|path| path.is_file())
            .ok_or_else(|| Status::failed_precondition("the backup's dump is no longer kept on this deploy service"))?;
        server::empty(admin, &target.name).await.map_err(unavailable)?;
        self.provision(admin, target).await?;
        let password = self.password(target)?;
        let login = dump::Login {
            admin_url: admin,
            name: &target.name,
            password: &password,
        };
        dump::restore(&login, &path).await.map_err(|err| {
            tracing::warn!(error = %err, database = %target.name, "a restore failed");
            Status::failed_precondition(format!("the backup could not be restored: {err}"))
        })
    }

    /// Takes every scheduled backup as it falls due, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.config.admin_url.is_none() {
            return;
        }
        let interval = chrono::Duration::from_std(self.config.backup_interval).unwrap_or_default();
        let lease = chrono::Duration::hours(1);
        loop {
            loop {
                let due = self.db.run(move |conn| rows::take_due(conn, interval, lease)).await;
                let Ok(Some(database)) = due else { break };
                if let Err(status) = self.backup(&database, Reason::Scheduled).await {
                    tracing::warn!(database = %database.name, error = %status.message(), "a scheduled backup failed");
                }
                let id = database.id;
                let _ = self.db.run(move |conn| rows::end_lease(conn, id)).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
    }
}

/// The ids of the keys that sealed stored database passwords.
pub fn key_ids(conn: &mut diesel::PgConnection) -> diesel::QueryResult<Vec<String>> {
    use diesel::prelude::*;

    use crate::db::schema::app_databases;
    app_databases::table.select(app_databases::key_id).distinct().load(conn)
}
