//! Capsule's gateway: the one front door.
//!
//! - HTTP (`GATEWAY_HTTP_ADDR`): the REST/JSON bridge transcoded from the
//!   protos' `google.api.http` annotations, `/openapi.json`, `/healthz`,
//!   `/readyz`.
//! - gRPC (`GATEWAY_GRPC_ADDR`): `capsule.gateway.v1` (fan-out calls), and
//!   every `capsule.auth/project/deploy` call routed to its service,
//!   streaming included; reflection lists them all, so one address is
//!   enough for a client.

pub mod apps;
mod backends;
mod codec;
mod config;
mod docs;
mod front;
mod grpc;
mod http_api;
mod limit;
mod openapi;
mod trail;
pub mod transcode;

use std::sync::Arc;

use capsule::{
    config::{GatewayConfig, ServeConfig, ServiceKind},
    proto::gateway::v1::gateway_service_server::GatewayServiceServer,
    server::GrpcServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use backends::Backends;
pub use config::EdgeConfig;
pub use grpc::GatewayServiceApi;

/// The gRPC front door: calls for the services behind the gateway are
/// forwarded as they are (headers, body and trailers stream through).
fn front_door(backends: &Backends, edge: &EdgeConfig) -> axum::Router {
    let mut router = axum::Router::new();
    for kind in [ServiceKind::Auth, ServiceKind::Project, ServiceKind::Deploy] {
        let name = kind.grpc_service_name();
        let Some(channel) = backends.for_service(name) else {
            continue;
        };
        let (trusted, proof) = (edge.trusted_proxies.clone(), edge.client_proof.clone());
        let forward = tower::service_fn(move |mut request: http::Request<axum::body::Body>| {
            let mut channel = channel.clone();
            // The services learn who the client is from the gateway alone.
            let client = capsule::client::peer(&request)
                .map(|peer| capsule::client::forwarded(peer, request.headers(), &trusted));
            capsule::client::vouch(request.headers_mut(), client, proof.as_deref());
            async move {
                use tower::Service;
                let request = request.map(tonic::body::Body::new);
                let response = match std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                    Ok(()) => channel.call(request).await,
                    Err(err) => Err(err),
                };
                Ok::<_, std::convert::Infallible>(match response {
                    Ok(response) => response.map(axum::body::Body::new),
                    Err(err) => tonic::Status::unavailable(format!("the {kind} service is unavailable: {err}"))
                        .into_http::<axum::body::Body>(),
                })
            }
        });
        router = router.route_service(&format!("/{name}/{{*method}}"), forward);
    }
    router
}

/// The REST bridge alone, for any descriptor set: every annotated RPC in
/// it is served, its calls sent to `backends`.
pub async fn serve_rest(
    listener: TcpListener,
    descriptor_set: &[u8],
    backends: Backends,
    auth_url: &str,
    edge: EdgeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let routes = transcode::Routes::from_descriptor_set(descriptor_set).map_err(anyhow::Error::msg)?;
    let keys = capsule::auth::KeySet::at_edge(auth_url, edge.internal_secret.as_deref())?;
    http_api::serve(
        listener,
        Arc::new(http_api::Bridge::new(routes, backends, keys, edge)),
        None,
        None,
        shutdown,
    )
    .await
}

/// The OpenAPI document of the REST bridge (what `GET /openapi.json`
/// serves).
pub fn openapi_document() -> anyhow::Result<serde_json::Value> {
    let routes =
        transcode::Routes::from_descriptor_set(capsule::proto::FILE_DESCRIPTOR_SET).map_err(anyhow::Error::msg)?;
    Ok(openapi::document(&routes))
}

/// Serves the gateway's gRPC API on `grpc_listener` and its HTTP side on
/// `http_listener` until `shutdown` is cancelled.
pub async fn serve(
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    config: GatewayConfig,
    edge: EdgeConfig,
    serve_config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let backends = Backends::new(&config, grpc_listener.local_addr()?, serve_config.tls.is_some())?;
    let keys = capsule::auth::KeySet::at_edge(&config.services.auth, edge.internal_secret.as_deref())?;
    let routes =
        transcode::Routes::from_descriptor_set(capsule::proto::FILE_DESCRIPTOR_SET).map_err(anyhow::Error::msg)?;
    let apps = apps::Apps::new(
        edge.apps.clone(),
        edge.trusted_proxies.clone(),
        serve_config.tls.is_some(),
    );
    tokio::spawn(apps::routes::follow(
        apps.clone(),
        backends.deploy.clone(),
        shutdown.clone(),
    ));
    let front_door = front_door(&backends, &edge);
    let grpc_web_cors = crate::config::grpc_web_cors(&edge);
    let max_streams = edge.max_streams_per_user;
    let bridge = Arc::new(http_api::Bridge::new(routes, backends.clone(), keys.clone(), edge));

    let mut server = GrpcServer::new(ServiceKind::Gateway)
        .require_access(keys.clone())
        .add_service(
            GatewayServiceServer::new(GatewayServiceApi::new(backends.clone(), keys, max_streams))
                .max_decoding_message_size(capsule::server::MAX_MESSAGE_BYTES),
        )
        .with_router(front_door)
        .grpc_web(grpc_web_cors);
    for kind in [ServiceKind::Auth, ServiceKind::Project, ServiceKind::Deploy] {
        server = server.advertise(kind.grpc_service_name());
    }
    // The gateway holds no state of its own: it serves as soon as it listens.
    server.health().set(true).await;

    let http = http_api::serve(
        http_listener,
        bridge,
        Some(apps),
        serve_config.tls.clone(),
        shutdown.clone(),
    );
    let grpc = server.serve(grpc_listener, &serve_config, shutdown);
    let (http, grpc) = tokio::join!(http, grpc);
    http?;
    grpc
}
