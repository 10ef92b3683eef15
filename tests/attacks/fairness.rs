//! One tenant against the others' share of the platform: builds were
//! claimed in one global FIFO, so one owner's queue of long builds stalled
//! everyone else's first deploy.

use std::time::{Duration, Instant};

use capsule::proto::deploy::v1::{self as pb, DeploymentState};

use super::runner_mesh;
use crate::common::{
    TestMesh, authed,
    deploy::{deploy, project},
};

/// How many of `ids` have left the queue.
async fn started(mesh: &TestMesh, token: &str, ids: &[String]) -> usize {
    let mut client = mesh.deploys().await;
    let mut count = 0;
    for id in ids {
        let state = client
            .get_deployment(authed(
                pb::GetDeploymentRequest {
                    deployment_id: id.clone(),
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner()
            .state;
        if state != DeploymentState::Queued as i32 {
            count += 1;
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_queued_builds_of_one_owner_delay_anothers_first_by_one_slot_at_most() {
    let mesh = runner_mesh(&[]).await;
    let (flooder, _) = mesh.user("flooder@example.com").await;
    let (newcomer, _) = mesh.user("newcomer@example.com").await;
    let mut flood = Vec::new();
    for _ in 0..4 {
        let project_id = project(&mesh, &flooder, "sleep 1", &[]).await;
        for _ in 0..5 {
            flood.push(deploy(&mesh, &flooder, &project_id).await.id);
        }
    }
    let first = project(&mesh, &newcomer, "echo my first build", &[]).await;
    let before = started(&mesh, &flooder, &flood).await;
    let mine = deploy(&mesh, &newcomer, &first).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut client = mesh.deploys().await;
    loop {
        let state = client
            .get_deployment(authed(
                pb::GetDeploymentRequest {
                    deployment_id: mine.id.clone(),
                },
                &newcomer,
            ))
            .await
            .unwrap()
            .into_inner()
            .state;
        if state != DeploymentState::Queued as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "the newcomer's build never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = started(&mesh, &flooder, &flood).await;
    assert!(
        after - before <= 1,
        "{} of the flood's builds started before the newcomer's first one",
        after - before
    );
    mesh.stop().await;
}
