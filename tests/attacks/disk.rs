//! A build is the tenant's code and writes what it likes. Once, a build
//! that wrote 200 MB into its working directory or its build cache took
//! them from the host's disk — the disk PostgreSQL and every other tenant
//! write to. Each working directory and each build cache is now a
//! filesystem of its own (`DEPLOY_SANDBOX_DISK_MB`): the build that fills
//! it fails, saying so, and the next one builds as before.

use std::time::Duration;

use capsule::proto::deploy::v1::DeploymentState;

use super::runner_mesh;
use crate::common::deploy::{deploy, deploy_live, project, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_fills_its_disk_fills_only_its_own() {
    let mesh = runner_mesh(&[("DEPLOY_SANDBOX_DISK_MB", "64")]).await;
    let (mallory, _) = mesh.user("mallory@example.com").await;
    for (target, why) in [
        (
            "fill",
            "build exited with code 1: the working directory is full (64 MiB, DEPLOY_SANDBOX_DISK_MB)",
        ),
        (
            "/cache/fill",
            "build exited with code 1: the build cache is full (DEPLOY_SANDBOX_DISK_MB, within DEPLOY_BUILD_CACHE_MB)",
        ),
    ] {
        let build = format!("head -c 200000000 /dev/zero > {target} && echo wrote it all");
        let hog = project(&mesh, &mallory, &build, &[]).await;
        let attempt = deploy(&mesh, &mallory, &hog).await;
        let failed = wait_for(
            &mesh,
            &mallory,
            &attempt.id,
            DeploymentState::Failed,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(failed.status_message, why, "{target}: {failed:?}");
    }
    let ordinary = project(&mesh, &mallory, "head -c 1000000 /dev/zero > modest && echo built", &[]).await;
    deploy_live(&mesh, &mallory, &ordinary).await;
}
