//! The reverse proxy to live apps, on hyper's client.

use std::net::{IpAddr, SocketAddr};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header},
};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{
    Apps,
    pair::{Failure, Pair},
};

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

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// What says who the client is or how it came: the gateway writes these
/// itself, whatever the client sent.
const CLIENT_WRITTEN: [HeaderName; 9] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    HeaderName::from_static("x-forwarded-port"),
    header::FORWARDED,
    X_REAL_IP,
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
];

/// The `X-Forwarded-*`, `Forwarded` and `X-Real-IP` headers the app gets,
/// all written here from what the gateway knows, none passed on from the
/// client: the address chain from the client the trusted proxies
/// (`GATEWAY_TRUSTED_PROXIES`) saw — the entries a client wrote itself
/// are dropped —, the scheme the client used (the trusted proxy's word,
/// else the gateway's own listener's), and the Host.
fn forwarded_headers(headers: &mut HeaderMap, peer: IpAddr, apps: &Apps, host: Option<HeaderValue>, tls: bool) {
    use std::fmt::Write as _;
    let trusted = &apps.trusted_proxies;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    // The chain as the trusted proxies passed it, nearest last.
    let mut passed: Vec<IpAddr> = Vec::new();
    let mut scheme = if tls { "https" } else { "http" };
    if is_trusted(&peer) {
        // What is left of an entry that is no address was written by
        // someone no proxy vouched for.
        let entries: Vec<Option<IpAddr>> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .map(|value| value.to_str().ok())
            .flat_map(|list| list.unwrap_or("?").split(','))
            .map(|entry| entry.trim().parse().ok())
            .collect();
        let after_unknown = entries.iter().rposition(Option::is_none).map_or(0, |at| at + 1);
        passed = entries[after_unknown..].iter().flatten().copied().collect();
        passed.push(peer);
        if let Some(said) = headers.get(X_FORWARDED_PROTO).and_then(|value| value.to_str().ok()) {
            scheme = if said.eq_ignore_ascii_case("https") {
                "https"
            } else {
                "http"
            };
        }
    }
    let chain = if passed.is_empty() {
        std::slice::from_ref(&peer)
    } else {
        &passed[..]
    };
    // From the right: everything up to and with the first address no
    // trusted proxy is; what lies left of it the client wrote itself.
    let client_at = chain.iter().rposition(|ip| !is_trusted(ip)).unwrap_or(0);
    let chain = &chain[client_at..];
    let client = chain[0];
    for name in &CLIENT_WRITTEN {
        headers.remove(name);
    }
    // Written once each, and handed to the header without a copy.
    let mut listed = String::with_capacity(chain.len() * 17);
    for (at, ip) in chain.iter().enumerate() {
        let _ = write!(listed, "{}{ip}", if at == 0 { "" } else { ", " });
    }
    let mut forwarded = String::with_capacity(64);
    let _ = match client {
        IpAddr::V4(v4) => write!(forwarded, "for={v4};proto={scheme}"),
        IpAddr::V6(v6) => write!(forwarded, "for=\"[{v6}]\";proto={scheme}"),
    };
    if let Some(host) = host.as_ref().and_then(|value| value.to_str().ok())
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    {
        let _ = write!(forwarded, ";host=\"{host}\"");
    }
    if let Ok(listed) = HeaderValue::try_from(listed) {
        let real_ip = match chain.len() {
            1 => Ok(listed.clone()),
            _ => HeaderValue::try_from(client.to_string()),
        };
        headers.insert(X_FORWARDED_FOR, listed);
        if let Ok(real_ip) = real_ip {
            headers.insert(X_REAL_IP, real_ip);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    if let Ok(forwarded) = HeaderValue::try_from(forwarded) {
        headers.insert(header::FORWARDED, forwarded);
    }
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// A Host header's name: lowercase, without its port.
pub fn name_of(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The answer to an ACME HTTP-01 validation of an open order at the name
/// it validates: the key authorization of a token the gateway holds.
/// Other paths, hosts and tokens go on as usual.
pub fn acme_answer(apps: &Apps, host: &str, uri: &http::Uri) -> Option<Response<Body>> {
    let token = uri.path().strip_prefix("/.well-known/acme-challenge/")?;
    let answer = apps.domains().http01(token, name_of(host))?.to_owned();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(answer))
        .ok()
}

/// A request for a custom domain: redirected to HTTPS when it came in
/// plain and the domain asks for it, else sent to its app, with HSTS over
/// TLS when the domain asks for it.
pub async fn to_domain(
    apps: &Apps,
    served: &super::domains::Served,
    host: &str,
    client: SocketAddr,
    request: Request<Body>,
    tls: bool,
    pair: Option<&Pair>,
) -> Response<Body> {
    // Behind a load balancer that terminated TLS, its word counts.
    let tls = tls || said_https(&request, client, apps);
    if !tls && served.redirect_https {
        let name = name_of(host);
        // A wildcard's first label is the client's to write: only a DNS
        // name goes into the Location.
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        {
            return page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "The request's host is not a domain name.",
            );
        }
        let port = match apps.config.https_port {
            Some(443) | None => String::new(),
            Some(port) => format!(":{port}"),
        };
        let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location = format!("https://{name}{port}{path}");
        return Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header(header::LOCATION, location)
            .body(Body::empty())
            .unwrap_or_default();
    }
    if served.host.is_empty() {
        return page(
            StatusCode::BAD_GATEWAY,
            "No app is live here",
            "This domain's environment has no live deployment.",
        );
    }
    let mut response = forward(apps, &served.host, client, request, tls, pair).await;
    if tls
        && served.hsts_max_age > 0
        && let Ok(value) = HeaderValue::from_str(&format!("max-age={}", served.hsts_max_age))
    {
        response.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, value);
    }
    response
}

/// Whether a trusted proxy (`GATEWAY_TRUSTED_PROXIES`) says the client
/// used HTTPS.
fn said_https(request: &Request<Body>, client: SocketAddr, apps: &Apps) -> bool {
    apps.trusted_proxies.iter().any(|net| net.contains(&client.ip()))
        && request
            .headers()
            .get(X_FORWARDED_PROTO)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

/// Forwards `request` to the app live at `host`; `tls`: the client used
/// HTTPS; `pair`: the connection an HTTP/1.1 client holds to the app,
/// used for every request it may carry (not an upgrade, not to a copy
/// that speaks HTTP/2).
pub async fn forward(
    apps: &Apps,
    host: &str,
    client: SocketAddr,
    mut request: Request<Body>,
    tls: bool,
    pair: Option<&Pair>,
) -> Response<Body> {
    // The copy the client's connection already holds, while it is live
    // there; else the next in turn.
    let held = pair.and_then(Pair::held);
    let Some(upstream) = apps
        .table
        .get(host)
        .and_then(|copies| Some((held.filter(|at| copies.live(*at)).or_else(|| copies.pick(&[]))?, copies)))
    else {
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
    // gRPC's `te: trailers`, the one TE an HTTP/2 request may carry.
    let te_trailers = parts
        .headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(&mut parts.headers, upgrading);
    forwarded_headers(&mut parts.headers, client.ip(), apps, original_host, tls);
    // A body-less request that never reached the app (the connection was
    // refused: a copy gone, or a switch at that very moment) goes again,
    // to another copy in the route in force then.
    let bodiless = !parts.headers.contains_key(header::TRANSFER_ENCODING)
        && parts
            .headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|length| length.as_bytes() == b"0");
    let retriable = bodiless && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let (mut target, mut copies) = upstream;
    let mut tried = Vec::new();
    let mut body = Some(body);
    let attempts = if retriable { copies.count().clamp(2, 4) } else { 1 };
    // The request's head is copied only for a request that may go again.
    let mut parts = Some(parts);
    for attempt in 0..attempts {
        let head = match attempt + 1 < attempts {
            true => parts.clone(),
            false => parts.take(),
        };
        let Some(head) = head else { break };
        let mut outgoing = Request::from_parts(head, body.take().unwrap_or_else(Body::empty));
        // HTTP/2 to a copy that speaks it (an upgrade stays HTTP/1.1);
        // HTTP/1.1 over the client's own connection to the copy when it
        // has one to hold.
        let h2 = !upgrading && apps.speaks_h2(&copies, target).await;
        let paired = pair.filter(|_| !upgrading && !h2);
        // The pooled clients find the copy by an absolute URI; a held
        // connection is there already: the path alone.
        if paired.is_none() || outgoing.uri().scheme().is_some() {
            let path = outgoing.uri().path_and_query().map_or("/", |pq| pq.as_str());
            let uri = match paired {
                Some(_) => path.parse(),
                None => format!("http://{target}{path}").parse(),
            };
            let Ok(uri) = uri else {
                return page(
                    StatusCode::BAD_REQUEST,
                    "Bad request",
                    "The request's path is not valid.",
                );
            };
            *outgoing.uri_mut() = uri;
        }
        let sent = if h2 {
            *outgoing.version_mut() = http::Version::HTTP_2;
            if te_trailers {
                outgoing
                    .headers_mut()
                    .insert(header::TE, HeaderValue::from_static("trailers"));
            }
            tokio::time::timeout(apps.config.timeout, pooled(&apps.h2, outgoing)).await
        } else {
            *outgoing.version_mut() = http::Version::HTTP_11;
            match paired {
                Some(pair) => {
                    if !outgoing.headers().contains_key(header::HOST)
                        && let Ok(host) = HeaderValue::from_str(&target.to_string())
                    {
                        outgoing.headers_mut().insert(header::HOST, host);
                    }
                    tokio::time::timeout(apps.config.timeout, pair.send(&apps.connector, target, outgoing)).await
                }
                None => tokio::time::timeout(apps.config.timeout, pooled(&apps.client, outgoing)).await,
            }
        };
        let mut response = match sent {
            Err(_) => {
                return page(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The app took too long",
                    "The app did not answer in time. Try again in a moment.",
                );
            }
            Ok(Err(failure)) => {
                let gone = failure.gone();
                if gone {
                    copies.refused(target);
                    tried.push(target);
                }
                if attempt + 1 < attempts
                    && retriable
                    && gone
                    && let Some(now) = apps.table.get(host)
                    && let Some(next) = now.pick(&tried).or_else(|| now.pick(&[]))
                {
                    (target, copies) = (next, now);
                    continue;
                }
                tracing::debug!(error = %failure, app.host = %host, "the app did not answer");
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

/// `request` on a pooled client (an HTTP/2 client's, an upgrade, or to
/// a copy that speaks HTTP/2).
async fn pooled(client: &super::client::Client, request: Request<Body>) -> Result<Response<Incoming>, Failure> {
    client.request(request).await.map_err(|err| {
        // A kept-alive connection found closed before any answer came
        // (its copy gone) counts as a refused one.
        let closed = std::error::Error::source(&err)
            .and_then(|source| source.downcast_ref::<hyper::Error>())
            .is_some_and(|err| err.is_incomplete_message() || err.is_canceled());
        if err.is_connect() || closed {
            Failure::Refused(std::io::Error::other(err))
        } else {
            Failure::Other(err.into())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::AppsConfig;

    #[test]
    fn a_trusted_proxys_chain_is_kept_from_the_client_it_saw_and_nothing_left_of_it() {
        let config = AppsConfig {
            domain: "localhost".to_owned(),
            timeout: std::time::Duration::from_secs(1),
            idle: std::time::Duration::from_secs(1),
            internal_secret: None,
            https_addr: None,
            https_port: None,
            handoff: None,
        };
        let apps = Apps::new(config, capsule::client::parse_networks("10.0.0.0/8").unwrap(), true);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6, 1.2.3.4"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        headers.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        headers.insert("true-client-ip", HeaderValue::from_static("6.6.6.6"));
        forwarded_headers(&mut headers, "10.0.0.1".parse().unwrap(), &apps, None, apps.https);
        assert_eq!(headers["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert!(!headers.contains_key("true-client-ip"));
        assert_eq!(headers["x-real-ip"], "1.2.3.4");
        assert_eq!(headers["x-forwarded-proto"], "http", "the trusted proxy's word");
        assert_eq!(headers["forwarded"], "for=1.2.3.4;proto=http");

        // An entry that is no address ends what the proxies vouch for.
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, unknown, 10.0.0.2"),
        );
        forwarded_headers(&mut headers, "10.0.0.1".parse().unwrap(), &apps, None, apps.https);
        assert_eq!(headers["x-real-ip"], "10.0.0.2");

        // Anyone else's headers are replaced; the gateway's TLS says https.
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        forwarded_headers(&mut headers, "2001:db8::7".parse().unwrap(), &apps, None, apps.https);
        assert_eq!(headers["x-forwarded-for"], "2001:db8::7");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["forwarded"], "for=\"[2001:db8::7]\";proto=https");
    }
}
