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
//!   loopback of its own (no route to PostgreSQL or Capsule's ports); its
//!   one way out is the deployment's egress proxy ([`crate::egress`]),
//!   whose socket is bound in and whose forwarder the launcher starts;
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
//! The host starts nothing a tenant can name or configure: prlimit and bwrap
//! by the absolute paths [`Tools`] checked, with an empty environment. The
//! tenant's variables (plus PATH, HOME and LANG, and PORT for a start
//! command) reach only the process inside: bwrap's `--clearenv` and
//! `--setenv`, read with every other option from an unlinked file passed as
//! a file descriptor (`--args 3`), never from argv, which every host user
//! can read in `/proc/*/cmdline`. The runner's directory of working
//! directories can be passed through but not listed (0711), and each working
//! directory is its project's sandbox user's alone.
//!
//! An app is reached by its own network, not by a path it can write: the
//! [`Sandbox::connector`] joins the sandbox's network namespace (and
//! nothing else of it) and listens on a socket in the runner's directory.

use std::{
    collections::HashMap,
    ffi::OsString,
    io::{Seek, Write},
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use command_fds::{CommandFdExt, FdMapping};
use tokio::process::Command;

use super::{
    host::{children_of, runner_dir},
    tools::Tools,
};
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
    /// The project's sandbox slot: its commands share one sandbox user,
    /// which no other project has.
    pub tenant: u32,
    /// CPU seconds per process (builds), if limited.
    pub cpu_time: Option<Duration>,
    /// The deployment's egress proxy socket (a path in the runner's own
    /// directory): the sandbox's one way out ([`crate::egress`]). `None`:
    /// no network beyond its own loopback.
    pub egress: Option<&'a crate::egress::Proxy>,
    /// The project's build cache (a directory of the runner's), shown at
    /// `/cache` to builds only ([`crate::cache`]).
    pub cache: Option<&'a Path>,
    /// The deployment's cgroup, which bounds its processes together.
    pub cgroup: Option<&'a crate::limits::Group>,
}

/// The port an app listens on inside its own network namespace.
pub const APP_PORT: u16 = 8080;
/// The descriptor a sandbox's launcher reads bwrap's options from.
const ARGS_FD: i32 = 3;
/// The descriptor bwrap reads the sandbox's `/etc/passwd` from.
const PASSWD_FD: i32 = 4;
/// The descriptors a connector gets: the namespaces it joins.
const NET_FD: i32 = 3;
const USER_FD: i32 = 4;

#[derive(Debug, Clone)]
enum Isolation {
    Bubblewrap(Tools),
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
        let unisolated = Self {
            isolation: Isolation::None,
            config,
            as_root,
        };
        runner_dir(workdir, 0o711)
            .map_err(|err| unavailable(&format!("DEPLOY_RUNNER_WORKDIR={}: {err}", workdir.display())))?;
        let tools = match unisolated.config.mode {
            SandboxMode::None => {
                tracing::warn!("DEPLOY_RUNNER_SANDBOX=none: users' commands run unisolated, as this service's user");
                return Ok(unisolated);
            }
            SandboxMode::Bubblewrap | SandboxMode::Auto => Tools::find().map_err(|why: String| unavailable(&why)),
        };
        let checked = match tools {
            Ok(tools) => {
                let sandbox = Self {
                    isolation: Isolation::Bubblewrap(tools),
                    ..unisolated.clone()
                };
                sandbox.check(workdir).await.map(|()| sandbox)
            }
            Err(why) => Err(why),
        };
        match checked {
            Ok(sandbox) => Ok(sandbox),
            Err(why) if unisolated.config.mode == SandboxMode::Auto => {
                tracing::warn!(error = %why, "no sandbox available: users' commands run unisolated");
                Ok(unisolated)
            }
            Err(why) => Err(why),
        }
    }

    /// Whether commands run isolated.
    pub fn isolated(&self) -> bool {
        matches!(self.isolation, Isolation::Bubblewrap(_))
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
        let probe = tempfile::Builder::new()
            .prefix("sandbox-check-")
            .tempdir_in(workdir)
            .map_err(|err| unavailable(&format!("{}: {err}", workdir.display())))?;
        // Slot 0 is no project's.
        let tenant = 0;
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
            egress: None,
            cache: None,
            cgroup: None,
        };
        let command = self
            .command(&spec)
            .map_err(|err| unavailable(&format!("cannot prepare bwrap: {err}")))?
            .output();
        let output = tokio::time::timeout(Duration::from_secs(10), command)
            .await
            .map_err(|_| unavailable("bwrap did not finish within 10 s"))?
            .map_err(|err| unavailable(&format!("bwrap cannot start: {err}")))?;
        if output.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(unavailable(&format!("bwrap failed: {}", stderr.trim())))
        }
    }

    /// The host uid/gid a project's commands run as: its own when the
    /// runner is root, the runner's otherwise (`None`).
    pub fn host_id(&self, tenant: u32) -> Option<u32> {
        self.as_root.then(|| self.sandbox_id(tenant))
    }

    /// Whether a project of sandbox slot `tenant` can run here: the slot
    /// must be one the deploy service gave (never 0) and its uid within
    /// the range this runner may use; why not otherwise.
    pub fn usable(&self, tenant: u32) -> Result<(), String> {
        if tenant == 0 {
            return Err(
                "the deploy service gave this deployment no sandbox user; upgrade the deploy service".to_owned(),
            );
        }
        if tenant >= self.config.uid_count {
            return Err(format!(
                "this runner has no sandbox user left for the project (slot {tenant}): \
                 the operator must raise DEPLOY_SANDBOX_UID_COUNT above {}",
                self.config.uid_count
            ));
        }
        Ok(())
    }

    /// The uid/gid inside the sandbox.
    fn sandbox_id(&self, tenant: u32) -> u32 {
        self.config.uid_base.saturating_add(tenant)
    }

    /// Hands a working directory and everything in it to the project's
    /// sandbox user; the directory itself is open to nobody else.
    pub fn prepare_workdir(&self, tenant: u32, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        match self.host_id(tenant) {
            Some(id) if self.isolated() => crate::host::give_to(dir, id),
            _ => Ok(()),
        }
    }

    /// The command that runs `spec` as this sandbox says.
    pub fn command(&self, spec: &Spec<'_>) -> std::io::Result<Command> {
        let mut command = match &self.isolation {
            Isolation::Bubblewrap(tools) => self.bubblewrap(tools, spec)?,
            Isolation::None => {
                // The operator's choice: the user's shell runs as the
                // service's user anyway.
                let mut command = Command::new("/bin/sh");
                command
                    .arg("-c")
                    .arg(spec.command)
                    .current_dir(spec.workdir.join(spec.root_directory))
                    .env_clear()
                    .env(
                        "PATH",
                        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
                    )
                    .env("HOME", spec.workdir)
                    .env("LANG", "C.UTF-8")
                    .envs(spec.environment)
                    .envs(spec.extra.iter().map(|(name, value)| (*name, value)));
                command
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        Ok(command)
    }

    fn bubblewrap(&self, tools: &Tools, spec: &Spec<'_>) -> std::io::Result<Command> {
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
        arg(&[&"--ro-bind-data", &PASSWD_FD.to_string(), &"/etc/passwd"]);
        for path in &self.config.ro_binds {
            arg(&[&"--ro-bind-try", path, path]);
        }
        let tmp_size = self.config.tmp_bytes.to_string();
        let workdir = PathBuf::from(WORKSPACE).join(spec.root_directory);
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
        ]);
        if let Some(proxy) = spec.egress {
            arg(&[&"--ro-bind", &proxy.socket(), &crate::egress::SANDBOX_SOCKET]);
            if let Some(socket) = proxy.database_socket() {
                arg(&[&"--ro-bind", &socket, &crate::egress::database::SANDBOX_SOCKET]);
            }
        }
        if let Some(cache) = spec.cache {
            arg(&[&"--bind", &cache, &crate::cache::SANDBOX_CACHE]);
        }
        arg(&[
            &"--chdir",
            &workdir,
            &"--remount-ro",
            &"/",
            // In the order given: nothing of bwrap's own environment, then
            // the sandbox's.
            &"--clearenv",
            &"--setenv",
            &"PATH",
            &SANDBOX_PATH,
            &"--setenv",
            &"HOME",
            &WORKSPACE,
            &"--setenv",
            &"LANG",
            &"C.UTF-8",
        ]);
        // The host's trust first, so that the project's variables can
        // override it; Capsule's own last, so that they cannot.
        let mut trust = spec.egress.map(|_| crate::egress::trust()).unwrap_or_default();
        trust.extend(spec.cache.map(|_| crate::cache::environment()).unwrap_or_default());
        let variables = trust.iter().map(|(name, value)| (*name, value.as_str())).chain(
            spec.environment
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        );
        let egress = spec.egress.map(|_| crate::egress::environment()).unwrap_or_default();
        let capsule = spec
            .extra
            .iter()
            .chain(&egress)
            .map(|(name, value)| (*name, value.as_str()));
        for (name, value) in variables.chain(capsule) {
            arg(&[&"--setenv", &name, &value]);
        }
        let options = options_file(&args)?;
        // prlimit (util-linux) sets the limits, soft and hard, then runs
        // bwrap, which reads its options from the file.
        // In its cgroup first, when it has one: a fixed shell joins it,
        // then becomes prlimit.
        let mut command = match spec.cgroup {
            Some(group) => {
                let mut command = Command::new(&tools.sh);
                command
                    .args(["-c", crate::limits::JOIN, "capsule-cgroup"])
                    .args(group.procs())
                    .arg("--")
                    .arg(&tools.prlimit);
                command
            }
            None => Command::new(&tools.prlimit),
        };
        command
            .args(self.limits(spec.cpu_time, spec.cgroup))
            .arg("--")
            .arg(&tools.bwrap)
            .args(["--args", &ARGS_FD.to_string(), "--", "/bin/sh", "-c"]);
        match spec.egress {
            // The launcher starts the way out, then runs the command.
            Some(_) => command
                .arg(crate::egress::launcher(&tools.socat))
                .args(["capsule-egress", spec.command]),
            None => command.arg(spec.command),
        };
        command.env_clear();
        command
            .fd_mappings(vec![
                FdMapping {
                    parent_fd: options,
                    child_fd: ARGS_FD,
                },
                FdMapping {
                    parent_fd: passwd_file(&id)?,
                    child_fd: PASSWD_FD,
                },
            ])
            .map_err(std::io::Error::other)?;
        if let Some(host_id) = self.host_id(spec.tenant) {
            command.uid(host_id).gid(host_id);
        }
        Ok(command)
    }

    /// The host's end of an app's traffic: socat, started by nsenter in the
    /// network namespace of the sandbox whose bwrap is `bwrap` (and in no
    /// other namespace of it: it sees the host's files, not the tenant's),
    /// listening on `socket` — in the runner's own directory — and joining
    /// each connection to the app's port there. `Ok(None)`: the sandbox
    /// has not started yet (or has ended).
    pub fn connector(&self, bwrap: i32, socket: &Path, port: u16) -> std::io::Result<Option<Command>> {
        let Isolation::Bubblewrap(tools) = &self.isolation else {
            return Err(std::io::Error::other("an unisolated app is reached on its port"));
        };
        let Some(init) = children_of(bwrap).into_iter().next() else {
            return Ok(None);
        };
        let open = |kind: &str| std::fs::File::open(format!("/proc/{init}/ns/{kind}")).map(OwnedFd::from);
        let (Ok(network), Ok(user)) = (open("net"), open("user")) else {
            return Ok(None);
        };
        // Opened while `init` was still bwrap's child: the namespaces are
        // the sandbox's, whatever the pid means later.
        if !children_of(bwrap).contains(&init) {
            return Ok(None);
        }
        let mut command = Command::new(&tools.nsenter);
        command.arg(format!("--net=/proc/self/fd/{NET_FD}"));
        let mut descriptors = vec![FdMapping {
            parent_fd: network,
            child_fd: NET_FD,
        }];
        if !self.as_root {
            // Without root, joining the network takes its user namespace,
            // which the runner's user owns.
            command.args([
                format!("--user=/proc/self/fd/{USER_FD}"),
                "--preserve-credentials".to_owned(),
            ]);
            descriptors.push(FdMapping {
                parent_fd: user,
                child_fd: USER_FD,
            });
        }
        let mut listen = OsString::from("UNIX-LISTEN:");
        listen.push(socket);
        listen.push(",fork,unlink-early,mode=600");
        command
            .arg("--")
            .arg(&tools.socat)
            .args(["-lf", "/dev/null"])
            .arg(listen)
            .arg(format!("TCP:127.0.0.1:{port}"))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .fd_mappings(descriptors)
            .map_err(std::io::Error::other)?;
        Ok(Some(command))
    }

    /// prlimit's arguments: address space, processes (per sandbox user,
    /// so only when each project has its own), open files, file size, no
    /// core dumps, CPU seconds for builds.
    /// A cgroup's share, when larger, raises the address space and the
    /// process count to match it (the group bounds them together).
    fn limits(&self, cpu_time: Option<Duration>, group: Option<&crate::limits::Group>) -> Vec<String> {
        let config = &self.config;
        let share = group.map(crate::limits::Group::share);
        let memory = share.map_or(0, |share| share.memory_bytes).max(config.memory_bytes);
        let processes = share.map_or(0, |share| share.processes).max(config.processes);
        // A cgroup bounds memory; an address-space limit too would break
        // runtimes that reserve more than they touch (V8's WebAssembly).
        let address_space = group.map_or_else(|| memory.to_string(), |_| "unlimited".to_owned());
        let mut limits = vec![
            format!("--as={address_space}"),
            format!("--nofile={}", config.open_files),
            format!("--fsize={}", config.file_size_bytes),
            "--core=0".to_owned(),
        ];
        if self.as_root {
            limits.push(format!("--nproc={processes}"));
        }
        if let Some(cpu) = cpu_time {
            limits.push(format!("--cpu={}", cpu.as_secs().max(1)));
        }
        limits
    }
}

/// The host's `/etc/passwd` with a line for the sandbox's user `id`, in an
/// unlinked file: programs that look themselves up (ssh refuses to run
/// without) find a name and `/workspace` as home.
fn passwd_file(id: &str) -> std::io::Result<OwnedFd> {
    let mut file = tempfile::tempfile()?;
    let mut host = std::fs::read("/etc/passwd").unwrap_or_default();
    if !host.is_empty() && !host.ends_with(b"\n") {
        host.push(b'\n');
    }
    file.write_all(&host)?;
    writeln!(file, "capsule:x:{id}:{id}:Capsule:{WORKSPACE}:/bin/sh")?;
    file.rewind()?;
    Ok(file.into())
}

/// bwrap's options, NUL-separated, in an unlinked file for `--args`. An
/// option holding a NUL (a variable's value: the API refuses them, but
/// this is where one would become options of its own) is refused.
fn options_file(args: &[OsString]) -> std::io::Result<OwnedFd> {
    if args.iter().any(|arg| arg.as_bytes().contains(&0)) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a variable holds a NUL character",
        ));
    }
    let mut file = tempfile::tempfile()?;
    for arg in args {
        file.write_all(arg.as_bytes())?;
        file.write_all(b"\0")?;
    }
    file.rewind()?;
    Ok(file.into())
}
