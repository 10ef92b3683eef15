//! The host's end of a sandbox's outbound traffic: an HTTP proxy on a Unix
//! socket in the runner's own directory. `CONNECT host:port` (every
//! https:// client) opens a tunnel; an absolute-form request
//! (`GET http://host/…`, plain http://) is forwarded as one request with
//! `Connection: close`. Either way the destination is resolved through the
//! kernel's guard and the proxy connects only to the addresses it allowed —
//! so a name re-pointed between the check and the connection reaches
//! nothing new — and every attempt lands in the deployment's record.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use capsule::guard::{Guard, Refused};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UnixListener, UnixStream},
    sync::Semaphore,
    task::JoinHandle,
};
use url::Host;

use super::record::Record;

/// The largest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client has to send its request head, and the proxy to
/// connect onwards.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one sandbox keeps open through the proxy at once.
const MAX_CONNECTIONS: usize = 256;
/// Connections all sandboxes of this runner keep open at once: within
/// what one process may hold open.
static RUNNER_CONNECTIONS: std::sync::LazyLock<Arc<Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(Semaphore::new(4096)));

/// What a proxy lets through beyond the guard; a deployment's changes
/// between its phases (the fetch, the build, the app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Whatever the guard allows.
    Open,
    /// Only `host:port` (a project's repository, fetched while its build
    /// has no egress); the rest is refused, saying `why`.
    Only { host: String, port: u16, why: String },
    /// Nothing, saying `why`.
    Closed(String),
}

impl Policy {
    /// Why `host:port` is refused, if it is.
    fn refuses(&self, host: &str, port: u16) -> Option<&str> {
        match self {
            Self::Open => None,
            Self::Only {
                host: only, port: at, ..
            } if only.eq_ignore_ascii_case(host) && *at == port => None,
            Self::Only { why, .. } | Self::Closed(why) => Some(why),
        }
    }
}

/// A running proxy; dropping it closes the socket and every tunnel.
pub struct Proxy {
    socket: PathBuf,
    record: Arc<Record>,
    policy: Arc<RwLock<Policy>>,
    task: JoinHandle<()>,
    /// The way to the environment's database, when it has one.
    database: Option<super::database::Forwarder>,
}

impl Proxy {
    /// Listens on `socket` (a path in the runner's own directory), which
    /// the sandbox user `owner` may connect to.
    /// With `database`, a second socket beside it leads to that address
    /// alone ([`super::database`]).
    pub fn start(
        socket: &Path,
        owner: Option<u32>,
        guard: Guard,
        policy: Policy,
        database: Option<SocketAddr>,
    ) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        // Connecting takes write permission: the sandbox user's alone.
        std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        if let Some(owner) = owner {
            std::os::unix::fs::chown(socket, Some(owner), Some(owner))?;
        }
        let record = Arc::new(Record::default());
        let policy = Arc::new(RwLock::new(policy));
        let rules = Rules {
            guard,
            policy: policy.clone(),
        };
        let task = tokio::spawn(serve(listener, Arc::new(rules), record.clone()));
        let database = database
            .map(|address| super::database::Forwarder::start(&socket.with_extension("db.sock"), owner, address))
            .transpose()?;
        Ok(Self {
            socket: socket.to_path_buf(),
            record,
            policy,
            task,
            database,
        })
    }

    /// From now on, `policy` (connections already open stay).
    pub fn set_policy(&self, policy: Policy) {
        if let Ok(mut now) = self.policy.write() {
            *now = policy;
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The database forwarder's socket, when there is one.
    pub fn database_socket(&self) -> Option<&Path> {
        self.database.as_ref().map(super::database::Forwarder::socket)
    }

    /// What went out so far.
    pub fn record(&self) -> &Record {
        &self.record
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// What decides where a sandbox may go.
struct Rules {
    guard: Guard,
    policy: Arc<RwLock<Policy>>,
}

async fn serve(listener: UnixListener, rules: Arc<Rules>, record: Arc<Record>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tunnels = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (Ok(slot), Ok(shared)) = (
            slots.clone().try_acquire_owned(),
            RUNNER_CONNECTIONS.clone().try_acquire_owned(),
        ) else {
            drop(client);
            continue;
        };
        let (rules, record) = (rules.clone(), record.clone());
        tunnels.spawn(async move {
            let _slots = (slot, shared);
            if let Err(err) = handle(client, &rules, &record).await {
                tracing::debug!(error = %err, "egress connection ended");
            }
        });
        while tunnels.try_join_next().is_some() {}
    }
}

/// What a request asks for.
struct Ask {
    host: String,
    port: u16,
    /// `None` for CONNECT; the head to send onwards otherwise.
    forward: Option<Vec<u8>>,
}

async fn handle(mut client: UnixStream, rules: &Rules, record: &Record) -> std::io::Result<()> {
    let (head, rest) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await {
        Ok(Ok(Some(read))) => read,
        Ok(Ok(None)) => return answer(&mut client, 431, "the request head is too large").await,
        Ok(Err(err)) => return Err(err),
        Err(_) => return Ok(()),
    };
    let ask = match parse(&head) {
        Ok(ask) => ask,
        Err(why) => return answer(&mut client, 400, why).await,
    };
    let refused = rules
        .policy
        .read()
        .map(|policy| policy.refuses(&ask.host, ask.port).map(str::to_owned))
        .unwrap_or_else(|_| Some("is not allowed".to_owned()));
    if let Some(why) = refused {
        record.refused(&ask.host, ask.port, &why);
        let message = format!("capsule egress: {}:{} is refused: it {why}", ask.host, ask.port);
        return answer(&mut client, 403, &message).await;
    }
    let looked_up = tokio::time::timeout(HEAD_TIMEOUT, destination(&rules.guard, &ask.host, ask.port)).await;
    let addresses = match looked_up.unwrap_or_else(|_| Err("could not be resolved in time".to_owned())) {
        Ok(addresses) => addresses,
        Err(why) => {
            record.refused(&ask.host, ask.port, &why);
            let message = format!(
                "capsule egress: {}:{} is refused: it {why}; the operator can allow a network with \
                 DEPLOY_EGRESS_ALLOWED_NETWORKS",
                ask.host, ask.port
            );
            return answer(&mut client, 403, &message).await;
        }
    };
    let Some(mut upstream) = connect(&addresses, ask.port).await else {
        record.failed(&ask.host, ask.port);
        return answer(&mut client, 502, "the destination did not accept the connection").await;
    };
    let mut sent = rest.len();
    match &ask.forward {
        None => client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?,
        Some(head) => {
            upstream.write_all(head).await?;
            sent += head.len();
        }
    }
    upstream.write_all(&rest).await?;
    let opened = record.opened(&ask.host, ask.port, sent as u64);
    let (out, back) = super::tunnel::relay(client, upstream, super::tunnel::IDLE).await;
    opened.closed(out, back);
    Ok(())
}

/// The request head (through the blank line) and what came after it;
/// `None` when the head does not fit.
async fn read_head(client: &mut UnixStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buffer.split_off(end + 4);
            return Ok(Some((buffer, rest)));
        }
        if buffer.len() > MAX_HEAD {
            return Ok(None);
        }
        let read = client.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

fn parse(head: &[u8]) -> Result<Ask, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("not an HTTP request"),
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Err("not an HTTP request");
    };
    if method == "CONNECT" {
        let (host, port) = split_authority(target).ok_or("CONNECT names host:port")?;
        return Ok(Ask {
            host,
            port,
            forward: None,
        });
    }
    // A plain http:// request, in absolute form.
    let url = url::Url::parse(target).map_err(|_| "a proxied request names an absolute http:// URL")?;
    if url.scheme() != "http" {
        return Err("only http:// is forwarded as a request; https:// goes through CONNECT");
    }
    let host = url.host_str().ok_or("the URL names no host")?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if !plain_host(host) {
        return Err("the URL names no host");
    }
    let host = host.to_ascii_lowercase();
    let port = url.port_or_known_default().unwrap_or(80);
    let mut path = url.path().to_owned();
    if let Some(query) = url.query() {
        path.push('?');
        path.push_str(query);
    }
    let mut forward = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    for header in request.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        if matches!(
            name.as_str(),
            "connection" | "proxy-connection" | "proxy-authorization" | "keep-alive"
        ) {
            continue;
        }
        forward.extend_from_slice(header.name.as_bytes());
        forward.extend_from_slice(b": ");
        forward.extend_from_slice(header.value);
        forward.extend_from_slice(b"\r\n");
    }
    forward.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Ask {
        host,
        port,
        forward: Some(forward),
    })
}

/// `host:port`, `[v6]:port`.
fn split_authority(authority: &str) -> Option<(String, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    plain_host(host).then(|| (host.to_ascii_lowercase(), port))
}

/// A DNS name (at most 253 characters of letters, digits, `-`, `.`) or an
/// IP address: nothing else is resolved, recorded or logged.
fn plain_host(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
        || (!host.is_empty()
            && host.len() <= 253
            && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
}

/// The addresses the guard allows for `host`, or why not.
async fn destination(guard: &Guard, host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    let parsed = match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Host::Ipv4(ip),
        Ok(IpAddr::V6(ip)) => Host::Ipv6(ip),
        Err(_) => Host::Domain(host),
    };
    if port == 0 {
        return Err("names port 0".to_owned());
    }
    let addresses = guard.resolve(&parsed, port).await.map_err(|refused| match refused {
        Refused::Internal(why) => format!("points at {why}"),
        other => other.to_string(),
    })?;
    not_this_host(addresses, &own_addresses(), guard)
}

/// The addresses of this host's own interfaces: public or not, a service
/// listening on every address answers there.
pub fn own_addresses() -> Vec<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .map(|interfaces| {
            interfaces
                .filter_map(|interface| {
                    let address = interface.address?;
                    address
                        .as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `addresses`, unless one is this host's own (and the operator did not
/// allow it by name): the control plane listens there.
pub fn not_this_host(addresses: Vec<IpAddr>, own: &[IpAddr], guard: &Guard) -> Result<Vec<IpAddr>, String> {
    let own = |ip: IpAddr| own.iter().any(|mine| Guard::real(*mine) == Guard::real(ip));
    match addresses.iter().find(|ip| own(**ip) && !guard.allows(**ip)) {
        Some(ip) => Err(format!("points at this runner's own address ({ip})")),
        None => Ok(addresses),
    }
}

/// The first of `addresses` that accepts, within the time limit.
async fn connect(addresses: &[IpAddr], port: u16) -> Option<TcpStream> {
    for ip in addresses {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(SocketAddr::new(*ip, port)));
        if let Ok(Ok(stream)) = attempt.await {
            let _ = stream.set_nodelay(true);
            return Some(stream);
        }
    }
    None
}

async fn answer(client: &mut UnixStream, code: u16, message: &str) -> std::io::Result<()> {
    let reason = match code {
        400 => "Bad Request",
        403 => "Forbidden",
        431 => "Request Header Fields Too Large",
        _ => "Bad Gateway",
    };
    let body = format!("{message}\n");
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_as_destinations() {
        let connect =
            parse(b"CONNECT registry.npmjs.org:443 HTTP/1.1\r\nHost: registry.npmjs.org:443\r\n\r\n").unwrap();
        assert_eq!((connect.host.as_str(), connect.port), ("registry.npmjs.org", 443));
        assert!(connect.forward.is_none());
        let v6 = parse(b"CONNECT [::1]:5432 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 5432));
        let plain = parse(
            b"GET http://example.org:8080/a?b=c HTTP/1.1\r\nHost: example.org\r\nProxy-Connection: keep-alive\r\n\r\n",
        )
        .unwrap();
        assert_eq!((plain.host.as_str(), plain.port), ("example.org", 8080));
        let forwarded = String::from_utf8(plain.forward.unwrap()).unwrap();
        assert!(forwarded.starts_with("GET /a?b=c HTTP/1.1\r\n"), "{forwarded}");
        assert!(
            !forwarded.to_ascii_lowercase().contains("proxy-connection"),
            "{forwarded}"
        );
        assert!(forwarded.ends_with("Connection: close\r\n\r\n"), "{forwarded}");
        assert!(parse(b"GET /relative HTTP/1.1\r\n\r\n").is_err());
        assert!(parse(b"CONNECT nowhere HTTP/1.1\r\n\r\n").is_err());
        assert!(parse(b"GET https://example.org/ HTTP/1.1\r\n\r\n").is_err());
        let junk = format!("CONNECT {}:1 HTTP/1.1\r\n\r\n", "x".repeat(300));
        assert!(parse(junk.as_bytes()).is_err(), "no name of 300 characters");
        assert!(parse(b"CONNECT a%20b:1 HTTP/1.1\r\n\r\n").is_err());
        let v6 = parse(b"GET http://[::1]:8080/ HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(v6.host, "::1");
    }

    #[tokio::test]
    async fn the_control_planes_addresses_are_refused_by_address_and_by_name() {
        let guard = Guard::default();
        for (host, port) in [
            ("127.0.0.1", 5432),
            ("::1", 50051),
            ("localhost", 8080),
            ("169.254.169.254", 80),
        ] {
            let why = destination(&guard, host, port).await.unwrap_err();
            assert!(why.starts_with("points at"), "{host}: {why}");
        }
        assert!(destination(&guard, "203.0.113.9", 0).await.is_err(), "port 0");
        // The host's own public address is the control plane too.
        let public: IpAddr = "198.51.100.7".parse().unwrap();
        let own = [public];
        let why = not_this_host(vec![public], &own, &guard).unwrap_err();
        assert_eq!(why, "points at this runner's own address (198.51.100.7)");
        // Nor through an IPv6 address that carries it.
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert!(
            not_this_host(vec![mapped], &own, &guard).is_err(),
            "{mapped} is this host"
        );
        let allowed = Guard::new(vec!["198.51.100.7/32".parse().unwrap()]);
        assert_eq!(not_this_host(vec![public], &own, &allowed).unwrap(), vec![public]);
        assert!(
            own_addresses().contains(&"127.0.0.1".parse().unwrap()),
            "loopback is listed"
        );
        let allowing = Guard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            destination(&allowing, "127.0.0.1", 5432).await.unwrap(),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
    }
}
