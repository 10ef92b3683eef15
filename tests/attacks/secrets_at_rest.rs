//! Tenants' secrets against whoever reads the database: variable values
//! were stored as they were given, so a backup, a replica or a stray
//! `SELECT` showed every tenant's keys.

use std::time::Duration;

use capsule::{config::ServiceKind, proto::deploy::v1::DeploymentState};
use diesel::{QueryableByName, RunQueryDsl, sql_types::Text};

use super::{logs_until, runner_mesh};
use crate::common::deploy::{deploy, project, wait_for};

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = Text)]
    value: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variable_values_rest_sealed_and_still_reach_the_deployment() {
    let mesh = runner_mesh(&[]).await;
    let (owner, _) = mesh.user("owner@example.com").await;
    let project_id = project(
        &mesh,
        &owner,
        "[ \"$API_KEY\" = sk-live-4242 ] && [ \"$REGION\" = eu-west-1 ] && echo \"values-$((6 * 7))\"",
        &[("API_KEY", "sk-live-4242", true), ("REGION", "eu-west-1", false)],
    )
    .await;
    let stored: Vec<Stored> = diesel::sql_query("SELECT value FROM environment_variables")
        .load(&mut mesh.database(ServiceKind::Project).connect())
        .unwrap();
    assert_eq!(stored.len(), 2);
    for row in &stored {
        assert!(
            !row.value.contains("sk-live") && !row.value.contains("eu-west"),
            "a value rests as it was given: {}",
            row.value
        );
    }
    let deployment = deploy(&mesh, &owner, &project_id).await;
    logs_until(&mesh, &owner, &deployment.id, "values-42").await;
    wait_for(
        &mesh,
        &owner,
        &deployment.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    mesh.stop().await;
}
