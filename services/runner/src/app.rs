//! Keeping an app up: the start command with PORT and its health check
//! (LIVE once it answers), then the supervisor that restarts it with
//! backoff when it exits, drains it when it is superseded and stops it
//! with SIGTERM, a grace period and SIGKILL.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use capsule::proto::deploy::v1::{DeploymentState, EgressPhase};
use nix::sys::signal::Signal;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    Runner, host,
    job::{Job, LiveApp, failed_step, step_span},
    process::{Ended, Limits, STOP_GRACE, pump},
    report::heartbeat,
    sandbox,
    serve::{self, Forwarder, Reach},
};

impl Runner {
    /// The start command, with PORT: LIVE (returned, to supervise) once it
    /// answers there within `DEPLOY_START_TIMEOUT_SECS`, FAILED with the
    /// reason otherwise. No start command: LIVE at once, nothing to serve.
    pub(crate) async fn start(
        &self,
        job: Job,
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Option<LiveApp> {
        let reporter = job.reporter.clone();
        let snapshot = job.snapshot.clone();
        if snapshot.start_command.trim().is_empty() {
            let root = job.workdir.path().join(&snapshot.root_directory);
            let workers = crate::plan::workers(&root, &snapshot.process_types);
            if !workers.is_empty() {
                let names: Vec<&str> = workers.iter().map(|(name, _)| name.as_str()).collect();
                reporter
                    .system(format!(
                        "workers run beside a web process: without a start command, {} do not run",
                        names.join(", ")
                    ))
                    .await;
            }
            reporter.state(DeploymentState::Live, String::new(), Some(0)).await;
            return None;
        }
        let fail = |why: String| {
            let reporter = reporter.clone();
            async move {
                failed_step(&why);
                reporter.system(why.clone()).await;
                reporter.state(DeploymentState::Failed, why, None).await;
            }
        };
        let (reach, port) = match self.prepare_serving(&job) {
            Ok(reached) => reached,
            Err(err) => {
                tracing::error!(error = %err, "cannot prepare serving");
                fail("the runner cannot prepare serving the app".to_owned()).await;
                return None;
            }
        };
        let hold = self.config.start_timeout + Duration::from_secs(1);
        let forwarder = match Forwarder::start(
            self.config.upstream_host,
            reach.clone(),
            hold,
            self.config.app_max_connections,
        )
        .await
        {
            Ok(forwarder) => forwarder,
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for the app's traffic");
                fail("the runner cannot listen for the app's traffic".to_owned()).await;
                return None;
            }
        };
        reporter
            .system(format!("$ {}  (PORT={port})", snapshot.start_command))
            .await;
        let kill = shutdown.child_token();
        let (pid, mut running) = match self.launch(&job, &reach, &kill) {
            Ok(launched) => launched,
            Err(err) => {
                fail(format!("cannot start: {err}")).await;
                return None;
            }
        };
        let timeout = self.config.start_timeout;
        let deadline = Instant::now() + timeout;
        let path = snapshot.health_check_path.as_str();
        let health = step_span("health check");
        loop {
            tokio::select! {
                ended = &mut running => {
                    let why = match ended.unwrap_or(Ended::Exited(128)) {
                        Ended::Exited(code) => format!("the app exited with code {code} before it answered on port {port}"),
                        Ended::Killed(why) => format!("the app was stopped: {why}"),
                        Ended::Canceled => return None,
                    };
                    fail(why).await;
                    return None;
                }
                () = stop.cancelled() => {
                    kill.cancel();
                    let _ = running.await;
                    return None;
                }
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            match serve::probe(&reach, path).instrument(health.clone()).await {
                Ok(()) => break,
                Err(why) if Instant::now() >= deadline => {
                    health.in_scope(|| failed_step(&why));
                    kill.cancel();
                    let _ = running.await;
                    let what = if path.is_empty() {
                        "accept connections".to_owned()
                    } else {
                        format!("answer GET {path} with 2xx or 3xx")
                    };
                    fail(format!(
                        "the app did not {what} on port {port} within {} s ({why}): make the start command listen on $PORT",
                        timeout.as_secs()
                    ))
                    .await;
                    return None;
                }
                Err(_) => {}
            }
        }
        drop(health);
        // A gateway on this host may be handed the app's connections.
        let handed = match &reach {
            Reach::Sandbox(tunnel) => Some(self.handoff.register(
                forwarder.addr(),
                tunnel.clone(),
                forwarder.gate().clone(),
            )),
            Reach::Port(_) => None,
        };
        let upstream = forwarder.addr().to_string();
        reporter.live(upstream).await;
        Some(LiveApp {
            job,
            reach,
            forwarder,
            _handed: handed,
            pid,
            running,
            kill,
        })
    }

    /// Where the app will listen and how the runner reaches it.
    fn prepare_serving(&self, job: &Job) -> std::io::Result<(Reach, u16)> {
        let port = self.sandbox.app_port()?;
        if !self.sandbox.isolated() {
            return Ok((Reach::Port(port), port));
        }
        let dir = serve::socket_dir(&self.config.workdir);
        host::runner_dir(&dir, 0o700)?;
        let socket = dir.join(format!("{}.sock", job.reporter.deployment_id));
        Ok((Reach::Sandbox(serve::Tunnel::new(socket)), port))
    }

    /// Starts the app (and, sandboxed, its connector) and pumps its output
    /// (no output limit: it runs for as long as it is live) until it exits
    /// or `kill`.
    fn launch(&self, job: &Job, reach: &Reach, kill: &CancellationToken) -> std::io::Result<(i32, JoinHandle<Ended>)> {
        let port = match reach {
            Reach::Port(port) => *port,
            Reach::Sandbox(_) => sandbox::APP_PORT,
        };
        let child = self.spawn(job, &job.snapshot.start_command, None, Some(port))?;
        let pid = child.id().and_then(|pid| i32::try_from(pid).ok()).unwrap_or(0);
        let limits = Limits {
            time: None,
            output_bytes: u64::MAX,
            lines_per_sec: self.config.lines_per_sec,
        };
        let (sink, masker, kill) = (job.reporter.clone(), job.masker.clone(), kill.clone());
        let connect = match reach {
            Reach::Sandbox(tunnel) => Some((self.sandbox.clone(), tunnel.clone())),
            Reach::Port(_) => None,
        };
        Ok((
            pid,
            tokio::spawn(async move {
                // Lives as long as this launch of the app: killed on drop.
                let _connector = match connect {
                    Some((sandbox, tunnel)) => serve::connect(&sandbox, pid, &tunnel, port).await,
                    None => None,
                };
                pump(&sink, child, kill, limits, &masker).await
            }),
        ))
    }

    /// Keeps a live app running: restarts it with backoff when it exits
    /// (CRASHED after `DEPLOY_MAX_RESTARTS` within the window), and drains
    /// it when it is superseded.
    pub(crate) async fn supervise(self: Arc<Self>, mut app: LiveApp, shutdown: CancellationToken) {
        let reporter = app.job.reporter.clone();
        let root = app.job.workdir.path().join(&app.job.snapshot.root_directory);
        let workers = crate::plan::workers(&root, &app.job.snapshot.process_types);
        // Workers outlive the web process's stops for idleness.
        let workers_kill = shutdown.child_token();
        let mut workers = Some(self.start_workers(&app.job, workers, &workers_kill));
        let idle = Duration::from_secs(u64::from(app.job.snapshot.idle_timeout_seconds));
        let mut idle_check = tokio::time::interval(IDLE_CHECK_EVERY);
        // Stopped for idleness: the forwarder holds connections, and the
        // first one starts it again.
        let mut asleep = false;
        let drain = CancellationToken::new();
        let beat = tokio::spawn(heartbeat(
            reporter.clone(),
            drain.clone(),
            self.config.heartbeat.max(Duration::from_secs(1)),
        ));
        let mut exits: VecDeque<Instant> = VecDeque::new();
        let mut kills = app.job.oom_kills();
        // A live app's egress record reaches its log every few minutes,
        // not only when it ends.
        let mut egress_report = tokio::time::interval(EGRESS_REPORT_EVERY);
        egress_report.tick().await;
        // Whether `app.running` has ended and been read: a finished task
        // is never polled again.
        let mut reaped = false;
        loop {
            tokio::select! {
                _ = egress_report.tick() => app.job.report_egress(EgressPhase::App).await,
                _ = idle_check.tick(), if !idle.is_zero() && !asleep && !reaped => {
                    let gate = app.forwarder.gate();
                    if gate.idle_for() < idle {
                        continue;
                    }
                    gate.close();
                    // A connection that came meanwhile keeps it running.
                    if gate.idle_for() < idle {
                        gate.open();
                        continue;
                    }
                    reporter
                        .system(format!(
                            "no request for {} s: the app is stopped until the next one",
                            idle.as_secs()
                        ))
                        .await;
                    if !self.terminate(&mut app).await {
                        let _ = (&mut app.running).await;
                    }
                    (reaped, asleep) = (true, true);
                }
                () = app.forwarder.gate().woken(), if asleep => {
                    // A wake left from a connection that came while the
                    // app was being stopped, and has gone: stay stopped.
                    if !app.forwarder.gate().busy() {
                        continue;
                    }
                    let woken = Instant::now();
                    app.kill = shutdown.child_token();
                    match self.launch(&app.job, &app.reach, &app.kill) {
                        Ok((pid, running)) => {
                            app.pid = pid;
                            app.running = running;
                            reaped = false;
                        }
                        Err(err) => {
                            reporter.system(format!("cannot start the app again: {err}")).await;
                            continue;
                        }
                    }
                    match self.answers(&mut app).await {
                        Ok(()) => {
                            app.forwarder.gate().open();
                            asleep = false;
                            reporter
                                .system(format!(
                                    "a request came: the app started again and answered in {} ms",
                                    woken.elapsed().as_millis()
                                ))
                                .await;
                        }
                        Err((why, exited)) => {
                            reporter
                                .system(format!(
                                    "a request came but the app did not start again ({why}); it stays stopped until \
                                     the next one"
                                ))
                                .await;
                            app.kill.cancel();
                            if !exited {
                                let _ = (&mut app.running).await;
                            }
                            reaped = true;
                        }
                    }
                }
                ended = &mut app.running, if !reaped => {
                    reaped = true;
                    if shutdown.is_cancelled() || drain.is_cancelled() {
                        break;
                    }
                    let code = match ended.unwrap_or(Ended::Exited(128)) {
                        Ended::Exited(code) => code,
                        Ended::Killed(_) | Ended::Canceled => break,
                    };
                    // "exited with code 137" says less than why.
                    let exited = match app.job.out_of_memory_since(kills) {
                        Some(why) => format!("was killed: {why} (exit code {code})"),
                        None => format!("exited with code {code}"),
                    };
                    kills = app.job.oom_kills();
                    let now = Instant::now();
                    exits.push_back(now);
                    while exits.front().is_some_and(|at| now.duration_since(*at) > self.config.restart_window) {
                        exits.pop_front();
                    }
                    if exits.len() > self.config.max_restarts as usize {
                        let why = format!(
                            "the app ended {} times within {} s (last: it {exited}); it is not restarted again",
                            exits.len(),
                            self.config.restart_window.as_secs()
                        );
                        reporter.system(why.clone()).await;
                        app.job.report_egress(EgressPhase::App).await;
                        reporter.state(DeploymentState::Crashed, why, Some(code)).await;
                        break;
                    }
                    let backoff = Duration::from_secs(1 << (exits.len() - 1).min(5));
                    reporter
                        .system(format!("the app {exited}; restarting in {} s", backoff.as_secs()))
                        .await;
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = drain.cancelled() => break,
                        () = shutdown.cancelled() => break,
                    }
                    match self.launch(&app.job, &app.reach, &app.kill) {
                        Ok((pid, running)) => {
                            app.pid = pid;
                            app.running = running;
                            reaped = false;
                            reporter.system("the app restarted".to_owned()).await;
                        }
                        Err(err) => {
                            let why = format!("cannot restart the app: {err}");
                            app.job.report_egress(EgressPhase::App).await;
                            reporter.state(DeploymentState::Crashed, why, None).await;
                            break;
                        }
                    }
                }
                () = drain.cancelled() => {
                    // Superseded (or canceled): keep serving while the gateway
                    // switches, then stop gently.
                    tokio::select! {
                        () = tokio::time::sleep(self.config.drain) => {}
                        () = shutdown.cancelled() => {}
                    }
                    let stopped = workers.take().map(crate::workers::Workers::stop);
                    let stopped_already = reaped;
                    let web = async {
                        match stopped_already {
                            true => true,
                            false => self.terminate(&mut app).await,
                        }
                    };
                    let (ended, _) = tokio::join!(web, async {
                        if let Some(stopped) = stopped {
                            stopped.await;
                        }
                    });
                    reaped = ended;
                    break;
                }
                () = shutdown.cancelled() => break,
            }
        }
        if let Some(workers) = workers.take() {
            workers.stop().await;
        }
        workers_kill.cancel();
        app.job.report_egress(EgressPhase::App).await;
        beat.abort();
        // Stopping with the runner, not replaced: another copy may start.
        if shutdown.is_cancelled() && !drain.is_cancelled() {
            reporter.release().await;
        }
        app.kill.cancel();
        if !reaped {
            let _ = (&mut app.running).await;
        }
        drop(app.forwarder);
        if let Reach::Sandbox(tunnel) = &app.reach {
            let _ = std::fs::remove_file(&tunnel.socket);
        }
    }

    /// SIGTERM to everything in the app's sandbox, then SIGKILL after the
    /// grace period: whether the app ended within it (and was reaped).
    async fn terminate(&self, app: &mut LiveApp) -> bool {
        self.signal(app.pid, Signal::SIGTERM);
        let ended = tokio::time::timeout(STOP_GRACE, &mut app.running).await.is_ok();
        app.kill.cancel();
        ended
    }
}

impl Runner {
    /// Waits until an app started again answers its health check, within
    /// the start timeout: why not otherwise, and whether it exited.
    async fn answers(&self, app: &mut LiveApp) -> Result<(), (String, bool)> {
        let deadline = Instant::now() + self.config.start_timeout;
        let path = app.job.snapshot.health_check_path.clone();
        loop {
            tokio::select! {
                ended = &mut app.running => {
                    return Err((format!("it ended: {:?}", ended.unwrap_or(Ended::Exited(128))), true));
                }
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            match serve::probe(&app.reach, &path).await {
                Ok(()) => return Ok(()),
                Err(why) if Instant::now() >= deadline => {
                    return Err((
                        format!("no answer within {} s: {why}", self.config.start_timeout.as_secs()),
                        false,
                    ));
                }
                Err(_) => {}
            }
        }
    }

    /// `signal` to everything a command started with `pid` runs: its
    /// sandbox, or its process group.
    pub(crate) fn signal(&self, pid: i32, signal: Signal) {
        if self.sandbox.isolated() {
            serve::signal_sandbox(pid, signal);
        } else if pid > 0 {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal);
        }
    }
}

/// How often a live app's idleness is looked at (scale to zero).
const IDLE_CHECK_EVERY: Duration = Duration::from_millis(500);

/// How often a live app's egress record is written to its log.
const EGRESS_REPORT_EVERY: Duration = Duration::from_secs(300);
