//! The audit trail of every service, gathered: each service keeps its own
//! (`capsule::audit`) and checks who may read it; the gateway merges their
//! pages newest first under one page token (each service's own token,
//! dot-separated, in [`SOURCES`] order) and follows them for new events.
//! A follower's caller is checked again every [`RECHECK_EVERY`] (the
//! services check the permission at every look): a revoked token, an ended
//! session or a removed member reads no more.

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use capsule::{
    auth::{Caller, KeySet},
    proto::{
        audit::v1::{AuditEvent, ListAuditEventsRequest, ListAuditEventsResponse},
        auth::v1::auth_service_client::AuthServiceClient,
        deploy::v1::deploy_service_client::DeployServiceClient,
        project::v1::project_service_client::ProjectServiceClient,
    },
    rpc,
    trace::TracedChannel,
};
use futures::Stream;
use tonic::{Code, Status};

use crate::backends::Backends;

/// The services that keep an audit trail, in page-token order.
pub const SOURCES: [&str; 3] = ["auth", "project", "deploy"];

/// How often a follower asks for new events.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// How often a follower's credential is checked with the auth service.
const RECHECK_EVERY: Duration = Duration::from_secs(2);
/// Pages a follower reads from one service per look, at most.
const FOLLOW_PAGES: usize = 10;

/// Where a page starts in one service's trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Newest,
    Before(i64),
    /// Read to the end.
    Done,
}

impl Position {
    fn parse(part: &str) -> Self {
        match part.parse::<i64>() {
            Ok(0) => Self::Done,
            Ok(id) if id > 0 => Self::Before(id),
            _ => Self::Newest,
        }
    }

    fn token(self) -> String {
        match self {
            Self::Newest => String::new(),
            Self::Before(id) => id.to_string(),
            Self::Done => "0".to_owned(),
        }
    }
}

/// A page of one source.
async fn read(
    backends: &Backends,
    caller: &Caller,
    source: usize,
    request: ListAuditEventsRequest,
) -> Result<ListAuditEventsResponse, Status> {
    let call = caller.request(request, Duration::from_secs(5))?;
    let answer = match SOURCES[source] {
        "auth" => {
            AuthServiceClient::<TracedChannel>::new(backends.auth.clone())
                .list_audit_events(call)
                .await
        }
        "project" => {
            ProjectServiceClient::<TracedChannel>::new(backends.project.clone())
                .list_audit_events(call)
                .await
        }
        _ => {
            DeployServiceClient::<TracedChannel>::new(backends.deploy.clone())
                .list_audit_events(call)
                .await
        }
    };
    answer
        .map(tonic::Response::into_inner)
        .map_err(|status| match status.code() {
            Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::NotFound => status,
            _ => Status::unavailable(format!(
                "the {} service's audit trail cannot be read now ({}); retry shortly",
                SOURCES[source],
                status.message()
            )),
        })
}

/// `ListAuditEvents`: one page of every source's events, newest first.
pub async fn list(
    backends: &Backends,
    caller: &Caller,
    request: ListAuditEventsRequest,
) -> Result<ListAuditEventsResponse, Status> {
    let mut violations = rpc::FieldViolations::new();
    let limit = rpc::page_size(request.page_size, 50, 200, &mut violations);
    violations.check()?;
    let mut positions: Vec<Position> = request.page_token.split('.').map(Position::parse).collect();
    positions.resize(SOURCES.len(), Position::Newest);
    let reads = (0..SOURCES.len()).map(|source| {
        let position = positions[source];
        let request = ListAuditEventsRequest {
            page_token: position.token(),
            page_size: i32::try_from(limit).unwrap_or(50),
            ..request.clone()
        };
        async move {
            if position == Position::Done {
                return Ok(ListAuditEventsResponse::default());
            }
            read(backends, caller, source, request).await
        }
    });
    let pages = futures::future::try_join_all(reads).await?;
    // Newest first across sources; within one source, by its own order.
    let mut merged: Vec<(usize, AuditEvent)> = pages
        .iter()
        .enumerate()
        .flat_map(|(source, page)| page.events.iter().cloned().map(move |event| (source, event)))
        .collect();
    merged.sort_by(|(a_source, a), (b_source, b)| {
        let time = |event: &AuditEvent| event.create_time.map(|t| (t.seconds, t.nanos));
        time(b).cmp(&time(a)).then(a_source.cmp(b_source)).then(b.id.cmp(&a.id))
    });
    merged.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    for (source, page) in pages.iter().enumerate() {
        let taken: Vec<&AuditEvent> = merged
            .iter()
            .filter(|(from, _)| *from == source)
            .map(|(_, event)| event)
            .collect();
        let all_taken = taken.len() == page.events.len();
        positions[source] = match taken.last() {
            _ if positions[source] == Position::Done => Position::Done,
            _ if all_taken && page.next_page_token.is_empty() => Position::Done,
            Some(last) => Position::Before(last.id),
            None => positions[source],
        };
    }
    let next_page_token = if positions.iter().all(|position| *position == Position::Done) {
        String::new()
    } else {
        positions
            .iter()
            .map(|position| position.token())
            .collect::<Vec<_>>()
            .join(".")
    };
    Ok(ListAuditEventsResponse {
        events: merged.into_iter().map(|(_, event)| event).collect(),
        next_page_token,
    })
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<AuditEvent, Status>> + Send>>;

/// `StreamAuditEvents`: the events recorded from now on, oldest first.
/// The first look is made before answering, so a caller who may not read
/// the trail is refused at once.
pub async fn follow(
    backends: Backends,
    keys: Arc<KeySet>,
    caller: Caller,
    request: ListAuditEventsRequest,
    slot: capsule::rpc::StreamSlot,
) -> Result<EventStream, Status> {
    let request = ListAuditEventsRequest {
        page_token: String::new(),
        page_size: 200,
        ..request
    };
    let mut newest = Vec::with_capacity(SOURCES.len());
    for source in 0..SOURCES.len() {
        let page = read(
            &backends,
            &caller,
            source,
            ListAuditEventsRequest {
                page_size: 1,
                ..request.clone()
            },
        )
        .await?;
        newest.push(page.events.first().map_or(0, |event| event.id));
    }
    let (sender, receiver) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        // Held while the stream runs: the slot is free again when it ends.
        let _slot = slot;
        let mut checked = Instant::now();
        loop {
            tokio::select! {
                () = sender.closed() => return,
                () = tokio::time::sleep(FOLLOW_EVERY) => {}
            }
            if checked.elapsed() >= RECHECK_EVERY {
                checked = Instant::now();
                if let Err(status) = keys.recheck(&caller).await {
                    let _ = sender.send(Err(status)).await;
                    return;
                }
            }
            let mut fresh = Vec::new();
            for (source, seen) in newest.iter_mut().enumerate() {
                match since(&backends, &caller, source, &request, *seen).await {
                    Ok(events) => {
                        if let Some(last) = events.iter().map(|event| event.id).max() {
                            *seen = last;
                        }
                        fresh.extend(events);
                    }
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                }
            }
            fresh.sort_by_key(|event| event.create_time.map(|t| (t.seconds, t.nanos)));
            for event in fresh {
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver)))
}

/// A source's events after id `seen`, oldest first (at most
/// [`FOLLOW_PAGES`] pages of them).
async fn since(
    backends: &Backends,
    caller: &Caller,
    source: usize,
    request: &ListAuditEventsRequest,
    seen: i64,
) -> Result<Vec<AuditEvent>, Status> {
    let mut events = Vec::new();
    let mut token = String::new();
    for _ in 0..FOLLOW_PAGES {
        let page = read(
            backends,
            caller,
            source,
            ListAuditEventsRequest {
                page_token: token,
                ..request.clone()
            },
        )
        .await?;
        let reached = page.events.iter().any(|event| event.id <= seen);
        events.extend(page.events.into_iter().filter(|event| event.id > seen));
        if reached || page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    events.reverse();
    Ok(events)
}
