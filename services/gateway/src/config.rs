//! The gateway's settings of the edge.

use std::time::Duration;

use capsule::config::{ConfigError, ProcessEnv, Source, positive};

use crate::apps;

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
/// | `CAPSULE_INTERNAL_SECRET` | proves to the services the client address the gateway forwards (see [`capsule::client`]); checks API tokens with the auth service |
/// | `GATEWAY_MAX_STREAMS_PER_USER` | `20`: audit-event follow streams one user keeps open at once on one gateway; one more is RESOURCE_EXHAUSTED |
/// | `GATEWAY_APPS_*` | serving users' apps: see [`apps::AppsConfig`] |
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub apps: apps::AppsConfig,
    pub max_body_bytes: usize,
    pub default_timeout: Duration,
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    pub max_streams_per_user: u64,
    pub cors_origins: Vec<String>,
    pub trusted_proxies: Vec<capsule::client::IpNet>,
    /// Sent with the client address to the services.
    pub client_proof: Option<String>,
    /// The services' shared secret: API tokens are checked with it.
    pub internal_secret: Option<String>,
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
            max_streams_per_user: positive(source, "GATEWAY_MAX_STREAMS_PER_USER", 20)?,
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
            internal_secret: source.get("CAPSULE_INTERNAL_SECRET"),
        })
    }
}

/// CORS for the REST bridge: the origins of `GATEWAY_CORS_ORIGINS`.
pub(crate) fn cors(config: &EdgeConfig) -> tower_http::cors::CorsLayer {
    cors_exposing(config, &["x-request-id"])
}

/// CORS for gRPC-Web on the gRPC port: a browser must also read the status
/// the call ended with.
pub(crate) fn grpc_web_cors(config: &EdgeConfig) -> tower_http::cors::CorsLayer {
    cors_exposing(
        config,
        &["x-request-id", "grpc-status", "grpc-message", "grpc-status-details-bin"],
    )
}

fn cors_exposing(config: &EdgeConfig, exposed: &[&'static str]) -> tower_http::cors::CorsLayer {
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
        .expose_headers(
            exposed
                .iter()
                .map(|name| http::HeaderName::from_static(name))
                .collect::<Vec<_>>(),
        )
}
