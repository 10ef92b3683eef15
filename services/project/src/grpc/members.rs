//! An organisation's members and invitations: inviting (the auth service
//! mails the link), accepting, listing and withdrawing invitations,
//! changing roles and removing members; an organisation keeps an owner.

use capsule::{
    audit::Actor,
    auth::{Caller, OrgRole, Permission, new_token, token_hash},
    proto::{
        auth::v1::{GetUserStatusRequest, SendInvitationEmailRequest},
        project::v1 as pb,
    },
    rpc::{self, FieldViolations},
};
use chrono::{Duration, Utc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    convert::{invitation_proto, member_proto},
    db::organizations::{self, NewInvitation, NotAccepted, Refusal},
    state::{Call, ProjectServiceApi, org_event},
};

/// How long an invitation can be accepted.
const INVITATION_DAYS: i64 = 7;

/// The organisation and user a member call names.
fn member_ids(organization_id: &str, user_id: &str) -> Result<(Uuid, Uuid), Status> {
    let mut violations = FieldViolations::new();
    let ids = (
        rpc::parse_id("organization_id", organization_id, &mut violations),
        rpc::parse_id("user_id", user_id, &mut violations),
    );
    violations.check()?;
    Ok(ids)
}

/// Only an owner gives, changes or takes away the owner role.
fn owners_only(actor: OrgRole) -> Result<(), Status> {
    if actor == OrgRole::Owner {
        return Ok(());
    }
    Err(Status::permission_denied(
        "only an owner of the organisation may make, unmake or remove an owner",
    ))
}

fn refusal(refusal: Refusal) -> Status {
    match refusal {
        Refusal::NoSuchMember => Status::not_found("no such member"),
        Refusal::LastOwner => {
            Status::failed_precondition("an organisation keeps at least one owner: make another member an owner first")
        }
    }
}

pub(super) async fn list_members(
    api: &ProjectServiceApi,
    request: Request<pb::ListMembersRequest>,
) -> Result<Response<pb::ListMembersResponse>, Status> {
    let call = Call::of(&request)?;
    let id = rpc::require_id("organization_id", &request.get_ref().organization_id)?;
    api.member(&call, id).await?;
    let members = api.db.run(move |conn| organizations::members(conn, id)).await?;
    Ok(Response::new(pb::ListMembersResponse {
        members: members.iter().map(member_proto).collect(),
    }))
}

pub(super) async fn invite_member(
    api: &ProjectServiceApi,
    request: Request<pb::InviteMemberRequest>,
) -> Result<Response<pb::Invitation>, Status> {
    let call = Call::of(&request)?;
    let body = request.into_inner();
    let id = rpc::require_id("organization_id", &body.organization_id)?;
    let role = OrgRole::from_proto(body.role())
        .ok_or_else(|| rpc::invalid_field("role", "must be viewer, developer, admin or owner"))?;
    let actor = api.member(&call, id).await?;
    if role == OrgRole::Owner {
        owners_only(actor)?;
    }
    let organization = api
        .db
        .run(move |conn| organizations::find(conn, id))
        .await?
        .ok_or_else(|| Status::not_found("no such organization"))?;
    let (token, hash) = new_token("")?;
    let expires = Utc::now() + Duration::days(INVITATION_DAYS);
    let (email, invited_by) = (body.email.trim().to_lowercase(), call.caller.user_id);
    let invitation = api
        .db
        .run({
            let email = email.clone();
            move |conn| {
                organizations::invite(
                    conn,
                    &NewInvitation {
                        organization_id: id,
                        email: &email,
                        role,
                        token_hash: &hash,
                        invited_by,
                        expires_at: expires,
                    },
                )
            }
        })
        .await?;
    let mail = SendInvitationEmailRequest {
        email,
        organization_name: organization.name,
        inviter_id: invited_by.to_string(),
        role: role.as_str().to_owned(),
        token,
        expire_time: Some(rpc::timestamp(expires)),
    };
    let sent = match api.auth(mail) {
        Ok((mut auth, request)) => auth.send_invitation_email(request).await.map(drop),
        Err(status) => Err(status),
    };
    if let Err(status) = sent {
        // No email, no invitation: nobody could ever accept it.
        let invitation_id = invitation.id;
        api.db
            .run(move |conn| organizations::withdraw(conn, invitation_id))
            .await?;
        tracing::warn!(error = %status.message(), "the invitation email could not be queued");
        return Err(match status.code() {
            tonic::Code::FailedPrecondition => status,
            _ => Status::unavailable("the invitation email could not be queued; retry shortly"),
        });
    }
    tracing::info!(organization.id = %id, invitation.id = %invitation.id, role = role.as_str(), "member invited");
    api.audit(
        org_event(
            &call.actor,
            "organization.invitation.create",
            id,
            format!("/invitations/{}", invitation.id),
        )
        .detail("email", &invitation.email)
        .detail("role", role.as_str()),
    )
    .await;
    Ok(Response::new(invitation_proto(&invitation)))
}

pub(super) async fn list_invitations(
    api: &ProjectServiceApi,
    request: Request<pb::ListInvitationsRequest>,
) -> Result<Response<pb::ListInvitationsResponse>, Status> {
    let call = Call::of(&request)?;
    let id = rpc::require_id("organization_id", &request.get_ref().organization_id)?;
    api.member(&call, id).await?;
    let pending = api.db.run(move |conn| organizations::pending(conn, id)).await?;
    Ok(Response::new(pb::ListInvitationsResponse {
        invitations: pending.iter().map(invitation_proto).collect(),
    }))
}

pub(super) async fn delete_invitation(
    api: &ProjectServiceApi,
    request: Request<pb::DeleteInvitationRequest>,
) -> Result<Response<pb::DeleteInvitationResponse>, Status> {
    let call = Call::of(&request)?;
    let body = request.get_ref();
    let id = rpc::require_id("organization_id", &body.organization_id)?;
    let invitation = rpc::require_id("invitation_id", &body.invitation_id)?;
    api.member(&call, id).await?;
    if !api
        .db
        .run(move |conn| organizations::withdraw_pending(conn, id, invitation))
        .await?
    {
        return Err(Status::not_found("no such pending invitation"));
    }
    tracing::info!(organization.id = %id, invitation.id = %invitation, "invitation withdrawn");
    api.audit(org_event(
        &call.actor,
        "organization.invitation.delete",
        id,
        format!("/invitations/{invitation}"),
    ))
    .await;
    Ok(Response::new(pb::DeleteInvitationResponse {}))
}

pub(super) async fn accept_invitation(
    api: &ProjectServiceApi,
    request: Request<pb::AcceptInvitationRequest>,
) -> Result<Response<pb::Member>, Status> {
    let user_id = Caller::of(&request)?.user_id;
    let actor = Actor::of(&request);
    let hash = token_hash(&request.into_inner().token);
    // The invitee only: whoever else holds the token (a forwarded mail, a
    // leaked link) is refused.
    let (mut auth, status_request) = api.auth(GetUserStatusRequest {
        user_id: user_id.to_string(),
    })?;
    let email = auth
        .get_user_status(status_request)
        .await
        .map_err(|status| {
            Status::unavailable(format!(
                "cannot check your account now ({}); retry shortly",
                status.message()
            ))
        })?
        .into_inner()
        .email;
    let member = api
        .db
        .run(move |conn| organizations::accept(conn, &hash, user_id, &email))
        .await?
        .map_err(|refusal| match refusal {
            NotAccepted::Unknown => {
                Status::not_found("this invitation is not valid, was already used or has expired; ask for a new one")
            }
            NotAccepted::OtherEmail => Status::permission_denied(
                "this invitation was sent to another email address: sign in with that address to accept it",
            ),
        })?;
    tracing::info!(organization.id = %member.organization_id, user.id = %user_id, role = %member.role, "invitation accepted");
    api.audit(
        org_event(
            &actor,
            "organization.member.join",
            member.organization_id,
            format!("/members/{user_id}"),
        )
        .detail("role", &member.role),
    )
    .await;
    Ok(Response::new(member_proto(&member)))
}

pub(super) async fn update_member(
    api: &ProjectServiceApi,
    request: Request<pb::UpdateMemberRequest>,
) -> Result<Response<pb::Member>, Status> {
    let call = Call::of(&request)?;
    let body = request.into_inner();
    let (id, user_id) = member_ids(&body.organization_id, &body.user_id)?;
    let role = OrgRole::from_proto(body.role())
        .ok_or_else(|| rpc::invalid_field("role", "must be viewer, developer, admin or owner"))?;
    let actor = api.member(&call, id).await?;
    let current = api.role_of(id, user_id).await?;
    if role == OrgRole::Owner || current == Some(OrgRole::Owner) {
        owners_only(actor)?;
    }
    let member = api
        .db
        .run(move |conn| organizations::change(conn, id, user_id, Some(role)))
        .await?
        .map_err(refusal)?
        .ok_or_else(|| Status::not_found("no such member"))?;
    tracing::info!(organization.id = %id, user.id = %user_id, role = role.as_str(), by = %call.caller.user_id, "member role changed");
    api.audit(
        org_event(
            &call.actor,
            "organization.member.update",
            id,
            format!("/members/{user_id}"),
        )
        .detail("role", role.as_str())
        .detail("previous_role", current.map_or("", OrgRole::as_str)),
    )
    .await;
    Ok(Response::new(member_proto(&member)))
}

pub(super) async fn remove_member(
    api: &ProjectServiceApi,
    request: Request<pb::RemoveMemberRequest>,
) -> Result<Response<pb::RemoveMemberResponse>, Status> {
    let call = Call::of(&request)?;
    let body = request.into_inner();
    let (id, user_id) = member_ids(&body.organization_id, &body.user_id)?;
    if user_id == call.caller.user_id {
        // Leaving needs no permission, only a membership.
        api.member(&call.with(Permission::OrganizationRead), id).await?;
    } else {
        let actor = api.member(&call, id).await?;
        if api.role_of(id, user_id).await? == Some(OrgRole::Owner) {
            owners_only(actor)?;
        }
    }
    api.db
        .run(move |conn| organizations::change(conn, id, user_id, None))
        .await?
        .map_err(refusal)?;
    tracing::info!(organization.id = %id, user.id = %user_id, by = %call.caller.user_id, "member removed");
    api.audit(org_event(
        &call.actor,
        "organization.member.remove",
        id,
        format!("/members/{user_id}"),
    ))
    .await;
    Ok(Response::new(pb::RemoveMemberResponse {}))
}
