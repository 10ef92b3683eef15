//! Tenants' secrets against whoever reads the databases: variable values
//! and webhooks' signing secrets were stored as they were given, so a
//! backup, a replica or a stray `SELECT` showed every tenant's keys and
//! let anyone forge its webhooks.

use std::time::Duration;

use capsule::{
    config::ServiceKind,
    proto::deploy::v1::{self as pb, DeploymentState},
};
use diesel::{QueryableByName, RunQueryDsl, sql_types::Text};

use super::{logs_until, runner_mesh};
use crate::common::{
    authed,
    deploy::{deploy, project, wait_for},
};

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

    // A webhook's signing secret (on a project that never deploys: no
    // delivery is attempted) rests sealed too.
    let quiet = project(&mesh, &owner, "true", &[]).await;
    let created = mesh
        .deploys()
        .await
        .create_webhook(authed(
            pb::CreateWebhookRequest {
                parent: format!("projects/{quiet}"),
                url: "https://93.184.216.34/hooks".to_owned(),
                events: vec![pb::WebhookEvent::DeploymentLive as i32],
            },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(created.secret.starts_with("whsec_"));
    let stored: Vec<Stored> = diesel::sql_query("SELECT secret AS value FROM webhooks")
        .load(&mut mesh.database(ServiceKind::Deploy).connect())
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(
        !stored[0].value.contains(&created.secret),
        "the signing secret rests as made"
    );

    // So does the secret push events are signed with.
    let push = mesh
        .projects()
        .await
        .rotate_webhook_secret(authed(
            capsule::proto::project::v1::RotateWebhookSecretRequest { project_id: quiet },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner()
        .webhook_secret;
    let stored: Vec<Stored> =
        diesel::sql_query("SELECT webhook_secret AS value FROM project_settings WHERE webhook_secret <> ''")
            .load(&mut mesh.database(ServiceKind::Project).connect())
            .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].value.contains(&push), "the push-event secret rests as made");
    mesh.stop().await;
}

#[derive(QueryableByName)]
struct KeyId {
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    key_id: Option<String>,
}

/// `capsule secrets reencrypt` after a new key is put first: every kind
/// of sealed secret of the project service — variables, the push-event
/// secret, the deploy key — is sealed under it, and a second run has
/// nothing left to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_seals_every_kind_of_secret_under_the_new_key() {
    use capsule::proto::project::v1 as project_pb;

    let mesh = runner_mesh(&[]).await;
    let (owner, _) = mesh.user("owner@example.com").await;
    let project_id = project(&mesh, &owner, "true", &[("API_KEY", "sk-live-4242", true)]).await;
    let mut projects = mesh.projects().await;
    projects
        .rotate_webhook_secret(authed(
            project_pb::RotateWebhookSecretRequest {
                project_id: project_id.clone(),
            },
            &owner,
        ))
        .await
        .unwrap();
    projects
        .rotate_deploy_key(authed(project_pb::RotateDeployKeyRequest { project_id }, &owner))
        .await
        .unwrap();
    let key_ids = || -> Vec<Option<String>> {
        let rows: Vec<KeyId> = diesel::sql_query(
            "SELECT key_id FROM environment_variables \
             UNION ALL SELECT webhook_secret_key_id FROM project_settings WHERE webhook_secret <> '' \
             UNION ALL SELECT key_id FROM deploy_keys",
        )
        .load(&mut mesh.database(ServiceKind::Project).connect())
        .unwrap();
        rows.into_iter().map(|row| row.key_id).collect()
    };
    assert_eq!(key_ids(), vec![Some("test1".to_owned()); 3]);

    let keys = capsule::crypto::Keyring::parse(&format!(
        "test2:Y2Fwc3VsZS1zZWNvbmQtZW5jcnlwdGlvbi1rZXktMzI=,{}",
        crate::common::TEST_KEYS
    ))
    .unwrap();
    let keys = std::sync::Arc::new(keys);
    let config = mesh.database(ServiceKind::Project).db_config();
    let sealed = capsule_project::reencrypt(config.clone(), keys.clone()).await.unwrap();
    assert_eq!(sealed, 3, "a variable, the push-event secret and the deploy key");
    assert_eq!(key_ids(), vec![Some("test2".to_owned()); 3]);
    assert_eq!(capsule_project::reencrypt(config, keys).await.unwrap(), 0);
    mesh.stop().await;
}
