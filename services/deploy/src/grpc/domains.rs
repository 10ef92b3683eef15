//! Custom domains: added, listed, removed. Their certificates are the
//! ACME worker's (`crate::acme`); their routes the gateways' (`routes.rs`).

use capsule::{
    audit::{Actor as AuditActor, Event as AuditEvent},
    auth::{Caller, Permission},
    proto::{deploy::v1 as pb, project::v1::GetProjectRequest},
    rpc::{self, FieldViolations},
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    acme::names,
    db::{self, domains::Refused},
    state::DeployServiceApi,
    validate::check_environment,
};

/// The host name an environment answers at under the apps' domain.
fn app_host(label: &str, environment: &str, apps_domain: &str) -> String {
    match environment {
        "production" => format!("{label}.{apps_domain}"),
        other => format!("{label}--{other}.{apps_domain}"),
    }
}

fn status_of(status: &str) -> pb::DomainStatus {
    match status {
        db::domains::ISSUED => pb::DomainStatus::Issued,
        db::domains::RENEWING => pb::DomainStatus::Renewing,
        db::domains::FAILED => pb::DomainStatus::Failed,
        _ => pb::DomainStatus::Pending,
    }
}

fn challenge_of(challenge: &str) -> pb::DomainChallenge {
    match challenge {
        "dns-01" => pb::DomainChallenge::Dns01,
        "tls-alpn-01" => pb::DomainChallenge::TlsAlpn01,
        _ => pb::DomainChallenge::Http01,
    }
}

impl DeployServiceApi {
    /// The project's host label, as the project service tells the caller.
    async fn host_label(&self, caller: &Caller, project_id: Uuid) -> Result<String, Status> {
        let request = Self::as_caller(
            caller,
            GetProjectRequest {
                project_id: project_id.to_string(),
            },
        )?;
        match self.inner.projects.clone().get_project(request).await {
            Ok(project) => Ok(project.into_inner().host_label),
            Err(status) => Err(Self::project_status(status)),
        }
    }

    fn domain_proto(&self, domain: &db::domains::Domain, label: &str) -> pb::Domain {
        let config = &self.inner.acme.config;
        let host = app_host(label, &domain.environment, &config.apps_domain);
        let status_message = match (domain.status.as_str(), domain.status_message.as_str()) {
            (db::domains::PENDING, "") if config.directory.is_none() => {
                "waiting: this platform orders no certificates (DEPLOY_ACME_DIRECTORY is off)".to_owned()
            }
            (db::domains::PENDING, "") => format!(
                "waiting for the CA: create the DNS records first ({})",
                if domain.challenge == "dns-01" {
                    "the CA follows the _acme-challenge CNAME to the record the platform writes"
                } else {
                    "the CA must reach the gateway at this name"
                }
            ),
            (_, message) => message.to_owned(),
        };
        pb::Domain {
            domain: domain.name.clone(),
            project_id: domain.project_id.to_string(),
            environment: domain.environment.clone(),
            status: status_of(&domain.status) as i32,
            status_message,
            challenge: challenge_of(&domain.challenge) as i32,
            dns_records: names::dns_records(
                &domain.name,
                &host,
                (
                    &domain.challenge,
                    &names::challenge_record(domain.id, domain.project_id, &domain.name, config),
                ),
                config,
            ),
            redirect_https: domain.redirect_https,
            hsts_max_age_seconds: u32::try_from(domain.hsts_max_age_secs).unwrap_or(0),
            certificate_expire_time: domain.not_after.map(rpc::timestamp),
            create_time: Some(rpc::timestamp(domain.created_at)),
            update_time: Some(rpc::timestamp(domain.updated_at)),
        }
    }
}

pub(super) async fn add_domain(
    api: &DeployServiceApi,
    request: Request<pb::AddDomainRequest>,
) -> Result<Response<pb::Domain>, Status> {
    let caller = Caller::of(&request)?.clone();
    let permission = Permission::required(&request)?;
    let actor = AuditActor::of(&request);
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let project_id = rpc::parse_id("project_id", &body.project_id, &mut violations);
    let environment = check_environment(&body.environment, &mut violations);
    let config = &api.inner.acme.config;
    let name = body.domain.trim_end_matches('.').to_ascii_lowercase();
    if let Some(why) = names::refusal(&name, config) {
        violations.add("domain", why);
    }
    let wildcard = name.starts_with("*.");
    // CAs validate wildcards over DNS only: the one way for them.
    let challenge = match (body.challenge(), wildcard) {
        (_, true) | (pb::DomainChallenge::Dns01, _) => "dns-01",
        (pb::DomainChallenge::TlsAlpn01, false) => "tls-alpn-01",
        _ => "http-01",
    };
    // With no CA configured nothing is ordered, and no hook is needed yet.
    if challenge == "dns-01" && config.directory.is_some() && config.dns_hook.is_none() {
        violations.add(
            "challenge",
            "this platform writes no DNS-01 records (DEPLOY_ACME_DNS_HOOK is unset): add names without \"*.\" and use HTTP-01 or TLS-ALPN-01",
        );
    }
    violations.check()?;
    let organization = api.check_project(&caller, permission, project_id).await?;
    let label = api.host_label(&caller, project_id).await?;
    let id = Uuid::new_v4();
    let (stored_name, stored_environment) = (name.clone(), environment.clone());
    let creator = caller.user_id;
    let hsts = i32::try_from(body.hsts_max_age_seconds).unwrap_or(i32::MAX);
    let redirect = !body.disable_https_redirect;
    let added = api
        .db()
        .run(move |conn| {
            db::domains::add(
                conn,
                &db::domains::NewDomain {
                    id,
                    project_id,
                    environment: &stored_environment,
                    name: &stored_name,
                    challenge,
                    status_message: "",
                    redirect_https: redirect,
                    hsts_max_age_secs: hsts,
                    creator_id: Some(creator).filter(|id| !id.is_nil()),
                    organization_id: organization,
                },
                names::collide,
            )
        })
        .await?;
    let domain = match added {
        Ok(domain) => domain,
        Err(Refused::Held) => {
            return Err(Status::already_exists(format!("the project already has {name}")));
        }
        // Whose it is stays unsaid.
        Err(Refused::Claimed(other)) => {
            return Err(Status::already_exists(format!(
                "{name} is claimed by another project ({other}): its owner must remove it first"
            )));
        }
        Err(Refused::Full) => {
            return Err(Status::resource_exhausted(format!(
                "the project has {} domains: remove one first",
                db::domains::MAX_PER_PROJECT
            )));
        }
    };
    tracing::info!(domain = %name, project.id = %project_id, "domain added");
    api.audit(
        AuditEvent::new(&actor, "domain.add", format!("domains/{name}"))
            .organization(organization)
            .project(project_id)
            .detail("environment", &environment)
            .detail("challenge", challenge),
    )
    .await;
    Ok(Response::new(api.domain_proto(&domain, &label)))
}

pub(super) async fn list_domains(
    api: &DeployServiceApi,
    request: Request<pb::ListDomainsRequest>,
) -> Result<Response<pb::ListDomainsResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let permission = Permission::required(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let project_id = rpc::parse_id("project_id", &body.project_id, &mut violations);
    violations.check()?;
    api.check_project(&caller, permission, project_id).await?;
    let label = api.host_label(&caller, project_id).await?;
    let rows = api.db().run(move |conn| db::domains::list(conn, project_id)).await?;
    Ok(Response::new(pb::ListDomainsResponse {
        domains: rows.iter().map(|domain| api.domain_proto(domain, &label)).collect(),
    }))
}

pub(super) async fn remove_domain(
    api: &DeployServiceApi,
    request: Request<pb::RemoveDomainRequest>,
) -> Result<Response<pb::RemoveDomainResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let permission = Permission::required(&request)?;
    let actor = AuditActor::of(&request);
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let project_id = rpc::parse_id("project_id", &body.project_id, &mut violations);
    violations.check()?;
    let organization = api.check_project(&caller, permission, project_id).await?;
    let name = body.domain.trim_end_matches('.').to_ascii_lowercase();
    let wanted = name.clone();
    let removed = api
        .db()
        .run(move |conn| db::domains::remove(conn, project_id, &wanted))
        .await?
        .ok_or_else(|| Status::not_found(format!("the project has no domain {name}")))?;
    tracing::info!(domain = %name, project.id = %project_id, "domain removed");
    // The CA forgets what this project proved, so that no other project's
    // order for the name is let through on it.
    if let Some(order) = removed.order_url.clone() {
        let acme = api.inner.acme.clone();
        tokio::spawn(async move { acme.give_up(&order).await });
    }
    api.audit(
        AuditEvent::new(&actor, "domain.remove", format!("domains/{name}"))
            .organization(organization)
            .project(project_id)
            .detail("environment", &removed.environment),
    )
    .await;
    Ok(Response::new(pb::RemoveDomainResponse {}))
}
