//! Builds need the network (npm, pip, cargo, go fetch their packages), and
//! a build is the tenant's code. Its one way out is the runner's egress
//! proxy, which connects only where the guard allows; everything else —
//! the control plane's ports by address, by name, over IPv6, over UDP,
//! straight or through the proxy — reaches nothing, and the proxy's
//! refusals are in the deployment's egress record.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use capsule::{
    config::ServiceKind,
    proto::deploy::v1::{self as pb, DeploymentState},
};

use super::runner_mesh;
use crate::common::{
    authed,
    deploy::{app, deploy, deploy_live, logs, logs_until, project, text, update_settings, wait_for},
};

/// A build that asks for each of `targets` through the proxy (as a
/// client honouring `HTTPS_PROXY` does), then straight over TCP and UDP,
/// and prints what it got.
fn prober(targets: &[String], straight_tcp: &[SocketAddr], straight_udp: &[SocketAddr]) -> String {
    let list = |items: Vec<String>| {
        items
            .iter()
            .map(|item| format!("{item:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tcp = list(
        straight_tcp
            .iter()
            .map(|a| format!("{}|{}", a.ip(), a.port()))
            .collect(),
    );
    let udp = list(
        straight_udp
            .iter()
            .map(|a| format!("{}|{}", a.ip(), a.port()))
            .collect(),
    );
    let script = format!(
        r#"import os, socket
proxy = os.environ["HTTPS_PROXY"].rsplit(":", 1)
for target in [{targets}]:
    s = socket.create_connection((proxy[0].split("//")[1], int(proxy[1])), timeout=10)
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
    print("proxy", target, "->", s.recv(200).split(b"\r\n")[0].decode())
    s.close()
for item in [{tcp}]:
    host, port = item.split("|")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print("straight tcp", item, "-> CONNECTED")
    except OSError as e:
        print("straight tcp", item, "->", type(e).__name__)
for item in [{udp}]:
    host, port = item.split("|")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.socket(family, socket.SOCK_DGRAM).sendto(b"udp-probe", (host, int(port)))
        print("straight udp", item, "-> sent")
    except OSError as e:
        print("straight udp", item, "->", type(e).__name__)
print("probes-done")
"#,
        targets = list(targets.to_vec()),
    );
    format!("python3 - <<'EOF'\n{script}EOF\n")
}

/// A TCP listener of the host's that counts the connections it gets.
fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_reaches_nothing_of_the_control_plane_and_its_refusals_are_recorded() {
    let mesh = runner_mesh(&[]).await;
    let (mallory, _) = mesh.user("mallory@example.com").await;
    let (listener, connections) = counting_listener();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let deploy_port = mesh.addr(ServiceKind::Deploy).port();
    let gateway_port = mesh.addr(ServiceKind::Gateway).port();
    let targets = vec![
        "127.0.0.1:5432".to_owned(),
        format!("localhost:{deploy_port}"),
        format!("[::1]:{gateway_port}"),
        format!("127.0.0.1:{}", listener.port()),
        "169.254.169.254:80".to_owned(),
    ];
    let build = prober(
        &targets,
        &[listener, "127.0.0.1:5432".parse().unwrap()],
        &[udp_addr, format!("[::1]:{}", udp_addr.port()).parse().unwrap()],
    );
    // It fails after probing: a failed build's record is kept too.
    let project_id = project(&mesh, &mallory, &format!("{build}exit 3\n"), &[]).await;
    let deployment = deploy(&mesh, &mallory, &project_id).await;
    wait_for(
        &mesh,
        &mallory,
        &deployment.id,
        DeploymentState::Failed,
        Duration::from_secs(40),
    )
    .await;
    let output = text(&logs(&mesh, &mallory, &deployment.id).await);
    assert!(output.contains("probes-done"), "{output}");
    let record = egress_record(&mesh, &mallory, &deployment.id).await;
    for target in &targets {
        let (host, port) = target.rsplit_once(':').unwrap();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        assert!(
            record.destinations.iter().any(|d| d.phase() == pb::EgressPhase::Build
                && d.host == host
                && d.port.to_string() == port
                && d.refusals == 1
                && d.connections == 0),
            "{target} in {record:?}"
        );
    }
    for target in &targets {
        assert!(
            output.contains(&format!("proxy {target} -> HTTP/1.1 403 Forbidden")),
            "the proxy refused {target}:\n{output}"
        );
        assert!(
            output.contains(&format!("egress refused: {target} — it points at")),
            "the refusal of {target} is in the egress record:\n{output}"
        );
    }
    // The build's own lines, not its script's, which the log echoes.
    let straight: Vec<&str> = output.lines().filter(|line| line.starts_with("straight ")).collect();
    assert_eq!(straight.len(), 4, "{output}");
    assert!(
        straight.iter().all(|line| !line.ends_with("-> CONNECTED")),
        "a straight connection reached a listener:\n{output}"
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the host's listener was reached:\n{output}"
    );
    let mut datagram = [0u8; 64];
    assert!(
        udp.recv_from(&mut datagram).is_err(),
        "a datagram reached the host:\n{output}"
    );
}

/// The way out works: a destination the operator allows (here a loopback
/// address of the test's, as an operator allows a private mirror) is
/// reached over plain http:// through the proxy, and recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_destination_is_reached_through_the_proxy_and_recorded() {
    let addr = mirror();
    let mesh = runner_mesh(&[("DEPLOY_EGRESS_ALLOWED_NETWORKS", "127.0.0.2/32")]).await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let build = format!(
        "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://{addr}/simple/flask/').read().decode())\""
    );
    let project_id = project(&mesh, &alice, &build, &[]).await;
    let deployment = deploy_live(&mesh, &alice, &project_id).await;
    let output = text(&logs(&mesh, &alice, &deployment.id).await);
    assert!(
        output.contains("mirror-says-hello for GET /simple/flask/ HTTP/1.1"),
        "the request went out in origin form:\n{output}"
    );
    assert!(
        output.contains(&format!("egress: {addr} — 1 connection,")),
        "the egress record names the destination:\n{output}"
    );
}

/// A project switches egress off for its builds, or for its app: the one
/// switched off reaches nothing, not even a destination the operator
/// allows, and is told which setting to change; refusals and connections
/// are in the deployment's egress record through the API, by phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_switched_off_for_builds_or_the_app_reaches_nothing_and_the_api_records_it() {
    let addr = mirror();
    let mesh = runner_mesh(&[("DEPLOY_EGRESS_ALLOWED_NETWORKS", "127.0.0.2/32")]).await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let fetch = |label: &str| {
        format!(
            "python3 -c \"import urllib.request as u\ntry: print('{label} got', u.urlopen('http://{addr}/x').read().decode())\nexcept Exception as e: print('{label} failed', e)\""
        )
    };
    let start = format!("{}; exec python3 -m http.server \"$PORT\"", fetch("app"));
    let project_id = app(&mesh, &alice, &fetch("build"), &start, &[]).await;
    let settings = |build_egress, app_egress| capsule::proto::project::v1::ProjectSettings {
        project_id: project_id.clone(),
        build_egress,
        app_egress,
        ..Default::default()
    };
    // On for a new project, both.
    let defaults = mesh
        .projects()
        .await
        .get_project_settings(authed(
            capsule::proto::project::v1::GetProjectSettingsRequest {
                project_id: project_id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(defaults.build_egress && defaults.app_egress, "{defaults:?}");
    // Builds without egress, the app with it.
    update_settings(&mesh, &alice, settings(false, true), &["build_egress", "app_egress"]).await;
    let first = deploy_live(&mesh, &alice, &project_id).await;
    let output = logs_until(&mesh, &alice, &first.id, "app got").await;
    assert!(output.contains("build failed HTTP Error 403"), "{output}");
    assert!(
        output.contains("egress is off for the project's builds (build_egress in its settings)"),
        "the refusal names the setting:\n{output}"
    );
    assert!(output.contains("app got mirror-says-hello"), "{output}");
    // Then the other way round; the first app stops and reports.
    update_settings(&mesh, &alice, settings(true, false), &["build_egress", "app_egress"]).await;
    let second = deploy_live(&mesh, &alice, &project_id).await;
    let output = logs_until(&mesh, &alice, &second.id, "app failed").await;
    assert!(output.contains("build got mirror-says-hello"), "{output}");
    assert!(output.contains("app failed HTTP Error 403"), "{output}");
    wait_for(
        &mesh,
        &alice,
        &first.id,
        DeploymentState::Superseded,
        Duration::from_secs(20),
    )
    .await;

    let phases = |record: &pb::EgressRecord| {
        record
            .destinations
            .iter()
            .map(|d| (d.phase(), d.host.clone(), d.port, d.connections, d.refusals))
            .collect::<Vec<_>>()
    };
    let (host, port) = (addr.ip().to_string(), u32::from(addr.port()));
    // A stopped app's record comes with its last report, after the drain.
    let started = std::time::Instant::now();
    let first_record = loop {
        let record = egress_record(&mesh, &alice, &first.id).await;
        if record.destinations.len() > 1 || started.elapsed() > Duration::from_secs(20) {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        phases(&first_record),
        [
            (pb::EgressPhase::Build, host.clone(), port, 0, 1),
            (pb::EgressPhase::App, host.clone(), port, 1, 0),
        ],
        "{first_record:?}"
    );
    assert!(first_record.destinations[0].refusal_reason.contains("build_egress"));
    assert!(first_record.destinations[1].bytes_received > 0);
    // The second app still runs: its record so far comes with its next
    // report; the build's is there.
    let second_record = egress_record(&mesh, &alice, &second.id).await;
    assert_eq!(
        phases(&second_record)[0],
        (pb::EgressPhase::Build, host, port, 1, 0),
        "{second_record:?}"
    );
    // Nobody else reads it.
    let (mallory, _) = mesh.user("mallory@example.com").await;
    let denied = mesh
        .deploys()
        .await
        .get_egress_record(authed(
            pb::GetEgressRecordRequest {
                deployment_id: first.id.clone(),
            },
            &mallory,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::NotFound, "{denied:?}");
}

async fn egress_record(mesh: &crate::common::TestMesh, token: &str, id: &str) -> pb::EgressRecord {
    mesh.deploys()
        .await
        .get_egress_record(authed(
            pb::GetEgressRecordRequest {
                deployment_id: id.to_owned(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

/// A "package mirror" on 127.0.0.2 that answers every request with its
/// request line.
fn mirror() -> SocketAddr {
    let server = TcpListener::bind("127.0.0.2:0").unwrap();
    let addr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut stream in server.incoming().flatten() {
            let mut request = [0u8; 4096];
            let read = stream.read(&mut request).unwrap_or(0);
            let head = String::from_utf8_lossy(&request[..read]).to_string();
            let body = format!("mirror-says-hello for {}", head.lines().next().unwrap_or(""));
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}
