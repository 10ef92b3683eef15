//! Push to deploy: a new commit on an auto-deploying project's branch is
//! deployed once, found by polling or announced by a signed push event.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use capsule::proto::{deploy::v1 as pb, project::v1 as project_pb};
use common::{
    TestMesh, authed,
    deploy::{app, update_settings},
    git::{REPOSITORIES, Repo},
    github_signature,
};

async fn mesh(poll: &'static str) -> TestMesh {
    common::start_with(common::Options {
        local_runner: false,
        deploy: vec![
            ("DEPLOY_LOCAL_REPOSITORIES", REPOSITORIES),
            ("DEPLOY_POLL_INTERVAL_SECS", poll),
        ],
        ..Default::default()
    })
    .await
}

/// An auto-deploying project on `repo`'s main branch.
async fn auto_project(mesh: &TestMesh, token: &str, repo: &Repo) -> String {
    let id = app(mesh, token, "true", "", &[]).await;
    let settings = project_pb::ProjectSettings {
        project_id: id.clone(),
        repository_url: repo.url(),
        auto_deploy: true,
        ..Default::default()
    };
    update_settings(mesh, token, settings, &["repository_url", "auto_deploy"]).await;
    id
}

async fn commits(mesh: &TestMesh, token: &str, project_id: &str) -> Vec<String> {
    let listed = mesh
        .deploys()
        .await
        .list_deployments(authed(
            pb::ListDeploymentsRequest {
                project_id: project_id.to_owned(),
                page_size: 100,
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    listed.deployments.into_iter().rev().map(|d| d.commit_sha).collect()
}

async fn wait_for_commits(mesh: &TestMesh, token: &str, project_id: &str, expected: &[&str]) {
    let started = Instant::now();
    loop {
        let seen = commits(mesh, token, project_id).await;
        if seen == expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "deployed commits {seen:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_deploys_each_new_commit_of_the_branch_once() {
    let mesh = mesh("1").await;
    let repo = Repo::new();
    let first = repo.commit("main", "one", "one");
    repo.commit("other", "elsewhere", "another branch");
    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = auto_project(&mesh, &alice, &repo).await;
    wait_for_commits(&mesh, &alice, &project_id, &[&first]).await;
    let second = repo.commit("main", "two", "two");
    wait_for_commits(&mesh, &alice, &project_id, &[&first, &second]).await;
    // A few more polls: nothing new.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        commits(&mesh, &alice, &project_id).await,
        [first.clone(), second.clone()]
    );
    // The trail says Capsule itself deployed them (no user acted).
    let trail = mesh
        .deploys()
        .await
        .list_audit_events(authed(
            capsule::proto::audit::v1::ListAuditEventsRequest {
                project_id: project_id.clone(),
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let automatic: Vec<(&str, &str, &str)> = trail
        .events
        .iter()
        .map(|event| {
            (
                event.action.as_str(),
                event.actor_id.as_str(),
                event.details["commit_sha"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        automatic,
        [
            ("deployment.create", "", second.as_str()),
            ("deployment.create", "", first.as_str())
        ]
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_event_deploys_the_pushed_commit_once_and_a_bad_signature_starts_nothing() {
    let mesh = mesh("0").await;
    let repo = Repo::new();
    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = auto_project(&mesh, &alice, &repo).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", mesh.http);
    let secret = common::rotate_webhook_secret(&http, &base, &alice, &project_id).await;
    assert_eq!(secret.len(), 64);

    let sha = repo.commit("main", "pushed", "pushed");
    let body = serde_json::json!({"ref": "refs/heads/main", "after": sha, "repository": {"name": "app"}}).to_string();
    let hook = format!("{base}/v1/projects/{project_id}/hooks/git");
    let send = |signature: String, delivery: &'static str, body: String| {
        http.post(&hook)
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
    };

    // Forged: a wrong secret, or a body changed after signing.
    let forged = send(github_signature("guess", body.as_bytes()), "d-0", body.clone())
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let tampered = body.replace("\"app\"", "\"evil\"");
    assert_ne!(tampered, body);
    let changed = send(github_signature(&secret, body.as_bytes()), "d-0", tampered)
        .await
        .unwrap();
    assert_eq!(changed.status(), 401);
    let unsigned = http.post(&hook).body(body.clone()).send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    assert!(commits(&mesh, &alice, &project_id).await.is_empty(), "nothing started");

    let accepted = send(github_signature(&secret, body.as_bytes()), "d-1", body.clone())
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    let answer: serde_json::Value = accepted.json().await.unwrap();
    assert!(
        !answer["deploymentId"].as_str().unwrap_or_default().is_empty(),
        "{answer}"
    );
    assert_eq!(commits(&mesh, &alice, &project_id).await, std::slice::from_ref(&sha));

    // Replayed: the same delivery, and the same body under a new delivery id.
    for delivery in ["d-1", "d-2"] {
        let replay = send(github_signature(&secret, body.as_bytes()), delivery, body.clone())
            .await
            .unwrap();
        assert_eq!(replay.status(), 200);
        let answer: serde_json::Value = replay.json().await.unwrap();
        assert!(answer.get("deploymentId").is_none(), "{answer}");
    }
    // Another branch deploys nothing.
    let other = serde_json::json!({"ref": "refs/heads/feature", "after": sha}).to_string();
    let ignored = send(github_signature(&secret, other.as_bytes()), "d-3", other)
        .await
        .unwrap();
    assert_eq!(ignored.status(), 200);
    assert_eq!(commits(&mesh, &alice, &project_id).await, [sha]);
    mesh.stop().await;
}
