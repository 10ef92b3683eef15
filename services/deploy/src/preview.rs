//! Previews of pull and merge requests: a request opened (or updated)
//! deploys its head commit as environment `pr-<number>`, with a copy of
//! production's database when production has one (a fresh dump restored
//! into the preview's own database, so production's live connections are
//! no obstacle); closing or merging it stops the preview and drops its
//! database. Each step is a webhook event and an audit record; open
//! previews per project are capped (`DEPLOY_MAX_PREVIEWS`).

use capsule::{audit, proto::project::v1::DeploymentPlan, rpc};
use serde_json::json;
use tonic::Status;
use uuid::Uuid;

use crate::{
    databases::Reason,
    db::{self, Actor, Outcome, databases as rows, webhooks::Event},
    lifecycle::State,
    state::DeployServiceApi,
};

/// The environment a request's preview runs in.
pub fn environment(number: u32) -> String {
    format!("pr-{number}")
}

/// The environment whose data a preview starts from.
const SOURCE: &str = "production";

/// What a request event asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Opened, reopened or given new commits: deploy this head.
    Open { head: String },
    /// Closed or merged.
    Close,
}

struct Ids {
    project: Uuid,
    owner: Uuid,
    organization: Option<Uuid>,
}

fn ids(plan: &DeploymentPlan) -> Result<Ids, Status> {
    let (project, owner) = crate::push::plan_ids(plan)?;
    Ok(Ids {
        project,
        owner,
        organization: plan.project.as_ref().and_then(|p| p.organization_id.parse().ok()),
    })
}

/// Acts on a request event: the deployment queued, if one was, and a note
/// saying why nothing was done otherwise.
pub async fn handle(
    api: &DeployServiceApi,
    plan: DeploymentPlan,
    number: u32,
    change: Change,
) -> Result<(Option<db::Deployment>, String), Status> {
    let ids = ids(&plan)?;
    let number_i32 =
        i32::try_from(number).map_err(|_| rpc::invalid_field("payload", "the request's number is too large"))?;
    let env = environment(number);
    match change {
        Change::Open { head } => open(api, plan, &ids, number_i32, &env, head).await,
        Change::Close => close(api, &ids, number_i32, &env).await.map(|note| (None, note)),
    }
}

async fn open(
    api: &DeployServiceApi,
    plan: DeploymentPlan,
    ids: &Ids,
    number: i32,
    env: &str,
    head: String,
) -> Result<(Option<db::Deployment>, String), Status> {
    let databases = api.databases();
    let (project, environment, sha, max) = (
        ids.project,
        env.to_owned(),
        head.clone(),
        databases.config().max_previews,
    );
    let opened = api
        .db()
        .run(move |conn| rows::open_preview(conn, project, number, &environment, &sha, max))
        .await?;
    let Some(new) = opened else {
        return Err(Status::resource_exhausted(format!(
            "the project has {max} open previews, the most it may (DEPLOY_MAX_PREVIEWS); close one first"
        )));
    };
    let mut copied = None;
    if new
        && let Some(source) = databases
            .find(ids.project, SOURCE)
            .await?
            .filter(|db| db.ready_at.is_some())
    {
        let target = match databases.find(ids.project, env).await? {
            Some(target) if target.ready_at.is_some() => target,
            _ => databases.create(ids.project, env, None).await?,
        };
        let backup = databases.backup(&source, Reason::Preview).await?;
        databases.restore(&backup, &target).await?;
        copied = Some(backup.id);
    }
    let (project, environment, commit) = (ids.project, env.to_owned(), head.clone());
    let deployed = api
        .db()
        .run(move |conn| db::push::has_commit(conn, project, &environment, &commit))
        .await?;
    let deployment = match deployed {
        true => None,
        false => Some(api.queue(plan, ids.owner, env.to_owned(), head.clone()).await?),
    };
    if new {
        let detail = json!({
            "number": number,
            "environment": env,
            "commit_sha": head,
            "database_copied_from": copied.map(|_| SOURCE),
            "deployment_id": deployment.as_ref().map(|d| d.id.to_string()),
        });
        record(api, ids, Event::PreviewOpened, "preview.open", env, detail).await?;
    }
    let note = match &deployment {
        Some(_) => String::new(),
        None => "this commit was deployed to the preview before".to_owned(),
    };
    Ok((deployment, note))
}

async fn close(api: &DeployServiceApi, ids: &Ids, number: i32, env: &str) -> Result<String, Status> {
    let project = ids.project;
    let closed = api
        .db()
        .run(move |conn| rows::close_preview(conn, project, number))
        .await?;
    let Some(env) = closed else {
        return Ok(format!("the request has no open preview ({env})"));
    };
    let environment = env.clone();
    let unsettled = api
        .db()
        .run(move |conn| rows::unsettled_in(conn, project, &environment))
        .await?;
    for (id, state) in unsettled {
        let to = match state.as_str() {
            "live" => State::Superseded,
            _ => State::Canceled,
        };
        let outcome = Outcome {
            message: "the pull request was closed".to_owned(),
            ..Outcome::default()
        };
        // A deployment that moved on meanwhile is left as it is.
        let _ = api
            .db()
            .run(move |conn| db::transition(conn, id, to, &Actor::User, &outcome))
            .await?;
    }
    let mut dropped = false;
    if let Some(database) = api.databases().find(project, &env).await? {
        api.databases().remove(&database).await?;
        dropped = true;
    }
    let detail = json!({"number": number, "environment": env, "database_dropped": dropped});
    record(api, ids, Event::PreviewClosed, "preview.close", &env, detail).await?;
    Ok(String::new())
}

/// The step as a webhook event and an audit record (Capsule acted, on the
/// git host's word: no user).
async fn record(
    api: &DeployServiceApi,
    ids: &Ids,
    event: Event,
    action: &'static str,
    env: &str,
    detail: serde_json::Value,
) -> Result<(), Status> {
    let (project, organization, payload) = (ids.project, ids.organization, detail.clone());
    api.db()
        .run(move |conn| rows::queue_event(conn, project, organization, event, payload))
        .await?;
    let mut entry = audit::Event::new(
        &audit::Actor::default(),
        action,
        format!("projects/{project}/environments/{env}"),
    )
    .organization(organization)
    .project(project);
    if let Some(fields) = detail.as_object() {
        for (key, value) in fields {
            if let Some(key) = ["number", "commit_sha", "database_copied_from", "database_dropped"]
                .into_iter()
                .find(|known| known == key)
            {
                entry = entry.detail(key, value);
            }
        }
    }
    api.audit(entry).await;
    Ok(())
}
