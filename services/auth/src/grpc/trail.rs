//! Reading the auth service's audit trail (`ListAuditEvents`): accounts'
//! events, which belong to no organisation or project; a user reads their
//! own (admins: anyone's).

use capsule::{audit, auth::Caller, proto::audit::v1 as pb};
use tonic::{Request, Response, Status};

use crate::state::AuthServiceApi;

pub(super) async fn list_audit_events(
    api: &AuthServiceApi,
    request: Request<pb::ListAuditEventsRequest>,
) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let (mut filter, limit) = audit::filter_of(request.get_ref())?;
    if filter.organization_id.is_some() || filter.project_id.is_some() {
        // An organisation's or a project's trail is kept by the services
        // that own them; none of it is here.
        return Ok(Response::new(pb::ListAuditEventsResponse::default()));
    }
    audit::restrict_to_caller(&mut filter, &caller)?;
    let rows = api
        .inner
        .db
        .run(move |conn| audit::list(conn, &filter, limit + 1))
        .await?;
    Ok(Response::new(audit::page(&rows, limit, "auth")))
}
