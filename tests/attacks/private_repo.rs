//! A private repository over HTTPS-style token authentication, and where
//! git runs: the deploy service reads only the refs with its own client,
//! and git fetches the commit inside the project's sandbox, through its
//! egress proxy, with the project's secret token — once, git ran on the
//! host against the tenant's URL, and a private repository could not be
//! fetched at all.

use std::time::Duration;

use capsule::proto::deploy::v1::DeploymentState;

use crate::{
    common::{
        deploy::{create, logs, project, set_variable, text, update_settings, wait_for},
        git::{Repo, serve_http},
    },
    runner_mesh,
};

/// `Basic` and base64 of `x-access-token:s3cret-token`.
const AUTHORIZATION: &str = "Basic eC1hY2Nlc3MtdG9rZW46czNjcmV0LXRva2Vu";

#[tokio::test(flavor = "multi_thread")]
async fn a_private_repository_is_fetched_in_the_sandbox_with_the_projects_token() {
    let repo = Repo::new();
    let sha = repo.commit("main", "from a private repository", "a private commit");
    let (addr, seen) = serve_http(repo.bare.parent().unwrap(), "127.0.0.3", AUTHORIZATION);
    let mesh = runner_mesh(&[("DEPLOY_EGRESS_ALLOWED_NETWORKS", "127.0.0.3/32")]).await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = project(&mesh, &alice, "cat index.html; echo; id -u", &[]).await;
    let url = format!("http://{addr}/app.git");
    update_settings(
        &mesh,
        &alice,
        capsule::proto::project::v1::ProjectSettings {
            project_id: project_id.clone(),
            repository_url: url.clone(),
            ..Default::default()
        },
        &["repository_url"],
    )
    .await;

    // No token: the server's refusal, in words that say what to do.
    let refused = create(&mesh, &alice, &project_id, "", "").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("GIT_TOKEN"), "{}", refused.message());
    // A wrong one: told apart.
    set_variable(&mesh, &alice, &project_id, "GIT_TOKEN", "wrong", true).await;
    let refused = create(&mesh, &alice, &project_id, "", "").await.unwrap_err();
    assert!(refused.message().contains("refused the token"), "{}", refused.message());

    set_variable(&mesh, &alice, &project_id, "GIT_TOKEN", "s3cret-token", true).await;
    let deployment = create(&mesh, &alice, &project_id, "", "").await.unwrap();
    assert_eq!(deployment.commit_sha, sha, "the branch resolved over the refs");
    let live = wait_for(
        &mesh,
        &alice,
        &deployment.id,
        DeploymentState::Live,
        Duration::from_secs(40),
    )
    .await;
    let output = text(&logs(&mesh, &alice, &deployment.id).await);
    assert!(
        output.contains("from a private repository"),
        "the commit was checked out:\n{output}"
    );
    // Through the sandbox's way out, which records it.
    assert!(
        output.contains(&format!("egress: {addr} — ")),
        "git in the sandbox went through the egress proxy:\n{output}"
    );
    assert!(!output.contains("s3cret-token"), "the token never shows:\n{output}");
    assert_eq!(
        live.commit_message, "a private commit",
        "the runner reported the commit"
    );
    assert_eq!(live.commit_author, "Ada Lovelace <ada@example.com>");
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|s| s.authorized && s.line.starts_with("POST ")),
        "git fetched with the token: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_is_refused_outside_the_operators_networks() {
    let repo = Repo::new();
    repo.commit("main", "x", "x");
    let (addr, seen) = serve_http(repo.bare.parent().unwrap(), "127.0.0.3", AUTHORIZATION);
    // 127.0.0.3 is loopback and not allowed here.
    let mesh = runner_mesh(&[]).await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = project(&mesh, &alice, "true", &[("GIT_TOKEN", "s3cret-token", true)]).await;
    update_settings(
        &mesh,
        &alice,
        capsule::proto::project::v1::ProjectSettings {
            project_id: project_id.clone(),
            repository_url: format!("http://{addr}/app.git"),
            ..Default::default()
        },
        &["repository_url"],
    )
    .await;
    let refused = create(&mesh, &alice, &project_id, "", "").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("loopback"), "{}", refused.message());
    assert!(seen.lock().unwrap().is_empty(), "nothing reached the server");
}
