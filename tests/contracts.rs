//! The rules declared in the protos are the rules enforced: for a sample of
//! fields, a value just inside and one just outside each rule go through
//! the REST bridge and through gRPC, and `/openapi.json` — read by a JSON
//! Schema validator — judges both values the way the services do. The same
//! rules reach a gRPC client through reflection, as `grpcurl describe`
//! shows them.

mod common;

use capsule::proto::{auth::v1 as auth_pb, project::v1 as project_pb};
use common::authed;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

/// What the services said about one value.
#[derive(Debug, PartialEq)]
enum Verdict {
    Accepted,
    /// INVALID_ARGUMENT naming the field.
    Refused,
}

struct Api {
    http: Client,
    base: String,
    token: String,
    document: Value,
}

impl Api {
    async fn rest(&self, method: Method, path: &str, body: Option<Value>, field: &str) -> Verdict {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status != StatusCode::BAD_REQUEST {
            assert!(
                status.is_success() || status == StatusCode::NOT_FOUND,
                "{path}: {status} {body}"
            );
            return Verdict::Accepted;
        }
        let named = body["details"][0]["fieldViolations"]
            .as_array()
            .is_some_and(|violations| violations.iter().any(|v| v["field"] == field));
        assert!(named, "{path}: the violations name {field}: {body}");
        Verdict::Refused
    }

    /// The schema of an operation's parameter.
    fn parameter(&self, path: &str, method: &str, name: &str) -> Value {
        let pointer = format!("/paths/{}/{method}/parameters", path.replace('/', "~1"));
        self.document
            .pointer(&pointer)
            .and_then(Value::as_array)
            .and_then(|parameters| parameters.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("{method} {path} has a parameter {name}"))["schema"]
            .clone()
    }

    /// The schema of a property of an operation's JSON body (inline, or the
    /// message it refers to).
    fn body_property(&self, path: &str, method: &str, name: &str) -> Value {
        let pointer = format!(
            "/paths/{}/{method}/requestBody/content/application~1json/schema",
            path.replace('/', "~1")
        );
        let mut schema = self
            .document
            .pointer(&pointer)
            .unwrap_or_else(|| panic!("{method} {path} takes a body"));
        if let Some(reference) = schema["$ref"].as_str() {
            schema = self
                .document
                .pointer(reference.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("{reference} is in the document"));
        }
        schema["properties"][name].clone()
    }

    /// The schema of a message's property.
    fn property(&self, message: &str, name: &str) -> Value {
        self.document
            .pointer(&format!("/components/schemas/{message}/properties/{name}"))
            .unwrap_or_else(|| panic!("{message} has a property {name}"))
            .clone()
    }
}

/// The OpenAPI document the gateway serves.
async fn document(http: &Client, mesh: &common::TestMesh) -> Value {
    let response = http
        .get(format!("http://{}/openapi.json", mesh.http))
        .send()
        .await
        .expect("the gateway serves its document");
    response.json().await.expect("the document is JSON")
}

/// The document's verdict on a value.
fn judged(schema: &Value, value: &Value) -> Verdict {
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|error| panic!("{schema} is a valid schema: {error}"));
    if validator.is_valid(value) {
        Verdict::Accepted
    } else {
        Verdict::Refused
    }
}

fn grpc<T>(result: Result<T, tonic::Status>, field: &str) -> Verdict {
    match result {
        Ok(_) => Verdict::Accepted,
        Err(status) if status.code() == tonic::Code::NotFound => Verdict::Accepted,
        Err(status) => {
            assert!(
                common::violated_fields(&status).iter().any(|f| f == field),
                "{status:?}"
            );
            Verdict::Refused
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_rules_match_what_rest_and_grpc_enforce() {
    let mesh = common::start().await;
    let (token, _) = mesh.user("rules@example.com").await;
    let http = Client::new();
    let base = format!("http://{}", mesh.http);
    let document = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let api = Api {
        http,
        base,
        token,
        document,
    };
    let mut projects = mesh.projects().await;
    let mut auth = mesh.auth().await;
    let project = projects
        .create_project(authed(
            project_pb::CreateProjectRequest {
                project: Some(project_pb::Project {
                    name: "Rules".into(),
                    ..Default::default()
                }),
            },
            &api.token,
        ))
        .await
        .unwrap()
        .into_inner();
    use Verdict::{Accepted, Refused};

    // A page holds 0 to 100 projects: a query parameter.
    let schema = api.parameter("/v1/projects", "get", "page_size");
    for (size, expected) in [(100, Accepted), (101, Refused)] {
        assert_eq!(judged(&schema, &json!(size)), expected, "page_size {size} in {schema}");
        let path = format!("/v1/projects?pageSize={size}");
        assert_eq!(api.rest(Method::GET, &path, None, "page_size").await, expected);
        let request = project_pb::ListProjectsRequest {
            page_size: size,
            ..Default::default()
        };
        let result = projects.list_projects(authed(request, &api.token)).await;
        assert_eq!(grpc(result, "page_size"), expected, "page_size {size}");
    }

    // Ids are UUIDs: a path parameter. An unknown UUID is NOT_FOUND, not a
    // bad request.
    let schema = api.parameter("/v1/projects/{project_id}", "get", "project_id");
    for (id, expected) in [
        ("0b6e7ab6-3b0e-4c44-9d39-1c1e2b1c0f00", Accepted),
        ("0b6e7ab6", Refused),
    ] {
        assert_eq!(judged(&schema, &json!(id)), expected, "project_id {id} in {schema}");
        let path = format!("/v1/projects/{id}");
        assert_eq!(api.rest(Method::GET, &path, None, "project_id").await, expected);
        let request = project_pb::GetProjectRequest { project_id: id.into() };
        let result = projects.get_project(authed(request, &api.token)).await;
        assert_eq!(grpc(result, "project_id"), expected, "project_id {id}");
    }

    // A project's name: up to 100 characters (not bytes), not blank; its
    // slug: 3 to 63 lowercase letters and digits in hyphen-separated words.
    let name = api.property("capsule.project.v1.Project", "name");
    let slug = api.property("capsule.project.v1.Project", "slug");
    let cases = [
        (&name, "name", "é".repeat(100), Accepted),
        (&name, "name", "é".repeat(101), Refused),
        (&name, "name", " \t".into(), Refused),
        (&slug, "slug", "a".repeat(63), Accepted),
        (&slug, "slug", "a".repeat(64), Refused),
        (&slug, "slug", "a-b".into(), Accepted),
        (&slug, "slug", "a--b".into(), Refused),
        (&slug, "slug", "ab".into(), Refused),
    ];
    for (i, (schema, key, value, expected)) in cases.into_iter().enumerate() {
        assert_eq!(judged(schema, &json!(value)), expected, "{key} {value:?} in {schema}");
        let field = format!("project.{key}");
        // Accepted projects must not collide: each call gets its own slug,
        // except where the slug is what is tried (REST then takes a variant).
        let (mut rest_slug, mut grpc_slug) = (format!("case-{i}-r"), format!("case-{i}-g"));
        let mut name = "Within the rules".to_owned();
        if key == "name" {
            name.clone_from(&value);
        } else if expected == Accepted {
            rest_slug = format!("{}-r", &value[..value.len().min(61)]);
            grpc_slug.clone_from(&value);
        } else {
            rest_slug.clone_from(&value);
            grpc_slug.clone_from(&value);
        }
        let body = json!({"name": name, "slug": rest_slug});
        assert_eq!(
            api.rest(Method::POST, "/v1/projects", Some(body), &field).await,
            expected
        );
        let project = project_pb::Project {
            name,
            slug: grpc_slug,
            ..Default::default()
        };
        let request = project_pb::CreateProjectRequest { project: Some(project) };
        let result = projects.create_project(authed(request, &api.token)).await;
        assert_eq!(grpc(result, &field), expected, "{key} {value:?}");
    }

    // A variable's name is a shell identifier: a path parameter of PUT.
    let path = "/v1/projects/{project_id}/variables/{variable_name}";
    let schema = api.parameter(path, "put", "variable_name");
    for (name, expected) in [("_API_KEY_2", Accepted), ("2_API_KEY", Refused)] {
        assert_eq!(judged(&schema, &json!(name)), expected, "variable {name} in {schema}");
        let path = format!("/v1/projects/{}/variables/{name}", project.id);
        let body = json!({"value": "v"});
        assert_eq!(
            api.rest(Method::PUT, &path, Some(body), "variable.name").await,
            expected
        );
        let request = project_pb::SetEnvironmentVariableRequest {
            project_id: project.id.clone(),
            variable: Some(project_pb::EnvironmentVariable {
                name: name.into(),
                value: "v".into(),
                ..Default::default()
            }),
        };
        let result = projects.set_environment_variable(authed(request, &api.token)).await;
        assert_eq!(grpc(result, "variable.name"), expected, "variable {name}");
    }

    // A password: 8 to 128 characters, not a common one in any letter
    // case, checked before any hashing.
    let schema = api.body_property("/v1/auth:register", "post", "password");
    for (n, password, expected) in [
        (1, "8 chars!", Accepted),
        (2, "7 chars", Refused),
        (3, "Password1", Refused),
        (4, "pASSWORD12", Refused),
    ] {
        assert_eq!(judged(&schema, &json!(password)), expected, "password {password:?}");
        let body = json!({"email": format!("rest{n}@example.com"), "password": password, "name": "R"});
        assert_eq!(
            api.rest(Method::POST, "/v1/auth:register", Some(body), "password")
                .await,
            expected
        );
        let request = auth_pb::RegisterRequest {
            email: format!("grpc{n}@example.com"),
            password: password.into(),
            name: "G".into(),
        };
        assert_eq!(grpc(auth.register(request).await, "password"), expected);
    }

    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_links_creations_and_requires_only_bodies_that_cannot_be_empty() {
    let mesh = common::start().await;
    let document = document(&Client::new(), &mesh).await;
    let operation = |path: &str, method: &str| {
        document
            .pointer(&format!("/paths/{}/{method}", path.replace('/', "~1")))
            .unwrap_or_else(|| panic!("{method} {path} is documented"))
            .clone()
    };

    // The stateful phase of a fuzzer follows these from a created project.
    let links = operation("/v1/projects", "post")["responses"]["200"]["links"].clone();
    let targets: Vec<&str> = links
        .as_object()
        .expect("CreateProject has links")
        .values()
        .map(|link| link["operationId"].as_str().unwrap())
        .collect();
    for target in ["GetProject", "DeleteProject", "GetProjectSettings"] {
        assert!(targets.iter().any(|t| t.ends_with(target)), "{target} in {links}");
    }
    let get = links
        .as_object()
        .unwrap()
        .values()
        .find(|link| link["operationId"].as_str().unwrap().ends_with("GetProject"))
        .unwrap();
    assert_eq!(get["parameters"]["project_id"], "$response.body#/id");

    // Logging out takes no field that must be set; creating a project does.
    assert_ne!(operation("/v1/auth:logout", "post")["requestBody"]["required"], true);
    assert_eq!(operation("/v1/projects", "post")["requestBody"]["required"], true);
    // A body the path fills is not required: deploying takes defaults.
    assert_ne!(
        operation("/v1/projects/{project_id}/deployments", "post")["requestBody"]["required"],
        true
    );
    // int64 strings are digits, at most the largest int64.
    let logs = operation("/v1/deployments/{deployment_id}/logs", "get");
    let after = logs["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "after_sequence")
        .expect("GetLogs takes after_sequence");
    let pattern = regex::Regex::new(after["schema"]["pattern"].as_str().expect("a pattern")).expect("a regex");
    for (value, ok) in [
        ("0", true),
        ("42", true),
        ("9223372036854775807", true),
        ("9223372036854775808", false),
        ("6813080476125444017815071", false),
        ("-1", false),
    ] {
        assert_eq!(pattern.is_match(value), ok, "{value}");
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_shows_the_rules_to_grpc_clients() {
    use capsule::rules::types::{FieldRules, field_rules::Type};
    use prost::Message;
    use prost_reflect::DescriptorPool;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mesh = common::start().await;
    let channel = capsule::testing::channel(mesh.addr(capsule::config::ServiceKind::Gateway)).await;
    let mut client = ServerReflectionClient::new(channel);
    // What grpcurl does: the file that holds the symbol, then each import
    // it does not have yet, by name; all decoded as one pool.
    let mut asks = vec![MessageRequest::FileContainingSymbol(
        "capsule.project.v1.CreateProjectRequest".into(),
    )];
    // Each file as sent (options hold the rules as extensions, which a
    // plain decode would drop) and its parsed header.
    let mut files: Vec<(prost_types::FileDescriptorProto, Vec<u8>)> = Vec::new();
    while let Some(ask) = asks.pop() {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(ask.clone()),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        let answer = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(found)) = answer.message_response else {
            panic!("{ask:?} is answered with a file: {answer:?}");
        };
        for bytes in found.file_descriptor_proto {
            let file = prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap();
            for import in &file.dependency {
                let known = files.iter().any(|(f, _)| f.name() == import);
                let asked = asks
                    .iter()
                    .any(|a| matches!(a, MessageRequest::FileByFilename(n) if n == import));
                if !known && !asked && file.name() != import {
                    asks.push(MessageRequest::FileByFilename(import.clone()));
                }
            }
            if !files.iter().any(|(f, _)| f.name() == file.name()) {
                files.push((file, bytes));
            }
        }
    }
    assert!(files.iter().any(|(f, _)| f.name() == "buf/validate/validate.proto"));
    // Imports first, so each file's options are read with the extensions
    // it uses already known.
    let mut pool = DescriptorPool::new();
    while !files.is_empty() {
        let ready = files
            .iter()
            .position(|(file, _)| file.dependency.iter().all(|d| pool.get_file_by_name(d).is_some()))
            .expect("reflection serves every import, buf/validate included");
        pool.decode_file_descriptor_proto(files.remove(ready).1.as_slice())
            .unwrap();
    }
    let slug = pool
        .get_message_by_name("capsule.project.v1.Project")
        .unwrap()
        .get_field_by_name("slug")
        .unwrap();
    let rules = pool
        .get_extension_by_name("buf.validate.field")
        .expect("the rule extension");
    let options = slug.options();
    let declared = options.get_extension(&rules);
    let declared: FieldRules = declared
        .as_message()
        .expect("the rules are a message")
        .transcode_to()
        .unwrap();
    let Some(Type::String(string)) = declared.r#type else {
        panic!("string rules on the slug: {declared:?}");
    };
    assert_eq!((string.min_len, string.max_len), (Some(3), Some(63)));
    assert_eq!(string.pattern.as_deref(), Some("^[a-z0-9]+(-[a-z0-9]+)*$"));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_calls_the_grpc_port_with_grpc_web() {
    use hyper_util::{client::legacy::Client as HyperClient, rt::TokioExecutor};
    use project_pb::project_service_client::ProjectServiceClient;
    let mesh = common::start().await;
    let (token, _) = mesh.user("grpc-web@example.com").await;
    let grpc = format!("http://{}", mesh.addr(capsule::config::ServiceKind::Gateway));
    let http = Client::new();

    // The browser's preflight carries no token: CORS answers it first.
    let preflight = http
        .request(
            Method::OPTIONS,
            format!("{grpc}/capsule.project.v1.ProjectService/CreateProject"),
        )
        .header("origin", common::BROWSER_ORIGIN)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-grpc-web",
        )
        .send()
        .await
        .expect("the gateway answers a preflight");
    assert!(preflight.status().is_success(), "{preflight:?}");
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        common::BROWSER_ORIGIN
    );
    // Another origin is not allowed.
    let stranger = http
        .request(
            Method::OPTIONS,
            format!("{grpc}/capsule.project.v1.ProjectService/CreateProject"),
        )
        .header("origin", "https://evil.example.net")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("the gateway answers a preflight");
    assert!(
        stranger.headers().get("access-control-allow-origin").is_none(),
        "{stranger:?}"
    );

    // A gRPC-Web client over HTTP/1.1, through the front door to project.
    let connector = HyperClient::builder(TokioExecutor::new()).build_http();
    let web = tower::ServiceBuilder::new()
        .layer(tonic_web::GrpcWebClientLayer::new())
        .service(connector);
    let mut client = ProjectServiceClient::with_origin(web, grpc.parse().expect("an origin"));
    let mut create = tonic::Request::new(project_pb::CreateProjectRequest {
        project: Some(project_pb::Project {
            name: "From a browser".into(),
            ..Default::default()
        }),
    });
    create
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("a header"));
    let created = client
        .create_project(create)
        .await
        .expect("a gRPC-Web call creates a project")
        .into_inner();
    assert_eq!(created.name, "From a browser");
    // Errors come back as gRPC statuses too: no token, no access.
    let refused = client
        .get_project(project_pb::GetProjectRequest { project_id: created.id })
        .await
        .expect_err("a call without a token is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    mesh.stop().await;
}
