//! A deployment's logs: pages of them, and following them live. A follow
//! stream asks again every [`RECHECK_EVERY`] whether its caller may still
//! read them, and ends when not: a revoked token, an ended session or a
//! removed member reads no more.

use std::time::Duration;

use capsule::{
    auth::{Caller, Permission},
    db::Database,
    proto::deploy::v1 as pb,
    rpc::{self, FieldViolations},
};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::{db, lifecycle::State, notify::Event};

use crate::{
    convert::line_proto,
    state::{DeployServiceApi, LogStream, STREAM_PAGE},
};

/// How often a follow stream rechecks its caller: its right ends at most
/// this long (and a call) after it does.
const RECHECK_EVERY: Duration = Duration::from_secs(2);

pub(super) async fn get_logs(
    api: &DeployServiceApi,
    request: Request<pb::GetLogsRequest>,
) -> Result<Response<pb::GetLogsResponse>, Status> {
    let caller = Caller::of(&request)?.clone();
    let permission = Permission::required(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id("deployment_id", &body.deployment_id, &mut violations);
    let limit = rpc::page_size(body.page_size, 100, 1000, &mut violations);
    if body.after_sequence < 0 {
        violations.add("after_sequence", "must be 0 or more");
    }
    violations.check()?;
    api.authorize(&caller, permission, id).await?;
    let after = body.after_sequence;
    let rows = api
        .inner
        .db
        .run(move |conn| db::logs_after(conn, id, after, limit + 1))
        .await?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_after_sequence = if rows.len() > limit {
        rows[limit - 1].sequence
    } else {
        0
    };
    Ok(Response::new(pb::GetLogsResponse {
        lines: rows.into_iter().take(limit).map(line_proto).collect(),
        next_after_sequence,
    }))
}

pub(super) async fn stream_logs(
    api: &DeployServiceApi,
    request: Request<pb::StreamLogsRequest>,
) -> Result<Response<LogStream>, Status> {
    let caller = Caller::of(&request)?.clone();
    let permission = Permission::required(&request)?;
    let body = request.into_inner();
    let mut violations = FieldViolations::new();
    let id = rpc::parse_id("deployment_id", &body.deployment_id, &mut violations);
    if body.after_sequence < 0 {
        violations.add("after_sequence", "must be 0 or more");
    }
    violations.check()?;
    api.authorize(&caller, permission, id).await?;
    // Held by the stream's task: the slot is free again when it ends.
    let slot = body
        .follow
        .then(|| api.inner.streams.take(caller.user_id))
        .transpose()?;
    // Subscribe before reading the backlog, so no line falls between.
    let mut events = api.inner.hub.subscribe();
    let hub = api.inner.hub.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let db = api.inner.db.clone();
    let (follow, mut last) = (body.follow, body.after_sequence);
    let api = api.clone();
    tokio::spawn(async move {
        let _slot = slot;
        // Sends every line after `last`; false when the client is gone.
        let drain = |last: i64| {
            let (db, tx) = (db.clone(), tx.clone());
            async move {
                let mut last = last;
                loop {
                    let rows = match db.run(move |conn| db::logs_after(conn, id, last, STREAM_PAGE)).await {
                        Ok(rows) => rows,
                        Err(err) => {
                            let _ = tx.send(Err(Status::from(err))).await;
                            return None;
                        }
                    };
                    let done = rows.len() < usize::try_from(STREAM_PAGE).unwrap_or(usize::MAX);
                    for row in rows {
                        last = row.sequence;
                        if tx.send(Ok(line_proto(row))).await.is_err() {
                            return None;
                        }
                    }
                    if done {
                        return Some(last);
                    }
                }
            }
        };
        let settled = |db: Database| async move {
            db.run(move |conn| db::state_of(conn, id))
                .await
                .map(|state| state.is_none_or(State::is_final))
        };
        let Some(sent) = drain(last).await else { return };
        last = sent;
        if !follow || matches!(settled(db.clone()).await, Ok(true)) {
            return;
        }
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
        loop {
            let wake = tokio::select! {
                () = tx.closed() => return,
                _ = recheck.tick() => {
                    if let Err(status) = api.still_authorized(&caller, permission, id).await {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    continue;
                }
                () = hub.stopped() => {
                    let _ = tx
                        .send(Err(Status::unavailable("the service is stopping; resume with after_sequence")))
                        .await;
                    return;
                }
                event = events.recv() => event,
            };
            let (read, check_state) = match wake {
                Ok(Event::Log(event_id)) if event_id == id => (true, false),
                Ok(Event::State(event_id)) if event_id == id => (true, true),
                Ok(Event::Resync) | Err(RecvError::Lagged(_)) => (true, true),
                Ok(_) => (false, false),
                Err(RecvError::Closed) => {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "the log feed stopped; resume with after_sequence",
                        )))
                        .await;
                    return;
                }
            };
            if read {
                let Some(sent) = drain(last).await else { return };
                last = sent;
            }
            if check_state && matches!(settled(db.clone()).await, Ok(true)) {
                // Lines written with the final state change are in.
                let _ = drain(last).await;
                return;
            }
        }
    });
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}
