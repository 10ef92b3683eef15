//! Users' apps through the gateway's HTTP port: a request whose Host is
//! `<label>.<GATEWAY_APPS_DOMAIN>` goes to the live deployment of that
//! host, apart from the API bridge in `transcode/`.
//!
//! The route table is data the deploy service publishes
//! (`DeployService/WatchRoutes`, a stream of whole tables); [`routes`]
//! follows it and swaps the table at once, so a switch to a new deployment
//! is atomic for every request after it. [`proxy`] forwards with hyper's
//! client (HTTP/2 to a copy that speaks it, which [`Apps::speaks_h2`]
//! finds once; an HTTP/1.1 client's requests over a connection of its own
//! to the app, [`pair`]): streaming bodies both ways, WebSocket upgrades, the
//! `X-Forwarded-*` headers; 502 when nothing is live, 504 when the app
//! takes too long.

mod client;
pub mod domains;
pub mod pair;
pub mod proxy;
pub mod routes;
pub mod sni;

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use capsule::config::{ConfigError, Source, positive};

/// How long a client connection may wait for its next request head
/// (`GATEWAY_IDLE_TIMEOUT_SECS`'s default; also the API's when no app is
/// served).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of app serving.
///
/// | variable | default |
/// |---|---|
/// | `GATEWAY_APPS_DOMAIN` | `localhost`: apps answer at `<label>.localhost` (browsers resolve it with no DNS setup) |
/// | `GATEWAY_APPS_TIMEOUT_SECS` | `60`: an app that sends no response head within this is 504 |
/// | `GATEWAY_IDLE_TIMEOUT_SECS` | `30`: an HTTP/1.1 client connection that sends no whole request head within this (idle between requests included) is closed, with the connection to an app it held |
/// | `CAPSULE_INTERNAL_SECRET` | the service credential the route table is read with; unset, no app is served |
/// | `GATEWAY_APPS_HTTPS_ADDR` | unset: where apps are served over TLS, each custom domain with its own certificate (by SNI), anything else with the gateway's (`CAPSULE_TLS_*`); TLS-ALPN-01 challenges are answered here, so it is port 443 in production |
/// | `GATEWAY_APPS_HTTPS_PORT` | the port of `GATEWAY_APPS_HTTPS_ADDR`: the port clients reach it at, where plain HTTP requests for custom domains are redirected |
/// | `GATEWAY_APPS_HANDOFF_SOCKET` | unset: the handoff socket of a runner on this host (`<its DEPLOY_RUNNER_WORKDIR>/.sockets/handoff.sock`; `capsule dev` sets it), asked for each new connection to one of its apps: the runner hands over a socket that ends at the app, and no process copies the traffic between; the gateway must run as the runner's user or root. Unset, or for another runner's upstream, the gateway dials the upstream's address |
#[derive(Debug, Clone)]
pub struct AppsConfig {
    pub domain: String,
    pub timeout: Duration,
    /// How long an HTTP/1.1 client connection may wait for its next
    /// request head.
    pub idle: Duration,
    pub internal_secret: Option<String>,
    pub https_addr: Option<SocketAddr>,
    pub https_port: Option<u16>,
    pub handoff: Option<std::path::PathBuf>,
}

impl AppsConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let domain = source
            .get("GATEWAY_APPS_DOMAIN")
            .unwrap_or_else(|| "localhost".to_owned())
            .trim()
            .trim_matches('.')
            .to_ascii_lowercase();
        if domain.is_empty()
            || !domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(ConfigError {
                variable: "GATEWAY_APPS_DOMAIN".to_owned(),
                value: format!("{domain:?}"),
                reason: "expected a domain such as apps.example.com".to_owned(),
            });
        }
        let https_addr: Option<SocketAddr> = match source.get("GATEWAY_APPS_HTTPS_ADDR") {
            None => None,
            Some(raw) => Some(raw.trim().parse().map_err(|_| {
                ConfigError::invalid(
                    "GATEWAY_APPS_HTTPS_ADDR",
                    &raw,
                    "expected an address such as 0.0.0.0:443",
                )
            })?),
        };
        let https_port = match source.get("GATEWAY_APPS_HTTPS_PORT") {
            None => https_addr.map(|addr| addr.port()),
            Some(_) => Some(positive(source, "GATEWAY_APPS_HTTPS_PORT", 443u16)?),
        };
        Ok(Self {
            domain,
            timeout: Duration::from_secs(positive(source, "GATEWAY_APPS_TIMEOUT_SECS", 60)?),
            idle: Duration::from_secs(positive(source, "GATEWAY_IDLE_TIMEOUT_SECS", IDLE_TIMEOUT.as_secs())?),
            internal_secret: source.get("CAPSULE_INTERNAL_SECRET"),
            https_addr,
            https_port,
            handoff: source
                .get("GATEWAY_APPS_HANDOFF_SOCKET")
                .map(|path| std::path::PathBuf::from(path.trim())),
        })
    }
}

/// Hosts to their apps' copies, swapped whole.
#[derive(Default)]
pub struct Table(std::sync::RwLock<Arc<HashMap<String, Arc<Upstreams>>>>);

impl Table {
    pub fn get(&self, host: &str) -> Option<Arc<Upstreams>> {
        self.0.read().ok()?.get(host).cloned()
    }

    /// The new table; a host whose copies did not change keeps what was
    /// learnt of them (which refused connections).
    pub fn replace(&self, routes: HashMap<String, Vec<SocketAddr>>) {
        let Ok(mut table) = self.0.write() else { return };
        let routes = routes
            .into_iter()
            .map(|(host, addrs)| {
                let kept = table.get(&host).filter(|old| old.addrs == addrs).cloned();
                let upstreams = kept.unwrap_or_else(|| Arc::new(Upstreams::new(addrs)));
                (host, upstreams)
            })
            .collect();
        *table = Arc::new(routes);
    }
}

/// How long a copy that refused a connection is passed over.
const REFUSED_FOR: Duration = Duration::from_secs(5);

/// The copies of one app: taken in turn (round robin — the copies are
/// alike, started from one release with one share of the host, so turns
/// spread the load evenly without counting connections), passing over
/// one that refused a connection lately.
#[derive(Debug)]
pub struct Upstreams {
    addrs: Vec<SocketAddr>,
    next: std::sync::atomic::AtomicUsize,
    /// Until when each copy is passed over.
    refused: std::sync::Mutex<Vec<Option<std::time::Instant>>>,
    /// What each copy speaks: not known yet, HTTP/1.1 or HTTP/2.
    protocols: Vec<std::sync::atomic::AtomicU8>,
}

const H1: u8 = 1;
const H2: u8 = 2;

impl Upstreams {
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        let refused = std::sync::Mutex::new(vec![None; addrs.len()]);
        let protocols = addrs.iter().map(|_| std::sync::atomic::AtomicU8::new(0)).collect();
        Self {
            addrs,
            next: std::sync::atomic::AtomicUsize::new(0),
            refused,
            protocols,
        }
    }

    /// How many copies there are.
    pub fn count(&self) -> usize {
        self.addrs.len()
    }

    /// The next copy to send to, other than those `tried`: one that has
    /// not refused lately when there is one.
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::Instant::now();
        let refused = self.refused.lock().ok()?;
        let candidates = (0..self.addrs.len())
            .map(|offset| (start + offset) % self.addrs.len())
            .filter(|index| !tried.contains(&self.addrs[*index]));
        let mut fallback = None;
        for index in candidates {
            match refused.get(index).copied().flatten() {
                Some(until) if until > now => fallback = fallback.or(Some(self.addrs[index])),
                _ => return Some(self.addrs[index]),
            }
        }
        fallback
    }

    /// Whether `addr` is one of the copies and has not refused a
    /// connection lately.
    pub fn live(&self, addr: SocketAddr) -> bool {
        let Some(index) = self.addrs.iter().position(|a| *a == addr) else {
            return false;
        };
        let now = std::time::Instant::now();
        self.refused
            .lock()
            .is_ok_and(|refused| refused[index].is_none_or(|until| until <= now))
    }

    /// `addr` refused a connection: passed over for a while.
    pub fn refused(&self, addr: SocketAddr) {
        if let (Some(index), Ok(mut refused)) = (self.addrs.iter().position(|a| *a == addr), self.refused.lock()) {
            refused[index] = Some(std::time::Instant::now() + REFUSED_FOR);
        }
    }
}

/// What serving apps needs: the domain, the table, the client.
pub struct Apps {
    pub config: AppsConfig,
    /// Load balancers (`GATEWAY_TRUSTED_PROXIES`) whose `X-Forwarded-For`
    /// and `X-Forwarded-Proto` apps are told; anyone else's are dropped.
    pub trusted_proxies: Vec<capsule::client::IpNet>,
    /// The gateway's HTTP port serves TLS: apps are told the client used
    /// https.
    pub https: bool,
    pub table: Table,
    /// Custom domains and open challenges, swapped whole.
    domains: std::sync::RwLock<Arc<domains::Domains>>,
    client: client::Client,
    /// HTTP/2 to the apps that speak it.
    h2: client::Client,
    connector: client::Connector,
}

impl Apps {
    pub fn new(config: AppsConfig, trusted_proxies: Vec<capsule::client::IpNet>, https: bool) -> Arc<Self> {
        let (client, h2, connector) = client::clients(config.handoff.clone());
        Arc::new(Self {
            config,
            trusted_proxies,
            https,
            table: Table::default(),
            domains: std::sync::RwLock::default(),
            client,
            h2,
            connector,
        })
    }

    /// Whether the copy at `addr` of `copies` speaks HTTP/2, found once.
    pub async fn speaks_h2(&self, copies: &Upstreams, addr: SocketAddr) -> bool {
        use std::sync::atomic::Ordering;
        let Some(index) = copies.addrs.iter().position(|a| *a == addr) else {
            return false;
        };
        match copies.protocols[index].load(Ordering::Acquire) {
            H1 => false,
            H2 => true,
            _ => {
                let h2 = client::speaks_h2(&self.connector, addr).await;
                copies.protocols[index].store(if h2 { H2 } else { H1 }, Ordering::Release);
                h2
            }
        }
    }

    /// Custom domains and open challenges as they are now.
    pub fn domains(&self) -> Arc<domains::Domains> {
        self.domains.read().map(|domains| domains.clone()).unwrap_or_default()
    }

    pub fn set_domains(&self, domains: domains::Domains) {
        if let Ok(mut held) = self.domains.write() {
            *held = Arc::new(domains);
        }
    }

    /// The app host a request's Host names: `<host>` of
    /// `<host>.<domain>[:port]`, one label deep.
    pub fn host_of<'a>(&self, host_header: &'a str) -> Option<&'a str> {
        let name = host_header.rsplit_once(':').map_or(host_header, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host_header
            }
        });
        let label = name.strip_suffix(self.config.domain.as_str())?.strip_suffix('.')?;
        (!label.is_empty() && !label.contains('.')).then_some(label)
    }
}
