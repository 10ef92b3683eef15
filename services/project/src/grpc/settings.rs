//! A project's settings: how it builds, starts and is deployed, the secret
//! its push events are signed with, and the deploy key its ssh://
//! repository is fetched with.

use capsule::{
    proto::project::v1 as pb,
    rpc::{self, FieldViolations},
    schedule::ProcessType,
};
use tonic::{Request, Response, Status};

use crate::{
    convert::settings_proto,
    db::{DeployKey, Settings, SettingsChanges, Variable},
    state::{Call, ProjectServiceApi, project_event},
};

pub(super) async fn get_project_settings(
    api: &ProjectServiceApi,
    request: Request<pb::GetProjectSettingsRequest>,
) -> Result<Response<pb::ProjectSettings>, Status> {
    let call = Call::of(&request)?;
    let id = rpc::require_id("project_id", &request.get_ref().project_id)?;
    api.authorize(&call, id).await?;
    let (settings, variables) = api
        .db
        .run(move |conn| Ok((Settings::get(conn, id)?, Variable::list(conn, id)?)))
        .await?;
    Ok(Response::new(settings_proto(&settings, &api.reveal(id, variables)?)))
}

pub(super) async fn update_project_settings(
    api: &ProjectServiceApi,
    request: Request<pb::UpdateProjectSettingsRequest>,
) -> Result<Response<pb::ProjectSettings>, Status> {
    let call = Call::of(&request)?;
    let body = request.into_inner();
    let wanted = body.settings.unwrap_or_default();
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id("settings.project_id", &wanted.project_id, &mut violations);
    let paths = rpc::mask_paths(
        body.update_mask.as_ref(),
        &[
            "build_command",
            "start_command",
            "release_command",
            "root_directory",
            "branch",
            "auto_deploy",
            "repository_url",
            "health_check_path",
            "build_egress",
            "app_egress",
            "resources",
            "resources.memory_mb",
            "resources.cpu_millis",
            "resources.processes",
            "resources.replicas",
            "process_types",
            "idle_timeout_seconds",
        ],
        &mut violations,
    );
    let resources = wanted.resources.unwrap_or_default();
    let count = |value: u32| Some(i32::try_from(value).unwrap_or(i32::MAX));
    let mut changes = SettingsChanges::default();
    for path in &paths {
        match path.as_str() {
            // The rules in the protos are the whole check of each.
            "build_command" => changes.build_command = Some(wanted.build_command.clone()),
            "start_command" => changes.start_command = Some(wanted.start_command.clone()),
            "release_command" => changes.release_command = Some(wanted.release_command.clone()),
            "root_directory" => changes.root_directory = Some(wanted.root_directory.clone()),
            "branch" => changes.branch = Some(wanted.branch.clone()),
            "auto_deploy" => changes.auto_deploy = Some(wanted.auto_deploy),
            "repository_url" => changes.repository_url = Some(wanted.repository_url.clone()),
            "health_check_path" => changes.health_check_path = Some(wanted.health_check_path.clone()),
            "build_egress" => changes.build_egress = Some(wanted.build_egress),
            "app_egress" => changes.app_egress = Some(wanted.app_egress),
            "resources" => {
                changes.memory_mb = count(resources.memory_mb);
                changes.cpu_millis = count(resources.cpu_millis);
                changes.processes = count(resources.processes);
                changes.replicas = count(resources.replicas);
            }
            "resources.memory_mb" => changes.memory_mb = count(resources.memory_mb),
            "resources.cpu_millis" => changes.cpu_millis = count(resources.cpu_millis),
            "resources.processes" => changes.processes = count(resources.processes),
            "resources.replicas" => changes.replicas = count(resources.replicas),
            "idle_timeout_seconds" => changes.idle_timeout_secs = count(wanted.idle_timeout_seconds),
            "process_types" => {
                let checked = process_types(&wanted.process_types, &mut violations);
                changes.process_types = Some(serde_json::to_value(checked).map_err(rpc::internal)?);
            }
            _ => {}
        }
    }
    if paths.iter().any(|path| path.starts_with("resources")) {
        api.maxima.check(&resources, &mut violations);
    }
    violations.check()?;
    let granted = api.authorize(&call, id).await?;
    let (settings, variables) = api
        .db
        .run(move |conn| Ok((Settings::update(conn, id, &changes)?, Variable::list(conn, id)?)))
        .await?;
    api.audit(project_event(&call, "project.settings.update", &granted.project).detail("fields", paths.join(",")))
        .await;
    Ok(Response::new(settings_proto(&settings, &api.reveal(id, variables)?)))
}

/// A project's workers and cron entries, checked for what the protos'
/// rules cannot say: a schedule croner reads, a time zone IANA knows.
fn process_types(
    wanted: &std::collections::HashMap<String, pb::ProcessType>,
    violations: &mut FieldViolations,
) -> Vec<ProcessType> {
    let checked = capsule::schedule::from_map(wanted);
    for process in &checked {
        let field = |name: &str| format!("settings.process_types[{:?}].{name}", process.name);
        // A worker's time zone is unused, but a name that is none is a
        // mistake either way.
        if let Err(why) = capsule::schedule::zone_of(&process.time_zone) {
            violations.add(field("time_zone"), why);
        } else if !process.schedule.is_empty()
            && let Err(why) = capsule::schedule::Schedule::parse(&process.schedule, &process.time_zone)
        {
            violations.add(field("schedule"), why);
        }
    }
    checked
}

pub(super) async fn rotate_webhook_secret(
    api: &ProjectServiceApi,
    request: Request<pb::RotateWebhookSecretRequest>,
) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
    let call = Call::of(&request)?;
    let id = rpc::require_id("project_id", &request.get_ref().project_id)?;
    let granted = api.authorize(&call, id).await?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| Status::unavailable("no randomness available; retry"))?;
    let secret: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let (text, key_id) = crate::vault::seal_webhook_secret(&api.keys, id, &secret)?;
    api.db
        .run(move |conn| Settings::set_webhook_secret(conn, id, (&text, &key_id), None))
        .await?;
    tracing::info!(project.id = %id, user.id = %call.caller.user_id, "webhook secret rotated");
    api.audit(project_event(&call, "project.webhook_secret.rotate", &granted.project))
        .await;
    Ok(Response::new(pb::RotateWebhookSecretResponse {
        webhook_secret: secret,
    }))
}

pub(super) async fn get_deploy_key(
    api: &ProjectServiceApi,
    request: Request<pb::GetDeployKeyRequest>,
) -> Result<Response<pb::DeployKey>, Status> {
    let call = Call::of(&request)?;
    let id = rpc::require_id("project_id", &request.get_ref().project_id)?;
    api.authorize(&call, id).await?;
    let key = api.db.run(move |conn| DeployKey::find(conn, id)).await?;
    let key = key.ok_or_else(|| {
        Status::not_found("the project has no deploy key: make one with RotateDeployKey (POST …/deployKey:rotate)")
    })?;
    Ok(Response::new(deploy_key_proto(&key)))
}

pub(super) async fn rotate_deploy_key(
    api: &ProjectServiceApi,
    request: Request<pb::RotateDeployKeyRequest>,
) -> Result<Response<pb::DeployKey>, Status> {
    let call = Call::of(&request)?;
    let id = rpc::require_id("project_id", &request.get_ref().project_id)?;
    let granted = api.authorize(&call, id).await?;
    let (public_key, fingerprint, private_key) = new_deploy_key(id)?;
    let (sealed, key_id) = crate::vault::seal_deploy_key(&api.keys, id, &private_key)?;
    let key = DeployKey {
        project_id: id,
        public_key,
        fingerprint,
        private_key: sealed,
        key_id,
        created_at: chrono::Utc::now(),
    };
    let key = api.db.run(move |conn| DeployKey::replace(conn, &key)).await?;
    tracing::info!(project.id = %id, user.id = %call.caller.user_id, "deploy key rotated");
    api.audit(
        project_event(&call, "project.deploy_key.rotate", &granted.project).detail("fingerprint", &key.fingerprint),
    )
    .await;
    Ok(Response::new(deploy_key_proto(&key)))
}

/// A new ed25519 key for project `id`: its public line, fingerprint and
/// private half, all in OpenSSH's formats.
fn new_deploy_key(id: uuid::Uuid) -> Result<(String, String, String), Status> {
    use ssh_key::{HashAlg, LineEnding, PrivateKey, private::Ed25519Keypair};
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|_| Status::unavailable("no randomness available; retry"))?;
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(format!("capsule-{id}"));
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|err| rpc::internal(format_args!("a deploy key's public half: {err}")))?;
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|err| rpc::internal(format_args!("a deploy key's private half: {err}")))?;
    let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
    Ok((public, fingerprint, private.to_string()))
}

fn deploy_key_proto(key: &DeployKey) -> pb::DeployKey {
    pb::DeployKey {
        project_id: key.project_id.to_string(),
        public_key: key.public_key.clone(),
        fingerprint: key.fingerprint.clone(),
        create_time: Some(rpc::timestamp(key.created_at)),
    }
}
