//! Apps that serve: where the gateway reaches them, whether they answer,
//! and stopping them gently.
//!
//! A sandboxed app listens on `PORT` inside a network of its own. The
//! runner's [`Forwarder`] listens on a TCP port of the host
//! (`DEPLOY_RUNNER_UPSTREAM_HOST`, loopback by default) and joins each
//! connection to the app through its [`Tunnel`]: a socket opened inside
//! the sandbox's network by a thread of the runner that joined it (a
//! runner with root), or else the sandbox's connector (socat, started in
//! that network namespace and in no other of the sandbox's, listening on
//! a Unix socket in the runner's own directory, which no sandbox sees).
//! That TCP address is the upstream the gateway routes to. Nothing on the way is a path the tenant can write or replace.
//! Sandboxes have no route to the host's loopback, so no tenant reaches
//! another's upstream. Unisolated, the app listens on a free port of the
//! host, which is the upstream itself.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

pub use super::tunnel::{Joined, Tunnel};
use super::{
    host::{children_of, pids},
    sandbox::Sandbox,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream, UnixStream},
    sync::{Notify, watch},
    task::JoinHandle,
};

/// How long one health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How the runner reaches an app.
#[derive(Debug, Clone)]
pub enum Reach {
    /// Into the sandbox's network, across the app's launches.
    Sandbox(Arc<Tunnel>),
    /// Straight to a port of the host (unisolated).
    Port(u16),
}

/// Joins a host TCP port to an app: the upstream the gateway routes to.
pub struct Forwarder {
    addr: SocketAddr,
    task: JoinHandle<()>,
    gate: Arc<Gate>,
}

/// What a forwarder knows of its traffic, and the gate that holds new
/// connections while the app is stopped for idleness (scale to zero).
#[derive(Debug)]
pub struct Gate {
    /// When the gate was made, and the milliseconds after it when the
    /// last connection opened or closed (no lock on a connection's path).
    since: Instant,
    last: AtomicU64,
    /// Connections open now.
    open: AtomicUsize,
    /// Whether the app runs; while not, connections wait for it.
    awake: watch::Sender<bool>,
    /// A connection came while the app was stopped.
    wake: Notify,
    /// How long a held connection waits before it is answered 504.
    hold: Duration,
    /// Connections open at once, at most.
    limit: usize,
}

impl Gate {
    fn touch(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Release);
    }

    /// How long no connection has been open (zero while one is).
    pub fn idle_for(&self) -> Duration {
        if self.open.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Acquire));
        self.since.elapsed().saturating_sub(last)
    }

    /// Whether a connection is open (or held) now.
    pub fn busy(&self) -> bool {
        self.open.load(Ordering::Acquire) > 0
    }

    /// Holds new connections from now on (the app is being stopped).
    pub fn close(&self) {
        self.awake.send_replace(false);
    }

    /// Lets held and new connections through (the app answers again).
    pub fn open(&self) {
        self.awake.send_replace(true);
    }

    /// Whether the app runs now (connections are not held).
    pub fn awake(&self) -> bool {
        *self.awake.borrow()
    }

    /// Counts a connection as open until the answer is dropped; `None`
    /// when the app has as many open as it may.
    pub fn enter(self: &Arc<Self>) -> Option<Entered> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.touch();
        Some(Entered(self.clone()))
    }

    /// Resolves when a connection waits for the stopped app.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Waits until the app runs: false when it did not within the hold.
    async fn through(&self) -> bool {
        let mut awake = self.awake.subscribe();
        if *awake.borrow_and_update() {
            return true;
        }
        self.wake.notify_one();
        matches!(
            tokio::time::timeout(self.hold, awake.wait_for(|awake| *awake)).await,
            Ok(Ok(_))
        )
    }
}

/// A connection open through a gate.
#[derive(Debug)]
pub struct Entered(Arc<Gate>);

impl Drop for Entered {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// What a request held longer than the app took to start is answered.
const NOT_STARTED: &str = "The app did not start in time after being idle.\n";

/// What a connection beyond an app's limit is answered.
const TOO_MANY: &str = "The app has as many connections open as it may; try again in a moment.\n";

/// Answers a connection the app will not see, and closes it.
async fn answer(mut client: TcpStream, code: u16, reason: &str, text: &str) {
    let answer = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = client.write_all(answer.as_bytes()).await;
    let _ = client.shutdown().await;
}

impl Forwarder {
    /// Listens on `host`, on a free port, for `reach`; a connection that
    /// comes while the app is stopped waits up to `hold` for it; one
    /// beyond `limit` open at once is answered 503 (each costs the runner
    /// its copy buffers).
    pub async fn start(host: IpAddr, reach: Reach, hold: Duration, limit: usize) -> std::io::Result<Self> {
        let listener = TcpListener::bind((host, 0)).await?;
        let addr = listener.local_addr()?;
        let gate = Arc::new(Gate {
            since: Instant::now(),
            last: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            awake: watch::Sender::new(true),
            wake: Notify::new(),
            hold,
            limit,
        });
        let through = gate.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (reach, gate) = (reach.clone(), through.clone());
                let Some(entered) = gate.enter() else {
                    tokio::spawn(answer(client, 503, "Service Unavailable", TOO_MANY));
                    continue;
                };
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    if gate.through().await {
                        join(&mut client, &reach).await;
                    } else {
                        answer(client, 504, "Gateway Timeout", NOT_STARTED).await;
                    }
                    drop(entered);
                });
            }
        });
        Ok(Self { addr, task, gate })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
}

/// Bytes read at once each way: a 64 KiB answer crosses in one read
/// and one write, not eight.
const COPY_BUFFER: usize = 64 * 1024;

async fn copy(client: &mut TcpStream, app: &mut (impl AsyncRead + AsyncWrite + Unpin)) -> std::io::Result<(u64, u64)> {
    tokio::io::copy_bidirectional_with_sizes(client, app, COPY_BUFFER, COPY_BUFFER).await
}

/// Joins a client's connection to the app until either side closes.
async fn join(client: &mut TcpStream, reach: &Reach) {
    match reach {
        Reach::Sandbox(tunnel) => match tunnel.dialer() {
            Some(dialer) => {
                let app = dialer.connect().await;
                // A launch's dialer (and its thread in that sandbox) is not
                // kept alive by the connections it opened.
                drop(dialer);
                if let Ok(mut app) = app {
                    let _ = copy(client, &mut app).await;
                }
            }
            None => {
                if let Ok(mut app) = UnixStream::connect(&tunnel.socket).await {
                    let _ = copy(client, &mut app).await;
                }
            }
        },
        Reach::Port(port) => {
            if let Ok(mut app) = TcpStream::connect(("127.0.0.1", *port)).await {
                let _ = copy(client, &mut app).await;
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A launch's way in, held for as long as it runs.
#[derive(Debug)]
pub enum Connected {
    /// The tunnel dials into this launch's sandbox.
    Joined(Joined),
    /// The socat connector (killed on drop).
    Connector(tokio::process::Child),
}

/// Opens the tunnel into the sandboxed app whose bwrap is `bwrap` (or
/// starts its connector), as soon as its sandbox exists (a few
/// milliseconds after the start); `None` when it cannot, and the app then
/// never answers its health check.
pub async fn connect(sandbox: &Sandbox, bwrap: i32, tunnel: &Arc<Tunnel>, port: u16) -> Option<Connected> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let attempt = if Tunnel::joins() {
            tunnel.join(bwrap, port).map(|joined| joined.map(Connected::Joined))
        } else {
            sandbox
                .connector(bwrap, &tunnel.socket, port)
                .and_then(|command| command.map(|mut c| c.spawn()).transpose())
                .map(|child| child.map(Connected::Connector))
        };
        match attempt {
            Ok(Some(connected)) => return Some(connected),
            Ok(None) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(10)).await,
            Ok(None) => return None,
            Err(err) => {
                tracing::error!(error = %err, "cannot start the app's connector");
                return None;
            }
        }
    }
}

/// Whether the app answers: with a `path`, a GET of it must answer 2xx or
/// 3xx; without, the app must accept a connection (through the sandbox's
/// forwarder, one that stays open: the forwarder closes it at once when
/// nothing listens on the port).
pub async fn probe(reach: &Reach, path: &str) -> Result<(), String> {
    let probed = tokio::time::timeout(PROBE_TIMEOUT, async {
        match reach {
            Reach::Sandbox(tunnel) => match tunnel.dialer() {
                Some(dialer) => {
                    let stream = dialer.connect().await.map_err(|_| "nothing listens yet".to_owned())?;
                    exchange(stream, path, false).await
                }
                None => {
                    let stream = UnixStream::connect(&tunnel.socket)
                        .await
                        .map_err(|_| "nothing listens yet".to_owned())?;
                    exchange(stream, path, true).await
                }
            },
            Reach::Port(port) => {
                let stream = TcpStream::connect(("127.0.0.1", *port))
                    .await
                    .map_err(|_| "nothing listens yet".to_owned())?;
                exchange(stream, path, false).await
            }
        }
    })
    .await;
    probed.unwrap_or_else(|_| Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())))
}

async fn exchange(mut stream: impl AsyncRead + AsyncWrite + Unpin, path: &str, forwarded: bool) -> Result<(), String> {
    let mut head = [0u8; 64];
    if path.is_empty() {
        if !forwarded {
            return Ok(());
        }
        // Through the forwarder: held open means the app accepted it.
        return match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut head)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Err("nothing listens yet".to_owned()),
            Ok(Ok(_)) | Err(_) => Ok(()),
        };
    }
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: capsule-health-check\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|_| "nothing listens yet".to_owned())?;
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]).await {
            Ok(0) | Err(_) => return Err("nothing listens yet".to_owned()),
            Ok(more) => read += more,
        }
    }
    // "HTTP/1.1 200"
    let status = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(format!("GET {path} answered {code}")),
        None => Err(format!("GET {path} did not answer HTTP")),
    }
}

/// Sends `signal` to every process in a sandbox's pid namespace (bwrap's
/// own pid given): the app and all it started, not the sandbox's init,
/// whose exit would kill them at once.
pub fn signal_sandbox(bwrap: i32, signal: Signal) {
    // No process (a pid never known is 0): the children of 0 are the
    // host's init and kthreadd, and their namespace is the host's.
    if bwrap <= 0 {
        return;
    }
    let Some(init) = children_of(bwrap).into_iter().next() else {
        return;
    };
    let Ok(namespace) = std::fs::read_link(format!("/proc/{init}/ns/pid")) else {
        return;
    };
    for pid in pids() {
        if pid != init && std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|ns| ns == namespace) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
    }
}

/// The runner's own directory of connector sockets, beside the working
/// directories: only the runner can enter it.
pub fn socket_dir(workdir_root: &Path) -> PathBuf {
    workdir_root.join(".sockets")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past its limit an app's forwarder answers 503 and holds nothing;
    /// a connection that closes makes room again.
    #[tokio::test]
    async fn connections_past_an_apps_limit_are_answered_503() {
        let app = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = app.local_addr().expect("its address").port();
        // The app keeps every connection until its client closes it.
        let held = tokio::spawn(async move {
            while let Ok((mut stream, _)) = app.accept().await {
                tokio::spawn(async move {
                    let mut read = [0u8; 64];
                    while stream.read(&mut read).await.is_ok_and(|n| n > 0) {}
                });
            }
        });
        let forwarder = Forwarder::start(
            IpAddr::from([127, 0, 0, 1]),
            Reach::Port(port),
            Duration::from_secs(1),
            2,
        )
        .await
        .expect("a forwarder");
        let mut open = Vec::new();
        for _ in 0..2 {
            open.push(TcpStream::connect(forwarder.addr()).await.expect("a connection"));
        }
        while forwarder.gate().open.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        let mut third = TcpStream::connect(forwarder.addr()).await.expect("a connection");
        let mut answer = String::new();
        third.read_to_string(&mut answer).await.expect("an answer");
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert_eq!(forwarder.gate().open.load(Ordering::Acquire), 2);

        drop(open.pop());
        while forwarder.gate().open.load(Ordering::Acquire) > 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut fourth = TcpStream::connect(forwarder.addr()).await.expect("a connection");
        // Through to the app: nothing comes back within a moment.
        let mut byte = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), fourth.read(&mut byte))
                .await
                .is_err()
        );
        held.abort();
    }
}
