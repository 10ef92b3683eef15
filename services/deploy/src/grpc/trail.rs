//! Reading the deploy service's audit trail (`ListAuditEvents`); the
//! project service says who may read an organisation's or a project's.

use capsule::{
    audit,
    auth::{Caller, Permission},
    proto::audit::v1 as pb,
};
use tonic::{Request, Response, Status};

use super::webhooks::check_scope;
use crate::{state::DeployServiceApi, webhooks::Scope};

pub(super) async fn list_audit_events(
    api: &DeployServiceApi,
    request: Request<pb::ListAuditEventsRequest>,
) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let (mut filter, limit) = audit::filter_of(request.get_ref())?;
    if let Some(project_id) = filter.project_id {
        check_scope(api, &caller, Permission::AuditRead, Scope::Project(project_id)).await?;
    } else if let Some(organization_id) = filter.organization_id {
        check_scope(
            api,
            &caller,
            Permission::AuditRead,
            Scope::Organization(organization_id),
        )
        .await?;
    }
    audit::restrict_to_caller(&mut filter, &caller)?;
    let rows = api
        .inner
        .db
        .run(move |conn| audit::list(conn, &filter, limit + 1))
        .await?;
    Ok(Response::new(audit::page(&rows, limit, "deploy")))
}
