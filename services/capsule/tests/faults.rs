//! Faults done for real: the project service's PostgreSQL is stopped
//! (`pg_ctl stop -m fast`) and started again under a steady load of reads
//! and writes. The cluster is a private one made for the test, so the
//! shared server the other tests use is never touched.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions unwrap too")]

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

mod common;

use capsule::{
    config::ServiceKind,
    proto::{
        auth::v1::{RegisterRequest, auth_service_client::AuthServiceClient},
        project::v1::{self as pb, project_service_client::ProjectServiceClient},
    },
    testing::{self, TestDatabase},
};
use diesel::{Connection, PgConnection, RunQueryDsl};
use tonic::Code;

const SERVING: i32 = 1;
/// The deadline of every call of the load.
const DEADLINE: Duration = Duration::from_secs(1);

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's binaries are installed under /usr/lib/postgresql")
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|dir| dir.join("pg_ctl").is_file())
        .collect();
    dirs.sort();
    dirs.pop().expect("a PostgreSQL version with pg_ctl")
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A PostgreSQL tool, as the postgres user when we are root (initdb
/// refuses to run as root).
fn pg(tool: &str, args: &[&str]) {
    let bin = bin_dir().join(tool);
    let mut command = if as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(bin);
        command
    } else {
        Command::new(bin)
    };
    let output = command.args(args).stdin(Stdio::null()).output().unwrap();
    assert!(
        output.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A throwaway cluster on its own port; stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        if as_root() {
            assert!(
                Command::new("chown")
                    .arg("postgres")
                    .arg(dir.path())
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let port = testing::free_listener().await.local_addr().unwrap().port();
        let cluster = Self { dir, port };
        pg(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--no-instructions",
            ],
        );
        cluster.pg_ctl_start();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").to_string_lossy().into_owned();
        pg(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "start"],
        );
    }

    fn pg_ctl_stop(&self) {
        pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if Path::new(&self.data()).join("postmaster.pid").exists() {
            self.pg_ctl_stop();
        }
    }
}

fn create(name: &str) -> pb::CreateProjectRequest {
    pb::CreateProjectRequest {
        project: Some(pb::Project {
            name: name.to_owned(),
            ..Default::default()
        }),
    }
}

/// A call of the load: the caller's token, and the load's deadline.
fn signed<T>(message: T, metadata: &tonic::metadata::MetadataMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = metadata.clone();
    request.set_timeout(DEADLINE);
    request
}

#[derive(Default)]
struct Tally {
    sent: usize,
    ok: usize,
    unavailable: usize,
    deadline: usize,
    other: Vec<String>,
    slowest: Duration,
    acknowledged: Vec<String>,
    ok_after_restart: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_fails_fast_recovers_and_loses_no_acknowledged_write() {
    let cluster = Cluster::start().await;
    {
        let mut admin = PgConnection::establish(&cluster.url("postgres")).unwrap();
        diesel::sql_query("CREATE DATABASE project")
            .execute(&mut admin)
            .unwrap();
    }
    let auth_db = TestDatabase::migrated(ServiceKind::Auth, &capsule_auth::MIGRATIONS).await;
    let auth_addr = testing::free_listener().await.local_addr().unwrap();
    let project_addr = testing::free_listener().await.local_addr().unwrap();
    let auth = common::serve(
        "auth",
        &[
            ("AUTH_DATABASE_URL", auth_db.url.clone()),
            ("AUTH_GRPC_ADDR", auth_addr.to_string()),
        ],
    );
    let mut project = common::serve(
        "project",
        &[
            ("PROJECT_DATABASE_URL", cluster.url("project")),
            ("PROJECT_GRPC_ADDR", project_addr.to_string()),
            ("AUTH_SERVICE_URL", format!("http://{auth_addr}")),
        ],
    );
    testing::wait_for_health(auth_addr, "", SERVING, Duration::from_secs(30)).await;
    testing::wait_for_health(project_addr, "", SERVING, Duration::from_secs(30)).await;

    let token = AuthServiceClient::new(testing::channel(auth_addr).await)
        .register(RegisterRequest {
            email: "load@example.com".into(),
            password: "a long enough password".into(),
            name: "Load".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
        .access_token;
    let client = ProjectServiceClient::new(testing::channel(project_addr).await);
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let first = client
        .clone()
        .create_project(signed(create("Before"), &metadata))
        .await
        .unwrap()
        .into_inner();

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let restarted = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (client, tally, stop, restarted) = (client.clone(), tally.clone(), stop.clone(), restarted.clone());
            let (get, metadata) = (first.id.clone(), metadata.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let mut client = client.clone();
                    let name = format!("Load {worker}-{i}");
                    let started = Instant::now();
                    let write = i % 2 == 0;
                    let outcome = if write {
                        let request = signed(create(&name), &metadata);
                        client.create_project(request).await.map(|r| Some(r.into_inner().id))
                    } else {
                        let request = signed(
                            pb::GetProjectRequest {
                                project_id: get.clone(),
                            },
                            &metadata,
                        );
                        client.get_project(request).await.map(|_| None)
                    };
                    let elapsed = started.elapsed();
                    {
                        let mut tally = tally.lock().unwrap();
                        tally.sent += 1;
                        tally.slowest = tally.slowest.max(elapsed);
                        match outcome {
                            Ok(id) => {
                                tally.ok += 1;
                                if restarted.load(Ordering::Relaxed) {
                                    tally.ok_after_restart += 1;
                                }
                                tally.acknowledged.extend(id);
                            }
                            Err(status) if status.code() == Code::Unavailable => tally.unavailable += 1,
                            Err(status) if status.code() == Code::DeadlineExceeded => tally.deadline += 1,
                            Err(status) => tally.other.push(format!("{:?}: {}", status.code(), status.message())),
                        }
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_stop = tally.lock().unwrap().ok;
    let down = tokio::task::spawn_blocking({
        let data = cluster.data();
        move || pg("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])
    });
    down.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during_outage = {
        let tally = tally.lock().unwrap();
        (tally.unavailable, tally.deadline)
    };
    tokio::task::block_in_place(|| cluster.pg_ctl_start());
    restarted.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    let found: i64 = {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            count: i64,
        }
        let mut conn = PgConnection::establish(&cluster.url("project")).unwrap();
        let ids: Vec<uuid::Uuid> = tally.acknowledged.iter().map(|id| id.parse().unwrap()).collect();
        diesel::sql_query("SELECT count(*) AS count FROM projects WHERE id = ANY($1)")
            .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
            .get_result::<Count>(&mut conn)
            .unwrap()
            .count
    };
    println!(
        "sent {}, ok {} ({} before the stop, {} after the restart), unavailable {}, deadline exceeded {}, \
         other {:?}; slowest call {:?}; writes acknowledged {}, found {}",
        tally.sent,
        tally.ok,
        before_stop,
        tally.ok_after_restart,
        tally.unavailable,
        tally.deadline,
        tally.other,
        tally.slowest,
        tally.acknowledged.len(),
        found
    );
    assert!(before_stop > 0, "the load ran before the stop");
    assert!(during_outage.0 > 0, "calls during the outage fail with UNAVAILABLE");
    assert!(
        tally.other.is_empty(),
        "only UNAVAILABLE or DEADLINE_EXCEEDED: {:?}",
        tally.other
    );
    assert!(
        tally.slowest < DEADLINE + Duration::from_millis(500),
        "no call hangs past its deadline: {:?}",
        tally.slowest
    );
    assert!(
        tally.ok_after_restart > 0,
        "the pool recovers without a restart of the service"
    );
    assert_eq!(
        usize::try_from(found).unwrap(),
        tally.acknowledged.len(),
        "every acknowledged write is in the database"
    );
    assert!(
        project.try_wait().unwrap().is_none(),
        "the project service kept running"
    );
    for mut child in [project, auth] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The four services as processes on fresh databases of the shared server.
struct Mesh {
    env: Vec<(&'static str, String)>,
    children: Vec<(&'static str, std::process::Child)>,
    http: std::net::SocketAddr,
    _dbs: Vec<TestDatabase>,
}

impl Mesh {
    async fn start() -> Self {
        let auth_db = TestDatabase::migrated(ServiceKind::Auth, &capsule_auth::MIGRATIONS).await;
        let project_db = TestDatabase::migrated(ServiceKind::Project, &capsule_project::MIGRATIONS).await;
        let deploy_db = TestDatabase::migrated(ServiceKind::Deploy, &capsule_deploy::MIGRATIONS).await;
        let addr = common::addresses().await;
        let mut env = common::mesh_env(&addr, |addr| format!("http://{addr}"));
        env.extend([
            ("AUTH_DATABASE_URL", auth_db.url.clone()),
            ("PROJECT_DATABASE_URL", project_db.url.clone()),
            ("DEPLOY_DATABASE_URL", deploy_db.url.clone()),
        ]);
        let mut mesh = Self {
            env,
            children: Vec::new(),
            http: addr[4],
            _dbs: vec![auth_db, project_db, deploy_db],
        };
        for service in ["auth", "project", "deploy", "gateway"] {
            mesh.spawn(service);
        }
        for grpc in &addr[..4] {
            testing::wait_for_health(*grpc, "", SERVING, Duration::from_secs(30)).await;
        }
        mesh
    }

    fn spawn(&mut self, service: &'static str) {
        let child = common::serve(service, &self.env);
        self.children.push((service, child));
    }

    fn kill(&mut self, service: &str) {
        let index = self.children.iter().position(|(name, _)| *name == service).unwrap();
        let (_, mut child) = self.children.remove(index);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_load_gives_503_and_partial_answers_then_recovers() {
    let mut mesh = Mesh::start().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://{}", mesh.http);
    let registered: serde_json::Value = http
        .post(format!("{base}/v1/auth:register"))
        .json(&serde_json::json!({"email": "kill@example.com", "password": "a long enough password", "name": "K"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["tokens"]["accessToken"].as_str().unwrap().to_owned();
    let project: serde_json::Value = http
        .post(format!("{base}/v1/projects"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "Survivor"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deployments = format!("{base}/v1/projects/{}/deployments", project["id"].as_str().unwrap());
    let dashboard = format!("{base}/v1/dashboard");

    // One round of load: the deploy route and the fan-out, several at once.
    let round = |http: reqwest::Client, token: String| {
        let (deployments, dashboard) = (deployments.clone(), dashboard.clone());
        async move {
            let calls = (0..8).map(|i| {
                let (http, token) = (http.clone(), token.clone());
                let url = if i % 2 == 0 {
                    deployments.clone()
                } else {
                    dashboard.clone()
                };
                async move {
                    let response = http.get(&url).bearer_auth(&token).send().await.unwrap();
                    let status = response.status().as_u16();
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    (i % 2 == 0, status, body)
                }
            });
            futures::future::join_all(calls).await
        }
    };

    let (mut sent, mut failed) = (0, 0);
    for _ in 0..10 {
        for (_, status, _) in round(http.clone(), token.clone()).await {
            sent += 1;
            failed += usize::from(status != 200);
        }
    }
    assert_eq!(failed, 0, "all {sent} calls answered before the kill");

    mesh.kill("deploy");
    let (mut dead_deploy_503, mut partial_dashboards) = (0, 0);
    // Reads are retried twice with backoff before a 503: about 1.2 s a round.
    for _ in 0..4 {
        for (deploy_route, status, body) in round(http.clone(), token.clone()).await {
            sent += 1;
            if deploy_route {
                assert_eq!(status, 503, "the dead backend's route: {body}");
                dead_deploy_503 += 1;
            } else {
                assert_eq!(status, 200, "the fan-out answers without deploy: {body}");
                assert_eq!(body["missing"][0]["service"], "deploy", "{body}");
                partial_dashboards += 1;
            }
        }
    }

    mesh.spawn("deploy");
    let back = Instant::now();
    let recovered = loop {
        let results = round(http.clone(), token.clone()).await;
        sent += results.len();
        if results.iter().all(|(_, status, body)| {
            *status == 200 && body.get("missing").is_none_or(|m| m.as_array().unwrap().is_empty())
        }) {
            break back.elapsed();
        }
        assert!(back.elapsed() < Duration::from_secs(20), "no recovery: {results:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "sent {sent}; with deploy killed: {dead_deploy_503} answered 503, {partial_dashboards} partial dashboards; \
         recovered {recovered:?} after deploy was started again"
    );
}
