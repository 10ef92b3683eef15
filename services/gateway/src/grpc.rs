//! The `capsule.gateway.v1.GatewayService` implementation (fan-out calls).
//! RPCs not written yet answer UNIMPLEMENTED.

use capsule::proto::gateway::v1::gateway_service_server::GatewayService;

use crate::Backends;

/// The gateway's own gRPC API.
#[derive(Clone)]
pub struct GatewayServiceApi {
    // Read by the fan-out RPCs as they are implemented.
    #[expect(dead_code)]
    backends: Backends,
}

impl GatewayServiceApi {
    pub fn new(backends: Backends) -> Self {
        Self { backends }
    }
}

#[tonic::async_trait]
impl GatewayService for GatewayServiceApi {}
