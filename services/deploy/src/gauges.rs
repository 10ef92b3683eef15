//! What an operator watches of the deployments, as gauges refreshed from
//! the database every [`EVERY`]: `capsule_deployments{state}` for the states
//! a deployment passes through (queued, building, deploying, live — each
//! counted through its partial index, never a scan of the whole history)
//! and `capsule_deployment_queue_oldest_seconds`, how long the oldest queued
//! deployment has waited for a runner (0 with none).

use std::time::Duration;

use capsule::db::Database;
use tokio_util::sync::CancellationToken;

use crate::{db, lifecycle::State};

pub const EVERY: Duration = Duration::from_secs(15);

/// The states counted.
const ACTIVE: [State; 4] = [State::Queued, State::Building, State::Deploying, State::Live];

pub async fn run(db: Database, shutdown: CancellationToken) {
    loop {
        // Until the database answers (it may still be migrating), again
        // in a second.
        let mut next = Duration::from_secs(1);
        match db.run(|conn| db::active_figures(conn, &ACTIVE)).await {
            Ok((counts, oldest)) => {
                for (state, count) in ACTIVE.iter().zip(counts) {
                    metrics::gauge!("capsule_deployments", "state" => state.as_str()).set(count as f64);
                }
                let waited = oldest.map_or(0.0, |since| {
                    (chrono::Utc::now() - since).num_milliseconds().max(0) as f64 / 1000.0
                });
                metrics::gauge!("capsule_deployment_queue_oldest_seconds").set(waited);
                next = EVERY;
            }
            Err(err) => tracing::debug!(error = %err, "cannot count deployments now"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(next) => {}
        }
    }
}
