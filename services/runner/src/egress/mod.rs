//! Outbound network for sandboxes, behind the guard.
//!
//! A sandbox has a network namespace of its own with nothing in it but
//! loopback: no route, no interface, so no packet of its — TCP, UDP, raw —
//! can leave, whatever it tries. Its one way out is an HTTP proxy of the
//! runner's ([`proxy`]), reached through a Unix socket bind-mounted into
//! the sandbox and a forwarder (socat, inside the sandbox, on
//! `127.0.0.1:3128`) that `HTTP_PROXY`/`HTTPS_PROXY` point every client at:
//! npm, pip, cargo, go and git all honour them. The proxy resolves each
//! destination through the kernel's guard and connects only to the
//! addresses it allowed, and keeps the deployment's egress [`record`],
//! written to the log when the build ends and, for a live app, every five
//! minutes and when it stops.
//!
//! Why a proxy and not a routed network (pasta, slirp4netns) with a
//! filter: with nothing routed, reaching a refused address is impossible
//! rather than filtered, the decision is taken on the very address the
//! proxy connects to, and the record names hosts as the tenant asked for
//! them. What it costs: a client that ignores the proxy variables (plain
//! sockets, UDP, Node's built-in `fetch` unless `NODE_USE_ENV_PROXY=1`) has
//! no network at all.

pub mod database;
pub mod proxy;
pub mod record;
mod tunnel;

use std::path::Path;

use capsule::proto::deploy::v1::DeploymentSnapshot;

pub use proxy::{Policy, Proxy};

/// Where the proxy's socket appears inside the sandbox.
pub const SANDBOX_SOCKET: &str = "/run/capsule/egress.sock";
/// The port of the sandbox's forwarder, on its own loopback.
pub const SANDBOX_PORT: u16 = 3128;

/// The variables that point clients at the proxy (both spellings: curl
/// and git read the lowercase ones, most others either).
pub fn environment() -> Vec<(&'static str, String)> {
    let proxy = format!("http://127.0.0.1:{SANDBOX_PORT}");
    let local = "localhost,127.0.0.1,::1".to_owned();
    vec![
        ("HTTP_PROXY", proxy.clone()),
        ("HTTPS_PROXY", proxy.clone()),
        ("http_proxy", proxy.clone()),
        ("https_proxy", proxy),
        ("NO_PROXY", local.clone()),
        ("no_proxy", local),
    ]
}

/// The certificate authorities the host trusts (its `/etc/ssl`, shown
/// read-only in every sandbox), named for the clients that bring their own
/// bundle — Node, pip and requests, curl, git — so that what the host can
/// verify, a build can too. A project's own variables override these.
pub fn trust() -> Vec<(&'static str, String)> {
    const BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
    if !Path::new(BUNDLE).is_file() {
        return Vec::new();
    }
    [
        "SSL_CERT_FILE",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
        "PIP_CERT",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
    ]
    .into_iter()
    .map(|name| (name, BUNDLE.to_owned()))
    .collect()
}

/// The sandbox's first process: starts the forwarder (and the database's,
/// when its socket is bound in), waits (at most 3 s)
/// until it listens — `127.0.0.1:3128` in LISTEN in the sandbox's own
/// `/proc/net/tcp` — then becomes the user's command, given as `$1` and
/// never spliced into this script.
pub fn launcher(socat: &Path) -> String {
    format!(
        "{socat} -lf /dev/null TCP4-LISTEN:{SANDBOX_PORT},bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:{SANDBOX_SOCKET} &\n\
         {database}\
         i=0\n\
         while [ \"$i\" -lt 300 ] && ! grep -q ' 0100007F:{port:04X} 00000000:0000 0A' /proc/net/tcp; do sleep 0.01; i=$((i+1)); done\n\
         {database_wait}\
         exec /bin/sh -c \"$1\"\n",
        socat = socat.display(),
        port = SANDBOX_PORT,
        database = database::launcher_line(socat),
        database_wait = database::launcher_wait(),
    )
}

/// What the fetch of the project's repository may reach: with egress on
/// for builds, what the build may; with it off, the repository's host and
/// port alone.
pub fn fetch_policy(snapshot: &DeploymentSnapshot) -> Policy {
    if snapshot.build_egress {
        return Policy::Open;
    }
    let repository = url::Url::parse(&snapshot.repository_url).ok();
    let only = repository.as_ref().and_then(|url| {
        let port = url
            .port_or_known_default()
            .or_else(|| (url.scheme() == "ssh").then_some(22))?;
        Some((url.host_str()?.to_ascii_lowercase(), port))
    });
    match only {
        Some((host, port)) => Policy::Only {
            host,
            port,
            why: format!("is not the project's repository, and {}", BUILD_EGRESS_OFF),
        },
        None => build_policy(snapshot),
    }
}

/// What the build and the release command may reach.
pub fn build_policy(snapshot: &DeploymentSnapshot) -> Policy {
    match snapshot.build_egress {
        true => Policy::Open,
        false => Policy::Closed(format!("is not allowed: {BUILD_EGRESS_OFF}")),
    }
}

/// What the running app may reach.
pub fn app_policy(snapshot: &DeploymentSnapshot) -> Policy {
    match snapshot.app_egress {
        true => Policy::Open,
        false => Policy::Closed(
            "is not allowed: egress is off for the project's app (app_egress in its settings)".to_owned(),
        ),
    }
}

const BUILD_EGRESS_OFF: &str = "egress is off for the project's builds (build_egress in its settings)";
