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

use capsule::config::{ConfigError, ProcessEnv, Source};

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

fn number(source: &dyn Source, variable: &str, default: u64) -> Result<u64, ConfigError> {
    match source.get(variable) {
        None => Ok(default),
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(value) if value > 0 => Ok(value),
            _ => Err(ConfigError {
                variable: variable.to_owned(),
                value: format!("{raw:?}"),
                reason: "expected a positive whole number".to_owned(),
            }),
        },
    }
}

impl DeployConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let local = match source.get("DEPLOY_LOCAL_RUNNER").as_deref().map(str::trim) {
            None | Some("false" | "0" | "no") => false,
            Some("true" | "1" | "yes") => true,
            Some(other) => {
                return Err(ConfigError {
                    variable: "DEPLOY_LOCAL_RUNNER".to_owned(),
                    value: format!("{other:?}"),
                    reason: "expected true or false".to_owned(),
                });
            }
        };
        let runner = if local {
            Some(RunnerConfig {
                workdir: source
                    .get("DEPLOY_RUNNER_WORKDIR")
                    .map_or_else(|| std::env::temp_dir().join("capsule-runner"), PathBuf::from),
                timeout: Duration::from_secs(number(source, "DEPLOY_RUNNER_TIMEOUT_SECS", 600)?),
                max_output_bytes: number(source, "DEPLOY_RUNNER_MAX_OUTPUT_BYTES", 10 * 1024 * 1024)?,
                heartbeat: Duration::from_millis(number(source, "DEPLOY_RUNNER_HEARTBEAT_MS", 300)?),
                start_grace: Duration::from_secs(number(source, "DEPLOY_RUNNER_START_GRACE_SECS", 2)?),
            })
        } else {
            None
        };
        Ok(Self {
            lease: Duration::from_secs(number(source, "DEPLOY_LEASE_SECS", 30)?),
            runner,
        })
    }
}
