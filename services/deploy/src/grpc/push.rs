//! Push events from GitHub, GitLab and Gitea (`ReceiveGitPush`), signed
//! with the project's webhook secret: the pushed commit of the project's
//! branch is deployed, once ([`crate::push`]); pull and merge request
//! events open, update and close previews ([`crate::preview`]).

use std::time::Duration;

use capsule::{
    proto::{deploy::v1 as pb, project::v1::GetPushTargetRequest},
    rpc,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::{
    db,
    preview::{self, Change},
    push::deploy_commit,
    state::DeployServiceApi,
};

/// The parts of a push event Capsule reads (GitHub, GitLab and Gitea send
/// the same two).
#[derive(serde::Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    reference: String,
    after: String,
}

/// The parts of a pull request event Capsule reads: GitHub's and Gitea's
/// (`pull_request`) and GitLab's (`Merge Request Hook`).
#[derive(serde::Deserialize)]
struct PullRequestEvent {
    #[serde(default)]
    action: String,
    #[serde(default)]
    number: u32,
    pull_request: Option<PullRequest>,
    object_attributes: Option<MergeRequest>,
}

#[derive(serde::Deserialize)]
struct PullRequest {
    head: Head,
    base: Option<Head>,
}

#[derive(serde::Deserialize)]
struct Head {
    sha: String,
    repo: Option<Repository>,
}

#[derive(serde::Deserialize, PartialEq, Eq)]
struct Repository {
    full_name: String,
}

#[derive(serde::Deserialize)]
struct MergeRequest {
    iid: u32,
    #[serde(default)]
    action: String,
    last_commit: Option<LastCommit>,
    source_project_id: Option<u64>,
    target_project_id: Option<u64>,
}

#[derive(serde::Deserialize)]
struct LastCommit {
    id: String,
}

/// The request's number and what its event asks, or why it asks nothing.
fn preview_change(payload: &[u8]) -> Result<Result<(u32, Change), &'static str>, Status> {
    let event: PullRequestEvent = serde_json::from_slice(payload).map_err(|_| {
        capsule::rpc::invalid_field(
            "payload",
            "must be a pull request event (JSON with \"action\", \"number\" and \"pull_request\", or GitLab's \"object_attributes\")",
        )
    })?;
    // Only a request whose head lives in the project's own repository,
    // as the event says: a fork's code would run with the project's
    // secrets and a copy of its data.
    let (number, action, head, own) = match (event.pull_request, event.object_attributes) {
        (Some(request), _) => {
            let base = request.base.and_then(|base| base.repo);
            let own = base.is_some() && request.head.repo == base;
            (event.number, event.action, request.head.sha, own)
        }
        (None, Some(request)) => (
            request.iid,
            request.action,
            request.last_commit.map(|commit| commit.id).unwrap_or_default(),
            request.source_project_id.is_some() && request.source_project_id == request.target_project_id,
        ),
        (None, None) => return Err(capsule::rpc::invalid_field("payload", "names no pull or merge request")),
    };
    if number == 0 {
        return Err(capsule::rpc::invalid_field(
            "payload",
            "the request's number must be positive",
        ));
    }
    let change = match action.as_str() {
        "opened" | "reopened" | "synchronize" | "synchronized" | "open" | "reopen" | "update" if !own => {
            return Ok(Err(
                "no preview for a request from a fork (or one whose event does not name its head's repository)",
            ));
        }
        "opened" | "reopened" | "synchronize" | "synchronized" | "open" | "reopen" | "update" => {
            if head.len() != 40 || !head.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(capsule::rpc::invalid_field(
                    "payload",
                    "the request's head names no commit",
                ));
            }
            Change::Open { head }
        }
        "closed" | "close" | "merge" => Change::Close,
        _ => return Ok(Err("this pull request action changes no preview")),
    };
    Ok(Ok((number, change)))
}

/// Whether the event is a pull or merge request's rather than a push.
fn is_pull_request(metadata: &tonic::metadata::MetadataMap) -> bool {
    matches!(header(metadata, "x-github-event"), Some("pull_request"))
        || matches!(header(metadata, "x-gitea-event"), Some("pull_request"))
        || matches!(header(metadata, "x-gitlab-event"), Some("Merge Request Hook"))
}

/// The git host's id of this delivery, if it sends one.
fn delivery_of(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    ["x-github-delivery", "x-gitea-delivery", "x-gitlab-event-uuid"]
        .into_iter()
        .find_map(|name| header(metadata, name))
        .map(|id| id.chars().take(128).collect())
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
pub(super) async fn receive_git_push(
    api: &DeployServiceApi,
    request: Request<pb::ReceiveGitPushRequest>,
) -> Result<Response<pb::ReceiveGitPushResponse>, Status> {
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
    if is_pull_request(&metadata) {
        return receive_pull_request(api, &metadata, project_id, target.plan, &payload).await;
    }
    let event: PushEvent = serde_json::from_slice(&payload).map_err(|_| {
        capsule::rpc::invalid_field("payload", "must be a push event (JSON with \"ref\" and \"after\")")
    })?;
    let note = |note: &str| {
        Ok(Response::new(pb::ReceiveGitPushResponse {
            deployment_id: String::new(),
            note: note.to_owned(),
        }))
    };
    if let Some(delivery) = delivery_of(&metadata)
        && !api
            .db()
            .run(move |conn| db::push::take_delivery(conn, project_id, &delivery))
            .await?
    {
        return note("this delivery was received before");
    }
    let Some(plan) = target.plan else {
        return Err(rpc::internal(
            "the project service answered a push target without a plan",
        ));
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
        Some(deployment) => Ok(Response::new(pb::ReceiveGitPushResponse {
            deployment_id: deployment.id.to_string(),
            note: String::new(),
        })),
        None => note("this commit was deployed before"),
    }
}

/// A signed pull or merge request event: its preview opened, moved to the
/// new head, or closed.
async fn receive_pull_request(
    api: &DeployServiceApi,
    metadata: &tonic::metadata::MetadataMap,
    project_id: Uuid,
    plan: Option<capsule::proto::project::v1::DeploymentPlan>,
    payload: &[u8],
) -> Result<Response<pb::ReceiveGitPushResponse>, Status> {
    let note = |note: String| {
        Ok(Response::new(pb::ReceiveGitPushResponse {
            deployment_id: String::new(),
            note,
        }))
    };
    let (number, change) = match preview_change(payload)? {
        Ok(change) => change,
        Err(why) => return note(why.to_owned()),
    };
    if let Some(delivery) = delivery_of(metadata) {
        let taken = api
            .db()
            .run(move |conn| db::push::take_delivery(conn, project_id, &delivery))
            .await?;
        if !taken {
            return note("this delivery was received before".to_owned());
        }
    }
    let plan = plan.ok_or_else(|| rpc::internal("the project service answered a push target without a plan"))?;
    let (deployment, why) = preview::handle(api, plan, number, change).await?;
    Ok(Response::new(pb::ReceiveGitPushResponse {
        deployment_id: deployment
            .map(|deployment| deployment.id.to_string())
            .unwrap_or_default(),
        note: why,
    }))
}
