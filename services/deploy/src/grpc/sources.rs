//! Sources uploaded from a user's machine (`capsule up`): the archive is
//! received in pieces, checked against its digest and size limit, kept
//! beside the releases under its digest, and a deployment of it is
//! queued; the runner that claims it downloads it and unpacks it inside
//! the project's sandbox (never on the host).

use capsule::{audit::Actor as AuditActor, auth::Caller, proto::deploy::v1 as pb, rpc::FieldViolations};
use tonic::{Request, Response, Status, Streaming};

use super::{
    deployments::{deployment_event, organization_of},
    releases::{Incoming, digest_hex, held, in_chunks, internal},
};
use crate::{
    convert::deployment_proto,
    state::{DeployServiceApi, SourceStream},
    validate::check_environment,
};

/// How long the uploader may take to send the next piece.
const PIECE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The next piece, if one comes within [`PIECE_TIMEOUT`].
async fn next(pieces: &mut Streaming<pb::UploadSourceRequest>) -> Result<Option<pb::UploadSourceRequest>, Status> {
    tokio::time::timeout(PIECE_TIMEOUT, pieces.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no piece of the upload came for 30 s"))?
}

/// Where the source archive of `hex` is kept.
fn kept(api: &DeployServiceApi, hex: &str) -> std::path::PathBuf {
    api.inner.releases_dir.join(format!("source-{hex}.tar.gz"))
}

pub(super) async fn upload_source(
    api: &DeployServiceApi,
    request: Request<Streaming<pb::UploadSourceRequest>>,
) -> Result<Response<pb::Deployment>, Status> {
    let caller = Caller::of(&request)?.clone();
    let actor = AuditActor::of(&request);
    // Uploads held open count with the caller's other streams.
    let _slot = api.inner.streams.take(caller.user_id)?;
    let mut pieces = request.into_inner();
    let first = next(&mut pieces)
        .await?
        .ok_or_else(|| Status::invalid_argument("an upload starts with a piece naming the project"))?;
    let mut violations = FieldViolations::new();
    let project_id = capsule::rpc::parse_id("project_id", &first.project_id, &mut violations);
    let environment = check_environment(&first.environment, &mut violations);
    let hex = digest_hex(&first.source_digest).map(str::to_owned);
    if hex.is_none() {
        violations.add("source_digest", "must be sha256: and 64 lowercase hex digits");
    }
    violations.check()?;
    let hex = hex.unwrap_or_default();
    // Whether the caller may deploy the project, before a byte is kept.
    let plan = api.prepare(&caller, project_id).await?;
    let organization = organization_of(&plan);
    let max = api.inner.max_upload_bytes;
    let over = format!(
        "the upload is over {} MiB (DEPLOY_MAX_UPLOAD_MB): leave build output and dependencies out (.gitignore)",
        max / (1024 * 1024)
    );
    let mut incoming = Incoming::new(&api.inner.releases_dir, max, over)?;
    let mut data = first.data;
    loop {
        incoming.take(data).await?;
        match next(&mut pieces).await? {
            Some(piece) => data = piece.data,
            None => break,
        }
    }
    let bytes = incoming.bytes;
    let file = incoming.checked(&hex, "source_digest")?;
    let path = kept(api, &hex);
    let fresh = !path.exists();
    let persisted = path.clone();
    tokio::task::spawn_blocking(move || file.persist(persisted))
        .await
        .map_err(internal)?
        .map_err(|err| internal(err.error))?;
    let digest = format!("sha256:{hex}");
    let deployment = match api
        .queue_upload(plan, caller.user_id, environment, digest.clone())
        .await
    {
        Ok(deployment) => deployment,
        Err(refused) => {
            // Nothing will build it (unless another deployment already did).
            if fresh {
                let _ = std::fs::remove_file(&path);
            }
            return Err(refused);
        }
    };
    tracing::info!(deployment.id = %deployment.id, project.id = %project_id, bytes, "deployment of an upload queued");
    api.audit(
        deployment_event(&actor, "deployment.create", &deployment, organization)
            .detail("environment", &deployment.environment)
            .detail("source", "upload")
            .detail("source_digest", &digest)
            .detail("bytes", bytes.to_string()),
    )
    .await;
    Ok(Response::new(deployment_proto(&deployment)))
}

pub(super) async fn download_source(
    api: &DeployServiceApi,
    request: Request<pb::DownloadSourceRequest>,
) -> Result<Response<SourceStream>, Status> {
    let runner = crate::runners::runner_of(&request)?;
    let id = capsule::rpc::require_id("deployment_id", &request.get_ref().deployment_id)?;
    let deployment = held(api, id, &runner).await?;
    let digest = deployment.snapshot().source_digest;
    let file = match digest_hex(&digest).map(|hex| std::fs::File::open(kept(api, hex))) {
        Some(Ok(file)) => file,
        _ => return Err(Status::not_found("the deployment's uploaded source is not kept")),
    };
    Ok(Response::new(Box::pin(in_chunks(file, |data, _| {
        pb::DownloadSourceResponse { data }
    }))))
}
