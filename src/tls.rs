//! Transport security, when configured: TLS (rustls) on every listener —
//! gRPC with its `/metrics`, and the gateway's REST port — and on every call
//! between services whose URL is `https://`; optionally client
//! certificates (mTLS) required by a gRPC server.
//!
//! | variable | meaning |
//! |---|---|
//! | `CAPSULE_TLS_CERT_FILE`, `CAPSULE_TLS_KEY_FILE` | PEM certificate chain and private key: serve TLS; also this process's client certificate towards other services |
//! | `CAPSULE_TLS_CLIENT_CA_FILE` | PEM CA: the gRPC server requires client certificates it signed (mTLS) |
//! | `CAPSULE_TLS_CA_FILE` | PEM CA that signed the other services' certificates, for `https://` service URLs |
//!
//! Files are read once at start-up; a missing or unreadable one stops the
//! process with a message naming its variable. Keys are never logged.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, rustls, server::TlsStream};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

pub use crate::config::{CA_FILE, CERT_FILE, CLIENT_CA_FILE, KEY_FILE, ServerTls};
use crate::config::{
    ConfigError, ProcessEnv, Source,
    tls::{invalid, read},
};

/// How long a client may take over its TLS handshake on the REST port.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl ServerTls {
    /// For tonic's server.
    pub fn tonic(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(Identity::from_pem(self.cert(), self.key()));
        match self.client_ca() {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }

    /// For a rustls acceptor (the REST port): HTTP/2 and HTTP/1.1.
    pub fn rustls(&self) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
        let (certs, key) = self.parsed()?;
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|err| invalid(CERT_FILE, err.to_string()))?
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .map_err(|err| invalid(KEY_FILE, format!("does not match the certificate: {err}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A rustls config whose certificate `resolver` picks per connection (by
/// SNI): HTTP/2, HTTP/1.1, and `acme-tls/1` for ACME's TLS-ALPN-01
/// validation (a resolver answers it with its challenge certificate).
pub fn resolved(resolver: Arc<dyn rustls::server::ResolvesServerCert>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls' default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"acme-tls/1".to_vec()];
    Arc::new(config)
}

/// A channel endpoint for another service: TLS when the URL is `https://`
/// (verified against `CAPSULE_TLS_CA_FILE`, presenting this process's
/// certificate when it has one, for servers that require it).
pub fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    endpoint_from(url, &ProcessEnv)
}

/// A channel to another service (see [`endpoint`]) that connects on first
/// use, reconnects after the service restarts, and traces every call.
pub fn channel(url: &str) -> anyhow::Result<crate::trace::TracedChannel> {
    Ok(crate::trace::traced(
        endpoint(url)?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy(),
    ))
}

pub fn endpoint_from(url: &str, source: &dyn Source) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_owned())?;
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let ca = read(source, CA_FILE)?.ok_or_else(|| {
        invalid(
            CA_FILE,
            format!("is required to call {url}: the CA that signed the services' certificates"),
        )
    })?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let (Some(cert), Some(key)) = (read(source, CERT_FILE)?, read(source, KEY_FILE)?) {
        config = config.identity(Identity::from_pem(cert, key));
    }
    Ok(endpoint.tls_config(config)?)
}

/// A TCP listener whose connections are TLS streams, for `axum::serve`.
/// Handshakes run on tasks of their own, so a slow client never holds up
/// the others.
pub struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (sender, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while !sender.is_closed() {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::debug!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Ok(Err(err)) => tracing::debug!(client = %peer, error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
