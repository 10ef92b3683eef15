//! A project's `repository_url` against the control plane's network: git
//! once ran outside the sandbox against any host and port, at
//! CreateDeployment and in the auto-deploy poller, and its errors told one
//! service's banner from another's — a port scanner. `ssh://` used the
//! operator's own keys for every tenant.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use capsule::proto::project::v1 as project_pb;
use tokio::io::AsyncWriteExt;

use crate::common::{
    TestMesh, authed,
    deploy::{create, project},
};

/// A listener of the host's that answers like an HTTP service and counts
/// who connects.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    (port, connections)
}

/// Sets the project's repository; the settings' own refusal, if any.
async fn set_repository(
    mesh: &TestMesh,
    token: &str,
    project_id: &str,
    url: &str,
    auto: bool,
) -> Option<tonic::Status> {
    mesh.projects()
        .await
        .update_project_settings(authed(
            project_pb::UpdateProjectSettingsRequest {
                settings: Some(project_pb::ProjectSettings {
                    project_id: project_id.to_owned(),
                    repository_url: url.to_owned(),
                    auto_deploy: auto,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["repository_url".into(), "auto_deploy".into()],
                }),
            },
            token,
        ))
        .await
        .err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_urls_reach_no_listener_of_the_host_and_say_why_in_words() {
    let mesh = crate::common::start_with(crate::common::Options {
        deploy: vec![("DEPLOY_POLL_INTERVAL_SECS", "1")],
        ..Default::default()
    })
    .await;
    let (port, connections) = counting_listener().await;
    let (mallory, _) = mesh.user("mallory@example.com").await;
    let probe = project(&mesh, &mallory, "true", &[]).await;
    for url in [
        format!("https://127.0.0.1:{port}/app.git"),
        format!("https://localhost:{port}/app.git"),
        format!("https://127.1:{port}/app.git"),
        format!("git://127.0.0.1:{port}/app"),
        format!("ssh://git@127.0.0.1:{port}/app"),
    ] {
        if let Some(refused) = set_repository(&mesh, &mallory, &probe, &url, false).await {
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{url}: {refused:?}");
            continue;
        }
        let refused = create(&mesh, &mallory, &probe, "main", "").await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{url}: {refused:?}");
        let message = refused.message();
        assert!(message.contains("loopback address"), "{url}: {message}");
        assert!(
            !message.contains("HTTP") && !message.contains("bad line"),
            "{url}: {message}"
        );
    }

    // The poller of auto-deploying projects goes through the same guard.
    let polled = project(&mesh, &mallory, "true", &[]).await;
    let url = format!("https://localhost:{port}/app.git");
    assert!(set_repository(&mesh, &mallory, &polled, &url, true).await.is_none());
    tokio::time::sleep(Duration::from_secs(3)).await;

    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "git connected to a listener of the host"
    );
    mesh.stop().await;
}
