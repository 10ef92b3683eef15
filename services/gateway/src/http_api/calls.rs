//! A bridged request's call to its backend: the metadata passed on, the
//! deadline, a unary call (reads retried with backoff on UNAVAILABLE), and
//! a server stream as Server-Sent Events or newline-delimited JSON.

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue},
    response::Response,
};
use capsule::trace::TracedChannel as Channel;
use futures::StreamExt;
use prost_reflect::DynamicMessage;
use tonic::{Code, Status};

use super::bridge::Bridge;
use crate::{
    codec::DynamicCodec,
    transcode::{self, Route, conventions},
};

/// One bridged call: the route, the backend's channel, the request and its
/// metadata.
pub(super) struct Call<'a> {
    pub route: &'a Route,
    pub channel: Channel,
    pub message: DynamicMessage,
    pub metadata: tonic::metadata::MetadataMap,
}

/// The deadline of a call: `grpc-timeout` (e.g. `5S`, `500m`) or the
/// default, at most ten times the default. Absurd values saturate.
pub(super) fn deadline(headers: &HeaderMap, default: Duration) -> Duration {
    let Some(value) = headers.get("grpc-timeout").and_then(|v| v.to_str().ok()) else {
        return default;
    };
    let (digits, unit) = value.split_at(value.len().saturating_sub(1));
    let Ok(amount) = digits.parse::<u64>() else {
        return default;
    };
    let parsed = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return default,
    };
    parsed.min(default.saturating_mul(10))
}

/// The metadata a backend gets: the headers of
/// [`conventions::FORWARDED_HEADERS`], the request id, and the client's
/// address vouched for by the gateway.
pub(super) fn metadata_from(
    headers: &HeaderMap,
    request_id: &str,
    client: IpAddr,
    proof: Option<&str>,
) -> tonic::metadata::MetadataMap {
    let mut metadata = tonic::metadata::MetadataMap::new();
    for &name in conventions::FORWARDED_HEADERS {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok())
            && let Ok(value) = value.parse()
        {
            metadata.insert(name, value);
        }
    }
    if let Ok(value) = request_id.parse() {
        metadata.insert("x-request-id", value);
    }
    let mut headers = metadata.into_headers();
    capsule::client::vouch(&mut headers, Some(client), proof);
    tonic::metadata::MetadataMap::from_headers(headers)
}

pub(super) async fn unary(call: Call<'_>, timeout: Duration, retries: u32) -> Result<DynamicMessage, Status> {
    let mut attempt = 0;
    loop {
        let result = unary_once(&call, timeout).await;
        match result {
            Err(status) if status.code() == Code::Unavailable && attempt < retries => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * 3u64.pow(attempt))).await;
            }
            other => return other,
        }
    }
}

async fn unary_once(call: &Call<'_>, timeout: Duration) -> Result<DynamicMessage, Status> {
    let route = call.route;
    let mut grpc = tonic::client::Grpc::new(call.channel.clone());
    grpc.ready()
        .await
        .map_err(|err| Status::unavailable(format!("the backend is unavailable: {err}")))?;
    let path = http::uri::PathAndQuery::try_from(route.grpc_path())
        .map_err(|err| capsule::rpc::internal(format_args!("the method path {}: {err}", route.grpc_path())))?;
    let mut request = tonic::Request::from_parts(
        call.metadata.clone(),
        tonic::Extensions::default(),
        call.message.clone(),
    );
    request.set_timeout(timeout);
    let call = grpc.unary(request, path, DynamicCodec::new(route.method.output()));
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(backend_gone(status)),
        Err(_) => Err(Status::deadline_exceeded("the backend did not answer in time")),
    }
}

/// CANCELLED from the channel itself means the backend's connection went
/// away mid-call (the caller of the bridge cancelled nothing): that is the
/// backend being unavailable, and a read may be retried.
fn backend_gone(status: Status) -> Status {
    if status.code() == Code::Cancelled {
        Status::unavailable(format!("the backend went away during the call: {}", status.message()))
    } else {
        status
    }
}

/// A server-streaming RPC as Server-Sent Events (`Accept:
/// text/event-stream`; `id:` is the message's [`conventions::EVENT_ID_FIELD`], so a client
/// resumes with `Last-Event-ID`) or newline-delimited JSON
/// (`{"result": …}` / `{"error": …}` per line, like grpc-gateway).
pub(super) async fn stream(bridge: &Arc<Bridge>, call: Call<'_>, sse: bool, request_id: &str) -> Response {
    let Call {
        route,
        channel,
        message,
        metadata,
    } = call;
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(err) = grpc.ready().await {
        return bridge.error(
            &Status::unavailable(format!("the backend is unavailable: {err}")),
            request_id,
        );
    }
    let Ok(path) = http::uri::PathAndQuery::try_from(route.grpc_path()) else {
        return bridge.error(&capsule::rpc::internal("a method path that is no URI path"), request_id);
    };
    let request = tonic::Request::from_parts(metadata, tonic::Extensions::default(), message);
    let messages = match grpc
        .server_streaming(request, path, DynamicCodec::new(route.method.output()))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return bridge.error(&backend_gone(status), request_id),
    };
    let pool = bridge.routes.pool.clone();
    let has_event_id = route
        .method
        .output()
        .get_field_by_name(conventions::EVENT_ID_FIELD)
        .is_some();
    let frames = messages.map(move |item| {
        let frame = match item {
            Ok(message) => {
                let json = transcode::to_json(&message);
                if sse {
                    let id = if has_event_id {
                        message
                            .get_field_by_name(conventions::EVENT_ID_FIELD)
                            .and_then(|v| v.as_i64())
                            .map(|seq| format!("id: {seq}\n"))
                            .unwrap_or_default()
                    } else {
                        String::new()
                    };
                    format!("{id}data: {json}\n\n")
                } else {
                    format!("{}\n", serde_json::json!({ "result": json }))
                }
            }
            Err(status) => {
                let error = transcode::status_json(&pool, &status);
                if sse {
                    format!("event: error\ndata: {error}\n\n")
                } else {
                    format!("{}\n", serde_json::json!({ "error": error }))
                }
            }
        };
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(frame))
    });
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let mut response = Response::new(Body::from_stream(frames));
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_saturate() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            deadline(&headers, Duration::from_secs(30))
        };
        assert_eq!(with("5S"), Duration::from_secs(5));
        assert_eq!(with("250m"), Duration::from_millis(250));
        assert_eq!(with("18446744073709551615H"), Duration::from_secs(300), "no overflow");
        assert_eq!(with("99999999999999999999999M"), Duration::from_secs(30), "unparsable");
        assert_eq!(with("7x"), Duration::from_secs(30));
        assert_eq!(with(""), Duration::from_secs(30));
        assert_eq!(
            deadline(&HeaderMap::new(), Duration::MAX),
            Duration::MAX,
            "a huge default is no overflow either"
        );
    }
}
