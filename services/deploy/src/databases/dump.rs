//! Backups as files: `pg_dump` of a database in its custom format, and
//! `pg_restore` of one into a database, both logged in as the database's
//! own role, never as the server's admin: a tenant's functions, checks
//! and defaults that run on the way have that role's rights and no
//! session to fall back to (an admin's `SET ROLE` is undone by a
//! `RESET ROLE` in tenant code). Fixed arguments, names Capsule
//! generated, the connection in the environment (never on a command
//! line). Dumps are kept by digest in `DEPLOY_BACKUPS_DIR`.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use sha2::{Digest, Sha256};
use tokio::{io::AsyncReadExt, process::Command};

/// What went wrong with a dump or a restore, for the log and the caller.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DumpError(String);

/// Who connects: a database's own role (named like its database), on
/// the server the admin URL names.
pub struct Login<'a> {
    pub admin_url: &'a str,
    pub name: &'a str,
    pub password: &'a str,
}

/// The connection as libpq's variables.
fn connection(login: &Login<'_>) -> Result<Vec<(&'static str, String)>, DumpError> {
    let url = url::Url::parse(login.admin_url).map_err(|err| DumpError(format!("DEPLOY_APPS_DATABASE_URL: {err}")))?;
    Ok(vec![
        ("PGHOST", url.host_str().unwrap_or("127.0.0.1").to_owned()),
        ("PGPORT", url.port().unwrap_or(5432).to_string()),
        ("PGUSER", login.name.to_owned()),
        ("PGPASSWORD", login.password.to_owned()),
        ("PGDATABASE", login.name.to_owned()),
        ("PGCONNECT_TIMEOUT", "5".to_owned()),
        ("PGAPPNAME", "capsule-backup".to_owned()),
    ])
}

fn tool(name: &str, login: &Login<'_>) -> Result<Command, DumpError> {
    let bin = capsule::cluster::bin_dir().map_err(|err| DumpError(err.to_string()))?;
    let mut command = Command::new(bin.join(name));
    command
        .env_clear()
        .envs(connection(login)?)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    Ok(command)
}

async fn finish(mut command: Command, what: &str) -> Result<(), DumpError> {
    let output = command
        .output()
        .await
        .map_err(|err| DumpError(format!("cannot run {what}: {err}")))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said: String = stderr.trim().chars().take(2000).collect();
    Err(DumpError(format!("{what} failed ({}): {said}", output.status)))
}

/// A dump kept in the backups directory.
pub struct Dump {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
}

/// Where the dump of `digest` is kept.
pub fn path_of(dir: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| dir.join(format!("{hex}.dump")))
}

/// Dumps the role's database into the backups directory.
pub async fn dump(login: &Login<'_>, dir: &Path) -> Result<Dump, DumpError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|err| DumpError(format!("cannot create {}: {err}", dir.display())))?;
    let partial = dir.join(format!(".{}.partial", uuid::Uuid::new_v4().simple()));
    let mut command = tool("pg_dump", login)?;
    command.arg("--format=custom").arg("--file").arg(&partial);
    let dumped = finish(command, "pg_dump").await;
    let kept = match dumped {
        Ok(()) => keep(&partial, dir).await,
        Err(err) => Err(err),
    };
    if kept.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    kept
}

/// Names the finished dump by its digest.
async fn keep(partial: &Path, dir: &Path) -> Result<Dump, DumpError> {
    let io = |err: std::io::Error| DumpError(format!("cannot keep the dump: {err}"));
    let mut file = tokio::fs::File::open(partial).await.map_err(io)?;
    let (mut hasher, mut size, mut buffer) = (Sha256::new(), 0u64, vec![0u8; 64 * 1024]);
    loop {
        let read = file.read(&mut buffer).await.map_err(io)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    let path = path_of(dir, &digest).ok_or_else(|| DumpError("a digest that names no file".to_owned()))?;
    tokio::fs::rename(partial, &path).await.map_err(io)?;
    Ok(Dump { digest, size })
}

/// Restores the dump at `path` into the role's database (empty: just
/// made), in one transaction: all of it or nothing.
pub async fn restore(login: &Login<'_>, path: &Path) -> Result<(), DumpError> {
    let mut command = tool("pg_restore", login)?;
    command
        .args([
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--single-transaction",
        ])
        .arg("--dbname")
        .arg(login.name)
        .arg(path);
    finish(command, "pg_restore").await
}
