//! What an app is told about its client: the gateway appended to the
//! client's own `X-Forwarded-For`, passed `Forwarded` and `X-Real-IP`
//! through, so a client could be whoever it wrote it was — an app that
//! allows an address, or rate-limits by one, was fooled.

use std::time::Duration;

use super::runner_mesh;
use crate::common::deploy::{app, deploy_live, host_label};

/// An app that answers every GET with the request's headers.
const ECHO: &str = r#"cat > echo.py <<'PY'
import http.server, os
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items()).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Echo).serve_forever()
PY"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_is_told_the_clients_real_address_not_what_the_client_wrote() {
    let mesh = runner_mesh(&[]).await;
    let (owner, _) = mesh.user("owner@example.com").await;
    let project = app(&mesh, &owner, ECHO, "exec python3 echo.py", &[]).await;
    deploy_live(&mesh, &owner, &project).await;
    let label = host_label(&mesh, &owner, &project).await;
    let client = reqwest::Client::new();
    let mut seen = String::new();
    for _ in 0..100 {
        let response = client
            .get(format!("http://{}/", mesh.http))
            .header("host", format!("{label}.localhost:{}", mesh.http.port()))
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-real-ip", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6;proto=https")
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            seen = response.text().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-real-ip: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(seen.contains("forwarded: for=127.0.0.1;proto=http;"), "{seen}");
    assert!(!seen.contains("6.6.6.6") && !seen.contains("https"), "{seen}");
    mesh.stop().await;
}
