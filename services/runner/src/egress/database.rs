//! The sandbox's way to its environment's database: a Unix socket of the
//! runner's, bound into the sandbox and reached through a forwarder on the
//! sandbox's `127.0.0.1:5432` (what `DATABASE_URL` names), whose every
//! connection goes to the one address the deploy service named — the apps'
//! PostgreSQL server — and nowhere else, whatever the tenant sends. The
//! server itself then asks for the role's password and lets it into its
//! own database only.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    net::{TcpStream, UnixListener},
    sync::Semaphore,
    task::JoinHandle,
};

/// Where the socket appears inside the sandbox.
pub const SANDBOX_SOCKET: &str = "/run/capsule/database.sock";
/// The port of the sandbox's forwarder, on its own loopback.
pub const SANDBOX_PORT: u16 = 5432;
/// Connections one sandbox keeps open to its database at once (the
/// server's own limit per role is lower, `DEPLOY_APPS_DATABASE_CONNECTIONS`).
const MAX_CONNECTIONS: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a database connection may carry nothing either way.
const IDLE: Duration = Duration::from_secs(3600);

/// A running forwarder; dropping it closes the socket and every
/// connection.
pub struct Forwarder {
    socket: PathBuf,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Listens on `socket`, which the sandbox user `owner` may connect to,
    /// and joins each connection to `address`.
    pub fn start(socket: &Path, owner: Option<u32>, address: SocketAddr) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        if let Some(owner) = owner {
            std::os::unix::fs::chown(socket, Some(owner), Some(owner))?;
        }
        let task = tokio::spawn(serve(listener, address));
        Ok(Self {
            socket: socket.to_path_buf(),
            task,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn serve(listener: UnixListener, address: SocketAddr) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(client);
            continue;
        };
        connections.spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
                Ok(Ok(upstream)) => {
                    let _ = upstream.set_nodelay(true);
                    super::tunnel::relay(client, upstream, IDLE).await;
                }
                Ok(Err(err)) => tracing::debug!(error = %err, "the apps' database server cannot be reached"),
                Err(_) => tracing::debug!("the apps' database server did not answer in time"),
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

/// The launcher's lines that wait (at most 3 s) until the database
/// forwarder listens, when it was started.
pub fn launcher_wait() -> String {
    format!(
        "if [ -S {SANDBOX_SOCKET} ]; then i=0; while [ \"$i\" -lt 300 ] && ! grep -q ' 0100007F:{SANDBOX_PORT:04X} 00000000:0000 0A' /proc/net/tcp; do sleep 0.01; i=$((i+1)); done; fi\n"
    )
}

/// The launcher's line that starts the database forwarder, when the
/// socket is bound in.
pub fn launcher_line(socat: &Path) -> String {
    format!(
        "[ -S {SANDBOX_SOCKET} ] && {socat} -lf /dev/null TCP4-LISTEN:{SANDBOX_PORT},bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:{SANDBOX_SOCKET} &\n",
        socat = socat.display(),
    )
}
