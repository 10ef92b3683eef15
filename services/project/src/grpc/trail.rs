//! Reading the project service's audit trail (`ListAuditEvents`).

use capsule::audit;
use tonic::{Request, Response, Status};

use crate::state::{Call, ProjectServiceApi};

pub(super) async fn list_audit_events(
    api: &ProjectServiceApi,
    request: Request<capsule::proto::audit::v1::ListAuditEventsRequest>,
) -> Result<Response<capsule::proto::audit::v1::ListAuditEventsResponse>, Status> {
    let call = Call::of(&request)?;
    let (mut filter, limit) = audit::filter_of(request.get_ref())?;
    if let Some(project_id) = filter.project_id {
        api.authorize_deleted_too(&call, project_id).await?;
    } else if let Some(organization_id) = filter.organization_id {
        api.member(&call, organization_id).await?;
    }
    audit::restrict_to_caller(&mut filter, &call.caller)?;
    let rows = api.db.run(move |conn| audit::list(conn, &filter, limit + 1)).await?;
    Ok(Response::new(audit::page(&rows, limit, "project")))
}
