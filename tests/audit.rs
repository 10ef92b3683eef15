//! The audit trail: every step of a team's work is one record with its
//! actor, address and request id, readable by the organisation's admins,
//! page by page; and no record can be altered, through the API or in the
//! database.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use capsule::{
    config::ServiceKind,
    proto::{deploy::v1 as deploy_pb, project::v1 as pb},
};
use common::{TestMesh, authed};
use diesel::RunQueryDsl;
use serde_json::Value;

async fn events(mesh: &TestMesh, token: &str, query: &str) -> (reqwest::StatusCode, Value) {
    let response = reqwest::Client::new()
        .get(format!("http://{}/v1/auditEvents?{query}", mesh.http))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

fn actions(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|event| event["action"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_teams_changes_are_each_one_record_that_nobody_can_alter() {
    let mesh = common::start().await;
    let (owner, owner_id) = mesh.user("audit-owner@example.com").await;
    let (member, member_id) = mesh.user("audit-member@example.com").await;
    let mut projects = mesh.projects().await;

    let org = common::org::organization(&mesh, &owner, "Audited").await;
    let project = common::org::project(&mesh, &owner, &org, "Ledger").await;
    let mut invite = authed(
        pb::InviteMemberRequest {
            organization_id: org.clone(),
            email: "audit-member@example.com".to_owned(),
            role: pb::OrganizationRole::Viewer.into(),
        },
        &owner,
    );
    invite
        .metadata_mut()
        .insert("x-request-id", "invite-request-42".parse().unwrap());
    projects.invite_member(invite).await.unwrap();
    let token = common::mailed_invitation_token(&mesh, "audit-member@example.com");
    projects
        .accept_invitation(authed(pb::AcceptInvitationRequest { token }, &member))
        .await
        .unwrap();
    projects
        .update_member(authed(
            pb::UpdateMemberRequest {
                organization_id: org.clone(),
                user_id: member_id.clone(),
                role: pb::OrganizationRole::Developer.into(),
            },
            &owner,
        ))
        .await
        .unwrap();
    common::deploy::set_variable(&mesh, &member, &project, "FEATURE_FLAGS", "checkout-v2", false).await;
    let deployment = common::deploy::deploy(&mesh, &member, &project).await;
    // A member without audit.read: refused, naming it.
    let (status, body) = events(&mesh, &member, &format!("organizationId={org}")).await;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{body}");
    assert!(body.to_string().contains("audit.read"), "{body}");
    projects
        .remove_member(authed(
            pb::RemoveMemberRequest {
                organization_id: org.clone(),
                user_id: member_id.clone(),
            },
            &owner,
        ))
        .await
        .unwrap();
    // The deploy service keeps its own trail; the gateway merges them.
    let mut deploys = mesh.deploys().await;
    deploys
        .cancel_deployment(authed(
            deploy_pb::CancelDeploymentRequest {
                deployment_id: deployment.id.clone(),
            },
            &owner,
        ))
        .await
        .unwrap();
    let webhook = deploys
        .create_webhook(authed(
            deploy_pb::CreateWebhookRequest {
                parent: format!("organizations/{org}"),
                url: "https://93.184.216.34/capsule".to_owned(),
                events: vec![deploy_pb::WebhookEvent::DeploymentFailed.into()],
            },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner()
        .webhook
        .unwrap();

    // The organisation's trail, newest first, every step with who and where.
    let (status, page) = events(&mesh, &owner, &format!("organizationId={org}")).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{page}");
    let mut steps = actions(&page);
    steps.reverse();
    assert_eq!(
        steps,
        [
            "organization.create",
            "project.create",
            "organization.invitation.create",
            "organization.member.join",
            "organization.member.update",
            "project.variable.set",
            "deployment.create",
            "organization.member.remove",
            "deployment.cancel",
            "webhook.create",
        ],
        "{page}"
    );
    for event in page["events"].as_array().unwrap() {
        let actor = event["actorId"].as_str().unwrap();
        let expected = if matches!(
            event["action"].as_str(),
            Some("organization.member.join" | "project.variable.set" | "deployment.create")
        ) {
            &member_id
        } else {
            &owner_id
        };
        assert_eq!(actor, expected, "{event}");
        assert_eq!(event["clientAddress"], "127.0.0.1", "{event}");
        assert!(!event["requestId"].as_str().unwrap().is_empty(), "{event}");
        let service = if event["action"].as_str().unwrap().starts_with("organization.")
            || event["action"].as_str().unwrap().starts_with("project.")
        {
            "project"
        } else {
            "deploy"
        };
        assert_eq!(event["service"], service, "{event}");
        assert_eq!(event["organizationId"], org.as_str());
    }
    let by_action = |action: &str| {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|event| event["action"] == action)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by_action("organization.invitation.create")["requestId"],
        "invite-request-42"
    );
    let variable = by_action("project.variable.set");
    assert_eq!(variable["details"]["name"], "FEATURE_FLAGS");
    assert!(
        !variable.to_string().contains("checkout-v2"),
        "values are never recorded: {variable}"
    );
    assert_eq!(by_action("organization.member.update")["details"]["role"], "developer");
    assert_eq!(
        by_action("deployment.create")["target"],
        format!("deployments/{}", deployment.id)
    );
    assert_eq!(by_action("deployment.create")["projectId"], project.as_str());
    assert_eq!(
        by_action("webhook.create")["target"],
        format!("webhooks/{}", webhook.id)
    );

    // Page by page, the same events.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let (_, page) = events(
            &mesh,
            &owner,
            &format!("organizationId={org}&pageSize=3&pageToken={token}"),
        )
        .await;
        paged.extend(actions(&page));
        token = page["nextPageToken"].as_str().unwrap_or_default().to_owned();
        if token.is_empty() {
            break;
        }
    }
    steps.reverse();
    assert_eq!(paged, steps);

    // Without a filter, a user reads their own events only.
    let (_, own) = events(&mesh, &member, "").await;
    assert_eq!(
        actions(&own),
        [
            "deployment.create",
            "project.variable.set",
            "organization.member.join",
            "user.register"
        ]
    );
    // Sign-ins are the auth service's: a failed one is recorded against the
    // account it tried, so its owner sees it; never the password.
    let mut auth = mesh.auth().await;
    let login = |password: &str| capsule::proto::auth::v1::LoginRequest {
        email: "audit-member@example.com".to_owned(),
        password: password.to_owned(),
    };
    auth.login(login("not the password at all")).await.unwrap_err();
    auth.login(login(common::PASSWORD)).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let own = loop {
        let (_, own) = events(&mesh, &member, "pageSize=2").await;
        if actions(&own) == ["user.sign_in", "user.sign_in.fail"] || std::time::Instant::now() > deadline {
            break own;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(actions(&own), ["user.sign_in", "user.sign_in.fail"], "{own}");
    assert_eq!(own["events"][1]["service"], "auth");
    assert_eq!(own["events"][1]["details"]["reason"], "wrong password");
    assert!(!own.to_string().contains("not the password"), "{own}");
    let (status, _) = events(&mesh, &member, &format!("actorId={owner_id}")).await;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN);

    // Nothing in the API alters a record...
    let pool = capsule::proto::pool();
    for service in pool.services() {
        for method in service.methods() {
            let name = method.name();
            assert!(
                !name.contains("AuditEvent") || name.starts_with("List") || name.starts_with("Stream"),
                "{} alters the audit trail",
                method.full_name()
            );
        }
    }
    // ...and each database refuses it too.
    for kind in [ServiceKind::Auth, ServiceKind::Project, ServiceKind::Deploy] {
        let mut conn = mesh.database(kind).connect();
        for statement in [
            "UPDATE audit_events SET actor_id = NULL",
            "DELETE FROM audit_events",
            "TRUNCATE audit_events",
        ] {
            let err = diesel::sql_query(statement).execute(&mut conn).unwrap_err();
            assert!(err.to_string().contains("append-only"), "{kind:?} {statement}: {err}");
        }
    }
    let (_, after) = events(&mesh, &owner, &format!("organizationId={org}")).await;
    assert_eq!(after["events"], page["events"]);
    mesh.stop().await;
}

#[tokio::test]
async fn the_trail_is_followed_as_server_sent_events_from_every_service() {
    use futures::StreamExt;
    let mesh = common::start().await;
    let (owner, _) = mesh.user("follow-owner@example.com").await;
    let (stranger, _) = mesh.user("follow-stranger@example.com").await;
    let org = common::org::organization(&mesh, &owner, "Followed").await;
    let follow = |token: &str| {
        reqwest::Client::new()
            .get(format!(
                "http://{}/v1/auditEvents:stream?organizationId={org}",
                mesh.http
            ))
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .send()
    };
    // A stranger is refused before anything streams.
    let refused = follow(&stranger).await.unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::NOT_FOUND);

    let response = follow(&owner).await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    // Only what happens from now on: the organisation's creation is past.
    let project = common::org::project(&mesh, &owner, &org, "Watched").await;
    mesh.deploys()
        .await
        .create_webhook(authed(
            deploy_pb::CreateWebhookRequest {
                parent: format!("projects/{project}"),
                url: "https://93.184.216.34/capsule".to_owned(),
                events: vec![deploy_pb::WebhookEvent::DeploymentLive.into()],
            },
            &owner,
        ))
        .await
        .unwrap();
    let mut body = String::new();
    let mut chunks = response.bytes_stream();
    let read = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        while let Some(chunk) = chunks.next().await {
            body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if body.contains("webhook.create") && body.contains("project.create") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "both services' events arrive:\n{body}");
    assert!(!body.contains("organization.create"), "{body}");
    let data: Vec<Value> = body
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let services: Vec<&str> = data.iter().filter_map(|event| event["service"].as_str()).collect();
    assert_eq!(services, ["project", "deploy"], "oldest first: {body}");
    mesh.stop().await;
}
