//! Follow streams against the end of the right that opened them: a
//! revoked API token kept receiving a live app's runtime logs for as long
//! as the app ran, and so did a removed member and a signed-out session.

use std::time::Duration;

use capsule::proto::{auth::v1 as auth_pb, deploy::v1 as pb, project::v1 as project_pb};
use tonic::{Code, Streaming};

use super::runner_mesh;
use crate::common::{
    PASSWORD, authed,
    deploy::{deploy_live, update_settings},
    org,
};

/// How long a stream may go on once its right has ended.
const WITHIN: Duration = Duration::from_secs(5);

async fn follow(mesh: &crate::common::TestMesh, token: &str, deployment_id: &str) -> Streaming<pb::LogLine> {
    mesh.deploys()
        .await
        .stream_logs(authed(
            pb::StreamLogsRequest {
                deployment_id: deployment_id.to_owned(),
                after_sequence: 0,
                follow: true,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Reads `stream` until a runtime line arrives: it is live.
async fn flowing(stream: &mut Streaming<pb::LogLine>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let line = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("the app's lines flow")
            .unwrap()
            .expect("the stream goes on");
        if line.text == "tick" {
            return;
        }
    }
}

/// Reads `stream` until it ends: the status it ended with, which must
/// come within [`WITHIN`].
async fn ended(stream: &mut Streaming<pb::LogLine>, what: &str) -> tonic::Status {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("{what}: the stream still runs {} s later", WITHIN.as_secs()),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => panic!("{what}: the stream ended without saying why"),
            Ok(Err(status)) => return status,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_end_when_the_token_session_or_membership_does() {
    let mesh = runner_mesh(&[]).await;
    let (owner, _) = mesh.user("owner@example.com").await;
    let (member, member_id) = mesh.user("member@example.com").await;
    let organization = org::organization(&mesh, &owner, "Acme").await;
    org::join(
        &mesh,
        &owner,
        &organization,
        "member@example.com",
        project_pb::OrganizationRole::Viewer,
        &member,
    )
    .await;
    let project = org::project(&mesh, &owner, &organization, "ticker").await;
    let settings = project_pb::ProjectSettings {
        project_id: project.clone(),
        start_command: "python3 -m http.server \"$PORT\" >/dev/null 2>&1 & while true; do echo tick; sleep 0.2; done"
            .to_owned(),
        ..Default::default()
    };
    update_settings(&mesh, &owner, settings, &["start_command"]).await;
    let deployment = deploy_live(&mesh, &owner, &project).await;

    // Three readers: an API token, a member, a second session of the owner.
    let mut auth = mesh.auth().await;
    let created = auth
        .create_api_token(authed(
            auth_pb::CreateApiTokenRequest {
                name: "log reader".to_owned(),
                scopes: vec!["project.read".to_owned()],
                project_id: String::new(),
                expire_days: 30,
            },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner();
    let session = auth
        .login(auth_pb::LoginRequest {
            email: "owner@example.com".to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
        .access_token;
    let mut by_token = follow(&mesh, &created.token, &deployment.id).await;
    let mut by_member = follow(&mesh, &member, &deployment.id).await;
    let mut by_session = follow(&mesh, &session, &deployment.id).await;
    for stream in [&mut by_token, &mut by_member, &mut by_session] {
        flowing(stream).await;
    }

    // Each right ends; each stream ends within five seconds, saying why.
    auth.revoke_api_token(authed(
        auth_pb::RevokeApiTokenRequest {
            api_token_id: created.api_token.unwrap().id,
        },
        &owner,
    ))
    .await
    .unwrap();
    mesh.projects()
        .await
        .remove_member(authed(
            project_pb::RemoveMemberRequest {
                organization_id: organization.clone(),
                user_id: member_id,
            },
            &owner,
        ))
        .await
        .unwrap();
    auth.logout(authed(auth_pb::LogoutRequest {}, &session)).await.unwrap();
    for (stream, what) in [
        (&mut by_token, "a revoked API token"),
        (&mut by_member, "a removed member"),
        (&mut by_session, "a signed-out session"),
    ] {
        let status = ended(stream, what).await;
        assert!(
            matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied),
            "{what}: {status:?}"
        );
    }
    // The owner still reads.
    let mut still = follow(&mesh, &owner, &deployment.id).await;
    flowing(&mut still).await;
    mesh.stop().await;
}
