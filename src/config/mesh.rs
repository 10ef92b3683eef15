//! How the services find each other and the gateway's own address.

use std::net::SocketAddr;

use super::{ConfigError, ProcessEnv, Secrets, ServiceKind, Source, parse_or};

/// Where a service finds the others (`AUTH_SERVICE_URL`,
/// `PROJECT_SERVICE_URL`, `DEPLOY_SERVICE_URL`).
#[derive(Clone, Debug)]
pub struct ServiceUrls {
    pub auth: String,
    pub project: String,
    pub deploy: String,
}

impl ServiceUrls {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let service_url = |kind: ServiceKind| -> Result<String, ConfigError> {
            let variable = kind.service_url_variable();
            let value = source
                .get(&variable)
                .unwrap_or_else(|| format!("http://127.0.0.1:{}", kind.default_grpc_port()));
            match url::Url::parse(&value) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Ok(value),
                _ => Err(ConfigError {
                    variable,
                    value: format!("{value:?}"),
                    reason: "expected a URL such as http://127.0.0.1:50051".to_owned(),
                }),
            }
        };
        Ok(Self {
            auth: service_url(ServiceKind::Auth)?,
            project: service_url(ServiceKind::Project)?,
            deploy: service_url(ServiceKind::Deploy)?,
        })
    }
}

/// What a service needs to reach and trust the others: their addresses and
/// the shared secrets.
#[derive(Clone, Debug)]
pub struct Mesh {
    pub services: ServiceUrls,
    pub secrets: Secrets,
}

impl Mesh {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            services: ServiceUrls::from_source(source)?,
            secrets: Secrets::from_source(source)?,
        })
    }
}

/// The gateway's HTTP address and the services it fronts.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub http_addr: SocketAddr,
    pub services: ServiceUrls,
}

impl GatewayConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            http_addr: parse_or(
                source,
                "GATEWAY_HTTP_ADDR",
                SocketAddr::from(([0, 0, 0, 0], 8080)),
                "expected an address such as 0.0.0.0:8080",
            )?,
            services: ServiceUrls::from_source(source)?,
        })
    }
}

/// Where the app of the project with host label `label` is served:
/// `CAPSULE_APPS_URL` with `{label}` replaced (default
/// `http://{label}.localhost:8080`, the gateway's HTTP port with
/// `GATEWAY_APPS_DOMAIN=localhost`).
pub fn app_url(label: &str) -> String {
    static TEMPLATE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            ProcessEnv
                .get("CAPSULE_APPS_URL")
                .filter(|template| template.contains("{label}"))
                .unwrap_or_else(|| "http://{label}.localhost:8080".to_owned())
        })
        .replace("{label}", label)
}
