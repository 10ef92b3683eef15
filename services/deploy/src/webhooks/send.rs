//! The sender: takes due deliveries from the outbox, POSTs them signed,
//! logs every attempt, and retries failures with doubling delays until
//! the attempts run out. Replicas share the work (each delivery is taken
//! under a lease with SKIP LOCKED); a state change wakes it, and it looks
//! every second for retries. Tenants share the slots: one endpoint has at
//! most `DEPLOY_WEBHOOK_PER_ENDPOINT` deliveries in flight, and one that
//! times out has all its pending deliveries put back to its retry time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use capsule::{db::Database, guard::Guard};
use chrono::Utc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::guard::{GuardedResolver, literal_refusal};
use crate::{
    config::WebhookConfig,
    db::webhooks::{self, Due, Outcome},
    notify::{Event as Notice, Hub},
};

/// Deliveries in flight at once, per process.
const IN_FLIGHT: usize = 32;
/// How an attempt that timed out is told, and known.
const NO_ANSWER: &str = "no answer within";
/// The longest wait between two attempts.
const MAX_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The HTTP client deliveries go through: the timeout, no redirects, no
/// proxy from the environment, and the guarded resolver.
pub fn client(config: &WebhookConfig, guard: Arc<Guard>) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver(guard)))
        .user_agent(concat!("Capsule-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Runs until `shutdown`.
pub async fn run(
    db: Database,
    hub: Hub,
    config: WebhookConfig,
    keys: Arc<capsule::crypto::Keyring>,
    shutdown: CancellationToken,
) {
    let guard = Arc::new(Guard::new(config.allowed_networks.clone()));
    let client = match client(&config, guard.clone()) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "webhooks cannot be sent: the HTTP client did not start");
            return;
        }
    };
    let sender = Arc::new(Sender {
        db,
        client,
        guard,
        config,
        keys,
        in_flight: Mutex::default(),
    });
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut notices = hub.subscribe();
    loop {
        let free = slots.available_permits();
        if free > 0 {
            let lease =
                chrono::Duration::from_std(sender.config.timeout).unwrap_or_default() + chrono::Duration::seconds(30);
            let limit = i64::try_from(free).unwrap_or(1);
            let per_endpoint = i64::from(sender.config.per_endpoint);
            let busy = sender.busy();
            let claimed = sender
                .db
                .run(move |conn| webhooks::claim_due(conn, limit, per_endpoint, &busy, lease))
                .await;
            match claimed {
                Ok(due) => {
                    for delivery in due {
                        let Ok(slot) = slots.clone().acquire_owned().await else {
                            return;
                        };
                        let sender = sender.clone();
                        sender.count(delivery.webhook_id, 1);
                        tokio::spawn(async move {
                            let webhook = delivery.webhook_id;
                            sender.attempt(delivery).await;
                            sender.count(webhook, -1);
                            drop(slot);
                        });
                    }
                }
                Err(err) => tracing::debug!(error = %err, "cannot take webhook deliveries now"),
            }
        }
        // Until a state change (which may have queued deliveries) or a
        // second passes; log lines change nothing here.
        let tick = tokio::time::sleep(std::time::Duration::from_secs(1));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = &mut tick => break,
                notice = notices.recv() => {
                    if !matches!(notice, Ok(Notice::Log(_))) {
                        break;
                    }
                }
            }
        }
    }
}

struct Sender {
    db: Database,
    client: reqwest::Client,
    guard: Arc<Guard>,
    config: WebhookConfig,
    /// The keys the webhooks' secrets are sealed with.
    keys: Arc<capsule::crypto::Keyring>,
    /// Deliveries in flight, by endpoint (webhook).
    in_flight: Mutex<HashMap<uuid::Uuid, u32>>,
}

impl Sender {
    /// The endpoints with their share of deliveries in flight.
    fn busy(&self) -> Vec<uuid::Uuid> {
        self.in_flight.lock().map_or_else(
            |_| Vec::new(),
            |flying| {
                flying
                    .iter()
                    .filter(|(_, count)| **count >= self.config.per_endpoint)
                    .map(|(webhook, _)| *webhook)
                    .collect()
            },
        )
    }

    fn count(&self, webhook: uuid::Uuid, change: i32) {
        if let Ok(mut flying) = self.in_flight.lock() {
            let count = flying.entry(webhook).or_default();
            *count = count.saturating_add_signed(change);
            if *count == 0 {
                flying.remove(&webhook);
            }
        }
    }

    async fn attempt(&self, due: Due) {
        let started = Instant::now();
        let result = self.post(&due).await;
        let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        let (status_code, error) = match &result {
            Ok(status) => (Some(i32::from(status.as_u16())), String::new()),
            Err(error) => (None, error.clone()),
        };
        let delivered = result.is_ok_and(|status| status.is_success());
        let retry_at = (!delivered && due.attempt < self.config.max_attempts).then(|| {
            let doubling = 2u32.saturating_pow(u32::try_from(due.attempt - 1).unwrap_or(0));
            let delay = self.config.retry.saturating_mul(doubling).min(MAX_RETRY_DELAY);
            Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default()
        });
        tracing::info!(
            webhook.delivery = %due.id,
            webhook.event = due.event,
            attempt = due.attempt,
            status = status_code,
            error = error.as_str(),
            duration_ms,
            delivered,
            "webhook delivery attempted"
        );
        let outcome = Outcome {
            timed_out: error.starts_with(NO_ANSWER),
            status_code,
            error,
            duration_ms,
            retry_at,
            delivered,
        };
        if let Err(err) = self.db.run(move |conn| webhooks::record(conn, &due, &outcome)).await {
            // The lease runs out and the delivery is tried again: at least
            // once, as promised.
            tracing::warn!(error = %err, "a webhook attempt could not be recorded; it will be tried again");
        }
    }

    /// POSTs the delivery; the receiver's status, or why there is none.
    async fn post(&self, due: &Due) -> Result<reqwest::StatusCode, String> {
        let url = reqwest::Url::parse(&due.url).map_err(|err| format!("the URL is not valid: {err}"))?;
        if let Some(why) = literal_refusal(&self.guard, &url) {
            return Err(format!("{why}: webhooks are delivered to public addresses only"));
        }
        let body = serde_json::to_vec(&due.payload).map_err(|err| err.to_string())?;
        // Sealed at rest; a secret stored before sealing is used as it is.
        let secret = match &due.key_id {
            Some(key_id) => self
                .keys
                .open(key_id, &due.secret, &super::sealed_place(due.scope_id))
                .map_err(|err| format!("the webhook's secret cannot be opened here: {err}"))?,
            None => due.secret.clone(),
        };
        let signature = super::signature(&secret, Utc::now().timestamp(), &body);
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("capsule-event", &due.event)
            .header("capsule-delivery", due.id.to_string())
            .header("capsule-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|err| describe(&err, self.config.timeout))?;
        Ok(response.status())
    }
}

/// An attempt's error as the delivery log shows it: the whole chain of
/// causes, at most 500 characters.
fn describe(err: &reqwest::Error, timeout: std::time::Duration) -> String {
    if err.is_timeout() {
        return format!("{NO_ANSWER} {} s", timeout.as_secs_f64());
    }
    let mut text = String::from(if err.is_connect() { "cannot connect" } else { "failed" });
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(500).collect()
}
