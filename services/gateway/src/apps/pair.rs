//! One connection to an app per client connection: an HTTP/1.1 client's
//! requests to an app go over a connection of their own to one copy,
//! driven by the client connection's task itself (the front polls
//! [`Pair::poll`] each time it wakes). No pool to check out of, no
//! channel or wake-up between tasks: the request, its answer and the
//! answer's body move within one task, as in an event-loop proxy.
//!
//! The held connection closes with the client's, when the app closes it
//! (Node's keep-alive timeout, 5 s by default, ends an idle one), or when
//! a request of the client goes to another copy.

use std::{net::SocketAddr, sync::Mutex, task::Context};

use axum::body::Body;
use hyper::{
    Request, Response,
    body::Incoming,
    client::conn::http1::{self, SendRequest},
};
use hyper_util::rt::TokioIo;

use super::client::{AppStream, Connector};

type Held = std::pin::Pin<Box<http1::Connection<TokioIo<AppStream>, Body>>>;

/// The connection a client connection holds to one copy of an app.
#[derive(Default)]
pub struct Pair(Mutex<Slot>);

#[derive(Default)]
struct Slot {
    /// The copy the held connection ends at.
    upstream: Option<SocketAddr>,
    /// Taken while a request is on it.
    sender: Option<SendRequest<Body>>,
    connection: Option<Held>,
}

/// Why a request did not get an answer.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be opened: the copy refused it or is gone.
    Refused(std::io::Error),
    /// The connection closed before any answer came.
    Closed(hyper::Error),
    /// Anything else (a malformed answer).
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl Failure {
    /// The copy is gone or going: what an idempotent request is sent
    /// again for.
    pub fn gone(&self) -> bool {
        match self {
            Self::Refused(_) | Self::Closed(_) => true,
            Self::Other(_) => false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(err) => write!(f, "no connection to the app: {err}"),
            Self::Closed(err) => write!(f, "the app closed the connection: {err}"),
            Self::Other(err) => write!(f, "{err}"),
        }
    }
}

impl Pair {
    /// Drives the held connection; the client connection's task calls it
    /// every time it is polled.
    pub fn poll(&self, cx: &mut Context<'_>) {
        let Ok(mut slot) = self.0.lock() else { return };
        if let Some(connection) = slot.connection.as_mut()
            && connection.as_mut().poll(cx).is_ready()
        {
            *slot = Slot::default();
        }
    }

    /// The copy the held connection ends at, while it is open.
    pub fn held(&self) -> Option<SocketAddr> {
        let slot = self.0.lock().ok()?;
        slot.connection.as_ref().and(slot.upstream)
    }

    /// Sends `request` to `upstream` on the held connection, or on a new
    /// one when none is held there (which replaces the one held
    /// elsewhere). The answer's head; its body streams on the connection.
    pub async fn send(
        &self,
        connector: &Connector,
        upstream: SocketAddr,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, Failure> {
        let held = match self.take(upstream) {
            Some(mut sender) => ready(&mut sender).await.is_ok().then_some(sender),
            None => None,
        };
        let mut sender = match held {
            Some(sender) => sender,
            // None held there, or it closed while idle (nothing was sent
            // on it): a new one.
            None => {
                let mut fresh = self.open(connector, upstream).await?;
                ready(&mut fresh).await.map_err(Failure::Closed)?;
                fresh
            }
        };
        let answer = sender.send_request(request).await;
        // The client sends its next request only once this answer's body
        // has gone to it: the connection is free for it by then.
        if let Ok(mut slot) = self.0.lock()
            && slot.upstream == Some(upstream)
            && slot.connection.is_some()
        {
            slot.sender = Some(sender);
        }
        answer.map_err(|err| {
            if err.is_canceled() || err.is_incomplete_message() || err.is_closed() {
                Failure::Closed(err)
            } else {
                Failure::Other(err.into())
            }
        })
    }

    /// The held sender for `upstream`, taken while a request is on it.
    fn take(&self, upstream: SocketAddr) -> Option<SendRequest<Body>> {
        let mut slot = self.0.lock().ok()?;
        if slot.upstream != Some(upstream) || slot.connection.is_none() {
            return None;
        }
        slot.sender.take().filter(|sender| !sender.is_closed())
    }

    /// A new connection to `upstream`, held from now on.
    async fn open(&self, connector: &Connector, upstream: SocketAddr) -> Result<SendRequest<Body>, Failure> {
        let io = connector.open(upstream).await.map_err(Failure::Refused)?;
        let (sender, connection) = http1::handshake(io).await.map_err(|err| Failure::Other(err.into()))?;
        if let Ok(mut slot) = self.0.lock() {
            *slot = Slot {
                upstream: Some(upstream),
                sender: None,
                connection: Some(Box::pin(connection)),
            };
        }
        Ok(sender)
    }
}

/// Resolves when `sender`'s connection can take a request.
async fn ready(sender: &mut SendRequest<Body>) -> hyper::Result<()> {
    std::future::poll_fn(|cx| sender.poll_ready(cx)).await
}
