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

/// One keep-alive connection to the gateway.
fn one_connection() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

/// GET / of `label` over `client`, with `cookie`: (app, connection, cookie).
async fn who(client: &reqwest::Client, mesh: &crate::common::TestMesh, label: &str, cookie: &str) -> Vec<String> {
    let response = client
        .get(format!("http://{}/", mesh.http))
        .header("host", format!("{label}.localhost:{}", mesh.http.port()))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{label}");
    let body = response.text().await.unwrap();
    body.split(' ').map(str::to_owned).collect()
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
    let victim = one_connection();
    // The route to each reaches the gateway just after it is live.
    crate::common::deploy::until_served(&victim, &mesh, &theirs).await;
    crate::common::deploy::until_served(&victim, &mesh, &ours).await;

    // One client connection: Mallory's app first, then Alice's with her
    // session cookie, then Mallory's again.
    let first = who(&victim, &mesh, &theirs, "none").await;
    let second = who(&victim, &mesh, &ours, "session=alice").await;
    let third = who(&victim, &mesh, &theirs, "none").await;
    assert_eq!(first[0], "mallory");
    assert_eq!(
        second,
        ["alice", &second[1], "session=alice"],
        "Alice's request went to {second:?}"
    );
    assert_eq!(third[0], "mallory");

    // On its own app, a client's requests keep to one connection to it,
    // and another client's go over another.
    let a = who(&victim, &mesh, &ours, "a").await;
    let again = who(&victim, &mesh, &ours, "a").await;
    let other = one_connection();
    let b = who(&other, &mesh, &ours, "b").await;
    assert_eq!(a[1], again[1], "one client connection, one connection to the app");
    assert_ne!(a[1], b[1], "two clients never share a connection to the app");
    assert_eq!(b[2], "b");
    mesh.stop().await;
}
