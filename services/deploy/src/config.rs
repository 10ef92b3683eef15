//! The deploy service's settings.
//!
//! | variable | default |
//! |---|---|
//! | `DEPLOY_LOCAL_RUNNER` | `false`: run the built-in local runner in this process (`capsule serve deploy --runner local`; `capsule dev` turns it on); it registers itself as runner `local:<hostname>` with a fresh token on every start |
//! | `DEPLOY_MAX_BUILDS_PER_PROJECT` | `2`: deployments of one project built at once; runners claim the others later. Claims go round-robin across owners: the next is the oldest queued deployment of the owner served least recently |
//! | `DEPLOY_MAX_ENVIRONMENTS` | `10`: environments of one project with a deployment queued, building or live; a deployment that would open one more is RESOURCE_EXHAUSTED |
//! | `DEPLOY_MAX_STREAMS_PER_USER` | `20`: follow streams (`StreamLogs`) one user (or API token's owner) keeps open at once on one deploy process; one more is RESOURCE_EXHAUSTED |
//! | `DEPLOY_LEASE_SECS` | `30`: a claim lasts this long without a heartbeat |
//! | `DEPLOY_MAX_LOG_LINES` | `100000`: build output lines kept per deployment, later ones dropped (state changes are always kept); a live app keeps its newest this many runtime lines |
//! | `DEPLOY_LOG_RETENTION_DAYS` | `30`: logs of deployments that failed, were canceled or superseded this long ago are deleted |
//! | `DEPLOY_LOCAL_REPOSITORIES` | unset: directories (colon-separated) under which a project's repository may be a local path or file:// URL; unset, local repositories are refused |
//! | `DEPLOY_POLL_INTERVAL_SECS` | `60`: how often auto-deploying projects' branches are polled (`git ls-remote`); `0` turns polling off (push events still deploy) |
//! | `DEPLOY_POLL_CONCURRENCY`, `DEPLOY_POLL_TIMEOUT_SECS` | `8`, `20`: repositories polled at once, and how long one may take; a repository that fails is polled again after doubling intervals, up to an hour |
//! | `DEPLOY_REAP_INTERVAL_SECS` | `60`: how often the live deployments of deleted projects are looked for and stopped |
//! | `DEPLOY_MAX_SOURCE_MB` | `512`: the largest file a source checkout may write |
//! | `DEPLOY_RUNNER_WORKDIR` | `capsule-runner-<uid>` in the system temp directory: where builds run, one fresh directory each; it must belong to the runner's user, who alone may list it |
//! | `DEPLOY_RUNNER_TIMEOUT_SECS` | `600`: a build or start command running longer is killed (also its CPU-time limit) |
//! | `DEPLOY_RUNNER_MAX_OUTPUT_BYTES` | `10485760`: a build printing more is killed (bytes counted as they arrive) |
//! | `DEPLOY_RUNNER_LINES_PER_SEC` | `1000`: output lines sent per second (bursts of 5×); the rest are dropped and counted |
//! | `DEPLOY_RUNNER_HEARTBEAT_MS` | `300`: how often the local runner renews its lease (and notices a cancel) |
//! | `DEPLOY_START_TIMEOUT_SECS` | `60`: a start command must answer on `PORT` (and its health check) within this, or the deployment fails |
//! | `DEPLOY_DRAIN_SECS` | `10`: a superseded app keeps serving this long (while the gateway switches) before SIGTERM, then 5 s before SIGKILL |
//! | `DEPLOY_MAX_RESTARTS`, `DEPLOY_RESTART_WINDOW_SECS` | `3`, `60`: a live app that exits is restarted with backoff; one more exit within the window makes it CRASHED |
//! | `DEPLOY_RUNNER_UPSTREAM_HOST` | `127.0.0.1`: the address the runner serves live apps on for the gateway (the gateway must reach it) |
//! | `DEPLOY_RUNNER_SANDBOX` | `bwrap`: every command in a bubblewrap sandbox, and the runner refuses to start without one; `none`: unisolated (each deployment's log says so); `auto`: `bwrap` when it works, else `none` (what `capsule dev` uses) |
//! | `DEPLOY_SANDBOX_UID_BASE`, `DEPLOY_SANDBOX_UID_COUNT` | `200000`, `50000`: when the runner runs as root, each project's commands run as uid/gid base + the project's sandbox slot (given by the deploy service at the project's first claim, never shared or reused); a project whose slot is not below the count is refused, saying to raise it |
//! | `DEPLOY_SANDBOX_MEMORY_MB` | `2048`: address space of each process |
//! | `DEPLOY_SANDBOX_PROCESSES` | `512`: processes of one project's sandbox user |
//! | `DEPLOY_SANDBOX_OPEN_FILES` | `1024`: open files per process |
//! | `DEPLOY_SANDBOX_FILE_SIZE_MB` | `1024`: largest file a command may write |
//! | `DEPLOY_SANDBOX_TMP_MB` | `256`: size of the sandbox's private `/tmp` |
//! | `DEPLOY_WEBHOOK_TIMEOUT_SECS` | `10`: a webhook receiver must answer within this |
//! | `DEPLOY_WEBHOOK_MAX_ATTEMPTS` | `8`: attempts at one delivery before it is marked failed |
//! | `DEPLOY_WEBHOOK_PER_ENDPOINT` | `2`: deliveries to one endpoint in flight at once (of 32 per process), so slow receivers never hold every slot; an endpoint that times out has all its pending deliveries wait for its retry |
//! | `DEPLOY_WEBHOOK_RETRY_SECS` | `30`: the wait before the second attempt; it doubles each time, up to an hour |
//! | `DEPLOY_EGRESS_ALLOWED_NETWORKS` | unset: networks (comma-separated CIDRs) git may fetch repositories from although private; unset, only public addresses |
//! | `DEPLOY_WEBHOOK_ALLOWED_NETWORKS` | unset: networks (comma-separated CIDRs, such as `10.20.0.0/16`) webhooks may be delivered to although private; unset, only public addresses |
//! | `DEPLOY_SANDBOX_RO_BINDS` | unset: more host paths (colon-separated) shown read-only inside, e.g. a toolchain under `/opt` |

use std::{path::PathBuf, time::Duration};

use capsule::config::{ConfigError, ProcessEnv, Source, parse_bool, positive};

#[derive(Debug, Clone)]
pub struct DeployConfig {
    pub poll_interval: Option<Duration>,
    pub poll_concurrency: usize,
    pub poll_timeout: Duration,
    pub reap_interval: Duration,
    pub lease: Duration,
    pub source: SourceConfig,
    pub max_log_lines: u64,
    pub max_builds_per_project: u64,
    pub max_environments: u64,
    pub max_streams_per_user: u64,
    pub log_retention: Duration,
    pub runner: Option<RunnerConfig>,
    pub webhooks: WebhookConfig,
}

/// How webhooks are delivered.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub timeout: Duration,
    pub max_attempts: i32,
    /// The wait before the second attempt; it doubles each time.
    pub retry: Duration,
    /// Private networks the operator lets webhooks reach.
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// Deliveries to one endpoint in flight at once, per process.
    pub per_endpoint: u32,
}

impl WebhookConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let allowed_networks = networks(source, "DEPLOY_WEBHOOK_ALLOWED_NETWORKS")?;
        Ok(Self {
            timeout: Duration::from_secs(positive(source, "DEPLOY_WEBHOOK_TIMEOUT_SECS", 10)?),
            max_attempts: positive(source, "DEPLOY_WEBHOOK_MAX_ATTEMPTS", 8)?,
            retry: Duration::from_secs(positive(source, "DEPLOY_WEBHOOK_RETRY_SECS", 30)?),
            allowed_networks,
            per_endpoint: positive(source, "DEPLOY_WEBHOOK_PER_ENDPOINT", 2)?,
        })
    }
}

/// Networks (comma-separated CIDRs) the operator lets tenants' URLs reach
/// although the guard refuses them.
fn networks(source: &dyn Source, variable: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let Some(value) = source.get(variable) else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|net| !net.is_empty())
        .map(|net| {
            net.parse().map_err(|_| {
                ConfigError::invalid(
                    variable,
                    &value,
                    "expected networks such as 10.20.0.0/16, comma-separated",
                )
            })
        })
        .collect()
}

/// Where deployments' source may come from.
#[derive(Debug, Clone, Default)]
pub struct SourceConfig {
    pub local_repositories: Vec<PathBuf>,
    pub max_bytes: u64,
    /// Private networks the operator lets git reach.
    pub allowed_networks: Vec<ipnet::IpNet>,
}

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
    pub upstream_host: std::net::IpAddr,
    pub sandbox: SandboxConfig,
}

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
    pub processes: u64,
    pub open_files: u64,
    pub file_size_bytes: u64,
    pub tmp_bytes: u64,
    pub ro_binds: Vec<PathBuf>,
}

/// Absolute paths separated by ':'.
fn paths(source: &dyn Source, variable: &str) -> Result<Vec<PathBuf>, ConfigError> {
    let Some(value) = source.get(variable) else {
        return Ok(Vec::new());
    };
    value
        .split(':')
        .filter(|path| !path.is_empty())
        .map(|path| {
            let path = PathBuf::from(path);
            if path.is_absolute() {
                Ok(path)
            } else {
                Err(ConfigError::invalid(
                    variable,
                    &value,
                    "expected absolute paths separated by ':'",
                ))
            }
        })
        .collect()
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
        let ro_binds = paths(source, "DEPLOY_SANDBOX_RO_BINDS")?;
        Ok(Self {
            mode,
            uid_base: positive(source, "DEPLOY_SANDBOX_UID_BASE", 200_000)?,
            uid_count: positive(source, "DEPLOY_SANDBOX_UID_COUNT", 50_000)?,
            memory_bytes: mib("DEPLOY_SANDBOX_MEMORY_MB", 2048)?,
            processes: positive(source, "DEPLOY_SANDBOX_PROCESSES", 512)?,
            open_files: positive(source, "DEPLOY_SANDBOX_OPEN_FILES", 1024)?,
            file_size_bytes: mib("DEPLOY_SANDBOX_FILE_SIZE_MB", 1024)?,
            tmp_bytes: mib("DEPLOY_SANDBOX_TMP_MB", 256)?,
            ro_binds,
        })
    }
}

impl DeployConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let local = parse_bool(source, "DEPLOY_LOCAL_RUNNER", false)?;
        let number = |variable: &str, default: u64| positive(source, variable, default);
        let source_config = SourceConfig {
            local_repositories: paths(source, "DEPLOY_LOCAL_REPOSITORIES")?,
            max_bytes: number("DEPLOY_MAX_SOURCE_MB", 512)? * 1024 * 1024,
            allowed_networks: networks(source, "DEPLOY_EGRESS_ALLOWED_NETWORKS")?,
        };
        let runner = if local {
            Some(RunnerConfig {
                source: source_config.clone(),
                workdir: source.get("DEPLOY_RUNNER_WORKDIR").map_or_else(
                    // One per user: the directory must be the runner's own.
                    || std::env::temp_dir().join(format!("capsule-runner-{}", nix::unistd::geteuid())),
                    PathBuf::from,
                ),
                timeout: Duration::from_secs(number("DEPLOY_RUNNER_TIMEOUT_SECS", 600)?),
                max_output_bytes: number("DEPLOY_RUNNER_MAX_OUTPUT_BYTES", 10 * 1024 * 1024)?,
                lines_per_sec: positive(source, "DEPLOY_RUNNER_LINES_PER_SEC", 1000)?,
                heartbeat: Duration::from_millis(number("DEPLOY_RUNNER_HEARTBEAT_MS", 300)?),
                start_timeout: Duration::from_secs(number("DEPLOY_START_TIMEOUT_SECS", 60)?),
                drain: Duration::from_secs(capsule::config::parse_or(
                    source,
                    "DEPLOY_DRAIN_SECS",
                    10,
                    "expected a whole number of seconds",
                )?),
                max_restarts: capsule::config::parse_or(source, "DEPLOY_MAX_RESTARTS", 3, "expected a whole number")?,
                restart_window: Duration::from_secs(number("DEPLOY_RESTART_WINDOW_SECS", 60)?),
                upstream_host: capsule::config::parse_or(
                    source,
                    "DEPLOY_RUNNER_UPSTREAM_HOST",
                    std::net::IpAddr::from([127, 0, 0, 1]),
                    "expected an IP address such as 127.0.0.1",
                )?,
                sandbox: SandboxConfig::from_source(source)?,
            })
        } else {
            None
        };
        let poll: u64 = capsule::config::parse_or(
            source,
            "DEPLOY_POLL_INTERVAL_SECS",
            60,
            "expected a whole number of seconds",
        )?;
        Ok(Self {
            poll_interval: (poll > 0).then(|| Duration::from_secs(poll)),
            poll_concurrency: positive(source, "DEPLOY_POLL_CONCURRENCY", 8)?,
            poll_timeout: Duration::from_secs(number("DEPLOY_POLL_TIMEOUT_SECS", 20)?),
            reap_interval: Duration::from_secs(number("DEPLOY_REAP_INTERVAL_SECS", 60)?),
            source: source_config,
            lease: Duration::from_secs(number("DEPLOY_LEASE_SECS", 30)?),
            max_log_lines: number("DEPLOY_MAX_LOG_LINES", 100_000)?,
            max_builds_per_project: number("DEPLOY_MAX_BUILDS_PER_PROJECT", 2)?,
            max_environments: number("DEPLOY_MAX_ENVIRONMENTS", 10)?,
            max_streams_per_user: number("DEPLOY_MAX_STREAMS_PER_USER", 20)?,
            log_retention: Duration::from_secs(number("DEPLOY_LOG_RETENTION_DAYS", 30)? * 24 * 3600),
            runner,
            webhooks: WebhookConfig::from_source(source)?,
        })
    }
}
