//! Where live apps are served, for the gateway (`WatchRoutes`).

use capsule::proto::deploy::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::{db, notify::Event};

use crate::state::{DeployServiceApi, RouteStream};

/// How often the table is read again without a change.
const LEASE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) async fn watch_routes(
    api: &DeployServiceApi,
    _request: Request<pb::WatchRoutesRequest>,
) -> Result<Response<RouteStream>, Status> {
    // Subscribe first: no change falls between the table and the feed.
    let mut events = api.inner.hub.subscribe();
    let hub = api.inner.hub.clone();
    let db = api.inner.db.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let table = match db.run(db::replicas::routes).await {
                Ok(routes) => pb::RouteTable {
                    routes: routes
                        .into_iter()
                        .map(|(host, upstreams, id)| pb::Route {
                            host,
                            upstream: upstreams.first().cloned().unwrap_or_default(),
                            upstreams,
                            deployment_id: id.to_string(),
                        })
                        .collect(),
                },
                Err(err) => {
                    let _ = tx.send(Err(Status::from(err))).await;
                    return;
                }
            };
            if last.as_ref() != Some(&table) {
                if tx.send(Ok(table.clone())).await.is_err() {
                    return;
                }
                last = Some(table);
            }
            // The next state change (or a lost one) recomputes the table,
            // and so does every second: a replica's lease runs out with
            // no change to tell.
            let expiry = tokio::time::sleep(LEASE_CHECK);
            tokio::pin!(expiry);
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    () = hub.stopped() => return,
                    () = &mut expiry => break,
                    event = events.recv() => match event {
                        Ok(Event::Log(_) | Event::Run(_)) => continue,
                        Ok(Event::State(_) | Event::Resync) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        }
    });
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}
