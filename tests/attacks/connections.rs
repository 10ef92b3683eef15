//! What one client connection carries: the gateway holds a connection to
//! an app for each HTTP/1.1 client connection and sends that client's
//! requests over it. A client that asks the gateway for one app, then, on
//! the same keep-alive connection, for another, must reach the second app:
//! were the held connection reused, the first app would read the request
//! meant for the second, cookies and all, and answer it in its name.

use super::runner_mesh;
use crate::common::deploy::{app, deploy_live, host_label};

/// An HTTP/1.1 keep-alive app that answers who it is, which connection the
/// request came on (the peer's port) and the cookie it was sent.
const WHO: &str = r#"cat > who.py <<'PY'
import http.server, os
class Who(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = f"{os.environ['NAME']} {self.client_address[1]} {self.headers.get('cookie')}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Who).serve_forever()
PY"#;

/// One keep-alive connection to the gateway, requests written by hand:
/// nothing between opens another.
struct Client(tokio::io::BufReader<tokio::net::TcpStream>);

impl Client {
    async fn open(mesh: &crate::common::TestMesh) -> Self {
        Self(tokio::io::BufReader::new(
            tokio::net::TcpStream::connect(mesh.http).await.unwrap(),
        ))
    }

    /// GET / of `label` with `cookie`: the status and the body's words
    /// (app, connection, cookie).
    async fn get(&mut self, mesh: &crate::common::TestMesh, label: &str, cookie: &str) -> (u16, Vec<String>) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let request = format!(
            "GET / HTTP/1.1\r\nhost: {label}.localhost:{}\r\ncookie: {cookie}\r\n\r\n",
            mesh.http.port()
        );
        self.0.get_mut().write_all(request.as_bytes()).await.unwrap();
        let mut status = String::new();
        self.0.read_line(&mut status).await.unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.0.read_exact(&mut body).await.unwrap();
        let status = status.split(' ').nth(1).unwrap().parse().unwrap();
        let words = String::from_utf8(body).unwrap().split(' ').map(str::to_owned).collect();
        (status, words)
    }

    /// GET / of `label`, once it answers 200 (the route reaches the
    /// gateway just after the deployment is live).
    async fn who(&mut self, mesh: &crate::common::TestMesh, label: &str, cookie: &str) -> Vec<String> {
        for _ in 0..100 {
            match self.get(mesh, label, cookie).await {
                (200, words) => return words,
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        panic!("{label} is not served");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_another_app_on_the_same_client_connection_reaches_that_app() {
    let mesh = runner_mesh(&[]).await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let (mallory, _) = mesh.user("mallory@example.com").await;
    let theirs = app(
        &mesh,
        &mallory,
        WHO,
        "exec python3 who.py",
        &[("NAME", "mallory", false)],
    )
    .await;
    let ours = app(&mesh, &alice, WHO, "exec python3 who.py", &[("NAME", "alice", false)]).await;
    deploy_live(&mesh, &mallory, &theirs).await;
    deploy_live(&mesh, &alice, &ours).await;
    let (theirs, ours) = (
        host_label(&mesh, &mallory, &theirs).await,
        host_label(&mesh, &alice, &ours).await,
    );
    let mut victim = Client::open(&mesh).await;
    // One client connection: Mallory's app first, then Alice's with her
    // session cookie, then Mallory's again.
    let first = victim.who(&mesh, &theirs, "none").await;
    let second = victim.who(&mesh, &ours, "session=alice").await;
    let third = victim.who(&mesh, &theirs, "none").await;
    assert_eq!(first[0], "mallory");
    assert_eq!(
        second,
        ["alice", &second[1], "session=alice"],
        "Alice's request went to {second:?}"
    );
    assert_eq!(third[0], "mallory");

    // On its own app, a client's requests keep to one connection to it,
    // and another client's go over another.
    let a = victim.who(&mesh, &ours, "a").await;
    let again = victim.who(&mesh, &ours, "a").await;
    let b = Client::open(&mesh).await.who(&mesh, &ours, "b").await;
    assert_eq!(a[1], again[1], "one client connection, one connection to the app");
    assert_ne!(a[1], b[1], "two clients never share a connection to the app");
    assert_eq!(b[2], "b");
    mesh.stop().await;
}

/// Clients that send one request each and then say nothing more hold the
/// connections to the app their requests opened. Were they held for as
/// long as the clients stay connected, a handful of idle sockets would
/// use up the app's connections (`DEPLOY_APP_MAX_CONNECTIONS`) and keep it
/// from everyone else, and keep it from ever going idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_do_not_keep_an_apps_connections_from_everyone_else() {
    let mesh = crate::common::start_with(crate::common::Options {
        local_runner: true,
        deploy: vec![
            ("DEPLOY_START_TIMEOUT_SECS", "20"),
            ("DEPLOY_DRAIN_SECS", "1"),
            ("DEPLOY_APP_MAX_CONNECTIONS", "2"),
        ],
        settings: vec![("GATEWAY_IDLE_TIMEOUT_SECS", "1".to_owned())],
        ..Default::default()
    })
    .await;
    let (alice, _) = mesh.user("alice@example.com").await;
    let ours = app(&mesh, &alice, WHO, "exec python3 who.py", &[("NAME", "alice", false)]).await;
    deploy_live(&mesh, &alice, &ours).await;
    let ours = host_label(&mesh, &alice, &ours).await;
    // Two clients take the app's two connections, then fall silent and
    // stay connected.
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut client = Client::open(&mesh).await;
        client.who(&mesh, &ours, "idle").await;
        idle.push(client);
    }
    // Anyone else is served once the silent ones have been let go.
    let started = std::time::Instant::now();
    let mut other = Client::open(&mesh).await;
    let answered = loop {
        match other.get(&mesh, &ours, "other").await {
            (200, words) => break words,
            (status, _) => {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(10),
                    "still {status} after 10 s: idle clients hold the app's connections"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(answered[0], "alice");
    drop(idle);
    mesh.stop().await;
}
