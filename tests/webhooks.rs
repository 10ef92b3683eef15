//! Outbound webhooks end to end: a receiver started here (on 127.0.0.2,
//! the one private network this mesh's operator allows) gets signed
//! deliveries of a deployment's life; answering 500 then 200 it gets the
//! event twice and the delivery log shows both; a redelivery carries the
//! same delivery id; loopback URLs are refused; only those who may manage
//! a project's webhooks see them.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::State, http::HeaderMap, routing::post};
use capsule::proto::{
    deploy::v1::{self as pb, DeploymentState, WebhookDeliveryState, WebhookEvent},
    project::v1 as project_pb,
};
use common::{TestMesh, authed, violated_fields};
use hmac::{Hmac, Mac};
use tonic::Code;

/// What the receiver was sent, in order.
#[derive(Debug, Clone)]
struct Received {
    event: String,
    delivery: String,
    signature: String,
    body: String,
}

#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
}

/// Answers 500 to the first deployment.created, 200 to the rest.
async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: String) -> axum::http::StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let mut received = receiver.received.lock().unwrap();
    let event = header("capsule-event");
    let first_created = event == "deployment.created" && !received.iter().any(|r| r.event == event);
    received.push(Received {
        event,
        delivery: header("capsule-delivery"),
        signature: header("capsule-signature"),
        body,
    });
    if first_created {
        axum::http::StatusCode::INTERNAL_SERVER_ERROR
    } else {
        axum::http::StatusCode::OK
    }
}

async fn start_receiver() -> (SocketAddr, Receiver) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, receiver)
}

async fn mesh() -> TestMesh {
    common::start_with(common::Options {
        local_runner: true,
        deploy: vec![
            ("DEPLOY_WEBHOOK_RETRY_SECS", "1"),
            ("DEPLOY_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.2/32"),
        ],
        ..Default::default()
    })
    .await
}

fn subscribe(project_id: &str, url: &str, events: &[WebhookEvent]) -> pb::CreateWebhookRequest {
    pb::CreateWebhookRequest {
        parent: format!("projects/{project_id}"),
        url: url.to_owned(),
        events: events.iter().map(|event| *event as i32).collect(),
    }
}

/// Whether `signature` (`t=…,v1=…`) is `secret`'s over `t.body`, made
/// within the last five minutes: what a receiver checks.
fn verifies(secret: &str, signature: &str, body: &str) -> bool {
    let Some((t, v1)) = signature.strip_prefix("t=").and_then(|rest| rest.split_once(",v1=")) else {
        return false;
    };
    let Ok(sent) = t.parse::<i64>() else { return false };
    if (chrono::Utc::now().timestamp() - sent).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    hex_decode(v1).is_some_and(|v1| mac.verify_slice(&v1).is_ok())
}

fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect()
}

async fn wait_until(receiver: &Receiver, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let received = receiver.received.lock().unwrap().clone();
        if done(&received) {
            return received;
        }
        assert!(Instant::now() < deadline, "{what}: received {received:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_gets_signed_deliveries_retried_until_it_answers_and_the_log_shows_each_attempt() {
    let mesh = mesh().await;
    let (owner, _) = mesh.user("hooks@example.com").await;
    let (stranger, _) = mesh.user("stranger@example.com").await;
    let project_id = common::deploy::project(&mesh, &owner, "true", &[]).await;
    let (addr, receiver) = start_receiver().await;
    let mut deploys = mesh.deploys().await;

    // Loopback is refused by default, over gRPC and REST alike.
    let loopback = format!("http://127.0.0.1:{}/hook", addr.port());
    let refused = deploys
        .create_webhook(authed(
            subscribe(&project_id, &loopback, &[WebhookEvent::DeploymentLive]),
            &owner,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&refused), ["url"]);
    assert!(refused.message().contains("loopback"), "{}", refused.message());
    let rest = reqwest::Client::new()
        .post(format!("http://{}/v1/webhooks", mesh.http))
        .bearer_auth(&owner)
        .json(&serde_json::json!({
            "parent": format!("projects/{project_id}"),
            "url": "http://169.254.169.254/latest/meta-data",
            "events": ["WEBHOOK_EVENT_DEPLOYMENT_LIVE"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), reqwest::StatusCode::BAD_REQUEST);
    assert!(rest.text().await.unwrap().contains("link-local"));

    // Subscribed over REST; the secret is shown this once.
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/v1/webhooks", mesh.http))
        .bearer_auth(&owner)
        .json(&serde_json::json!({
            "parent": format!("projects/{project_id}"),
            "url": format!("http://{addr}/hook"),
            "events": ["WEBHOOK_EVENT_DEPLOYMENT_CREATED", "WEBHOOK_EVENT_DEPLOYMENT_LIVE", "WEBHOOK_EVENT_DEPLOYMENT_FAILED"],
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{created}");
    let webhook_id = created["webhook"]["id"].as_str().unwrap().to_owned();
    let listed = deploys
        .list_webhooks(authed(
            pb::ListWebhooksRequest {
                parent: format!("projects/{project_id}"),
            },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.webhooks.len(), 1);
    assert!(!format!("{listed:?}").contains(&secret), "never shown again");

    // A deployment's life: created (refused once, then taken), live.
    let deployment = common::deploy::deploy(&mesh, &owner, &project_id).await;
    common::deploy::wait_for(
        &mesh,
        &owner,
        &deployment.id,
        DeploymentState::Live,
        Duration::from_secs(30),
    )
    .await;
    let received = wait_until(&receiver, "created twice, then live", |received| {
        received.iter().filter(|r| r.event == "deployment.created").count() == 2
            && received.iter().any(|r| r.event == "deployment.live")
    })
    .await;
    for delivery in &received {
        assert!(verifies(&secret, &delivery.signature, &delivery.body), "{delivery:#?}");
        assert!(!verifies("whsec_wrong", &delivery.signature, &delivery.body));
        let body: serde_json::Value = serde_json::from_str(&delivery.body).unwrap();
        assert_eq!(body["type"], delivery.event.as_str());
        assert_eq!(body["deployment"]["id"], deployment.id.as_str());
        assert_eq!(body["deployment"]["project_id"], project_id.as_str());
    }
    let created_twice: Vec<&Received> = received.iter().filter(|r| r.event == "deployment.created").collect();
    assert_eq!(
        created_twice[0].delivery, created_twice[1].delivery,
        "one delivery, two attempts"
    );
    assert_eq!(created_twice[0].body, created_twice[1].body);

    // The delivery log: newest first, each attempt with its status.
    let log = |token: &str| {
        authed(
            pb::ListWebhookDeliveriesRequest {
                webhook_id: webhook_id.clone(),
                ..Default::default()
            },
            token,
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let deliveries = loop {
        let page = deploys.list_webhook_deliveries(log(&owner)).await.unwrap().into_inner();
        if page
            .deliveries
            .iter()
            .all(|d| d.state() == WebhookDeliveryState::Delivered)
        {
            break page.deliveries;
        }
        assert!(Instant::now() < deadline, "{page:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let events: Vec<WebhookEvent> = deliveries.iter().map(pb::WebhookDelivery::event).collect();
    assert_eq!(events, [WebhookEvent::DeploymentLive, WebhookEvent::DeploymentCreated]);
    let statuses: Vec<i32> = deliveries[1].attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(statuses, [500, 200]);
    assert_eq!(deliveries[0].attempts.len(), 1);

    // Sent again on request: the same delivery id, a fresh signature.
    let live = deliveries[0].clone();
    let again = deploys
        .redeliver_webhook_delivery(authed(
            pb::RedeliverWebhookDeliveryRequest {
                delivery_id: live.id.clone(),
            },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state(), WebhookDeliveryState::Pending);
    let received = wait_until(&receiver, "live twice", |received| {
        received.iter().filter(|r| r.event == "deployment.live").count() == 2
    })
    .await;
    let live_twice: Vec<&Received> = received.iter().filter(|r| r.event == "deployment.live").collect();
    assert_eq!(
        (live_twice[0].delivery.as_str(), live_twice[1].delivery.as_str()),
        (live.id.as_str(), live.id.as_str())
    );
    assert!(verifies(&secret, &live_twice[1].signature, &live_twice[1].body));

    // Someone else's webhook does not exist for them.
    let denied = deploys.list_webhook_deliveries(log(&stranger)).await.unwrap_err();
    assert_eq!(denied.code(), Code::NotFound);
    let denied = deploys
        .create_webhook(authed(
            subscribe(
                &project_id,
                &format!("http://{addr}/hook"),
                &[WebhookEvent::DeploymentLive],
            ),
            &stranger,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::NotFound);

    // Deleted: nothing more is sent.
    deploys
        .delete_webhook(authed(
            pb::DeleteWebhookRequest {
                webhook_id: webhook_id.clone(),
            },
            &owner,
        ))
        .await
        .unwrap();
    let before = receiver.received.lock().unwrap().len();
    let next = common::deploy::deploy(&mesh, &owner, &project_id).await;
    common::deploy::wait_for(&mesh, &owner, &next.id, DeploymentState::Live, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received.lock().unwrap().len(), before);
    mesh.stop().await;
}

#[tokio::test]
async fn organisation_webhooks_need_an_admin_and_bad_subscriptions_say_what_to_fix() {
    let mesh = mesh().await;
    let (owner, _) = mesh.user("org-hooks@example.com").await;
    let mut deploys = mesh.deploys().await;
    let org = common::org::organization(&mesh, &owner, "Hooks Inc").await;
    let (addr, receiver) = start_receiver().await;
    let url = format!("http://{addr}/hook");

    let org_hook = pb::CreateWebhookRequest {
        parent: format!("organizations/{org}"),
        url: url.clone(),
        events: vec![WebhookEvent::DeploymentFailed as i32],
    };
    let created = deploys
        .create_webhook(authed(org_hook.clone(), &owner))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.webhook.unwrap().organization_id, org);

    // It hears about the organisation's projects.
    let project = common::org::project(&mesh, &owner, &org, "Failing").await;
    common::deploy::update_settings(
        &mesh,
        &owner,
        project_pb::ProjectSettings {
            project_id: project.clone(),
            build_command: "exit 3".to_owned(),
            ..Default::default()
        },
        &["build_command"],
    )
    .await;
    let failing = common::deploy::deploy(&mesh, &owner, &project).await;
    let received = wait_until(&receiver, "failed", |received| !received.is_empty()).await;
    assert_eq!(received[0].event, "deployment.failed");
    let body: serde_json::Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(body["deployment"]["id"], failing.id.as_str());
    assert_eq!(body["deployment"]["state"], "failed");

    // A developer of the organisation may deploy but not manage webhooks.
    let (developer, _) = mesh.user("dev@example.com").await;
    common::org::join(
        &mesh,
        &owner,
        &org,
        "dev@example.com",
        project_pb::OrganizationRole::Developer,
        &developer,
    )
    .await;
    let denied = deploys
        .create_webhook(authed(org_hook.clone(), &developer))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("webhooks.manage"), "{}", denied.message());

    // No scope, a bad scope, no events, a bad URL: each field named.
    for (request, field) in [
        (
            pb::CreateWebhookRequest {
                parent: String::new(),
                ..org_hook.clone()
            },
            "parent",
        ),
        (
            pb::CreateWebhookRequest {
                parent: format!("users/{org}"),
                ..org_hook.clone()
            },
            "parent",
        ),
        (
            pb::CreateWebhookRequest {
                url: "ftp://example.com/".to_owned(),
                ..org_hook.clone()
            },
            "url",
        ),
        (
            pb::CreateWebhookRequest {
                url: format!("http://user:secret@{addr}/hook"),
                ..org_hook.clone()
            },
            "url",
        ),
    ] {
        let status = deploys.create_webhook(authed(request, &owner)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(violated_fields(&status), [field], "{status:?}");
    }
    let no_events = deploys
        .create_webhook(authed(
            pb::CreateWebhookRequest {
                events: Vec::new(),
                ..org_hook.clone()
            },
            &owner,
        ))
        .await
        .unwrap_err();
    assert_eq!(no_events.code(), Code::InvalidArgument);
    assert!(format!("{no_events:?}").contains("events"), "{no_events:?}");

    // At most twenty per organisation.
    for _ in 1..20 {
        deploys.create_webhook(authed(org_hook.clone(), &owner)).await.unwrap();
    }
    let full = deploys.create_webhook(authed(org_hook, &owner)).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted);
    mesh.stop().await;
}
