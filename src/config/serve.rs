//! Listen addresses and shutdown timing of one service process.

use std::{net::SocketAddr, time::Duration};

use super::{ConfigError, ProcessEnv, ServerTls, ServiceKind, Source, parse_or};

/// Listen addresses and shutdown timing of one service process.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub grpc_addr: SocketAddr,
    pub drain_delay: Duration,
    pub shutdown_grace: Duration,
    /// TLS for this process's listeners (see [`crate::tls`]); `None`: plain.
    pub tls: Option<ServerTls>,
    /// `CAPSULE_METRICS_ADDR`: where the process serves `/metrics` on a
    /// listener of its own; `None`, on each gRPC port.
    pub metrics_addr: Option<SocketAddr>,
}

impl ServeConfig {
    pub fn from_env(service: ServiceKind) -> Result<Self, ConfigError> {
        Self::from_source(service, &ProcessEnv)
    }

    pub fn from_source(service: ServiceKind, source: &dyn Source) -> Result<Self, ConfigError> {
        let default_addr = SocketAddr::from(([0, 0, 0, 0], service.default_grpc_port()));
        Ok(Self {
            grpc_addr: parse_or(
                source,
                &service.grpc_addr_variable(),
                default_addr,
                "expected an address such as 0.0.0.0:50051",
            )?,
            drain_delay: Duration::from_millis(parse_or(
                source,
                "CAPSULE_DRAIN_DELAY_MS",
                500u64,
                "expected a whole number of milliseconds",
            )?),
            shutdown_grace: Duration::from_secs(parse_or(
                source,
                "CAPSULE_SHUTDOWN_GRACE_SECS",
                8u64,
                "expected a whole number of seconds",
            )?),
            tls: ServerTls::from_source(source)?,
            metrics_addr: source
                .get("CAPSULE_METRICS_ADDR")
                .map(|value| {
                    value.trim().parse().map_err(|_| ConfigError {
                        variable: "CAPSULE_METRICS_ADDR".to_owned(),
                        value,
                        reason: "expected an address such as 0.0.0.0:9090".to_owned(),
                    })
                })
                .transpose()?,
        })
    }
}
