//! PostgreSQL's own programs: where the installed server binaries are,
//! and private clusters made and started from them (`capsule dev`'s,
//! the apps' server in tests). initdb refuses to run as root, so as root
//! a cluster belongs to the `postgres` user.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::process::Command;

/// The directory of the installed PostgreSQL server binaries (the newest
/// version when several are).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
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
        .filter(|dir| dir.join("pg_dump").is_file())
        .collect();
    candidates.sort_by_key(|dir| {
        dir.parent()
            .and_then(|version| version.file_name())
            .and_then(|version| version.to_str())
            .and_then(|version| version.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates.pop().context(
        "no PostgreSQL binaries were found (in pg_config --bindir or /usr/lib/postgresql/*/bin); \
         install them (apt-get install postgresql)",
    )
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
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

/// How a private cluster lets clients in.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Every local connection, as any role (the control plane's cluster in
    /// development).
    Trust,
    /// SCRAM-SHA-256 passwords only, over TCP and the socket alike; the
    /// superuser `postgres` gets this password.
    Scram { password: String },
}

/// A private cluster: its data directory (under `dir/data`), its port on
/// 127.0.0.1 and its log (`dir/postgres.log`).
#[derive(Debug, Clone)]
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

impl Cluster {
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Initialises the cluster unless it was, then starts it and waits
    /// until it accepts connections.
    pub async fn start(&self, auth: &Auth) -> anyhow::Result<()> {
        let bin = bin_dir()?;
        let dir = &self.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let fresh = !self.data().join("PG_VERSION").is_file();
        let password_file = dir.join("initdb.pw");
        if let (true, Auth::Scram { password }) = (fresh, auth) {
            write_private(&password_file, password)?;
        }
        if running_as_root() {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(dir);
            run_checked(chown, &format!("chown of {} to the postgres user", dir.display())).await?;
        }
        let data = self.data().to_string_lossy().into_owned();
        if fresh {
            let mut args = vec!["-D", &data, "-U", "postgres", "--encoding=UTF8", "--no-instructions"];
            let password_arg = format!("--pwfile={}", password_file.display());
            match auth {
                Auth::Trust => args.push("--auth=trust"),
                Auth::Scram { .. } => args.extend(["--auth=scram-sha-256", &password_arg]),
            }
            let made = run_checked(pg_command(&bin.join("initdb"), &args), "initdb").await;
            let _ = std::fs::remove_file(&password_file);
            made?;
        }
        let log = self.log().to_string_lossy().into_owned();
        let options = format!("-p {} -c listen_addresses=127.0.0.1 -k {data}", self.port);
        run_checked(
            pg_command(
                &bin.join("pg_ctl"),
                &["-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start"],
            ),
            "pg_ctl start",
        )
        .await
    }

    /// Stops the cluster (fast: open sessions are ended).
    pub async fn stop(&self) -> anyhow::Result<()> {
        stop(&self.data()).await
    }

    /// Whether it runs (its postmaster.pid is there).
    pub fn running(&self) -> bool {
        self.data().join("postmaster.pid").is_file()
    }
}

/// Stops the cluster whose data directory is `data`.
pub async fn stop(data: &Path) -> anyhow::Result<()> {
    let bin = bin_dir()?;
    let data = data.to_string_lossy().into_owned();
    run_checked(
        pg_command(&bin.join("pg_ctl"), &["-D", &data, "-m", "fast", "-w", "stop"]),
        "pg_ctl stop",
    )
    .await
}

/// Writes a file only its owner may read (chowned with its directory).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// Waits until `ready` says the server accepts connections, at most `wait`.
pub async fn wait_until<F, Fut>(wait: Duration, mut ready: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if ready().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
