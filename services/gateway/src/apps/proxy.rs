//! The reverse proxy to live apps, on hyper's client.

use std::net::SocketAddr;

use axum::{
    body::Body,
    http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header},
};
use hyper_util::rt::TokioIo;

use super::Apps;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        if !(keep_upgrade && name == header::CONNECTION) {
            headers.remove(name);
        }
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// A small HTML page for what the gateway answers itself.
fn page(status: StatusCode, title: &str, detail: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\"><h1>{title}</h1><p>{detail}</p>\
         <p><small>{} · Capsule</small></p></body></html>",
        status.as_u16()
    );
    let mut response = Response::new(Body::from(html));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// Forwards `request` to the app live at `host`.
pub async fn forward(apps: &Apps, host: &str, client: SocketAddr, mut request: Request<Body>) -> Response<Body> {
    let Some(upstream) = apps.table.get(host) else {
        return page(
            StatusCode::BAD_GATEWAY,
            "No app is live here",
            "Nothing is deployed at this address yet, or its deployment is not live.",
        );
    };
    let upgrading = request.headers().contains_key(header::UPGRADE);
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let original_host = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers, upgrading);
    let forwarded_for = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {}", client.ip()),
        None => client.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        parts.headers.insert("x-forwarded-for", value);
    }
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(original) = original_host {
        parts.headers.insert("x-forwarded-host", original);
    }
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    // A body-less request can go again, to the route in force then, when
    // the first upstream refused it (a switch at that very moment).
    let retriable = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let mut target = upstream;
    let mut body = Some(body);
    for attempt in 0..2 {
        let mut outgoing = Request::from_parts(parts.clone(), body.take().unwrap_or_else(Body::empty));
        let Ok(uri) = format!("http://{target}{path}").parse() else {
            return page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "The request's path is not valid.",
            );
        };
        *outgoing.uri_mut() = uri;
        *outgoing.version_mut() = http::Version::HTTP_11;
        let sent = tokio::time::timeout(apps.config.timeout, apps.client.request(outgoing)).await;
        let mut response = match sent {
            Err(_) => {
                return page(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The app took too long",
                    "The app did not answer in time. Try again in a moment.",
                );
            }
            Ok(Err(err)) => {
                if attempt == 0
                    && retriable
                    && err.is_connect()
                    && let Some(now) = apps.table.get(host)
                {
                    target = now;
                    continue;
                }
                tracing::debug!(error = %err, app.host = %host, "the app did not answer");
                return page(
                    StatusCode::BAD_GATEWAY,
                    "The app is not answering",
                    "The app is starting, restarting or has crashed. Try again in a moment.",
                );
            }
            Ok(Ok(response)) => response,
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let app_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                if let (Ok(client), Ok(app)) = tokio::join!(client_upgrade, app_upgrade) {
                    let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(app)).await;
                }
            });
            return response.map(|_| Body::empty());
        }
        strip_hop_by_hop(response.headers_mut(), false);
        return response.map(Body::new);
    }
    page(
        StatusCode::BAD_GATEWAY,
        "The app is not answering",
        "The app is starting, restarting or has crashed. Try again in a moment.",
    )
}
