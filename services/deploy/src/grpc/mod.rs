//! The `capsule.deploy.v1.DeployService` implementation: one line per
//! RPC, handing it to the module of its resource. Each handler parses its
//! request (ids once, with `rpc::require_id`), authorises it through
//! [`crate::state`] (which asks the project service, [`crate::projects`]),
//! calls the database (`crate::db`) and converts the rows
//! (`crate::convert`).

mod databases;
mod deployments;
mod domains;
mod egress;
mod logs;
mod push;
mod releases;
mod routes;
mod runners;
mod runs;
mod sources;
mod trail;
mod webhooks;

use capsule::proto::deploy::v1::{self as pb, deploy_service_server::DeployService};
use tonic::{Request, Response, Status};

use crate::state::{DeployServiceApi, LogStream, RouteStream};

#[tonic::async_trait]
impl DeployService for DeployServiceApi {
    type StreamLogsStream = LogStream;
    type WatchRoutesStream = RouteStream;
    type DownloadReleaseStream = crate::state::ReleaseStream;
    type DownloadSourceStream = crate::state::SourceStream;
    type RunCommandStream = runs::RunStream;
    type DownloadBackupStream = crate::state::BackupStream;

    async fn create_database(
        &self,
        request: Request<pb::CreateDatabaseRequest>,
    ) -> Result<Response<pb::Database>, Status> {
        databases::create_database(self, request).await
    }

    async fn get_database(&self, request: Request<pb::GetDatabaseRequest>) -> Result<Response<pb::Database>, Status> {
        databases::get_database(self, request).await
    }

    async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        databases::list_backups(self, request).await
    }

    async fn create_backup(&self, request: Request<pb::CreateBackupRequest>) -> Result<Response<pb::Backup>, Status> {
        databases::create_backup(self, request).await
    }

    async fn restore_database(
        &self,
        request: Request<pb::RestoreDatabaseRequest>,
    ) -> Result<Response<pb::Database>, Status> {
        databases::restore_database(self, request).await
    }

    async fn download_backup(
        &self,
        request: Request<pb::DownloadBackupRequest>,
    ) -> Result<Response<Self::DownloadBackupStream>, Status> {
        databases::download_backup(self, request).await
    }

    async fn add_domain(&self, request: Request<pb::AddDomainRequest>) -> Result<Response<pb::Domain>, Status> {
        domains::add_domain(self, request).await
    }

    async fn list_domains(
        &self,
        request: Request<pb::ListDomainsRequest>,
    ) -> Result<Response<pb::ListDomainsResponse>, Status> {
        domains::list_domains(self, request).await
    }

    async fn remove_domain(
        &self,
        request: Request<pb::RemoveDomainRequest>,
    ) -> Result<Response<pb::RemoveDomainResponse>, Status> {
        domains::remove_domain(self, request).await
    }

    async fn run_command(&self, request: Request<pb::RunCommandRequest>) -> Result<Response<runs::RunStream>, Status> {
        runs::run_command(self, request).await
    }

    async fn list_runs(&self, request: Request<pb::ListRunsRequest>) -> Result<Response<pb::ListRunsResponse>, Status> {
        runs::list_runs(self, request).await
    }

    async fn report_run(
        &self,
        request: Request<pb::ReportRunRequest>,
    ) -> Result<Response<pb::ReportRunResponse>, Status> {
        runs::report_run(self, request).await
    }

    async fn create_deployment(
        &self,
        request: Request<pb::CreateDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        deployments::create_deployment(self, request).await
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        deployments::get_deployment(self, request).await
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        deployments::list_deployments(self, request).await
    }

    async fn cancel_deployment(
        &self,
        request: Request<pb::CancelDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        deployments::cancel_deployment(self, request).await
    }

    async fn rollback_deployment(
        &self,
        request: Request<pb::RollbackDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        deployments::rollback_deployment(self, request).await
    }

    async fn get_logs(&self, request: Request<pb::GetLogsRequest>) -> Result<Response<pb::GetLogsResponse>, Status> {
        logs::get_logs(self, request).await
    }

    async fn stream_logs(&self, request: Request<pb::StreamLogsRequest>) -> Result<Response<LogStream>, Status> {
        logs::stream_logs(self, request).await
    }

    async fn claim_deployment(
        &self,
        request: Request<pb::ClaimDeploymentRequest>,
    ) -> Result<Response<pb::ClaimDeploymentResponse>, Status> {
        runners::claim_deployment(self, request).await
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        runners::heartbeat(self, request).await
    }

    async fn report_status(
        &self,
        request: Request<pb::ReportStatusRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        runners::report_status(self, request).await
    }

    async fn upload_release(
        &self,
        request: Request<tonic::Streaming<pb::UploadReleaseRequest>>,
    ) -> Result<Response<pb::UploadReleaseResponse>, Status> {
        releases::upload_release(self, request).await
    }

    async fn download_release(
        &self,
        request: Request<pb::DownloadReleaseRequest>,
    ) -> Result<Response<Self::DownloadReleaseStream>, Status> {
        releases::download_release(self, request).await
    }

    async fn upload_source(
        &self,
        request: Request<tonic::Streaming<pb::UploadSourceRequest>>,
    ) -> Result<Response<pb::Deployment>, Status> {
        sources::upload_source(self, request).await
    }

    async fn download_source(
        &self,
        request: Request<pb::DownloadSourceRequest>,
    ) -> Result<Response<Self::DownloadSourceStream>, Status> {
        sources::download_source(self, request).await
    }

    async fn report_replica(
        &self,
        request: Request<pb::ReportReplicaRequest>,
    ) -> Result<Response<pb::ReportReplicaResponse>, Status> {
        runners::report_replica(self, request).await
    }

    async fn append_logs(
        &self,
        request: Request<pb::AppendLogsRequest>,
    ) -> Result<Response<pb::AppendLogsResponse>, Status> {
        runners::append_logs(self, request).await
    }

    async fn report_egress(
        &self,
        request: Request<pb::ReportEgressRequest>,
    ) -> Result<Response<pb::ReportEgressResponse>, Status> {
        egress::report_egress(self, request).await
    }

    async fn get_egress_record(
        &self,
        request: Request<pb::GetEgressRecordRequest>,
    ) -> Result<Response<pb::EgressRecord>, Status> {
        egress::get_egress_record(self, request).await
    }

    async fn clear_build_cache(
        &self,
        request: Request<pb::ClearBuildCacheRequest>,
    ) -> Result<Response<pb::ClearBuildCacheResponse>, Status> {
        egress::clear_build_cache(self, request).await
    }

    async fn watch_routes(&self, _request: Request<pb::WatchRoutesRequest>) -> Result<Response<RouteStream>, Status> {
        routes::watch_routes(self, _request).await
    }

    async fn receive_git_push(
        &self,
        request: Request<pb::ReceiveGitPushRequest>,
    ) -> Result<Response<pb::ReceiveGitPushResponse>, Status> {
        push::receive_git_push(self, request).await
    }

    async fn create_runner(
        &self,
        request: Request<pb::CreateRunnerRequest>,
    ) -> Result<Response<pb::CreateRunnerResponse>, Status> {
        runners::create_runner(self, request).await
    }

    async fn list_runners(
        &self,
        request: Request<pb::ListRunnersRequest>,
    ) -> Result<Response<pb::ListRunnersResponse>, Status> {
        runners::list_runners(self, request).await
    }

    async fn delete_runner(
        &self,
        request: Request<pb::DeleteRunnerRequest>,
    ) -> Result<Response<pb::DeleteRunnerResponse>, Status> {
        runners::delete_runner(self, request).await
    }

    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::CreateWebhookResponse>, Status> {
        webhooks::create_webhook(self, request).await
    }

    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        webhooks::list_webhooks(self, request).await
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        webhooks::delete_webhook(self, request).await
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        webhooks::list_webhook_deliveries(self, request).await
    }

    async fn redeliver_webhook_delivery(
        &self,
        request: Request<pb::RedeliverWebhookDeliveryRequest>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        webhooks::redeliver_webhook_delivery(self, request).await
    }

    async fn list_audit_events(
        &self,
        request: Request<capsule::proto::audit::v1::ListAuditEventsRequest>,
    ) -> Result<Response<capsule::proto::audit::v1::ListAuditEventsResponse>, Status> {
        trail::list_audit_events(self, request).await
    }
}
