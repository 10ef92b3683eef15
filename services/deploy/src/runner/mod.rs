//! The built-in local runner: claims deployments through the runner API
//! (over gRPC, like any other runner, with a runner token of its own) and
//! really runs them.
//!
//! Each deployment gets a fresh working directory, owned by the project's
//! sandbox user. The build command runs in the sandbox ([`sandbox`]: the
//! only place that builds a user's command), its environment made only of
//! the deployment's variables plus PATH, HOME and LANG; [`process`] streams
//! its output into the logs, bounded and with secrets masked, and kills the
//! whole sandbox on a cancel, a time-out or too much output. The exit
//! status decides: 0 goes on to DEPLOYING and the start command, anything
//! else is FAILED with the exit code in the logs. A start command still
//! running after the grace period is LIVE and keeps running until a newer
//! deployment of the project goes live through this runner, or the runner
//! stops.

pub mod process;
pub mod sandbox;
pub mod source;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use capsule::proto::deploy::v1::{
    self as pb, ClaimDeploymentRequest, DeploymentState, HeartbeatRequest, LogEntry, LogStream, ReportStatusRequest,
    deploy_service_client::DeployServiceClient,
};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::{Request, service::interceptor::InterceptedService, transport::Channel};
use uuid::Uuid;

use crate::{
    config::RunnerConfig,
    notify::{Event, Hub},
};
use process::{Ended, Limits, LineSink, Masker, kill_group, pump};
use sandbox::{Sandbox, Spec};

type Client = DeployServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds the runner token to every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// Writes one deployment's lines and states through the runner API.
#[derive(Clone)]
struct Reporter {
    client: Client,
    deployment_id: String,
}

#[tonic::async_trait]
impl LineSink for Reporter {
    async fn lines(&self, lines: Vec<(LogStream, String)>) {
        if lines.is_empty() {
            return;
        }
        let entries = lines
            .into_iter()
            .map(|(stream, text)| LogEntry {
                stream: stream as i32,
                text,
            })
            .collect();
        let sent = self
            .client
            .clone()
            .append_logs(pb::AppendLogsRequest {
                deployment_id: self.deployment_id.clone(),
                runner_id: String::new(),
                entries,
            })
            .await;
        if let Err(status) = sent {
            tracing::debug!(deployment.id = %self.deployment_id, error = %status.message(), "log lines not written");
        }
    }
}

impl Reporter {
    async fn system(&self, line: String) {
        self.lines(vec![(LogStream::System, line)]).await;
    }

    async fn state(&self, state: DeploymentState, message: String, exit_code: Option<i32>) {
        let reported = self
            .client
            .clone()
            .report_status(ReportStatusRequest {
                deployment_id: self.deployment_id.clone(),
                runner_id: String::new(),
                state: state as i32,
                status_message: message,
                exit_code,
            })
            .await;
        if let Err(status) = reported {
            tracing::warn!(deployment.id = %self.deployment_id, error = %status.message(), "could not report the deployment's state");
        }
    }
}

/// A live deployment's start process.
struct LiveProcess {
    pid: i32,
    workdir: PathBuf,
    stop: CancellationToken,
}

impl LiveProcess {
    fn end(self) {
        self.stop.cancel();
        kill_group(self.pid);
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

pub struct LocalRunner {
    /// For logs: the runner's name.
    id: String,
    client: Client,
    config: RunnerConfig,
    sandbox: Sandbox,
    hub: Hub,
    live: Mutex<HashMap<String, LiveProcess>>,
}

/// The name the local runner registers under.
pub fn local_name() -> String {
    format!("local:{}", hostname())
}

impl LocalRunner {
    pub fn new(
        endpoint: &str,
        token: &str,
        config: RunnerConfig,
        sandbox: Sandbox,
        hub: Hub,
    ) -> anyhow::Result<Arc<Self>> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let bearer = Bearer(format!("Bearer {token}").parse()?);
        Ok(Arc::new(Self {
            id: local_name(),
            client: DeployServiceClient::with_interceptor(channel, bearer),
            config,
            sandbox,
            hub,
            live: Mutex::new(HashMap::new()),
        }))
    }

    /// Claims and runs deployments until `shutdown`; then kills what runs.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut events = self.hub.subscribe();
        tracing::info!(runner.id = %self.id, "local runner started");
        while !shutdown.is_cancelled() {
            let claimed = self
                .client
                .clone()
                .claim_deployment(ClaimDeploymentRequest {
                    runner_id: String::new(),
                    lease: None,
                })
                .await;
            match claimed.map(tonic::Response::into_inner) {
                Ok(pb::ClaimDeploymentResponse {
                    deployment: Some(deployment),
                    snapshot: Some(snapshot),
                    ..
                }) => {
                    self.execute(deployment, snapshot, &shutdown).await;
                    continue;
                }
                Ok(_) => {}
                Err(status) => tracing::debug!(error = %status.message(), "claim failed; retrying"),
            }
            // Wake on a new deployment, or every 2 s for expired leases.
            let deadline = tokio::time::sleep(Duration::from_secs(2));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = &mut deadline => break,
                    event = events.recv() => match event {
                        Ok(Event::State(_) | Event::Resync) | Err(_) => break,
                        Ok(Event::Log(_)) => {}
                    },
                }
            }
        }
        for (_, process) in self.live.lock().await.drain() {
            process.end();
        }
    }

    async fn execute(
        &self,
        deployment: pb::Deployment,
        snapshot: pb::DeploymentSnapshot,
        shutdown: &CancellationToken,
    ) {
        let reporter = Reporter {
            client: self.client.clone(),
            deployment_id: deployment.id.clone(),
        };
        tracing::info!(deployment.id = %deployment.id, runner.name = %self.id, "running deployment");
        if let Some(warning) = self.sandbox.warning() {
            reporter.system(warning.to_owned()).await;
        }
        let tenant: Uuid = deployment.project_id.parse().unwrap_or_default();
        let _ = std::fs::create_dir_all(&self.config.workdir);
        let workdir = match tempfile::Builder::new()
            .prefix(&format!("{}-", deployment.id))
            .tempdir_in(&self.config.workdir)
        {
            Ok(dir) => dir,
            Err(err) => {
                tracing::error!(error = %err, "cannot create a working directory");
                let message = "the runner cannot create a working directory".to_owned();
                reporter.state(DeploymentState::Failed, message, None).await;
                return;
            }
        };
        if !snapshot.repository_url.is_empty()
            && let Err(why) = self.fetch_source(&reporter, &snapshot, workdir.path()).await
        {
            reporter.system(why.clone()).await;
            reporter.state(DeploymentState::Failed, why, None).await;
            return;
        }
        let root = workdir.path().join(&snapshot.root_directory);
        if !snapshot.repository_url.is_empty() && !root.is_dir() {
            let why = format!(
                "the root directory {:?} is not in commit {}: fix the project's root_directory",
                snapshot.root_directory, snapshot.commit_sha
            );
            reporter.system(why.clone()).await;
            reporter.state(DeploymentState::Failed, why, None).await;
            return;
        }
        let prepared =
            std::fs::create_dir_all(&root).and_then(|()| self.sandbox.prepare_workdir(tenant, workdir.path()));
        if let Err(err) = prepared {
            tracing::error!(error = %err, "cannot prepare the working directory");
            let message = "the runner cannot prepare the working directory".to_owned();
            reporter.state(DeploymentState::Failed, message, None).await;
            return;
        }
        let masker = Masker::new(
            snapshot
                .secret_names
                .iter()
                .filter_map(|name| snapshot.environment.get(name))
                .map(String::as_str),
        );
        let job = Job {
            reporter: &reporter,
            snapshot: &snapshot,
            workdir: workdir.path().to_path_buf(),
            tenant,
            masker: Arc::new(masker),
        };

        // Heartbeats keep the claim; a cancel (or a lost claim) stops the work.
        let stop = shutdown.child_token();
        let heartbeat = tokio::spawn(heartbeat(reporter.clone(), stop.clone(), self.config.heartbeat));

        let built = if snapshot.build_command.trim().is_empty() {
            Ended::Exited(0)
        } else {
            reporter.system(format!("$ {}", snapshot.build_command)).await;
            match self.spawn(&job, &snapshot.build_command, Some(self.config.timeout)) {
                Ok(child) => {
                    let limits = self.limits(Some(self.config.timeout));
                    pump(&reporter, child, stop.clone(), limits, &job.masker).await
                }
                Err(err) => {
                    reporter.system(format!("cannot start the build: {err}")).await;
                    Ended::Exited(127)
                }
            }
        };
        match built {
            Ended::Exited(0) => {
                reporter.state(DeploymentState::Deploying, String::new(), Some(0)).await;
                if let Some(live) = self.start(&job, &stop, shutdown).await {
                    heartbeat.abort();
                    let live = LiveProcess {
                        workdir: workdir.keep(),
                        ..live
                    };
                    if let Some(previous) = self.live.lock().await.insert(deployment.project_id.clone(), live) {
                        previous.end();
                    }
                    return;
                }
            }
            Ended::Exited(code) => {
                reporter.system(format!("build failed: exit code {code}")).await;
                reporter
                    .state(
                        DeploymentState::Failed,
                        format!("build exited with code {code}"),
                        Some(code),
                    )
                    .await;
            }
            Ended::Killed(why) => {
                reporter.system(format!("build stopped: {why}")).await;
                reporter
                    .state(DeploymentState::Failed, format!("build stopped: {why}"), None)
                    .await;
            }
            Ended::Canceled => tracing::info!(deployment.id = %deployment.id, "build stopped: canceled"),
        }
        stop.cancel();
        let _ = heartbeat.await;
    }

    /// The start command: LIVE when it is still running after the grace
    /// period (returned, to keep) or exits 0; FAILED when it exits non-zero
    /// first. No start command: LIVE at once.
    async fn start(
        &self,
        job: &Job<'_>,
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Option<LiveProcess> {
        let (reporter, snapshot) = (job.reporter, job.snapshot);
        if snapshot.start_command.trim().is_empty() {
            reporter.state(DeploymentState::Live, String::new(), Some(0)).await;
            return None;
        }
        reporter.system(format!("$ {}", snapshot.start_command)).await;
        let child = match self.spawn(job, &snapshot.start_command, None) {
            Ok(child) => child,
            Err(err) => {
                reporter.system(format!("cannot start: {err}")).await;
                reporter
                    .state(DeploymentState::Failed, format!("cannot start: {err}"), None)
                    .await;
                return None;
            }
        };
        let pid = child.id().and_then(|pid| i32::try_from(pid).ok())?;
        // The process outlives this deployment's heartbeats: it stops with
        // the runner, or when replaced.
        let process_stop = shutdown.child_token();
        let limits = self.limits(None);
        let (sink, masker, stopper) = (reporter.clone(), job.masker.clone(), process_stop.clone());
        let mut running = tokio::spawn(async move { pump(&sink, child, stopper, limits, &masker).await });
        let early = tokio::select! {
            ended = &mut running => Some(ended.unwrap_or(Ended::Exited(128))),
            () = tokio::time::sleep(self.config.start_grace) => None,
            () = stop.cancelled() => {
                process_stop.cancel();
                Some(Ended::Canceled)
            }
        };
        match early {
            None => {
                reporter.state(DeploymentState::Live, String::new(), None).await;
                Some(LiveProcess {
                    pid,
                    workdir: PathBuf::new(),
                    stop: process_stop,
                })
            }
            Some(Ended::Exited(0)) => {
                reporter.state(DeploymentState::Live, String::new(), Some(0)).await;
                None
            }
            Some(Ended::Exited(code)) => {
                reporter.system(format!("start command failed: exit code {code}")).await;
                let message = format!("start command exited with code {code}");
                reporter.state(DeploymentState::Failed, message, Some(code)).await;
                None
            }
            Some(Ended::Killed(why)) => {
                reporter
                    .state(DeploymentState::Failed, format!("start stopped: {why}"), None)
                    .await;
                None
            }
            Some(Ended::Canceled) => None,
        }
    }

    /// Fetches the deployment's commit into `dir`; why not, in words the
    /// user can act on.
    async fn fetch_source(
        &self,
        reporter: &Reporter,
        snapshot: &pb::DeploymentSnapshot,
        dir: &std::path::Path,
    ) -> Result<(), String> {
        reporter
            .system(format!(
                "fetching {} at {}",
                snapshot.repository_url, snapshot.commit_sha
            ))
            .await;
        let repository = source::Repository::parse(&snapshot.repository_url, &self.config.source.local_repositories)
            .map_err(|err| format!("cannot fetch the source: {err}"))?;
        repository
            .checkout(&snapshot.commit_sha, dir, self.config.source.max_bytes)
            .await
            .map_err(|err| format!("cannot fetch the source: {err}"))
    }

    /// A user's command, in the sandbox.
    fn spawn(
        &self,
        job: &Job<'_>,
        command: &str,
        cpu_time: Option<Duration>,
    ) -> std::io::Result<tokio::process::Child> {
        let environment: HashMap<String, String> = job.snapshot.environment.clone();
        self.sandbox
            .command(&Spec {
                command,
                workdir: &job.workdir,
                root_directory: &job.snapshot.root_directory,
                environment: &environment,
                extra: &[],
                tenant: job.tenant,
                cpu_time,
            })
            .spawn()
    }

    fn limits(&self, time: Option<Duration>) -> Limits {
        Limits {
            time,
            output_bytes: self.config.max_output_bytes,
            lines_per_sec: self.config.lines_per_sec,
        }
    }
}

/// One claimed deployment being run.
struct Job<'a> {
    reporter: &'a Reporter,
    snapshot: &'a pb::DeploymentSnapshot,
    /// The working directory on the host.
    workdir: PathBuf,
    tenant: Uuid,
    masker: Arc<Masker>,
}

async fn heartbeat(reporter: Reporter, stop: CancellationToken, every: Duration) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let beat = reporter
            .client
            .clone()
            .heartbeat(HeartbeatRequest {
                deployment_id: reporter.deployment_id.clone(),
                runner_id: String::new(),
            })
            .await;
        match beat {
            Ok(response) if !response.get_ref().cancel_requested => {}
            // Canceled, or the claim is gone: stop the work.
            _ => {
                stop.cancel();
                return;
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "runner".to_owned())
}
