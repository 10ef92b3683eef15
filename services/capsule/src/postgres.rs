//! Finding or starting PostgreSQL for development and tests, and creating
//! each service's role and database on it.
//!
//! Order: `CAPSULE_PG_ADMIN_URL` when set; else a server on 127.0.0.1:5432
//! (as `postgres`, then `root`); else a private cluster under
//! `.capsule/postgres` (port `CAPSULE_PG_PORT`, default 54329), initialised
//! and started from the installed PostgreSQL binaries. initdb refuses to run
//! as root, so as root the cluster belongs to the `postgres` user.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use capsule::{
    cluster::{self, Auth, Cluster},
    config::DbConfig,
};
use diesel::{Connection, PgConnection, RunQueryDsl, sql_types::Text};
use secrecy::ExposeSecret;

const DEFAULT_PRIVATE_PORT: u16 = 54329;
const DEFAULT_APPS_PORT: u16 = 54330;

/// A PostgreSQL server Capsule can administer.
#[derive(Debug, Clone)]
pub struct PgServer {
    /// A superuser URL (no password: trust or peer authentication).
    pub admin_url: String,
    pub host: String,
    pub port: u16,
    /// Where it came from, for people.
    pub origin: &'static str,
    /// Set when this command started it (and so should stop it).
    pub started_here: Option<PathBuf>,
}

/// The directory that holds `.capsule/`: the repository root when run from
/// inside it, else the current directory.
pub fn project_dir() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    Ok(cwd
        .ancestors()
        .find(|dir| dir.join("compose.yaml").is_file() && dir.join("migrations").is_dir())
        .map_or_else(|| cwd.clone(), Path::to_path_buf))
}

async fn can_connect(url: &str) -> bool {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || PgConnection::establish(&url).is_ok())
        .await
        .unwrap_or(false)
}

/// Finds a running server or starts the private cluster.
pub async fn find_or_start(project_dir: &Path) -> anyhow::Result<PgServer> {
    if let Ok(url) = std::env::var("CAPSULE_PG_ADMIN_URL") {
        if !can_connect(&url).await {
            bail!(
                "CAPSULE_PG_ADMIN_URL points at {} but no connection could be made; fix or unset it",
                capsule::config::redact_url(&url)
            );
        }
        let parsed = url::Url::parse(&url).context("CAPSULE_PG_ADMIN_URL is not a URL")?;
        return Ok(PgServer {
            host: parsed.host_str().unwrap_or("127.0.0.1").to_owned(),
            port: parsed.port().unwrap_or(5432),
            admin_url: url,
            origin: "CAPSULE_PG_ADMIN_URL",
            started_here: None,
        });
    }
    for user in ["postgres", "root"] {
        let url = format!("postgres://{user}@127.0.0.1:5432/postgres?connect_timeout=2");
        if can_connect(&url).await {
            return Ok(PgServer {
                admin_url: url,
                host: "127.0.0.1".to_owned(),
                port: 5432,
                origin: "the local server",
                started_here: None,
            });
        }
    }
    start_private(project_dir).await
}

fn private_port() -> anyhow::Result<u16> {
    match std::env::var("CAPSULE_PG_PORT") {
        Ok(port) => port
            .parse()
            .with_context(|| format!("CAPSULE_PG_PORT={port:?} is not valid: expected a port number")),
        Err(_) => Ok(DEFAULT_PRIVATE_PORT),
    }
}

fn private_dir(project_dir: &Path) -> PathBuf {
    project_dir.join(".capsule").join("postgres")
}

async fn start_private(project_dir: &Path) -> anyhow::Result<PgServer> {
    let port = private_port()?;
    let cluster = Cluster {
        dir: private_dir(project_dir),
        port,
    };
    let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=2");
    let server = PgServer {
        admin_url: admin_url.clone(),
        host: "127.0.0.1".to_owned(),
        port,
        origin: "the private cluster under .capsule/postgres",
        started_here: Some(cluster.data()),
    };
    if can_connect(&admin_url).await {
        return Ok(PgServer {
            started_here: None,
            ..server
        });
    }
    eprintln!(
        "capsule: starting PostgreSQL on 127.0.0.1:{port} in {} (log: {})",
        cluster.data().display(),
        cluster.log().display()
    );
    cluster.start(&Auth::Trust).await?;
    if cluster::wait_until(Duration::from_secs(5), || can_connect(&admin_url)).await {
        return Ok(server);
    }
    bail!(
        "PostgreSQL was started in {} but does not accept connections; see {}",
        cluster.data().display(),
        cluster.log().display()
    )
}

/// Stops a cluster this command started.
pub async fn stop(data: &Path) -> anyhow::Result<()> {
    cluster::stop(data).await
}

/// Stops the private cluster under `.capsule/`, if it runs.
pub async fn stop_private(project_dir: &Path) -> anyhow::Result<()> {
    let data = private_dir(project_dir).join("data");
    if !data.join("postmaster.pid").is_file() {
        println!("no private cluster runs in {}", data.display());
        return Ok(());
    }
    stop(&data).await?;
    println!("stopped the private cluster in {}", data.display());
    Ok(())
}

/// The apps' own PostgreSQL server for development: a second private
/// cluster under `.capsule/apps-postgres` (port `CAPSULE_APPS_PG_PORT`,
/// default 54330) that takes SCRAM-SHA-256 passwords only, never the
/// control plane's, whose trust of local connections no app may share.
/// Its superuser's password is kept in `.capsule/apps-postgres.password`.
pub async fn start_apps(project_dir: &Path, new_password: &str) -> anyhow::Result<PgServer> {
    let port = match std::env::var("CAPSULE_APPS_PG_PORT") {
        Ok(port) => port
            .parse()
            .with_context(|| format!("CAPSULE_APPS_PG_PORT={port:?} is not valid: expected a port number"))?,
        Err(_) => DEFAULT_APPS_PORT,
    };
    let capsule_dir = project_dir.join(".capsule");
    let cluster = Cluster {
        dir: capsule_dir.join("apps-postgres"),
        port,
    };
    let password = kept_secret(&capsule_dir.join("apps-postgres.password"), new_password)?;
    let admin_url = format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres?connect_timeout=2");
    let server = PgServer {
        admin_url: admin_url.clone(),
        host: "127.0.0.1".to_owned(),
        port,
        origin: "the apps' private cluster under .capsule/apps-postgres",
        started_here: Some(cluster.data()),
    };
    if can_connect(&admin_url).await {
        return Ok(PgServer {
            started_here: None,
            ..server
        });
    }
    cluster.start(&Auth::Scram { password }).await?;
    if cluster::wait_until(Duration::from_secs(5), || can_connect(&admin_url)).await {
        return Ok(server);
    }
    bail!(
        "the apps' PostgreSQL was started in {} but does not accept connections; see {}",
        cluster.data().display(),
        cluster.log().display()
    )
}

/// The secret kept in `path` (0600), or `new` kept there on the first run.
pub fn kept_secret(path: &std::path::Path, new: &str) -> anyhow::Result<String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    if let Ok(kept) = std::fs::read_to_string(path) {
        return Ok(kept.trim().to_owned());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(new.as_bytes()))
        .map_err(|err| anyhow::anyhow!("cannot keep a development secret in {}: {err}", path.display()))?;
    Ok(new.to_owned())
}

#[derive(diesel::QueryableByName)]
struct Exists {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    exists: bool,
}

fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn quote_literal(literal: &str) -> String {
    format!("'{}'", literal.replace('\'', "''"))
}

/// Creates (or updates) the service's role and creates its database, owned
/// by that role. Safe to run any number of times.
pub async fn provision(admin_url: &str, config: &DbConfig) -> anyhow::Result<()> {
    let admin_url = admin_url.to_owned();
    let user = config.user.clone();
    let password = config.password.expose_secret().to_owned();
    let name = config.name.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut conn = PgConnection::establish(&admin_url).context("cannot connect as the PostgreSQL superuser")?;
        let role_exists = diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) AS exists")
            .bind::<Text, _>(&user)
            .get_result::<Exists>(&mut conn)?
            .exists;
        let verb = if role_exists { "ALTER" } else { "CREATE" };
        diesel::sql_query(format!(
            "{verb} ROLE {} LOGIN PASSWORD {}",
            quote_ident(&user),
            quote_literal(&password)
        ))
        .execute(&mut conn)
        .with_context(|| format!("cannot create role {user}"))?;
        let db_exists = diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<Text, _>(&name)
            .get_result::<Exists>(&mut conn)?
            .exists;
        if !db_exists {
            // Two `capsule dev` starting at once may both get here; the
            // loser's "already exists" is fine.
            if let Err(err) = diesel::sql_query(format!(
                "CREATE DATABASE {} OWNER {}",
                quote_ident(&name),
                quote_ident(&user)
            ))
            .execute(&mut conn)
                && !err.to_string().contains("already exists")
            {
                return Err(err).with_context(|| format!("cannot create database {name}"));
            }
        }
        Ok(())
    })
    .await?
}
