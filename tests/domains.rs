//! Custom domains end to end against Pebble, Let's Encrypt's test CA: a
//! domain added, validated over HTTP-01 (and one over TLS-ALPN-01),
//! served over HTTPS with the certificate Pebble issued; a wildcard
//! through DNS-01 and the platform's DNS hook; renewal forced by a short
//! validity; the platform's own names and other projects' domains
//! refused; a failed challenge reported with Pebble's reason; webhooks
//! told of both.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use capsule::proto::deploy::v1::{self as pb, DomainChallenge, DomainStatus};
use common::{
    TestMesh, acme, authed,
    deploy::{app, deploy_live, host_label},
};
use tonic::Code;

/// An app that says which scheme the gateway told it the client used.
const PROTO_APP: &str = r#"exec python3 -c '
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("proto=" + str(self.headers.get("X-Forwarded-Proto"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), H).serve_forever()
'"#;

/// A webhook receiver on 127.0.0.2 (the network the mesh lets webhooks
/// reach): the events and bodies it was sent.
async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<(String, String)>>>) {
    let received: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let kept = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let kept = kept.clone();
            async move {
                let event = headers["capsule-event"].to_str().unwrap().to_owned();
                kept.lock().unwrap().push((event, body));
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

async fn add(mesh: &TestMesh, token: &str, request: pb::AddDomainRequest) -> Result<pb::Domain, tonic::Status> {
    mesh.deploys()
        .await
        .add_domain(authed(request, token))
        .await
        .map(tonic::Response::into_inner)
}

fn domain(project_id: &str, name: &str) -> pb::AddDomainRequest {
    pb::AddDomainRequest {
        project_id: project_id.to_owned(),
        domain: name.to_owned(),
        ..Default::default()
    }
}

async fn list(mesh: &TestMesh, token: &str, project_id: &str) -> Vec<pb::Domain> {
    mesh.deploys()
        .await
        .list_domains(authed(
            pb::ListDomainsRequest {
                project_id: project_id.to_owned(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .domains
}

/// Waits (up to 60 s) until `name` is `status` (or FAILED, which ends the
/// wait too; RENEWING counts as ISSUED: it is served with a certificate);
/// the domain as it is then.
async fn until(
    mesh: &TestMesh,
    token: &str,
    project_id: &str,
    name: &str,
    status: DomainStatus,
    pebble: &acme::Pebble,
) -> pb::Domain {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = list(mesh, token, project_id)
            .await
            .into_iter()
            .find(|d| d.domain == name)
            .unwrap();
        let served = status == DomainStatus::Issued && found.status() == DomainStatus::Renewing;
        if found.status() == status || served || found.status() == DomainStatus::Failed {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is still {:?}: {}\nPebble said:\n{}",
            found.status(),
            found.status_message,
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_domain_is_validated_issued_served_over_https_and_removed() {
    let plan = acme::Plan::new();
    let mut settings = plan.settings();
    settings.push(("DEPLOY_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.2/32".to_owned()));
    let mesh = common::start_with(common::Options {
        local_runner: true,
        settings,
        ..Default::default()
    })
    .await;
    let https = plan.https_addr;
    let pebble = plan.start(mesh.http.port(), Duration::from_secs(90 * 24 * 3600)).await;
    let (token, _) = mesh.user("domains@example.com").await;
    let project = app(&mesh, &token, "", PROTO_APP, &[]).await;
    deploy_live(&mesh, &token, &project).await;
    let label = host_label(&mesh, &token, &project).await;
    let (hook, received) = receiver().await;
    mesh.deploys()
        .await
        .create_webhook(authed(
            pb::CreateWebhookRequest {
                parent: format!("projects/{project}"),
                url: format!("http://{hook}/hook"),
                events: vec![
                    pb::WebhookEvent::DomainIssued as i32,
                    pb::WebhookEvent::DomainFailed as i32,
                ],
            },
            &token,
        ))
        .await
        .unwrap();

    // HTTP-01, with HSTS; TLS-ALPN-01 without the redirect to HTTPS.
    let shop = add(
        &mesh,
        &token,
        pb::AddDomainRequest {
            hsts_max_age_seconds: 300,
            ..domain(&project, "shop.example.test")
        },
    )
    .await
    .unwrap();
    assert_eq!(shop.status(), DomainStatus::Pending);
    assert_eq!(shop.challenge(), DomainChallenge::Http01);
    assert!(shop.redirect_https);
    let cname = &shop.dns_records[0];
    assert_eq!(
        (cname.r#type.as_str(), cname.value.clone()),
        ("CNAME", format!("{label}.localhost"))
    );
    add(
        &mesh,
        &token,
        pb::AddDomainRequest {
            challenge: DomainChallenge::TlsAlpn01 as i32,
            disable_https_redirect: true,
            ..domain(&project, "alpn.example.test")
        },
    )
    .await
    .unwrap();

    // A challenge the CA cannot reach fails with the CA's reason.
    pebble.add_a("broken.example.test", "127.0.0.9").await;
    add(&mesh, &token, domain(&project, "broken.example.test"))
        .await
        .unwrap();

    let shop = until(
        &mesh,
        &token,
        &project,
        "shop.example.test",
        DomainStatus::Issued,
        &pebble,
    )
    .await;
    assert_eq!(shop.status(), DomainStatus::Issued, "{}", shop.status_message);
    assert!(shop.certificate_expire_time.is_some());
    let alpn = until(
        &mesh,
        &token,
        &project,
        "alpn.example.test",
        DomainStatus::Issued,
        &pebble,
    )
    .await;
    assert_eq!(alpn.status(), DomainStatus::Issued, "{}", alpn.status_message);
    let broken = until(
        &mesh,
        &token,
        &project,
        "broken.example.test",
        DomainStatus::Failed,
        &pebble,
    )
    .await;
    assert_eq!(broken.status(), DomainStatus::Failed);
    assert!(
        broken.status_message.contains("127.0.0.9") || broken.status_message.contains("refused"),
        "Pebble's reason is kept: {}",
        broken.status_message
    );

    // Served over HTTPS with the certificate Pebble issued (the client
    // trusts Pebble's root and nothing else).
    let root = pebble.issuer_root().await;
    let names = ["shop.example.test", "alpn.example.test"];
    let client = acme::client_for(&root, &names, https);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let response = loop {
        match client
            .get(format!("https://shop.example.test:{}/", https.port()))
            .send()
            .await
        {
            Ok(response) => break response,
            Err(err) => {
                assert!(tokio::time::Instant::now() < deadline, "no HTTPS: {err:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["strict-transport-security"], "max-age=300");
    assert_eq!(response.text().await.unwrap(), "proto=https");
    let response = client
        .get(format!("https://alpn.example.test:{}/", https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("strict-transport-security").is_none());

    // Plain HTTP: redirected where asked, served as HTTP where not.
    let plain = acme::client_for(&root, &names, mesh.http);
    let response = plain
        .get(format!("http://shop.example.test:{}/orders?id=7", mesh.http.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        format!("https://shop.example.test:{}/orders?id=7", https.port()).as_str()
    );
    let response = plain
        .get(format!("http://alpn.example.test:{}/", mesh.http.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "proto=http");

    // Removed: no longer routed, and its certificate no longer served.
    mesh.deploys()
        .await
        .remove_domain(authed(
            pb::RemoveDomainRequest {
                project_id: project.clone(),
                domain: "shop.example.test".to_owned(),
            },
            &token,
        ))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let fresh = acme::client_for(&root, &names, https);
        match fresh
            .get(format!("https://shop.example.test:{}/", https.port()))
            .send()
            .await
        {
            Err(_) => break,
            Ok(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "a removed domain is still served"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = plain
        .get(format!("http://shop.example.test:{}/", mesh.http.port()))
        .send()
        .await
        .unwrap();
    assert_ne!(response.status(), 308, "a removed domain is no longer redirected");
    let names: Vec<String> = list(&mesh, &token, &project)
        .await
        .into_iter()
        .map(|d| d.domain)
        .collect();
    assert_eq!(names, ["alpn.example.test", "broken.example.test"]);

    // The project's webhook heard of each certificate, and of the refusal
    // with the CA's reason.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = received.lock().unwrap().clone();
        let heard = |event: &str, name: &str| events.iter().any(|(e, body)| e == event && body.contains(name));
        if heard("domain.issued", "\"shop.example.test\"")
            && heard("domain.issued", "\"alpn.example.test\"")
            && heard("domain.failed", "\"broken.example.test\"")
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "webhooks got {events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mesh.stop().await;
}

#[tokio::test]
async fn the_platforms_names_and_other_projects_domains_are_refused() {
    let plan = acme::Plan::new();
    let mesh = common::start_with(common::Options {
        settings: plan.settings(),
        ..Default::default()
    })
    .await;
    let (token, _) = mesh.user("claims@example.com").await;
    let (other_token, _) = mesh.user("claims-other@example.com").await;
    let project = app(&mesh, &token, "", "", &[]).await;
    let other = app(&mesh, &other_token, "", "", &[]).await;

    // The attacks: another project's app host under the apps' domain, the
    // API's own host (the gateway would answer the CA's challenge for it
    // and route its traffic to the tenant), a wildcard covering it.
    for name in [
        "victim.localhost",
        "*.localhost",
        "api.capsule.test",
        "v2.api.capsule.test",
        "*.capsule.test",
        "capsule.test",
        "x.acme.capsule.test",
    ] {
        let refused = add(&mesh, &token, domain(&project, name)).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{name}: {refused:?}");
        assert_eq!(common::violated_fields(&refused), ["domain"], "{name}");
    }
    for name in [
        "Shop.Example.test",
        "shop..example.test",
        "127.0.0.1",
        "a.b.*.test",
        "-x.example.test",
        "example",
    ] {
        let refused = add(&mesh, &token, domain(&project, name)).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{name}: {refused:?}");
    }

    add(&mesh, &token, domain(&project, "shop.example.test")).await.unwrap();
    let again = add(&mesh, &token, domain(&project, "shop.example.test"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    // Claimed by another project: refused, as is a wildcard that covers it.
    for name in ["shop.example.test", "*.example.test"] {
        let refused = add(&mesh, &other_token, domain(&other, name)).await.unwrap_err();
        assert_eq!(refused.code(), Code::AlreadyExists, "{name}: {refused:?}");
        assert!(refused.message().contains("another project"), "{}", refused.message());
    }
    // The other user can neither see nor remove it.
    let hidden = mesh
        .deploys()
        .await
        .list_domains(authed(
            pb::ListDomainsRequest {
                project_id: project.clone(),
            },
            &other_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    let removed = mesh
        .deploys()
        .await
        .remove_domain(authed(
            pb::RemoveDomainRequest {
                project_id: other.clone(),
                domain: "shop.example.test".to_owned(),
            },
            &other_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(removed.code(), Code::NotFound);
    assert_eq!(list(&mesh, &token, &project).await.len(), 1, "nothing stored was lost");
    // A wildcard holds every name under it, at any depth (its CNAME
    // answers for them all); a name under another's exact name is free.
    add(&mesh, &token, domain(&project, "*.deep.test")).await.unwrap();
    for name in ["a.deep.test", "a.b.deep.test", "*.b.deep.test"] {
        let refused = add(&mesh, &other_token, domain(&other, name)).await.unwrap_err();
        assert_eq!(refused.code(), Code::AlreadyExists, "{name}: {refused:?}");
    }
    add(&mesh, &other_token, domain(&other, "a.shop.example.test"))
        .await
        .unwrap();
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wildcard_is_validated_over_dns_and_renewed_before_expiry() {
    let plan = acme::Plan::new();
    // The platform orders its apps' own wildcard too, from its start: the
    // CA runs first (only DNS-01 is used, so no gateway port is needed).
    let mut settings = plan.settings();
    settings.push(("GATEWAY_APPS_DOMAIN", "apps.capsule.test".to_owned()));
    settings.push(("DEPLOY_ACME_APPS_CERTIFICATE", "true".to_owned()));
    // A short-lived certificate is renewed with a third of its life left.
    let pebble = plan.start(acme::free_port(), Duration::from_secs(24)).await;
    let https = pebble.plan.https_addr;
    let mesh = common::start_with(common::Options {
        local_runner: true,
        settings,
        ..Default::default()
    })
    .await;
    let (token, _) = mesh.user("wildcard@example.com").await;
    let project = app(&mesh, &token, "", PROTO_APP, &[]).await;
    deploy_live(&mesh, &token, &project).await;

    // The owner delegates the challenge to the platform's ACME zone with
    // the CNAME it is told to create; a wildcard whose owner did not (of
    // a zone that is not theirs) fails: the hook writes only in the
    // platform's zone, never at a name a tenant chose.
    let wildcard = add(&mesh, &token, domain(&project, "*.wild.test")).await.unwrap();
    assert_eq!(wildcard.challenge(), DomainChallenge::Dns01);
    let delegation = wildcard
        .dns_records
        .iter()
        .find(|record| record.name == "_acme-challenge.wild.test")
        .unwrap();
    assert_eq!(delegation.r#type, "CNAME");
    assert!(delegation.value.ends_with(".acme.capsule.test"), "{delegation:?}");
    pebble.set_cname("_acme-challenge.wild.test", &delegation.value).await;
    add(&mesh, &token, domain(&project, "*.notmine.test")).await.unwrap();
    let notmine = until(&mesh, &token, &project, "*.notmine.test", DomainStatus::Failed, &pebble).await;
    assert_eq!(notmine.status(), DomainStatus::Failed);
    assert!(notmine.status_message.contains("TXT"), "{}", notmine.status_message);
    let issued = until(&mesh, &token, &project, "*.wild.test", DomainStatus::Issued, &pebble).await;
    assert_ne!(issued.status(), DomainStatus::Failed, "{}", issued.status_message);
    let first = issued.certificate_expire_time.unwrap();

    let root = pebble.issuer_root().await;
    let client = acme::client_for(&root, &["anything.wild.test"], https);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        match client
            .get(format!("https://anything.wild.test:{}/", https.port()))
            .send()
            .await
        {
            Ok(response) => break response.text().await.unwrap(),
            Err(err) => {
                assert!(tokio::time::Instant::now() < deadline, "no HTTPS: {err:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(body, "proto=https");

    // An app's own host is served with the platform's wildcard.
    let label = host_label(&mesh, &token, &project).await;
    let host = format!("{label}.apps.capsule.test");
    let client = acme::client_for(&root, &[host.as_str()], https);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        match client.get(format!("https://{host}:{}/", https.port())).send().await {
            Ok(response) => break response.text().await.unwrap(),
            Err(err) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no HTTPS for {host}: {err:?}\n{}",
                    pebble.log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(body, "proto=https");

    // Renewed: a later certificate replaces it, served meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = list(&mesh, &token, &project)
            .await
            .into_iter()
            .find(|d| d.domain == "*.wild.test")
            .unwrap();
        if now
            .certificate_expire_time
            .as_ref()
            .is_some_and(|end| end.seconds > first.seconds)
        {
            assert_ne!(now.status(), DomainStatus::Failed, "{}", now.status_message);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never renewed: {now:?}\n{}",
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let response = acme::client_for(&root, &["other.wild.test"], https)
        .get(format!("https://other.wild.test:{}/", https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    mesh.stop().await;
}
