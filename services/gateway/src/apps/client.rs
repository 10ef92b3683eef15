//! The HTTP clients that reach live apps — pooled HTTP/1.1 connections,
//! and HTTP/2 (cleartext, prior knowledge) to an app that speaks it, as
//! [`speaks_h2`] finds once per copy — each connection either handed over
//! by a runner on this host
//! (`GATEWAY_APPS_HANDOFF_SOCKET`, [`capsule::handoff`]: a socket that ends
//! at the app itself, with no process between) or dialled over TCP to the
//! upstream's address (the runner's forwarder).

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use capsule::handoff::{Answer, receive, trusted_peer};
use hyper_util::{
    client::legacy::{
        Client as HyperClient,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpStream, UnixStream},
};

/// How long opening a connection to an app may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a runner on this host may take to hand a connection over
/// before the upstream's address is dialled instead.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(1);

/// Pooled connections to the apps' upstreams.
pub type Client = HyperClient<Connector, Body>;

/// The HTTP/1.1 client, the HTTP/2 one and their connector; `handoff`:
/// the socket of a runner on this host, asked first.
pub fn clients(handoff: Option<PathBuf>) -> (Client, Client, Connector) {
    let connector = Connector {
        handoff: handoff.map(Arc::new),
    };
    let h1 = HyperClient::builder(TokioExecutor::new()).build(connector.clone());
    let h2 = HyperClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector.clone());
    (h1, h2, connector)
}

/// HTTP/2's connection preface and an empty SETTINGS frame (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Whether the app at `upstream` speaks HTTP/2 over cleartext: it answers
/// the preface with a SETTINGS frame (an HTTP/1.1 server answers 400, or
/// closes). One connection, opened and closed for the question.
pub async fn speaks_h2(connector: &Connector, upstream: SocketAddr) -> bool {
    use tokio::io::AsyncReadExt;
    let asked = tokio::time::timeout(Duration::from_secs(2), async {
        let mut stream = connector.open(upstream).await.ok()?.into_inner();
        stream.write_all(PREFACE).await.ok()?;
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).await.ok()?;
        // A frame header: 24-bit length, then the type (4: SETTINGS), on
        // stream 0.
        Some(head[3] == 0x04 && head[5..9] == [0, 0, 0, 0])
    })
    .await;
    matches!(asked, Ok(Some(true)))
}

/// Opens connections to upstreams.
#[derive(Debug, Clone)]
pub struct Connector {
    handoff: Option<Arc<PathBuf>>,
}

/// A connection to an app; a handed one keeps its Unix stream open, which
/// tells the runner when it closes.
#[derive(Debug)]
pub struct AppStream {
    tcp: TcpStream,
    _lease: Option<UnixStream>,
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<AppStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let upstream: SocketAddr = uri
                .authority()
                .and_then(|authority| authority.as_str().parse().ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "an upstream is an address"))?;
            connector.open(upstream).await
        })
    }
}

impl Connector {
    /// A connection to the app at `upstream`: handed over by the runner
    /// on this host when it has it, else dialled.
    pub async fn open(&self, upstream: SocketAddr) -> io::Result<TokioIo<AppStream>> {
        // A runner that does not answer at once is passed over.
        if let Some(path) = &self.handoff
            && let Ok(asked) = tokio::time::timeout(HANDOFF_TIMEOUT, handed(path, upstream)).await
            && let Some(handed) = asked?
        {
            return Ok(TokioIo::new(handed));
        }
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let tcp = TcpStream::connect(upstream).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, io::Error>(AppStream { tcp, _lease: None })
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the app's upstream did not answer"))??;
        Ok(TokioIo::new(opened))
    }
}

/// A connection the runner at `path` hands over for `upstream`; `None`
/// when it does not (no runner there, not its upstream, or the app is
/// stopped): dial the address instead. Refused: the app refused it.
async fn handed(path: &std::path::Path, upstream: SocketAddr) -> io::Result<Option<AppStream>> {
    let Ok(mut lease) = UnixStream::connect(path).await else {
        return Ok(None);
    };
    if !trusted_peer(&lease) || lease.write_all(format!("{upstream}\n").as_bytes()).await.is_err() {
        return Ok(None);
    }
    match receive(&lease).await {
        Ok((Answer::Handed, Some(socket))) => {
            let tcp = std::net::TcpStream::from(socket);
            // A connected TCP socket, or nothing handed at all.
            if tcp.peer_addr().is_err() {
                return Ok(None);
            }
            tcp.set_nonblocking(true)?;
            Ok(Some(AppStream {
                tcp: TcpStream::from_std(tcp)?,
                _lease: Some(lease),
            }))
        }
        Ok((Answer::Refused, _)) => Err(io::ErrorKind::ConnectionRefused.into()),
        _ => Ok(None),
    }
}

impl Connection for AppStream {
    fn connected(&self) -> Connected {
        self.tcp.connected()
    }
}

impl AsyncRead for AppStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for AppStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
