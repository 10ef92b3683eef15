//! Capsule's gateway: the one front door. Serves `capsule.gateway.v1` over
//! gRPC and, over HTTP/1.1, the REST/JSON bridge with `/healthz` (the
//! process is up) and `/readyz` (every backend reports SERVING).

mod grpc;
mod http_api;

use std::time::Duration;

use capsule::{
    config::{GatewayConfig, ServeConfig, ServiceKind},
    proto::gateway::v1::gateway_service_server::GatewayServiceServer,
    server::GrpcServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

pub use grpc::GatewayServiceApi;

/// Lazily connected channels to the services behind the gateway.
#[derive(Clone)]
pub struct Backends {
    pub auth: Channel,
    pub project: Channel,
    pub deploy: Channel,
}

impl Backends {
    /// Channels that connect on first use and reconnect after a backend
    /// restarts.
    pub fn new(config: &GatewayConfig) -> anyhow::Result<Self> {
        let channel = |url: &str| -> anyhow::Result<Channel> {
            Ok(Endpoint::from_shared(url.to_owned())?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(30))
                .connect_lazy())
        };
        Ok(Self {
            auth: channel(&config.services.auth)?,
            project: channel(&config.services.project)?,
            deploy: channel(&config.services.deploy)?,
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
}

/// Serves the gateway's gRPC API on `grpc_listener` and its HTTP side on
/// `http_listener` until `shutdown` is cancelled.
pub async fn serve(
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    config: GatewayConfig,
    serve_config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let backends = Backends::new(&config)?;
    let keys = capsule::auth::KeySet::from_auth_service(&config.services.auth, &capsule::auth::Secrets::from_env())?;
    let server = GrpcServer::new(ServiceKind::Gateway)
        .require_access(keys)
        .add_service(GatewayServiceServer::new(GatewayServiceApi::new(backends.clone())));
    // The gateway holds no state of its own: it serves as soon as it listens.
    server.health().set(true).await;

    let http = http_api::serve(http_listener, backends, shutdown.clone());
    let grpc = server.serve(grpc_listener, &serve_config, shutdown);
    let (http, grpc) = tokio::join!(http, grpc);
    http?;
    grpc
}
