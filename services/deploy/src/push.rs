//! Push to deploy: a new commit on an auto-deploying project's branch
//! starts a deployment of it, found by polling the branch
//! (`git ls-remote` every `DEPLOY_POLL_INTERVAL_SECS`) and by push events
//! from GitHub, GitLab and Gitea (`ReceiveGitPush`), signed with the
//! project's webhook secret.
//!
//! Polling works on `DEPLOY_POLL_CONCURRENCY` repositories at once, gives
//! each `git ls-remote` `DEPLOY_POLL_TIMEOUT_SECS`, and backs off from a
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

use capsule::proto::{
    deploy::v1 as pb,
    project::v1::{DeploymentPlan, GetPushTargetRequest, ListAutoDeployProjectsRequest},
};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status};
use uuid::Uuid;

use capsule_runner::source::Repository;

use crate::{
    api::DeployServiceApi,
    db::{self, Deployment},
};

/// Push-triggered deployments go to production.
const ENVIRONMENT: &str = "production";

/// Deploys `sha` of the plan's branch unless that commit was deployed to
/// production already; the deployment, if one was queued.
async fn deploy_commit(api: &DeployServiceApi, plan: DeploymentPlan, sha: &str) -> Result<Option<Deployment>, Status> {
    let project = plan.project.clone().unwrap_or_default();
    let project_id: Uuid = project.id.parse().map_err(|_| Status::internal("internal error"))?;
    let owner: Uuid = project
        .owner_id
        .parse()
        .map_err(|_| Status::internal("internal error"))?;
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
        .ok_or_else(|| Status::internal("internal error"))?;
    let repository = Repository::parse(&plan.repository_url, api.source_config())
        .map_err(|err| Status::failed_precondition(err.to_string()))?;
    let head = repository
        .head(&plan.branch)
        .await
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

/// The parts of a push event Capsule reads (GitHub, GitLab and Gitea send
/// the same two).
#[derive(serde::Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    reference: String,
    after: String,
}

fn header<'a>(metadata: &'a tonic::metadata::MetadataMap, name: &str) -> Option<&'a str> {
    metadata.get(name).and_then(|value| value.to_str().ok())
}

/// Whether the event carries a valid signature for `secret`: GitHub's
/// `X-Hub-Signature-256: sha256=<hex>`, Gitea's `X-Gitea-Signature: <hex>`
/// (both HMAC-SHA256 of the body), or GitLab's `X-Gitlab-Token`.
fn signed(metadata: &tonic::metadata::MetadataMap, body: &[u8], secret: &str) -> bool {
    let hmac_ok = |hex_signature: &str| {
        let Ok(signature) = hex::decode(hex_signature) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&signature).is_ok()
    };
    if let Some(signature) = header(metadata, "x-hub-signature-256") {
        return signature.strip_prefix("sha256=").is_some_and(hmac_ok);
    }
    if let Some(signature) = header(metadata, "x-gitea-signature") {
        return hmac_ok(signature);
    }
    if let Some(token) = header(metadata, "x-gitlab-token") {
        // Compared as MACs of themselves: constant time.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(b"capsule-gitlab-token") else {
            return false;
        };
        mac.update(secret.as_bytes());
        let expected = mac.finalize().into_bytes();
        let Ok(mut presented) = Hmac::<Sha256>::new_from_slice(b"capsule-gitlab-token") else {
            return false;
        };
        presented.update(token.as_bytes());
        return presented.verify_slice(&expected).is_ok();
    }
    false
}

/// `ReceiveGitPush`: checks the signature, then deploys the pushed commit
/// of the project's branch.
pub async fn receive(
    api: &DeployServiceApi,
    request: Request<pb::ReceiveGitPushRequest>,
) -> Result<pb::ReceiveGitPushResponse, Status> {
    let (metadata, _, body) = request.into_parts();
    let project_id: Uuid = body
        .project_id
        .parse()
        .map_err(|_| capsule::rpc::invalid_field("project_id", "must be a project id (a UUID)"))?;
    let payload = body.payload.map(|payload| payload.data).unwrap_or_default();
    // Unknown project, no secret, bad signature: one answer, nothing said.
    let refused = || Status::unauthenticated("the push event's signature does not match the project's webhook secret");
    let mut lookup = Request::new(GetPushTargetRequest {
        project_id: project_id.to_string(),
    });
    lookup.set_timeout(Duration::from_secs(5));
    api.as_service(&mut lookup)?;
    let target = match api.projects().get_push_target(lookup).await {
        Ok(target) => target.into_inner(),
        Err(status) if status.code() == Code::NotFound => return Err(refused()),
        Err(status) => {
            return Err(Status::unavailable(format!(
                "cannot check the event now ({}); retry",
                status.message()
            )));
        }
    };
    if target.webhook_secret.is_empty() || !signed(&metadata, &payload, &target.webhook_secret) {
        return Err(refused());
    }
    let event: PushEvent = serde_json::from_slice(&payload).map_err(|_| {
        capsule::rpc::invalid_field("payload", "must be a push event (JSON with \"ref\" and \"after\")")
    })?;
    let note = |note: &str| {
        Ok(pb::ReceiveGitPushResponse {
            deployment_id: String::new(),
            note: note.to_owned(),
        })
    };
    let delivery = ["x-github-delivery", "x-gitea-delivery", "x-gitlab-event-uuid"]
        .into_iter()
        .find_map(|name| header(&metadata, name))
        .map(|id| id.chars().take(128).collect::<String>());
    if let Some(delivery) = delivery
        && !api
            .db()
            .run(move |conn| db::push::take_delivery(conn, project_id, &delivery))
            .await?
    {
        return note("this delivery was received before");
    }
    let Some(plan) = target.plan else {
        return Err(Status::internal("internal error"));
    };
    if !target.auto_deploy {
        return note("auto-deploy is off for this project");
    }
    if event.reference != format!("refs/heads/{}", plan.branch) {
        return note("not a push to the project's branch");
    }
    let sha = event.after;
    if sha.len() != 40 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return note("the push deleted the branch or names no commit");
    }
    match deploy_commit(api, plan, &sha).await? {
        Some(deployment) => Ok(pb::ReceiveGitPushResponse {
            deployment_id: deployment.id.to_string(),
            note: String::new(),
        }),
        None => note("this commit was deployed before"),
    }
}
