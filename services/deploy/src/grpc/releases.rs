//! Releases kept where every runner can reach them: the builder uploads
//! the archive its build made, and a runner that starts a copy (or a
//! rollback) without it downloads it. Files are named by their digest,
//! which the uploaded bytes must have; only a runner that holds the
//! deployment, or runs a copy of it, sends or receives one.

use std::io::Write;

use capsule::{
    proto::deploy::v1 as pb,
    rpc::{self, FieldViolations},
};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    db::{self, Deployment},
    lifecycle::State,
    runners::runner_of,
    state::{DeployServiceApi, ReleaseStream, refusal},
};

/// The largest archive kept.
const MAX_BYTES: u64 = 4 << 30;
/// The size of each chunk sent.
const CHUNK: usize = 256 << 10;

pub(super) async fn upload_release(
    api: &DeployServiceApi,
    request: Request<Streaming<pb::UploadReleaseRequest>>,
) -> Result<Response<pb::UploadReleaseResponse>, Status> {
    let runner = runner_of(&request)?;
    let mut chunks = request.into_inner();
    let first = chunks
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("an upload starts with a chunk naming the deployment"))?;
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id("deployment_id", &first.deployment_id, &mut violations);
    let hex = digest_hex(&first.artifact_digest);
    if hex.is_none() {
        violations.add("artifact_digest", "must be sha256: and 64 lowercase hex digits");
    }
    violations.check()?;
    let hex = hex.unwrap_or_default().to_owned();
    held(api, id, &runner).await?;
    let dir = api.inner.releases_dir.clone();
    let mut incoming = Incoming::new(&dir, MAX_BYTES, "the release is over 4 GiB".to_owned())?;
    let mut data = first.data;
    loop {
        incoming.take(data).await?;
        match chunks.message().await? {
            Some(chunk) => data = chunk.data,
            None => break,
        }
    }
    let file = incoming.checked(&hex, "artifact_digest")?;
    file.persist(dir.join(format!("{hex}.tar.zst")))
        .map_err(|err| internal(err.error))?;
    Ok(Response::new(pb::UploadReleaseResponse {}))
}

/// An archive being received: into a temporary file beside the kept
/// ones, hashed, at most `max` bytes.
pub(super) struct Incoming {
    file: Option<tempfile::NamedTempFile>,
    hash: Sha256,
    pub bytes: u64,
    max: u64,
    over: String,
}

impl Incoming {
    /// `over`: what an archive past `max` is refused with.
    pub(super) fn new(dir: &std::path::Path, max: u64, over: String) -> Result<Self, Status> {
        std::fs::create_dir_all(dir).map_err(internal)?;
        Ok(Self {
            file: Some(tempfile::NamedTempFile::new_in(dir).map_err(internal)?),
            hash: Sha256::new(),
            bytes: 0,
            max,
            over,
        })
    }

    /// Writes the next piece, off the runtime's workers.
    pub(super) async fn take(&mut self, data: Vec<u8>) -> Result<(), Status> {
        self.bytes += data.len() as u64;
        if self.bytes > self.max {
            return Err(Status::resource_exhausted(self.over.clone()));
        }
        self.hash.update(&data);
        let mut file = self
            .file
            .take()
            .ok_or_else(|| internal("an archive written after a failure"))?;
        let file = tokio::task::spawn_blocking(move || file.write_all(&data).map(|()| file))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        self.file = Some(file);
        Ok(())
    }

    /// The file, when its bytes have the digest `hex` (else the `field`
    /// that named it is refused).
    pub(super) fn checked(self, hex: &str, field: &str) -> Result<tempfile::NamedTempFile, Status> {
        if hex::encode(self.hash.finalize()) != hex {
            return Err(rpc::invalid_field(field, "the uploaded bytes do not have this digest"));
        }
        self.file.ok_or_else(|| internal("an archive written after a failure"))
    }
}

pub(super) async fn download_release(
    api: &DeployServiceApi,
    request: Request<pb::DownloadReleaseRequest>,
) -> Result<Response<ReleaseStream>, Status> {
    let runner = runner_of(&request)?;
    let id = rpc::require_id("deployment_id", &request.get_ref().deployment_id)?;
    // A runner that makes a run of it fetches it too.
    let claimer = runner.clone();
    let deployment = match api
        .db()
        .run(move |conn| db::runs::release_of_run(conn, id, &claimer))
        .await?
    {
        Some(deployment) => deployment,
        None => held(api, id, &runner).await?,
    };
    let digest = deployment.artifact_digest.unwrap_or_default();
    let path = digest_hex(&digest).map(|hex| api.inner.releases_dir.join(format!("{hex}.tar.zst")));
    let file = match path.map(std::fs::File::open) {
        Some(Ok(file)) => file,
        _ => return Err(Status::not_found("the deployment's release is not kept")),
    };
    let stream = in_chunks(file, move |data, first| pb::DownloadReleaseResponse {
        artifact_digest: if first { digest.clone() } else { String::new() },
        data,
    });
    Ok(Response::new(Box::pin(stream)))
}

/// `file` as a stream of chunks, each made by `piece` (its bytes, and
/// whether it is the first).
pub(super) fn in_chunks<T: Send + 'static>(
    file: std::fs::File,
    piece: impl Fn(Vec<u8>, bool) -> T + Send + 'static,
) -> tokio_stream::wrappers::ReceiverStream<Result<T, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = file;
        let mut first = true;
        loop {
            let mut data = vec![0u8; CHUNK];
            let read = match file.read(&mut data) {
                Ok(0) => return,
                Ok(read) => read,
                Err(err) => {
                    let _ = tx.blocking_send(Err(internal(err)));
                    return;
                }
            };
            data.truncate(read);
            if tx.blocking_send(Ok(piece(data, first))).is_err() {
                return;
            }
            first = false;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The deployment `runner` holds or runs a copy of.
pub(super) async fn held(api: &DeployServiceApi, id: uuid::Uuid, runner: &str) -> Result<Deployment, Status> {
    let runner = runner.to_owned();
    api.inner
        .db
        .run(move |conn| db::holds(conn, id, &runner))
        .await?
        .ok_or_else(|| refusal(db::Refusal::NotYourClaim, State::Building))
}

pub(super) fn digest_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

pub(super) fn internal(err: impl std::fmt::Display) -> Status {
    tracing::error!(error = %err, "cannot keep or read a release");
    Status::internal("the release store is not available")
}
