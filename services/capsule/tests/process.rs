//! The `capsule` binary as operators run it: configuration errors, signals.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use capsule::{
    config::ServiceKind,
    testing::{self, TestDatabase},
};

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

fn capsule() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_capsule"));
    command.env("RUST_LOG", "info").stdin(Stdio::null());
    command
}

/// `capsule serve` for `db`'s service, alone on a free port, with `env`;
/// its output discarded.
async fn serve_alone(db: &TestDatabase, env: &[(&str, &str)]) -> (std::process::Child, std::net::SocketAddr) {
    let addr = testing::free_listener().await.local_addr().expect("a free port");
    let prefix = db.service.env_prefix();
    let child = capsule()
        .args(["serve", db.service.name()])
        .env(format!("{prefix}_DATABASE_URL"), &db.url)
        .env(db.service.grpc_addr_variable(), addr.to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the capsule binary starts");
    (child, addr)
}

#[test]
fn a_bad_variable_stops_start_up_with_its_name() {
    let output = capsule()
        .args(["serve", "auth"])
        .env("AUTH_DB_PORT", "fifty")
        .env("AUTH_GRPC_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("AUTH_DB_PORT=\"fifty\" is not valid: expected a port number"),
        "{stderr}"
    );
}

#[test]
fn a_taken_address_names_the_variable_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let output = capsule()
        .args(["serve", "project"])
        .env("PROJECT_GRPC_ADDR", addr.to_string())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}; set PROJECT_GRPC_ADDR")),
        "{stderr}"
    );
}

#[test]
fn an_unknown_service_is_refused_with_the_choices() {
    let output = capsule().args(["serve", "billing"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("possible values: auth, project, deploy, gateway"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_to_their_own_listener_when_told() {
    let db = TestDatabase::migrated(ServiceKind::Project, &capsule_project::MIGRATIONS).await;
    let metrics = testing::free_listener().await.local_addr().unwrap();
    let (mut child, addr) = serve_alone(&db, &[("CAPSULE_METRICS_ADDR", &metrics.to_string())]).await;
    testing::wait_for_health(
        addr,
        "capsule.project.v1.ProjectService",
        SERVING,
        Duration::from_secs(20),
    )
    .await;
    let client = reqwest::Client::new();
    let own = client.get(format!("http://{metrics}/metrics")).send().await.unwrap();
    assert_eq!(own.status(), 200);
    assert!(own.text().await.unwrap().contains("grpc_server_requests_total"));
    let public = client.get(format!("http://{addr}/metrics")).send().await.unwrap();
    // gRPC's "unimplemented", not the metrics text.
    assert_eq!(
        public
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("12".to_owned())
    );
    assert!(!public.text().await.unwrap().contains("grpc_server_requests_total"));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_not_serving_then_exits_zero_within_the_grace_period() {
    let db = TestDatabase::migrated(ServiceKind::Deploy, &capsule_deploy::MIGRATIONS).await;
    let (mut child, addr) = serve_alone(
        &db,
        &[("CAPSULE_DRAIN_DELAY_MS", "1000"), ("CAPSULE_SHUTDOWN_GRACE_SECS", "3")],
    )
    .await;
    let service = "capsule.deploy.v1.DeployService";
    testing::wait_for_health(addr, service, SERVING, Duration::from_secs(20)).await;

    // A streaming call that never ends by itself: shutdown must not wait
    // for it past the grace period.
    let mut watch = tonic_health::pb::health_client::HealthClient::new(testing::channel(addr).await)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, SERVING);

    let sent = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // While draining, health says NOT_SERVING and the port still answers.
    let update = tokio::time::timeout(Duration::from_secs(2), watch.message()).await;
    assert_eq!(update.unwrap().unwrap().unwrap().status, NOT_SERVING);
    assert_eq!(testing::health_status(addr, service).await, Some(NOT_SERVING));

    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(sent.elapsed() < Duration::from_secs(10), "took {:?}", sent.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_in_flight_finish() {
    use capsule::proto::auth::v1::{RegisterRequest, auth_service_client::AuthServiceClient};

    let db = TestDatabase::migrated(ServiceKind::Auth, &capsule_auth::MIGRATIONS).await;
    let (mut child, addr) = serve_alone(&db, &[("CAPSULE_DRAIN_DELAY_MS", "0")]).await;
    testing::wait_for_health(addr, "capsule.auth.v1.AuthService", SERVING, Duration::from_secs(20)).await;
    let client = AuthServiceClient::new(testing::channel(addr).await);

    // Registrations hash a password (tens of ms each, two cores): twelve
    // of them are still running when the signal arrives.
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .register(RegisterRequest {
                        email: format!("inflight{i}@example.com"),
                        password: "correct horse battery staple".to_owned(),
                        name: "In Flight".to_owned(),
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    for call in calls {
        let outcome = call.await.unwrap();
        assert!(outcome.is_ok(), "an in-flight call failed: {outcome:?}");
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replicas_started_at_once_on_an_empty_database_migrate_it_once_and_all_serve() {
    use diesel::RunQueryDsl;

    let db = TestDatabase::empty(ServiceKind::Project).await;
    let mut addrs = Vec::new();
    for _ in 0..5 {
        let port = testing::free_listener().await.local_addr().unwrap().port();
        addrs.push(format!("127.0.0.1:{port}").parse::<std::net::SocketAddr>().unwrap());
    }
    let mut replicas: Vec<_> = addrs
        .iter()
        .map(|addr| {
            capsule()
                .args(["serve", "project"])
                .env("PROJECT_DATABASE_URL", &db.url)
                .env("PROJECT_GRPC_ADDR", addr.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for addr in &addrs {
        testing::wait_for_health(
            *addr,
            "capsule.project.v1.ProjectService",
            SERVING,
            Duration::from_secs(30),
        )
        .await;
    }
    // None crashed or restarted on the way: each is the process we started.
    for replica in &mut replicas {
        assert!(replica.try_wait().unwrap().is_none(), "a replica exited");
    }

    // Applied once: one row per version in the history (its primary key),
    // and across the five logs, each version named by one replica only.
    let mut conn = db.connect();
    let rows: i64 = diesel::sql_query("SELECT count(*) AS count FROM capsule_schema_history")
        .get_result::<Count>(&mut conn)
        .unwrap()
        .count;
    assert_eq!(usize::try_from(rows).unwrap(), capsule_project::MIGRATIONS.files.len());

    for replica in &mut replicas {
        Command::new("kill")
            .args(["-TERM", &replica.id().to_string()])
            .status()
            .unwrap();
    }
    let mut appliers = 0;
    for replica in replicas {
        let output = tokio::task::spawn_blocking(move || replica.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{log}");
        appliers += log.matches("applied migrations").count();
    }
    assert_eq!(appliers, 1, "exactly one replica applies the migrations");
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_call_and_says_not_serving_before_closing() {
    use capsule::proto::auth::v1::{GetJwksRequest, auth_service_client::AuthServiceClient};
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };

    let db = TestDatabase::migrated(ServiceKind::Auth, &capsule_auth::MIGRATIONS).await;
    let (mut child, addr) = serve_alone(
        &db,
        &[("CAPSULE_DRAIN_DELAY_MS", "1000"), ("CAPSULE_SHUTDOWN_GRACE_SECS", "5")],
    )
    .await;
    let service = "capsule.auth.v1.AuthService";
    testing::wait_for_health(addr, service, SERVING, Duration::from_secs(20)).await;
    let channel = testing::channel(addr).await;

    // Clients behave like a load balancer's: they stop sending new calls
    // once health says NOT_SERVING.
    let draining = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut watch = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .watch(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let watcher = tokio::spawn({
        let draining = draining.clone();
        async move {
            while let Ok(Some(update)) = watch.message().await {
                if update.status == NOT_SERVING {
                    draining.store(true, Ordering::SeqCst);
                    return Instant::now();
                }
            }
            panic!("the health stream ended before NOT_SERVING");
        }
    });
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (channel, draining, sent, failed) = (channel.clone(), draining.clone(), sent.clone(), failed.clone());
            tokio::spawn(async move {
                let mut client = AuthServiceClient::new(channel);
                while !draining.load(Ordering::SeqCst) {
                    sent.fetch_add(1, Ordering::SeqCst);
                    if client.get_jwks(GetJwksRequest::default()).await.is_err() {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(700)).await;
    let signalled = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let not_serving_at = watcher.await.unwrap();
    // NOT_SERVING came first; the port still answers during the drain delay.
    assert!(not_serving_at.duration_since(signalled) < Duration::from_millis(900));
    assert_eq!(testing::health_status(addr, service).await, Some(NOT_SERVING));
    for worker in workers {
        worker.await.unwrap();
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let took = signalled.elapsed();
    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    println!(
        "sent {sent}, failed {failed}; NOT_SERVING after {:?}; exited after {took:?}",
        not_serving_at.duration_since(signalled)
    );
    assert!(sent > 50, "a steady load: {sent}");
    assert_eq!(failed, 0, "no call failed");
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(1 + 5),
        "exit within drain delay + grace: {took:?}"
    );
}

/// A service started alone decodes only the contracts it serves and their
/// imports: its requests are still checked against their rules, its
/// database's admin API keeps its access level, and the methods of
/// packages it does not serve are unknown to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_alone_checks_its_calls_against_its_own_contracts() {
    use capsule::proto::{
        admin::v1::{GetDatabaseStatsRequest, database_admin_client::DatabaseAdminClient},
        auth::v1::{RegisterRequest, auth_service_client::AuthServiceClient},
        project::v1::{GetProjectRequest, project_service_client::ProjectServiceClient},
    };

    let db = TestDatabase::migrated(ServiceKind::Auth, &capsule_auth::MIGRATIONS).await;
    let (mut child, addr) = serve_alone(&db, &[]).await;
    testing::wait_for_health(addr, "capsule.auth.v1.AuthService", SERVING, Duration::from_secs(20)).await;
    let channel = testing::channel(addr).await;
    let refused = AuthServiceClient::new(channel.clone())
        .register(RegisterRequest {
            email: "alone@example.com".to_owned(),
            // Only the contract's rules limit a password's length.
            password: "short".to_owned(),
            name: "Alone".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("password"), "{refused:?}");
    let admin = DatabaseAdminClient::new(channel.clone())
        .get_database_stats(GetDatabaseStatsRequest {})
        .await
        .unwrap_err();
    assert_eq!(admin.code(), tonic::Code::Unauthenticated, "{admin:?}");
    let elsewhere = ProjectServiceClient::new(channel)
        .get_project(GetProjectRequest {
            project_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), tonic::Code::Unimplemented, "{elsewhere:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}
