//! The edge under attack, through the gateway with real client addresses
//! (127.0.0.2, 127.0.0.3, … are all this host): sign-in floods throttle
//! the flooder, not the victim; forged client addresses are ignored; a
//! demoted admin is no longer one.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::net::IpAddr;

use capsule::proto::{auth::v1 as auth_pb, deploy::v1 as deploy_pb};
use common::{PASSWORD, TestMesh, authed};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A REST client whose connections come from `address`.
fn client_from(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(address.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// `POST /v1/auth:login` from `client`: the status and body.
async fn login(client: &reqwest::Client, mesh: &TestMesh, email: &str, password: &str) -> (StatusCode, Value) {
    login_with(
        client.post(format!("http://{}/v1/auth:login", mesh.http)),
        email,
        password,
    )
    .await
}

async fn login_with(request: reqwest::RequestBuilder, email: &str, password: &str) -> (StatusCode, Value) {
    let response = request
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The client addresses of `token`'s user's sessions.
async fn session_addresses(mesh: &TestMesh, token: &str) -> Vec<String> {
    mesh.auth()
        .await
        .list_sessions(authed(auth_pb::ListSessionsRequest::default(), token))
        .await
        .unwrap()
        .into_inner()
        .sessions
        .into_iter()
        .map(|session| session.client_address)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_flood_throttles_its_address_while_victim_and_bystander_sign_in_elsewhere() {
    let mesh = common::start().await;
    mesh.user("victim@example.com").await;
    mesh.user("bystander@example.com").await;
    let attacker = client_from("127.0.0.2");

    // Guesses at the victim's password: a few, then that pair is locked.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(login(&attacker, &mesh, "victim@example.com", "wrong password").await.0);
    }
    assert_eq!(&statuses[..5], &[StatusCode::UNAUTHORIZED; 5], "{statuses:?}");
    assert_eq!(&statuses[5..], &[StatusCode::TOO_MANY_REQUESTS; 3], "{statuses:?}");
    // Made-up accounts from the same address, until the address is locked.
    let mut flood = Vec::new();
    for i in 0..50 {
        flood.push(
            login(&attacker, &mesh, &format!("made-up-{i}@example.com"), "wrong password")
                .await
                .0,
        );
    }
    assert_eq!(flood.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "{flood:?}");
    // Locked for every account, even with the right password — and a
    // forwarded-for header from an untrusted peer changes nothing.
    let (status, body) = login(&attacker, &mesh, "bystander@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let spoofed = attacker
        .post(format!("http://{}/v1/auth:login", mesh.http))
        .header("x-forwarded-for", "127.0.0.9")
        .header("x-capsule-client-address", "127.0.0.9");
    let (status, _) = login_with(spoofed, "bystander@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "a forged address is ignored");

    // The bystander and the victim, from their own addresses, sign in.
    let (status, body) = login(&client_from("127.0.0.3"), &mesh, "bystander@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = login(&client_from("127.0.0.4"), &mesh, "victim@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The session records the address the gateway saw.
    let token = body["tokens"]["accessToken"].as_str().unwrap();
    let addresses = session_addresses(&mesh, token).await;
    assert!(addresses.contains(&"127.0.0.4".to_owned()), "{addresses:?}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_address_header_without_the_services_proof_is_ignored() {
    let mesh = common::start().await;
    mesh.user("ada@example.com").await;
    // Straight to the auth port, claiming to be someone else.
    let mut request = tonic::Request::new(auth_pb::LoginRequest {
        email: "ada@example.com".to_owned(),
        password: PASSWORD.to_owned(),
    });
    request
        .metadata_mut()
        .insert("x-capsule-client-address", "198.51.100.7".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-capsule-client-address-proof", "guessed".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-forwarded-for", "198.51.100.8".parse().unwrap());
    let token = mesh
        .auth()
        .await
        .login(request)
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
        .access_token;
    let addresses = session_addresses(&mesh, &token).await;
    assert!(!addresses.is_empty());
    assert!(
        addresses.iter().all(|address| address == "127.0.0.1"),
        "the connection's address, not the claimed one: {addresses:?}"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_admin_is_refused_at_the_next_admin_call_in_every_service() {
    let mesh = common::start().await;
    let demoted = mesh.admin("demoted@example.com").await;
    let other = mesh.admin("other-admin@example.com").await;
    let demoted_id = mesh
        .auth()
        .await
        .get_me(authed(auth_pb::GetMeRequest::default(), &demoted))
        .await
        .unwrap()
        .into_inner()
        .id;
    // An admin call that works while they are one.
    mesh.deploys()
        .await
        .list_runners(authed(deploy_pb::ListRunnersRequest::default(), &demoted))
        .await
        .unwrap();

    mesh.auth()
        .await
        .set_role(authed(
            auth_pb::SetRoleRequest {
                user_id: demoted_id.clone(),
                role: auth_pb::Role::User as i32,
            },
            &other,
        ))
        .await
        .unwrap();

    // The old token still says admin; every service asks who is one now.
    let runners = mesh
        .deploys()
        .await
        .list_runners(authed(deploy_pb::ListRunnersRequest::default(), &demoted))
        .await
        .unwrap_err();
    assert_eq!(runners.code(), tonic::Code::PermissionDenied, "{runners:?}");
    let promote_back = mesh
        .auth()
        .await
        .set_role(authed(
            auth_pb::SetRoleRequest {
                user_id: demoted_id,
                role: auth_pb::Role::Admin as i32,
            },
            &demoted,
        ))
        .await
        .unwrap_err();
    assert_eq!(promote_back.code(), tonic::Code::PermissionDenied, "{promote_back:?}");
    let stats = reqwest::Client::new()
        .get(format!("http://{}/v1/admin/database-stats", mesh.http))
        .bearer_auth(&demoted)
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), StatusCode::FORBIDDEN);
    // Their sessions ended with the change: the token is dead for
    // everything the auth service checks.
    let me = mesh
        .auth()
        .await
        .get_me(authed(auth_pb::GetMeRequest::default(), &demoted))
        .await
        .unwrap_err();
    assert_eq!(me.code(), tonic::Code::Unauthenticated);
    mesh.stop().await;
}

/// Sends `body` to `path` with `method` and asserts a 400 whose violations
/// name `field`.
async fn assert_refused(
    mesh: &TestMesh,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Value,
    field: &str,
) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{}{path}", mesh.http))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {answer}");
    let fields: Vec<&str> = answer["details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|detail| detail["fieldViolations"].as_array().into_iter().flatten())
        .filter_map(|violation| violation["field"].as_str())
        .collect();
    assert!(fields.contains(&field), "{path} {body}: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_any_string_field_is_a_400_naming_it_and_stores_nothing() {
    use reqwest::Method;
    let mesh = common::start().await;
    let (token, _) = mesh.user("ada@example.com").await;
    let nul = "a\u{0}b";
    let register = json!({ "email": "new@example.com", "password": PASSWORD, "name": "New" });
    for field in ["email", "password", "name"] {
        let mut body = register.clone();
        body[field] = json!(nul);
        assert_refused(&mesh, Method::POST, "/v1/auth:register", None, body, field).await;
    }
    for field in ["email", "password"] {
        let mut body = json!({ "email": "ada@example.com", "password": PASSWORD });
        body[field] = json!(nul);
        assert_refused(&mesh, Method::POST, "/v1/auth:login", None, body, field).await;
    }
    for field in ["name", "slug", "description"] {
        let mut body = json!({ "name": "Shop", "slug": "shop", "description": "a shop" });
        body[field] = json!(nul);
        let path = format!("project.{field}");
        assert_refused(&mesh, Method::POST, "/v1/projects", Some(&token), body, &path).await;
    }
    let project_id = common::deploy::project(&mesh, &token, "echo built", &[]).await;
    for (field, json_name) in [
        ("build_command", "buildCommand"),
        ("start_command", "startCommand"),
        ("root_directory", "rootDirectory"),
        ("branch", "branch"),
        ("repository_url", "repositoryUrl"),
        ("health_check_path", "healthCheckPath"),
    ] {
        let path = format!("/v1/projects/{project_id}/settings?updateMask={json_name}");
        let body = json!({ json_name: nul });
        let field = format!("settings.{field}");
        assert_refused(&mesh, Method::PATCH, &path, Some(&token), body, &field).await;
    }
    let path = format!("/v1/projects/{project_id}/variables/API_KEY");
    assert_refused(
        &mesh,
        Method::PUT,
        &path,
        Some(&token),
        json!({ "value": nul }),
        "variable.value",
    )
    .await;

    // Nothing of it was stored.
    let settings = mesh
        .projects()
        .await
        .get_project_settings(authed(
            capsule::proto::project::v1::GetProjectSettingsRequest {
                project_id: project_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(settings.build_command, "echo built");
    assert!(settings.environment_variables.is_empty(), "{settings:?}");
    mesh.stop().await;
}
