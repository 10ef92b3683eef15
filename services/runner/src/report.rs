//! The runner's side of the runner API: its token on every call, one
//! deployment's lines and states, and the heartbeat that keeps its claim.

use std::time::Duration;

use capsule::proto::deploy::v1::{
    self as pb, DeploymentState, EgressDestination, EgressPhase, HeartbeatRequest, LogEntry, LogStream,
    ReportReplicaRequest, ReportStatusRequest, deploy_service_client::DeployServiceClient,
};
use capsule::trace::TracedChannel as Channel;
use tokio_util::sync::CancellationToken;
use tonic::{Request, service::interceptor::InterceptedService};

use super::{egress::record::Destination, process::LineSink};

pub(super) type Client = DeployServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds the runner token to every call.
#[derive(Clone)]
pub struct Bearer(pub(super) tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// Writes one deployment's lines and states through the runner API.
#[derive(Clone)]
pub(super) struct Reporter {
    pub(super) client: Client,
    pub(super) deployment_id: String,
    /// A copy of a live deployment: its start and its end are this copy's
    /// (ReportReplica), never the deployment's state.
    pub(super) replica: bool,
    /// The process its lines come from: a worker's name, "run.<id>";
    /// empty for the deployment itself.
    pub(super) process: String,
    /// A run from the deployment's release: its end is the run's
    /// (ReportRun), never the deployment's state.
    pub(super) run: Option<String>,
}

#[tonic::async_trait]
impl LineSink for Reporter {
    async fn lines(&self, lines: Vec<(LogStream, String)>) {
        if lines.is_empty() {
            return;
        }
        let entries = lines
            .into_iter()
            .map(|(stream, text)| LogEntry {
                stream: stream as i32,
                text,
                process: self.process.clone(),
            })
            .collect();
        let sent = self
            .client
            .clone()
            .append_logs(pb::AppendLogsRequest {
                deployment_id: self.deployment_id.clone(),
                runner_id: String::new(),
                entries,
            })
            .await;
        if let Err(status) = sent {
            tracing::debug!(deployment.id = %self.deployment_id, error = %status.message(), "log lines not written");
        }
    }
}

impl Reporter {
    /// The same deployment's reporter for the lines of `process`.
    pub(super) fn of_process(&self, process: &str) -> Self {
        Self {
            process: process.to_owned(),
            ..self.clone()
        }
    }

    pub(super) async fn system(&self, line: String) {
        self.lines(vec![(LogStream::System, line)]).await;
    }

    /// Adds to the deployment's egress record what `phase` asked for.
    pub(super) async fn egress(&self, phase: EgressPhase, record: Vec<((String, u16), Destination)>) {
        let destinations = record
            .into_iter()
            .map(|((host, port), destination)| EgressDestination {
                host,
                port: u32::from(port),
                phase: phase.into(),
                connections: destination.connections,
                bytes_sent: destination.bytes_out,
                bytes_received: destination.bytes_in,
                refusals: destination.refused,
                refusal_reason: destination.why.unwrap_or_default(),
                failures: destination.failed,
                update_time: None,
            })
            .collect();
        let sent = self
            .client
            .clone()
            .report_egress(pb::ReportEgressRequest {
                deployment_id: self.deployment_id.clone(),
                destinations,
            })
            .await;
        if let Err(status) = sent {
            tracing::warn!(deployment.id = %self.deployment_id, error = %status.message(), "egress record not reported");
        }
    }

    pub(super) async fn state(&self, state: DeploymentState, message: String, exit_code: Option<i32>) {
        // A run's or a copy's end is its own, never the deployment's.
        if self.run.is_some() || self.replica {
            let failure = match message.is_empty() {
                true => state.as_str_name().to_owned(),
                false => message,
            };
            return match self.run.is_some() {
                true => self.run_ended(None, failure).await,
                false => self.replica(String::new(), failure).await,
            };
        }
        self.send(ReportStatusRequest {
            state: state as i32,
            status_message: message,
            exit_code,
            ..ReportStatusRequest::default()
        })
        .await;
    }

    /// How the run ended: its exit code, or why it did not start or end.
    pub(super) async fn run_ended(&self, exit_code: Option<i32>, failure: String) {
        let Some(run_id) = self.run.clone() else {
            return;
        };
        let sent = self
            .client
            .clone()
            .report_run(pb::ReportRunRequest {
                run_id,
                exit_code,
                failure,
            })
            .await;
        if let Err(status) = sent {
            tracing::warn!(deployment.id = %self.deployment_id, error = %status.message(), "a run's end not reported");
        }
    }

    /// LIVE, served at `upstream` (a copy: serving there).
    pub(super) async fn live(&self, upstream: String) {
        if self.replica {
            return self.replica(upstream, String::new()).await;
        }
        self.send(ReportStatusRequest {
            state: DeploymentState::Live as i32,
            upstream,
            ..ReportStatusRequest::default()
        })
        .await;
    }

    /// DEPLOYING, with the release the build made, if kept.
    /// Built: the release kept, and the commit as fetched when the deploy
    /// service could not read it.
    pub(super) async fn deploying(&self, artifact_digest: Option<String>, commit: Option<crate::source::Commit>) {
        let commit = commit.unwrap_or_default();
        self.send(ReportStatusRequest {
            state: DeploymentState::Deploying as i32,
            exit_code: Some(0),
            artifact_digest: artifact_digest.unwrap_or_default(),
            commit_sha: commit.sha,
            commit_message: commit.message,
            commit_author: commit.author,
            ..ReportStatusRequest::default()
        })
        .await;
    }

    async fn replica(&self, upstream: String, failure: String) {
        let mut failure = failure;
        if failure.len() > 1024 {
            let mut cut = 1024;
            while !failure.is_char_boundary(cut) {
                cut -= 1;
            }
            failure.truncate(cut);
        }
        let reported = self
            .client
            .clone()
            .report_replica(ReportReplicaRequest {
                deployment_id: self.deployment_id.clone(),
                runner_id: String::new(),
                upstream,
                failure,
            })
            .await;
        if let Err(status) = reported {
            tracing::warn!(deployment.id = %self.deployment_id, error = %status.message(), "could not report the replica");
        }
    }

    /// Sends the archive at `path` to the deploy service as the
    /// deployment's release `digest`, so that any runner can start it.
    pub(super) async fn upload_release(&self, path: std::path::PathBuf, digest: String) -> Result<(), String> {
        use tokio::io::AsyncReadExt;
        let file = tokio::fs::File::open(&path).await.map_err(|err| err.to_string())?;
        let first = Some((self.deployment_id.clone(), digest));
        let chunks = futures::stream::unfold((file, first), |(mut file, first)| async move {
            let mut data = vec![0u8; RELEASE_CHUNK];
            let read = file.read(&mut data).await.ok().filter(|read| *read > 0)?;
            data.truncate(read);
            let (deployment_id, artifact_digest) = first.unwrap_or_default();
            let chunk = pb::UploadReleaseRequest {
                deployment_id,
                artifact_digest,
                data,
            };
            Some((chunk, (file, None)))
        });
        self.client
            .clone()
            .upload_release(chunks)
            .await
            .map(|_| ())
            .map_err(|status| status.message().to_owned())
    }

    /// Receives the deployment's release from the deploy service into
    /// `into`: its digest as sent.
    pub(super) async fn download_release(&self, into: &mut std::fs::File) -> Result<String, String> {
        use std::io::Write;
        let mut chunks = self
            .client
            .clone()
            .download_release(pb::DownloadReleaseRequest {
                deployment_id: self.deployment_id.clone(),
            })
            .await
            .map_err(|status| status.message().to_owned())?
            .into_inner();
        let mut digest = String::new();
        while let Some(chunk) = chunks.message().await.map_err(|status| status.message().to_owned())? {
            if digest.is_empty() {
                digest = chunk.artifact_digest;
            }
            into.write_all(&chunk.data).map_err(|err| err.to_string())?;
        }
        into.flush().map_err(|err| err.to_string())?;
        Ok(digest)
    }

    /// Receives the deployment's uploaded source into `into`, at most
    /// `max_bytes`: the sha256 of what came, as `sha256:<hex>`.
    pub(super) async fn download_source(&self, into: &mut std::fs::File, max_bytes: u64) -> Result<String, String> {
        use sha2::Digest;
        use std::io::Write;
        let mut chunks = self
            .client
            .clone()
            .download_source(pb::DownloadSourceRequest {
                deployment_id: self.deployment_id.clone(),
            })
            .await
            .map_err(|status| status.message().to_owned())?
            .into_inner();
        let (mut hash, mut bytes) = (sha2::Sha256::new(), 0u64);
        while let Some(chunk) = chunks.message().await.map_err(|status| status.message().to_owned())? {
            bytes += chunk.data.len() as u64;
            if bytes > max_bytes {
                return Err(format!("the upload is over {} MiB", max_bytes / (1024 * 1024)));
            }
            hash.update(&chunk.data);
            into.write_all(&chunk.data).map_err(|err| err.to_string())?;
        }
        into.flush().map_err(|err| err.to_string())?;
        Ok(format!("sha256:{:x}", hash.finalize()))
    }

    /// This runner no longer runs its copy of the live deployment (it is
    /// stopping): another may start one at once.
    pub(super) async fn release(&self) {
        let released = self
            .client
            .clone()
            .heartbeat(HeartbeatRequest {
                deployment_id: self.deployment_id.clone(),
                runner_id: String::new(),
                release: true,
            })
            .await;
        if let Err(status) = released {
            tracing::debug!(deployment.id = %self.deployment_id, error = %status.message(), "replica not given up; its lease will run out");
        }
    }

    async fn send(&self, mut report: ReportStatusRequest) {
        report.deployment_id = self.deployment_id.clone();
        let reported = self.client.clone().report_status(report).await;
        if let Err(status) = reported {
            tracing::warn!(deployment.id = %self.deployment_id, error = %status.message(), "could not report the deployment's state");
        }
    }
}

/// The size of each piece of a release sent.
const RELEASE_CHUNK: usize = 256 << 10;

pub(super) async fn heartbeat(reporter: Reporter, stop: CancellationToken, every: Duration) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let beat = reporter
            .client
            .clone()
            .heartbeat(HeartbeatRequest {
                deployment_id: reporter.deployment_id.clone(),
                runner_id: String::new(),
                release: false,
            })
            .await;
        match beat {
            Ok(response) if !response.get_ref().cancel_requested => {}
            // The service is briefly away: the lease outlasts a few beats.
            Err(status) if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => {}
            // Canceled, replaced, or the claim is gone: stop the work.
            _ => {
                stop.cancel();
                return;
            }
        }
    }
}

/// The name the local runner registers under.
pub fn local_name() -> String {
    format!("local:{}", hostname())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "runner".to_owned())
}
