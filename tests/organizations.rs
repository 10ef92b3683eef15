//! Organisations end to end: an owner invites a member by email, the
//! member's role decides what they may do to the organisation's projects
//! and deployments — over gRPC and through the REST bridge alike — and a
//! removed member is out at once.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use capsule::proto::{deploy::v1 as deploy_pb, project::v1 as pb};
use common::{TestMesh, authed};
use reqwest::StatusCode;
use tonic::Code;

fn code<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn rest_deploy(mesh: &TestMesh, token: &str, project_id: &str) -> (StatusCode, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/projects/{project_id}/deployments", mesh.http))
        .bearer_auth(token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn set_role(
    mesh: &TestMesh,
    token: &str,
    organization_id: &str,
    user_id: &str,
    role: pb::OrganizationRole,
) -> Code {
    code(
        mesh.projects()
            .await
            .update_member(authed(
                pb::UpdateMemberRequest {
                    organization_id: organization_id.to_owned(),
                    user_id: user_id.to_owned(),
                    role: role.into(),
                },
                token,
            ))
            .await,
    )
}

#[tokio::test]
async fn a_members_role_decides_what_they_may_do_and_removal_is_immediate() {
    let mesh = common::start().await;
    let (owner, owner_id) = mesh.user("owner@example.com").await;
    let (member, member_id) = mesh.user("member@example.com").await;
    let mut projects = mesh.projects().await;
    let mut deploys = mesh.deploys().await;

    let organization = projects
        .create_organization(authed(
            pb::CreateOrganizationRequest {
                organization: Some(pb::Organization {
                    name: "Acme".to_owned(),
                    ..Default::default()
                }),
            },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(organization.role(), pb::OrganizationRole::Owner);
    let org = organization.id.clone();
    let project = projects
        .create_project(authed(
            pb::CreateProjectRequest {
                project: Some(pb::Project {
                    name: "Shop".to_owned(),
                    organization_id: org.clone(),
                    ..Default::default()
                }),
            },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (project.owner_id.as_str(), project.organization_id.as_str()),
        (org.as_str(), org.as_str())
    );
    let project_id = project.id.clone();
    common::deploy::set_variable(&mesh, &owner, &project_id, "STRIPE_KEY", "sk_live_hidden", true).await;
    let owned_deployment = common::deploy::deploy(&mesh, &owner, &project_id).await;

    // Not yet a member: the project does not exist for them.
    let get = |token: &str| {
        authed(
            pb::GetProjectRequest {
                project_id: project_id.clone(),
            },
            token,
        )
    };
    assert_eq!(code(projects.get_project(get(&member)).await), Code::NotFound);

    // Invited as a viewer: the token goes by email only.
    let invitation = projects
        .invite_member(authed(
            pb::InviteMemberRequest {
                organization_id: org.clone(),
                email: "Member@Example.com".to_owned(),
                role: pb::OrganizationRole::Viewer.into(),
            },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(invitation.email, "member@example.com");
    let token = common::mailed_invitation_token(&mesh, "member@example.com");
    let accept = |token: &str, bearer: &str| {
        authed(
            pb::AcceptInvitationRequest {
                token: token.to_owned(),
            },
            bearer,
        )
    };
    let joined = projects
        .accept_invitation(accept(&token, &member))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (joined.user_id.as_str(), joined.role()),
        (member_id.as_str(), pb::OrganizationRole::Viewer)
    );
    assert_eq!(
        code(projects.accept_invitation(accept(&token, &member)).await),
        Code::NotFound,
        "single use"
    );

    // A viewer reads projects, settings (never secret values), deployments.
    projects.get_project(get(&member)).await.unwrap();
    let settings = projects
        .get_project_settings(authed(
            pb::GetProjectSettingsRequest {
                project_id: project_id.clone(),
            },
            &member,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(settings.environment_variables[0].value, "");
    let listed = projects
        .list_projects(authed(
            pb::ListProjectsRequest {
                organization_id: org.clone(),
                ..Default::default()
            },
            &member,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.projects.len(), 1);
    let get_deployment = |token: &str| {
        authed(
            deploy_pb::GetDeploymentRequest {
                deployment_id: owned_deployment.id.clone(),
            },
            token,
        )
    };
    deploys.get_deployment(get_deployment(&member)).await.unwrap();
    // ...but may not deploy, over gRPC or REST, nor change settings.
    let create = |token: &str| {
        authed(
            deploy_pb::CreateDeploymentRequest {
                project_id: project_id.clone(),
                ..Default::default()
            },
            token,
        )
    };
    let refused = deploys.create_deployment(create(&member)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("project.deploy"), "{}", refused.message());
    let (status, body) = rest_deploy(&mesh, &member, &project_id).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.to_string().contains("project.deploy"), "{body}");
    let cancel = deploys
        .cancel_deployment(authed(
            deploy_pb::CancelDeploymentRequest {
                deployment_id: owned_deployment.id.clone(),
            },
            &member,
        ))
        .await;
    assert_eq!(code(cancel), Code::PermissionDenied);
    let variable = |name: &str, secret: bool, token: &str| {
        authed(
            pb::SetEnvironmentVariableRequest {
                project_id: project_id.clone(),
                variable: Some(pb::EnvironmentVariable {
                    name: name.to_owned(),
                    value: "x".to_owned(),
                    secret,
                    ..Default::default()
                }),
            },
            token,
        )
    };
    assert_eq!(
        code(
            projects
                .set_environment_variable(variable("PLAIN", false, &member))
                .await
        ),
        Code::PermissionDenied
    );
    // A viewer may not hand out roles either.
    assert_eq!(
        set_role(&mesh, &member, &org, &member_id, pb::OrganizationRole::Admin).await,
        Code::PermissionDenied
    );

    // Promoted to developer: deploys (gRPC and REST) and writes plain
    // variables; secrets stay out of reach, to read and to write.
    assert_eq!(
        set_role(&mesh, &owner, &org, &member_id, pb::OrganizationRole::Developer).await,
        Code::Ok
    );
    let deployment = deploys.create_deployment(create(&member)).await.unwrap().into_inner();
    let (status, body) = rest_deploy(&mesh, &member, &project_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let settings = projects
        .get_project_settings(authed(
            pb::GetProjectSettingsRequest {
                project_id: project_id.clone(),
            },
            &member,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        settings
            .environment_variables
            .iter()
            .all(|v| v.value.is_empty() || !v.secret)
    );
    projects
        .set_environment_variable(variable("PLAIN", false, &member))
        .await
        .unwrap();
    for (name, secret) in [("NEW_SECRET", true), ("STRIPE_KEY", false)] {
        let refused = projects
            .set_environment_variable(variable(name, secret, &member))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{name}: {refused:?}");
        assert!(refused.message().contains("project.secrets.write"));
    }
    let delete_secret = projects
        .delete_environment_variable(authed(
            pb::DeleteEnvironmentVariableRequest {
                project_id: project_id.clone(),
                name: "STRIPE_KEY".to_owned(),
            },
            &member,
        ))
        .await;
    assert_eq!(code(delete_secret), Code::PermissionDenied);
    // Only an owner makes owners.
    assert_eq!(
        set_role(&mesh, &owner, &org, &member_id, pb::OrganizationRole::Admin).await,
        Code::Ok
    );
    assert_eq!(
        set_role(&mesh, &member, &org, &member_id, pb::OrganizationRole::Owner).await,
        Code::PermissionDenied
    );
    assert_eq!(
        set_role(&mesh, &member, &org, &owner_id, pb::OrganizationRole::Viewer).await,
        Code::PermissionDenied
    );
    // The last owner stays.
    assert_eq!(
        set_role(&mesh, &owner, &org, &owner_id, pb::OrganizationRole::Admin).await,
        Code::FailedPrecondition
    );

    // Removed: out at once, everywhere.
    projects
        .remove_member(authed(
            pb::RemoveMemberRequest {
                organization_id: org.clone(),
                user_id: member_id.clone(),
            },
            &owner,
        ))
        .await
        .unwrap();
    assert_eq!(code(projects.get_project(get(&member)).await), Code::NotFound);
    assert_eq!(
        code(deploys.get_deployment(get_deployment(&member)).await),
        Code::NotFound
    );
    let logs = deploys
        .get_logs(authed(
            deploy_pb::GetLogsRequest {
                deployment_id: deployment.id.clone(),
                ..Default::default()
            },
            &member,
        ))
        .await;
    assert_eq!(code(logs), Code::NotFound);
    assert_eq!(code(deploys.create_deployment(create(&member)).await), Code::NotFound);
    let (status, _) = rest_deploy(&mesh, &member, &project_id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let organizations = projects
        .list_organizations(authed(pb::ListOrganizationsRequest {}, &member))
        .await
        .unwrap()
        .into_inner();
    assert!(organizations.organizations.is_empty());
    mesh.stop().await;
}

#[tokio::test]
async fn projects_move_between_a_user_and_an_organisation_only_on_request() {
    let mesh = common::start().await;
    let (owner, owner_id) = mesh.user("founder@example.com").await;
    let (stranger, _) = mesh.user("stranger@example.com").await;
    let mut projects = mesh.projects().await;
    let organization = |token: &str| {
        authed(
            pb::CreateOrganizationRequest {
                organization: Some(pb::Organization {
                    name: "Studio".to_owned(),
                    ..Default::default()
                }),
            },
            token,
        )
    };
    let org = projects
        .create_organization(organization(&owner))
        .await
        .unwrap()
        .into_inner()
        .id;
    let theirs = projects
        .create_organization(organization(&stranger))
        .await
        .unwrap()
        .into_inner()
        .id;
    let personal = common::deploy::project(&mesh, &owner, "true", &[]).await;
    let transfer = |project_id: &str, organization_id: &str, token: &str| {
        authed(
            pb::TransferProjectRequest {
                project_id: project_id.to_owned(),
                organization_id: organization_id.to_owned(),
            },
            token,
        )
    };

    // Into an organisation the caller does not belong to: as if it did not exist.
    assert_eq!(
        code(projects.transfer_project(transfer(&personal, &theirs, &owner)).await),
        Code::NotFound
    );
    // Someone else's project: likewise.
    assert_eq!(
        code(projects.transfer_project(transfer(&personal, &theirs, &stranger)).await),
        Code::NotFound
    );

    let moved = projects
        .transfer_project(transfer(&personal, &org, &owner))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (moved.owner_id.as_str(), moved.organization_id.as_str()),
        (org.as_str(), org.as_str())
    );
    let mine = projects
        .list_projects(authed(pb::ListProjectsRequest::default(), &owner))
        .await
        .unwrap()
        .into_inner();
    assert!(mine.projects.is_empty(), "no longer personal");
    let back = projects
        .transfer_project(transfer(&personal, "", &owner))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (back.owner_id.as_str(), back.organization_id.as_str()),
        (owner_id.as_str(), "")
    );
    mesh.stop().await;
}
