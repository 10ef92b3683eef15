//! Custom domains, their certificates, the open orders' challenges and
//! the ACME accounts (migration V021).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::{
    schema::{acme_accounts, acme_challenges, deployments, domains},
    webhooks::{About, Event},
};
use crate::lifecycle::State;

pub const PENDING: &str = "pending";
pub const ISSUED: &str = "issued";
pub const RENEWING: &str = "renewing";
pub const FAILED: &str = "failed";

/// Domains one project may hold.
pub const MAX_PER_PROJECT: i64 = 50;

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = domains)]
pub struct Domain {
    pub id: Uuid,
    pub project_id: Uuid,
    pub environment: String,
    pub name: String,
    pub challenge: String,
    pub status: String,
    pub status_message: String,
    pub redirect_https: bool,
    pub hsts_max_age_secs: i32,
    pub certificate_pem: Option<String>,
    pub key_sealed: Option<String>,
    pub key_id: Option<String>,
    pub not_after: Option<DateTime<Utc>>,
    pub order_url: Option<String>,
    pub attempts: i32,
    pub organization_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Domain {
    /// Queues `event` about this domain for its project's and
    /// organisation's webhooks, in the caller's transaction.
    fn queue_event(&self, conn: &mut PgConnection, event: Event) -> QueryResult<usize> {
        let about = About {
            deployment_id: None,
            project_id: self.project_id,
            owner_id: self.organization_id,
        };
        let payload = serde_json::json!({
            "type": event.as_str(),
            "created_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "domain": {
                "domain": self.name,
                "project_id": self.project_id.to_string(),
                "environment": self.environment,
                "status": self.status,
                "status_message": self.status_message,
                "certificate_expire_time": self.not_after.map(|end| end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            },
        });
        super::webhooks::enqueue(conn, about, event, payload)
    }
}

#[derive(Insertable)]
#[diesel(table_name = domains)]
pub struct NewDomain<'a> {
    pub id: Uuid,
    pub project_id: Uuid,
    pub environment: &'a str,
    pub name: &'a str,
    pub challenge: &'a str,
    pub status_message: &'a str,
    pub redirect_https: bool,
    pub hsts_max_age_secs: i32,
    pub creator_id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
}

/// Why a domain could not be added.
pub enum Refused {
    /// Another project holds this name or one colliding with it.
    Claimed(String),
    /// This project holds it already.
    Held,
    /// The project holds its most.
    Full,
}

/// Adds `new` unless a name colliding with it (`collide`) is held, by
/// another project or this one, or the project holds its most. Names are
/// compared under a lock, so two projects adding colliding names at once
/// cannot both succeed.
pub fn add(
    conn: &mut PgConnection,
    new: &NewDomain,
    collide: impl Fn(&str, &str) -> bool,
) -> QueryResult<Result<Domain, Refused>> {
    conn.transaction(|conn| {
        diesel::sql_query("LOCK TABLE domains IN SHARE ROW EXCLUSIVE MODE").execute(conn)?;
        // A name collides only with names of the same zone: the last two
        // labels of both match.
        let mut labels: Vec<&str> = new.name.rsplit('.').take(2).collect();
        labels.reverse();
        let zone = labels.join(".");
        let near: Vec<(String, Uuid)> = domains::table
            .filter(domains::name.like(format!("%{zone}")))
            .select((domains::name, domains::project_id))
            .load(conn)?;
        for (name, project) in near {
            if collide(&name, new.name) {
                return Ok(Err(if project == new.project_id {
                    Refused::Held
                } else {
                    Refused::Claimed(name)
                }));
            }
        }
        let held: i64 = domains::table
            .filter(domains::project_id.eq(new.project_id))
            .count()
            .get_result(conn)?;
        if held >= MAX_PER_PROJECT {
            return Ok(Err(Refused::Full));
        }
        diesel::insert_into(domains::table)
            .values(new)
            .returning(Domain::as_returning())
            .get_result(conn)
            .map(Ok)
    })
}

pub fn list(conn: &mut PgConnection, project_id: Uuid) -> QueryResult<Vec<Domain>> {
    domains::table
        .filter(domains::project_id.eq(project_id))
        .order(domains::name)
        .select(Domain::as_select())
        .load(conn)
}

/// Removes the project's domain `name`; whether it had it.
pub fn remove(conn: &mut PgConnection, project_id: Uuid, name: &str) -> QueryResult<Option<Domain>> {
    diesel::delete(
        domains::table
            .filter(domains::project_id.eq(project_id))
            .filter(domains::name.eq(name)),
    )
    .returning(Domain::as_returning())
    .get_result(conn)
    .optional()
}

/// The projects that hold domains (not the platform).
pub fn holders(conn: &mut PgConnection) -> QueryResult<Vec<Uuid>> {
    domains::table
        .filter(domains::project_id.ne(Uuid::nil()))
        .select(domains::project_id)
        .distinct()
        .load(conn)
}

/// The platform's own domain `name` (its project the nil id), kept from
/// now on; whether it was new.
pub fn keep_platform(conn: &mut PgConnection, name: &str) -> QueryResult<bool> {
    diesel::insert_into(domains::table)
        .values(NewDomain {
            id: Uuid::new_v4(),
            project_id: Uuid::nil(),
            environment: "",
            name,
            challenge: "dns-01",
            status_message: "",
            redirect_https: false,
            hsts_max_age_secs: 0,
            creator_id: None,
            organization_id: None,
        })
        .on_conflict_do_nothing()
        .execute(conn)
        .map(|rows| rows == 1)
}

/// Removes tenants' domains never validated since `before`: a claim
/// holds a name only while its owner works on its DNS records. How many.
pub fn expire_unvalidated(conn: &mut PgConnection, before: DateTime<Utc>) -> QueryResult<usize> {
    diesel::delete(
        domains::table
            .filter(domains::certificate_pem.is_null())
            .filter(domains::created_at.lt(before))
            .filter(domains::project_id.ne(Uuid::nil())),
    )
    .execute(conn)
}

/// Removes every domain of a deleted project.
pub fn remove_all(conn: &mut PgConnection, project_id: Uuid) -> QueryResult<usize> {
    diesel::delete(domains::table.filter(domains::project_id.eq(project_id))).execute(conn)
}

/// Domains with a certificate, with the host of the deployment live in
/// their environment, if any.
pub fn routed(conn: &mut PgConnection) -> QueryResult<Vec<(Domain, Option<String>)>> {
    let served: Vec<Domain> = domains::table
        .filter(domains::certificate_pem.is_not_null())
        .order(domains::name)
        .select(Domain::as_select())
        .load(conn)?;
    if served.is_empty() {
        return Ok(Vec::new());
    }
    let projects: Vec<Uuid> = served.iter().map(|domain| domain.project_id).collect();
    let live: Vec<super::Deployment> = deployments::table
        .filter(deployments::state.eq(State::Live.as_str()))
        .filter(deployments::project_id.eq_any(projects))
        .select(super::Deployment::as_select())
        .load(conn)?;
    Ok(served
        .into_iter()
        .map(|domain| {
            let host = live
                .iter()
                .find(|deployment| {
                    deployment.project_id == domain.project_id && deployment.environment == domain.environment
                })
                .and_then(super::Deployment::host);
            (domain, host)
        })
        .collect())
}

/// An open order's challenge, as the gateways answer it.
#[derive(Queryable, Selectable, Insertable, Debug, Clone, PartialEq, Eq)]
#[diesel(table_name = acme_challenges)]
pub struct Challenge {
    pub token: String,
    pub domain_id: Uuid,
    pub name: String,
    pub kind: String,
    pub key_authorization: String,
}

pub fn challenges(conn: &mut PgConnection) -> QueryResult<Vec<Challenge>> {
    acme_challenges::table
        .order(acme_challenges::token)
        .select(Challenge::as_select())
        .load(conn)
}

pub fn open_challenge(conn: &mut PgConnection, challenge: &Challenge) -> QueryResult<usize> {
    diesel::insert_into(acme_challenges::table)
        .values(challenge)
        .on_conflict_do_nothing()
        .execute(conn)
}

pub fn close_challenges(conn: &mut PgConnection, domain_id: Uuid) -> QueryResult<usize> {
    diesel::delete(acme_challenges::table.filter(acme_challenges::domain_id.eq(domain_id))).execute(conn)
}

/// Takes the next domain due an order (new, failed and due again, or at
/// its renewal time) for `lease`; None when none is due.
pub fn take_due(conn: &mut PgConnection, lease: chrono::TimeDelta) -> QueryResult<Option<Domain>> {
    let now = Utc::now();
    conn.transaction(|conn| {
        let due = domains::table
            .filter(domains::next_attempt_at.le(now))
            .filter(
                domains::order_lease_until
                    .is_null()
                    .or(domains::order_lease_until.lt(now)),
            )
            .filter(
                domains::renew_at
                    .is_null()
                    .or(domains::renew_at.le(now))
                    .or(domains::status.eq(FAILED)),
            )
            .order(domains::next_attempt_at)
            .for_update()
            .skip_locked()
            .select(Domain::as_select())
            .first(conn)
            .optional()?;
        let Some(domain) = due else { return Ok(None) };
        // Renewing: still served with the certificate it has.
        let status = if domain.not_after.is_some_and(|end| end > now) {
            RENEWING
        } else {
            domain.status.as_str()
        };
        diesel::update(domains::table.find(domain.id))
            .set((
                domains::order_lease_until.eq(now + lease),
                domains::status.eq(status),
                domains::updated_at.eq(now),
            ))
            .returning(Domain::as_returning())
            .get_result(conn)
            .optional()
    })
}

/// The certificate the CA issued for `id`: served from now on; its
/// webhooks hear of it.
pub fn issued(
    conn: &mut PgConnection,
    id: Uuid,
    certificate_pem: &str,
    key: &capsule::crypto::Sealed,
    (not_after, renew_at): (DateTime<Utc>, DateTime<Utc>),
) -> QueryResult<Option<Domain>> {
    conn.transaction(|conn| {
        let domain = diesel::update(domains::table.find(id))
            .set((
                domains::status.eq(ISSUED),
                domains::status_message.eq(""),
                domains::certificate_pem.eq(certificate_pem),
                domains::key_sealed.eq(&key.text),
                domains::key_id.eq(&key.key_id),
                domains::not_after.eq(not_after),
                domains::renew_at.eq(renew_at),
                domains::attempts.eq(0),
                domains::next_attempt_at.eq(Utc::now()),
                domains::order_lease_until.eq(None::<DateTime<Utc>>),
                domains::updated_at.eq(Utc::now()),
            ))
            .returning(Domain::as_returning())
            .get_result(conn)
            .optional()?;
        if let Some(domain) = &domain {
            domain.queue_event(conn, Event::DomainIssued)?;
        }
        Ok(domain)
    })
}

/// An order for `id` failed for `reason`: tried again after `retry`. A
/// domain whose certificate is still valid keeps serving it (renewing).
pub fn failed(
    conn: &mut PgConnection,
    id: Uuid,
    reason: &str,
    retry: chrono::TimeDelta,
) -> QueryResult<Option<Domain>> {
    let now = Utc::now();
    let Some(domain) = domains::table
        .find(id)
        .select(Domain::as_select())
        .first(conn)
        .optional()?
    else {
        return Ok(None);
    };
    let status = if domain.not_after.is_some_and(|end| end > now) {
        RENEWING
    } else {
        FAILED
    };
    let reason: String = reason.chars().take(1000).collect();
    conn.transaction(|conn| {
        let domain = diesel::update(domains::table.find(id))
            .set((
                domains::status.eq(status),
                domains::status_message.eq(reason),
                domains::attempts.eq(domains::attempts + 1),
                domains::next_attempt_at.eq(now + retry),
                domains::order_lease_until.eq(None::<DateTime<Utc>>),
                domains::updated_at.eq(now),
            ))
            .returning(Domain::as_returning())
            .get_result(conn)
            .optional()?;
        if let Some(domain) = &domain {
            domain.queue_event(conn, Event::DomainFailed)?;
        }
        Ok(domain)
    })
}

/// The order now open for `id`, whose authorizations its removal gives up.
pub fn ordered(conn: &mut PgConnection, id: Uuid, order_url: &str) -> QueryResult<usize> {
    diesel::update(domains::table.find(id))
        .set(domains::order_url.eq(order_url))
        .execute(conn)
}

/// Keeps an order's lease while it runs.
pub fn extend_lease(conn: &mut PgConnection, id: Uuid, lease: chrono::TimeDelta) -> QueryResult<usize> {
    diesel::update(domains::table.find(id))
        .set(domains::order_lease_until.eq(Utc::now() + lease))
        .execute(conn)
}

/// The sealed credentials of the account at `directory`.
pub fn account(conn: &mut PgConnection, directory: &str) -> QueryResult<Option<(String, String)>> {
    acme_accounts::table
        .find(directory)
        .select((acme_accounts::credentials_sealed, acme_accounts::key_id))
        .first(conn)
        .optional()
}

/// Keeps a new account unless another deploy service kept one first;
/// whether this one was kept.
pub fn keep_account(conn: &mut PgConnection, directory: &str, sealed: &capsule::crypto::Sealed) -> QueryResult<bool> {
    diesel::insert_into(acme_accounts::table)
        .values((
            acme_accounts::directory.eq(directory),
            acme_accounts::credentials_sealed.eq(&sealed.text),
            acme_accounts::key_id.eq(&sealed.key_id),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .map(|rows| rows == 1)
}
