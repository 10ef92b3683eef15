//! Push to deploy: a new commit on an auto-deploying project's branch
//! starts a deployment of it, found by polling the branch
//! (its refs, asked every `DEPLOY_POLL_INTERVAL_SECS`) and by push events
//! from GitHub, GitLab and Gitea (`ReceiveGitPush`), signed with the
//! project's webhook secret.
//!
//! Polling works on `DEPLOY_POLL_CONCURRENCY` repositories at once, gives
//! each look `DEPLOY_POLL_TIMEOUT_SECS`, and backs off from a
//! repository that fails (doubling intervals, up to an hour): a tenant
//! whose server hangs or errs costs the others nothing.
//!
//! A push is deployed once: replicas polling together agree through a
//! compare-and-set on the branch head (`db::push::saw_head`), a delivery id is
//! taken once, and a commit already deployed (or on its way) to production
//! is not deployed again — so a replayed event, even with a new delivery
//! id, starts nothing.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use capsule::{
    proto::project::v1::{DeploymentPlan, ListAutoDeployProjectsRequest},
    rpc,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};
use uuid::Uuid;

use capsule_runner::source::Repository;

use crate::{
    db::{self, Deployment},
    state::DeployServiceApi,
};

/// The longest one request for a repository's refs may take (an attempt
/// as a whole is bounded by `DEPLOY_POLL_TIMEOUT_SECS`).
const POLL_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Push-triggered deployments go to production.
const ENVIRONMENT: &str = "production";

/// The project's and its owner's ids, as a plan names them.
pub(crate) fn plan_ids(plan: &DeploymentPlan) -> Result<(Uuid, Uuid), Status> {
    let project = plan.project.as_ref();
    let id = |value: Option<&String>, what: &str| {
        value
            .map_or("", String::as_str)
            .parse::<Uuid>()
            .map_err(|err| rpc::internal(format_args!("the plan's {what}: {err}")))
    };
    Ok((
        id(project.map(|p| &p.id), "project id")?,
        id(project.map(|p| &p.owner_id), "owner id")?,
    ))
}

/// Deploys `sha` of the plan's branch unless that commit was deployed to
/// production already; the deployment, if one was queued.
pub(crate) async fn deploy_commit(
    api: &DeployServiceApi,
    plan: DeploymentPlan,
    sha: &str,
) -> Result<Option<Deployment>, Status> {
    let project = plan.project.clone().unwrap_or_default();
    let (project_id, owner) = plan_ids(&plan)?;
    let commit = sha.to_owned();
    if api
        .db()
        .run(move |conn| db::push::has_commit(conn, project_id, ENVIRONMENT, &commit))
        .await?
    {
        return Ok(None);
    }
    let deployment = api.queue(plan, owner, ENVIRONMENT.to_owned(), sha.to_owned()).await?;
    tracing::info!(deployment.id = %deployment.id, project.id = %project_id, commit = %sha, "push deployed");
    // Capsule itself acted (no user): the actor is empty.
    let event = capsule::audit::Event::new(
        &capsule::audit::Actor::default(),
        "deployment.create",
        format!("deployments/{}", deployment.id),
    );
    api.audit(
        event
            .organization(project.organization_id.parse().ok())
            .project(project_id)
            .detail("trigger", "auto-deploy")
            .detail("commit_sha", sha),
    )
    .await;
    Ok(Some(deployment))
}

/// How polling shares its time among tenants.
#[derive(Debug, Clone, Copy)]
pub struct PollConfig {
    pub every: Duration,
    pub concurrency: usize,
    pub attempt: Duration,
}

/// The longest a failing repository waits before it is polled again.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Repositories that failed: how often in a row, and when to try again.
type Backoff = Arc<Mutex<HashMap<Uuid, (u32, Instant)>>>;

/// Polls every auto-deploying project's branch until `shutdown`.
pub async fn poll(api: DeployServiceApi, config: PollConfig, shutdown: CancellationToken) {
    let backoff = Backoff::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.every) => {}
        }
        if let Err(status) = poll_once(&api, config, &backoff).await {
            tracing::debug!(error = %status.message(), "cannot poll branches now");
        }
    }
}

async fn poll_once(api: &DeployServiceApi, config: PollConfig, backoff: &Backoff) -> Result<(), Status> {
    let slots = Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1)));
    let mut running = tokio::task::JoinSet::new();
    let mut page_token = String::new();
    loop {
        let mut request = Request::new(ListAutoDeployProjectsRequest {
            page_size: 100,
            page_token: page_token.clone(),
        });
        request.set_timeout(Duration::from_secs(5));
        api.as_service(&mut request)?;
        let page = api.projects().list_auto_deploy_projects(request).await?.into_inner();
        for plan in page.plans {
            let Some(project_id) = plan
                .project
                .as_ref()
                .and_then(|project| project.id.parse::<Uuid>().ok())
            else {
                continue;
            };
            let waiting = backoff
                .lock()
                .ok()
                .and_then(|failed| failed.get(&project_id).map(|(_, next)| *next > Instant::now()));
            if waiting == Some(true) {
                continue;
            }
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let (api, backoff) = (api.clone(), backoff.clone());
            running.spawn(async move {
                let outcome = tokio::time::timeout(config.attempt, poll_project(&api, plan)).await;
                drop(slot);
                let Ok(mut failed) = backoff.lock() else { return };
                match outcome {
                    Ok(Ok(())) => {
                        failed.remove(&project_id);
                    }
                    Ok(Err(_)) | Err(_) => {
                        let failures = failed.get(&project_id).map_or(0, |(count, _)| *count) + 1;
                        let wait = config.every.saturating_mul(1 << failures.min(12)).min(MAX_BACKOFF);
                        failed.insert(project_id, (failures, Instant::now() + wait));
                        tracing::debug!(project.id = %project_id, failures, "cannot poll a project's branch; backing off");
                    }
                }
            });
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    while running.join_next().await.is_some() {}
    Ok(())
}

async fn poll_project(api: &DeployServiceApi, plan: DeploymentPlan) -> Result<(), Status> {
    let project_id: Uuid = plan
        .project
        .as_ref()
        .and_then(|project| project.id.parse().ok())
        .ok_or_else(|| rpc::internal("the project service answered a plan without a project id"))?;
    let repository = Repository::parse(&plan.repository_url, api.source_config())
        .map_err(|err| Status::failed_precondition(err.to_string()))?;
    let head = match &repository {
        // Only the sandbox reads an ssh:// repository: push events deploy it.
        Repository::Remote { url, .. } if url.scheme() == "ssh" => return Ok(()),
        Repository::Local(path) => Repository::head_local(path, &plan.branch).await,
        Repository::Remote { url, guard } => {
            let credentials = api.token(project_id).await?;
            let reference = format!("refs/heads/{}", plan.branch);
            crate::refs::resolve(url, guard, credentials.as_ref(), &reference, POLL_REQUEST_TIMEOUT).await
        }
    }
    .map_err(|err| Status::unavailable(err.to_string()))?;
    let sha = head.clone();
    if api
        .db()
        .run(move |conn| db::push::saw_head(conn, project_id, &sha))
        .await?
    {
        deploy_commit(api, plan, &head).await?;
    }
    Ok(())
}
