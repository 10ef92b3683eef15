//! The runner's settings. A runner in its own process (`capsule runner`)
//! reads these and the two below; the deploy service's in-process runner
//! (`DEPLOY_LOCAL_RUNNER`) reads the same ones.
//!
//! | variable | default |
//! |---|---|
//! | `DEPLOY_SERVICE_URL` | `http://127.0.0.1:50053`: the deploy service whose runner API this runner serves (`capsule runner` only) |
//! | `CAPSULE_RUNNER_TOKEN` | required by `capsule runner`: the token `CreateRunner` returned (or `CAPSULE_RUNNER_TOKEN_FILE`) |
//! | `DEPLOY_LOCAL_REPOSITORIES` | unset: directories (colon-separated) under which a project's repository may be a local path or file:// URL; unset, local repositories are refused |
//! | `DEPLOY_MAX_SOURCE_MB` | `512`: the largest file a source checkout may write |
//! | `DEPLOY_EGRESS_ALLOWED_NETWORKS` | unset: networks (comma-separated CIDRs) git and builds' and apps' egress may reach although private or reserved, on any port (a package mirror, an internal git server); unset, only public addresses |
//! | `DEPLOY_RUNNER_WORKDIR` | `capsule-runner-<uid>` in the system temp directory: where builds run, one fresh directory each; it must belong to the runner's user, who alone may list it |
//! | `DEPLOY_RUNNER_TIMEOUT_SECS` | `600`: a build or start command running longer is killed (also its CPU-time limit) |
//! | `DEPLOY_RUNNER_MAX_OUTPUT_BYTES` | `10485760`: a build printing more is killed (bytes counted as they arrive) |
//! | `DEPLOY_RUNNER_LINES_PER_SEC` | `1000`: output lines sent per second (bursts of 5×); the rest are dropped and counted |
//! | `DEPLOY_BUILD_CACHE_MB` | `10240`: all build caches of this runner together (one per project and environment, kept between builds, the least recently used dropped first); `0`: none |
//! | `DEPLOY_RELEASES_KEPT` | `5`: releases (built trees, packed) kept per project and environment, the newest; a rollback to one starts it without a build. `0`: none |
//! | `DEPLOY_RELEASE_MAX_MB` | `2048`: the largest built tree kept as a release (files at their apparent size); a larger one is not kept, and a rollback to it builds again |
//! | `DEPLOY_RUNNER_HEARTBEAT_MS` | `300`: how often the runner renews its lease (and notices a cancel) |
//! | `DEPLOY_START_TIMEOUT_SECS` | `60`: a start command must answer on `PORT` (and its health check) within this, or the deployment fails |
//! | `DEPLOY_RUNNER_MAX_RUNS` | `2`: runs (one-off commands, cron entries' runs) this runner makes at once; it claims no other run meanwhile |
//! | `DEPLOY_DRAIN_SECS` | `10`: a superseded app keeps serving this long (while the gateway switches) before SIGTERM, then 5 s before SIGKILL |
//! | `DEPLOY_MAX_RESTARTS`, `DEPLOY_RESTART_WINDOW_SECS` | `3`, `60`: a live app that exits is restarted with backoff; one more exit within the window makes it CRASHED |
//! | `DEPLOY_RUNNER_UPSTREAM_HOST` | `127.0.0.1`: the address the runner serves live apps on for the gateway (the gateway must reach it) |
//! | `DEPLOY_APP_MAX_CONNECTIONS` | `512`: connections open to one copy of an app at once; more are answered 503 (each one through the runner's forwarder holds 128 KiB of copy buffers) |
//! | `DEPLOY_RUNNER_HANDOFF_SOCKET` | `<DEPLOY_RUNNER_WORKDIR>/.sockets/handoff.sock`: where a runner with root hands a gateway on the same host (`GATEWAY_APPS_HANDOFF_SOCKET`) connections that end at its apps, with no process copying between; mode 0600, answered only to the runner's user or root |
//! | `DEPLOY_RUNNER_SANDBOX` | `bwrap`: every command in a bubblewrap sandbox, and the runner refuses to start without one; `none`: unisolated (each deployment's log says so); `auto`: `bwrap` when it works, else `none` (what `capsule dev` uses) |
//! | `DEPLOY_SANDBOX_UID_BASE`, `DEPLOY_SANDBOX_UID_COUNT` | `200000`, `50000`: when the runner runs as root, each project's commands run as uid/gid base + the project's sandbox slot (given by the deploy service at the project's first claim, never shared or reused); a project whose slot is not below the count is refused, saying to raise it |
//! | `DEPLOY_SANDBOX_MEMORY_MB` | `2048`: address space of each process |
//! | `DEPLOY_SANDBOX_TOTAL_MEMORY_MB` | `1024`: memory of a deployment's processes together, without swap (its cgroup); past it the kernel kills one, and the deployment says "out of memory at … MiB" |
//! | `DEPLOY_SANDBOX_CPUS` | `1`: CPU time of a deployment's processes together, in CPUs (0.5: half of one) |
//! | `DEPLOY_SANDBOX_PROCESSES` | `512`: processes of one project's sandbox user |
//! | `DEPLOY_SANDBOX_OPEN_FILES` | `1024`: open files per process |
//! | `DEPLOY_SANDBOX_FILE_SIZE_MB` | `1024`: largest file a command may write |
//! | `DEPLOY_SANDBOX_TMP_MB` | `256`: size of the sandbox's private `/tmp` |
//! | `DEPLOY_SANDBOX_DISK_MB` | `4096`: size of each deployment's working directory and each build cache, filesystems of their own where the runner can loop-mount |
//! | `DEPLOY_SANDBOX_RO_BINDS` | unset: more host paths (colon-separated) shown read-only inside, e.g. a toolchain under `/opt` |

use std::{path::PathBuf, time::Duration};

use capsule::config::{ConfigError, ProcessEnv, ServiceKind, Source, networks, parse_or, paths, positive};
use secrecy::SecretString;

/// Where deployments' source may come from.
#[derive(Debug, Clone, Default)]
pub struct SourceConfig {
    pub local_repositories: Vec<PathBuf>,
    pub max_bytes: u64,
    /// Private networks the operator lets git reach.
    pub allowed_networks: Vec<ipnet::IpNet>,
}

impl SourceConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            local_repositories: paths(source, "DEPLOY_LOCAL_REPOSITORIES")?,
            max_bytes: positive(source, "DEPLOY_MAX_SOURCE_MB", 512u64)? * 1024 * 1024,
            allowed_networks: networks(source, "DEPLOY_EGRESS_ALLOWED_NETWORKS")?,
        })
    }
}

/// How a runner builds, starts and keeps apps.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub source: SourceConfig,
    pub workdir: PathBuf,
    pub timeout: Duration,
    pub max_output_bytes: u64,
    pub lines_per_sec: u32,
    pub heartbeat: Duration,
    pub start_timeout: Duration,
    pub drain: Duration,
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// Runs made at once, at most.
    pub max_runs: usize,
    pub upstream_host: std::net::IpAddr,
    /// Where a gateway on this host is handed apps' connections.
    pub handoff_socket: PathBuf,
    /// Connections open to one app at once, at most.
    pub app_max_connections: usize,
    pub sandbox: SandboxConfig,
    /// All build caches of this runner together, at most; 0: none.
    pub build_cache_bytes: u64,
    /// Releases kept per project and environment; 0: none.
    pub releases_kept: usize,
    /// The largest built tree kept as a release.
    pub release_max_bytes: u64,
}

impl RunnerConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let number = |variable: &str, default: u64| positive(source, variable, default);
        let workdir = source.get("DEPLOY_RUNNER_WORKDIR").map_or_else(
            // One per user: the directory must be the runner's own.
            || std::env::temp_dir().join(format!("capsule-runner-{}", nix::unistd::geteuid())),
            PathBuf::from,
        );
        Ok(Self {
            source: SourceConfig::from_source(source)?,
            handoff_socket: source
                .get("DEPLOY_RUNNER_HANDOFF_SOCKET")
                .map_or_else(|| workdir.join(".sockets").join("handoff.sock"), PathBuf::from),
            workdir,
            app_max_connections: positive(source, "DEPLOY_APP_MAX_CONNECTIONS", 512)?,
            timeout: Duration::from_secs(number("DEPLOY_RUNNER_TIMEOUT_SECS", 600)?),
            max_output_bytes: number("DEPLOY_RUNNER_MAX_OUTPUT_BYTES", 10 * 1024 * 1024)?,
            lines_per_sec: positive(source, "DEPLOY_RUNNER_LINES_PER_SEC", 1000)?,
            heartbeat: Duration::from_millis(number("DEPLOY_RUNNER_HEARTBEAT_MS", 300)?),
            start_timeout: Duration::from_secs(number("DEPLOY_START_TIMEOUT_SECS", 60)?),
            drain: Duration::from_secs(parse_or(
                source,
                "DEPLOY_DRAIN_SECS",
                10,
                "expected a whole number of seconds",
            )?),
            max_restarts: parse_or(source, "DEPLOY_MAX_RESTARTS", 3, "expected a whole number")?,
            restart_window: Duration::from_secs(number("DEPLOY_RESTART_WINDOW_SECS", 60)?),
            max_runs: parse_or(source, "DEPLOY_RUNNER_MAX_RUNS", 2, "expected a whole number")?,
            upstream_host: parse_or(
                source,
                "DEPLOY_RUNNER_UPSTREAM_HOST",
                std::net::IpAddr::from([127, 0, 0, 1]),
                "expected an IP address such as 127.0.0.1",
            )?,
            sandbox: SandboxConfig::from_source(source)?,
            build_cache_bytes: parse_or::<u64>(
                source,
                "DEPLOY_BUILD_CACHE_MB",
                10240,
                "expected a whole number of megabytes (0: no build caches)",
            )?
            .saturating_mul(1024 * 1024),
            releases_kept: parse_or(
                source,
                "DEPLOY_RELEASES_KEPT",
                5,
                "expected a whole number of releases (0: none kept)",
            )?,
            release_max_bytes: positive::<u64>(source, "DEPLOY_RELEASE_MAX_MB", 2048)?.saturating_mul(1024 * 1024),
        })
    }
}

/// Where a runner in its own process finds the deploy service, and the
/// credential it claims deployments with.
#[derive(Debug, Clone)]
pub struct Connection {
    pub deploy_url: String,
    pub token: SecretString,
}

impl Connection {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let deploy_url = capsule::config::ServiceUrls::from_source(source)?.deploy;
        let token = source.get(TOKEN_VARIABLE).ok_or_else(|| {
            ConfigError::invalid(
                TOKEN_VARIABLE,
                "",
                &format!(
                    "a runner needs its token: create one with CreateRunner on the deploy service ({}) and set \
                     {TOKEN_VARIABLE} or {TOKEN_VARIABLE}_FILE",
                    ServiceKind::Deploy.service_url_variable()
                ),
            )
        })?;
        Ok(Self {
            deploy_url,
            token: token.into(),
        })
    }
}

/// The variable that holds a runner's own token.
pub const TOKEN_VARIABLE: &str = "CAPSULE_RUNNER_TOKEN";

/// How user commands are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    Bubblewrap,
    None,
    Auto,
}

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    pub uid_base: u32,
    pub uid_count: u32,
    pub memory_bytes: u64,
    /// The whole sandbox's memory and CPUs (its cgroup).
    pub total_memory_bytes: u64,
    pub cpus: f64,
    pub processes: u64,
    pub open_files: u64,
    pub file_size_bytes: u64,
    pub tmp_bytes: u64,
    /// Each working directory's and build cache's filesystem.
    pub disk_bytes: u64,
    pub ro_binds: Vec<PathBuf>,
}

impl SandboxConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let mode = match source.get("DEPLOY_RUNNER_SANDBOX").as_deref().map(str::trim) {
            None | Some("bwrap") => SandboxMode::Bubblewrap,
            Some("none") => SandboxMode::None,
            Some("auto") => SandboxMode::Auto,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "DEPLOY_RUNNER_SANDBOX",
                    other,
                    "expected bwrap, none or auto",
                ));
            }
        };
        let mib = |variable: &str, default: u64| positive(source, variable, default).map(|mb| mb * 1024 * 1024);
        Ok(Self {
            mode,
            uid_base: positive(source, "DEPLOY_SANDBOX_UID_BASE", 200_000)?,
            uid_count: positive(source, "DEPLOY_SANDBOX_UID_COUNT", 50_000)?,
            memory_bytes: mib("DEPLOY_SANDBOX_MEMORY_MB", 2048)?,
            total_memory_bytes: mib("DEPLOY_SANDBOX_TOTAL_MEMORY_MB", 1024)?,
            cpus: match parse_or::<f64>(
                source,
                "DEPLOY_SANDBOX_CPUS",
                1.0,
                "expected a number of CPUs such as 0.5 or 2",
            )? {
                cpus if cpus > 0.0 && cpus <= 1024.0 => cpus,
                other => {
                    return Err(ConfigError::invalid(
                        "DEPLOY_SANDBOX_CPUS",
                        &other.to_string(),
                        "expected a number of CPUs above 0, such as 0.5 or 2",
                    ));
                }
            },
            processes: positive(source, "DEPLOY_SANDBOX_PROCESSES", 512)?,
            open_files: positive(source, "DEPLOY_SANDBOX_OPEN_FILES", 1024)?,
            file_size_bytes: mib("DEPLOY_SANDBOX_FILE_SIZE_MB", 1024)?,
            tmp_bytes: mib("DEPLOY_SANDBOX_TMP_MB", 256)?,
            disk_bytes: mib("DEPLOY_SANDBOX_DISK_MB", 4096)?,
            ro_binds: paths(source, "DEPLOY_SANDBOX_RO_BINDS")?,
        })
    }
}
