//! Tenants' code against the sandbox: a hostile build probes everything an
//! attacker tries first, and every probe fails while ordinary builds still
//! log, exit and go live. Output floods stay bounded; runners have
//! credentials of their own; secret values are current and masked.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use capsule::{
    config::ServiceKind,
    proto::deploy::v1::{self as pb, DeploymentState},
};
use common::{
    TestMesh, authed,
    deploy::{app, deploy, logs, logs_until, project, rollback, set_variable, text, update_settings, wait_for},
};
use diesel::{QueryableByName, RunQueryDsl, sql_types::Text};
use tonic::Code;

async fn local_runner_mesh(deploy: Vec<(&'static str, &'static str)>) -> TestMesh {
    common::start_with(common::Options {
        local_runner: true,
        deploy,
        ..Default::default()
    })
    .await
}

/// A runner in a role of its own (what `capsule runner` runs) with the
/// deploy service's URL, a registered runner's token and `workdir`.
fn own_runner(
    mesh: &TestMesh,
    token: &str,
    workdir: &std::path::Path,
) -> (
    tokio::task::JoinHandle<anyhow::Result<()>>,
    tokio_util::sync::CancellationToken,
) {
    let settings = [
        (
            "DEPLOY_SERVICE_URL",
            format!("http://{}", mesh.addr(ServiceKind::Deploy)),
        ),
        ("CAPSULE_RUNNER_TOKEN", token.to_owned()),
        ("DEPLOY_RUNNER_WORKDIR", workdir.display().to_string()),
    ];
    let source = move |name: &str| settings.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
    let connection = capsule_runner::config::Connection::from_source(&source).unwrap();
    let config = capsule_runner::config::RunnerConfig::from_source(&source).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let runner = tokio::spawn(capsule_runner::serve(connection, config, stop.clone()));
    (runner, stop)
}

/// A runner in a role of its own: the deploy service's URL and a
/// registered runner's token are all it has, and it takes a deployment,
/// builds it in the sandbox and reports it live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_of_its_own_takes_deployments_with_its_registered_token() {
    let mesh = common::start_with(common::Options::default()).await;
    let (runner_id, token) = mesh.runner("build-eu-1").await;
    let workdir = tempfile::tempdir().unwrap();
    let (runner, stop) = own_runner(&mesh, &token, workdir.path());

    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = project(&mesh, &alice, "echo built by a runner of its own", &[]).await;
    let deployment = deploy(&mesh, &alice, &project_id).await;
    let live = wait_for(
        &mesh,
        &alice,
        &deployment.id,
        DeploymentState::Live,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(live.runner_id, runner_id, "the runner that claimed it ran it");
    assert!(
        text(&logs(&mesh, &alice, &deployment.id).await).contains("built by a runner of its own"),
        "its output reached the logs"
    );
    stop.cancel();
    runner.await.unwrap().unwrap();
}

/// A runner that stops after the build (an upgrade, a restart) leaves the
/// deployment to its lease; the runner that claims it next starts the
/// release that build kept, without building again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_restarted_after_the_build_starts_the_kept_release_without_building() {
    let mesh = common::start_with(common::Options {
        deploy: vec![("DEPLOY_LEASE_SECS", "2")],
        ..Default::default()
    })
    .await;
    let (_, token) = mesh.runner("build-eu-1").await;
    let workdir = tempfile::tempdir().unwrap();
    let (runner, stop) = own_runner(&mesh, &token, workdir.path());
    let (alice, _) = mesh.user("alice@example.com").await;
    // Slow to answer: the runner stops while the app starts.
    let project_id = app(
        &mesh,
        &alice,
        "echo compiled once > artefact && echo building now",
        "sleep 3; exec python3 -m http.server \"$PORT\"",
        &[],
    )
    .await;
    let deployment = deploy(&mesh, &alice, &project_id).await;
    logs_until(&mesh, &alice, &deployment.id, "building → deploying").await;
    stop.cancel();
    runner.await.unwrap().unwrap();

    let (runner, stop) = own_runner(&mesh, &token, workdir.path());
    let live = wait_for(
        &mesh,
        &alice,
        &deployment.id,
        DeploymentState::Live,
        Duration::from_secs(60),
    )
    .await;
    let output = text(&logs(&mesh, &alice, &deployment.id).await);
    assert!(output.contains("stopped renewing its lease"), "{output}");
    assert!(
        output.contains(&format!(
            "starting release {} as it was built: no build, no release command",
            live.artifact_digest
        )),
        "{output}"
    );
    let built = output.lines().filter(|line| *line == "building now").count();
    assert_eq!(built, 1, "built once:\n{output}");
    stop.cancel();
    runner.await.unwrap().unwrap();
}

/// A deployment's processes share one memory limit (its cgroup): the
/// project's own share, within the platform's maximum, or the runner's
/// default. A build that allocates past it is killed and says so, and so
/// is a live app, which is then not restarted past its limit of restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_memory_a_build_or_an_app_is_killed_and_reported_out_of_memory() {
    let mesh = local_runner_mesh(vec![
        ("DEPLOY_SANDBOX_TOTAL_MEMORY_MB", "128"),
        ("DEPLOY_MAX_RESTARTS", "0"),
        ("DEPLOY_START_TIMEOUT_SECS", "20"),
    ])
    .await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let hog = "python3 -c \"x = b'\\x01' * (300 << 20); print(len(x))\"";
    let build = project(&mesh, &ada, hog, &[]).await;
    let resources = |memory_mb| capsule::proto::project::v1::ProjectSettings {
        project_id: build.clone(),
        resources: Some(capsule::proto::project::v1::Resources {
            memory_mb,
            cpu_millis: 500,
            processes: 64,
            replicas: 0,
        }),
        ..Default::default()
    };
    // Past the platform's maximum (PROJECT_MAX_MEMORY_MB, 4096): refused,
    // and nothing changes.
    let refused = mesh
        .projects()
        .await
        .update_project_settings(authed(
            capsule::proto::project::v1::UpdateProjectSettingsRequest {
                settings: Some(resources(8192)),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["resources".into()],
                }),
            },
            &ada,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(common::violated_fields(&refused), ["settings.resources.memory_mb"]);
    let why = tonic_types::StatusExt::get_details_bad_request(&refused)
        .unwrap()
        .field_violations[0]
        .description
        .clone();
    assert!(
        why.contains("at most 4096 MiB") && why.contains("PROJECT_MAX_MEMORY_MB"),
        "{why}"
    );
    update_settings(&mesh, &ada, resources(96), &["resources"]).await;
    let failed = deploy(&mesh, &ada, &build).await;
    let failed = wait_for(
        &mesh,
        &ada,
        &failed.id,
        DeploymentState::Failed,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        failed.status_message, "build killed: out of memory at 96 MiB",
        "{failed:?}"
    );
    let output = text(&logs(&mesh, &ada, &failed.id).await);
    assert!(
        output.contains("sandbox share: 96 MiB of memory, 0.5 CPU, 64 processes (the project's resources"),
        "{output}"
    );

    // Serves, then grows past the limit a second later.
    let grows = "exec python3 -c \"import http.server, os, threading, time\n\
        server = http.server.HTTPServer(('0.0.0.0', int(os.environ['PORT'])), http.server.SimpleHTTPRequestHandler)\n\
        threading.Thread(target=server.serve_forever, daemon=True).start()\n\
        time.sleep(3)\n\
        x = b'\\x01' * (300 << 20)\n\
        time.sleep(60)\"";
    let app_id = app(&mesh, &ada, "true", grows, &[]).await;
    let live = deploy(&mesh, &ada, &app_id).await;
    wait_for(&mesh, &ada, &live.id, DeploymentState::Live, Duration::from_secs(30)).await;
    let crashed = wait_for(&mesh, &ada, &live.id, DeploymentState::Crashed, Duration::from_secs(60)).await;
    assert!(
        crashed
            .status_message
            .contains("it was killed: out of memory at 128 MiB"),
        "{crashed:?}"
    );
}

/// A shell test that prints `probe NAME: OPEN` when the attack worked and
/// `probe NAME: blocked` when it did not.
fn probe(name: &str, attack: &str) -> String {
    format!("if {attack}; then echo 'probe {name}: OPEN'; else echo 'probe {name}: blocked'; fi\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_build_reaches_nothing_and_an_ordinary_one_still_goes_live() {
    let mesh = local_runner_mesh(Vec::new()).await;
    // A victim whose app is live, its secret in its process's environment.
    let (bob, _) = mesh.user("bob@example.com").await;
    let victim = app(
        &mesh,
        &bob,
        "echo built by bob",
        "exec python3 -m http.server \"$PORT\"",
        &[("BOB_SECRET", "bob-very-secret-0042", true)],
    )
    .await;
    let victim_deployment = deploy(&mesh, &bob, &victim).await;
    wait_for(
        &mesh,
        &bob,
        &victim_deployment.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    let victim_logs = text(&logs(&mesh, &bob, &victim_deployment.id).await);
    assert!(victim_logs.contains("built by bob"), "{victim_logs}");

    let (mallory, _) = mesh.user("mallory@example.com").await;
    let deploy_port = mesh.addr(ServiceKind::Deploy).port();
    let checkout = env!("CARGO_MANIFEST_DIR");
    let postgres = std::env::var("CAPSULE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut build = String::from("echo \"uid=$(id -u)\"\n");
    build += &probe("root", "[ \"$(id -u)\" = 0 ]");
    build += &probe(
        "environments",
        "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -q -e bob-very-secret -e test-internal-secret",
    );
    build += &probe("processes", "[ \"$(ls -d /proc/[0-9]* | wc -l)\" -gt 8 ]");
    build += &probe("postgres", &format!("psql '{postgres}' -c 'select 1' >/dev/null 2>&1"));
    build += &probe(
        "grpc-port",
        &format!("python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {deploy_port}), 2)' 2>/dev/null"),
    );
    build += &probe("signal-service", &format!("kill -0 {} 2>/dev/null", std::process::id()));
    build += &probe("write-etc", "echo x > /etc/capsule-probe 2>/dev/null");
    build += &probe("write-usr", "touch /usr/capsule-probe 2>/dev/null");
    build += &probe("checkout", &format!("[ -e '{checkout}/Cargo.toml' ]"));
    build += &probe("other-workdirs", "ls /tmp/capsule-runner-* 2>/dev/null | grep -q .");
    build += &probe("capabilities", "grep -q 'CapEff:.*[1-9a-f]' /proc/self/status");
    build += &probe("new-user-namespace", "unshare -U true 2>/dev/null");
    build += &probe("workspace-write", "! echo mine > /workspace/file");
    let handoff = mesh.handoff_socket().unwrap();
    build += &probe(
        "handoff-socket",
        &format!(
            "python3 -c 'import socket; socket.socket(socket.AF_UNIX).connect(\"{}\")' 2>/dev/null",
            handoff.display()
        ),
    );
    build += "setsid sleep 1000 &\necho \"probes-done-$((6 * 7))\"\nwait\n";
    let attacker = project(&mesh, &mallory, &build, &[]).await;
    let attack = deploy(&mesh, &mallory, &attacker).await;
    let all = logs_until(&mesh, &mallory, &attack.id, "probes-done-42").await;
    let probes: Vec<&str> = all.lines().filter(|line| line.starts_with("probe ")).collect();
    assert_eq!(probes.len(), 14, "every probe ran:\n{all}");
    for line in &probes {
        assert!(line.ends_with(": blocked"), "{line}\n{all}");
    }
    let uid: u32 = all
        .lines()
        .find_map(|line| line.strip_prefix("uid="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(uid > 0 && uid != nix_uid(), "the build runs as uid {uid}");

    // Cancel ends everything in the sandbox, the setsid sleep included.
    assert!(common::processes_of(uid) > 0);
    mesh.deploys()
        .await
        .cancel_deployment(authed(
            pb::CancelDeploymentRequest {
                deployment_id: attack.id.clone(),
            },
            &mallory,
        ))
        .await
        .unwrap();
    let canceled = Instant::now();
    while common::processes_of(uid) > 0 {
        assert!(
            canceled.elapsed() < Duration::from_secs(2),
            "the sandbox outlived its cancel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The victim still runs.
    let still = wait_for(
        &mesh,
        &bob,
        &victim_deployment.id,
        DeploymentState::Live,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(still.state, DeploymentState::Live as i32);
    mesh.stop().await;
}

/// The runner's handoff socket gives a connection that ends inside a
/// tenant's sandbox: only the runner's own user (or root) is answered —
/// another user of the host gets nothing, even once the socket is opened
/// to everyone; its directory and itself are the runner's alone; a
/// request that is no address gets no answer.
#[tokio::test]
async fn the_handoff_socket_answers_no_other_user() {
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};

    use capsule::handoff::{Answer, receive};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sockets").join("handoff.sock");
    let stop = tokio_util::sync::CancellationToken::new();
    let handoff = Arc::new(capsule_runner::handoff::Handoff::default());
    tokio::spawn(handoff.listen(path.clone(), stop.clone()));
    let started = Instant::now();
    while !path.exists() {
        assert!(started.elapsed() < Duration::from_secs(5), "no socket at {path:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(path.parent().unwrap()), mode(&path)), (0o700, 0o600));

    let mut own = tokio::net::UnixStream::connect(&path).await.unwrap();
    own.write_all(b"127.0.0.1:9\n").await.unwrap();
    assert_eq!(receive(&own).await.unwrap().0, Answer::Dial);
    let mut junk = tokio::net::UnixStream::connect(&path).await.unwrap();
    junk.write_all(b"not an address\n").await.unwrap();
    assert_eq!(junk.read(&mut [0u8; 8]).await.unwrap_or(0), 0, "junk was answered");

    if nix_uid() == 0 {
        for opened in [dir.path(), path.parent().unwrap()] {
            std::fs::set_permissions(opened, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let asked = tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3")
                .args([
                    "-c",
                    "import socket, sys\n\
                     s = socket.socket(socket.AF_UNIX)\n\
                     s.connect(sys.argv[1])\n\
                     s.settimeout(5)\n\
                     try:\n    s.sendall(b'127.0.0.1:9\\n')\n    print(repr(s.recv(16)))\n\
                     except (BrokenPipeError, ConnectionResetError):\n    print('closed')\n",
                ])
                .arg(&path)
                .uid(65534)
                .gid(65534)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let said = String::from_utf8_lossy(&asked.stdout);
        assert!(
            asked.status.success() && (said.trim() == "b''" || said.trim() == "closed"),
            "another user was answered: {said} {}",
            String::from_utf8_lossy(&asked.stderr)
        );
    }
    stop.cancel();
}

fn nix_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_mb_line_and_a_flood_of_empty_lines_keep_memory_and_rows_bounded() {
    let mesh = local_runner_mesh(vec![
        ("DEPLOY_RUNNER_MAX_OUTPUT_BYTES", "1073741824"),
        ("DEPLOY_MAX_LOG_LINES", "2000"),
    ])
    .await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let build = "echo start; head -c 300000000 /dev/zero | tr '\\0' a; echo; \
                 head -c 10000000 /dev/zero | tr '\\0' '\\n'; echo end";
    let project_id = project(&mesh, &alice, build, &[]).await;

    let baseline = rss_bytes();
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let deployment = deploy(&mesh, &alice, &project_id).await;
    wait_for(
        &mesh,
        &alice,
        &deployment.id,
        DeploymentState::Live,
        Duration::from_secs(120),
    )
    .await;
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!("resident memory grew by {} KiB", growth / 1024);
    assert!(
        growth < 64 * 1024 * 1024,
        "the service grew by {} MiB while 310 MB of output went through",
        growth / (1024 * 1024)
    );

    let rows: Vec<pb::LogLine> = all_logs(&mesh, &alice, &deployment.id).await;
    assert!(rows.len() <= 2010, "{} rows kept", rows.len());
    let cut = rows
        .iter()
        .find(|line| line.text.starts_with("aaaa"))
        .expect("the long line, cut");
    assert!(cut.text.len() < 5000, "{}", cut.text.len());
    assert!(cut.text.ends_with("bytes cut]"), "{}", &cut.text[cut.text.len() - 40..]);
    let all = text(&rows);
    assert!(
        all.contains("log limit of 2000 lines reached") || all.contains("lines dropped"),
        "the flood is said to be cut short"
    );
    mesh.stop().await;
}

/// Every log line of a deployment, page by page.
async fn all_logs(mesh: &TestMesh, token: &str, id: &str) -> Vec<pb::LogLine> {
    let mut client = mesh.deploys().await;
    let mut lines = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .get_logs(authed(
                pb::GetLogsRequest {
                    deployment_id: id.to_owned(),
                    after_sequence: after,
                    page_size: 1000,
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        lines.extend(page.lines);
        if page.next_after_sequence == 0 {
            return lines;
        }
        after = page.next_after_sequence;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_answer_only_for_their_own_claims_and_a_deleted_runner_is_refused_at_once() {
    let mesh = common::start().await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let project_id = project(&mesh, &alice, "true", &[("KEY", "runner-secret-77", true)]).await;
    let deployment = deploy(&mesh, &alice, &project_id).await;
    let (first_id, first) = mesh.runner("first").await;
    let (_, second) = mesh.runner("second").await;
    let mut client = mesh.deploys().await;
    let claimed = client
        .claim_deployment(authed(pb::ClaimDeploymentRequest::default(), &first))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(claimed.deployment.as_ref().unwrap().id, deployment.id);
    assert_eq!(claimed.deployment.unwrap().runner_id, first_id, "bound to the claimer");
    assert_eq!(claimed.snapshot.unwrap().secret_names, ["KEY"]);

    let report = client
        .report_status(authed(
            pb::ReportStatusRequest {
                deployment_id: deployment.id.clone(),
                state: DeploymentState::Failed as i32,
                ..Default::default()
            },
            &second,
        ))
        .await
        .unwrap_err();
    assert_eq!(report.code(), Code::PermissionDenied, "{report:?}");
    let append = client
        .append_logs(authed(
            pb::AppendLogsRequest {
                deployment_id: deployment.id.clone(),
                entries: vec![pb::LogEntry {
                    stream: pb::LogStream::Stdout as i32,
                    text: "forged".into(),
                    process: String::new(),
                }],
                ..Default::default()
            },
            &second,
        ))
        .await
        .unwrap_err();
    assert_eq!(append.code(), Code::PermissionDenied);
    let heartbeat = client
        .heartbeat(authed(
            pb::HeartbeatRequest {
                deployment_id: deployment.id.clone(),
                ..Default::default()
            },
            &second,
        ))
        .await
        .unwrap_err();
    assert_eq!(heartbeat.code(), Code::PermissionDenied);

    // Deleted: refused at once, and its deployment is free for another.
    let admin = mesh.admin("root@example.com").await;
    let listed = client
        .list_runners(authed(pb::ListRunnersRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.runners.iter().any(|runner| runner.name == "first"));
    assert!(!format!("{listed:?}").contains(&first), "tokens are never listed");
    client
        .delete_runner(authed(
            pb::DeleteRunnerRequest {
                runner_id: first_id.clone(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let refused = client
        .heartbeat(authed(
            pb::HeartbeatRequest {
                deployment_id: deployment.id.clone(),
                ..Default::default()
            },
            &first,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let taken_over = client
        .claim_deployment(authed(pb::ClaimDeploymentRequest::default(), &second))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(taken_over.deployment.unwrap().id, deployment.id);

    // The runner API is not on the REST bridge.
    let http = reqwest::Client::new();
    let response = http
        .post(format!("http://{}/v1/runners/any:claim", mesh.http))
        .bearer_auth(&second)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(matches!(response.status().as_u16(), 404 | 405), "{}", response.status());
    mesh.stop().await;
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    text: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_rest_only_in_the_project_database_a_redeploy_gets_the_current_value_and_encodings_are_masked() {
    let mesh = local_runner_mesh(Vec::new()).await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let build = "printf 'digest '; printf %s \"$TOKEN\" | sha256sum | cut -c1-16; \
                 printf 'b64 '; printf %s \"$TOKEN\" | base64; \
                 printf 'hex '; printf %s \"$TOKEN\" | od -An -tx1 | tr -d ' \\n'; echo";
    // The app says which value it started with, too: a rollback starts the
    // release it kept, with the variables as they are then.
    let start = "printf 'start digest '; printf %s \"$TOKEN\" | sha256sum | cut -c1-16; \
                 exec python3 -m http.server \"$PORT\"";
    let project_id = app(&mesh, &alice, build, start, &[("TOKEN", "first-secret-value-1", true)]).await;
    let first = deploy(&mesh, &alice, &project_id).await;
    wait_for(&mesh, &alice, &first.id, DeploymentState::Live, Duration::from_secs(30)).await;
    let first_logs = text(&logs(&mesh, &alice, &first.id).await);
    assert!(
        first_logs.contains(&format!("digest {}", digest("first-secret-value-1"))),
        "{first_logs}"
    );
    assert!(first_logs.contains("b64 ********"), "{first_logs}");
    assert!(first_logs.contains("hex ********"), "{first_logs}");

    // Rotated: a rollback to the first deployment starts with the new value.
    set_variable(&mesh, &alice, &project_id, "TOKEN", "second-secret-value-2", true).await;
    let rollback = rollback(&mesh, &alice, &first.id).await;
    wait_for(
        &mesh,
        &alice,
        &rollback.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    let rollback_logs = text(&logs(&mesh, &alice, &rollback.id).await);
    assert!(
        rollback_logs.contains(&format!("start digest {}", digest("second-secret-value-2"))),
        "{rollback_logs}"
    );

    // Nothing of either value anywhere in the deploy database.
    let mut conn = mesh.database(ServiceKind::Deploy).connect();
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT snapshot::text AS text FROM deployments \
         UNION ALL SELECT line FROM deployment_logs \
         UNION ALL SELECT status_message FROM deployments",
    )
    .load(&mut conn)
    .unwrap();
    for row in rows {
        assert!(
            !row.text.contains("secret-value"),
            "a secret value rests in the deploy database: {}",
            row.text
        );
    }
    mesh.stop().await;
}

fn digest(value: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(value.as_bytes())
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The invariant of ARCHITECTURE.md: in the deploy service and the runner,
/// only the sandbox builds a process command (and the source module, for
/// git on the operator's repositories, the disk module, for mounting the
/// runner's own images, and the operator's DNS-01 hook, given only a
/// record name of letters, digits, dots, hyphens and underscores and a
/// base64url value, and PostgreSQL's pg_dump and pg_restore, given a name
/// Capsule generated and run as that database's own role), so every user
/// command goes through the sandbox.
#[test]
fn only_the_sandbox_spawns_processes_in_the_deploy_service_and_the_runner() {
    let services = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("services");
    let mut offenders = Vec::new();
    let mut dirs = vec![services.join("deploy/src"), services.join("runner/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs")
                && !path.ends_with("runner/src/sandbox.rs")
                && !path.ends_with("runner/src/source.rs")
                && !path.ends_with("runner/src/disk.rs")
                && !path.ends_with("deploy/src/acme/hook.rs")
                && !path.ends_with("deploy/src/databases/dump.rs")
            {
                let source = std::fs::read_to_string(&path).unwrap();
                if source.contains("Command::new") || source.contains("process::Command") {
                    offenders.push(path.display().to_string());
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "processes spawned outside the sandbox: {offenders:?}"
    );
}
