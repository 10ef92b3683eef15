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
//! CA's reason on the domain and is tried again after 1 minute, doubling
//! up to a day.

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
const FIRST_RETRY: chrono::TimeDelta = chrono::TimeDelta::minutes(1);
const MAX_RETRY: chrono::TimeDelta = chrono::TimeDelta::days(1);

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
        let slots = Arc::new(tokio::sync::Semaphore::new(ORDERS_AT_ONCE));
        let mut events = hub.subscribe();
        let renew_before = chrono::TimeDelta::from_std(self.config.renew_before).unwrap_or(chrono::TimeDelta::days(30));
        loop {
            while let Ok(slot) = slots.clone().try_acquire_owned() {
                match self
                    .db
                    .run(move |conn| domains::take_due(conn, renew_before, ORDER_LEASE))
                    .await
                {
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
            let tick = tokio::time::sleep(Duration::from_secs(1));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tick => {}
                event = events.recv() => match event {
                    Ok(Event::Domain(_)) | Err(RecvError::Lagged(_)) => {}
                    Ok(_) => continue,
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }

    /// One order for `domain`, its outcome stored.
    async fn order(&self, domain: Domain) {
        let id = domain.id;
        tracing::info!(domain = %domain.name, "ordering a certificate");
        let outcome = self.obtain(&domain).await;
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
                let retry = (FIRST_RETRY * 2i32.saturating_pow(domain.attempts.clamp(0, 20) as u32)).min(MAX_RETRY);
                let stored = reason.clone();
                if let Err(err) = self.db.run(move |conn| domains::failed(conn, id, &stored, retry)).await {
                    tracing::warn!(error = %err, "cannot record the order's failure");
                }
                ("domain.certificate.fail", reason)
            }
        };
        let mut event = AuditEvent::new(&Actor::default(), action, format!("domains/{}", domain.name))
            .project(domain.project_id)
            .detail("environment", &domain.environment);
        if !reason.is_empty() {
            event = event.detail("reason", reason);
        }
        capsule::audit::append(&self.db, event).await;
    }

    /// Stores the certificate and its sealed key.
    async fn keep(&self, domain: &Domain, chain: &str, key: &str) -> Result<(), String> {
        let not_after = not_after(chain)?;
        let sealed = self
            .keys
            .seal(key, &key_place(domain.id))
            .map_err(|err| format!("the certificate's key cannot be sealed: {err}"))?;
        let (id, chain) = (domain.id, chain.to_owned());
        self.db
            .run(move |conn| domains::issued(conn, id, &chain, &sealed, not_after))
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
        let kind = challenge_type(&domain.challenge);
        let mut published = Vec::new();
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
                    let record = format!("_acme-challenge.{name}");
                    hook::run(hook, "present", &record, &value).await?;
                    published.push((record, value));
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
        let status = order.poll_ready(&patience).await.map_err(|err| problem(&err));
        if let (Some(hook), ChallengeType::Dns01) = (&self.config.dns_hook, &kind) {
            for (record, value) in &published {
                let _ = hook::run(hook, "cleanup", record, value).await;
            }
        }
        match status? {
            OrderStatus::Ready => {}
            _ => return Err(self.reason(&mut order).await),
        }
        let key = order.finalize().await.map_err(|err| problem(&err))?;
        let chain = order.poll_certificate(&patience).await.map_err(|err| problem(&err))?;
        Ok((chain, key))
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

/// When the first certificate of a PEM chain expires.
fn not_after(chain: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain.as_bytes())
        .map_err(|err| format!("the CA's certificate is no PEM: {err}"))?;
    let certificate = pem
        .parse_x509()
        .map_err(|err| format!("the CA's certificate cannot be read: {err}"))?;
    chrono::DateTime::from_timestamp(certificate.validity().not_after.timestamp(), 0)
        .ok_or_else(|| "the CA's certificate has no valid expiry".to_owned())
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
