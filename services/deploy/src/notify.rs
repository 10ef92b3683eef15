//! One LISTEN connection per process (tokio-postgres: notifications arrive
//! as they are committed, no polling), fanned out to every log follower and
//! the local runner.

use std::time::Duration;

use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Something changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A log line was written for this deployment.
    Log(Uuid),
    /// This deployment changed state (or was created).
    State(Uuid),
    /// This run was queued or changed state.
    Run(Uuid),
    /// This domain, its certificate or its open challenges changed.
    Domain(Uuid),
    /// The listener (re)connected: notifications may have been missed, so
    /// everyone should look again.
    Resync,
}

/// The fan-out of database notifications.
#[derive(Clone)]
pub struct Hub {
    events: broadcast::Sender<Event>,
    shutdown: CancellationToken,
}

impl Hub {
    /// Starts listening on `url` until `shutdown`, reconnecting with backoff.
    pub fn start(url: SecretString, shutdown: CancellationToken) -> Self {
        let (events, _) = broadcast::channel(4096);
        let sender = events.clone();
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    result = listen(&url, &sender) => {
                        if let Err(err) = result {
                            tracing::debug!(error = %err, "deployment notifications interrupted; reconnecting");
                        }
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        Self {
            events,
            shutdown: stopping,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Resolves when the service stops: followers end their streams then
    /// (a live deployment's logs would otherwise hold shutdown open).
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await;
    }
}

async fn listen(url: &SecretString, events: &broadcast::Sender<Event>) -> anyhow::Result<()> {
    let (client, mut connection) = tokio_postgres::connect(url.expose_secret(), tokio_postgres::NoTls).await?;
    let (messages_tx, mut messages) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            match message {
                Ok(message) => {
                    if messages_tx.send(message).is_err() {
                        break;
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    });
    client
        .batch_execute("LISTEN deployment_logs; LISTEN deployment_states; LISTEN runs; LISTEN domains")
        .await?;
    let _ = events.send(Event::Resync);
    while let Some(message) = messages.recv().await {
        if let tokio_postgres::AsyncMessage::Notification(notification) = message {
            let Some((id, _)) = notification.payload().split_once(':') else {
                continue;
            };
            let Ok(id) = id.parse::<Uuid>() else { continue };
            let event = match notification.channel() {
                "deployment_logs" => Event::Log(id),
                "runs" => Event::Run(id),
                "domains" => Event::Domain(id),
                _ => Event::State(id),
            };
            let _ = events.send(event);
        }
    }
    driver.await??;
    anyhow::bail!("the notification connection closed")
}
