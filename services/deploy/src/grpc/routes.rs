//! Where live apps are served, for the gateway (`WatchRoutes`): hosts,
//! custom domains with their certificates, open ACME challenges.

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
    let acme = api.inner.acme.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let read = db
                .run(|conn| {
                    Ok((
                        db::replicas::routes(conn)?,
                        db::domains::routed(conn)?,
                        db::domains::challenges(conn)?,
                    ))
                })
                .await;
            let table = match read {
                Ok((routes, domains, challenges)) => pb::RouteTable {
                    routes: routes
                        .into_iter()
                        .map(|(host, upstreams, id)| pb::Route {
                            host,
                            upstream: upstreams.first().cloned().unwrap_or_default(),
                            upstreams,
                            deployment_id: id.to_string(),
                        })
                        .collect(),
                    domains: domains
                        .into_iter()
                        .filter_map(|(domain, host)| {
                            Some(pb::DomainRoute {
                                private_key_pem: acme.open_key(&domain)?,
                                certificate_pem: domain.certificate_pem?,
                                domain: domain.name,
                                host: host.unwrap_or_default(),
                                redirect_https: domain.redirect_https,
                                hsts_max_age_seconds: u32::try_from(domain.hsts_max_age_secs).unwrap_or(0),
                            })
                        })
                        .collect(),
                    challenges: challenges
                        .into_iter()
                        .map(|challenge| pb::AcmeChallenge {
                            domain: challenge.name,
                            kind: match challenge.kind.as_str() {
                                "dns-01" => pb::DomainChallenge::Dns01,
                                "tls-alpn-01" => pb::DomainChallenge::TlsAlpn01,
                                _ => pb::DomainChallenge::Http01,
                            } as i32,
                            token: challenge.token,
                            key_authorization: challenge.key_authorization,
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
                        Ok(Event::State(_) | Event::Domain(_) | Event::Resync) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        }
    });
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}
