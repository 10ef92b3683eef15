//! The one place that builds a user's command. Every build and start
//! command goes through [`Sandbox::command`]; nothing else in Capsule
//! spawns a user's code.
//!
//! With bubblewrap (`bwrap`), a command runs:
//! - as an unprivileged uid/gid — when the runner is root, each project's
//!   own (`DEPLOY_SANDBOX_UID_BASE` + project mod `DEPLOY_SANDBOX_UID_COUNT`),
//!   set before bwrap starts, so it is never root or the service's user on
//!   the host; otherwise the service's uid, mapped to that uid inside a user
//!   namespace — with no capabilities, `no_new_privs`, and no further user
//!   namespaces;
//! - in new user, pid, mount, ipc, uts, cgroup and network namespaces: it
//!   sees only its own processes and its own `/proc`, and its network is a
//!   loopback of its own (no route to PostgreSQL or Capsule's ports);
//! - on a read-only root made of `/usr` (and the usual `/bin`, `/lib`
//!   links), a few files of `/etc` (users, name resolution, certificates,
//!   the dynamic linker), its own `/dev`, a private size-limited `/tmp`, and
//!   its working directory at `/workspace`, the only writable place on
//!   disk. The Capsule checkout, `.capsule/`, key files, other deployments'
//!   directories and the rest of the host are not there;
//! - under rlimits set by `prlimit` (util-linux) before bwrap starts:
//!   address space, processes, open files, file size, no core dumps, and
//!   CPU time for builds;
//! - in a process group of its own; bwrap's `--die-with-parent` and the pid
//!   namespace make killing bwrap kill everything inside, `setsid` and
//!   double forks included.
//!
//! The environment is the deployment's variables plus PATH, HOME and LANG
//! (and PORT for a start command): nothing of the service's.

use std::{
    collections::HashMap,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::Command;
use uuid::Uuid;

use crate::config::{SandboxConfig, SandboxMode};

/// Where a deployment's working directory appears inside the sandbox.
pub const WORKSPACE: &str = "/workspace";
/// The PATH inside the sandbox.
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";
/// The files of `/etc` that programs need; nothing else of it is shown.
const ETC_FILES: &[&str] = &[
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "group",
    "host.conf",
    "hostname",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "passwd",
    "protocols",
    "resolv.conf",
    "services",
    "ssl",
];
/// Top-level directories that are links into `/usr` on merged-usr hosts,
/// and shown read-only otherwise.
const SYSTEM_DIRS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// What to run, for whom, where.
pub struct Spec<'a> {
    pub command: &'a str,
    /// The deployment's working directory on the host.
    pub workdir: &'a Path,
    /// Where in the working directory the command starts.
    pub root_directory: &'a str,
    /// The deployment's variables.
    pub environment: &'a HashMap<String, String>,
    /// Extra variables set by Capsule (PORT).
    pub extra: &'a [(&'a str, String)],
    /// The project: its commands share one sandbox user.
    pub tenant: Uuid,
    /// CPU seconds per process (builds), if limited.
    pub cpu_time: Option<Duration>,
    /// For an app that serves: the host directory shown at `/run/capsule`,
    /// where a forwarder listens on `app.sock` for the runner and passes
    /// each connection to the app's `PORT` inside the sandbox's network.
    pub serve: Option<&'a Path>,
}

/// Where the forwarder's socket appears inside the sandbox.
const SERVE_DIR: &str = "/run/capsule";
/// The socket the runner connects to, in the serve directory.
pub const APP_SOCKET: &str = "app.sock";
/// The port an app listens on inside its own network namespace.
pub const APP_PORT: u16 = 8080;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    Bubblewrap,
    /// The operator chose to run commands unisolated.
    None,
}

/// How this runner isolates user commands.
#[derive(Debug, Clone)]
pub struct Sandbox {
    isolation: Isolation,
    config: SandboxConfig,
    /// The runner is root: it gives each project a uid of its own.
    as_root: bool,
}

/// Why the sandbox cannot be used, in words an operator can act on.
fn unavailable(detail: &str) -> String {
    format!(
        "cannot run commands in a sandbox: {detail}. Install bubblewrap (Debian/Ubuntu package `bubblewrap`) \
         on a host that allows user namespaces (see the README's section on the sandbox), or set \
         DEPLOY_RUNNER_SANDBOX=none to run users' commands unisolated"
    )
}

impl Sandbox {
    /// The sandbox the configuration asks for, checked by running a command
    /// in it. `bwrap` that does not work is an error; `auto` falls back to
    /// none with a warning.
    pub async fn new(config: SandboxConfig, workdir: &Path) -> Result<Self, String> {
        let as_root = nix::unistd::geteuid().is_root();
        let isolation = match config.mode {
            SandboxMode::None => Isolation::None,
            SandboxMode::Bubblewrap | SandboxMode::Auto => Isolation::Bubblewrap,
        };
        let sandbox = Self {
            isolation,
            config,
            as_root,
        };
        if sandbox.isolation == Isolation::None {
            tracing::warn!("DEPLOY_RUNNER_SANDBOX=none: users' commands run unisolated, as this service's user");
            return Ok(sandbox);
        }
        match sandbox.check(workdir).await {
            Ok(()) => Ok(sandbox),
            Err(why) if sandbox.config.mode == SandboxMode::Auto => {
                tracing::warn!(error = %why, "no sandbox available: users' commands run unisolated");
                Ok(Self {
                    isolation: Isolation::None,
                    ..sandbox
                })
            }
            Err(why) => Err(why),
        }
    }

    /// Whether commands run isolated.
    pub fn isolated(&self) -> bool {
        self.isolation == Isolation::Bubblewrap
    }

    /// The PORT an app gets: the same in every sandbox (each has its own
    /// network); a free port of the host when unisolated.
    pub fn app_port(&self) -> std::io::Result<u16> {
        if self.isolated() {
            Ok(APP_PORT)
        } else {
            Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
        }
    }

    /// The line every deployment's log starts with when commands run
    /// unisolated.
    pub fn warning(&self) -> Option<&'static str> {
        (!self.isolated()).then_some(
            "warning: this runner has no sandbox (DEPLOY_RUNNER_SANDBOX=none): commands run unisolated, \
             with the runner's own rights",
        )
    }

    /// Runs `true` in a sandbox, to find out whether sandboxes work here.
    async fn check(&self, workdir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(workdir).map_err(|err| unavailable(&format!("{}: {err}", workdir.display())))?;
        let probe = tempfile::Builder::new()
            .prefix("sandbox-check-")
            .tempdir_in(workdir)
            .map_err(|err| unavailable(&format!("{}: {err}", workdir.display())))?;
        let tenant = Uuid::nil();
        self.prepare_workdir(tenant, probe.path())
            .map_err(|err| unavailable(&err.to_string()))?;
        let environment = HashMap::new();
        let spec = Spec {
            command: "exit 0",
            workdir: probe.path(),
            root_directory: "",
            environment: &environment,
            extra: &[],
            tenant,
            cpu_time: Some(Duration::from_secs(10)),
            serve: None,
        };
        let output = tokio::time::timeout(Duration::from_secs(10), self.command(&spec).output())
            .await
            .map_err(|_| unavailable("bwrap did not finish within 10 s"))?
            .map_err(|err| match err.kind() {
                std::io::ErrorKind::NotFound => unavailable("the `prlimit` command (util-linux) is not installed"),
                _ => unavailable(&format!("bwrap cannot start: {err}")),
            })?;
        if output.status.success() {
            Ok(())
        } else if output.status.code() == Some(127) || String::from_utf8_lossy(&output.stderr).contains("No such file")
        {
            Err(unavailable("the `bwrap` command is not installed"))
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(unavailable(&format!("bwrap failed: {}", stderr.trim())))
        }
    }

    /// The host uid/gid a project's commands run as: its own when the
    /// runner is root, the runner's otherwise.
    fn host_id(&self, tenant: Uuid) -> Option<u32> {
        self.as_root.then(|| self.sandbox_id(tenant))
    }

    /// The uid/gid inside the sandbox.
    fn sandbox_id(&self, tenant: Uuid) -> u32 {
        let slot = u32::try_from(tenant.as_u128() % u128::from(self.config.uid_count)).unwrap_or(0);
        self.config.uid_base.saturating_add(slot)
    }

    /// Hands a working directory and everything in it to the project's
    /// sandbox user; the directory itself is open to nobody else.
    pub fn prepare_workdir(&self, tenant: Uuid, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        match self.host_id(tenant) {
            Some(id) if self.isolated() => give_to(dir, id),
            _ => Ok(()),
        }
    }

    /// The command that runs `spec` as this sandbox says.
    pub fn command(&self, spec: &Spec<'_>) -> Command {
        let mut command = match self.isolation {
            Isolation::Bubblewrap => self.bubblewrap(spec),
            Isolation::None => {
                let mut command = Command::new("sh");
                command
                    .arg("-c")
                    .arg(spec.command)
                    .current_dir(spec.workdir.join(spec.root_directory))
                    .env_clear()
                    .env(
                        "PATH",
                        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
                    )
                    .env("HOME", spec.workdir);
                command
            }
        };
        command
            .env("LANG", "C.UTF-8")
            .envs(spec.environment)
            .envs(spec.extra.iter().map(|(name, value)| (*name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        command
    }

    fn bubblewrap(&self, spec: &Spec<'_>) -> Command {
        let id = self.sandbox_id(spec.tenant).to_string();
        let mut args: Vec<OsString> = [
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--uid",
            &id,
            "--gid",
            &id,
            "--hostname",
            "capsule",
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let mut arg = |parts: &[&dyn AsRef<std::ffi::OsStr>]| {
            args.extend(parts.iter().map(|part| part.as_ref().to_os_string()));
        };
        for dir in SYSTEM_DIRS {
            match std::fs::read_link(dir) {
                Ok(target) => arg(&[&"--symlink", &target, dir]),
                Err(_) if Path::new(dir).is_dir() => arg(&[&"--ro-bind", dir, dir]),
                Err(_) => {}
            }
        }
        for file in ETC_FILES {
            let path = Path::new("/etc").join(file);
            arg(&[&"--ro-bind-try", &path, &path]);
        }
        for path in &self.config.ro_binds {
            arg(&[&"--ro-bind-try", path, path]);
        }
        let tmp_size = self.config.tmp_bytes.to_string();
        let workdir = PathBuf::from(WORKSPACE).join(spec.root_directory);
        if let Some(serve) = spec.serve {
            arg(&[&"--bind", &serve, &SERVE_DIR]);
        }
        arg(&[
            &"--proc",
            &"/proc",
            &"--dev",
            &"/dev",
            &"--size",
            &tmp_size,
            &"--tmpfs",
            &"/tmp",
            &"--bind",
            &spec.workdir,
            &WORKSPACE,
            &"--chdir",
            &workdir,
            &"--remount-ro",
            &"/",
            &"--",
            &"/bin/sh",
            &"-c",
        ]);
        match spec.serve {
            // socat (Debian package socat) joins the runner's socket to the
            // app's port; the user's command is passed as "$1", never
            // spliced into this script.
            Some(_) => arg(&[
                &format!(
                    "socat -lf /dev/null UNIX-LISTEN:{SERVE_DIR}/{APP_SOCKET},fork,unlink-early \
                     TCP:127.0.0.1:{APP_PORT} & exec /bin/sh -c \"$1\""
                ),
                &"capsule-app",
                &spec.command,
            ]),
            None => arg(&[&spec.command]),
        }
        // prlimit (util-linux) sets the limits, soft and hard, then runs bwrap.
        let mut command = Command::new("prlimit");
        command
            .args(self.limits(spec.cpu_time))
            .arg("--")
            .arg("bwrap")
            .args(args)
            .env_clear()
            .env("PATH", SANDBOX_PATH)
            .env("HOME", WORKSPACE);
        if let Some(host_id) = self.host_id(spec.tenant) {
            command.uid(host_id).gid(host_id);
        }
        command
    }

    /// prlimit's arguments: address space, processes (per sandbox user,
    /// so only when each project has its own), open files, file size, no
    /// core dumps, CPU seconds for builds.
    fn limits(&self, cpu_time: Option<Duration>) -> Vec<String> {
        let config = &self.config;
        let mut limits = vec![
            format!("--as={}", config.memory_bytes),
            format!("--nofile={}", config.open_files),
            format!("--fsize={}", config.file_size_bytes),
            "--core=0".to_owned(),
        ];
        if self.as_root {
            limits.push(format!("--nproc={}", config.processes));
        }
        if let Some(cpu) = cpu_time {
            limits.push(format!("--cpu={}", cpu.as_secs().max(1)));
        }
        limits
    }
}

/// Hands a tree to the sandbox user `id`, without following links.
fn give_to(dir: &Path, id: u32) -> std::io::Result<()> {
    let uid = Some(nix::unistd::Uid::from_raw(id));
    let gid = Some(nix::unistd::Gid::from_raw(id));
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &path,
            uid,
            gid,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        let metadata = std::fs::symlink_metadata(&path)?;
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}
