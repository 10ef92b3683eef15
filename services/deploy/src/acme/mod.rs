//! Certificates for custom domains, from an ACME CA (RFC 8555, with
//! instant-acme): the orders of domains that are new, failed and due
//! again, or near expiry. Any deploy service may work on any domain; a
//! lease on the row keeps two from ordering the same one.
//!
//! An order's challenges are stored (`acme_challenges`) and reach every
//! gateway through the route table: HTTP-01 answers and TLS-ALPN-01
//! certificates are the gateways'; DNS-01 records are written by the
//! operator's hook ([`hook`]). The issued chain and its key (sealed) are
//! stored on the domain, so any gateway serves them. A failure keeps the
//! CA's reason on the domain and is tried again after 15 minutes,
//! doubling up to a day, at most 8 times in a row (then the domain waits
//! to be removed and added again). A removed domain's authorizations are
//! deactivated at the CA, so that no other project's order reuses them. A
//! domain never validated within 7 days is removed: a claim does not hold
//! a name for ever.

pub mod config;
mod hook;
pub mod names;

use std::{sync::Arc, time::Duration};

use capsule::{
    audit::{Actor, Event as AuditEvent},
    crypto::Keyring,
    db::Database,
};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

pub use config::AcmeConfig;

use crate::{
    db::domains::{self, Challenge, Domain},
    notify::{Event, Hub},
};

/// Orders worked on at once by one process.
const ORDERS_AT_ONCE: usize = 4;

/// How long an order may hold its domain before another process may take
/// it over.
const ORDER_LEASE: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// How long the CA may take to validate, and to issue.
const CA_PATIENCE: Duration = Duration::from_secs(120);

/// The wait after the first failure; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: chrono::TimeDelta = chrono::TimeDelta::minutes(15);
const MAX_RETRY: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// Failed orders in a row after which a domain is no longer ordered.
const MAX_ATTEMPTS: i32 = 8;

/// How long a domain may stay without a certificate before its claim on
/// the name lapses.
const UNVALIDATED_FOR: chrono::TimeDelta = chrono::TimeDelta::days(7);

/// How long one order may take in all.
const ORDER_TIMEOUT: Duration = Duration::from_secs(600);

/// The ACME client of one deploy process.
pub struct Acme {
    pub config: AcmeConfig,
    db: Database,
    keys: Arc<Keyring>,
    account: tokio::sync::Mutex<Option<Account>>,
}

/// The place sealed texts are bound to (the AAD): what they belong to.
fn key_place(domain_id: uuid::Uuid) -> Vec<u8> {
    format!("domains/{domain_id}/key").into_bytes()
}

fn account_place(directory: &str) -> Vec<u8> {
    format!("acme_accounts/{directory}").into_bytes()
}

/// The challenge a domain's setting names.
fn challenge_type(name: &str) -> ChallengeType {
    match name {
        "dns-01" => ChallengeType::Dns01,
        "tls-alpn-01" => ChallengeType::TlsAlpn01,
        _ => ChallengeType::Http01,
    }
}

impl Acme {
    pub fn new(config: AcmeConfig, db: Database, keys: Arc<Keyring>) -> Arc<Self> {
        Arc::new(Self {
            config,
            db,
            keys,
            account: tokio::sync::Mutex::new(None),
        })
    }

    /// Orders certificates as domains fall due, until `shutdown`.
    pub async fn run(self: Arc<Self>, hub: Hub, shutdown: CancellationToken) {
        let Some(directory) = self.config.directory.clone() else {
            tracing::info!("DEPLOY_ACME_DIRECTORY is off: no certificate is ordered");
            return;
        };
        tracing::info!(directory, "ordering certificates for custom domains");
        if self.config.apps_certificate {
            // The apps' domain is reserved: no project holds it, so the
            // platform's row never collides with a tenant's.
            let name = format!("*.{}", self.config.apps_domain);
            match self.db.run(move |conn| domains::keep_platform(conn, &name)).await {
                Ok(true) => tracing::info!("ordering the apps' wildcard certificate"),
                Ok(false) => {}
                Err(err) => tracing::warn!(error = %err, "cannot keep the apps' wildcard certificate's domain"),
            }
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(ORDERS_AT_ONCE));
        let mut events = hub.subscribe();
        let mut ticks = 0u32;
        loop {
            if ticks.is_multiple_of(60) {
                let before = chrono::Utc::now() - UNVALIDATED_FOR;
                match self.db.run(move |conn| domains::expire_unvalidated(conn, before)).await {
                    Ok(0) => {}
                    Ok(lapsed) => tracing::info!(lapsed, "domains never validated in 7 days were removed"),
                    Err(err) => tracing::warn!(error = %err, "cannot remove lapsed domains"),
                }
            }
            ticks = ticks.wrapping_add(1);
            while let Ok(slot) = slots.clone().try_acquire_owned() {
                match self.db.run(move |conn| domains::take_due(conn, ORDER_LEASE)).await {
                    Ok(Some(domain)) => {
                        let acme = self.clone();
                        tokio::spawn(async move {
                            acme.order(domain).await;
                            drop(slot);
                        });
                    }
                    Ok(None) => break,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot look for domains due a certificate");
                        break;
                    }
                }
            }
            // The next second, or a domain's change (not a log line's).
            let tick = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = &mut tick => break,
                    event = events.recv() => match event {
                        Ok(Event::Domain(_)) | Err(RecvError::Lagged(_)) => break,
                        Ok(_) => {}
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        }
    }

    /// One order for `domain`, its outcome stored.
    async fn order(&self, domain: Domain) {
        let id = domain.id;
        tracing::info!(domain = %domain.name, "ordering a certificate");
        let outcome = tokio::time::timeout(ORDER_TIMEOUT, self.obtain(&domain))
            .await
            .unwrap_or_else(|_| Err("the CA did not finish the order within 10 minutes".to_owned()));
        if let Err(err) = self.db.run(move |conn| domains::close_challenges(conn, id)).await {
            tracing::warn!(error = %err, "cannot close the order's challenges");
        }
        let outcome = match outcome {
            Ok((chain, key)) => self.keep(&domain, &chain, &key).await,
            Err(reason) => Err(reason),
        };
        let (action, reason) = match outcome {
            Ok(()) => {
                tracing::info!(domain = %domain.name, "certificate issued");
                ("domain.certificate.issue", String::new())
            }
            Err(reason) => {
                tracing::warn!(domain = %domain.name, reason, "no certificate");
                let (retry, reason) = if domain.attempts + 1 >= MAX_ATTEMPTS {
                    (
                        chrono::TimeDelta::days(36500),
                        format!(
                            "{reason} (given up after {MAX_ATTEMPTS} failed orders: fix the DNS records, then remove the domain and add it again)"
                        ),
                    )
                } else {
                    let doubling = 2i32.saturating_pow(u32::try_from(domain.attempts.clamp(0, 20)).unwrap_or(0));
                    ((FIRST_RETRY * doubling).min(MAX_RETRY), reason)
                };
                let stored = reason.clone();
                if let Err(err) = self.db.run(move |conn| domains::failed(conn, id, &stored, retry)).await {
                    tracing::warn!(error = %err, "cannot record the order's failure");
                }
                ("domain.certificate.fail", reason)
            }
        };
        let mut event = AuditEvent::new(&Actor::default(), action, format!("domains/{}", domain.name))
            .detail("environment", &domain.environment);
        if !domain.project_id.is_nil() {
            event = event.project(domain.project_id);
        }
        if !reason.is_empty() {
            event = event.detail("reason", reason);
        }
        capsule::audit::append(&self.db, event).await;
    }

    /// Stores the certificate and its sealed key.
    async fn keep(&self, domain: &Domain, chain: &str, key: &str) -> Result<(), String> {
        let (not_before, not_after) = validity(chain)?;
        // Renewed DEPLOY_ACME_RENEW_BEFORE_DAYS before expiry, or with a
        // third of its life left when that is later (short-lived ones).
        let before = chrono::TimeDelta::from_std(self.config.renew_before).unwrap_or(chrono::TimeDelta::days(30));
        let renew_at = (not_after - before).max(not_after - (not_after - not_before) / 3);
        let sealed = self
            .keys
            .seal(key, &key_place(domain.id))
            .map_err(|err| format!("the certificate's key cannot be sealed: {err}"))?;
        let (id, chain) = (domain.id, chain.to_owned());
        self.db
            .run(move |conn| domains::issued(conn, id, &chain, &sealed, (not_after, renew_at)))
            .await
            .map_err(|err| format!("the certificate cannot be stored: {}", err))?;
        Ok(())
    }

    /// The private key of a stored certificate, opened.
    pub fn open_key(&self, domain: &Domain) -> Option<String> {
        let (sealed, key_id) = (domain.key_sealed.as_ref()?, domain.key_id.as_ref()?);
        self.keys
            .open(key_id, sealed, &key_place(domain.id))
            .inspect_err(|err| tracing::warn!(domain = %domain.name, error = %err, "cannot open a certificate's key"))
            .ok()
    }

    /// The account at the directory: the stored one, or a new one.
    async fn account(&self) -> Result<Account, String> {
        let mut held = self.account.lock().await;
        if let Some(account) = held.as_ref() {
            return Ok(account.clone());
        }
        let directory = self.config.directory.clone().unwrap_or_default();
        let stored = {
            let directory = directory.clone();
            self.db
                .run(move |conn| domains::account(conn, &directory))
                .await
                .map_err(|err| err.to_string())?
        };
        let account = match stored {
            Some((sealed, key_id)) => self.restore(&directory, &sealed, &key_id).await?,
            None => {
                let contact = self.config.email.as_ref().map(|email| format!("mailto:{email}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let eab = self
                    .config
                    .eab
                    .as_ref()
                    .map(|(kid, key)| ExternalAccountKey::new(kid.clone(), key));
                let (account, credentials) = self
                    .builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory.clone(),
                        eab.as_ref(),
                    )
                    .await
                    .map_err(|err| format!("the CA refused an account: {err}"))?;
                let json = serde_json::to_string(&credentials).map_err(|err| err.to_string())?;
                let sealed = self
                    .keys
                    .seal(&json, &account_place(&directory))
                    .map_err(|err| format!("the ACME account cannot be sealed: {err}"))?;
                let kept = {
                    let directory = directory.clone();
                    self.db
                        .run(move |conn| domains::keep_account(conn, &directory, &sealed))
                        .await
                        .map_err(|err| err.to_string())?
                };
                if kept {
                    account
                } else {
                    // Another deploy service kept one first: use that.
                    drop(account);
                    let directory2 = directory.clone();
                    let (sealed, key_id) = self
                        .db
                        .run(move |conn| domains::account(conn, &directory2))
                        .await
                        .map_err(|err| err.to_string())?
                        .ok_or("the ACME account vanished")?;
                    self.restore(&directory, &sealed, &key_id).await?
                }
            }
        };
        *held = Some(account.clone());
        Ok(account)
    }

    async fn restore(&self, directory: &str, sealed: &str, key_id: &str) -> Result<Account, String> {
        let json = self
            .keys
            .open(key_id, sealed, &account_place(directory))
            .map_err(|err| format!("the stored ACME account cannot be opened: {err}"))?;
        let credentials = serde_json::from_str(&json).map_err(|err| err.to_string())?;
        self.builder()?
            .from_credentials(credentials)
            .await
            .map_err(|err| format!("the CA's directory cannot be read: {err}"))
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, String> {
        match &self.config.ca_file {
            Some(path) => Account::builder_with_root(path)
                .map_err(|err| format!("DEPLOY_ACME_CA_FILE ({}): {err}", path.display())),
            None => Account::builder().map_err(|err| err.to_string()),
        }
    }

    /// An order through to its certificate: the chain and its key (PEM),
    /// or the CA's reason.
    async fn obtain(&self, domain: &Domain) -> Result<(String, String), String> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(domain.name.clone())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|err| format!("the CA refused the order: {}", problem(&err)))?;
        let (id, url) = (domain.id, order.url().to_owned());
        self.db
            .run(move |conn| domains::ordered(conn, id, &url))
            .await
            .map_err(|err| err.to_string())?;
        let mut published = Vec::new();
        let result = self.validate(domain, &mut order, &mut published).await;
        if let Some(hook) = &self.config.dns_hook {
            for (record, value) in &published {
                let _ = hook::run(hook, "cleanup", record, value).await;
            }
        }
        result?;
        let patience = RetryPolicy::new().timeout(CA_PATIENCE);
        let key = order.finalize().await.map_err(|err| problem(&err))?;
        let chain = order.poll_certificate(&patience).await.map_err(|err| problem(&err))?;
        Ok((chain, key))
    }

    /// Answers the order's challenges and waits until the CA is ready to
    /// issue; the DNS records it published, to clean up.
    async fn validate(
        &self,
        domain: &Domain,
        order: &mut instant_acme::Order,
        published: &mut Vec<(String, String)>,
    ) -> Result<(), String> {
        let kind = challenge_type(&domain.challenge);
        {
            let mut authorizations = order.authorizations();
            while let Some(authorization) = authorizations.next().await {
                let mut authorization = authorization.map_err(|err| problem(&err))?;
                match authorization.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => return Err(format!("the CA's authorization is {other:?}")),
                }
                let mut challenge = authorization
                    .challenge(kind.clone())
                    .ok_or_else(|| format!("the CA offers no {} challenge for {}", domain.challenge, domain.name))?;
                let key_authorization = challenge.key_authorization();
                let value = match kind {
                    ChallengeType::Dns01 => key_authorization.dns_value(),
                    _ => key_authorization.as_str().to_owned(),
                };
                let name = names::base(&domain.name).to_owned();
                let open = Challenge {
                    token: challenge.token.clone(),
                    domain_id: domain.id,
                    name: name.clone(),
                    kind: domain.challenge.clone(),
                    key_authorization: value.clone(),
                };
                self.db
                    .run(move |conn| domains::open_challenge(conn, &open))
                    .await
                    .map_err(|err| err.to_string())?;
                if kind == ChallengeType::Dns01 {
                    let hook = self
                        .config
                        .dns_hook
                        .as_ref()
                        .ok_or("wildcard domains need DEPLOY_ACME_DNS_HOOK")?;
                    let record = names::challenge_record(domain.id, domain.project_id, &domain.name, &self.config);
                    published.push((record.clone(), value.clone()));
                    hook::run(hook, "present", &record, &value).await?;
                }
                // Every gateway learns the challenge from its route table.
                tokio::time::sleep(self.config.challenge_delay).await;
                challenge
                    .set_ready()
                    .await
                    .map_err(|err| format!("the CA refused the challenge: {}", problem(&err)))?;
            }
        }
        let id = domain.id;
        let _ = self
            .db
            .run(move |conn| domains::extend_lease(conn, id, ORDER_LEASE))
            .await;
        let patience = RetryPolicy::new().timeout(CA_PATIENCE);
        match order.poll_ready(&patience).await.map_err(|err| problem(&err))? {
            OrderStatus::Ready => Ok(()),
            _ => Err(self.reason(order).await),
        }
    }

    /// Deactivates the authorizations of a removed domain's last order.
    pub async fn give_up(&self, order_url: &str) {
        let Ok(account) = self.account().await else { return };
        let Ok(mut order) = account.order(order_url.to_owned()).await else {
            return;
        };
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authorization)) = authorizations.next().await {
            if matches!(
                authorization.status,
                AuthorizationStatus::Valid | AuthorizationStatus::Pending
            ) && let Err(err) = authorization.deactivate().await
            {
                tracing::debug!(error = %err, "cannot deactivate an authorization");
            }
        }
    }

    /// Why the CA invalidated an order: its challenges' errors.
    async fn reason(&self, order: &mut instant_acme::Order) -> String {
        let mut reasons = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(authorization)) = authorizations.next().await {
            for challenge in &authorization.challenges {
                if let Some(error) = &challenge.error {
                    reasons.push(error.detail.clone().unwrap_or_else(|| error.to_string()));
                }
            }
        }
        match reasons.is_empty() {
            true => "the CA invalidated the order and gave no reason".to_owned(),
            false => format!("the CA could not validate the domain: {}", reasons.join("; ")),
        }
    }
}

/// What the CA said, in one line.
fn problem(err: &instant_acme::Error) -> String {
    match err {
        instant_acme::Error::Api(problem) => problem.detail.clone().unwrap_or_else(|| problem.to_string()),
        other => other.to_string(),
    }
}

/// When the first certificate of a PEM chain starts and stops being valid.
fn validity(chain: &str) -> Result<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>), String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain.as_bytes())
        .map_err(|err| format!("the CA's certificate is no PEM: {err}"))?;
    let certificate = pem
        .parse_x509()
        .map_err(|err| format!("the CA's certificate cannot be read: {err}"))?;
    let time = |at: x509_parser::time::ASN1Time| {
        chrono::DateTime::from_timestamp(at.timestamp(), 0)
            .ok_or_else(|| "the CA's certificate has no valid dates".to_owned())
    };
    Ok((
        time(certificate.validity().not_before)?,
        time(certificate.validity().not_after)?,
    ))
}

/// The ids of the keys that sealed stored certificate keys and accounts.
pub fn key_ids(conn: &mut diesel::PgConnection) -> diesel::QueryResult<Vec<String>> {
    use diesel::prelude::*;

    use crate::db::schema::{acme_accounts, domains};
    let mut ids: Vec<String> = domains::table
        .filter(domains::key_id.is_not_null())
        .select(domains::key_id.assume_not_null())
        .distinct()
        .load(conn)?;
    ids.extend(
        acme_accounts::table
            .select(acme_accounts::key_id)
            .distinct()
            .load::<String>(conn)?,
    );
    Ok(ids)
}

/// Seals every stored certificate key and account not sealed by the
/// current key under it (`capsule secrets reencrypt`). How many.
pub fn reencrypt(conn: &mut diesel::PgConnection, keys: &Keyring) -> anyhow::Result<usize> {
    use diesel::prelude::*;

    use crate::db::schema::{acme_accounts, domains};
    let current = keys
        .current()
        .ok_or_else(|| anyhow::anyhow!("no current key"))?
        .to_owned();
    let mut sealed = 0;
    let stale: Vec<(uuid::Uuid, String, String)> = domains::table
        .filter(domains::key_id.ne(&current))
        .select((
            domains::id,
            domains::key_sealed.assume_not_null(),
            domains::key_id.assume_not_null(),
        ))
        .load(conn)?;
    for (id, text, key_id) in stale {
        let again = keys.seal(&keys.open(&key_id, &text, &key_place(id))?, &key_place(id))?;
        sealed += diesel::update(domains::table.find(id).filter(domains::key_sealed.eq(&text)))
            .set((domains::key_sealed.eq(again.text), domains::key_id.eq(again.key_id)))
            .execute(conn)?;
    }
    let stale: Vec<(String, String, String)> = acme_accounts::table
        .filter(acme_accounts::key_id.ne(&current))
        .select((
            acme_accounts::directory,
            acme_accounts::credentials_sealed,
            acme_accounts::key_id,
        ))
        .load(conn)?;
    for (directory, text, key_id) in stale {
        let place = account_place(&directory);
        let again = keys.seal(&keys.open(&key_id, &text, &place)?, &place)?;
        sealed += diesel::update(acme_accounts::table.find(&directory))
            .set((
                acme_accounts::credentials_sealed.eq(again.text),
                acme_accounts::key_id.eq(again.key_id),
            ))
            .execute(conn)?;
    }
    Ok(sealed)
}
