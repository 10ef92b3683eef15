//! Reading the project service's audit trail (`ListAuditEvents`).

use capsule::{audit, proto::audit::v1 as pb};
use tonic::{Request, Response, Status};

use crate::api::{Ask, ProjectServiceApi};

pub async fn list_audit_events(
    api: &ProjectServiceApi,
    request: Request<pb::ListAuditEventsRequest>,
) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
    let ask = Ask::of(&request)?;
    let (mut filter, limit) = audit::filter_of(request.get_ref())?;
    if let Some(project_id) = filter.project_id {
        api.visible(&ask, project_id).await?;
    } else if let Some(organization_id) = filter.organization_id {
        api.member(&ask, organization_id).await?;
    } else if !ask.caller.is_admin() {
        match filter.actor_id {
            Some(actor) if actor != ask.caller.user_id => {
                return Err(Status::permission_denied(
                    "only your own events, or those of an organisation or project you administer",
                ));
            }
            _ => filter.actor_id = Some(ask.caller.user_id),
        }
    }
    let rows = api.db.run(move |conn| audit::list(conn, &filter, limit + 1)).await?;
    let next_page_token = audit::next_page_token(&rows, limit);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(Response::new(pb::ListAuditEventsResponse {
        events: rows
            .iter()
            .take(limit)
            .map(|row| audit::to_proto(row, "project"))
            .collect(),
        next_page_token,
    }))
}
