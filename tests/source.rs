//! Deployments from git: the commit a deployment builds is resolved when it
//! is created and fetched by the runner; bad repositories and refs are
//! refused with the field to fix.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use capsule::proto::{
    deploy::v1::{self as pb, DeploymentState},
    project::v1 as project_pb,
};
use common::{
    TestMesh, authed,
    deploy::{logs, project, text, wait_for},
    violated_fields,
};

/// The root the tests' deploy service allows local repositories under.
const REPOSITORIES: &str = "/tmp/capsule-test-repositories";

/// A bare repository and a working clone to commit into.
struct Repo {
    bare: PathBuf,
    work: PathBuf,
    _dir: tempfile::TempDir,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=Ada Lovelace", "-c", "user.email=ada@example.com"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl Repo {
    fn new() -> Self {
        std::fs::create_dir_all(REPOSITORIES).expect("the repositories root");
        let dir = tempfile::tempdir_in(REPOSITORIES).expect("a repository directory");
        let bare = dir.path().join("app.git");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&bare).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        git(&bare, &["init", "--quiet", "--bare"]);
        git(&work, &["init", "--quiet"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Self { bare, work, _dir: dir }
    }

    /// Commits `index.html` with `content` on `branch` and pushes it;
    /// returns the commit.
    fn commit(&self, branch: &str, content: &str, message: &str) -> String {
        git(&self.work, &["checkout", "--quiet", "-B", branch]);
        std::fs::write(self.work.join("index.html"), content).unwrap();
        git(&self.work, &["add", "index.html"]);
        git(&self.work, &["commit", "--quiet", "-m", message]);
        git(&self.work, &["push", "--quiet", "--force", "origin", branch]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

async fn mesh() -> TestMesh {
    common::start_with(common::Options {
        local_runner: true,
        deploy: vec![("DEPLOY_LOCAL_REPOSITORIES", REPOSITORIES)],
    })
    .await
}

async fn set_repository(mesh: &TestMesh, token: &str, project_id: &str, url: &str) {
    mesh.projects()
        .await
        .update_project_settings(authed(
            project_pb::UpdateProjectSettingsRequest {
                settings: Some(project_pb::ProjectSettings {
                    project_id: project_id.to_owned(),
                    repository_url: url.to_owned(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["repository_url".into()],
                }),
            },
            token,
        ))
        .await
        .expect("the repository is set");
}

async fn create(
    mesh: &TestMesh,
    token: &str,
    project_id: &str,
    source_ref: &str,
) -> Result<pb::Deployment, tonic::Status> {
    mesh.deploys()
        .await
        .create_deployment(authed(
            pb::CreateDeploymentRequest {
                project_id: project_id.to_owned(),
                source_ref: source_ref.to_owned(),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_builds_the_exact_commit_it_recorded_and_a_rollback_the_same_one() {
    let mesh = mesh().await;
    let repo = Repo::new();
    let first_sha = repo.commit("main", "<h1>version one</h1>", "First version");
    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = project(&mesh, &alice, "cat index.html; ls -la; id -u", &[]).await;
    set_repository(&mesh, &alice, &project_id, repo.bare.to_str().unwrap()).await;

    let first = create(&mesh, &alice, &project_id, "").await.unwrap();
    assert_eq!(first.source_ref, "main");
    assert_eq!(first.commit_sha, first_sha);
    assert_eq!(first.commit_message, "First version");
    assert_eq!(first.commit_author, "Ada Lovelace <ada@example.com>");
    // A push after creation does not change what this deployment builds.
    let second_sha = repo.commit("main", "<h1>version two</h1>", "Second version");
    wait_for(&mesh, &alice, &first.id, DeploymentState::Live, Duration::from_secs(30)).await;
    let first_logs = text(&logs(&mesh, &alice, &first.id).await);
    assert!(first_logs.contains("<h1>version one</h1>"), "{first_logs}");

    let second = create(&mesh, &alice, &project_id, "main").await.unwrap();
    assert_eq!(second.commit_sha, second_sha);
    wait_for(
        &mesh,
        &alice,
        &second.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    assert!(text(&logs(&mesh, &alice, &second.id).await).contains("version two"));

    // By commit, and a rollback: the first commit again.
    let by_commit = create(&mesh, &alice, &project_id, &first_sha).await.unwrap();
    assert_eq!(by_commit.commit_sha, first_sha);
    let rollback = mesh
        .deploys()
        .await
        .rollback_deployment(authed(
            pb::RollbackDeploymentRequest {
                deployment_id: second.id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rollback.commit_sha, second_sha);
    wait_for(
        &mesh,
        &alice,
        &rollback.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    assert!(text(&logs(&mesh, &alice, &rollback.id).await).contains("version two"));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_branch_a_forbidden_path_and_a_bad_ref_are_refused_naming_the_field() {
    let mesh = mesh().await;
    let repo = Repo::new();
    repo.commit("main", "hello", "Hello");
    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = project(&mesh, &alice, "true", &[]).await;
    set_repository(&mesh, &alice, &project_id, repo.bare.to_str().unwrap()).await;

    let missing = create(&mesh, &alice, &project_id, "no-such-branch").await.unwrap_err();
    assert_eq!(violated_fields(&missing), ["source_ref"]);
    assert!(missing.message().contains("no-such-branch") || format!("{missing:?}").contains("no-such-branch"));
    let option = create(&mesh, &alice, &project_id, "--upload-pack=touch /tmp/x")
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&option), ["source_ref"]);

    // Outside the allowed root (the path exists: /etc).
    let forbidden = project(&mesh, &alice, "true", &[]).await;
    set_repository(&mesh, &alice, &forbidden, "/etc").await;
    let refused = create(&mesh, &alice, &forbidden, "").await.unwrap_err();
    assert_eq!(violated_fields(&refused), ["repository_url"]);
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
    mesh.projects()
        .await
        .update_project_settings(authed(
            project_pb::UpdateProjectSettingsRequest {
                settings: Some(project_pb::ProjectSettings {
                    project_id: project_id.clone(),
                    root_directory: "apps/web".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["root_directory".into()],
                }),
            },
            &alice,
        ))
        .await
        .unwrap();
    let deployment = create(&mesh, &alice, &project_id, "").await.unwrap();
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
