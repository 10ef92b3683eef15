//! Workers: a live app's processes without a port (the settings' process
//! types without a schedule, the Procfile's other entries), each in its
//! own sandbox beside the web process, with the same release, variables
//! and cgroup. A worker that exits is started again after a backoff that
//! grows while it keeps exiting; it never takes the app down. Its lines
//! are the deployment's, marked with its name.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    Runner,
    job::Job,
    process::{Ended, Limits, STOP_GRACE, pump},
};

/// A worker that ran this long before it exited starts again at once.
const STEADY: Duration = Duration::from_secs(60);

/// The longest wait before a worker is started again.
const MAX_BACKOFF: Duration = Duration::from_secs(32);

/// A live app's running workers.
pub(crate) struct Workers {
    /// Asks each worker to stop: SIGTERM, the grace period, SIGKILL.
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Stops every worker gently and waits until each has ended.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

impl Runner {
    /// Starts `workers` (name, command) of a live app's `job`; `kill` ends
    /// them at once.
    pub(crate) fn start_workers(
        self: &Arc<Self>,
        job: &Job,
        workers: Vec<(String, String)>,
        kill: &CancellationToken,
    ) -> Workers {
        let stop = CancellationToken::new();
        // The running app never writes the next build's inputs.
        let job = Job {
            cache: None,
            ..job.clone()
        };
        let tasks = workers
            .into_iter()
            .map(|(name, command)| {
                let keep = self
                    .clone()
                    .keep(job.clone(), name, command, stop.clone(), kill.clone());
                tokio::spawn(keep)
            })
            .collect();
        Workers { stop, tasks }
    }

    /// Runs one worker until `stop` or `kill`, starting it again when it
    /// exits.
    async fn keep(
        self: Arc<Self>,
        job: Job,
        name: String,
        command: String,
        stop: CancellationToken,
        kill: CancellationToken,
    ) {
        let reporter = job.reporter.of_process(&name);
        let mut backoff = Duration::ZERO;
        loop {
            reporter.system(format!("$ {command}  (worker {name})")).await;
            let child = match self.spawn(&job, &command, None, None) {
                Ok(child) => child,
                Err(err) => {
                    reporter.system(format!("cannot start worker {name}: {err}")).await;
                    return;
                }
            };
            let pid = child.id().and_then(|pid| i32::try_from(pid).ok()).unwrap_or(0);
            let limits = Limits {
                time: None,
                output_bytes: u64::MAX,
                lines_per_sec: self.config.lines_per_sec,
            };
            let own = kill.child_token();
            let (sink, masker, killed) = (reporter.clone(), job.masker.clone(), own.clone());
            let mut running = tokio::spawn(async move { pump(&sink, child, killed, limits, &masker).await });
            let started = Instant::now();
            let ended = tokio::select! {
                ended = &mut running => ended.unwrap_or(Ended::Exited(128)),
                () = stop.cancelled() => {
                    self.signal(pid, Signal::SIGTERM);
                    // A finished task is never polled again.
                    if tokio::time::timeout(STOP_GRACE, &mut running).await.is_err() {
                        own.cancel();
                        let _ = running.await;
                    }
                    return;
                }
            };
            if kill.is_cancelled() || stop.is_cancelled() {
                return;
            }
            let code = match ended {
                Ended::Exited(code) => code,
                Ended::Killed(why) => {
                    reporter.system(format!("worker {name} was stopped: {why}")).await;
                    return;
                }
                Ended::Canceled => return,
            };
            backoff = match started.elapsed() >= STEADY {
                true => Duration::from_secs(1),
                false => (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF),
            };
            reporter
                .system(format!(
                    "worker {name} exited with code {code}; restarting in {} s",
                    backoff.as_secs()
                ))
                .await;
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return,
                () = kill.cancelled() => return,
            }
        }
    }
}
