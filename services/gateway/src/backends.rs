//! The channels to the services behind the gateway.

use capsule::config::{GatewayConfig, ServiceKind};
use capsule::trace::TracedChannel as Channel;

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
            auth: capsule::tls::channel(&config.services.auth)?,
            project: capsule::tls::channel(&config.services.project)?,
            deploy: capsule::tls::channel(&config.services.deploy)?,
            gateway: capsule::tls::channel(&own)?,
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
