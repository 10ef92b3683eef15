//! Runs: a one-off command or a cron entry's run, made from a live
//! release in a sandbox of its own (its own working directory, cgroup and
//! way out, the project's variables), within its time limit. It holds no
//! claim on the deployment: its lines are marked "run.<id>" and its end
//! is reported with ReportRun.

use std::time::Duration;

use capsule::proto::deploy::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::{
    Runner,
    job::Job,
    process::{Ended, pump},
};

impl Runner {
    /// Runs `run`'s command once and reports how it ended.
    pub(crate) async fn one_off(&self, job: &Job, run: &pb::Run, shutdown: &CancellationToken) {
        let reporter = &job.reporter;
        let limit = Duration::from_secs(u64::from(run.time_limit_seconds.max(1)));
        reporter.system(format!("$ {}", run.command)).await;
        let kills = job.oom_kills();
        let ended = match self.spawn(job, &run.command, Some(limit), None) {
            Ok(child) => {
                pump(
                    reporter,
                    child,
                    shutdown.child_token(),
                    self.limits(Some(limit)),
                    &job.masker,
                )
                .await
            }
            Err(err) => {
                reporter.run_ended(None, format!("cannot start: {err}")).await;
                return;
            }
        };
        let (code, failure) = match ended {
            Ended::Exited(code) => match job.out_of_memory_since(kills) {
                Some(why) => (Some(code), format!("killed: {why} (exit code {code})")),
                None => (Some(code), String::new()),
            },
            Ended::Killed(why) if why.starts_with("time limit") => (
                None,
                format!("stopped: it ran for more than its time limit of {} s", limit.as_secs()),
            ),
            Ended::Killed(why) => (None, format!("stopped: {why}")),
            Ended::Canceled => (None, "stopped: the runner stopped".to_owned()),
        };
        reporter.run_ended(code, failure).await;
    }
}
