//! Deployments' egress records (reported by runners, read by users) and
//! clearing a project's build caches.

use capsule::{
    audit::{Actor as AuditActor, Event},
    auth::{Caller, Permission},
    proto::deploy::v1 as pb,
    rpc::{self, FieldViolations},
};
use tonic::{Request, Response, Status};

use crate::{
    db::{
        Refusal,
        egress::{self, EgressRow},
    },
    lifecycle::State,
    runners::runner_of,
    state::{DeployServiceApi, refusal},
};

pub(super) async fn get_egress_record(
    api: &DeployServiceApi,
    request: Request<pb::GetEgressRecordRequest>,
) -> Result<Response<pb::EgressRecord>, Status> {
    let caller = Caller::of(&request)?;
    let permission = Permission::required(&request)?;
    let id = rpc::require_id("deployment_id", &request.get_ref().deployment_id)?;
    api.authorize(caller, permission, id).await?;
    let rows = api.inner.db.run(move |conn| egress::egress_of(conn, id)).await?;
    Ok(Response::new(pb::EgressRecord {
        deployment_id: id.to_string(),
        destinations: rows.into_iter().map(destination_proto).collect(),
    }))
}

pub(super) async fn report_egress(
    api: &DeployServiceApi,
    request: Request<pb::ReportEgressRequest>,
) -> Result<Response<pb::ReportEgressResponse>, Status> {
    let runner = runner_of(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id("deployment_id", &body.deployment_id, &mut violations);
    if body.destinations.len() > egress::MAX_DESTINATIONS {
        violations.add(
            "destinations",
            format!("at most {} per report", egress::MAX_DESTINATIONS),
        );
    }
    let mut rows = Vec::with_capacity(body.destinations.len());
    for (index, destination) in body.destinations.into_iter().enumerate() {
        match row_of(destination) {
            Ok(row) => rows.push(row),
            Err((field, why)) => violations.add(format!("destinations[{index}].{field}"), why),
        }
    }
    violations.check()?;
    let taken = api
        .inner
        .db
        .run(move |conn| egress::add_egress(conn, id, &runner, rows))
        .await?;
    if !taken {
        return Err(refusal(Refusal::NotYourClaim, State::Building));
    }
    Ok(Response::new(pb::ReportEgressResponse {}))
}

pub(super) async fn clear_build_cache(
    api: &DeployServiceApi,
    request: Request<pb::ClearBuildCacheRequest>,
) -> Result<Response<pb::ClearBuildCacheResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let permission = Permission::required(&request)?;
    let actor = AuditActor::of(&request);
    let project_id = rpc::require_id("project_id", &request.get_ref().project_id)?;
    let organization = api.check_project(&caller, permission, project_id).await?;
    let generation = api
        .inner
        .db
        .run(move |conn| egress::clear_caches(conn, project_id))
        .await?;
    tracing::info!(project.id = %project_id, user.id = %caller.user_id, generation, "build caches cleared");
    api.audit(
        Event::new(&actor, "project.build_cache.clear", format!("projects/{project_id}"))
            .organization(organization)
            .project(project_id)
            .detail("generation", generation.to_string()),
    )
    .await;
    Ok(Response::new(pb::ClearBuildCacheResponse {
        generation: u64::try_from(generation).unwrap_or_default(),
    }))
}

fn destination_proto(row: EgressRow) -> pb::EgressDestination {
    let count = |value: i64| u64::try_from(value).unwrap_or_default();
    pb::EgressDestination {
        phase: match row.phase.as_str() {
            "app" => pb::EgressPhase::App,
            _ => pb::EgressPhase::Build,
        }
        .into(),
        host: row.host,
        port: u32::try_from(row.port).unwrap_or_default(),
        connections: count(row.connections),
        bytes_sent: count(row.bytes_sent),
        bytes_received: count(row.bytes_received),
        refusals: count(row.refusals),
        refusal_reason: row.refusal_reason,
        failures: count(row.failures),
        update_time: Some(rpc::timestamp(row.updated_at)),
    }
}

/// A reported destination as a row (its deployment set by the caller), or
/// the field that is wrong and why.
fn row_of(destination: pb::EgressDestination) -> Result<EgressRow, (&'static str, String)> {
    let phase = match pb::EgressPhase::try_from(destination.phase) {
        Ok(pb::EgressPhase::Build) => "build",
        Ok(pb::EgressPhase::App) => "app",
        _ => return Err(("phase", "must be EGRESS_PHASE_BUILD or EGRESS_PHASE_APP".to_owned())),
    };
    if destination.host.is_empty() || destination.host.len() > 256 || destination.host.chars().any(char::is_control) {
        return Err((
            "host",
            "must be 1 to 256 characters, none of them control characters".to_owned(),
        ));
    }
    let port = i32::try_from(destination.port)
        .ok()
        .filter(|port| *port <= 65535)
        .ok_or(("port", "must be at most 65535".to_owned()))?;
    if destination.refusal_reason.len() > 512 || destination.refusal_reason.chars().any(char::is_control) {
        return Err((
            "refusal_reason",
            "must be at most 512 bytes, without control characters".to_owned(),
        ));
    }
    // Counts past i64 are no report a runner makes.
    let count = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    Ok(EgressRow {
        deployment_id: uuid::Uuid::nil(),
        phase: phase.to_owned(),
        host: destination.host,
        port,
        connections: count(destination.connections),
        bytes_sent: count(destination.bytes_sent),
        bytes_received: count(destination.bytes_received),
        refusals: count(destination.refusals),
        refusal_reason: destination.refusal_reason,
        failures: count(destination.failures),
        updated_at: chrono::Utc::now(),
    })
}
