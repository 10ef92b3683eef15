//! Projects themselves: creating, reading, listing, changing, deleting
//! (kept `RETENTION_DAYS` to be brought back) and moving them between
//! owners.

use capsule::{
    auth::Permission,
    proto::project::v1 as pb,
    rpc::{self, FieldViolations, PageToken},
};
use chrono::{Duration, Utc};
use tonic::{Request, Response, Status};

use crate::{
    convert::project_proto,
    db::{Project, ProjectChanges, ProjectToCreate, Viewer, organizations},
    state::{Call, ProjectServiceApi, project_event, viewer},
    validate,
};

/// How long a soft-deleted project can be brought back.
pub const RETENTION_DAYS: i64 = 30;

fn slug_taken(slug: &str) -> Status {
    Status::already_exists(format!(
        "the owner already has a project with the slug {slug:?}; choose another"
    ))
}

pub(super) async fn create_project(
    api: &ProjectServiceApi,
    request: Request<pb::CreateProjectRequest>,
) -> Result<Response<pb::Project>, Status> {
    let call = Call::of(&request)?;
    let wanted = request.into_inner().project.unwrap_or_default();
    let mut violations = FieldViolations::new();
    let name = validate::name(&wanted.name, "project.name", &mut violations);
    // The rules in the protos checked the slug and description.
    let slug_derived = wanted.slug.is_empty();
    let slug = if slug_derived {
        validate::slug_from(&name)
    } else {
        wanted.slug.clone()
    };
    let organization_id = (!wanted.organization_id.is_empty())
        .then(|| rpc::parse_id("project.organization_id", &wanted.organization_id, &mut violations));
    violations.check()?;
    call.bound_to_one_project()?;
    // An organisation's token creates in its organisation.
    let organization_id = organization_id.or(call.token_organization());
    match organization_id {
        Some(organization_id) => {
            api.member(&call, organization_id).await?;
        }
        None => call.personal()?,
    }
    let owner_id = organization_id.unwrap_or(call.caller.user_id);
    let description = wanted.description;
    let created = api
        .create_project(ProjectToCreate {
            name,
            description,
            owner_id,
            organization_id,
            slug: slug.clone(),
            slug_derived,
        })
        .await;
    match created {
        Ok(project) => {
            tracing::info!(project.id = %project.id, owner.id = %owner_id, user.id = %call.caller.user_id, "project created");
            api.audit(project_event(&call, "project.create", &project).detail("slug", &project.slug))
                .await;
            Ok(Response::new(project_proto(&project)))
        }
        Err(err) if err.is_unique_violation(None) => Err(slug_taken(&slug)),
        Err(err) => Err(err.into()),
    }
}

pub(super) async fn get_project(
    api: &ProjectServiceApi,
    request: Request<pb::GetProjectRequest>,
) -> Result<Response<pb::Project>, Status> {
    let call = Call::of(&request)?;
    let id = rpc::require_id("project_id", &request.get_ref().project_id)?;
    Ok(Response::new(project_proto(&api.authorize(&call, id).await?.project)))
}

pub(super) async fn list_projects(
    api: &ProjectServiceApi,
    request: Request<pb::ListProjectsRequest>,
) -> Result<Response<pb::ListProjectsResponse>, Status> {
    let call = Call::of(&request)?;
    call.bound_to_one_project()?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let limit = rpc::page_size(body.page_size, 20, 100, &mut violations);
    let after = PageToken::decode(&body.page_token, &mut violations);
    let organization_id = (!body.organization_id.is_empty())
        .then(|| rpc::parse_id("organization_id", &body.organization_id, &mut violations));
    violations.check()?;
    let viewer = match organization_id.or(call.token_organization()) {
        // An organisation's projects are those it owns.
        Some(organization_id) => {
            api.member(&call, organization_id).await?;
            Viewer {
                user_id: organization_id,
                admin: false,
            }
        }
        None => viewer(&call.caller),
    };
    let show_deleted = body.show_deleted;
    let rows = api
        .db
        .run(move |conn| Project::list(conn, viewer, show_deleted, after.map(|t| (t.time, t.id)), limit + 1))
        .await?;
    let next_page_token = rpc::next_page_token(&rows, limit, |row| (row.created_at, row.id));
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(Response::new(pb::ListProjectsResponse {
        projects: rows.iter().take(limit).map(project_proto).collect(),
        next_page_token,
    }))
}

pub(super) async fn update_project(
    api: &ProjectServiceApi,
    request: Request<pb::UpdateProjectRequest>,
) -> Result<Response<pb::Project>, Status> {
    let call = Call::of(&request)?;
    let body = request.into_inner();
    let wanted = body.project.unwrap_or_default();
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id("project.id", &wanted.id, &mut violations);
    let paths = rpc::mask_paths(
        body.update_mask.as_ref(),
        &["name", "slug", "description"],
        &mut violations,
    );
    let mut changes = ProjectChanges::default();
    for path in &paths {
        match path.as_str() {
            "name" => changes.name = Some(validate::name(&wanted.name, "project.name", &mut violations)),
            // The rules in the protos checked the slug and description.
            "slug" => changes.slug = Some(wanted.slug.clone()),
            "description" => changes.description = Some(wanted.description.clone()),
            _ => {}
        }
    }
    violations.check()?;
    let current = api.authorize(&call, id).await?.project;
    // An empty slug is derived from the name, as when creating.
    if changes.slug.as_deref() == Some("") {
        changes.slug = Some(validate::slug_from(changes.name.as_deref().unwrap_or(&current.name)));
    }
    let slug = changes.slug.clone().unwrap_or_default();
    match api.db.run(move |conn| Project::update(conn, id, &changes)).await {
        Ok(project) => {
            api.audit(project_event(&call, "project.update", &project).detail("fields", paths.join(",")))
                .await;
            Ok(Response::new(project_proto(&project)))
        }
        Err(err) if err.is_unique_violation(None) => Err(slug_taken(&slug)),
        Err(err) => Err(err.into()),
    }
}

pub(super) async fn delete_project(
    api: &ProjectServiceApi,
    request: Request<pb::DeleteProjectRequest>,
) -> Result<Response<pb::Project>, Status> {
    let call = Call::of(&request)?;
    let id = rpc::require_id("project_id", &request.get_ref().project_id)?;
    api.authorize(&call, id).await?;
    let purge_after = Utc::now() + Duration::days(RETENTION_DAYS);
    let project = api
        .db
        .run(move |conn| Project::soft_delete(conn, id, purge_after))
        .await?;
    tracing::info!(project.id = %id, user.id = %call.caller.user_id, "project deleted");
    api.audit(project_event(&call, "project.delete", &project)).await;
    Ok(Response::new(project_proto(&project)))
}

pub(super) async fn undelete_project(
    api: &ProjectServiceApi,
    request: Request<pb::UndeleteProjectRequest>,
) -> Result<Response<pb::Project>, Status> {
    let call = Call::of(&request)?;
    let id = rpc::require_id("project_id", &request.get_ref().project_id)?;
    let project = api.authorize_deleted_too(&call, id).await?.project;
    match project.purge_after {
        None => return Err(Status::failed_precondition("the project is not deleted")),
        Some(purge) if purge <= Utc::now() => {
            return Err(Status::failed_precondition(
                "the project's retention window has ended; it can no longer be restored",
            ));
        }
        Some(_) => {}
    }
    let slug = project.slug.clone();
    match api.db.run(move |conn| Project::undelete(conn, id)).await {
        Ok(project) => {
            api.audit(project_event(&call, "project.undelete", &project)).await;
            Ok(Response::new(project_proto(&project)))
        }
        Err(err) if err.is_unique_violation(None) => Err(Status::already_exists(format!(
            "another project of its owner now uses the slug {slug:?}; change its slug first"
        ))),
        Err(err) => Err(err.into()),
    }
}

pub(super) async fn transfer_project(
    api: &ProjectServiceApi,
    request: Request<pb::TransferProjectRequest>,
) -> Result<Response<pb::Project>, Status> {
    let call = Call::of(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let project_id = rpc::parse_id("project_id", &body.project_id, &mut violations);
    let organization_id = (!body.organization_id.is_empty())
        .then(|| rpc::parse_id("organization_id", &body.organization_id, &mut violations));
    violations.check()?;
    let project = api.authorize(&call, project_id).await?.project;
    let owner = match organization_id {
        Some(organization_id) => {
            api.member(&call.with(Permission::ProjectTransfer), organization_id)
                .await?;
            organization_id
        }
        None => {
            call.personal()?;
            call.caller.user_id
        }
    };
    if project.owner_id == owner {
        return Ok(Response::new(project_proto(&project)));
    }
    let (slug, previous_owner) = (project.slug.clone(), project.owner_id);
    match api
        .db
        .run(move |conn| organizations::transfer(conn, project_id, owner, organization_id))
        .await
    {
        Ok(moved) => {
            tracing::info!(project.id = %project_id, owner.id = %owner, by = %call.caller.user_id, "project transferred");
            let event = project_event(&call, "project.transfer", &moved)
                .detail("from", previous_owner)
                .detail("to", owner);
            api.audit(event.clone()).await;
            // The organisation it left sees the move too.
            if project.organization_id.is_some() && project.organization_id != moved.organization_id {
                api.audit(event.organization(project.organization_id)).await;
            }
            Ok(Response::new(project_proto(&moved)))
        }
        Err(err) if err.is_unique_violation(None) => Err(Status::already_exists(format!(
            "the new owner already has a project with the slug {slug:?}; change this project's slug first"
        ))),
        Err(err) => Err(err.into()),
    }
}
