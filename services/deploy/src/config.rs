//! The deploy service's settings.
//!
//! | variable | default |
//! |---|---|
//! | `DEPLOY_LOCAL_RUNNER` | `false`: run the built-in local runner in this process (`capsule serve deploy --runner local`; `capsule dev` turns it on) |
//! | `DEPLOY_RUNNER_TOKEN` | unset: the runner API is closed; the local runner makes one up when unset |
//! | `DEPLOY_LEASE_SECS` | `30`: a claim lasts this long without a heartbeat |
//! | `DEPLOY_RUNNER_WORKDIR` | the system temp directory: where builds run, one fresh directory each |
//! | `DEPLOY_RUNNER_TIMEOUT_SECS` | `600`: a build or start command running longer is killed |
//! | `DEPLOY_RUNNER_MAX_OUTPUT_BYTES` | `10485760`: output beyond this fails the deployment |
//! | `DEPLOY_RUNNER_HEARTBEAT_MS` | `300`: how often the local runner renews its lease (and notices a cancel) |
//! | `DEPLOY_RUNNER_START_GRACE_SECS` | `2`: a start command still running after this is LIVE |

use std::{path::PathBuf, time::Duration};

use capsule::config::{ConfigError, ProcessEnv, Source, parse_bool, positive};

#[derive(Debug, Clone)]
pub struct DeployConfig {
    pub lease: Duration,
    pub runner: Option<RunnerConfig>,
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub workdir: PathBuf,
    pub timeout: Duration,
    pub max_output_bytes: u64,
    pub heartbeat: Duration,
    pub start_grace: Duration,
}

impl DeployConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let local = parse_bool(source, "DEPLOY_LOCAL_RUNNER", false)?;
        let number = |variable: &str, default: u64| positive(source, variable, default);
        let runner = if local {
            Some(RunnerConfig {
                workdir: source
                    .get("DEPLOY_RUNNER_WORKDIR")
                    .map_or_else(|| std::env::temp_dir().join("capsule-runner"), PathBuf::from),
                timeout: Duration::from_secs(number("DEPLOY_RUNNER_TIMEOUT_SECS", 600)?),
                max_output_bytes: number("DEPLOY_RUNNER_MAX_OUTPUT_BYTES", 10 * 1024 * 1024)?,
                heartbeat: Duration::from_millis(number("DEPLOY_RUNNER_HEARTBEAT_MS", 300)?),
                start_grace: Duration::from_secs(number("DEPLOY_RUNNER_START_GRACE_SECS", 2)?),
            })
        } else {
            None
        };
        Ok(Self {
            lease: Duration::from_secs(number("DEPLOY_LEASE_SECS", 30)?),
            runner,
        })
    }
}
