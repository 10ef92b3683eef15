//! Every second, the cron entries of live deployments that are due get a
//! run ([`db::runs::schedule_cron`]: once per due time, never two of one
//! entry at once, missed times skipped), and runs that can no longer end
//! by themselves fail ([`db::runs::reap`]).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{db, state::DeployServiceApi};

/// How long a cron entry's run may take: the same as the longest one-off.
const CRON_TIME_LIMIT_SECS: i32 = 3600;

/// Runs are reaped every this many ticks.
const REAP_EVERY: u32 = 10;

pub async fn run(api: DeployServiceApi, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = chrono::Utc::now();
        match api
            .db()
            .run(move |conn| db::runs::schedule_cron(conn, now, CRON_TIME_LIMIT_SECS))
            .await
        {
            Ok(queued) => {
                for run in queued {
                    tracing::info!(run.id = %run.id, project.id = %run.project_id, cron.name = %run.name, "cron run queued");
                }
            }
            Err(err) => tracing::warn!(error = %err, "cron entries not scheduled"),
        }
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(REAP_EVERY) {
            match api.db().run(db::runs::reap).await {
                Ok(0) => {}
                Ok(reaped) => tracing::info!(reaped, "runs that could not end failed"),
                Err(err) => tracing::warn!(error = %err, "runs not reaped"),
            }
        }
    }
}
