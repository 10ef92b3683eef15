//! Live apps of projects that no longer exist are stopped: every minute the
//! projects with a live deployment are checked with the project service,
//! and the live deployments of a deleted one are taken down (SUPERSEDED,
//! saying why); their runner sees it at its next heartbeat and stops the
//! app.

use std::time::Duration;

use capsule::proto::project::v1::GetPushTargetRequest;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request};
use uuid::Uuid;

use crate::{
    db::{self, Actor, Outcome},
    grpc::DeployServiceApi,
    state::State,
};

pub async fn run(api: DeployServiceApi, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Ok(projects) = api.db().run(db::live_projects).await else {
            continue;
        };
        for project_id in projects {
            if gone(&api, project_id).await {
                stop(&api, project_id).await;
            }
        }
    }
}

/// Whether the project service says the project is gone (deleted).
async fn gone(api: &DeployServiceApi, project_id: Uuid) -> bool {
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

async fn stop(api: &DeployServiceApi, project_id: Uuid) {
    let Ok(live) = api.db().run(move |conn| db::live_of(conn, project_id)).await else {
        return;
    };
    for id in live {
        let outcome = Outcome {
            message: "the project was deleted".to_owned(),
            ..Outcome::default()
        };
        let stopped = api
            .db()
            .run(move |conn| db::transition(conn, id, State::Superseded, &Actor::User, &outcome))
            .await;
        if matches!(stopped, Ok(Ok(_))) {
            tracing::info!(deployment.id = %id, project.id = %project_id, "live deployment of a deleted project stopped");
        }
    }
}
