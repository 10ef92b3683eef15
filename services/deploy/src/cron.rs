//! Every second, the cron entries of live deployments that are due get a
//! run ([`db::runs::schedule_cron`]: once per due time, never two of one
//! entry at once, missed times skipped), and runs that can no longer end
//! by themselves fail ([`db::runs::reap`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use capsule::schedule::{ProcessType, Schedule};
use tokio_util::sync::CancellationToken;

use crate::{db, state::DeployServiceApi};

/// How long a cron entry's run may take: the same as the longest one-off.
const CRON_TIME_LIMIT_SECS: i32 = 3600;

/// Runs are reaped every this many ticks.
const REAP_EVERY: u32 = 10;

/// Schedules read so far, by (pattern, time zone); `None` for one that is
/// no schedule or never comes. Finding that one never comes searches
/// centuries, so it is done once per pattern, not every second.
type Schedules = Arc<Mutex<HashMap<(String, String), Option<Schedule>>>>;

/// The most schedules kept read; past it the memory starts again.
const MAX_SCHEDULES: usize = 10_000;

fn schedule_of(schedules: &Schedules, entry: &ProcessType) -> Option<Schedule> {
    let mut schedules = schedules.lock().ok()?;
    if schedules.len() > MAX_SCHEDULES {
        schedules.clear();
    }
    schedules
        .entry((entry.schedule.clone(), entry.time_zone.clone()))
        .or_insert_with(|| {
            Schedule::parse(&entry.schedule, &entry.time_zone)
                .ok()
                .filter(|schedule| schedule.next_after(chrono::Utc::now()).is_some())
        })
        .clone()
}

pub async fn run(api: DeployServiceApi, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ticks = 0u32;
    let schedules = Schedules::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = chrono::Utc::now();
        let known = schedules.clone();
        let read = move |entry: &ProcessType| schedule_of(&known, entry);
        let most = api.inner.max_runs_per_project;
        match api
            .db()
            .run(move |conn| db::runs::schedule_cron(conn, now, CRON_TIME_LIMIT_SECS, most, &read))
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
