//! Deployments from git: the commit a deployment builds is resolved when it
//! is created and fetched by the runner; bad repositories and refs are
//! refused with the field to fix.

mod common;

use std::time::Duration;

use capsule::proto::{deploy::v1::DeploymentState, project::v1 as project_pb};
use common::{
    TestMesh, authed,
    deploy::{create, logs, project, rollback, text, update_settings, wait_for},
    git::{REPOSITORIES, Repo},
    violated_fields,
};

async fn mesh() -> TestMesh {
    common::start_with(common::Options {
        local_runner: true,
        deploy: vec![("DEPLOY_LOCAL_REPOSITORIES", REPOSITORIES)],
        ..Default::default()
    })
    .await
}

async fn set_repository(mesh: &TestMesh, token: &str, project_id: &str, url: &str) {
    let settings = project_pb::ProjectSettings {
        project_id: project_id.to_owned(),
        repository_url: url.to_owned(),
        ..Default::default()
    };
    update_settings(mesh, token, settings, &["repository_url"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_builds_the_exact_commit_it_recorded_and_a_rollback_the_same_one() {
    let mesh = mesh().await;
    let repo = Repo::new();
    let first_sha = repo.commit("main", "<h1>version one</h1>", "First version");
    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = project(&mesh, &alice, "cat index.html; ls -la; id -u", &[]).await;
    set_repository(&mesh, &alice, &project_id, &repo.url()).await;

    let first = create(&mesh, &alice, &project_id, "", "").await.unwrap();
    assert_eq!(first.source_ref, "main");
    assert_eq!(first.commit_sha, first_sha);
    assert_eq!(first.commit_message, "First version");
    assert_eq!(first.commit_author, "Ada Lovelace <ada@example.com>");
    // A push after creation does not change what this deployment builds.
    let second_sha = repo.commit("main", "<h1>version two</h1>", "Second version");
    wait_for(&mesh, &alice, &first.id, DeploymentState::Live, Duration::from_secs(30)).await;
    let first_logs = text(&logs(&mesh, &alice, &first.id).await);
    assert!(first_logs.contains("<h1>version one</h1>"), "{first_logs}");

    let second = create(&mesh, &alice, &project_id, "main", "").await.unwrap();
    assert_eq!(second.commit_sha, second_sha);
    let second = wait_for(
        &mesh,
        &alice,
        &second.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    assert!(text(&logs(&mesh, &alice, &second.id).await).contains("version two"));

    // By commit, and a rollback: the first commit again.
    let by_commit = create(&mesh, &alice, &project_id, &first_sha, "").await.unwrap();
    assert_eq!(by_commit.commit_sha, first_sha);
    let rollback = rollback(&mesh, &alice, &second.id).await;
    assert_eq!(rollback.commit_sha, second_sha);
    // The very tree that build made: its release, started without a build.
    assert_eq!(rollback.artifact_digest, second.artifact_digest);
    wait_for(
        &mesh,
        &alice,
        &rollback.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    let rollback_logs = text(&logs(&mesh, &alice, &rollback.id).await);
    assert!(
        rollback_logs.contains(&format!("starting release {} as it was built", second.artifact_digest)),
        "{rollback_logs}"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_branch_a_forbidden_path_and_a_bad_ref_are_refused_saying_what_to_fix() {
    let mesh = mesh().await;
    let repo = Repo::new();
    repo.commit("main", "hello", "Hello");
    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = project(&mesh, &alice, "true", &[]).await;
    set_repository(&mesh, &alice, &project_id, &repo.url()).await;

    let missing = create(&mesh, &alice, &project_id, "no-such-branch", "")
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    assert!(missing.message().contains("no-such-branch") || format!("{missing:?}").contains("no-such-branch"));
    let option = create(&mesh, &alice, &project_id, "--upload-pack=touch /tmp/x", "")
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&option), ["source_ref"]);

    // Outside the allowed root (the path exists: /etc).
    let forbidden = project(&mesh, &alice, "true", &[]).await;
    set_repository(&mesh, &alice, &forbidden, "/etc").await;
    let refused = create(&mesh, &alice, &forbidden, "", "").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("repository_url"), "{refused:?}");
    assert!(
        format!("{refused:?}").contains("DEPLOY_LOCAL_REPOSITORIES"),
        "{refused:?}"
    );

    // Credentials in a URL are refused where they would be stored.
    let with_password = mesh
        .projects()
        .await
        .update_project_settings(authed(
            project_pb::UpdateProjectSettingsRequest {
                settings: Some(project_pb::ProjectSettings {
                    project_id: project_id.clone(),
                    repository_url: "https://user:hunter2@example.com/app.git".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["repository_url".into()],
                }),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&with_password), ["settings.repository_url"]);

    // A root directory the commit lacks: the deployment fails saying so.
    let settings = project_pb::ProjectSettings {
        project_id: project_id.clone(),
        root_directory: "apps/web".into(),
        ..Default::default()
    };
    update_settings(&mesh, &alice, settings, &["root_directory"]).await;
    let deployment = create(&mesh, &alice, &project_id, "", "").await.unwrap();
    let failed = wait_for(
        &mesh,
        &alice,
        &deployment.id,
        DeploymentState::Failed,
        Duration::from_secs(30),
    )
    .await;
    assert!(failed.status_message.contains("apps/web"), "{failed:?}");
    assert!(text(&logs(&mesh, &alice, &deployment.id).await).contains("root_directory"));
    mesh.stop().await;
}

/// A commit whose root directory is a symbolic link to the host's `/etc`
/// once let the runner, as root, look there (and make directories
/// through it); the deployment is refused, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_directory_through_a_symbolic_link_is_refused() {
    let mesh = mesh().await;
    let repo = Repo::new();
    repo.commit("main", "<h1>site</h1>", "site");
    repo.commit_link("main", "web", "/etc", "web is the host's /etc");
    let (mallory, _) = mesh.user("mallory@example.com").await;
    let project_id = project(&mesh, &mallory, "cat Procfile", &[]).await;
    set_repository(&mesh, &mallory, &project_id, &repo.url()).await;
    let settings = project_pb::ProjectSettings {
        project_id: project_id.clone(),
        root_directory: "web".to_owned(),
        ..Default::default()
    };
    update_settings(&mesh, &mallory, settings, &["root_directory"]).await;
    let deployment = create(&mesh, &mallory, &project_id, "", "").await.unwrap();
    let failed = wait_for(
        &mesh,
        &mallory,
        &deployment.id,
        DeploymentState::Failed,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        failed.status_message.contains("goes through a symbolic link"),
        "{failed:?}"
    );
    mesh.stop().await;
}
