//! The built-in local runner: claims deployments through the runner API
//! (over gRPC, like any other runner) and really runs them.
//!
//! Each deployment gets a fresh working directory. The build command runs
//! with `sh -c`, its environment made only of the snapshot's variables (never
//! spliced into the command line) plus PATH, HOME and LANG, in a process
//! group of its own so a cancel or time-out kills everything it started.
//! stdout and stderr stream into the logs; the exit status decides: 0 goes
//! on to DEPLOYING and the start command, anything else is FAILED with the
//! exit code in the logs. A start command still running after the grace
//! period is LIVE and keeps running until a newer deployment of the project
//! goes live through this runner, or the runner stops.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use capsule::proto::deploy::v1::{
    self as pb, ClaimDeploymentRequest, DeploymentState, HeartbeatRequest, LogEntry, LogStream, ReportStatusRequest,
    deploy_service_client::DeployServiceClient,
};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::{Mutex, mpsc},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, service::interceptor::InterceptedService, transport::Channel};

use crate::{
    config::RunnerConfig,
    notify::{Event, Hub},
};

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

/// How a command ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Exited(i32),
    Killed(&'static str),
    Canceled,
}

/// Writes one deployment's lines and states through the runner API.
#[derive(Clone)]
struct Reporter {
    client: Client,
    runner_id: String,
    deployment_id: String,
}

impl Reporter {
    async fn lines(&self, lines: Vec<(LogStream, String)>) {
        if lines.is_empty() {
            return;
        }
        let entries = lines
            .into_iter()
            .map(|(stream, text)| LogEntry {
                stream: stream as i32,
                // A line is at most 16 KiB: cut on a character boundary.
                text: text.chars().take(4096).collect(),
            })
            .collect();
        let sent = self
            .client
            .clone()
            .append_logs(pb::AppendLogsRequest {
                deployment_id: self.deployment_id.clone(),
                runner_id: self.runner_id.clone(),
                entries,
            })
            .await;
        if let Err(status) = sent {
            tracing::debug!(deployment.id = %self.deployment_id, error = %status.message(), "log lines not written");
        }
    }

    async fn system(&self, line: String) {
        self.lines(vec![(LogStream::System, line)]).await;
    }

    async fn state(&self, state: DeploymentState, message: String, exit_code: Option<i32>) {
        let reported = self
            .client
            .clone()
            .report_status(ReportStatusRequest {
                deployment_id: self.deployment_id.clone(),
                runner_id: self.runner_id.clone(),
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
    id: String,
    client: Client,
    config: RunnerConfig,
    hub: Hub,
    live: Mutex<HashMap<String, LiveProcess>>,
}

fn kill_group(pid: i32) {
    let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
}

impl LocalRunner {
    pub fn new(endpoint: &str, token: &str, config: RunnerConfig, hub: Hub) -> anyhow::Result<Arc<Self>> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let bearer = Bearer(format!("Bearer {token}").parse()?);
        Ok(Arc::new(Self {
            id: format!("local-{}-{}", hostname(), std::process::id()),
            client: DeployServiceClient::with_interceptor(channel, bearer),
            config,
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
                    runner_id: self.id.clone(),
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
            runner_id: self.id.clone(),
            deployment_id: deployment.id.clone(),
        };
        tracing::info!(deployment.id = %deployment.id, runner.id = %self.id, "running deployment");
        let _ = std::fs::create_dir_all(&self.config.workdir);
        let workdir = match tempfile::Builder::new()
            .prefix(&format!("{}-", deployment.id))
            .tempdir_in(&self.config.workdir)
        {
            Ok(dir) => dir,
            Err(err) => {
                let message = format!("cannot create a working directory: {err}");
                reporter.state(DeploymentState::Failed, message, None).await;
                return;
            }
        };
        let root = workdir.path().join(&snapshot.root_directory);
        if let Err(err) = std::fs::create_dir_all(&root) {
            let message = format!("cannot create the root directory: {err}");
            reporter.state(DeploymentState::Failed, message, None).await;
            return;
        }

        // Heartbeats keep the claim; a cancel (or a lost claim) stops the work.
        let stop = shutdown.child_token();
        let heartbeat = tokio::spawn(heartbeat(reporter.clone(), stop.clone(), self.config.heartbeat));

        let built = if snapshot.build_command.trim().is_empty() {
            Ended::Exited(0)
        } else {
            reporter.system(format!("$ {}", snapshot.build_command)).await;
            match self.spawn(&snapshot.build_command, &snapshot.environment, &root) {
                Ok(child) => {
                    let limits = Limits {
                        time: Some(self.config.timeout),
                        output: self.config.max_output_bytes,
                    };
                    pump(reporter.clone(), child, stop.clone(), limits).await
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
                if let Some(live) = self.start(&reporter, &snapshot, &root, &stop, shutdown).await {
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
        reporter: &Reporter,
        snapshot: &pb::DeploymentSnapshot,
        root: &Path,
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Option<LiveProcess> {
        if snapshot.start_command.trim().is_empty() {
            reporter.state(DeploymentState::Live, String::new(), Some(0)).await;
            return None;
        }
        reporter.system(format!("$ {}", snapshot.start_command)).await;
        let child = match self.spawn(&snapshot.start_command, &snapshot.environment, root) {
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
        let limits = Limits {
            time: None,
            output: self.config.max_output_bytes,
        };
        let mut running = tokio::spawn(pump(reporter.clone(), child, process_stop.clone(), limits));
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

    fn spawn(&self, command: &str, environment: &HashMap<String, String>, root: &Path) -> std::io::Result<Child> {
        Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(root)
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
            )
            .env("HOME", root)
            .env("LANG", "C.UTF-8")
            .envs(environment)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
    }
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
                runner_id: reporter.runner_id.clone(),
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

struct Limits {
    time: Option<Duration>,
    output: u64,
}

/// Streams a process's output into the logs until it exits, `stop` is
/// cancelled, or it passes a limit; kills its process group in the last two
/// cases.
async fn pump(reporter: Reporter, mut child: Child, stop: CancellationToken, limits: Limits) -> Ended {
    let pid = child.id().and_then(|pid| i32::try_from(pid).ok()).unwrap_or(0);
    let (lines_tx, mut lines) = mpsc::channel::<(LogStream, String)>(1024);
    let pipes: [(LogStream, Option<Box<dyn AsyncRead + Unpin + Send>>); 2] = [
        (LogStream::Stdout, child.stdout.take().map(|pipe| Box::new(pipe) as _)),
        (LogStream::Stderr, child.stderr.take().map(|pipe| Box::new(pipe) as _)),
    ];
    for (stream, pipe) in pipes {
        if let Some(pipe) = pipe {
            let tx = lines_tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send((stream, line)).await.is_err() {
                        break;
                    }
                }
            });
        }
    }
    drop(lines_tx);

    let deadline = tokio::time::sleep(limits.time.unwrap_or(Duration::from_secs(u64::from(u32::MAX))));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut pending = Vec::new();
    let mut written = 0u64;
    let mut open = true;
    let ended = loop {
        tokio::select! {
            line = lines.recv(), if open => match line {
                Some((stream, text)) => {
                    written += text.len() as u64 + 1;
                    if written > limits.output {
                        kill_group(pid);
                        break Ended::Killed("output limit reached");
                    }
                    pending.push((stream, text));
                    if pending.len() >= 200 {
                        reporter.lines(std::mem::take(&mut pending)).await;
                    }
                }
                None => open = false,
            },
            _ = tick.tick() => reporter.lines(std::mem::take(&mut pending)).await,
            status = child.wait(), if !open => break match status {
                Ok(status) => Ended::Exited(status.code().unwrap_or(128)),
                Err(_) => Ended::Exited(128),
            },
            () = stop.cancelled() => {
                kill_group(pid);
                break Ended::Canceled;
            }
            () = &mut deadline => {
                kill_group(pid);
                break Ended::Killed("time limit reached");
            }
        }
    };
    while let Ok(line) = lines.try_recv() {
        pending.push(line);
    }
    reporter.lines(pending).await;
    let _ = child.wait().await;
    ended
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "runner".to_owned())
}
