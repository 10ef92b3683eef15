//! One request, one trace: the mesh exports its spans over OTLP to a
//! receiver started here (the collector's trace service, from
//! opentelemetry-proto), and the spans of a call through the gateway form
//! the tree of what it did.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use capsule::config::ServiceKind;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
    trace::v1::{Span, span::SpanKind},
};
use reqwest::StatusCode;
use serde_json::Value;

/// What the receiver was sent, span by span.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("not poisoned");
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> (Self, std::net::SocketAddr) {
        let receiver = Self::default();
        let listener = capsule::testing::free_listener().await;
        let addr = listener.local_addr().expect("bound");
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        (receiver, addr)
    }

    /// The spans of `trace_id` once `done` holds for them (the exporter
    /// sends every 100 ms here).
    async fn trace(&self, trace_id: &str, done: impl Fn(&Trace) -> bool) -> Trace {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let trace = Trace(
                self.spans
                    .lock()
                    .expect("not poisoned")
                    .iter()
                    .filter(|span| hex(&span.trace_id) == trace_id)
                    .cloned()
                    .collect(),
            );
            if done(&trace) {
                return trace;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the trace never completed; it has:\n{trace}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|value| match value {
            AnyValue::StringValue(text) => text.clone(),
            AnyValue::IntValue(number) => number.to_string(),
            other => format!("{other:?}"),
        })
}

struct Trace(Vec<Span>);

impl Trace {
    fn children<'a>(&'a self, parent: &Span) -> impl Iterator<Item = &'a Span> {
        let parent = parent.span_id.clone();
        self.0.iter().filter(move |span| span.parent_span_id == parent)
    }

    /// The one child of `parent` named `name` of `kind`.
    fn child<'a>(&'a self, parent: &Span, name: &str, kind: SpanKind) -> &'a Span {
        let found: Vec<&Span> = self
            .children(parent)
            .filter(|span| span.name == name && span.kind == kind as i32)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {kind:?} span {name} under {}:\n{self}",
            parent.name
        );
        found[0]
    }

    /// The statements run under `parent`, directly or through pool waits.
    fn statements(&self, parent: &Span) -> Vec<String> {
        self.children(parent)
            .filter(|span| span.kind == SpanKind::Client as i32 && attribute(span, "db.system.name").is_some())
            .map(|span| attribute(span, "db.query.text").unwrap_or_default())
            .collect()
    }

    fn has(&self, name: &str, kind: SpanKind) -> bool {
        self.0.iter().any(|span| span.name == name && span.kind == kind as i32)
    }
}

impl std::fmt::Display for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: HashMap<&[u8], &str> = self.0.iter().map(|s| (s.span_id.as_slice(), s.name.as_str())).collect();
        for span in &self.0 {
            let parent = names.get(span.parent_span_id.as_slice()).copied().unwrap_or("-");
            writeln!(f, "  {} (kind {}) under {parent}", span.name, span.kind)?;
        }
        Ok(())
    }
}

const PROJECT: &str = "capsule.project.v1.ProjectService";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_through_the_gateway_is_one_trace() {
    let (receiver, collector) = Receiver::start().await;
    let endpoint = format!("http://{collector}");
    let telemetry = capsule::telemetry::init(
        &move |name: &str| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
            "OTEL_BSP_SCHEDULE_DELAY" => Some("100".to_owned()),
            _ => None,
        },
        "capsule-test",
    )
    .expect("valid settings");
    assert!(capsule::trace::enabled(), "tracing is on");
    // Unbatched: under load two calls' statements may run as one, in the
    // trace of the call that led the batch.
    let mesh = common::start_with(common::Options {
        unbatched: true,
        ..Default::default()
    })
    .await;
    let (token, _) = mesh.user("traced@example.com").await;
    let project_id = common::deploy::project(&mesh, &token, "", &[("API_KEY", "s3cret", true)]).await;

    // A caller's trace that is not sampled is recorded nowhere (the
    // default sampler follows the caller); checked once the others arrive.
    let unsampled = "6e0c63257de34c926f9efcd03927272e";
    let answer = reqwest::Client::new()
        .get(format!("http://{}/v1/projects/{project_id}/overview", mesh.http))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{unsampled}-00f067aa0ba902b8-00"))
        .send()
        .await
        .expect("the overview answers");
    assert_eq!(answer.status(), StatusCode::OK);

    // The caller's own trace, continued: its id throughout, its span the
    // parent of the gateway's.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let http = reqwest::Client::new();
    let response = http
        .get(format!("http://{}/v1/projects/{project_id}/overview", mesh.http))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(response.status(), StatusCode::OK);

    let calls = [
        ("project", format!("{PROJECT}/GetProject")),
        ("settings", format!("{PROJECT}/GetProjectSettings")),
        (
            "deployments",
            "capsule.deploy.v1.DeployService/ListDeployments".to_owned(),
        ),
        ("owner", "capsule.auth.v1.AuthService/GetPublicProfile".to_owned()),
    ];
    let trace = receiver
        .trace(trace_id, |trace| {
            // Every server span of a backend and its statements have come in.
            calls.iter().all(|(_, method)| trace.has(method, SpanKind::Server))
                && trace
                    .0
                    .iter()
                    .filter(|s| attribute(s, "db.system.name").is_some())
                    .count()
                    >= 4
        })
        .await;
    let roots: Vec<&Span> = trace
        .0
        .iter()
        .filter(|span| hex(&span.parent_span_id) == caller_span)
        .collect();
    assert_eq!(roots.len(), 1, "one span continues the caller's:\n{trace}");
    let edge = roots[0];
    assert_eq!(edge.name, "GET /v1/projects/{project_id}/overview", "{trace}");
    assert_eq!(edge.kind, SpanKind::Server as i32);
    assert_eq!(attribute(edge, "http.response.status_code").as_deref(), Some("200"));

    let overview = "capsule.gateway.v1.GatewayService/GetProjectOverview";
    let bridged = trace.child(edge, overview, SpanKind::Client);
    let fan_out = trace.child(bridged, overview, SpanKind::Server);
    assert_eq!(attribute(fan_out, "rpc.grpc.status_code").as_deref(), Some("0"));
    for (part, method) in &calls {
        let branch = trace.child(fan_out, part, SpanKind::Internal);
        let client = trace.child(branch, method, SpanKind::Client);
        let server = trace.child(client, method, SpanKind::Server);
        assert_eq!(
            attribute(server, "rpc.grpc.status_code").as_deref(),
            Some("0"),
            "{method}"
        );
        let statements = trace.statements(server);
        assert!(
            statements.iter().any(|sql| sql.starts_with("SELECT")),
            "{method} ran its statements under its span: {statements:?}\n{trace}"
        );
        assert!(
            statements
                .iter()
                .all(|sql| !sql.contains("s3cret") && !sql.contains("binds")),
            "statement text only, never bound values: {statements:?}"
        );
    }

    // An error answer names the trace, for a client to quote.
    let missing = http
        .get(format!(
            "http://{}/v1/projects/{}/overview",
            mesh.http,
            uuid::Uuid::new_v4()
        ))
        .bearer_auth(&token)
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.expect("a JSON error");
    let info = body["details"]
        .as_array()
        .and_then(|details| {
            details
                .iter()
                .find(|detail| detail["@type"] == "type.googleapis.com/google.rpc.RequestInfo")
        })
        .unwrap_or_else(|| panic!("a RequestInfo detail: {body}"));
    assert_eq!(
        info["servingData"], "trace_id=0af7651916cd43dd8448eb211c80319c",
        "{body}"
    );

    // The gateway's gRPC door continues a caller's trace as well.
    let grpc_trace = "5b8aa5a2d2c872e8321cf37308d69df2";
    let mut request = tonic::Request::new(capsule::proto::gateway::v1::GetProjectOverviewRequest {
        project_id: project_id.clone(),
        deployment_count: 1,
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{grpc_trace}-051581bf3cb55c13-01").parse().expect("ascii"),
    );
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    capsule::proto::gateway::v1::gateway_service_client::GatewayServiceClient::new(
        capsule::testing::channel(mesh.addr(ServiceKind::Gateway)).await,
    )
    .get_project_overview(request)
    .await
    .expect("the overview over gRPC");
    // The door's span ends last: wait for it, not for the first of its
    // children to arrive.
    let continues = |span: &&Span| hex(&span.parent_span_id) == "051581bf3cb55c13";
    let trace = receiver
        .trace(grpc_trace, |trace| trace.0.iter().any(|span| continues(&span)))
        .await;
    let door = trace
        .0
        .iter()
        .find(continues)
        .unwrap_or_else(|| panic!("a span continues the gRPC caller's:\n{trace}"));
    assert_eq!(door.name, overview);
    assert_eq!(door.kind, SpanKind::Server as i32);

    let recorded = receiver.trace(unsampled, |_| true).await;
    assert!(recorded.0.is_empty(), "an unsampled trace was exported:\n{recorded}");

    mesh.stop().await;
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("the exporter stops");
}
