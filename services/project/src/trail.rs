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
    }
    audit::restrict_to_caller(&mut filter, &ask.caller)?;
    let rows = api.db.run(move |conn| audit::list(conn, &filter, limit + 1)).await?;
    Ok(Response::new(audit::page(&rows, limit, "project")))
}
