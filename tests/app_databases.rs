//! Apps' databases: made on the apps' own PostgreSQL server (never the
//! control plane's), reached by an app as DATABASE_URL, each role locked
//! into its own database; backups that bring deleted rows back; and a
//! preview per pull request with a copy of production's data that it may
//! change alone, dropped when the request closes.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{path::Path, time::Duration};

use capsule::{
    config::ServiceKind,
    proto::{deploy::v1 as pb, project::v1 as project_pb},
};
use common::{
    TestMesh,
    apps_pg::{AppsServer, query_as},
    authed,
    deploy::{app, deploy, host_label, logs, text, update_settings, wait_for},
    git::{REPOSITORIES, Repo},
    github_signature,
};
use tonic::Code;

async fn mesh(apps: &AppsServer, runner: bool) -> TestMesh {
    let mut deploy = vec![("DEPLOY_START_TIMEOUT_SECS", "60")];
    if runner {
        deploy.push(("DEPLOY_LOCAL_REPOSITORIES", REPOSITORIES));
        deploy.push(("DEPLOY_EGRESS_ALLOWED_NETWORKS", common::registries().await));
    }
    common::start_with(common::Options {
        local_runner: runner,
        deploy,
        settings: vec![("DEPLOY_APPS_DATABASE_URL", apps.admin_url.clone())],
        ..Default::default()
    })
    .await
}

async fn create_database(
    mesh: &TestMesh,
    token: &str,
    project_id: &str,
    environment: &str,
) -> Result<pb::Database, tonic::Status> {
    mesh.deploys()
        .await
        .create_database(authed(
            pb::CreateDatabaseRequest {
                project_id: project_id.to_owned(),
                environment: environment.to_owned(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn get_database(
    mesh: &TestMesh,
    token: &str,
    project_id: &str,
    environment: &str,
) -> Result<pb::Database, tonic::Status> {
    mesh.deploys()
        .await
        .get_database(authed(
            pb::GetDatabaseRequest {
                project_id: project_id.to_owned(),
                environment: environment.to_owned(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The URL the database's role connects with, its password opened as the
/// deploy service opens it for the runner (a test reads the sealed row).
async fn role_url(mesh: &TestMesh, apps: &AppsServer, database: &pb::Database, on: &str) -> String {
    let rows = query_as(
        &mesh.database(ServiceKind::Deploy).url,
        &format!(
            "SELECT key_id || ' ' || password_sealed FROM app_databases WHERE id = '{}'",
            database.id
        ),
    )
    .await
    .unwrap();
    let (key_id, sealed) = rows[0].split_once(' ').unwrap();
    let keys = capsule::crypto::Keyring::parse(common::TEST_KEYS).unwrap();
    let password = keys
        .open(
            key_id,
            sealed,
            format!("app_databases/{}/password", database.id).as_bytes(),
        )
        .unwrap();
    format!("postgres://{}:{password}@127.0.0.1:{}/{on}", database.name, apps.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_reaches_its_own_database_only_and_never_the_control_planes_server() {
    let apps = AppsServer::start().await;
    let mesh = mesh(&apps, false).await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let (mallory, _) = mesh.user("mallory@example.com").await;
    let ours = app(&mesh, &ada, "", "", &[]).await;
    let theirs = app(&mesh, &mallory, "", "", &[]).await;
    let database = create_database(&mesh, &ada, &ours, "").await.unwrap();
    assert_eq!(database.environment, "production");
    assert!(database.name.starts_with("capsule_"), "{database:?}");
    let other = create_database(&mesh, &mallory, &theirs, "").await.unwrap();
    // One per environment; none made on a project the caller cannot see.
    let again = create_database(&mesh, &ada, &ours, "production").await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    let foreign = create_database(&mesh, &mallory, &ours, "staging").await.unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound, "{foreign:?}");

    // Its own database: yes, with its limits.
    let own = role_url(&mesh, &apps, &database, &database.name).await;
    assert_eq!(query_as(&own, "SHOW statement_timeout").await.unwrap(), ["30s"]);
    query_as(&own, "CREATE TABLE notes (body text)").await.unwrap();
    // Another project's database, the server's own, or a password guess: no.
    let cross = query_as(&role_url(&mesh, &apps, &database, &other.name).await, "SELECT 1").await;
    assert!(cross.unwrap_err().contains("permission denied for database"));
    let server_db = query_as(&role_url(&mesh, &apps, &database, "postgres").await, "SELECT 1").await;
    assert!(server_db.unwrap_err().contains("permission denied for database"));
    let guessed = format!("postgres://{}:guess@127.0.0.1:{}/{}", other.name, apps.port, other.name);
    assert!(
        query_as(&guessed, "SELECT 1")
            .await
            .unwrap_err()
            .contains("password authentication failed")
    );
    // Nor may it become more than itself.
    let escalate = query_as(&own, "ALTER ROLE CURRENT_USER SUPERUSER").await.unwrap_err();
    assert!(
        escalate.contains("permission denied") || escalate.contains("must be superuser"),
        "{escalate}"
    );

    // The control plane's server knows no such role, and the guard every
    // outbound connection of a sandbox passes refuses its address and the
    // apps' server's alike: a sandbox reaches its database only through
    // the forwarder that leads to that one address.
    let control = mesh.database(ServiceKind::Deploy).url.clone();
    let as_role = url::Url::parse(&control)
        .map(|mut url| {
            url.set_username(&database.name).unwrap();
            url.to_string()
        })
        .unwrap();
    let refused = query_as(&as_role, "SELECT 1").await.unwrap_err();
    assert!(refused.contains("does not exist"), "{refused}");
    let guard = capsule::guard::Guard::new(Vec::new());
    for address in ["127.0.0.1", "10.0.0.5", "::1"] {
        assert!(guard.refusal(address.parse().unwrap()).is_some(), "{address}");
    }
    mesh.stop().await;
    apps.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_deleted_after_a_backup_come_back_when_it_is_restored() {
    let apps = AppsServer::start().await;
    let mesh = mesh(&apps, false).await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let (mallory, _) = mesh.user("mallory@example.com").await;
    let project = app(&mesh, &ada, "", "", &[]).await;
    let database = create_database(&mesh, &ada, &project, "").await.unwrap();
    let url = role_url(&mesh, &apps, &database, &database.name).await;
    query_as(
        &url,
        "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 3)",
    )
    .await
    .unwrap();
    let mut deploys = mesh.deploys().await;
    let backup = deploys
        .create_backup(authed(
            pb::CreateBackupRequest {
                project_id: project.clone(),
                environment: String::new(),
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(backup.reason(), pb::BackupReason::Manual);
    assert!(
        backup.digest.starts_with("sha256:") && backup.size_bytes > 0,
        "{backup:?}"
    );
    query_as(&url, "DELETE FROM orders WHERE id > 1; CREATE TABLE later (x int)")
        .await
        .unwrap();
    assert_eq!(query_as(&url, "SELECT count(*) FROM orders").await.unwrap(), ["1"]);

    // Listed; downloadable by the project's admins only.
    let listed = deploys
        .list_backups(authed(
            pb::ListBackupsRequest {
                project_id: project.clone(),
                environment: String::new(),
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.backups, vec![backup.clone()]);
    let download = |token: String| {
        let (mut deploys, project, id) = (deploys.clone(), project.clone(), backup.id.clone());
        async move {
            let mut stream = deploys
                .download_backup(authed(
                    pb::DownloadBackupRequest {
                        project_id: project,
                        backup_id: id,
                    },
                    &token,
                ))
                .await?
                .into_inner();
            let mut bytes = Vec::new();
            while let Some(piece) = stream.message().await? {
                bytes.extend(piece.data);
            }
            Ok::<_, tonic::Status>(bytes)
        }
    };
    let dump = download(ada.clone()).await.unwrap();
    assert!(dump.starts_with(b"PGDMP"), "pg_dump's custom format");
    assert_eq!(download(mallory.clone()).await.unwrap_err().code(), Code::NotFound);

    let restored = deploys
        .restore_database(authed(
            pb::RestoreDatabaseRequest {
                project_id: project.clone(),
                backup_id: backup.id.clone(),
                target_environment: String::new(),
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(restored.id, database.id);
    assert_eq!(query_as(&url, "SELECT count(*) FROM orders").await.unwrap(), ["3"]);
    let later = query_as(&url, "SELECT count(*) FROM later").await.unwrap_err();
    assert!(
        later.contains("does not exist"),
        "the database is as the backup left it: {later}"
    );
    // Restored as the role: it still owns what it has.
    assert_eq!(
        apps.query(
            &database.name,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'orders'"
        )
        .await,
        std::slice::from_ref(&database.name)
    );
    // A backup restored into another environment makes its database.
    let staging = deploys
        .restore_database(authed(
            pb::RestoreDatabaseRequest {
                project_id: project.clone(),
                backup_id: backup.id.clone(),
                target_environment: "staging".to_owned(),
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(staging.environment, "staging");
    assert_eq!(apps.query(&staging.name, "SELECT count(*) FROM orders").await, ["3"]);
    mesh.stop().await;
    apps.stop().await;
}

/// What the app at `host` answers to `method` on `/`.
async fn visit(mesh: &TestMesh, host: &str, method: reqwest::Method) -> String {
    let client = reqwest::Client::new();
    common::deploy::until_served(&client, mesh, host).await;
    client
        .request(method, format!("http://{}/", mesh.http))
        .header("host", format!("{host}.localhost:{}", mesh.http.port()))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_gets_a_preview_with_a_copy_of_productions_data_until_it_closes() {
    let apps = AppsServer::start().await;
    let mesh = mesh(&apps, true).await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let repo = Repo::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apps/express-pg");
    let head = repo.commit_tree("main", &fixture, "express-pg");
    let project = app(&mesh, &ada, "", "", &[]).await;
    let settings = project_pb::ProjectSettings {
        project_id: project.clone(),
        repository_url: repo.url(),
        release_command: "node migrate.js".to_owned(),
        ..Default::default()
    };
    update_settings(&mesh, &ada, settings, &["repository_url", "release_command"]).await;
    create_database(&mesh, &ada, &project, "").await.unwrap();

    // Production: its release command made the table; two visits.
    let live = deploy(&mesh, &ada, &project).await;
    wait_for(
        &mesh,
        &ada,
        &live.id,
        pb::DeploymentState::Live,
        Duration::from_secs(300),
    )
    .await;
    let log = text(&logs(&mesh, &ada, &live.id).await);
    assert!(log.contains("migrated: table visits"), "{log}");
    let label = host_label(&mesh, &ada, &project).await;
    assert_eq!(visit(&mesh, &label, reqwest::Method::POST).await, "visits: 1", "{log}");
    assert_eq!(visit(&mesh, &label, reqwest::Method::POST).await, "visits: 2");
    // The release command ran after a backup of production.
    let backups = mesh
        .deploys()
        .await
        .list_backups(authed(
            pb::ListBackupsRequest {
                project_id: project.clone(),
                environment: String::new(),
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner()
        .backups;
    assert!(
        backups
            .iter()
            .any(|backup| backup.reason() == pb::BackupReason::Release),
        "{backups:?}"
    );

    // A signed pull request event opens the preview.
    let http = reqwest::Client::new();
    let base = format!("http://{}", mesh.http);
    let secret = common::rotate_webhook_secret(&http, &base, &ada, &project).await;
    let event = |action: &str, delivery: &str| {
        // As GitHub sends it: the head in the project's own repository.
        let same = serde_json::json!({"full_name": "ada/app"});
        let body = serde_json::json!({"action": action, "number": 7, "pull_request": {
            "head": {"sha": head, "repo": same}, "base": {"sha": head, "repo": same}}})
        .to_string();
        http.post(format!("{base}/v1/projects/{project}/hooks/git"))
            .header("content-type", "application/json")
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", github_signature(&secret, body.as_bytes()))
            .body(body)
            .send()
    };
    let opened: serde_json::Value = event("opened", "pr-7-open").await.unwrap().json().await.unwrap();
    let preview_id = opened["deploymentId"].as_str().unwrap().to_owned();
    let preview = wait_for(
        &mesh,
        &ada,
        &preview_id,
        pb::DeploymentState::Live,
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(preview.environment, "pr-7");
    let preview_host = format!("{label}--pr-7");
    assert_eq!(visit(&mesh, &preview_host, reqwest::Method::GET).await, "visits: 2");
    // Writes to the preview stay there.
    assert_eq!(visit(&mesh, &preview_host, reqwest::Method::POST).await, "visits: 3");
    assert_eq!(visit(&mesh, &label, reqwest::Method::GET).await, "visits: 2");
    let preview_db = get_database(&mesh, &ada, &project, "pr-7").await.unwrap();

    // Closing the request stops the preview and drops its database.
    let closed = event("closed", "pr-7-close").await.unwrap();
    assert_eq!(closed.status(), 200);
    let stopped = common::deploy::deployments(&mesh, &ada, &project)
        .await
        .into_iter()
        .find(|deployment| deployment.id == preview_id)
        .unwrap();
    assert_eq!(stopped.state(), pb::DeploymentState::Superseded);
    assert!(
        apps.query(
            "postgres",
            &format!("SELECT datname FROM pg_database WHERE datname = '{}'", preview_db.name)
        )
        .await
        .is_empty()
    );
    let gone = get_database(&mesh, &ada, &project, "pr-7").await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(visit(&mesh, &label, reqwest::Method::GET).await, "visits: 2");
    let trail: Vec<String> = mesh
        .deploys()
        .await
        .list_audit_events(authed(
            capsule::proto::audit::v1::ListAuditEventsRequest {
                project_id: project.clone(),
                ..Default::default()
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|event| event.action)
        .collect();
    assert!(
        trail.contains(&"preview.open".to_owned()) && trail.contains(&"preview.close".to_owned()),
        "{trail:?}"
    );
    mesh.stop().await;
    apps.stop().await;
}

/// Anyone may open a pull request on a public repository: a request from
/// a fork (or one that does not say where its head lives) gets no
/// preview, which would run an outsider's code with the project's secrets
/// and a copy of production's data. Its close event changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_from_a_fork_gets_no_preview() {
    let apps = AppsServer::start().await;
    let mesh = mesh(&apps, false).await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let project = app(&mesh, &ada, "", "", &[]).await;
    create_database(&mesh, &ada, &project, "").await.unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}", mesh.http);
    let secret = common::rotate_webhook_secret(&http, &base, &ada, &project).await;
    let head = "a".repeat(40);
    let events = [
        // GitHub and Gitea: the head in another repository.
        (
            "x-github-event",
            "pull_request",
            serde_json::json!({"action": "opened", "number": 3, "pull_request": {
            "head": {"sha": head, "repo": {"full_name": "mallory/app"}},
            "base": {"sha": head, "repo": {"full_name": "ada/app"}}}}),
        ),
        (
            "x-gitea-event",
            "pull_request",
            serde_json::json!({"action": "opened", "number": 4, "pull_request": {
            "head": {"sha": head, "repo": null}, "base": {"sha": head, "repo": {"full_name": "ada/app"}}}}),
        ),
        // Saying nothing of where the head lives is no better.
        (
            "x-github-event",
            "pull_request",
            serde_json::json!({"action": "opened", "number": 5, "pull_request": {"head": {"sha": head}}}),
        ),
        // GitLab: a merge request from another project.
        (
            "x-gitlab-event",
            "Merge Request Hook",
            serde_json::json!({"object_kind": "merge_request", "object_attributes": {
            "iid": 6, "action": "open", "source_project_id": 99, "target_project_id": 1, "last_commit": {"id": head}}}),
        ),
    ];
    for (header, kind, body) in events {
        let body = body.to_string();
        let mut request = http
            .post(format!("{base}/v1/projects/{project}/hooks/git"))
            .header("content-type", "application/json")
            .header(header, kind);
        request = match header {
            "x-gitlab-event" => request.header("x-gitlab-token", &secret),
            "x-gitea-event" => request.header(
                "x-gitea-signature",
                github_signature(&secret, body.as_bytes())
                    .trim_start_matches("sha256=")
                    .to_owned(),
            ),
            _ => request.header("x-hub-signature-256", github_signature(&secret, body.as_bytes())),
        };
        let answer: serde_json::Value = request.body(body).send().await.unwrap().json().await.unwrap();
        assert!(
            answer["deploymentId"].as_str().unwrap_or_default().is_empty(),
            "{answer}"
        );
        assert!(answer["note"].as_str().unwrap().contains("fork"), "{answer}");
    }
    assert!(common::deploy::deployments(&mesh, &ada, &project).await.is_empty());
    let previews = query_as(&mesh.database(ServiceKind::Deploy).url, "SELECT count(*) FROM previews")
        .await
        .unwrap();
    assert_eq!(previews, ["0"]);
    mesh.stop().await;
    apps.stop().await;
}

/// A tenant's data is restored by its own role, never by the server's
/// admin: a CHECK constraint calling a function that tries `RESET ROLE`
/// (which, under an admin's session with SET ROLE, would make it the
/// superuser) gains nothing when its backup is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_backup_never_runs_tenant_code_as_the_servers_admin() {
    let apps = AppsServer::start().await;
    let mesh = mesh(&apps, false).await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let project = app(&mesh, &ada, "", "", &[]).await;
    let database = create_database(&mesh, &ada, &project, "").await.unwrap();
    let url = role_url(&mesh, &apps, &database, &database.name).await;
    query_as(
        &url,
        "CREATE FUNCTION public.escalate(x int) RETURNS boolean LANGUAGE plpgsql AS $$
         DECLARE me text := current_user;
         BEGIN
           BEGIN
             RESET ROLE;
             EXECUTE format('ALTER ROLE %I SUPERUSER', me);
           EXCEPTION WHEN others THEN NULL;
           END;
           RETURN true;
         END $$;
         CREATE TABLE trap (x int CHECK (public.escalate(x)));
         INSERT INTO trap VALUES (1);",
    )
    .await
    .unwrap();
    let mut deploys = mesh.deploys().await;
    let backup = deploys
        .create_backup(authed(
            pb::CreateBackupRequest {
                project_id: project.clone(),
                environment: String::new(),
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner();
    deploys
        .restore_database(authed(
            pb::RestoreDatabaseRequest {
                project_id: project.clone(),
                backup_id: backup.id.clone(),
                target_environment: String::new(),
            },
            &ada,
        ))
        .await
        .unwrap();
    assert_eq!(query_as(&url, "SELECT count(*) FROM trap").await.unwrap(), ["1"]);
    let superuser = apps
        .query(
            "postgres",
            &format!(
                "SELECT rolsuper::text FROM pg_roles WHERE rolname = '{}'",
                database.name
            ),
        )
        .await;
    assert_eq!(
        superuser,
        ["false"],
        "the role made itself a superuser during the restore"
    );
    mesh.stop().await;
    apps.stop().await;
}
