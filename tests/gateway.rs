//! The gateway from the outside: REST/JSON over real HTTP, the gRPC front
//! door, partial fan-out when a backend is gone.

mod common;

use std::time::Duration;

use capsule::config::ServiceKind;
use futures::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

fn url(mesh: &common::TestMesh, path: &str) -> String {
    format!("http://{}{path}", mesh.http)
}

async fn call(
    client: &Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the gateway answers");
    let status = response.status();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_journey_works_over_rest() {
    let mesh = common::start_with(common::Options {
        local_runner: true,
        ..Default::default()
    })
    .await;
    let http = Client::new();
    use reqwest::Method as M;

    let (status, registered) = call(
        &http,
        M::POST,
        &url(&mesh, "/v1/auth:register"),
        None,
        Some(json!({"email": "rest@example.com", "password": common::PASSWORD, "name": "Rest"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{registered}");
    assert_eq!(registered["user"]["role"], "ROLE_USER", "enums as names");
    let (_, login) = call(
        &http,
        M::POST,
        &url(&mesh, "/v1/auth:login"),
        None,
        Some(json!({"email": "rest@example.com", "password": common::PASSWORD})),
    )
    .await;
    let bearer = login["tokens"]["accessToken"]
        .as_str()
        .expect("camelCase names")
        .to_owned();
    let token = Some(bearer.as_str());

    let (status, project) = call(
        &http,
        M::POST,
        &url(&mesh, "/v1/projects"),
        token,
        Some(json!({"name": "Rest App"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{project}");
    let id = project["id"].as_str().unwrap().to_owned();
    let (status, settings) = call(
        &http,
        M::PATCH,
        &url(&mesh, &format!("/v1/projects/{id}/settings?updateMask=buildCommand")),
        token,
        Some(json!({"buildCommand": "echo from rest; echo $SECRET_TOKEN"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{settings}");
    assert_eq!(settings["buildCommand"], "echo from rest; echo $SECRET_TOKEN");
    let (status, variable) = call(
        &http,
        M::PUT,
        &url(&mesh, &format!("/v1/projects/{id}/variables/SECRET_TOKEN")),
        token,
        Some(json!({"value": "hunter2-hunter2", "secret": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{variable}");
    assert_eq!(variable["name"], "SECRET_TOKEN", "the path binds the nested field");
    assert!(variable.get("value").is_none(), "{variable}");

    let (status, deployment) = call(
        &http,
        M::POST,
        &url(&mesh, &format!("/v1/projects/{id}/deployments")),
        token,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{deployment}");
    let deployment_id = deployment["id"].as_str().unwrap().to_owned();

    // Follow the logs as Server-Sent Events until the deployment is live.
    let response = http
        .get(url(
            &mesh,
            &format!("/v1/deployments/{deployment_id}/logs:stream?follow=true"),
        ))
        .bearer_auth(&bearer)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = String::new();
    let mut chunks = response.bytes_stream();
    // Live, the stream stays open for the app's own output.
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = chunks.next().await {
            body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if body.contains("deploying → live") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the stream reaches the live state:\n{body}");
    drop(chunks);
    assert!(body.contains("id: 1\ndata: {"), "{body}");
    assert!(body.contains("from rest"), "{body}");
    assert!(body.contains("********") && !body.contains("hunter2-hunter2"), "{body}");
    assert!(body.contains("deploying → live"), "{body}");

    // Resume with Last-Event-ID, as newline-delimited JSON this time.
    let resumed = http
        .get(url(&mesh, &format!("/v1/deployments/{deployment_id}/logs:stream")))
        .bearer_auth(&bearer)
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let first: Value = serde_json::from_str(resumed.lines().next().unwrap()).unwrap();
    assert_eq!(first["result"]["sequence"], "3", "int64 as strings, resumed after 2");

    let (status, dashboard) = call(&http, M::GET, &url(&mesh, "/v1/dashboard"), token, None).await;
    assert_eq!(status, StatusCode::OK, "{dashboard}");
    assert_eq!(dashboard["user"]["email"], "rest@example.com");
    assert_eq!(
        dashboard["projects"][0]["latestDeployment"]["state"],
        "DEPLOYMENT_STATE_LIVE"
    );
    assert!(dashboard.get("missing").is_none(), "{dashboard}");

    let (status, overview) = call(
        &http,
        M::GET,
        &url(&mesh, &format!("/v1/projects/{id}/overview")),
        token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    assert_eq!(overview["owner"]["name"], "Rest");
    assert_eq!(overview["settings"]["environmentVariables"][0]["secret"], true);
    assert!(!overview.to_string().contains("hunter2-hunter2"));
    assert_eq!(overview["recentDeployments"].as_array().map(Vec::len), Some(1));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_with_the_right_http_status() {
    let mesh = common::start().await;
    let http = Client::new();
    let (token, _) = mesh.user("errors@example.com").await;
    let projects = url(&mesh, "/v1/projects");

    let raw = |body: &'static str| {
        let (http, projects, token) = (http.clone(), projects.clone(), token.clone());
        async move {
            let response = http
                .post(projects)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = raw("{\"name\": ").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], 3);
    assert!(body["message"].as_str().unwrap().contains("not valid JSON"), "{body}");
    let (status, body) = raw("{\"name\": \"x\", \"bogus\": 1}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("bogus"), "{body}");
    let (status, body) = raw("{\"name\": 42}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = raw("{\"name\": \"\", \"slug\": \"NO\"}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let fields: Vec<&str> = body["details"][0]["fieldViolations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(body["details"][0]["@type"], "type.googleapis.com/google.rpc.BadRequest");
    // The empty name breaks its rule, the slug two (length and pattern).
    assert_eq!(fields, ["project.name", "project.slug", "project.slug"]);

    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let response = http
        .post(&projects)
        .bearer_auth(&token)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("larger than"), "{body}");

    let response = http.get(&projects).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = http
        .get(url(&mesh, "/v1/projects?pageSize=1000000000"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = http
        .get(url(&mesh, "/v1/projects?nonsense=1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = http
        .get(url(&mesh, "/v1/projects/00000000-0000-0000-0000-000000000000"))
        .bearer_auth(&token)
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    let body: Value = response.json().await.unwrap();
    let info = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|detail| detail["@type"] == "type.googleapis.com/google.rpc.RequestInfo")
        .unwrap_or_else(|| panic!("a RequestInfo detail: {body}"));
    assert_eq!(info["requestId"], "trace-me-42");
    assert_eq!(
        http.get(url(&mesh, "/v2/nothing")).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        http.delete(url(&mesh, "/v1/auth:login")).send().await.unwrap().status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
    // The most specific template decides: a custom verb or a literal path
    // is not swallowed by a variable of a less specific one.
    for (path, allow) in [
        ("/v1/projects/00000000-0000-0000-0000-000000000000:undelete", "POST"),
        ("/v1/users/me/profile", "PATCH"),
    ] {
        let response = http.get(url(&mesh, path)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(response.headers()["allow"], allow, "{path}");
    }
    let document: Value = http
        .get(url(&mesh, "/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.0.3");
    assert!(document["paths"]["/v1/projects/{project_id}"]["get"].is_object());
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_gives_a_partial_dashboard_and_503_for_its_routes() {
    let mesh = common::start().await;
    let http = Client::new();
    let (token, _) = mesh.user("partial@example.com").await;
    let (status, _) = call(
        &http,
        reqwest::Method::POST,
        &url(&mesh, "/v1/projects"),
        Some(&token),
        Some(json!({"name": "Still Here"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    mesh.stop_service(ServiceKind::Deploy);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, dashboard) = call(
        &http,
        reqwest::Method::GET,
        &url(&mesh, "/v1/dashboard"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{dashboard}");
    assert_eq!(dashboard["user"]["email"], "partial@example.com");
    assert_eq!(dashboard["projects"][0]["project"]["name"], "Still Here");
    assert_eq!(dashboard["missing"][0]["part"], "deployments");
    assert_eq!(dashboard["missing"][0]["service"], "deploy");

    let (status, body) = call(
        &http,
        reqwest::Method::GET,
        &url(&mesh, "/v1/deployments/00000000-0000-0000-0000-000000000000"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], 14);
    let ready = http.get(url(&mesh, "/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    // The backend comes back on its address: the gateway recovers without
    // a restart.
    let addr = mesh.addr(ServiceKind::Deploy);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("the deploy port is free again");
    let config = capsule_deploy::DeployConfig::from_source(&|_: &str| None).expect("defaults are valid");
    tokio::spawn(capsule_deploy::serve(
        listener,
        mesh.database(ServiceKind::Deploy).db_config(),
        mesh.mesh.clone(),
        config,
        capsule::testing::serve_config(addr),
        mesh.shutdown.clone(),
    ));
    capsule::testing::wait_for_health(
        addr,
        "capsule.deploy.v1.DeployService",
        common::SERVING,
        Duration::from_secs(20),
    )
    .await;
    let mut recovered = false;
    for _ in 0..50 {
        let (status, dashboard) = call(
            &http,
            reqwest::Method::GET,
            &url(&mesh, "/v1/dashboard"),
            Some(&token),
            None,
        )
        .await;
        if status == StatusCode::OK && dashboard.get("missing").is_none() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the dashboard is whole again once deploy is back");
    mesh.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_rate_limited_per_address() {
    use capsule::{config::GatewayConfig, testing};
    let grpc = testing::free_listener().await;
    let http_listener = testing::free_listener().await;
    let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http_listener.local_addr().unwrap());
    let nowhere = "http://127.0.0.1:9".to_owned();
    let config = GatewayConfig {
        http_addr,
        services: capsule::config::ServiceUrls {
            auth: nowhere.clone(),
            project: nowhere.clone(),
            deploy: nowhere,
        },
    };
    let edge = capsule_gateway::EdgeConfig::from_source(&|name: &str| match name {
        "GATEWAY_RATE_LIMIT_PER_SEC" => Some("1".to_owned()),
        "GATEWAY_RATE_LIMIT_BURST" => Some("5".to_owned()),
        _ => None,
    })
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(capsule_gateway::serve(
        grpc,
        http_listener,
        config,
        edge,
        testing::serve_config(grpc_addr),
        stop.clone(),
    ));
    testing::wait_for_health(
        grpc_addr,
        "capsule.gateway.v1.GatewayService",
        common::SERVING,
        Duration::from_secs(10),
    )
    .await;
    let http = Client::new();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let response = http.get(format!("http://{http_addr}/v2/nothing")).send().await.unwrap();
        statuses.push(response.status());
    }
    assert!(
        statuses[..5].iter().all(|s| *s != StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert_eq!(statuses[7], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_front_door_routes_every_service() {
    use capsule::proto::{
        auth::v1::{GetMeRequest, auth_service_client::AuthServiceClient},
        project::v1::{ListProjectsRequest, project_service_client::ProjectServiceClient},
    };
    let mesh = common::start().await;
    let (token, user_id) = mesh.user("door@example.com").await;
    let channel = capsule::testing::channel(mesh.addr(ServiceKind::Gateway)).await;
    let me = AuthServiceClient::new(channel.clone())
        .get_me(common::authed(GetMeRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.id, user_id);
    let listed = ProjectServiceClient::new(channel.clone())
        .list_projects(common::authed(ListProjectsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.projects.is_empty());
    let anonymous = ProjectServiceClient::new(channel)
        .list_projects(ListProjectsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_see_every_database_s_insight_and_no_one_else_does() {
    let mesh = common::start().await;
    let http = Client::new();
    let admin = mesh.admin("stats-admin@example.com").await;
    let (user, _) = mesh.user("stats-user@example.com").await;
    let stats = url(&mesh, "/v1/admin/database-stats");

    let (status, body) = call(&http, reqwest::Method::GET, &stats, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let databases = body["databases"].as_array().unwrap();
    let services: Vec<&str> = databases.iter().map(|d| d["service"].as_str().unwrap()).collect();
    assert_eq!(services, ["auth", "project", "deploy"]);
    let project = &databases[1];
    let tables: Vec<&str> = project["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert!(tables.contains(&"projects"), "{tables:?}");
    assert!(
        project["indexes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["index"] == "idx_projects_owner_slug")
    );
    assert!(project["databaseSize"].as_str().unwrap().ends_with("B"));
    if project["pgStatStatementsInstalled"] != true {
        assert!(project["hint"].as_str().unwrap().contains("shared_preload_libraries"));
    }
    assert!(
        body.get("missing").is_none_or(|m| m.as_array().unwrap().is_empty()),
        "{body}"
    );

    let (status, body) = call(
        &http,
        reqwest::Method::GET,
        &format!("{stats}?service=deploy"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["databases"].as_array().unwrap().len(), 1);

    let (status, body) = call(
        &http,
        reqwest::Method::GET,
        &format!("{stats}?service=billing"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.to_string().contains("service"), "{body}");

    let (status, _) = call(&http, reqwest::Method::GET, &stats, Some(&user), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&http, reqwest::Method::GET, &stats, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A database's own service answers too, over gRPC, to admins only.
    let channel = capsule::testing::channel(mesh.addr(ServiceKind::Project)).await;
    let mut admin_api = capsule::proto::admin::v1::database_admin_client::DatabaseAdminClient::new(channel);
    let mut request = tonic::Request::new(capsule::proto::admin::v1::GetDatabaseStatsRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let direct = admin_api.get_database_stats(request).await.unwrap().into_inner();
    assert_eq!(direct.service, "project");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_leave_the_gateway_standing() {
    // Request spans once leaked into each other across `.await`s on shared
    // threads and chained until dropping one overflowed the stack. Spans
    // exist only with a subscriber, as in a served process.
    {
        use tracing_subscriber::prelude::*;
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info"))
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
            .try_init();
    }
    let mesh = common::start().await;
    let http = Client::new();
    let (token, _) = mesh.user("crowd@example.com").await;
    let (status, project) = call(
        &http,
        reqwest::Method::POST,
        &url(&mesh, "/v1/projects"),
        Some(&token),
        Some(json!({"name": "Crowd"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let project_url = url(&mesh, &format!("/v1/projects/{}", project["id"].as_str().unwrap()));
    let clients = (0..64).map(|_| {
        let (http, token, project_url) = (Client::new(), token.clone(), project_url.clone());
        tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..40 {
                let (status, _) = call(&http, reqwest::Method::GET, &project_url, Some(&token), None).await;
                ok += usize::from(status == StatusCode::OK);
            }
            ok
        })
    });
    let ok: usize = futures::future::join_all(clients)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    assert_eq!(ok, 64 * 40);
    let (status, _) = call(&http, reqwest::Method::GET, &project_url, Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_with_4xx_and_nothing_is_stored() {
    let mesh = common::start().await;
    let http = Client::new();
    let (token, _) = mesh.user("hostile@example.com").await;
    let projects = url(&mesh, "/v1/projects");
    let post_raw = |body: Vec<u8>| {
        http.post(&projects)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // Nesting far past any real request, and bytes that are not UTF-8.
    let deep = format!("{{\"name\": {}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
    for body in [
        deep.into_bytes(),
        b"{\"name\": \"\xff\xfe\"}".to_vec(),
        vec![0xc3, 0x28],
    ] {
        let response = post_raw(body).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["code"], 3, "{error}");
    }
    // Control characters and oversized names, named by field.
    for name in ["a\u{0}b", "bell\u{7}", &"x".repeat(10_000)] {
        let (status, error) = call(
            &http,
            reqwest::Method::POST,
            &projects,
            Some(&token),
            Some(json!({ "name": name })),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
        assert!(error.to_string().contains("project.name"), "{error}");
    }
    // Page sizes out of range are refused; 0 means the default.
    for (size, expected) in [
        ("0", StatusCode::OK),
        ("-1", StatusCode::BAD_REQUEST),
        ("1000000000", StatusCode::BAD_REQUEST),
    ] {
        let (status, body) = call(
            &http,
            reqwest::Method::GET,
            &format!("{projects}?pageSize={size}"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, expected, "pageSize={size}: {body}");
    }
    // Over gRPC, a message past the decode limit is refused before any
    // handler runs.
    let channel = capsule::testing::channel(mesh.addr(ServiceKind::Project)).await;
    let mut client = capsule::proto::project::v1::project_service_client::ProjectServiceClient::new(channel);
    let mut request = tonic::Request::new(capsule::proto::project::v1::CreateProjectRequest {
        project: Some(capsule::proto::project::v1::Project {
            name: "Huge".into(),
            description: "d".repeat(2 * capsule::server::MAX_MESSAGE_BYTES),
            ..Default::default()
        }),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let status = client.create_project(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");

    let (status, listed) = call(&http, reqwest::Method::GET, &projects, Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        listed.get("projects").is_none_or(|p| p.as_array().unwrap().is_empty()),
        "nothing was stored: {listed}"
    );
    mesh.stop().await;
}
