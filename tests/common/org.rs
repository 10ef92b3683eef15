//! Helpers for tests with organisations: one made, a project of it, a
//! member who joined by invitation.

use capsule::proto::project::v1 as pb;

use super::{TestMesh, authed};

/// A new organisation, owned by `owner`; its id.
pub async fn organization(mesh: &TestMesh, owner: &str, name: &str) -> String {
    mesh.projects()
        .await
        .create_organization(authed(
            pb::CreateOrganizationRequest {
                organization: Some(pb::Organization {
                    name: name.to_owned(),
                    ..Default::default()
                }),
            },
            owner,
        ))
        .await
        .expect("the organisation is created")
        .into_inner()
        .id
}

/// A project of organisation `organization_id`, created by `token`; its id.
pub async fn project(mesh: &TestMesh, token: &str, organization_id: &str, name: &str) -> String {
    mesh.projects()
        .await
        .create_project(authed(
            pb::CreateProjectRequest {
                project: Some(pb::Project {
                    name: name.to_owned(),
                    organization_id: organization_id.to_owned(),
                    ..Default::default()
                }),
            },
            token,
        ))
        .await
        .expect("the project is created")
        .into_inner()
        .id
}

/// `email`'s user (signed in as `member`) invited by `owner` with `role`,
/// and joined with the mailed token.
pub async fn join(
    mesh: &TestMesh,
    owner: &str,
    organization_id: &str,
    email: &str,
    role: pb::OrganizationRole,
    member: &str,
) {
    let mut projects = mesh.projects().await;
    projects
        .invite_member(authed(
            pb::InviteMemberRequest {
                organization_id: organization_id.to_owned(),
                email: email.to_owned(),
                role: role.into(),
            },
            owner,
        ))
        .await
        .expect("the invitation is sent");
    let token = super::mailed_invitation_token(mesh, email);
    projects
        .accept_invitation(authed(pb::AcceptInvitationRequest { token }, member))
        .await
        .expect("the invitation is accepted");
}
