//! An ssh:// repository with the project's deploy key: once, ssh:// would
//! have used the operator's own keys for every tenant, so it was refused.
//! Now Capsule makes each project an ed25519 key, shows only its public
//! half, keeps the private half sealed, and hands it only to git in that
//! project's sandbox, which reaches the server through its egress proxy
//! and pins the server's host key it saw first.

use std::time::Duration;

use capsule::{
    config::ServiceKind,
    proto::{deploy::v1::DeploymentState, project::v1 as project_pb},
};
use diesel::{QueryableByName, RunQueryDsl, sql_types::Text};

use crate::{
    common::{
        authed,
        deploy::{create, logs, project, text, update_settings, wait_for},
        git::{Repo, SshServer},
    },
    runner_mesh,
};

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = Text)]
    private_key: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ssh_repository_is_fetched_in_the_sandbox_with_the_projects_deploy_key() {
    let repo = Repo::new();
    let sha = repo.commit("main", "fetched over ssh", "an ssh commit");
    let mesh = runner_mesh(&[("DEPLOY_EGRESS_ALLOWED_NETWORKS", "127.0.0.4/32")]).await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = project(&mesh, &alice, "cat index.html", &[]).await;
    let mut projects = mesh.projects().await;

    // No key yet: none to show, and a deployment says what to do.
    let missing = projects
        .get_deploy_key(authed(
            project_pb::GetDeployKeyRequest {
                project_id: project_id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let key = projects
        .rotate_deploy_key(authed(
            project_pb::RotateDeployKeyRequest {
                project_id: project_id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(key.public_key.starts_with("ssh-ed25519 "), "{}", key.public_key);
    assert!(key.fingerprint.starts_with("SHA256:"), "{}", key.fingerprint);
    let shown = projects
        .get_deploy_key(authed(
            project_pb::GetDeployKeyRequest {
                project_id: project_id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.public_key, key.public_key);
    // The private half rests sealed.
    let stored: Vec<Stored> = diesel::sql_query("SELECT private_key FROM deploy_keys")
        .load(&mut mesh.database(ServiceKind::Project).connect())
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(
        !stored[0].private_key.contains("OPENSSH"),
        "the key rests as it was made"
    );

    // The git host knows the project's key, and no other.
    let server = SshServer::start("127.0.0.4", &key.public_key);
    let user = std::env::var("USER").unwrap_or_else(|_| "root".to_owned());
    let url = format!("ssh://{user}@127.0.0.4:{}{}", server.port, repo.bare.display());
    update_settings(
        &mesh,
        &alice,
        project_pb::ProjectSettings {
            project_id: project_id.clone(),
            repository_url: url,
            ..Default::default()
        },
        &["repository_url"],
    )
    .await;
    let deployment = create(&mesh, &alice, &project_id, "", "").await.unwrap();
    assert_eq!(
        deployment.commit_sha, "",
        "only the sandbox reads an ssh repository's refs"
    );
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
        output.contains("fetched over ssh"),
        "the commit was checked out:\n{output}"
    );
    assert!(
        output.contains(&format!("egress: 127.0.0.4:{} — ", server.port)),
        "ssh went out through the sandbox's egress proxy:\n{output}"
    );
    assert!(!output.contains("PRIVATE KEY"), "the key never shows:\n{output}");
    assert_eq!(live.commit_sha, sha, "the runner reported the commit it fetched");
    assert_eq!(live.commit_message, "an ssh commit");

    // Someone else answers at the server's address with another host key
    // (a man in the middle): refused, as the key seen first is pinned.
    let port = server.port;
    drop(server);
    let impostor = SshServer::start_on("127.0.0.4", port, &key.public_key);
    let spoofed = create(&mesh, &alice, &project_id, "", "").await.unwrap();
    let failed = wait_for(
        &mesh,
        &alice,
        &spoofed.id,
        DeploymentState::Failed,
        Duration::from_secs(40),
    )
    .await;
    assert!(failed.status_message.contains("host key"), "{}", failed.status_message);
    drop(impostor);
    let server = SshServer::start_on("127.0.0.4", port, &key.public_key);
    let _ = server.port;

    // A new key: the git host does not know it, and the fetch is refused.
    projects
        .rotate_deploy_key(authed(
            project_pb::RotateDeployKeyRequest {
                project_id: project_id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap();
    let refused = create(&mesh, &alice, &project_id, "", "").await.unwrap();
    let failed = wait_for(
        &mesh,
        &alice,
        &refused.id,
        DeploymentState::Failed,
        Duration::from_secs(40),
    )
    .await;
    assert!(
        failed.status_message.contains("cannot fetch the source"),
        "{}",
        failed.status_message
    );
}
