//! The deploy service's settings. The runner's own (the sandbox, builds,
//! live apps, where source may come from) are in `capsule_runner::config`;
//! the service reads them for the in-process runner and for resolving refs.
//!
//! | variable | default |
//! |---|---|
//! | `DEPLOY_LOCAL_RUNNER` | `false`: run the built-in local runner in this process (`capsule serve deploy --runner local`; `capsule dev` turns it on); it registers itself as runner `local:<hostname>` with a fresh token on every start |
//! | `DEPLOY_MAX_BUILDS_PER_PROJECT` | `2`: deployments of one project built at once; runners claim the others later. Claims go round-robin across owners: the next is the oldest queued deployment of the owner served least recently |
//! | `DEPLOY_MAX_RUNS_PER_PROJECT` | `3`: runs (one-off commands, cron entries' runs) of one project queued or running at once; one more one-off is RESOURCE_EXHAUSTED, a cron entry's due time is skipped and logged |
//! | `DEPLOY_MAX_ENVIRONMENTS` | `10`: environments of one project with a deployment queued, building or live; a deployment that would open one more is RESOURCE_EXHAUSTED |
//! | `DEPLOY_MAX_STREAMS_PER_USER` | `20`: follow streams (`StreamLogs`) one user (or API token's owner) keeps open at once on one deploy process; one more is RESOURCE_EXHAUSTED |
//! | `DEPLOY_LEASE_SECS` | `30`: a claim, or a runner's copy of a live app, lasts this long without a heartbeat |
//! | `DEPLOY_RELEASES_DIR` | `capsule-releases-<uid>` in the system temp directory: where the releases runners upload are kept (by digest), so that any runner can start a copy or a rollback without a build; sources uploaded by `capsule up` are kept there too |
//! | `DEPLOY_MAX_UPLOAD_MB` | `100`: the largest source archive `capsule up` (`UploadSource`) may send |
//! | `DEPLOY_AUTO_ROLLBACK_SECS` | `600`: a deployment that crashes (past `DEPLOY_MAX_RESTARTS`) within this long of going live is replaced by the release it superseded, from its kept artifact, without a build; `0` turns automatic rollback off |
//! | `DEPLOY_MAX_LOG_LINES` | `100000`: build output lines kept per deployment, later ones dropped (state changes are always kept); a live app keeps its newest this many runtime lines |
//! | `DEPLOY_LOG_RETENTION_DAYS` | `30`: logs of deployments that failed, were canceled or superseded this long ago are deleted |
//! | `DEPLOY_POLL_INTERVAL_SECS` | `60`: how often auto-deploying projects' branches are polled (`git ls-remote`); `0` turns polling off (push events still deploy) |
//! | `DEPLOY_POLL_CONCURRENCY`, `DEPLOY_POLL_TIMEOUT_SECS` | `8`, `20`: repositories polled at once, and how long one may take; a repository that fails is polled again after doubling intervals, up to an hour |
//! | `DEPLOY_REAP_INTERVAL_SECS` | `60`: how often the live deployments of deleted projects are looked for and stopped |
//! | `DEPLOY_WEBHOOK_TIMEOUT_SECS` | `10`: a webhook receiver must answer within this |
//! | `DEPLOY_WEBHOOK_MAX_ATTEMPTS` | `8`: attempts at one delivery before it is marked failed |
//! | `DEPLOY_WEBHOOK_PER_ENDPOINT` | `2`: deliveries to one endpoint in flight at once (of 32 per process), so slow receivers never hold every slot; an endpoint that times out has all its pending deliveries wait for its retry |
//! | `DEPLOY_WEBHOOK_RETRY_SECS` | `30`: the wait before the second attempt; it doubles each time, up to an hour |
//! | `DEPLOY_WEBHOOK_ALLOWED_NETWORKS` | unset: networks (comma-separated CIDRs, such as `10.20.0.0/16`) webhooks may be delivered to although private; unset, only public addresses |

use std::time::Duration;

use capsule::config::{ConfigError, ProcessEnv, Source, networks, parse_bool, parse_or, positive};
pub use capsule_runner::config::{RunnerConfig, SourceConfig};

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
    pub max_runs_per_project: u64,
    pub max_environments: u64,
    /// How soon after going live a crash rolls back; zero: never.
    pub auto_rollback: Duration,
    pub max_streams_per_user: u64,
    pub log_retention: Duration,
    /// Where uploaded releases (and uploaded sources) are kept.
    pub releases_dir: std::path::PathBuf,
    /// The largest source archive `capsule up` may upload.
    pub max_upload_bytes: u64,
    pub runner: Option<RunnerConfig>,
    pub webhooks: WebhookConfig,
    /// Certificates for custom domains (`acme/config.rs` lists the
    /// variables).
    pub acme: crate::acme::AcmeConfig,
    /// Apps' databases and backups (`databases/mod.rs` lists the
    /// variables).
    pub databases: crate::databases::DatabasesConfig,
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

impl DeployConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let local = parse_bool(source, "DEPLOY_LOCAL_RUNNER", false)?;
        let number = |variable: &str, default: u64| positive(source, variable, default);
        let source_config = SourceConfig::from_source(source)?;
        let runner = if local {
            Some(RunnerConfig::from_source(source)?)
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
            max_runs_per_project: number("DEPLOY_MAX_RUNS_PER_PROJECT", 3)?,
            max_environments: number("DEPLOY_MAX_ENVIRONMENTS", 10)?,
            auto_rollback: Duration::from_secs(parse_or(
                source,
                "DEPLOY_AUTO_ROLLBACK_SECS",
                600,
                "expected a whole number of seconds (0: no automatic rollback)",
            )?),
            max_streams_per_user: number("DEPLOY_MAX_STREAMS_PER_USER", 20)?,
            log_retention: Duration::from_secs(number("DEPLOY_LOG_RETENTION_DAYS", 30)? * 24 * 3600),
            releases_dir: source.get("DEPLOY_RELEASES_DIR").map_or_else(
                || std::env::temp_dir().join(format!("capsule-releases-{}", nix::unistd::geteuid())),
                std::path::PathBuf::from,
            ),
            max_upload_bytes: number("DEPLOY_MAX_UPLOAD_MB", 100)? * 1024 * 1024,
            runner,
            webhooks: WebhookConfig::from_source(source)?,
            acme: crate::acme::AcmeConfig::from_source(source)?,
            databases: crate::databases::DatabasesConfig::from_source(source)?,
        })
    }
}
