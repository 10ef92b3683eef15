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
mod codec;
mod grpc;
mod http_api;
mod openapi;
pub mod transcode;

use std::{sync::Arc, time::Duration};

use capsule::{
    config::{ConfigError, GatewayConfig, ProcessEnv, ServeConfig, ServiceKind, Source, positive},
    proto::gateway::v1::gateway_service_server::GatewayServiceServer,
    server::GrpcServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use grpc::GatewayServiceApi;

/// Settings of the edge.
///
/// | variable | default |
/// |---|---|
/// | `GATEWAY_MAX_BODY_BYTES` | `1048576` |
/// | `GATEWAY_REQUEST_TIMEOUT_MS` | `30000`: the deadline of a backend call without `grpc-timeout` |
/// | `GATEWAY_RATE_LIMIT_PER_SEC` | `100` requests per second per client address … |
/// | `GATEWAY_RATE_LIMIT_BURST` | `200` … with bursts up to this |
/// | `GATEWAY_CORS_ORIGINS` | unset: no CORS; `*` or a comma-separated list of origins |
/// | `GATEWAY_TRUSTED_PROXIES` | unset: the client is the connection's peer; a comma-separated list of CIDRs (`10.0.0.0/8,::1`) whose `X-Forwarded-For` is believed |
/// | `CAPSULE_INTERNAL_SECRET` | proves to the services the client address the gateway forwards (see [`capsule::client`]) |
/// | `GATEWAY_APPS_*` | serving users' apps: see [`apps::AppsConfig`] |
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub apps: apps::AppsConfig,
    pub max_body_bytes: usize,
    pub default_timeout: Duration,
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    pub cors_origins: Vec<String>,
    pub trusted_proxies: Vec<capsule::client::IpNet>,
    /// Sent with the client address to the services.
    pub client_proof: Option<String>,
}

impl EdgeConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            apps: apps::AppsConfig::from_source(source)?,
            max_body_bytes: positive(source, "GATEWAY_MAX_BODY_BYTES", 1024 * 1024)?,
            default_timeout: Duration::from_millis(positive(source, "GATEWAY_REQUEST_TIMEOUT_MS", 30_000)?),
            rate_limit_per_sec: positive(source, "GATEWAY_RATE_LIMIT_PER_SEC", 100)?,
            rate_limit_burst: positive(source, "GATEWAY_RATE_LIMIT_BURST", 200)?,
            cors_origins: source
                .get("GATEWAY_CORS_ORIGINS")
                .map(|origins| {
                    origins
                        .split(',')
                        .map(|o| o.trim().to_owned())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            trusted_proxies: capsule::client::parse_networks(
                &source.get("GATEWAY_TRUSTED_PROXIES").unwrap_or_default(),
            )
            .map_err(|reason| ConfigError {
                variable: "GATEWAY_TRUSTED_PROXIES".to_owned(),
                value: source.get("GATEWAY_TRUSTED_PROXIES").unwrap_or_default(),
                reason,
            })?,
            client_proof: source
                .get("CAPSULE_INTERNAL_SECRET")
                .as_deref()
                .map(capsule::client::proof),
        })
    }
}

fn cors(config: &EdgeConfig) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if config.cors_origins.is_empty() {
        return CorsLayer::new();
    }
    let origin = if config.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(config.cors_origins.iter().filter_map(|o| o.parse().ok()))
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods(tower_http::cors::Any)
        .allow_headers(tower_http::cors::Any)
        .expose_headers([http::HeaderName::from_static("x-request-id")])
}

/// Lazily connected channels to the services behind the gateway, and to
/// the gateway's own gRPC API.
#[derive(Clone)]
pub struct Backends {
    pub auth: Channel,
    pub project: Channel,
    pub deploy: Channel,
    pub gateway: Channel,
    /// More packages and where they are served (`test.echo.v1`, …).
    pub extra: Vec<(String, Channel)>,
}

fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(capsule::tls::endpoint(url)?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl Backends {
    /// Channels that connect on first use and reconnect after a backend
    /// restarts.
    /// `own_tls`: the gateway's own gRPC port serves TLS, so its loopback
    /// channel is `https://localhost` (the certificate must name localhost).
    pub fn new(config: &GatewayConfig, own_grpc: std::net::SocketAddr, own_tls: bool) -> anyhow::Result<Self> {
        let own = if own_tls {
            format!("https://localhost:{}", own_grpc.port())
        } else {
            format!("http://127.0.0.1:{}", own_grpc.port())
        };
        Ok(Self {
            auth: channel(&config.services.auth)?,
            project: channel(&config.services.project)?,
            deploy: channel(&config.services.deploy)?,
            gateway: channel(&own)?,
            extra: Vec::new(),
        })
    }

    /// Each backend with its service kind.
    pub fn all(&self) -> [(ServiceKind, &Channel); 3] {
        [
            (ServiceKind::Auth, &self.auth),
            (ServiceKind::Project, &self.project),
            (ServiceKind::Deploy, &self.deploy),
        ]
    }

    /// The channel that serves a gRPC service.
    pub fn for_service(&self, full_name: &str) -> Option<Channel> {
        let package = full_name.rsplit_once('.').map_or(full_name, |(package, _)| package);
        match package {
            "capsule.auth.v1" => Some(self.auth.clone()),
            "capsule.project.v1" => Some(self.project.clone()),
            "capsule.deploy.v1" => Some(self.deploy.clone()),
            "capsule.gateway.v1" => Some(self.gateway.clone()),
            other => self
                .extra
                .iter()
                .find(|(name, _)| name == other)
                .map(|(_, channel)| channel.clone()),
        }
    }
}

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
    let keys = capsule::auth::KeySet::at_edge(auth_url)?;
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
    let keys = capsule::auth::KeySet::at_edge(&config.services.auth)?;
    let routes =
        transcode::Routes::from_descriptor_set(capsule::proto::FILE_DESCRIPTOR_SET).map_err(anyhow::Error::msg)?;
    let apps = apps::Apps::new(edge.apps.clone());
    tokio::spawn(apps::routes::follow(
        apps.clone(),
        backends.deploy.clone(),
        shutdown.clone(),
    ));
    let front_door = front_door(&backends, &edge);
    let bridge = Arc::new(http_api::Bridge::new(routes, backends.clone(), keys.clone(), edge));

    let mut server = GrpcServer::new(ServiceKind::Gateway)
        .require_access(keys)
        .add_service(
            GatewayServiceServer::new(GatewayServiceApi::new(backends.clone()))
                .max_decoding_message_size(capsule::server::MAX_MESSAGE_BYTES),
        )
        .with_router(front_door);
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
