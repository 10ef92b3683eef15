//! The `capsule.gateway.v1.GatewayService` implementation: calls that
//! gather what several services own. Independent calls run concurrently,
//! each with its own deadline; a backend that does not answer leaves its
//! part out and named in `missing`, never a failed call.

use std::time::Duration;

use capsule::{
    auth::Caller,
    proto::{
        admin::v1::{GetDatabaseStatsRequest, database_admin_client::DatabaseAdminClient},
        audit::v1::{ListAuditEventsRequest, ListAuditEventsResponse},
        auth::v1::{GetMeRequest, GetPublicProfileRequest, auth_service_client::AuthServiceClient},
        deploy::v1::{Deployment, ListDeploymentsRequest, deploy_service_client::DeployServiceClient},
        gateway::v1::{self as pb, gateway_service_server::GatewayService},
        project::v1::{
            GetProjectRequest, GetProjectSettingsRequest, ListProjectsRequest,
            project_service_client::ProjectServiceClient,
        },
    },
    rpc::{self, FieldViolations},
};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::backends::Backends;

/// Each backend call of a fan-out gets this long.
const PART_DEADLINE: Duration = Duration::from_secs(2);

/// The gateway's own gRPC API.
#[derive(Clone)]
pub struct GatewayServiceApi {
    backends: Backends,
    /// The edge's keys: a follow stream rechecks its caller with them.
    keys: std::sync::Arc<capsule::auth::KeySet>,
    /// Follow streams open per user.
    streams: std::sync::Arc<capsule::rpc::StreamLimit>,
}

/// A request to a backend on the caller's behalf, with its own deadline.
fn on_behalf<T>(caller: &Caller, message: T) -> Result<Request<T>, Status> {
    caller.request(message, PART_DEADLINE)
}

/// A part that could not be had: the caller's own fault is an error, a
/// backend's trouble is a missing part.
fn missing(part: &str, service: &str, status: &Status) -> Result<pb::MissingPart, Status> {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument => Err(status.clone()),
        _ => Ok(pb::MissingPart {
            part: part.to_owned(),
            service: service.to_owned(),
            reason: format!("{:?}: {}", status.code(), status.message()),
        }),
    }
}

/// One branch of a fan-out: its answer within the deadline, under a span
/// of its own (`part`) when the trace is sampled.
async fn within<T>(part: &'static str, call: impl Future<Output = Result<Response<T>, Status>>) -> Result<T, Status> {
    let span = if capsule::trace::sampled() {
        tracing::debug_span!(target: capsule::trace::TRACE, "fanout", otel.name = part, fanout.part = part)
    } else {
        tracing::Span::none()
    };
    match tokio::time::timeout(PART_DEADLINE, call).instrument(span).await {
        Ok(result) => result.map(Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded("no answer in time")),
    }
}

impl GatewayServiceApi {
    pub fn new(backends: Backends, keys: std::sync::Arc<capsule::auth::KeySet>, max_streams_per_user: u64) -> Self {
        Self {
            backends,
            keys,
            streams: capsule::rpc::StreamLimit::new(max_streams_per_user, "GATEWAY_MAX_STREAMS_PER_USER"),
        }
    }

    fn auth(&self) -> AuthServiceClient<capsule::trace::TracedChannel> {
        AuthServiceClient::new(self.backends.auth.clone())
    }

    fn projects(&self) -> ProjectServiceClient<capsule::trace::TracedChannel> {
        ProjectServiceClient::new(self.backends.project.clone())
    }

    fn deploys(&self) -> DeployServiceClient<capsule::trace::TracedChannel> {
        DeployServiceClient::new(self.backends.deploy.clone())
    }

    async fn latest_deployments(
        &self,
        caller: &Caller,
        project_ids: &[String],
        count: i32,
    ) -> Result<Vec<Vec<Deployment>>, Status> {
        let calls = project_ids.iter().map(|project_id| {
            let mut deploys = self.deploys();
            let request = on_behalf(
                caller,
                ListDeploymentsRequest {
                    project_id: project_id.clone(),
                    page_size: count,
                    ..Default::default()
                },
            );
            async move {
                within("deployments", deploys.list_deployments(request?))
                    .await
                    .map(|page| page.deployments)
            }
        });
        futures::future::join_all(calls).await.into_iter().collect()
    }
}

#[tonic::async_trait]
impl GatewayService for GatewayServiceApi {
    type StreamAuditEventsStream = crate::trail::EventStream;

    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        crate::trail::list(&self.backends, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn stream_audit_events(
        &self,
        request: Request<pb::StreamAuditEventsRequest>,
    ) -> Result<Response<crate::trail::EventStream>, Status> {
        let caller = Caller::of(&request)?.clone();
        let filter = request.into_inner();
        let request = ListAuditEventsRequest {
            organization_id: filter.organization_id,
            project_id: filter.project_id,
            actor_id: filter.actor_id,
            ..Default::default()
        };
        let slot = self.streams.take(caller.user_id)?;
        crate::trail::follow(self.backends.clone(), self.keys.clone(), caller, request, slot)
            .await
            .map(Response::new)
    }

    async fn get_database_stats(
        &self,
        request: Request<pb::GetDatabaseStatsRequest>,
    ) -> Result<Response<pb::GetDatabaseStatsResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let wanted = request.into_inner().service;
        let all = self.backends.all();
        if !wanted.is_empty() && !all.iter().any(|(kind, _)| kind.name() == wanted) {
            return Err(rpc::invalid_field(
                "service",
                "must be auth, project, deploy, or empty for all three",
            ));
        }
        let calls = all
            .into_iter()
            .filter(|(kind, _)| wanted.is_empty() || kind.name() == wanted)
            .map(|(kind, channel)| {
                let mut client = DatabaseAdminClient::new(channel.clone());
                let request = on_behalf(&caller, GetDatabaseStatsRequest {});
                async move {
                    let result = match request {
                        Ok(request) => within(kind.name(), client.get_database_stats(request)).await,
                        Err(status) => Err(status),
                    };
                    (kind.name(), result)
                }
            });
        let mut answer = pb::GetDatabaseStatsResponse::default();
        for (name, result) in futures::future::join_all(calls).await {
            match result {
                Ok(stats) => answer.databases.push(stats),
                Err(status) => answer.missing.push(missing("database", name, &status)?),
            }
        }
        Ok(Response::new(answer))
    }

    async fn get_dashboard(
        &self,
        request: Request<pb::GetDashboardRequest>,
    ) -> Result<Response<pb::Dashboard>, Status> {
        let caller = Caller::of(&request)?.clone();
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        let page_size = rpc::page_size(body.page_size, 20, 100, &mut violations);
        violations.check()?;
        let mut auth = self.auth();
        let mut projects = self.projects();
        let me = on_behalf(&caller, GetMeRequest {})?;
        let list = on_behalf(
            &caller,
            ListProjectsRequest {
                page_size: i32::try_from(page_size).unwrap_or(20),
                page_token: body.page_token,
                show_deleted: false,
                organization_id: String::new(),
            },
        )?;
        let (user, page) = tokio::join!(
            within("user", auth.get_me(me)),
            within("projects", projects.list_projects(list))
        );
        let mut dashboard = pb::Dashboard::default();
        match user {
            Ok(user) => dashboard.user = Some(user),
            Err(status) => dashboard.missing.push(missing("user", "auth", &status)?),
        }
        match page {
            Ok(page) => {
                let ids: Vec<String> = page.projects.iter().map(|p| p.id.clone()).collect();
                let latest = self.latest_deployments(&caller, &ids, 1).await;
                if let Err(status) = &latest {
                    dashboard.missing.push(missing("deployments", "deploy", status)?);
                }
                let mut latest = latest.unwrap_or_default().into_iter();
                dashboard.projects = page
                    .projects
                    .into_iter()
                    .map(|project| pb::ProjectSummary {
                        project: Some(project),
                        latest_deployment: latest.next().and_then(|mut list| list.drain(..).next()),
                    })
                    .collect();
                dashboard.next_page_token = page.next_page_token;
            }
            Err(status) => dashboard.missing.push(missing("projects", "project", &status)?),
        }
        Ok(Response::new(dashboard))
    }

    async fn get_project_overview(
        &self,
        request: Request<pb::GetProjectOverviewRequest>,
    ) -> Result<Response<pb::ProjectOverview>, Status> {
        let caller = Caller::of(&request)?.clone();
        let body = request.into_inner();
        let mut violations = FieldViolations::new();
        rpc::parse_id("project_id", &body.project_id, &mut violations);
        let count = match body.deployment_count {
            0 => 10,
            n @ 1..=50 => n,
            _ => {
                violations.add("deployment_count", "must be between 1 and 50 (0 for 10)");
                10
            }
        };
        violations.check()?;
        let (mut projects, mut settings_client) = (self.projects(), self.projects());
        let get = on_behalf(
            &caller,
            GetProjectRequest {
                project_id: body.project_id.clone(),
            },
        )?;
        let settings = on_behalf(
            &caller,
            GetProjectSettingsRequest {
                project_id: body.project_id.clone(),
            },
        )?;
        let ids = [body.project_id.clone()];
        let (project, settings, deployments) = tokio::join!(
            within("project", projects.get_project(get)),
            within("settings", settings_client.get_project_settings(settings)),
            self.latest_deployments(&caller, &ids, count),
        );
        // The project itself is essential: without it there is no overview.
        let project = project.map_err(|status| match status.code() {
            Code::NotFound | Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument => status,
            _ => Status::unavailable(format!("the project service is unavailable: {}", status.message())),
        })?;
        let mut overview = pb::ProjectOverview::default();
        match settings {
            // Secret values never leave the project service; names stay.
            Ok(settings) => overview.settings = Some(settings),
            Err(status) => overview.missing.push(missing("settings", "project", &status)?),
        }
        match deployments {
            Ok(mut lists) => overview.recent_deployments = lists.pop().unwrap_or_default(),
            Err(status) => overview.missing.push(missing("deployments", "deploy", &status)?),
        }
        // A user's profile; an organisation's project names its owner in
        // `project.organization_id` alone.
        if project.organization_id.is_empty() {
            let owner = on_behalf(
                &caller,
                GetPublicProfileRequest {
                    user_id: project.owner_id.clone(),
                },
            )?;
            match within("owner", self.auth().get_public_profile(owner)).await {
                Ok(profile) => overview.owner = Some(profile),
                Err(status) => overview.missing.push(missing("owner", "auth", &status)?),
            }
        }
        overview.project = Some(project);
        Ok(Response::new(overview))
    }
}
