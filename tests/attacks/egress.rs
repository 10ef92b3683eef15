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
};

use capsule::config::ServiceKind;

use super::runner_mesh;
use crate::common::deploy::{deploy_live, logs, project, text};

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
    let project_id = project(&mesh, &mallory, &build, &[]).await;
    let deployment = deploy_live(&mesh, &mallory, &project_id).await;
    let output = text(&logs(&mesh, &mallory, &deployment.id).await);
    assert!(output.contains("probes-done"), "{output}");
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
