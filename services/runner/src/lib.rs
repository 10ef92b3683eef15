//! Capsule's runner: claims deployments through the deploy service's
//! runner API (gRPC, with a runner token of its own) and really runs them.
//! It knows the deploy service only as that API: the same code runs in its
//! own process on any host (`capsule runner`, [`serve`]) and inside the
//! deploy service's process (`DEPLOY_LOCAL_RUNNER`, [`Runner::new`]).
//!
//! Each deployment gets a fresh working directory, owned by the project's
//! sandbox user. The build command runs in the sandbox ([`sandbox`]: the
//! only place that builds a user's command), its environment made only of
//! the deployment's variables plus PATH, HOME and LANG; [`process`] streams
//! its output into the logs, bounded and with secrets masked, and kills the
//! whole sandbox on a cancel, a time-out or too much output. The exit
//! status decides: 0 goes on to DEPLOYING and the start command, anything
//! else is FAILED with the exit code in the logs. The start command gets
//! PORT and is LIVE once it answers there ([`serve`]: through the sandbox's
//! forwarder, with the project's health check), with the upstream address
//! the gateway routes to; it keeps running, restarted with backoff when it
//! exits (CRASHED after too many restarts), until it is superseded — then
//! it keeps serving for the drain period while the gateway switches, gets
//! SIGTERM, a grace period and SIGKILL — or the runner stops. [`report`]
//! is the runner's side of the runner API (its token, lines, states,
//! heartbeats).

mod app;
pub mod artifact;
pub mod cache;
pub mod config;
pub mod disk;
pub mod egress;
mod fetch;
pub mod handoff;
pub mod host;
mod job;
pub mod limits;
mod oneoff;
pub mod plan;
pub mod process;
mod provision;
pub mod remote;
mod report;
pub mod sandbox;
pub mod serve;
pub mod source;
mod tools;
mod tunnel;
mod upload;
mod workers;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use capsule::proto::deploy::v1::{
    self as pb, ClaimDeploymentRequest, DeploymentState, EgressPhase, deploy_service_client::DeployServiceClient,
};
use tokio::{sync::Mutex, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use config::{Connection, RunnerConfig};
use job::{Job, LiveApp, failed_step, step_span};
use process::{Ended, Limits, Masker, pump};
pub use report::local_name;
use report::{Bearer, Client, Reporter, heartbeat};
use sandbox::{Sandbox, Spec};
use secrecy::ExposeSecret;

pub struct Runner {
    /// For logs: the runner's name.
    id: String,
    client: Client,
    config: RunnerConfig,
    sandbox: Sandbox,
    /// The supervisors of live apps, and the runs being made.
    live: Mutex<Vec<JoinHandle<()>>>,
    /// Runs being made now.
    runs: Arc<std::sync::atomic::AtomicUsize>,
    caches: cache::Caches,
    /// Releases kept for rollbacks.
    releases: artifact::Releases,
    /// The cgroups deployments are bounded by, or why there are none.
    cgroups: Result<limits::Cgroups, String>,
    /// The filesystems working directories and caches are bounded by, or
    /// why there are none.
    disks: Result<disk::Disks, String>,
    /// Live apps' connections handed to a gateway on this host.
    handoff: Arc<handoff::Handoff>,
}

/// Runs a runner in its own process until `shutdown`: the sandbox checked
/// first (a runner that cannot sandbox does not start), then claims from
/// the deploy service at `connection.deploy_url`.
pub async fn serve(connection: Connection, config: RunnerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let sandbox = Sandbox::new(config.sandbox.clone(), &config.workdir)
        .await
        .map_err(|why| anyhow::anyhow!("the runner {why}"))?;
    let token = connection.token.expose_secret();
    Runner::new(&connection.deploy_url, token, config, sandbox)?
        .run(shutdown)
        .await;
    Ok(())
}

/// How long the deploy service may hold a claim open while nothing is
/// queued (a long poll: a new deployment is claimed the moment it is).
const CLAIM_WAIT: Duration = Duration::from_secs(10);

impl Runner {
    pub fn new(endpoint: &str, token: &str, config: RunnerConfig, sandbox: Sandbox) -> anyhow::Result<Arc<Self>> {
        let channel = capsule::tls::channel(endpoint)?;
        let bearer = Bearer(format!("Bearer {token}").parse()?);
        let disks = match sandbox.isolated() {
            true => disk::Disks::detect(config.sandbox.disk_bytes),
            false => Err("commands run unisolated".to_owned()),
        };
        if let Ok(disks) = &disks {
            disks.sweep(&config.workdir);
        }
        Ok(Arc::new(Self {
            id: local_name(),
            client: DeployServiceClient::with_interceptor(channel, bearer),
            caches: cache::Caches::new(&config.workdir, config.build_cache_bytes, disks.as_ref().ok()),
            releases: artifact::Releases::new(&config.workdir, config.releases_kept, config.release_max_bytes),
            cgroups: match (sandbox.isolated(), nix::unistd::geteuid().is_root()) {
                (true, true) => limits::Cgroups::detect(),
                (true, false) => Err("the runner is not root".to_owned()),
                (false, _) => Err("commands run unisolated".to_owned()),
            },
            disks,
            config,
            sandbox,
            live: Mutex::new(Vec::new()),
            runs: Arc::default(),
            handoff: Arc::default(),
        }))
    }

    /// Claims and runs deployments until `shutdown`; then kills what runs.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let runner = self.clone();
        tracing::info!(runner.id = %self.id, "runner started");
        if self.sandbox.isolated() && tunnel::Tunnel::joins() {
            let path = self.config.handoff_socket.clone();
            tokio::spawn(self.handoff.clone().listen(path, shutdown.clone()));
        }
        // Until the deploy service heard it: this runner runs nothing yet.
        let mut fresh = true;
        while !shutdown.is_cancelled() {
            let asked = Instant::now();
            let mut client = self.client.clone();
            let claim = client.claim_deployment(ClaimDeploymentRequest {
                runner_id: String::new(),
                lease: None,
                wait: Some(prost_types::Duration {
                    seconds: CLAIM_WAIT.as_secs() as i64,
                    nanos: 0,
                }),
                fresh,
                no_runs: self.runs.load(std::sync::atomic::Ordering::Acquire) >= self.config.max_runs,
            });
            let claimed = tokio::select! {
                () = shutdown.cancelled() => break,
                claimed = claim => claimed,
            };
            if claimed.is_ok() {
                fresh = false;
            }
            match claimed.map(tonic::Response::into_inner) {
                Ok(pb::ClaimDeploymentResponse {
                    deployment: Some(deployment),
                    snapshot: Some(snapshot),
                    sandbox_slot,
                    replica,
                    run,
                    ..
                }) => {
                    let span = tracing::debug_span!(
                        target: capsule::trace::TRACE,
                        "runner.deployment",
                        otel.name = "run deployment",
                        deployment.id = %deployment.id,
                    );
                    if let Some(run) = run {
                        // A run holds nothing: the next claim need not wait for it.
                        let runner = runner.clone();
                        let shutdown = shutdown.clone();
                        let making = RunSlot::take(&self.runs);
                        let work = async move {
                            let _making = making;
                            let run = Some(run);
                            runner
                                .execute(deployment, snapshot, sandbox_slot, false, run, &shutdown)
                                .await
                        };
                        let mut live = self.live.lock().await;
                        live.retain(|task| !task.is_finished());
                        live.push(tokio::spawn(async move { drop(work.instrument(span).await) }));
                        continue;
                    }
                    let run = self.execute(deployment, snapshot, sandbox_slot, replica, None, &shutdown);
                    if let Some(app) = run.instrument(span).await {
                        let supervisor = tokio::spawn(runner.clone().supervise(app, shutdown.clone()));
                        let mut live = self.live.lock().await;
                        live.retain(|task| !task.is_finished());
                        live.push(supervisor);
                    }
                    continue;
                }
                Ok(_) => {}
                Err(status) => tracing::debug!(error = %status.message(), "claim failed; retrying"),
            }
            // The deploy service waits for work before it answers "nothing";
            // one that answers at once (or fails) is asked again in 2 s.
            if asked.elapsed() < Duration::from_secs(1) {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
        // Every app's kill switch is a child of `shutdown`: wait for them.
        for supervisor in self.live.lock().await.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), supervisor).await;
        }
    }

    /// Runs a claimed deployment: the source, the build, the start; the app
    /// when it went live serving. A `replica` (a copy of a live one) starts
    /// from its kept release only; so does a `run`, which runs its command
    /// once instead of the app.
    async fn execute(
        &self,
        deployment: pb::Deployment,
        snapshot: pb::DeploymentSnapshot,
        tenant: u32,
        replica: bool,
        run: Option<pb::Run>,
        shutdown: &CancellationToken,
    ) -> Option<LiveApp> {
        let reporter = Reporter {
            client: self.client.clone(),
            deployment_id: deployment.id.clone(),
            replica,
            process: run.as_ref().map(|run| format!("run.{}", run.id)).unwrap_or_default(),
            run: run.as_ref().map(|run| run.id.clone()),
        };
        tracing::info!(deployment.id = %deployment.id, runner.name = %self.id, "running deployment");
        if let Some(warning) = self.sandbox.warning() {
            reporter.system(warning.to_owned()).await;
        }
        if let Err(why) = self.sandbox.usable(tenant) {
            reporter.state(DeploymentState::Failed, why, None).await;
            return None;
        }
        // Its ids name the runner's paths (working directory, sockets,
        // cgroup, cache, releases): UUIDs, or nothing is made.
        let key = run
            .as_ref()
            .map_or(deployment.id.as_str(), |run| run.id.as_str())
            .to_owned();
        if host::uuid_like(&key).is_none()
            || host::uuid_like(&deployment.id).is_none()
            || host::uuid_like(&deployment.project_id).is_none()
        {
            let why = "the deploy service sent a deployment without a proper id".to_owned();
            reporter.state(DeploymentState::Failed, why, None).await;
            return None;
        }
        let (config, id, disks) = (self.config.clone(), key.clone(), self.disks.clone().ok());
        let created =
            tokio::task::spawn_blocking(move || disk::Workspace::create(&config.workdir, &id, disks.as_ref())).await;
        let workdir = match created.unwrap_or_else(|err| Err(std::io::Error::other(err))) {
            Ok(dir) => Arc::new(dir),
            Err(err) => {
                tracing::error!(error = %err, "cannot create a working directory");
                let message = "the runner cannot create a working directory".to_owned();
                reporter.state(DeploymentState::Failed, message, None).await;
                return None;
            }
        };
        // The way out and the cgroup first: a remote source is fetched in
        // the sandbox.
        let egress = match self.egress(&key, tenant, &snapshot) {
            Ok(egress) => egress,
            Err(err) => {
                tracing::error!(error = %err, "cannot open the egress proxy");
                let message = "the runner cannot open the deployment's way out".to_owned();
                reporter.state(DeploymentState::Failed, message, None).await;
                return None;
            }
        };
        let cgroup = self.cgroup(&reporter, &key, tenant, &snapshot).await;
        if let Err(why) = &self.disks {
            reporter
                .system(format!("disk use is not bounded on this runner ({why})"))
                .await;
        }
        // A kept release starts without a build; otherwise the source.
        let released = self
            .unpack_release(&reporter, &deployment, &snapshot, workdir.path())
            .await;
        if (replica || run.is_some()) && !released {
            let why = format!("release {:?} is not kept on this runner", snapshot.artifact_digest);
            reporter.state(DeploymentState::Failed, why, None).await;
            return None;
        }
        let mut fetched = None;
        let around = job::Around {
            tenant,
            project_id: &deployment.project_id,
            way_out: egress.as_deref(),
            cgroup: cgroup.as_deref(),
        };
        if !released {
            let source = self
                .source(&reporter, &deployment, &snapshot, workdir.path(), around)
                .await;
            match source {
                Ok(commit) => fetched = commit,
                Err(why) => {
                    failed_step(&why);
                    job::report_egress(&reporter, egress.as_deref(), EgressPhase::Build).await;
                    reporter.system(why.clone()).await;
                    reporter.state(DeploymentState::Failed, why, None).await;
                    return None;
                }
            }
        }
        let root = workdir.path().join(&snapshot.root_directory);
        // The tree is the tenant's: a link on the way would lead the host
        // elsewhere.
        if !host::no_links(workdir.path(), &snapshot.root_directory) {
            let why = format!(
                "the root directory {:?} goes through a symbolic link in commit {}: set root_directory to a \
                 directory of the repository",
                snapshot.root_directory, snapshot.commit_sha
            );
            reporter.system(why.clone()).await;
            reporter.state(DeploymentState::Failed, why, None).await;
            return None;
        }
        let has_source = !snapshot.repository_url.is_empty() || !snapshot.source_digest.is_empty();
        if has_source && !root.is_dir() {
            let why = format!(
                "the root directory {:?} is not in commit {}: fix the project's root_directory",
                snapshot.root_directory, snapshot.commit_sha
            );
            reporter.system(why.clone()).await;
            reporter.state(DeploymentState::Failed, why, None).await;
            return None;
        }
        // Off the runtime: an unpacked release is a whole tree to hand over.
        let (sandbox, dir, made) = (self.sandbox.clone(), workdir.path().to_path_buf(), root.clone());
        let prepared = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&made).and_then(|()| sandbox.prepare_workdir(tenant, &dir))
        })
        .await
        .unwrap_or_else(|err| Err(std::io::Error::other(err)));
        if let Err(err) = prepared {
            tracing::error!(error = %err, "cannot prepare the working directory");
            let message = "the runner cannot prepare the working directory".to_owned();
            reporter.state(DeploymentState::Failed, message, None).await;
            return None;
        }
        // Commands the project left empty, from its tree (read before any
        // of its code runs).
        let mut snapshot = snapshot;
        if has_source
            && let Some(plan) = plan::detect(
                &root,
                &snapshot.build_command,
                &snapshot.start_command,
                &snapshot.release_command,
            )
        {
            for line in plan.lines() {
                reporter.system(line).await;
            }
            snapshot.build_command = plan.build;
            snapshot.start_command = plan.start;
            snapshot.release_command = plan.release;
        }
        let masker = Masker::new(
            snapshot
                .secret_names
                .iter()
                .filter_map(|name| snapshot.environment.get(name))
                .map(String::as_str),
        );
        // A kept release builds nothing: no cache to open, walk or evict.
        let cache = match released {
            true => None,
            false => {
                self.open_cache(&reporter, &deployment, tenant, snapshot.cache_generation)
                    .await
            }
        };
        let job = Job {
            reporter: reporter.clone(),
            snapshot: Arc::new(snapshot),
            workdir: workdir.clone(),
            tenant,
            masker: Arc::new(masker),
            egress,
            cache: cache.as_ref().map(|cache| Arc::from(cache.dir.as_path())),
            cgroup,
        };
        let snapshot = job.snapshot.clone();
        if let Some(run) = run {
            if let Some(proxy) = &job.egress {
                proxy.set_policy(egress::app_policy(&snapshot));
            }
            self.one_off(&job, &run, shutdown).await;
            return None;
        }

        if let Some(proxy) = &job.egress {
            proxy.set_policy(egress::build_policy(&snapshot));
        }
        // Heartbeats keep the claim; a cancel (or a lost claim) stops the work.
        let stop = shutdown.child_token();
        let heartbeat = tokio::spawn(heartbeat(reporter.clone(), stop.clone(), self.config.heartbeat));

        // The build, then the release phase: both before anything starts,
        // so a failure leaves the live version serving. A kept release was
        // built and released already.
        let mut prepared = released
            || self
                .step(&job, "build", &snapshot.build_command, &stop)
                .instrument(step_span("build"))
                .await;
        if prepared && !released {
            prepared = self
                .step(&job, "release command", &snapshot.release_command, &stop)
                .instrument(step_span("release command"))
                .await;
        }
        job.report_egress(EgressPhase::Build).await;
        if let Some(proxy) = &job.egress {
            proxy.set_policy(egress::app_policy(&snapshot));
        }
        if let Some(cache) = cache {
            let after = tokio::task::spawn_blocking(move || cache.after())
                .await
                .unwrap_or_default();
            reporter.system(after).await;
            let caches = self.caches.clone();
            let dropped = tokio::task::spawn_blocking(move || caches.evict())
                .await
                .unwrap_or_default();
            if !dropped.is_empty() {
                let dropped = dropped.join(", ");
                tracing::info!(runner.id = %self.id, %dropped, "build caches dropped, least recently used first");
            }
        }
        if prepared {
            let digest = match released {
                true => Some(snapshot.artifact_digest.clone()),
                false => self.pack_release(&reporter, &deployment, workdir.path()).await,
            };
            if !replica {
                reporter.deploying(digest, fetched).await;
            }
            // The app's supervisor holds the directory until the app ends.
            drop(workdir);
            let app = self.start(job, &stop, shutdown).instrument(step_span("start")).await;
            stop.cancel();
            let _ = heartbeat.await;
            return app;
        }
        stop.cancel();
        let _ = heartbeat.await;
        None
    }

    /// One of the user's commands that run before the app starts (the
    /// build, the release command), in the sandbox with the deployment's
    /// variables: whether it succeeded (or there is none); otherwise the
    /// deployment is failed, saying why.
    async fn step(&self, job: &Job, what: &str, command: &str, stop: &CancellationToken) -> bool {
        if command.trim().is_empty() {
            return true;
        }
        let reporter = &job.reporter;
        reporter.system(format!("$ {command}")).await;
        let kills = job.oom_kills();
        let ended = match self.spawn(job, command, Some(self.config.timeout), None) {
            Ok(child) => {
                let limits = self.limits(Some(self.config.timeout));
                pump(reporter, child, stop.clone(), limits, &job.masker).await
            }
            Err(err) => {
                reporter.system(format!("cannot start the {what}: {err}")).await;
                Ended::Exited(127)
            }
        };
        if !matches!(ended, Ended::Exited(0)) {
            job.report_egress(EgressPhase::Build).await;
        }
        match ended {
            Ended::Exited(0) => return true,
            Ended::Exited(code) if let Some(why) = job.out_of_memory_since(kills) => {
                reporter
                    .system(format!("{what} killed: {why} (exit code {code})"))
                    .await;
                reporter
                    .state(DeploymentState::Failed, format!("{what} killed: {why}"), Some(code))
                    .await;
            }
            Ended::Exited(code) if let Some(full) = job.disk_full() => {
                reporter
                    .system(format!("{what} failed: exit code {code}: {full}"))
                    .await;
                let why = format!("{what} exited with code {code}: {full}");
                reporter.state(DeploymentState::Failed, why, Some(code)).await;
            }
            Ended::Exited(code) => {
                reporter.system(format!("{what} failed: exit code {code}")).await;
                let why = format!("{what} exited with code {code}");
                reporter.state(DeploymentState::Failed, why, Some(code)).await;
            }
            Ended::Killed(why) => {
                reporter.system(format!("{what} stopped: {why}")).await;
                let why = format!("{what} stopped: {why}");
                reporter.state(DeploymentState::Failed, why, None).await;
            }
            Ended::Canceled => tracing::info!(deployment.id = %reporter.deployment_id, "{what} stopped: canceled"),
        }
        failed_step(what);
        false
    }

    /// A user's command, in the sandbox; an app's with its PORT.
    fn spawn(
        &self,
        job: &Job,
        command: &str,
        cpu_time: Option<Duration>,
        port: Option<u16>,
    ) -> std::io::Result<tokio::process::Child> {
        let extra: Vec<(&str, String)> = port.iter().map(|port| ("PORT", port.to_string())).collect();
        self.sandbox
            .command(&Spec {
                command,
                workdir: job.workdir.path(),
                root_directory: &job.snapshot.root_directory,
                environment: &job.snapshot.environment,
                extra: &extra,
                tenant: job.tenant,
                cpu_time,
                egress: job.egress.as_deref(),
                // Builds only: the running app never writes the next
                // build's inputs.
                cache: port.is_none().then_some(job.cache.as_deref()).flatten(),
                cgroup: job.cgroup.as_deref(),
            })?
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

/// One of the runner's run slots, taken while a run is made.
struct RunSlot(Arc<std::sync::atomic::AtomicUsize>);

impl RunSlot {
    fn take(runs: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        runs.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(runs.clone())
    }
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
