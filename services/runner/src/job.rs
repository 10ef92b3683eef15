//! One claimed deployment being run: what the runner holds of it, the app
//! once it is live, and the spans of its steps in the deployment's trace.

use std::sync::Arc;

use capsule::proto::deploy::v1::{self as pb, EgressPhase};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    process::{Ended, Masker},
    report::Reporter,
    serve::{Forwarder, Reach},
};

/// One claimed deployment being run.
#[derive(Clone)]
pub(super) struct Job {
    pub reporter: Reporter,
    pub snapshot: Arc<pb::DeploymentSnapshot>,
    /// The working directory on the host, removed when the last holder
    /// lets go.
    pub workdir: Arc<crate::disk::Workspace>,
    /// The project's sandbox slot.
    pub tenant: u32,
    pub masker: Arc<Masker>,
    /// The sandbox's way out, and its record ([`crate::egress`]).
    pub egress: Option<Arc<crate::egress::Proxy>>,
    /// The project's build cache, for its build steps.
    pub cache: Option<Arc<std::path::Path>>,
    /// The cgroup that bounds its processes together.
    pub cgroup: Option<Arc<crate::limits::Group>>,
}

impl Job {
    /// How many of its processes the kernel killed for memory so far.
    pub fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map_or(0, |group| group.oom_kills())
    }

    /// "out of memory at 512 MiB", when the kernel killed one of its
    /// processes for memory since `before` kills.
    pub fn out_of_memory_since(&self, before: u64) -> Option<String> {
        let group = self.cgroup.as_ref()?;
        (group.oom_kills() > before).then(|| group.out_of_memory())
    }

    /// Why a failed step may have failed: "the working directory is full
    /// (4096 MiB, …)", or the build cache, when they are filesystems of
    /// their own.
    pub fn disk_full(&self) -> Option<String> {
        let bytes = self.workdir.bounded()?;
        if crate::disk::full(self.workdir.path()).is_some() {
            let mib = bytes >> 20;
            return Some(format!(
                "the working directory is full ({mib} MiB, DEPLOY_SANDBOX_DISK_MB)"
            ));
        }
        crate::disk::full(self.cache.as_deref()?)?;
        Some("the build cache is full (DEPLOY_SANDBOX_DISK_MB, within DEPLOY_BUILD_CACHE_MB)".to_owned())
    }

    /// The egress record since the last report, into the logs and the
    /// deployment's record, as `phase`'s.
    pub async fn report_egress(&self, phase: EgressPhase) {
        report_egress(&self.reporter, self.egress.as_deref(), phase).await;
    }
}

/// What a sandboxed fetch runs in: the project's sandbox slot, the
/// deployment's way out and its cgroup.
pub(crate) struct Around<'a> {
    pub tenant: u32,
    /// Checked to be a UUID: it names the project's remembered host keys.
    pub project_id: &'a str,
    pub way_out: Option<&'a crate::egress::Proxy>,
    pub cgroup: Option<&'a crate::limits::Group>,
}

/// A live app: its process (pumped into the logs), the forwarder the
/// gateway reaches it through, and what kills it.
pub(super) struct LiveApp {
    pub job: Job,
    pub reach: Reach,
    pub forwarder: Forwarder,
    /// While held, the gateway may be handed the forwarder's connections.
    pub _handed: Option<crate::handoff::Registration>,
    pub pid: i32,
    pub running: JoinHandle<Ended>,
    pub kill: CancellationToken,
}

/// A step of running a deployment, as a span of its trace.
pub(super) fn step_span(step: &'static str) -> tracing::Span {
    tracing::debug_span!(
        target: capsule::trace::TRACE,
        "runner.step",
        otel.name = step,
        otel.status_code = tracing::field::Empty,
        error.message = tracing::field::Empty,
    )
}

/// Marks the current step's span failed, saying why.
pub(super) fn failed_step(why: &str) {
    let span = tracing::Span::current();
    span.record("otel.status_code", "error");
    span.record("error.message", why);
}

/// What went out through `proxy` since its last report, into the logs and
/// the deployment's record, as `phase`'s. Before a final state: the deploy
/// service takes reports only from the runner holding the deployment.
pub(crate) async fn report_egress(reporter: &Reporter, proxy: Option<&crate::egress::Proxy>, phase: EgressPhase) {
    let Some(proxy) = proxy else {
        return;
    };
    let destinations = proxy.record().take();
    if destinations.is_empty() {
        return;
    }
    for line in crate::egress::record::lines(&destinations) {
        reporter.system(line).await;
    }
    reporter.egress(phase, destinations).await;
}
