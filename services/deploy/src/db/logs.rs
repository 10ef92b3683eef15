//! A deployment's log lines: appending them gaplessly, reading them,
//! pruning old ones.

use chrono::{DateTime, Utc};
use diesel::{
    dsl::{AsSelect, SqlTypeOf, now},
    pg::Pg,
    prelude::*,
};
use uuid::Uuid;

use super::schema::{deployment_logs, deployments};
use crate::lifecycle::State;

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = deployment_logs)]
pub struct LogRow {
    pub deployment_id: Uuid,
    pub sequence: i64,
    pub stream: String,
    pub line: String,
    pub created_at: DateTime<Utc>,
    pub runtime: bool,
    pub process: String,
}

/// Appends lines, numbering them after the deployment's last one. The
/// counter's row lock makes numbers gapless under concurrent appends.
///
/// With a `cap` (a runner's lines), a build's lines are kept only while
/// the deployment has fewer than `cap`; the first one dropped leaves a
/// system line saying so. A live app's (runtime) lines, which the runner
/// rate-limits, are all kept, but only the newest `cap` of them stay: a
/// window, not a pile. The service's own lines (state changes) pass no cap.
pub fn append(conn: &mut PgConnection, id: Uuid, lines: &[(&str, String)], cap: Option<i64>) -> QueryResult<i64> {
    append_as(conn, id, "", lines, cap)
}

/// [`append`], the lines of `process` (a worker's name, "run.<id>"; empty
/// for the deployment itself).
pub fn append_as(
    conn: &mut PgConnection,
    id: Uuid,
    process: &str,
    lines: &[(&str, String)],
    cap: Option<i64>,
) -> QueryResult<i64> {
    conn.transaction(|conn| {
        let (current, state): (i64, String) = deployments::table
            .find(id)
            .select((deployments::log_sequence, deployments::state))
            .for_update()
            .first(conn)?;
        let runtime = state == State::Live.as_str();
        let window = cap.filter(|_| runtime);
        let cap = cap.filter(|_| !runtime);
        let capped_note = cap
            .map(|cap| format!("log limit of {cap} lines reached: further output of this deployment is dropped"))
            .unwrap_or_default();
        let mut kept: Vec<(&str, &str)> = Vec::with_capacity(lines.len());
        let mut next = current;
        for (stream, line) in lines {
            match cap {
                Some(cap) if next >= cap => {
                    // The first line over the limit leaves the note.
                    if next == cap {
                        kept.push(("system", capped_note.as_str()));
                        next += 1;
                    }
                }
                _ => {
                    kept.push((stream, line.as_str()));
                    next += 1;
                }
            }
        }
        if kept.is_empty() {
            return Ok(current);
        }
        let last: i64 = diesel::update(deployments::table.find(id))
            .set(deployments::log_sequence.eq(next))
            .returning(deployments::log_sequence)
            .get_result(conn)?;
        let rows: Vec<_> = kept
            .iter()
            .zip(current + 1..)
            .map(|((stream, line), sequence)| {
                (
                    deployment_logs::deployment_id.eq(id),
                    deployment_logs::sequence.eq(sequence),
                    deployment_logs::stream.eq(*stream),
                    deployment_logs::line.eq(*line),
                    deployment_logs::runtime.eq(runtime),
                    deployment_logs::process.eq(process),
                )
            })
            .collect();
        diesel::insert_into(deployment_logs::table)
            .values(&rows)
            .execute(conn)?;
        // A live app keeps the newest `cap` lines of its runtime output:
        // the older ones go, a step of them at a time.
        if runtime && let Some(window) = window {
            let step = (window / 10).clamp(1, 1000);
            if last / step != current / step {
                diesel::delete(
                    deployment_logs::table
                        .filter(deployment_logs::deployment_id.eq(id))
                        .filter(deployment_logs::sequence.le(last - window))
                        .filter(deployment_logs::runtime),
                )
                .execute(conn)?;
            }
        }
        Ok(last)
    })
}

pub fn logs_after(conn: &mut PgConnection, id: Uuid, after: i64, limit: i64) -> QueryResult<Vec<LogRow>> {
    page(id, after, limit).load(conn)
}

/// The lines of `process` after `after`, in order; `after` from the
/// sequence before its first line when `None`.
pub fn process_logs_after(
    conn: &mut PgConnection,
    id: Uuid,
    process: &str,
    after: Option<i64>,
    limit: i64,
) -> QueryResult<Vec<LogRow>> {
    let of_process = deployment_logs::table
        .filter(deployment_logs::deployment_id.eq(id))
        .filter(deployment_logs::process.eq(process));
    let after = match after {
        Some(after) => after,
        None => match of_process
            .select(diesel::dsl::min(deployment_logs::sequence))
            .first::<Option<i64>>(conn)?
        {
            Some(first) => first - 1,
            None => return Ok(Vec::new()),
        },
    };
    of_process
        .filter(deployment_logs::sequence.gt(after))
        .order(deployment_logs::sequence.asc())
        .limit(limit)
        .select(LogRow::as_select())
        .load(conn)
}

/// The statement behind [`logs_after`]: a range of the primary key.
pub(super) fn page<'a>(
    id: Uuid,
    after: i64,
    limit: i64,
) -> deployment_logs::BoxedQuery<'a, Pg, SqlTypeOf<AsSelect<LogRow, Pg>>> {
    deployment_logs::table
        .filter(deployment_logs::deployment_id.eq(id))
        .filter(deployment_logs::sequence.gt(after))
        .order(deployment_logs::sequence.asc())
        .limit(limit)
        .select(LogRow::as_select())
        .into_boxed()
}

/// Deletes the log lines of up to `batch` deployments that settled
/// (failed, canceled, superseded) before `cutoff`; returns how many
/// deployments were pruned. The deployments themselves stay.
pub fn prune_logs(conn: &mut PgConnection, cutoff: DateTime<Utc>, batch: i64) -> QueryResult<usize> {
    conn.transaction(|conn| {
        let ids: Vec<Uuid> = deployments::table
            .filter(deployments::logs_pruned_at.is_null())
            .filter(deployments::state.eq_any([
                State::Failed.as_str(),
                State::Canceled.as_str(),
                State::Superseded.as_str(),
                State::Crashed.as_str(),
            ]))
            .filter(deployments::finished_at.lt(cutoff))
            .order(deployments::finished_at.asc())
            .limit(batch)
            .select(deployments::id)
            .for_update()
            .skip_locked()
            .load(conn)?;
        if ids.is_empty() {
            return Ok(0);
        }
        diesel::delete(deployment_logs::table.filter(deployment_logs::deployment_id.eq_any(&ids))).execute(conn)?;
        diesel::update(deployments::table.filter(deployments::id.eq_any(&ids)))
            .set(deployments::logs_pruned_at.eq(now))
            .execute(conn)?;
        Ok(ids.len())
    })
}
