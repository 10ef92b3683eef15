//! The runner's way into a sandboxed app's network: connections opened
//! inside the sandbox's network namespace by a thread of the runner that
//! joined it (`setns`), handed to the runtime as ordinary sockets. No
//! process per connection, no extra hop: the forwarder copies between the
//! client's socket and one that ends at the app's port.
//!
//! Joining a network namespace takes root (the sandbox's user namespace
//! is root's); a runner without root keeps the socat connector, which
//! nsenter starts in the namespace, listening on a Unix socket
//! ([`crate::sandbox::Sandbox::connector`]).
//!
//! The thread joins the network namespace only — not the mount, user or
//! pid namespaces — and does one thing there: connect to 127.0.0.1 on
//! the app's port. It ends when the app's launch ends.

use std::{
    net::{SocketAddr, TcpStream as StdTcpStream},
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{Arc, RwLock, mpsc},
    time::Duration,
};

use tokio::{net::TcpStream, sync::oneshot};

use crate::host::children_of;

/// How long a connection to the app may take to open (loopback: at once,
/// or refused at once).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

type Request = oneshot::Sender<std::io::Result<StdTcpStream>>;

/// Connections that may wait to be opened at once: an app that never
/// accepts holds no more of the runner than this.
const QUEUE: usize = 256;

/// Opens connections to one port inside one network namespace.
#[derive(Debug)]
pub struct Dialer {
    requests: mpsc::SyncSender<Request>,
}

impl Dialer {
    /// A thread joined to `network` that connects to `port` there.
    fn start(network: OwnedFd, port: u16) -> std::io::Result<Self> {
        let (requests, incoming) = mpsc::sync_channel::<Request>(QUEUE);
        let (joined, ready) = mpsc::channel();
        std::thread::Builder::new()
            .name("sandbox-dialer".to_owned())
            .spawn(move || {
                let join = nix::sched::setns(&network, nix::sched::CloneFlags::CLONE_NEWNET);
                drop(network);
                let failed = join.is_err();
                let _ = joined.send(join.map_err(std::io::Error::from));
                if failed {
                    return;
                }
                let app = SocketAddr::from(([127, 0, 0, 1], port));
                while let Ok(reply) = incoming.recv() {
                    // Its client left (a probe timed out): no connection.
                    if reply.is_closed() {
                        continue;
                    }
                    let stream = StdTcpStream::connect_timeout(&app, CONNECT_TIMEOUT).and_then(|stream| {
                        stream.set_nonblocking(true)?;
                        stream.set_nodelay(true)?;
                        Ok(stream)
                    });
                    let _ = reply.send(stream);
                }
            })?;
        ready
            .recv()
            .map_err(|_| std::io::Error::other("the dialer thread ended"))??;
        Ok(Self { requests })
    }

    /// A connection to the app, as a non-blocking socket.
    pub async fn open(&self) -> std::io::Result<StdTcpStream> {
        let (reply, answer) = oneshot::channel();
        self.requests.try_send(reply).map_err(|err| match err {
            mpsc::TrySendError::Full(_) => std::io::Error::other("too many connections wait for the app"),
            mpsc::TrySendError::Disconnected(_) => std::io::Error::other("the app's sandbox is gone"),
        })?;
        answer
            .await
            .map_err(|_| std::io::Error::other("the app's sandbox is gone"))?
    }

    /// A connection to the app, on the runtime.
    pub async fn connect(&self) -> std::io::Result<TcpStream> {
        TcpStream::from_std(self.open().await?)
    }
}

/// How the runner reaches a sandboxed app across its launches: the
/// dialer of the launch running now, or the connector's socket.
#[derive(Debug)]
pub struct Tunnel {
    /// The socat connector's socket (a runner without root).
    pub socket: PathBuf,
    dialer: RwLock<Option<Arc<Dialer>>>,
}

/// While held, the tunnel dials into one launch's sandbox; dropped when
/// the launch ends (clearing its own dialer only, never a later one's).
#[derive(Debug)]
pub struct Joined(Arc<Tunnel>, Arc<Dialer>);

impl Drop for Joined {
    fn drop(&mut self) {
        if let Ok(mut dialer) = self.0.dialer.write()
            && dialer.as_ref().is_some_and(|current| Arc::ptr_eq(current, &self.1))
        {
            *dialer = None;
        }
    }
}

impl Tunnel {
    pub fn new(socket: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            socket,
            dialer: RwLock::new(None),
        })
    }

    /// Whether this runner may join sandboxes' networks itself.
    pub fn joins() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// The dialer of the launch running now, if any.
    pub fn dialer(&self) -> Option<Arc<Dialer>> {
        self.dialer.read().ok()?.clone()
    }

    /// Joins the network of the sandbox whose bwrap is `bwrap`, to dial
    /// `port` there: `Ok(None)` while the sandbox does not exist yet (or
    /// has ended).
    pub fn join(self: &Arc<Self>, bwrap: i32, port: u16) -> std::io::Result<Option<Joined>> {
        // No process (a pid never known is 0): the children of 0 are the
        // host's init and kthreadd, whose network is the host's.
        if bwrap <= 0 {
            return Ok(None);
        }
        let Some(init) = children_of(bwrap).into_iter().next() else {
            return Ok(None);
        };
        let Ok(network) = std::fs::File::open(format!("/proc/{init}/ns/net")).map(OwnedFd::from) else {
            return Ok(None);
        };
        // Opened while `init` was still bwrap's child: the namespace is
        // the sandbox's, whatever the pid means later.
        if !children_of(bwrap).contains(&init) {
            return Ok(None);
        }
        let dialer = Arc::new(Dialer::start(network, port)?);
        *self
            .dialer
            .write()
            .map_err(|_| std::io::Error::other("a poisoned tunnel"))? = Some(dialer.clone());
        Ok(Some(Joined(self.clone(), dialer)))
    }
}
