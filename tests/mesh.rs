//! The whole mesh in one process, on free ports, against real PostgreSQL:
//! every service serves health, reflection (v1 and v1alpha) and metrics, and
//! its health follows its database.

#![expect(clippy::unwrap_used, reason = "a test helper that fails should panic")]

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use capsule::{
    config::{Mesh, ServiceKind},
    testing::{self, TestDatabase},
};
use diesel::RunQueryDsl;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

mod common;

use common::{NOT_SERVING, SERVING};

/// One HTTP/1.1 GET; returns the status code and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The services a server lists through reflection `$version`.
macro_rules! list_services {
    ($version:ident, $addr:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut client = ServerReflectionClient::new(testing::channel($addr).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        let response = stream.message().await.unwrap().unwrap();
        match response.message_response.unwrap() {
            MessageResponse::ListServicesResponse(list) => {
                list.service.into_iter().map(|s| s.name).collect::<BTreeSet<String>>()
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_health_reflection_and_metrics_then_stops_cleanly() {
    let mesh = common::start().await;

    for (kind, addr) in &mesh.addrs {
        testing::wait_for_health(*addr, "", SERVING, Duration::from_secs(1)).await;

        let mut expected: BTreeSet<String> = [
            kind.grpc_service_name(),
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        if *kind == ServiceKind::Gateway {
            // The front door lists every service it routes to.
            expected.extend(ServiceKind::ALL.iter().map(|k| k.grpc_service_name().to_owned()));
        } else {
            // Every service with a database tells about it.
            expected.insert("capsule.admin.v1.DatabaseAdmin".to_owned());
        }
        assert_eq!(list_services!(v1, *addr), expected, "{kind} via reflection v1");
        assert_eq!(
            list_services!(v1alpha, *addr),
            expected,
            "{kind} via reflection v1alpha"
        );

        let (status, body) = http_get(*addr, "/metrics").await;
        assert_eq!(status, 200, "{kind} /metrics");
        assert!(
            body.contains(&format!("grpc_server_requests_total{{service=\"{kind}\"")),
            "{kind} /metrics lacks request counts:\n{body}"
        );
        if *kind != ServiceKind::Gateway {
            for family in [
                "db_query_duration_seconds_bucket{service",
                "db_pool_size{service",
                "db_pool_available{service",
                "db_pool_waiting{service",
                "capsule_migration_version{service",
                "grpc_server_request_duration_seconds_bucket{service",
            ] {
                assert!(body.contains(family), "{kind} /metrics lacks {family}:\n{body}");
            }
        }
    }

    // The deploy service's gauges of deployments and the runner queue,
    // written once its database answers.
    let deploy = mesh
        .addrs
        .iter()
        .find_map(|(kind, addr)| (*kind == ServiceKind::Deploy).then_some(*addr))
        .expect("the mesh runs the deploy service");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(deploy, "/metrics").await;
        if body.contains("capsule_deployments{state=\"queued\"}")
            && body.contains("capsule_deployment_queue_oldest_seconds")
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no deployment gauges:\n{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, body) = http_get(mesh.http, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"ready\""), "{body}");
    let (status, _) = http_get(mesh.http, "/healthz").await;
    assert_eq!(status, 200);

    mesh.stop().await;
}

#[tokio::test]
async fn a_service_migrates_an_empty_database_before_it_serves() {
    let db = TestDatabase::empty(ServiceKind::Auth).await;
    let listener = testing::free_listener().await;
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(capsule_auth::serve(
        listener,
        db.db_config(),
        testing::serve_config(addr),
        shutdown.clone(),
    ));
    testing::wait_for_health(addr, "capsule.auth.v1.AuthService", SERVING, Duration::from_secs(20)).await;

    let mut conn = db.connect();
    let users = diesel::sql_query("SELECT 1 FROM users").execute(&mut conn).unwrap();
    assert_eq!(users, 0, "the users table exists and no admin was seeded");

    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A TCP relay to PostgreSQL that the test can cut and restore.
struct Relay {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn start_relay(port: u16, upstream: SocketAddr) -> Relay {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                accepted = listener.accept() => {
                    let Ok((mut inbound, _)) = accepted else { continue };
                    connections.spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            }
        }
        // Dropping the set aborts every relayed connection: to the service
        // it looks like the server went away.
        connections.abort_all();
    });
    Relay { stop, task }
}

impl Relay {
    async fn cut(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_database_through_an_outage_without_a_restart() {
    let db = TestDatabase::migrated(ServiceKind::Project, &capsule_project::MIGRATIONS).await;
    let admin = url::Url::parse(&testing::admin_url()).unwrap();
    let upstream: SocketAddr = format!("{}:{}", admin.host_str().unwrap(), admin.port().unwrap_or(5432))
        .parse()
        .unwrap();
    // A port with nothing behind it yet: the database is "down" at start.
    let relay_port = testing::free_listener().await.local_addr().unwrap().port();
    let mut via_relay = url::Url::parse(&db.url).unwrap();
    via_relay.set_port(Some(relay_port)).unwrap();
    let mut config = db.db_config();
    config.url_override = Some(via_relay.to_string().into());

    let listener = testing::free_listener().await;
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(capsule_project::serve(
        listener,
        config,
        Mesh::from_source(&|_: &str| None).unwrap(),
        testing::serve_config(addr),
        shutdown.clone(),
    ));
    let service = "capsule.project.v1.ProjectService";

    testing::wait_for_health(addr, service, NOT_SERVING, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        testing::health_status(addr, service).await,
        Some(NOT_SERVING),
        "still down, still not serving"
    );

    let relay = start_relay(relay_port, upstream).await;
    testing::wait_for_health(addr, service, SERVING, Duration::from_secs(15)).await;

    relay.cut().await;
    testing::wait_for_health(addr, service, NOT_SERVING, Duration::from_secs(10)).await;

    let relay = start_relay(relay_port, upstream).await;
    testing::wait_for_health(addr, service, SERVING, Duration::from_secs(15)).await;

    shutdown.cancel();
    task.await.unwrap().unwrap();
    relay.cut().await;
}
