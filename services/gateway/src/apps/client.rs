//! The HTTP client that reaches live apps.

use axum::body::Body;
use hyper_util::{
    client::legacy::{Client as HyperClient, connect::HttpConnector},
    rt::TokioExecutor,
};

/// Pooled HTTP/1.1 connections to the apps' upstreams.
pub type Client = HyperClient<HttpConnector, Body>;

pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    HyperClient::builder(TokioExecutor::new()).build(connector)
}
