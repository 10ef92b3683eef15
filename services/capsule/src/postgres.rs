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
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use capsule::config::DbConfig;
use diesel::{Connection, PgConnection, RunQueryDsl, sql_types::Text};
use secrecy::ExposeSecret;
use tokio::process::Command;

const DEFAULT_PRIVATE_PORT: u16 = 54329;

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

/// The directory of the installed PostgreSQL server binaries.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(output) = std::process::Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|dir| dir.join("initdb").is_file())
        .collect();
    candidates.sort_by_key(|dir| {
        dir.parent()
            .and_then(|version| version.file_name())
            .and_then(|version| version.to_str())
            .and_then(|version| version.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates.pop().context(
        "no PostgreSQL server is running on 127.0.0.1:5432 and no PostgreSQL binaries (initdb) were found; \
         install them (apt-get install postgresql) or set CAPSULE_PG_ADMIN_URL",
    )
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// A PostgreSQL binary, run as the `postgres` user when we are root.
fn pg_command(bin: &Path, args: &[&str]) -> Command {
    let mut command = if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(bin);
        command
    } else {
        Command::new(bin)
    };
    command.args(args).stdin(Stdio::null());
    command
}

async fn run_checked(mut command: Command, what: &str) -> anyhow::Result<()> {
    let output = command.output().await.with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

async fn start_private(project_dir: &Path) -> anyhow::Result<PgServer> {
    let port = private_port()?;
    let dir = private_dir(project_dir);
    let data = dir.join("data");
    let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=2");
    let server = PgServer {
        admin_url: admin_url.clone(),
        host: "127.0.0.1".to_owned(),
        port,
        origin: "the private cluster under .capsule/postgres",
        started_here: Some(data.clone()),
    };
    if can_connect(&admin_url).await {
        return Ok(PgServer {
            started_here: None,
            ..server
        });
    }
    let bin = bin_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if running_as_root() {
        run_checked(
            {
                let mut chown = Command::new("chown");
                chown.args(["-R", "postgres:postgres"]).arg(&dir);
                chown
            },
            "chown of .capsule/postgres to the postgres user",
        )
        .await?;
    }
    let data_str = data.to_string_lossy().into_owned();
    if !data.join("PG_VERSION").is_file() {
        eprintln!("capsule: creating a private PostgreSQL cluster in {data_str}");
        run_checked(
            pg_command(
                &bin.join("initdb"),
                &[
                    "-D",
                    &data_str,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
            ),
            "initdb",
        )
        .await?;
    }
    let log = dir.join("postgres.log").to_string_lossy().into_owned();
    let options = format!("-p {port} -c listen_addresses=127.0.0.1 -k {data_str}");
    eprintln!("capsule: starting PostgreSQL on 127.0.0.1:{port} (log: {log})");
    run_checked(
        pg_command(
            &bin.join("pg_ctl"),
            &["-D", &data_str, "-l", &log, "-o", &options, "-w", "-t", "60", "start"],
        ),
        "pg_ctl start",
    )
    .await?;
    for _ in 0..50 {
        if can_connect(&admin_url).await {
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("PostgreSQL was started in {data_str} but does not accept connections; see {log}")
}

/// Stops a cluster this command started.
pub async fn stop(data: &Path) -> anyhow::Result<()> {
    let bin = bin_dir()?;
    let data_str = data.to_string_lossy().into_owned();
    run_checked(
        pg_command(&bin.join("pg_ctl"), &["-D", &data_str, "-m", "fast", "-w", "stop"]),
        "pg_ctl stop",
    )
    .await
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
