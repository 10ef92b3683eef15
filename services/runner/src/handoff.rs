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
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut routes) = self.handoff.routes.lock() {
            routes.remove(&self.upstream);
        }
    }
}

impl Handoff {
    /// Connections to the forwarder at `upstream` may be handed over,
    /// through `tunnel`, counted on `gate`, while the answer is held.
    pub fn register(self: &Arc<Self>, upstream: SocketAddr, tunnel: Arc<Tunnel>, gate: Arc<Gate>) -> Registration {
        if let Ok(mut routes) = self.routes.lock() {
            routes.insert(upstream, Route { tunnel, gate });
        }
        Registration {
            handoff: self.clone(),
            upstream,
        }
    }

    /// Answers gateways at `path` until `shutdown`.
    pub async fn listen(self: Arc<Self>, path: PathBuf, shutdown: CancellationToken) {
        let listener = match bind(&path) {
            Ok(listener) => listener,
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
        let _ = std::fs::remove_file(&path);
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
        // A stopped app is woken by its forwarder, which holds the
        // connection meanwhile.
        let dialer = route
            .as_ref()
            .filter(|route| route.gate.awake())
            .and_then(|route| route.tunnel.dialer());
        let (Some(route), Some(dialer)) = (route, dialer) else {
            let _ = send(&stream, Answer::Dial, None).await;
            return;
        };
        let _open = route.gate.enter();
        let app = dialer.open().await;
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

/// Binds `path` (its directory made the runner's own, mode 0700, when it
/// does not exist); a socket an earlier run left there is replaced,
/// anything else is not touched.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        host::runner_dir(dir, 0o700)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
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
