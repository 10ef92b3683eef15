//! The gateway's HTTP front door: accepts connections on a listener
//! (plain, TLS, or the apps' HTTPS port), serves HTTP/1.1 and HTTP/2 on
//! each with hyper, and sends each request either to a user's app — a
//! request whose Host is an app's or a custom domain's, before anything
//! of the API is looked at — or to the API's router.
//!
//! Each client connection is one task. An HTTP/1.1 client's requests to an
//! app go over a connection to the app that this task holds and drives
//! itself ([`crate::apps::pair`]): the proxy's request and answer never
//! cross to another task.

use std::{convert::Infallible, future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{Request, Response},
};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::apps::{Apps, pair::Pair, proxy};

/// What a listener serves.
#[derive(Clone)]
pub struct Front {
    pub router: Router,
    pub apps: Option<Arc<Apps>>,
    /// The listener is the apps' HTTPS port: apps are told the client
    /// used https.
    pub via_tls: bool,
}

/// Serves `listener` until `shutdown`; then lets open requests finish.
pub async fn serve<L>(mut listener: L, front: Front, shutdown: CancellationToken)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let tasks = TaskTracker::new();
    let idle = front
        .apps
        .as_ref()
        .map_or(crate::apps::IDLE_TIMEOUT, |apps| apps.config.idle);
    loop {
        let (io, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let pair = Arc::new(Pair::default());
        let service = Connection {
            front: front.clone(),
            peer,
            pair: pair.clone(),
        };
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            // Extended CONNECT: WebSockets over HTTP/2.
            builder.http2().enable_connect_protocol();
            // A client idle between requests lets go of its connection,
            // and of the one to an app it held: an idle client keeps no
            // app's connection (nor the app awake).
            builder.http1().timer(TokioTimer::new()).header_read_timeout(idle);
            let mut conn = std::pin::pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
            let mut cancelled = std::pin::pin!(shutdown.cancelled());
            let mut closing = false;
            let turns = Arc::new(Turns::default());
            let served = std::future::poll_fn(|cx| {
                turns.run(cx, |cx| {
                    if !closing && cancelled.as_mut().poll(cx).is_ready() {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    let served = conn.as_mut().poll(cx);
                    // The connection to the app this client holds, driven
                    // by the same task.
                    pair.poll(cx);
                    served
                })
            })
            .await;
            if let Err(err) = served {
                tracing::trace!(error = %err, "connection ended");
            }
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

/// How many times one turn of a connection's task polls again for the
/// wake-ups it gave itself, before it lets the other tasks run.
const ROUNDS: usize = 8;

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

/// The turns of a task that drives two connections (the client's and the
/// one it holds to an app): when one wakes the task while it is being
/// polled — the app's answer for the client's request, the client's
/// request for the app — the task polls again in the same turn instead
/// of going to the back of the runtime's queue, behind every other
/// connection, once per hop. Wake-ups from elsewhere (a socket ready) wake
/// the task as usual.
#[derive(Default)]
struct Turns {
    state: std::sync::atomic::AtomicU8,
    task: futures::task::AtomicWaker,
}

impl futures::task::ArcWake for Turns {
    fn wake_by_ref(turns: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if let Err(IDLE) = turns
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            turns.task.wake();
        }
    }
}

impl Turns {
    /// Polls `poll` until it is ready or no longer wakes itself (at most
    /// [`ROUNDS`] times).
    fn run<T>(
        self: &Arc<Self>,
        cx: &mut std::task::Context<'_>,
        mut poll: impl FnMut(&mut std::task::Context<'_>) -> std::task::Poll<T>,
    ) -> std::task::Poll<T> {
        use std::sync::atomic::Ordering;
        self.task.register(cx.waker());
        let waker = futures::task::waker_ref(self);
        let mut own = std::task::Context::from_waker(&waker);
        for _ in 0..ROUNDS {
            self.state.store(POLLING, Ordering::Release);
            if let std::task::Poll::Ready(done) = poll(&mut own) {
                self.state.store(IDLE, Ordering::Release);
                return std::task::Poll::Ready(done);
            }
            if self
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return std::task::Poll::Pending;
            }
        }
        // Still waking itself: another turn, after the others.
        self.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// One client connection's service.
#[derive(Clone)]
struct Connection {
    front: Front,
    peer: SocketAddr,
    pair: Arc<Pair>,
}

impl hyper::service::Service<Request<Incoming>> for Connection {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.answer(request.map(Body::new)).await) })
    }
}

impl Connection {
    async fn answer(self, request: Request<Body>) -> Response<Body> {
        let mut request = match &self.front.apps {
            Some(apps) => {
                // HTTP/2 streams run as tasks of their own: they use the
                // pooled clients.
                let pair = (request.version() <= http::Version::HTTP_11).then_some(&*self.pair);
                match to_app(apps, self.peer, self.front.via_tls, pair, request).await {
                    Ok(response) => return response,
                    Err(request) => request,
                }
            }
            None => request,
        };
        request.extensions_mut().insert(ConnectInfo(self.peer));
        match tower::ServiceExt::oneshot(self.front.router, request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// A request for an app's host (or a custom domain) is answered by the
/// app; any other comes back, for the API.
async fn to_app(
    apps: &Apps,
    client: SocketAddr,
    via_tls: bool,
    pair: Option<&Pair>,
    request: Request<Body>,
) -> Result<Response<Body>, Request<Body>> {
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| request.uri().authority().map(http::uri::Authority::as_str))
        .map(str::to_ascii_lowercase);
    let Some(host) = host else {
        return Err(request);
    };
    let tls = apps.https || via_tls;
    if !tls && let Some(response) = proxy::acme_answer(apps, &host, request.uri()) {
        return Ok(response);
    }
    let name = proxy::name_of(&host);
    if let Some(served) = apps.domains().find(name).cloned() {
        return Ok(proxy::to_domain(apps, &served, &host, client, request, tls, pair).await);
    }
    if let Some(app) = apps.host_of(&host) {
        let app = app.to_owned();
        return Ok(proxy::forward(apps, &app, client, request, tls, pair).await);
    }
    Err(request)
}
