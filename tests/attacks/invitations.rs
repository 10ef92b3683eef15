//! Invitations against whoever holds their token: an invitation was a
//! bearer token — anyone with the link (a forwarded mail, a shared
//! screen) joined with its role — and a pending one could be neither seen
//! nor taken back.

use capsule::proto::project::v1 as pb;
use tonic::Code;

use crate::common::{authed, mailed_invitation_token, org};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_admits_only_its_invitee_and_can_be_listed_and_withdrawn() {
    let mesh = crate::common::start().await;
    let (owner, _) = mesh.user("owner@example.com").await;
    let (mallory, _) = mesh.user("mallory@example.com").await;
    let (invitee, _) = mesh.user("invitee@example.com").await;
    let organization = org::organization(&mesh, &owner, "Acme").await;
    let mut projects = mesh.projects().await;
    let invite = |email: &str| pb::InviteMemberRequest {
        organization_id: organization.clone(),
        email: email.to_owned(),
        role: pb::OrganizationRole::Admin.into(),
    };
    projects
        .invite_member(authed(invite("invitee@example.com"), &owner))
        .await
        .unwrap();
    let token = mailed_invitation_token(&mesh, "invitee@example.com");

    // Mallory has the link: she is refused, and the invitation stays.
    let refused = projects
        .accept_invitation(authed(pb::AcceptInvitationRequest { token: token.clone() }, &mallory))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let member = projects
        .accept_invitation(authed(pb::AcceptInvitationRequest { token }, &invitee))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(member.role, pb::OrganizationRole::Admin as i32);

    // A pending invitation is listed, and withdrawn its token admits nobody.
    projects
        .invite_member(authed(invite("late@example.com"), &owner))
        .await
        .unwrap();
    let token = mailed_invitation_token(&mesh, "late@example.com");
    let listed = projects
        .list_invitations(authed(
            pb::ListInvitationsRequest {
                organization_id: organization.clone(),
            },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner()
        .invitations;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].email, "late@example.com");
    let forbidden = projects
        .list_invitations(authed(
            pb::ListInvitationsRequest {
                organization_id: organization.clone(),
            },
            &mallory,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(forbidden.code(), Code::NotFound | Code::PermissionDenied),
        "{forbidden:?}"
    );
    projects
        .delete_invitation(authed(
            pb::DeleteInvitationRequest {
                organization_id: organization.clone(),
                invitation_id: listed[0].id.clone(),
            },
            &owner,
        ))
        .await
        .unwrap();
    let (late, _) = mesh.user("late@example.com").await;
    let gone = projects
        .accept_invitation(authed(pb::AcceptInvitationRequest { token }, &late))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    mesh.stop().await;
}
