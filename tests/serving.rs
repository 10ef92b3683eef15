//! Deployments that serve: a site from a git repository, reached through
//! the gateway by Host, replaced without a failed request; apps that never
//! listen or keep crashing; staging beside production; apps stopped when
//! their project is deleted or their owner deactivated.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use capsule::proto::{auth::v1 as auth_pb, deploy::v1::DeploymentState, project::v1 as project_pb};
use common::{
    TestMesh, authed,
    deploy::{app, create, fetch, logs, set_variable, text, until_served, update_settings, wait_for},
    git::{REPOSITORIES, Repo},
};

const SITE: &str = "exec python3 -m http.server \"$PORT\"";

async fn mesh(extra: &[(&'static str, &'static str)]) -> TestMesh {
    let mut deploy = vec![
        ("DEPLOY_LOCAL_REPOSITORIES", REPOSITORIES),
        ("DEPLOY_DRAIN_SECS", "2"),
        ("DEPLOY_START_TIMEOUT_SECS", "20"),
        ("DEPLOY_REAP_INTERVAL_SECS", "1"),
    ];
    deploy.extend_from_slice(extra);
    common::start_with(common::Options {
        local_runner: true,
        deploy,
        ..Default::default()
    })
    .await
}

/// A project serving `site`'s repository with `start`; its id and host label.
pub async fn site_project(mesh: &TestMesh, token: &str, site: &Repo, start: &str) -> (String, String) {
    let id = app(mesh, token, "", start, &[]).await;
    let settings = project_pb::ProjectSettings {
        project_id: id.clone(),
        repository_url: site.url(),
        ..Default::default()
    };
    update_settings(mesh, token, settings, &["repository_url"]).await;
    let mut projects = mesh.projects().await;
    let project = projects
        .get_project(authed(project_pb::GetProjectRequest { project_id: id.clone() }, token))
        .await
        .unwrap()
        .into_inner();
    assert!(project.url.contains(&project.host_label), "{project:?}");
    (id, project.host_label)
}

/// Waits (up to 5 s) until the app at `host` answers 502.
async fn assert_soon_502(mesh: &TestMesh, host: &str, what: &str) {
    let started = Instant::now();
    loop {
        let (status, _) = fetch(&reqwest::Client::new(), mesh, host, "/").await.unwrap();
        if status == 502 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{what}, not {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_from_git_is_served_by_host_and_replaced_without_a_failed_request() {
    let mesh = mesh(&[]).await;
    let site = Repo::new();
    let first_sha = site.commit("main", "<h1>version one</h1>", "<h1>version one</h1>");
    let (alice, _) = mesh.user("alice@example.com").await;
    let (project_id, label) = site_project(&mesh, &alice, &site, SITE).await;
    let client = reqwest::Client::new();

    let (status, body) = fetch(&client, &mesh, &label, "/index.html").await.unwrap();
    assert_eq!(status, 502, "nothing is live yet: {body}");
    assert!(body.contains("No app is live here"), "{body}");

    let first = create(&mesh, &alice, &project_id, "", "").await.unwrap();
    let first = wait_for(&mesh, &alice, &first.id, DeploymentState::Live, Duration::from_secs(30)).await;
    assert_eq!(first.commit_sha, first_sha);
    assert!(first.url.contains(&label), "{first:?}");
    until_served(&client, &mesh, &label).await;
    let (status, body) = fetch(&client, &mesh, &label, "/index.html").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "<h1>version one</h1>"));
    // The API is still the API on the gateway's own host.
    let health = client
        .get(format!("http://{}/healthz", mesh.http))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // A second commit, deployed while a client fetches every 20 ms.
    let second_sha = site.commit("main", "<h1>version two</h1>", "<h1>version two</h1>");
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (client, done, label, addr) = (client.clone(), done.clone(), label.clone(), mesh.http);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let response = client
                    .get(format!("http://{addr}/index.html"))
                    .header("host", format!("{label}.localhost:{}", addr.port()))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                let seen_now = match response {
                    Ok(response) if response.status() == 200 => response.text().await.unwrap_or_default(),
                    Ok(response) => format!("status {}", response.status()),
                    Err(err) => format!("error {err}"),
                };
                seen.push(seen_now);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    let second = create(&mesh, &alice, &project_id, "", "").await.unwrap();
    let second = wait_for(
        &mesh,
        &alice,
        &second.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(second.commit_sha, second_sha);
    wait_for(
        &mesh,
        &alice,
        &first.id,
        DeploymentState::Superseded,
        Duration::from_secs(5),
    )
    .await;
    // Past the old one's drain, SIGTERM and end.
    tokio::time::sleep(Duration::from_secs(4)).await;
    done.store(true, Ordering::Relaxed);
    let seen = watcher.await.unwrap();
    let failures: Vec<&String> = seen.iter().filter(|body| !body.starts_with("<h1>")).collect();
    assert!(failures.is_empty(), "failed fetches during the switch: {failures:?}");
    let switch = seen
        .iter()
        .position(|body| body.contains("two"))
        .expect("the new version was served");
    assert!(
        seen[switch..].iter().all(|body| body.contains("two")),
        "never the old version after the switch"
    );
    assert!(seen[..switch].iter().all(|body| body.contains("one")));
    assert!(
        switch > 0 && seen.len() - switch > 10,
        "{} fetches, switch at {switch}",
        seen.len()
    );

    // The app's own output is in the logs, after the build's.
    let runtime = text(&logs(&mesh, &alice, &second.id).await);
    assert!(runtime.contains("GET /index.html"), "{runtime}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_never_listens_fails_with_the_reason_and_one_that_keeps_exiting_crashes() {
    let mesh = mesh(&[("DEPLOY_START_TIMEOUT_SECS", "3"), ("DEPLOY_MAX_RESTARTS", "1")]).await;
    let site = Repo::new();
    site.commit("main", "hello", "hello");
    let (alice, _) = mesh.user("alice@example.com").await;

    let (silent, _) = site_project(&mesh, &alice, &site, "sleep 60").await;
    let deployment = create(&mesh, &alice, &silent, "", "").await.unwrap();
    let failed = wait_for(
        &mesh,
        &alice,
        &deployment.id,
        DeploymentState::Failed,
        Duration::from_secs(30),
    )
    .await;
    assert!(failed.status_message.contains("listen on $PORT"), "{failed:?}");

    // Serves for two seconds, then exits: restarted once, then CRASHED.
    let (flaky, label) = site_project(
        &mesh,
        &alice,
        &site,
        "python3 -m http.server \"$PORT\" & sleep 2; echo going down; exit 3",
    )
    .await;
    let deployment = create(&mesh, &alice, &flaky, "", "").await.unwrap();
    wait_for(
        &mesh,
        &alice,
        &deployment.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    let crashed = wait_for(
        &mesh,
        &alice,
        &deployment.id,
        DeploymentState::Crashed,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(crashed.exit_code, Some(3));
    let all = text(&logs(&mesh, &alice, &deployment.id).await);
    assert!(all.contains("exited with code 3; restarting"), "{all}");
    assert!(all.contains("going down"), "{all}");
    assert_soon_502(&mesh, &label, "a crashed app is 502").await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_command_runs_between_build_and_start_and_a_failing_one_keeps_the_live_version() {
    let mesh = mesh(&[]).await;
    let site = Repo::new();
    site.commit("main", "<h1>version one</h1>", "<h1>version one</h1>");
    let (alice, _) = mesh.user("alice@example.com").await;
    let (project_id, label) = site_project(&mesh, &alice, &site, SITE).await;
    set_variable(&mesh, &alice, &project_id, "RELEASE_TOKEN", "s3cret-value", true).await;
    // The release phase runs after the build, in its directory, with the
    // deployment's variables; the app starts after it and serves what it
    // wrote.
    let settings = |release: &str| project_pb::ProjectSettings {
        project_id: project_id.clone(),
        build_command: "echo built > built.txt".to_owned(),
        release_command: release.to_owned(),
        ..Default::default()
    };
    let release = "test -f built.txt && echo \"released after $(cat built.txt)\" > release.txt && \
                   echo \"token of ${#RELEASE_TOKEN} characters\"";
    update_settings(&mesh, &alice, settings(release), &["build_command", "release_command"]).await;
    let first = create(&mesh, &alice, &project_id, "", "").await.unwrap();
    wait_for(&mesh, &alice, &first.id, DeploymentState::Live, Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    let (status, body) = fetch(&client, &mesh, &label, "/release.txt").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "released after built\n"));
    let all = text(&logs(&mesh, &alice, &first.id).await);
    let (build, release, start) = (
        all.find("$ echo built").unwrap(),
        all.find("token of 12 characters").unwrap(),
        all.find("$ exec python3").unwrap(),
    );
    assert!(build < release && release < start, "{all}");

    // A release command that fails fails its deployment, before anything
    // starts: version one keeps serving.
    site.commit("main", "<h1>version two</h1>", "<h1>version two</h1>");
    update_settings(&mesh, &alice, settings("echo migrating; exit 3"), &["release_command"]).await;
    let second = create(&mesh, &alice, &project_id, "", "").await.unwrap();
    let failed = wait_for(
        &mesh,
        &alice,
        &second.id,
        DeploymentState::Failed,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(failed.status_message, "release command exited with code 3");
    assert_eq!(failed.exit_code, Some(3));
    let all = text(&logs(&mesh, &alice, &second.id).await);
    assert!(
        all.contains("migrating") && all.contains("release command failed: exit code 3"),
        "{all}"
    );
    assert!(!all.contains("$ exec python3"), "nothing started: {all}");
    let (status, body) = fetch(&client, &mesh, &label, "/index.html").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "<h1>version one</h1>"));
    wait_for(&mesh, &alice, &first.id, DeploymentState::Live, Duration::from_secs(1)).await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_and_production_are_live_side_by_side() {
    let mesh = mesh(&[]).await;
    let site = Repo::new();
    site.commit("main", "<p>same site</p>", "<p>same site</p>");
    let (alice, _) = mesh.user("alice@example.com").await;
    let (project_id, label) = site_project(&mesh, &alice, &site, SITE).await;
    let production = create(&mesh, &alice, &project_id, "", "production").await.unwrap();
    let staging = create(&mesh, &alice, &project_id, "", "staging").await.unwrap();
    wait_for(
        &mesh,
        &alice,
        &production.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    wait_for(
        &mesh,
        &alice,
        &staging.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_for(
        &mesh,
        &alice,
        &production.id,
        DeploymentState::Live,
        Duration::from_secs(1),
    )
    .await;
    let client = reqwest::Client::new();
    for host in [label.clone(), format!("{label}--staging")] {
        let (status, body) = fetch(&client, &mesh, &host, "/index.html").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "<p>same site</p>"), "{host}");
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_project_or_deactivating_its_owner_stops_its_app() {
    let mesh = mesh(&[]).await;
    let site = Repo::new();
    site.commit("main", "<p>soon gone</p>", "soon gone");
    let admin = mesh.admin("reaper-admin@example.com").await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let (bob, bob_id) = mesh.user("bob@example.com").await;
    let (alice_project, alice_label) = site_project(&mesh, &alice, &site, SITE).await;
    let (bob_project, bob_label) = site_project(&mesh, &bob, &site, SITE).await;
    let alice_live = create(&mesh, &alice, &alice_project, "", "").await.unwrap();
    let bob_live = create(&mesh, &bob, &bob_project, "", "").await.unwrap();
    for id in [&alice_live.id, &bob_live.id] {
        wait_for(&mesh, &admin, id, DeploymentState::Live, Duration::from_secs(30)).await;
    }

    mesh.projects()
        .await
        .delete_project(authed(
            project_pb::DeleteProjectRequest {
                project_id: alice_project.clone(),
            },
            &alice,
        ))
        .await
        .unwrap();
    mesh.auth()
        .await
        .deactivate_user(authed(auth_pb::DeactivateUserRequest { user_id: bob_id }, &admin))
        .await
        .unwrap();

    for (id, label, why) in [
        (&alice_live.id, &alice_label, "the project was deleted"),
        (&bob_live.id, &bob_label, "the owner's account was deactivated"),
    ] {
        let stopped = wait_for(&mesh, &admin, id, DeploymentState::Superseded, Duration::from_secs(10)).await;
        assert_eq!(stopped.status_message, why, "{stopped:?}");
        assert_soon_502(&mesh, label, why).await;
    }
    // The deactivated owner's session went with the account.
    let refused = mesh
        .auth()
        .await
        .get_me(authed(auth_pb::GetMeRequest {}, &bob))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    mesh.stop().await;
}

/// An app that completes a WebSocket handshake (RFC 6455's accept key) and
/// then echoes what it reads, upper-cased.
const UPGRADE_ECHO: &str = r#"exec python3 - <<'PY'
import base64, hashlib, os, socket, threading
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def serve(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            return
        head += chunk
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n\r\n")[0].split(b"\r\n")[1:])
    headers = {name.lower(): value for name, value in headers.items()}
    if headers.get(b"upgrade", b"").lower() != b"websocket":
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        return conn.close()
    accept = base64.b64encode(hashlib.sha1(headers[b"sec-websocket-key"] + GUID).digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: " + accept + b"\r\n\r\n")
    while chunk := conn.recv(4096):
        conn.sendall(chunk.upper())
    conn.close()
server = socket.create_server(("", int(os.environ["PORT"])))
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
PY"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_passes_through_the_gateway_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mesh = mesh(&[]).await;
    let site = Repo::new();
    site.commit("main", "unused", "an upgrade echo app");
    let (alice, _) = mesh.user("alice@example.com").await;
    let (project_id, label) = site_project(&mesh, &alice, &site, UPGRADE_ECHO).await;
    let deployment = create(&mesh, &alice, &project_id, "", "").await.unwrap();
    wait_for(
        &mesh,
        &alice,
        &deployment.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    until_served(&reqwest::Client::new(), &mesh, &label).await;

    let mut stream = tokio::net::TcpStream::connect(mesh.http).await.unwrap();
    let request = format!(
        "GET /chat HTTP/1.1\r\nhost: {label}.localhost:{}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        mesh.http.port()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed during the handshake: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // The example key of RFC 6455 section 1.3 and its accept value.
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    for message in ["hello", "over the same connection"] {
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8(echoed).unwrap(), message.to_uppercase());
    }
    handed_over(&mesh, &label).await;
    mesh.stop().await;
}

/// An app that speaks HTTP/2 over cleartext (Node's `http2` server, which
/// speaks nothing else) is reached over HTTP/2, a gRPC client's
/// `te: trailers` kept; an HTTP/1.1 app beside it keeps HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_speaks_http2_is_reached_over_http2() {
    const H2C: &str = r#"exec node -e '
require("http2").createServer((req, res) => {
  res.setHeader("content-type", "text/plain");
  res.addTrailers({ "grpc-status": "0" });
  res.end("over " + req.httpVersion + ", te " + (req.headers.te || "none"));
}).listen(process.env.PORT)'"#;
    let mesh = mesh(&[]).await;
    let site = Repo::new();
    site.commit("main", "unused", "an h2c app");
    let (alice, _) = mesh.user("alice@example.com").await;
    let (project_id, label) = site_project(&mesh, &alice, &site, H2C).await;
    let deployment = create(&mesh, &alice, &project_id, "", "").await.unwrap();
    wait_for(
        &mesh,
        &alice,
        &deployment.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    let client = reqwest::Client::new();
    until_served(&client, &mesh, &label).await;
    let (status, body) = fetch(&client, &mesh, &label, "/").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "over 2.0, te none"));
    // A gRPC client's request: HTTP/2 to the gateway, `te: trailers`
    // kept, the app's trailers back.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = h2
        .post(format!("http://{}/", mesh.http))
        .header("host", format!("{label}.localhost:{}", mesh.http.port()))
        .header("te", "trailers")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.text().await.unwrap(), "over 2.0, te trailers");

    // An HTTP/1.1 app keeps HTTP/1.1.
    let (bob, _) = mesh.user("bob@example.com").await;
    let plain = Repo::new();
    plain.commit("main", "plain", "a site");
    let (other, other_label) = site_project(&mesh, &bob, &plain, SITE).await;
    let deployment = create(&mesh, &bob, &other, "", "").await.unwrap();
    wait_for(
        &mesh,
        &bob,
        &deployment.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    until_served(&client, &mesh, &other_label).await;
    assert_eq!(
        fetch(&client, &mesh, &other_label, "/").await.unwrap(),
        (200, "plain".to_owned())
    );
    mesh.stop().await;
}

/// The runner hands the gateway (its own user, on its host) a socket that
/// ends at the app `label` itself, inside its sandbox.
async fn handed_over(mesh: &TestMesh, label: &str) {
    use capsule::handoff::{Answer, receive};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut request = tonic::Request::new(capsule::proto::deploy::v1::WatchRoutesRequest {});
    capsule::auth::as_service(&mut request, "test-internal-secret").unwrap();
    let mut routes = mesh.deploys().await.watch_routes(request).await.unwrap().into_inner();
    let table = routes.message().await.unwrap().unwrap();
    let route = table.routes.iter().find(|route| route.host == label).unwrap();
    let mut lease = tokio::net::UnixStream::connect(mesh.handoff_socket().unwrap())
        .await
        .unwrap();
    lease
        .write_all(format!("{}\n", route.upstream).as_bytes())
        .await
        .unwrap();
    let (answer, socket) = receive(&lease).await.unwrap();
    assert_eq!(answer, Answer::Handed);
    let socket = std::net::TcpStream::from(socket.unwrap());
    // The far end is the app's own port in the sandbox's network.
    assert_eq!(
        socket.peer_addr().unwrap().to_string(),
        format!("127.0.0.1:{}", capsule_runner::sandbox::APP_PORT)
    );
    socket.set_nonblocking(true).unwrap();
    let mut app = tokio::net::TcpStream::from_std(socket).unwrap();
    app.write_all(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    app.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");

    // An address the runner does not serve: dial it.
    let unknown = tokio::net::UnixStream::connect(mesh.handoff_socket().unwrap())
        .await
        .unwrap();
    unknown.writable().await.unwrap();
    unknown.try_write(b"127.0.0.1:9\n").unwrap();
    assert_eq!(receive(&unknown).await.unwrap().0, Answer::Dial);
}

/// The whole mesh — auth, project, the gateway, the deploy service and its
/// one (local) runner — stops and starts again, as `capsule dev` stopped
/// and started again would: the live app serves again from its kept
/// release within 30 s, and no deployment is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_app_serves_again_after_the_mesh_restarts_without_a_new_deployment() {
    let mut mesh = mesh(&[]).await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let id = app(&mesh, &ada, "echo kept > index.html", SITE, &[]).await;
    let live = common::deploy::deploy_live(&mesh, &ada, &id).await;
    let host = common::deploy::host_label(&mesh, &ada, &id).await;
    let client = reqwest::Client::new();
    until_served(&client, &mesh, &host).await;
    assert_eq!(
        fetch(&client, &mesh, &host, "/").await.unwrap(),
        (200, "kept\n".to_owned())
    );

    mesh.restart().await;
    let restarted = Instant::now();
    loop {
        if let Ok((200, body)) = fetch(&client, &mesh, &host, "/").await {
            assert_eq!(body, "kept\n");
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "not served again within 30 s:\n{}",
            text(&logs(&mesh, &ada, &live.id).await)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deployments = common::deploy::deployments(&mesh, &ada, &id).await;
    assert_eq!(deployments.len(), 1, "no deployment created");
    assert_eq!(deployments[0].state(), DeploymentState::Live);
    let output = text(&logs(&mesh, &ada, &live.id).await);
    assert!(
        output.contains(&format!(
            "starting release {} as it was built: no build",
            live.artifact_digest
        )) && output.contains("replica serving on runner"),
        "{output}"
    );
}

/// Release 2 goes live, then keeps exiting: its runner gives up on it
/// (CRASHED), and release 1 serves again from its kept artifact, with no
/// build — a rollback the platform made, in both logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_crashes_soon_after_going_live_is_rolled_back_without_a_build() {
    let mesh = mesh(&[("DEPLOY_MAX_RESTARTS", "1"), ("DEPLOY_RESTART_WINDOW_SECS", "60")]).await;
    let (ada, _) = mesh.user("ada@example.com").await;
    let id = app(&mesh, &ada, "echo one > index.html", SITE, &[]).await;
    let first = common::deploy::deploy_live(&mesh, &ada, &id).await;
    let host = common::deploy::host_label(&mesh, &ada, &id).await;
    let client = reqwest::Client::new();
    until_served(&client, &mesh, &host).await;
    assert_eq!(
        fetch(&client, &mesh, &host, "/").await.unwrap(),
        (200, "one\n".to_owned())
    );

    // Serves for two seconds, then exits; again after its restart.
    let settings = project_pb::ProjectSettings {
        project_id: id.clone(),
        build_command: "echo two > index.html".to_owned(),
        start_command: "exec timeout 2 python3 -m http.server \"$PORT\"".to_owned(),
        ..Default::default()
    };
    update_settings(&mesh, &ada, settings, &["build_command", "start_command"]).await;
    let second = common::deploy::deploy_live(&mesh, &ada, &id).await;
    wait_for(
        &mesh,
        &ada,
        &second.id,
        DeploymentState::Crashed,
        Duration::from_secs(30),
    )
    .await;
    let started = Instant::now();
    loop {
        if let Ok((200, body)) = fetch(&client, &mesh, &host, "/").await
            && body == "one\n"
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "release 1 is not served again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deployments = common::deploy::deployments(&mesh, &ada, &id).await;
    let rollback = deployments
        .iter()
        .find(|deployment| deployment.rollback_of == first.id)
        .expect("a rollback to release 1");
    assert_eq!(rollback.state(), DeploymentState::Live);
    assert_eq!(rollback.artifact_digest, first.artifact_digest);
    let output = text(&logs(&mesh, &ada, &rollback.id).await);
    assert!(
        output.contains(&format!("automatic rollback to {}: {} crashed", first.id, second.id))
            && output.contains("as it was built: no build, no release command")
            && !output.contains("$ echo"),
        "{output}"
    );
    let crashed = text(&logs(&mesh, &ada, &second.id).await);
    assert!(crashed.contains("rolled back automatically"), "{crashed}");
}
