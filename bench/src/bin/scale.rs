//! What the reads cost as the data grows (`bench/scale`).
//!
//! Loads two data sets, each into fresh databases served by real services
//! (`capsule serve`, release build, one process each):
//!
//! - small: 10,000 projects across 100 owners, 1,000 deployments, 10,000
//!   log lines in one deployment;
//! - large: 1,000,000 projects across 10,000 owners, 100,000 deployments,
//!   10,000,000 log lines in one deployment (`SCALE_PROJECTS`, `SCALE_OWNERS`, `SCALE_LOG_LINES`).
//!
//! Then times, one call at a time over gRPC: GetProject, ListProjects (an
//! owner's first page, an admin's first page, an admin's page 1,000 deep
//! by page token), GetLogs at the start and at the end, and StreamLogs
//! catching up on 1,000,000 lines (all of them on the small set). It prints
//! p50/p99 for both sets side by side, and the plans of the statements
//! behind each call on the large set, built by the services' own query
//! code with EXPLAIN. It fails if a plan reads a table sequentially or a
//! large-set p50 is more than twice the small one's.

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::Context;
use capsule::{
    config::ServiceKind,
    proto::{
        auth::v1::{self as auth_pb, auth_service_client::AuthServiceClient},
        deploy::v1::{self as deploy_pb, deploy_service_client::DeployServiceClient},
        project::v1::{self as project_pb, project_service_client::ProjectServiceClient},
    },
    testing::{self, TestDatabase},
};
use capsule_bench::{env_number, migrations, serve};
use diesel::{Connection, PgConnection, RunQueryDsl, connection::SimpleConnection};
use tonic::{Request, transport::Channel};

/// Projects per ListProjects page; 1,000 pages of it fit in the small set.
const PAGE: i32 = 8;
/// Pages walked for the deep ListProjects call.
const DEPTH: usize = 1_000;
/// Lines StreamLogs catches up on (at most what the deployment holds).
const CATCH_UP: i64 = 1_000_000;
/// Timed calls of each kind (after as many untimed ones).
const SAMPLES: usize = 300;
/// Timed StreamLogs catch-ups.
const STREAMS: usize = 5;
const PASSWORD: &str = "scale-bench-password-of-some-length";

struct Size {
    name: &'static str,
    projects: u64,
    owners: u64,
    log_lines: u64,
}

/// One call's timings on one set.
struct Timing {
    call: &'static str,
    p50: Duration,
    p99: Duration,
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a token is ASCII"),
    );
    request
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or_default()
}

/// Times `call` `samples` times, after as many untimed calls.
async fn time<F, Fut>(call: &'static str, samples: usize, mut run: F) -> anyhow::Result<Timing>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for _ in 0..samples {
        run().await?;
    }
    let mut taken = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        run().await?;
        taken.push(start.elapsed());
    }
    taken.sort();
    Ok(Timing {
        call,
        p50: percentile(&taken, 0.5),
        p99: percentile(&taken, 0.99),
    })
}

/// The three services with databases, each a `capsule serve` process.
struct Mesh {
    children: Vec<Child>,
    databases: Vec<TestDatabase>,
    ports: Vec<(ServiceKind, u16)>,
}

impl Mesh {
    async fn start(bin: &str) -> anyhow::Result<Self> {
        let mut ports = Vec::new();
        let mut databases = Vec::new();
        for kind in ServiceKind::WITH_DATABASE {
            ports.push((kind, testing::free_listener().await.local_addr()?.port()));
            databases.push(TestDatabase::migrated(kind, migrations(kind)).await);
        }
        let mut children = Vec::new();
        for ((kind, port), db) in ports.iter().zip(&databases) {
            let mut command = serve(bin, *kind, &db.url, *port);
            // Each service finds the others (project asks auth for its
            // keys, deploy asks project).
            for (other, port) in &ports {
                command.env(
                    format!("{}_SERVICE_URL", other.env_prefix()),
                    format!("http://127.0.0.1:{port}"),
                );
            }
            children.push(
                command
                    .spawn()
                    .with_context(|| format!("starting {bin} serve {kind}"))?,
            );
        }
        let mesh = Self {
            children,
            databases,
            ports,
        };
        for (kind, port) in &mesh.ports {
            let addr = format!("127.0.0.1:{port}").parse()?;
            testing::wait_for_health(addr, kind.grpc_service_name(), 1, Duration::from_secs(60)).await;
        }
        Ok(mesh)
    }

    fn url(&self, kind: ServiceKind) -> String {
        let port = self.ports.iter().find(|(k, _)| *k == kind).map_or(0, |(_, port)| *port);
        format!("http://127.0.0.1:{port}")
    }

    fn database(&self, kind: ServiceKind) -> &TestDatabase {
        self.databases
            .iter()
            .find(|db| db.service == kind)
            .expect("every service has a database")
    }

    /// Runs statements on a service's database, one at a time (VACUUM
    /// cannot share a transaction), on a thread of its own.
    async fn sql(&self, kind: ServiceKind, statements: &[&str]) -> anyhow::Result<()> {
        let url = self.database(kind).url.clone();
        let statements: Vec<String> = statements.iter().map(|s| (*s).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let mut conn = PgConnection::establish(&url)?;
            for statement in statements {
                conn.batch_execute(&statement)
                    .with_context(|| format!("loading the data set: {statement}"))?;
            }
            Ok(())
        })
        .await?
    }

    /// Registers a user; with `admin`, makes them one. Returns their id
    /// and an access token.
    async fn user(&self, email: &str, admin: bool) -> anyhow::Result<(String, String)> {
        let mut auth = AuthServiceClient::connect(self.url(ServiceKind::Auth)).await?;
        let registered = auth
            .register(auth_pb::RegisterRequest {
                email: email.to_owned(),
                password: PASSWORD.to_owned(),
                name: "Scale".to_owned(),
            })
            .await?
            .into_inner();
        let id = registered.user.context("a user")?.id;
        let mut token = registered.tokens.context("tokens")?.access_token;
        if admin {
            self.sql(
                ServiceKind::Auth,
                &[&format!("UPDATE users SET role = 'admin' WHERE id = '{id}'")],
            )
            .await?;
            let login = auth
                .login(auth_pb::LoginRequest {
                    email: email.to_owned(),
                    password: PASSWORD.to_owned(),
                })
                .await?
                .into_inner();
            token = login.tokens.context("tokens")?.access_token;
        }
        Ok((id, token))
    }

    fn stop(mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

/// What one set measured: each call's timing, and each statement's plan.
struct Measured {
    timings: Vec<Timing>,
    plans: Vec<(&'static str, Vec<String>)>,
}

async fn measure(bin: &str, size: &Size) -> anyhow::Result<Measured> {
    eprintln!(
        "{}: {} projects, {} owners, {} log lines",
        size.name, size.projects, size.owners, size.log_lines
    );
    let mesh = Mesh::start(bin).await?;
    let result = measure_on(&mesh, size).await;
    mesh.stop();
    result
}

async fn measure_on(mesh: &Mesh, size: &Size) -> anyhow::Result<Measured> {
    let (owner, token) = mesh.user("owner@example.com", false).await?;
    let (_, admin) = mesh.user("admin@example.com", true).await?;
    let loading = Instant::now();
    // Owner 0 is the registered user; the rest are ids no account has.
    // Creation times one second apart, newest first by number.
    let insert = format!(
        "INSERT INTO projects (name, owner_id, slug, created_at)
         SELECT 'Project ' || g,
                CASE WHEN g % {owners} = 0 THEN '{owner}'::uuid ELSE md5('owner' || g % {owners})::uuid END,
                'project-' || g,
                now() - g * interval '1 second'
         FROM generate_series(1, {projects}) AS g",
        owners = size.owners,
        projects = size.projects,
    );
    mesh.sql(
        ServiceKind::Project,
        &[
            &insert,
            "INSERT INTO project_settings (project_id) SELECT id FROM projects",
            "VACUUM ANALYZE projects",
            "VACUUM ANALYZE project_settings",
        ],
    )
    .await?;
    let deployment = uuid::Uuid::new_v4();
    let project: String = {
        let url = mesh.database(ServiceKind::Project).url.clone();
        let owner = owner.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            #[derive(diesel::QueryableByName)]
            struct Id {
                #[diesel(sql_type = diesel::sql_types::Text)]
                id: String,
            }
            let row: Id = diesel::sql_query(format!(
                "SELECT id::text AS id FROM projects WHERE owner_id = '{owner}' ORDER BY created_at LIMIT 1"
            ))
            .get_result(&mut PgConnection::establish(&url)?)?;
            Ok(row.id)
        })
        .await??
    };
    // The replica role skips triggers: no NOTIFY per loaded line.
    let (deployment_row, lines_rows) = (
        format!(
            "INSERT INTO deployments (id, project_id, creator_id, owner_id, state, finished_at, log_sequence)
             VALUES ('{deployment}', '{project}', '{owner}', '{owner}', 'failed', now(), {lines})",
            lines = size.log_lines,
        ),
        format!(
            "SET session_replication_role = replica;
             INSERT INTO deployment_logs (deployment_id, sequence, stream, line)
             SELECT '{deployment}', g, 'stdout', 'step ' || g || ': compiling a module of the project, as builds say'
             FROM generate_series(1, {lines}) AS g;
             SET session_replication_role = DEFAULT",
            lines = size.log_lines,
        ),
    );
    // Other projects' deployments, one for every ten projects.
    let others = format!(
        "INSERT INTO deployments (project_id, creator_id, owner_id, state, finished_at)
         SELECT md5('project' || g)::uuid, md5('owner' || g)::uuid, md5('owner' || g)::uuid, 'failed', now()
         FROM generate_series(1, {}) AS g",
        size.projects / 10
    );
    mesh.sql(
        ServiceKind::Deploy,
        &[
            &others,
            &deployment_row,
            &lines_rows,
            "VACUUM ANALYZE deployments",
            "VACUUM ANALYZE deployment_logs",
        ],
    )
    .await?;
    eprintln!("  loaded in {:.1} s", loading.elapsed().as_secs_f64());

    let projects = ProjectServiceClient::new(Channel::from_shared(mesh.url(ServiceKind::Project))?.connect().await?);
    let deploys = DeployServiceClient::new(Channel::from_shared(mesh.url(ServiceKind::Deploy))?.connect().await?);
    let mut timings = Vec::new();

    let get = project_pb::GetProjectRequest {
        project_id: project.clone(),
    };
    timings.push(
        time("GetProject", SAMPLES, || {
            let (mut client, get, token) = (projects.clone(), get.clone(), token.clone());
            async move {
                client.get_project(authed(get, &token)).await?;
                Ok(())
            }
        })
        .await?,
    );
    let list = |token: &str, page_token: &str| {
        let (mut client, token) = (projects.clone(), token.to_owned());
        let request = project_pb::ListProjectsRequest {
            page_size: PAGE,
            page_token: page_token.to_owned(),
            ..Default::default()
        };
        async move {
            let page = client.list_projects(authed(request, &token)).await?.into_inner();
            anyhow::ensure!(page.projects.len() == PAGE as usize, "a full page");
            Ok(page.next_page_token)
        }
    };
    let first = |token: &str| {
        let page = list(token, "");
        async move { page.await.map(drop) }
    };
    timings.push(time("ListProjects, owner, first page", SAMPLES, || first(&token)).await?);
    timings.push(time("ListProjects, admin, first page", SAMPLES, || first(&admin)).await?);
    let mut deep = String::new();
    for _ in 0..DEPTH {
        deep = list(&admin, &deep).await?;
    }
    timings.push(
        time("ListProjects, admin, page 1,000 deep", SAMPLES, || {
            let page = list(&admin, &deep);
            async move { page.await.map(drop) }
        })
        .await?,
    );

    let lines = i64::try_from(size.log_lines)?;
    let logs = |after: i64| {
        let (mut client, token) = (deploys.clone(), token.clone());
        let request = deploy_pb::GetLogsRequest {
            deployment_id: deployment.to_string(),
            after_sequence: after,
            page_size: 100,
        };
        async move {
            let page = client.get_logs(authed(request, &token)).await?.into_inner();
            anyhow::ensure!(page.lines.len() == 100, "a full page of logs");
            Ok(())
        }
    };
    timings.push(time("GetLogs, first page", SAMPLES, || logs(0)).await?);
    timings.push(time("GetLogs, last page", SAMPLES, || logs(lines - 100)).await?);
    let catch_up = CATCH_UP.min(lines);
    let stream = deploy_pb::StreamLogsRequest {
        deployment_id: deployment.to_string(),
        after_sequence: lines - catch_up,
        follow: false,
    };
    let mut streamed = time("StreamLogs, catch-up (per 1,000 lines)", STREAMS, || {
        let (mut client, stream, token) = (deploys.clone(), stream.clone(), token.clone());
        async move {
            let mut lines = client.stream_logs(authed(stream, &token)).await?.into_inner();
            let mut count = 0;
            while lines.message().await?.is_some() {
                count += 1;
            }
            anyhow::ensure!(count == catch_up, "{count} of {catch_up} lines streamed");
            Ok(())
        }
    })
    .await?;
    // Per 1,000 lines, so the sets compare although they hold different
    // numbers of lines.
    let per_thousand = u32::try_from(catch_up / 1_000)?.max(1);
    streamed.p50 /= per_thousand;
    streamed.p99 /= per_thousand;
    timings.push(streamed);

    let plans = plans(mesh, &owner, &project, deployment, lines).await?;
    Ok(Measured { timings, plans })
}

/// The plans of the statements behind the timed calls, as the services
/// build them, with the set's own values bound.
async fn plans(
    mesh: &Mesh,
    owner: &str,
    project: &str,
    deployment: uuid::Uuid,
    lines: i64,
) -> anyhow::Result<Vec<(&'static str, Vec<String>)>> {
    let (owner, project): (uuid::Uuid, uuid::Uuid) = (owner.parse()?, project.parse()?);
    let (project_url, deploy_url) = (
        mesh.database(ServiceKind::Project).url.clone(),
        mesh.database(ServiceKind::Deploy).url.clone(),
    );
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut conn = PgConnection::establish(&project_url)?;
        // The cursor of the deep page: the last project of page DEPTH.
        #[derive(diesel::QueryableByName)]
        struct Cursor {
            #[diesel(sql_type = diesel::sql_types::Timestamptz)]
            created_at: chrono::DateTime<chrono::Utc>,
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            id: uuid::Uuid,
        }
        let cursor: Cursor = diesel::sql_query(format!(
            "SELECT created_at, id FROM projects ORDER BY created_at DESC, id DESC OFFSET {} LIMIT 1",
            DEPTH * PAGE as usize - 1
        ))
        .get_result(&mut conn)?;
        let limit = i64::from(PAGE) + 1;
        let mut plans =
            capsule_project::explain_reads(&mut conn, owner, project, (cursor.created_at, cursor.id), limit)?;
        let mut conn = PgConnection::establish(&deploy_url)?;
        plans.extend(capsule_deploy::explain_reads(&mut conn, deployment, lines - 100, 101)?);
        Ok(plans
            .into_iter()
            .map(|(name, plan)| (name, capsule::db::query::plan_nodes(&plan)))
            .collect())
    })
    .await?
}

fn ms(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = std::env::var("CAPSULE_BIN").unwrap_or_else(|_| "target/release/capsule".to_owned());
    anyhow::ensure!(
        std::path::Path::new(&bin).exists(),
        "{bin} not found: build it (cargo build --release -p capsule-cli) or set CAPSULE_BIN"
    );
    let sizes = [
        Size {
            name: "small",
            projects: 10_000,
            owners: 100,
            log_lines: 10_000,
        },
        Size {
            name: "large",
            projects: env_number("SCALE_PROJECTS", 1_000_000),
            owners: env_number("SCALE_OWNERS", 10_000),
            log_lines: env_number("SCALE_LOG_LINES", 10_000_000),
        },
    ];
    let small = measure(&bin, &sizes[0]).await?;
    let large = measure(&bin, &sizes[1]).await?;

    let [s, l] = &sizes;
    println!(
        "| call | small: {} projects, {} log lines — p50/p99 ms | large: {} projects, {} log lines — p50/p99 ms | p50 large/small |",
        s.projects, s.log_lines, l.projects, l.log_lines
    );
    println!("|---|---|---|---|");
    let mut failures = Vec::new();
    for (a, b) in small.timings.iter().zip(&large.timings) {
        let ratio = b.p50.as_secs_f64() / a.p50.as_secs_f64().max(1e-9);
        println!(
            "| {} | {}/{} | {}/{} | {ratio:.2} |",
            a.call,
            ms(a.p50),
            ms(a.p99),
            ms(b.p50),
            ms(b.p99)
        );
        if ratio > 2.0 {
            failures.push(format!("{}: p50 {ratio:.2}× the small set's", a.call));
        }
    }
    println!("\n| statement (large set) | plan |\n|---|---|");
    for (name, nodes) in &large.plans {
        println!("| {name} | {} |", nodes.join(" → "));
        if let Some(scan) = nodes.iter().find(|node| node.starts_with("Seq Scan")) {
            failures.push(format!("{name}: {scan}"));
        }
    }
    drop(small);
    anyhow::ensure!(failures.is_empty(), "bench/scale: {}", failures.join("; "));
    Ok(())
}
