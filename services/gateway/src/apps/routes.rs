//! Follows the deploy service's route table (a stream of whole tables),
//! reconnecting with backoff; the last table stays in force meanwhile.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use capsule::proto::deploy::v1::{WatchRoutesRequest, deploy_service_client::DeployServiceClient};
use capsule::trace::TracedChannel as Channel;
use tokio_util::sync::CancellationToken;

use super::Apps;

/// The largest route table read: some 20,000 custom domains with their
/// certificates.
const ROUTE_TABLE_MAX_BYTES: usize = 128 * 1024 * 1024;

/// Keeps `apps.table` equal to the deploy service's until `shutdown`.
pub async fn follow(apps: Arc<Apps>, channel: Channel, shutdown: CancellationToken) {
    let Some(secret) = apps.config.internal_secret.clone() else {
        tracing::warn!("CAPSULE_INTERNAL_SECRET is unset: the gateway serves no app");
        return;
    };
    let mut wait = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match watch(&apps, channel.clone(), &secret, &shutdown).await {
            Ok(()) => wait = Duration::from_millis(100),
            Err(status) => tracing::debug!(error = %status.message(), "the route feed stopped; reconnecting"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

async fn watch(apps: &Apps, channel: Channel, secret: &str, shutdown: &CancellationToken) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(WatchRoutesRequest {});
    capsule::auth::as_service(&mut request, secret)?;
    // Every table carries each custom domain's certificate: far larger
    // than a call's usual limit.
    let mut stream = DeployServiceClient::new(channel)
        .max_decoding_message_size(ROUTE_TABLE_MAX_BYTES)
        .watch_routes(request)
        .await?
        .into_inner();
    loop {
        let table = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            table = stream.message() => table?,
        };
        let Some(table) = table else {
            return Ok(());
        };
        let domains = super::domains::Domains::from_table(table.domains, table.challenges, &apps.config.domain);
        let routes: HashMap<String, Vec<SocketAddr>> = table
            .routes
            .into_iter()
            .map(|route| {
                let listed = match route.upstreams.is_empty() {
                    true => vec![route.upstream],
                    false => route.upstreams,
                };
                let addrs = listed.iter().filter_map(|upstream| upstream.parse().ok()).collect();
                (route.host, addrs)
            })
            .filter(|(_, addrs): &(String, Vec<SocketAddr>)| !addrs.is_empty())
            .collect();
        tracing::debug!(routes = routes.len(), "route table updated");
        apps.table.replace(routes);
        apps.set_domains(domains);
    }
}
