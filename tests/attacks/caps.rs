//! One tenant against the platform's capacity: any number of environments
//! (live apps) per project, any number of open follow streams, and a live
//! app's output kept forever.

use std::time::{Duration, Instant};

use capsule::proto::deploy::v1::{self as pb, DeploymentState, LogPhase};
use tonic::Code;

use super::runner_mesh;
use crate::common::{
    authed,
    deploy::{app, create, deploy_live, project, wait_for},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_streams_and_runtime_logs_are_bounded_and_say_by_what() {
    let mesh = runner_mesh(&[
        ("DEPLOY_MAX_ENVIRONMENTS", "2"),
        ("DEPLOY_MAX_STREAMS_PER_USER", "2"),
        ("DEPLOY_MAX_LOG_LINES", "100"),
    ])
    .await;
    let (mallory, _) = mesh.user("mallory@example.com").await;

    // Environments: two, then one more is refused naming the setting; an
    // environment already open takes another deployment.
    let quiet = project(&mesh, &mallory, "true", &[]).await;
    for environment in ["a", "b"] {
        let deployment = create(&mesh, &mallory, &quiet, "", environment).await.unwrap();
        wait_for(
            &mesh,
            &mallory,
            &deployment.id,
            DeploymentState::Live,
            Duration::from_secs(30),
        )
        .await;
    }
    let refused = create(&mesh, &mallory, &quiet, "", "c").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("DEPLOY_MAX_ENVIRONMENTS"), "{refused:?}");
    create(&mesh, &mallory, &quiet, "", "a").await.unwrap();

    // A chatty live app: its runtime lines stay a window of the newest 100.
    let chatty = app(
        &mesh,
        &mallory,
        "",
        "python3 -m http.server \"$PORT\" >/dev/null 2>&1 & while true; do echo tick; done",
        &[],
    )
    .await;
    let live = deploy_live(&mesh, &mallory, &chatty).await;
    let mut client = mesh.deploys().await;
    let started = Instant::now();
    let runtime = loop {
        let page = client
            .get_logs(authed(
                pb::GetLogsRequest {
                    deployment_id: live.id.clone(),
                    after_sequence: 0,
                    page_size: 1000,
                },
                &mallory,
            ))
            .await
            .unwrap()
            .into_inner();
        let runtime: Vec<i64> = page
            .lines
            .iter()
            .filter(|line| line.phase == LogPhase::Runtime as i32)
            .map(|line| line.sequence)
            .collect();
        if runtime.last().is_some_and(|last| *last > 1000) {
            break runtime;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the app's output stopped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        runtime.len() <= 110,
        "{} runtime lines kept, the window is 100",
        runtime.len()
    );

    // Follow streams: two at once, a third is refused naming the setting,
    // and closing one frees its place.
    let follow = || {
        let client = mesh.deploys();
        let (id, token) = (live.id.clone(), mallory.clone());
        async move {
            client
                .await
                .stream_logs(authed(
                    pb::StreamLogsRequest {
                        deployment_id: id,
                        after_sequence: 0,
                        follow: true,
                    },
                    &token,
                ))
                .await
        }
    };
    let first = follow().await.unwrap();
    let _second = follow().await.unwrap();
    let refused = follow().await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("DEPLOY_MAX_STREAMS_PER_USER"), "{refused:?}");
    drop(first);
    let reopened = Instant::now();
    while follow().await.is_err() {
        assert!(
            reopened.elapsed() < Duration::from_secs(5),
            "a closed stream kept its place"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mesh.stop().await;
}
