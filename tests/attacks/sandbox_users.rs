//! Projects against each other's sandbox user: the uid was the project id
//! modulo DEPLOY_SANDBOX_UID_COUNT, so two projects could share one — and
//! with it each other's files and processes.

use std::{collections::HashMap, time::Duration};

use capsule::proto::deploy::v1::DeploymentState;
use uuid::Uuid;

use super::{logs_until, runner_mesh};
use crate::common::deploy::{deploy, project, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_that_would_have_shared_a_uid_each_get_their_own() {
    let count: u128 = 1000;
    let mesh = runner_mesh(&[("DEPLOY_SANDBOX_UID_COUNT", "1000")]).await;
    let (mallory, _) = mesh.user("mallory@example.com").await;
    // Projects until two collide under the old rule (about 40 are needed).
    let mut by_old_slot: HashMap<u128, String> = HashMap::new();
    let (first, second) = loop {
        let id = project(&mesh, &mallory, "echo \"uid=$(id -u)\"", &[]).await;
        let old_slot = Uuid::parse_str(&id).unwrap().as_u128() % count;
        if let Some(other) = by_old_slot.insert(old_slot, id.clone()) {
            break (other, id);
        }
        assert!(by_old_slot.len() < 500, "no collision among 500 projects");
    };
    let mut uids = Vec::new();
    for project_id in [&first, &second] {
        let deployment = deploy(&mesh, &mallory, project_id).await;
        let logs = logs_until(&mesh, &mallory, &deployment.id, "uid=2").await;
        wait_for(
            &mesh,
            &mallory,
            &deployment.id,
            DeploymentState::Live,
            Duration::from_secs(30),
        )
        .await;
        let uid: u32 = logs
            .lines()
            .find_map(|line| line.strip_prefix("uid="))
            .unwrap()
            .parse()
            .unwrap();
        uids.push(uid);
    }
    assert_ne!(uids[0], uids[1], "two projects run as one user");
    mesh.stop().await;
}
