//! What the health endpoint reports.

use std::sync::Arc;

use tonic_health::{ServingStatus, server::HealthReporter};

/// The health of one service as its health endpoint reports it, for the
/// service's own name and for the whole server (`""`).
#[derive(Clone)]
pub struct Health {
    pub(super) reporter: HealthReporter,
    pub(super) service_names: Arc<Vec<String>>,
}

impl Health {
    /// Reports SERVING or NOT_SERVING for every name this server answers for.
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for name in self.service_names.iter() {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

impl crate::db::Readiness for Health {
    async fn report(&self, serving: bool) {
        self.set(serving).await;
    }
}
