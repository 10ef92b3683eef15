//! What every bridged request needs: the routes, the backends, the keys,
//! the edge's settings and rate limiter, and one way to answer an error.

use std::{num::NonZeroU32, sync::Arc};

use axum::{
    Json,
    http::HeaderValue,
    response::{IntoResponse, Response},
};
use capsule::auth::KeySet;
use governor::Quota;
use tonic::{Code, Status};

use crate::{
    backends::Backends,
    config::EdgeConfig,
    limit::ClientLimiter,
    transcode::{self, Routes},
};

/// Everything a request needs.
pub struct Bridge {
    pub routes: Routes,
    pub backends: Backends,
    pub keys: Arc<KeySet>,
    pub config: EdgeConfig,
    pub(super) limiter: ClientLimiter,
    pub(super) openapi: serde_json::Value,
}

impl Bridge {
    pub fn new(routes: Routes, backends: Backends, keys: Arc<KeySet>, config: EdgeConfig) -> Self {
        let per_second = NonZeroU32::new(config.rate_limit_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(per_second);
        let openapi = crate::openapi::document(&routes);
        Self {
            limiter: ClientLimiter::new(Quota::per_second(per_second).allow_burst(burst)),
            routes,
            backends,
            keys,
            config,
            openapi,
        }
    }

    /// An error as `google.rpc.Status` JSON, with a `google.rpc.RequestInfo`
    /// detail naming the request (as `x-request-id` does) and, with tracing
    /// on, its trace (`servingData`: `trace_id=…`), so a client can quote
    /// them and an operator find every log line and span of it.
    pub(super) fn error(&self, status: &Status, request_id: &str) -> Response {
        let mut body = transcode::status_json(&self.routes.pool, status);
        if let Some(details) = body.get_mut("details").and_then(serde_json::Value::as_array_mut)
            && !request_id.is_empty()
        {
            let mut info = serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.RequestInfo",
                "requestId": request_id,
            });
            if let Some(trace_id) = capsule::trace::current_trace_id() {
                info["servingData"] = format!("trace_id={trace_id}").into();
            }
            details.push(info);
        }
        let mut response = (transcode::http_status(status.code()), Json(body)).into_response();
        if let Ok(value) = HeaderValue::from_str(request_id) {
            response.headers_mut().insert("x-request-id", value);
        }
        if status.code() == Code::Unauthenticated {
            response
                .headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        response
    }
}
