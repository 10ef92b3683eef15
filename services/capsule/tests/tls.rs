//! Transport security with real certificates: every listener on TLS, the
//! project service requiring client certificates (mTLS), the gateway and
//! the services calling each other over `https://`.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions unwrap too")]

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

mod common;

use capsule::{
    config::ServiceKind,
    proto::project::v1::{GetProjectRequest, project_service_client::ProjectServiceClient},
    testing::{self, TestDatabase},
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    ca: String,
    cert: String,
    key: String,
}

/// A CA, and one certificate it signed for localhost and 127.0.0.1 (no
/// extended key usage: good for serving and as a client certificate).
fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Capsule test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    Pki {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

async fn tls_channel(addr: SocketAddr, pki: &Pki, with_client_cert: bool) -> Result<tonic::transport::Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if with_client_cert {
        tls = tls.identity(Identity::from_pem(&pki.cert, &pki.key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|err| format!("{err:?}"))
}

async fn wait_serving(addr: SocketAddr, pki: &Pki) {
    let started = Instant::now();
    loop {
        if let Ok(channel) = tls_channel(addr, pki, true).await {
            let answer = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await;
            if answer.is_ok_and(|a| a.into_inner().status == 1) {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{addr} never served over TLS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_speak_tls_require_client_certificates_where_told_and_call_each_other_over_https() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = (
        write(dir.path(), "ca.pem", &pki.ca),
        write(dir.path(), "cert.pem", &pki.cert),
        write(dir.path(), "key.pem", &pki.key),
    );
    let auth_db = TestDatabase::migrated(ServiceKind::Auth, &capsule_auth::MIGRATIONS).await;
    let project_db = TestDatabase::migrated(ServiceKind::Project, &capsule_project::MIGRATIONS).await;
    let addr = common::addresses().await;
    let mut env = common::mesh_env(&addr, |addr| format!("https://localhost:{}", addr.port()));
    env.extend([
        ("AUTH_DATABASE_URL", auth_db.url.clone()),
        ("PROJECT_DATABASE_URL", project_db.url.clone()),
        ("CAPSULE_TLS_CERT_FILE", cert),
        ("CAPSULE_TLS_KEY_FILE", key),
        ("CAPSULE_TLS_CA_FILE", ca.clone()),
    ]);
    let mut project_env = env.clone();
    project_env.push(("CAPSULE_TLS_CLIENT_CA_FILE", ca));
    let mut children = vec![
        common::serve("auth", &env),
        common::serve("project", &project_env),
        common::serve("gateway", &env),
    ];
    for grpc in [addr[0], addr[1], addr[3]] {
        wait_serving(grpc, &pki).await;
    }

    // REST over HTTPS, through the gateway to both services (the project
    // service checks the gateway's client certificate, and checks tokens
    // with keys fetched from auth over https).
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", addr[4].port());
    let registered: serde_json::Value = https
        .post(format!("{base}/v1/auth:register"))
        .json(&serde_json::json!({"email": "tls@example.com", "password": "a long enough password", "name": "T"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["tokens"]["accessToken"].as_str().unwrap().to_owned();
    let created = https
        .post(format!("{base}/v1/projects"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "Sealed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let project: serde_json::Value = created.json().await.unwrap();
    let project_id = project["id"].as_str().unwrap().to_owned();

    // Plain HTTP on the TLS port gets nowhere.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", addr[4]))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));

    // The project service: with a client certificate, answered; without
    // one, or without TLS, refused.
    let authed = || {
        let mut request = tonic::Request::new(GetProjectRequest {
            project_id: project_id.clone(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    let with_cert = ProjectServiceClient::new(tls_channel(addr[1], &pki, true).await.unwrap())
        .get_project(authed())
        .await
        .unwrap();
    assert_eq!(with_cert.into_inner().name, "Sealed");
    // The same call, token and all, without the certificate: refused at
    // the handshake or by the transport, never answered by the service.
    match tls_channel(addr[1], &pki, false).await {
        Err(_) => {}
        Ok(channel) => {
            let status = ProjectServiceClient::new(channel)
                .get_project(authed())
                .await
                .expect_err("a call without a client certificate is refused");
            assert!(
                matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ),
                "refused by the transport, not by the service: {status:?}"
            );
        }
    }
    assert!(
        testing::health_status(addr[1], "").await.is_none(),
        "plaintext gRPC is refused"
    );

    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_certificate_without_its_key_stops_start_up_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", &pki().cert);
    let output = Command::new(env!("CARGO_BIN_EXE_capsule"))
        .args(["serve", "project"])
        .env("PROJECT_GRPC_ADDR", "127.0.0.1:0")
        .env("CAPSULE_TLS_CERT_FILE", &cert)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CAPSULE_TLS_KEY_FILE"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_capsule"))
        .args(["serve", "project"])
        .env("PROJECT_GRPC_ADDR", "127.0.0.1:0")
        .env("CAPSULE_TLS_CERT_FILE", &cert)
        .env("CAPSULE_TLS_KEY_FILE", dir.path().join("missing.pem"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CAPSULE_TLS_KEY_FILE") && stderr.contains("cannot be read"),
        "{stderr}"
    );
}
