//! Where live apps are served, for the gateway (`WatchRoutes`).

use capsule::proto::deploy::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::{db, notify::Event};

use crate::state::{DeployServiceApi, RouteStream};

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
            let table = match db.run(db::routes).await {
                Ok(routes) => pb::RouteTable {
                    routes: routes
                        .into_iter()
                        .map(|(host, upstream, id)| pb::Route {
                            host,
                            upstream,
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
            // The next state change (or a lost one) recomputes the table.
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    () = hub.stopped() => return,
                    event = events.recv() => match event {
                        Ok(Event::Log(_)) => continue,
                        Ok(Event::State(_) | Event::Resync) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        }
    });
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}
