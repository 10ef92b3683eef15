//! The runner's side of [`capsule::handoff`]: a gateway on the same host
//! asks for a connection to one of this runner's upstreams and gets a
//! socket that ends at the app's port inside its sandbox, opened by the
//! sandbox's [`crate::tunnel::Dialer`]. The gateway then speaks to the
//! app directly: no forwarder copies the bytes, no extra TCP hop.
//!
//! The socket listens at `DEPLOY_RUNNER_HANDOFF_SOCKET`, by default
//! `<workdir>/.sockets/handoff.sock` (beside the connectors' sockets) in the runner's own
//! directory (mode 0700, which no sandbox sees); it is mode 0600 and
//! answers only a process of the runner's user or root. Only a
//! runner that joins sandboxes (root) listens; otherwise, and whenever
//! the app is stopped (the forwarder holds connections while it wakes
//! it), the answer is to dial the forwarder's address as before.
//!
//! A handed connection counts as open on the app's gate (its idle clock)
//! until the gateway closes the Unix stream it came on.

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use capsule::handoff::{Answer, MAX_REQUEST, send, trusted_peer};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::{host, serve::Gate, tunnel::Tunnel};

/// How long a gateway may take to name the upstream it wants.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The upstreams this runner can hand connections to.
#[derive(Debug, Default)]
pub struct Handoff {
    routes: Mutex<HashMap<SocketAddr, Route>>,
}

#[derive(Debug, Clone)]
struct Route {
    tunnel: Arc<Tunnel>,
    gate: Arc<Gate>,
}

/// While held, connections to `upstream` may be handed over.
#[derive(Debug)]
pub struct Registration {
    handoff: Arc<Handoff>,
    upstream: SocketAddr,
    gate: Arc<Gate>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Its own route only: the address may serve a later app by now.
        if let Ok(mut routes) = self.handoff.routes.lock()
            && routes
                .get(&self.upstream)
                .is_some_and(|route| Arc::ptr_eq(&route.gate, &self.gate))
        {
            routes.remove(&self.upstream);
        }
    }
}

impl Handoff {
    /// Connections to the forwarder at `upstream` may be handed over,
    /// through `tunnel`, counted on `gate`, while the answer is held.
    pub fn register(self: &Arc<Self>, upstream: SocketAddr, tunnel: Arc<Tunnel>, gate: Arc<Gate>) -> Registration {
        if let Ok(mut routes) = self.routes.lock() {
            routes.insert(
                upstream,
                Route {
                    tunnel,
                    gate: gate.clone(),
                },
            );
        }
        Registration {
            handoff: self.clone(),
            upstream,
            gate,
        }
    }

    /// Answers gateways at `path` until `shutdown`.
    pub async fn listen(self: Arc<Self>, path: PathBuf, shutdown: CancellationToken) {
        let (listener, bound) = match bind(&path).await {
            Ok(bound) => bound,
            Err(err) => {
                tracing::warn!(error = %err, path = %path.display(), "no handoff socket: the gateway reaches apps through the forwarders");
                return;
            }
        };
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(self.clone().answer(stream));
                }
                // Out of descriptors, for one: a moment's pause.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        // Only the socket this runner bound: another may have taken the
        // path since.
        if std::fs::symlink_metadata(&path).is_ok_and(|metadata| {
            use std::os::unix::fs::MetadataExt;
            (metadata.dev(), metadata.ino()) == bound
        }) {
            let _ = std::fs::remove_file(&path);
        }
    }

    async fn answer(self: Arc<Self>, stream: UnixStream) {
        if !trusted_peer(&stream) {
            return;
        }
        let Ok(Some(upstream)) = tokio::time::timeout(REQUEST_TIMEOUT, request(&stream)).await else {
            return;
        };
        let route = self
            .routes
            .lock()
            .ok()
            .and_then(|routes| routes.get(&upstream).cloned());
        let Some(route) = route else {
            let _ = send(&stream, Answer::Dial, None).await;
            return;
        };
        // Counted first: the idle stop cannot start between the check and
        // the connection. A stopped app is woken by its forwarder, which
        // holds the connection meanwhile.
        // Past the app's limit, the forwarder answers 503.
        let Some(_open) = route.gate.enter() else {
            let _ = send(&stream, Answer::Dial, None).await;
            return;
        };
        let Some(dialer) = route.tunnel.dialer().filter(|_| route.gate.awake()) else {
            let _ = send(&stream, Answer::Dial, None).await;
            return;
        };
        // A gateway that gave up holds nothing here: the dial is dropped
        // with its request (the dialer skips a request nobody awaits).
        let app = tokio::select! {
            app = dialer.open() => app,
            () = closed(&stream) => return,
        };
        drop(dialer);
        match app {
            Ok(app) => {
                if send(&stream, Answer::Handed, Some(app.as_fd())).await.is_ok() {
                    drop(app);
                    closed(&stream).await;
                }
            }
            Err(_) => {
                let _ = send(&stream, Answer::Refused, None).await;
            }
        }
    }
}

/// Binds `path` in a directory only the runner's user may change (made,
/// mode 0700, when it does not exist; refused when another user could
/// replace what is in it). A socket an earlier run left there is
/// replaced, one a live runner answers at is not, nor anything else.
/// Also the socket's device and inode, to remove it at the end.
async fn bind(path: &Path) -> std::io::Result<(UnixListener, (u64, u64))> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let refused = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
    let dir = path
        .parent()
        .ok_or_else(|| refused(format!("{} has no directory", path.display())))?;
    if !dir.exists() {
        host::runner_dir(dir, 0o700)?;
    }
    let metadata = std::fs::metadata(dir)?;
    if metadata.uid() != nix::unistd::geteuid().as_raw() || metadata.mode() & 0o022 != 0 {
        return Err(refused(format!(
            "{} must belong to the runner's user and be writable by no one else",
            dir.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("a runner already answers at {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    // No one else can replace it: the directory is the runner's alone.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let metadata = std::fs::symlink_metadata(path)?;
    Ok((listener, (metadata.dev(), metadata.ino())))
}

/// The upstream a gateway asks for: an address and a newline.
async fn request(stream: &UnixStream) -> Option<SocketAddr> {
    let mut read = [0u8; MAX_REQUEST];
    let mut filled = 0;
    loop {
        stream.readable().await.ok()?;
        match stream.try_read(&mut read[filled..]) {
            Ok(0) => return None,
            Ok(more) => filled += more,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
        if let Some(end) = read[..filled].iter().position(|byte| *byte == b'\n') {
            return std::str::from_utf8(&read[..end]).ok()?.parse().ok();
        }
        if filled == read.len() {
            return None;
        }
    }
}

/// Until the gateway closes its end (it dropped the connection).
async fn closed(stream: &UnixStream) {
    let mut ignored = [0u8; 16];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut ignored) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}
