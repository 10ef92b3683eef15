//! Ordinary apps, as users push them: no build or start command set, the
//! stack detected from the tree, dependencies fetched from the public
//! registries through the sandbox's egress proxy, the app served at its
//! URL. The registries are the only destinations allowed beyond the guard
//! (at the addresses this host resolves them to), as an operator whose
//! registries sit behind a private mirror would allow them.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{path::Path, time::Duration};

use capsule::proto::{deploy::v1::DeploymentState, project::v1 as project_pb};
use common::{
    TestMesh, authed,
    deploy::{app, deploy, deploy_live, host_label, logs, rollback, text, update_settings, wait_for},
    git::{REPOSITORIES, Repo},
};

async fn mesh() -> TestMesh {
    common::start_with(common::Options {
        local_runner: true,
        deploy: vec![
            ("DEPLOY_LOCAL_REPOSITORIES", REPOSITORIES),
            ("DEPLOY_EGRESS_ALLOWED_NETWORKS", common::registries().await),
            ("DEPLOY_START_TIMEOUT_SECS", "60"),
        ],
        ..Default::default()
    })
    .await
}

/// A project with no commands set, deploying the fixture app `name`.
async fn fixture_project(mesh: &TestMesh, token: &str, name: &str) -> (String, Repo) {
    let repo = Repo::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/apps")
        .join(name);
    repo.commit_tree("main", &fixture, name);
    let id = app(mesh, token, "", "", &[]).await;
    let settings = project_pb::ProjectSettings {
        project_id: id.clone(),
        repository_url: repo.url(),
        ..Default::default()
    };
    update_settings(mesh, token, settings, &["repository_url"]).await;
    (id, repo)
}

/// Deploys project `id`; once live, what its URL answers and the
/// deployment's log.
async fn deploy_and_fetch(mesh: &TestMesh, token: &str, id: &str) -> (String, String) {
    let deployment = deploy(mesh, token, id).await;
    wait_for(
        mesh,
        token,
        &deployment.id,
        DeploymentState::Live,
        Duration::from_secs(300),
    )
    .await;
    let log = text(&logs(mesh, token, &deployment.id).await);
    let label = host_label(mesh, token, id).await;
    let body = reqwest::Client::new()
        .get(format!("http://{}/", mesh.http))
        .header("host", format!("{label}.localhost:{}", mesh.http.port()))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (body, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_express_app_with_a_lockfile_is_detected_built_with_npm_ci_and_served() {
    let mesh = mesh().await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let (id, _repo) = fixture_project(&mesh, &ada, "express").await;
    let (body, log) = deploy_and_fetch(&mesh, &ada, &id).await;
    assert!(log.contains("build plan: node (package-lock.json: npm ci"), "{log}");
    assert!(log.contains("build cache: empty"), "{log}");
    assert!(log.contains("egress: registry.npmjs.org:443 —"), "{log}");
    assert_eq!(body, "hello from express 4.21.2", "{log}");
    // The second build starts from what the first left.
    let (body, log) = deploy_and_fetch(&mesh, &ada, &id).await;
    assert!(log.contains("MB from earlier builds"), "{log}");
    assert_eq!(body, "hello from express 4.21.2", "{log}");
    // Each build kept its release: a rollback starts the first one as it
    // was built, with no build phase.
    let deployments = common::deploy::deployments(&mesh, &ada, &id).await;
    let first = deployments.last().unwrap();
    assert!(first.artifact_digest.starts_with("sha256:"), "{first:?}");
    let back = rollback(&mesh, &ada, &first.id).await;
    assert_eq!(back.artifact_digest, first.artifact_digest);
    wait_for(&mesh, &ada, &back.id, DeploymentState::Live, Duration::from_secs(60)).await;
    let log = text(&logs(&mesh, &ada, &back.id).await);
    assert!(
        log.contains(&format!("starting release {} as it was built", first.artifact_digest)),
        "{log}"
    );
    assert!(!log.contains("$ command -v npm"), "no build ran:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flask_app_with_requirements_is_built_into_a_virtualenv_and_served_by_gunicorn() {
    let mesh = mesh().await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let (id, _repo) = fixture_project(&mesh, &ada, "flask").await;
    let (body, log) = deploy_and_fetch(&mesh, &ada, &id).await;
    assert!(log.contains("build plan: python (requirements.txt"), "{log}");
    assert!(log.contains("gunicorn serves app:app"), "{log}");
    assert_eq!(body, "hello from flask", "{log}");
}

/// A build cache is its project's own: another project's build, on the
/// same runner, finds nothing of it, and only the project's members clear
/// it (ClearBuildCache), after which its next build starts empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_projects_build_cache_is_never_anothers_and_clearing_it_empties_it() {
    let mesh = mesh().await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let (mallory, _) = mesh.user("mallory@example.com").await;
    let cached = app(
        &mesh,
        &ada,
        "cat /cache/mark 2>/dev/null || echo no-mark; echo ada-cache-secret > /cache/mark",
        "",
        &[],
    )
    .await;
    let build_sees = |marker: &'static str| {
        let (mesh, ada, cached) = (&mesh, &ada, &cached);
        async move {
            let deployment = deploy_live(mesh, ada, cached).await;
            let log = text(&logs(mesh, ada, &deployment.id).await);
            assert!(log.lines().any(|line| line == marker), "{marker}:\n{log}");
        }
    };
    build_sees("no-mark").await;
    build_sees("ada-cache-secret").await;
    let clear = |token: &str| {
        let request = authed(
            capsule::proto::deploy::v1::ClearBuildCacheRequest {
                project_id: cached.clone(),
            },
            token,
        );
        let mesh = &mesh;
        async move { mesh.deploys().await.clear_build_cache(request).await }
    };
    let refused = clear(&mallory).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    build_sees("ada-cache-secret").await;
    assert_eq!(clear(&ada).await.unwrap().into_inner().generation, 1);
    build_sees("no-mark").await;
    let prying = app(
        &mesh,
        &mallory,
        "ls -A /cache; cat /cache/mark 2>/dev/null || echo no-mark",
        "",
        &[],
    )
    .await;
    let second = deploy_live(&mesh, &mallory, &prying).await;
    let log = text(&logs(&mesh, &mallory, &second.id).await);
    assert!(log.contains("no-mark"), "{log}");
    assert!(!log.lines().any(|line| line == "ada-cache-secret"), "{log}");
}
