//! Apps' databases and their backups (`crate::databases`): created, read,
//! backed up, restored, downloaded by the project's admins.

use capsule::{
    audit::{Actor as AuditActor, Event as AuditEvent},
    auth::{Caller, Permission},
    proto::deploy::v1 as pb,
    rpc::{self, FieldViolations},
};
use serde_json::json;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::releases::in_chunks;
use crate::{
    databases::{Reason, path_of},
    db::{
        databases::{self as rows, AppDatabase, Backup},
        webhooks::Event,
    },
    state::DeployServiceApi,
    validate::check_environment,
};

fn database_proto(database: &AppDatabase) -> pb::Database {
    pb::Database {
        id: database.id.to_string(),
        project_id: database.project_id.to_string(),
        environment: database.environment.clone(),
        name: database.name.clone(),
        connection_limit: u32::try_from(database.connection_limit).unwrap_or_default(),
        statement_timeout_seconds: u32::try_from(database.statement_timeout_secs).unwrap_or_default(),
        create_time: Some(rpc::timestamp(database.created_at)),
        next_backup_time: Some(rpc::timestamp(database.next_backup_at)),
    }
}

fn backup_proto(backup: &Backup) -> pb::Backup {
    let reason = match backup.reason.as_str() {
        "scheduled" => pb::BackupReason::Scheduled,
        "release" => pb::BackupReason::Release,
        "manual" => pb::BackupReason::Manual,
        "preview" => pb::BackupReason::Preview,
        _ => pb::BackupReason::Unspecified,
    };
    pb::Backup {
        id: backup.id.to_string(),
        database_id: backup.database_id.to_string(),
        environment: backup.environment.clone(),
        reason: reason as i32,
        size_bytes: u64::try_from(backup.size_bytes).unwrap_or_default(),
        digest: backup.digest.clone(),
        create_time: Some(rpc::timestamp(backup.created_at)),
    }
}

/// The caller, the method's permission checked on the project, and the
/// project's organisation.
async fn authorized<T>(
    api: &DeployServiceApi,
    request: &Request<T>,
    project_id: Uuid,
) -> Result<(Caller, Option<Uuid>), Status> {
    let caller = Caller::of(request)?.clone();
    let permission = Permission::required(request)?;
    let organization = api.check_project(&caller, permission, project_id).await?;
    Ok((caller, organization))
}

/// The environment's database, NOT_FOUND naming it when it has none.
async fn existing(api: &DeployServiceApi, project_id: Uuid, environment: &str) -> Result<AppDatabase, Status> {
    api.databases()
        .find(project_id, environment)
        .await?
        .filter(|database| database.ready_at.is_some())
        .ok_or_else(|| {
            Status::not_found(format!(
                "the {environment} environment has no database (CreateDatabase makes one)"
            ))
        })
}

fn project_and_environment(project_id: &str, environment: &str) -> Result<(Uuid, String), Status> {
    let mut violations = FieldViolations::new();
    let project_id = rpc::parse_id("project_id", project_id, &mut violations);
    let environment = check_environment(environment, &mut violations);
    violations.check()?;
    Ok((project_id, environment))
}

pub(super) async fn create_database(
    api: &DeployServiceApi,
    request: Request<pb::CreateDatabaseRequest>,
) -> Result<Response<pb::Database>, Status> {
    let body = request.get_ref();
    let (project_id, environment) = project_and_environment(&body.project_id, &body.environment)?;
    let (caller, organization) = authorized(api, &request, project_id).await?;
    let database = api
        .databases()
        .create(project_id, &environment, Some(caller.user_id).filter(|id| !id.is_nil()))
        .await?;
    tracing::info!(project.id = %project_id, environment = %environment, database = %database.name, "database created");
    api.audit(
        AuditEvent::new(
            &AuditActor::of(&request),
            "database.create",
            format!("databases/{}", database.id),
        )
        .organization(organization)
        .project(project_id)
        .detail("environment", &environment),
    )
    .await;
    Ok(Response::new(database_proto(&database)))
}

pub(super) async fn get_database(
    api: &DeployServiceApi,
    request: Request<pb::GetDatabaseRequest>,
) -> Result<Response<pb::Database>, Status> {
    let body = request.get_ref();
    let (project_id, environment) = project_and_environment(&body.project_id, &body.environment)?;
    authorized(api, &request, project_id).await?;
    Ok(Response::new(database_proto(
        &existing(api, project_id, &environment).await?,
    )))
}

pub(super) async fn list_backups(
    api: &DeployServiceApi,
    request: Request<pb::ListBackupsRequest>,
) -> Result<Response<pb::ListBackupsResponse>, Status> {
    let body = request.get_ref();
    let (project_id, environment) = project_and_environment(&body.project_id, &body.environment)?;
    authorized(api, &request, project_id).await?;
    let database = existing(api, project_id, &environment).await?;
    let backups = api.db().run(move |conn| rows::backups(conn, database.id)).await?;
    Ok(Response::new(pb::ListBackupsResponse {
        backups: backups.iter().map(backup_proto).collect(),
    }))
}

pub(super) async fn create_backup(
    api: &DeployServiceApi,
    request: Request<pb::CreateBackupRequest>,
) -> Result<Response<pb::Backup>, Status> {
    let body = request.get_ref();
    let (project_id, environment) = project_and_environment(&body.project_id, &body.environment)?;
    authorized(api, &request, project_id).await?;
    let database = existing(api, project_id, &environment).await?;
    let backup = api.databases().backup(&database, Reason::Manual).await?;
    Ok(Response::new(backup_proto(&backup)))
}

/// One of the project's backups, NOT_FOUND otherwise.
async fn backup_of(api: &DeployServiceApi, project_id: Uuid, backup_id: Uuid) -> Result<Backup, Status> {
    api.db()
        .run(move |conn| rows::backup(conn, project_id, backup_id))
        .await?
        .ok_or_else(|| Status::not_found("the project has no such backup"))
}

fn project_and_backup(project_id: &str, backup_id: &str) -> Result<(Uuid, Uuid), Status> {
    let mut violations = FieldViolations::new();
    let project_id = rpc::parse_id("project_id", project_id, &mut violations);
    let backup_id = rpc::parse_id("backup_id", backup_id, &mut violations);
    violations.check()?;
    Ok((project_id, backup_id))
}

pub(super) async fn restore_database(
    api: &DeployServiceApi,
    request: Request<pb::RestoreDatabaseRequest>,
) -> Result<Response<pb::Database>, Status> {
    let body = request.get_ref();
    let (project_id, backup_id) = project_and_backup(&body.project_id, &body.backup_id)?;
    let mut violations = FieldViolations::new();
    let target =
        (!body.target_environment.is_empty()).then(|| check_environment(&body.target_environment, &mut violations));
    violations.check()?;
    let (caller, organization) = authorized(api, &request, project_id).await?;
    let backup = backup_of(api, project_id, backup_id).await?;
    let target = target.unwrap_or_else(|| backup.environment.clone());
    let databases = api.databases();
    let database = match databases.find(project_id, &target).await? {
        Some(database) if database.ready_at.is_some() => database,
        _ => {
            databases
                .create(project_id, &target, Some(caller.user_id).filter(|id| !id.is_nil()))
                .await?
        }
    };
    databases.restore(&backup, &database).await?;
    tracing::info!(project.id = %project_id, backup.id = %backup_id, environment = %target, "backup restored");
    let detail = json!({
        "backup_id": backup_id.to_string(),
        "from_environment": backup.environment,
        "environment": target,
    });
    api.db()
        .run(move |conn| rows::queue_event(conn, project_id, organization, Event::DatabaseRestored, detail))
        .await?;
    api.audit(
        AuditEvent::new(
            &AuditActor::of(&request),
            "database.restore",
            format!("databases/{}", database.id),
        )
        .organization(organization)
        .project(project_id)
        .detail("backup_id", backup_id)
        .detail("environment", &target),
    )
    .await;
    Ok(Response::new(database_proto(&database)))
}

pub(super) async fn download_backup(
    api: &DeployServiceApi,
    request: Request<pb::DownloadBackupRequest>,
) -> Result<Response<crate::state::BackupStream>, Status> {
    let body = request.get_ref();
    let (project_id, backup_id) = project_and_backup(&body.project_id, &body.backup_id)?;
    let (_, organization) = authorized(api, &request, project_id).await?;
    let backup = backup_of(api, project_id, backup_id).await?;
    let path = path_of(&api.databases().config().backups_dir, &backup.digest);
    let file = match path.map(std::fs::File::open) {
        Some(Ok(file)) => file,
        _ => {
            return Err(Status::not_found(
                "the backup's dump is no longer kept on this deploy service",
            ));
        }
    };
    api.audit(
        AuditEvent::new(
            &AuditActor::of(&request),
            "backup.download",
            format!("backups/{backup_id}"),
        )
        .organization(organization)
        .project(project_id),
    )
    .await;
    let digest = backup.digest;
    let stream = in_chunks(file, move |data, first| pb::DownloadBackupResponse {
        digest: if first { digest.clone() } else { String::new() },
        data,
    });
    Ok(Response::new(Box::pin(stream)))
}
