//! Live apps whose reason to run is gone are stopped: every minute the
//! projects with a live deployment are checked with the project service and
//! their owners with the auth service. The live deployments of a deleted
//! project, or of an owner whose account was deactivated, are taken down
//! (SUPERSEDED, saying why); their runner sees it at its next heartbeat and
//! stops the app. A service that cannot be reached stops nothing.

use std::{collections::HashMap, time::Duration};

use capsule::proto::{
    auth::v1::{GetUserStatusRequest, auth_service_client::AuthServiceClient},
    project::v1::GetPushTargetRequest,
};
use capsule::trace::TracedChannel as Channel;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request};
use uuid::Uuid;

use crate::{
    db::{self, Actor, Outcome},
    lifecycle::State,
    state::DeployServiceApi,
};

const PROJECT_DELETED: &str = "the project was deleted";
const OWNER_DEACTIVATED: &str = "the owner's account was deactivated";

pub async fn run(
    api: DeployServiceApi,
    auth: AuthServiceClient<Channel>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Ok(live) = api.db().run(db::live_projects).await else {
            continue;
        };
        // One question per owner, however many projects they run.
        let mut owners: HashMap<Uuid, bool> = HashMap::new();
        for (project_id, owner_id) in live {
            let reason = if project_gone(&api, project_id).await {
                Some(PROJECT_DELETED)
            } else if let Some(owner_id) = owner_id {
                let deactivated = match owners.get(&owner_id) {
                    Some(known) => *known,
                    None => {
                        let known = owner_deactivated(&api, auth.clone(), owner_id).await;
                        owners.insert(owner_id, known);
                        known
                    }
                };
                deactivated.then_some(OWNER_DEACTIVATED)
            } else {
                None
            };
            if let Some(reason) = reason {
                stop(&api, project_id, reason).await;
            }
        }
        // A deleted project's domains are free for others to claim.
        let Ok(holders) = api.db().run(db::domains::holders).await else {
            continue;
        };
        for project_id in holders {
            if project_gone(&api, project_id).await
                && let Ok(removed) = api
                    .db()
                    .run(move |conn| db::domains::remove_all(conn, project_id))
                    .await
            {
                tracing::info!(project.id = %project_id, removed, "a deleted project's domains were removed");
            }
        }
    }
}

/// Whether the project service says the project is gone (deleted).
async fn project_gone(api: &DeployServiceApi, project_id: Uuid) -> bool {
    let mut request = Request::new(GetPushTargetRequest {
        project_id: project_id.to_string(),
    });
    request.set_timeout(Duration::from_secs(5));
    if api.as_service(&mut request).is_err() {
        return false;
    }
    matches!(
        api.projects().get_push_target(request).await,
        Err(status) if status.code() == Code::NotFound
    )
}

/// Whether the auth service says the owner's account exists and is
/// deactivated. A deleted account is the project service's business (its
/// projects go with it).
async fn owner_deactivated(api: &DeployServiceApi, mut auth: AuthServiceClient<Channel>, owner_id: Uuid) -> bool {
    let mut request = Request::new(GetUserStatusRequest {
        user_id: owner_id.to_string(),
    });
    request.set_timeout(Duration::from_secs(5));
    if api.as_service(&mut request).is_err() {
        return false;
    }
    match auth.get_user_status(request).await {
        Ok(status) => {
            let status = status.into_inner();
            status.exists && !status.active
        }
        Err(_) => false,
    }
}

async fn stop(api: &DeployServiceApi, project_id: Uuid, reason: &'static str) {
    let Ok(live) = api.db().run(move |conn| db::live_of(conn, project_id)).await else {
        return;
    };
    for id in live {
        let outcome = Outcome {
            message: reason.to_owned(),
            ..Outcome::default()
        };
        let stopped = api
            .db()
            .run(move |conn| db::transition(conn, id, State::Superseded, &Actor::User, &outcome))
            .await;
        if matches!(stopped, Ok(Ok(_))) {
            tracing::info!(deployment.id = %id, project.id = %project_id, reason, "live deployment stopped");
        }
    }
}
