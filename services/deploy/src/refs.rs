//! What a remote repository's branches and tags point at, asked with this
//! service's own HTTP client over git's smart HTTP protocol (the ref
//! advertisement of `GET <url>/info/refs?service=git-upload-pack`): no git
//! process of the control plane ever runs against a tenant's URL. Fetching
//! the commit itself happens in the project's sandbox, on a runner.
//!
//! The client connects only to the addresses the kernel's guard allowed
//! for the URL's host when the call started (pinned, so a name re-pointed
//! meanwhile reaches nothing new), follows no redirect, reads at most
//! [`MAX_ADVERTISEMENT`] and tells a failure in words, never with what
//! the server said. Plain http:// is used only towards networks the
//! operator allows (`DEPLOY_EGRESS_ALLOWED_NETWORKS`): a token is never
//! sent in clear over the internet.

use std::{net::SocketAddr, time::Duration};

use capsule::guard::{Guard, Refused};
use capsule_runner::{
    egress::proxy::{not_this_host, own_addresses},
    remote::Token,
    source::SourceError,
};
use url::{Host, Url};

/// The largest ref advertisement read.
const MAX_ADVERTISEMENT: usize = 8 * 1024 * 1024;
/// Ref advertisements read at once, by all callers together: what they
/// may hold in memory is bounded, whoever asks how often.
static READING: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(16));
/// How long a server may keep the body waiting between two chunks.
const STALL: Duration = Duration::from_secs(10);

/// The commit `reference` names in the repository at `url` now: a full
/// commit id as it is, else the branch, then the tag (an annotated tag's
/// commit), or a full `refs/…` name.
pub async fn resolve(
    url: &Url,
    guard: &Guard,
    credentials: Option<&Token>,
    reference: &str,
    timeout: Duration,
) -> Result<String, SourceError> {
    let client = pinned_client(url, guard, timeout).await?;
    if is_commit_id(reference) {
        return Ok(reference.to_ascii_lowercase());
    }
    let refs = advertised_refs(&client, url, credentials).await?;
    pick(&refs, reference).ok_or_else(|| SourceError::MissingRef {
        reference: reference.to_owned(),
    })
}

/// Whether `reference` is a full commit id (SHA-1 or SHA-256).
pub fn is_commit_id(reference: &str) -> bool {
    matches!(reference.len(), 40 | 64) && reference.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit `reference` names among `refs`, as git's fetch would read it.
fn pick(refs: &[(String, String)], reference: &str) -> Option<String> {
    let candidates = if reference.starts_with("refs/") || reference == "HEAD" {
        vec![reference.to_owned()]
    } else {
        vec![format!("refs/heads/{reference}"), format!("refs/tags/{reference}")]
    };
    let find = |name: &str| refs.iter().find(|(_, n)| n == name).map(|(sha, _)| sha.clone());
    candidates
        .iter()
        .find_map(|name| find(&format!("{name}^{{}}")).or_else(|| find(name)))
}

/// Every (commit, name) the repository advertises.
async fn advertised_refs(
    client: &reqwest::Client,
    url: &Url,
    credentials: Option<&Token>,
) -> Result<Vec<(String, String)>, SourceError> {
    let mut endpoint = url.clone();
    let path = format!("{}/info/refs", endpoint.path().trim_end_matches('/'));
    endpoint.set_path(&path);
    endpoint.set_query(Some("service=git-upload-pack"));
    let _reading = READING
        .acquire()
        .await
        .map_err(|_| SourceError::Unreachable("the service is stopping".to_owned()))?;
    let mut request = client.get(endpoint).header("user-agent", "git/2-capsule");
    if let Some(credentials) = credentials {
        request = request.basic_auth(&credentials.username, Some(&credentials.token));
    }
    let mut response = request.send().await.map_err(|err| unreachable(&err))?;
    let status = response.status();
    if status.is_redirection() {
        return Err(SourceError::Unreachable(
            "the server answered with a redirect: use the URL it redirects to".to_owned(),
        ));
    }
    if matches!(status.as_u16(), 401 | 403) {
        return Err(SourceError::Unreachable(match credentials {
            None => "the server asks for credentials: the repository is private or does not exist (a private \
                     repository over https needs a token in the project's secret variable GIT_TOKEN)"
                .to_owned(),
            Some(_) => "the server refused the token in the project's variable GIT_TOKEN (and GIT_USERNAME, if \
                        set): check that it may read the repository"
                .to_owned(),
        }));
    }
    if status.as_u16() == 404 {
        return Err(SourceError::Unreachable(
            "there is no repository at this URL".to_owned(),
        ));
    }
    let advertisement = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes() == b"application/x-git-upload-pack-advertisement");
    if !status.is_success() || !advertisement {
        return Err(SourceError::Unreachable(
            "the server did not answer as a git repository".to_owned(),
        ));
    }
    let mut body = Vec::new();
    loop {
        let chunk = tokio::time::timeout(STALL, response.chunk())
            .await
            .map_err(|_| SourceError::Unreachable("the server did not answer in time".to_owned()))?
            .map_err(|err| unreachable(&err))?;
        let Some(chunk) = chunk else {
            break;
        };
        if body.len() + chunk.len() > MAX_ADVERTISEMENT {
            return Err(SourceError::Unreachable(format!(
                "the repository advertises more than {} MiB of branches and tags",
                MAX_ADVERTISEMENT / (1024 * 1024)
            )));
        }
        body.extend_from_slice(&chunk);
    }
    parse(&body).ok_or_else(|| SourceError::Unreachable("the server did not answer as a git repository".to_owned()))
}

/// Whether the guard allows `url`'s host now (an ssh:// repository, which
/// only the sandbox connects to).
pub async fn check_address(url: &Url, guard: &Guard) -> Result<(), SourceError> {
    allowed_addresses(url, guard).await.map(|_| ())
}

/// The addresses of `url`'s host the guard allows now, or why none.
async fn allowed_addresses(url: &Url, guard: &Guard) -> Result<Vec<std::net::IpAddr>, SourceError> {
    let host = url
        .host()
        .ok_or_else(|| SourceError::Forbidden("the URL names no host".to_owned()))?;
    let port = url
        .port_or_known_default()
        .unwrap_or(if url.scheme() == "ssh" { 22 } else { 443 });
    let addresses = guard.resolve(&host, port).await.map_err(|refused| {
        SourceError::Forbidden(match refused {
            Refused::Internal(_) => format!(
                "{url} {refused}: repositories are fetched from public addresses only (an operator may allow a \
                 network with DEPLOY_EGRESS_ALLOWED_NETWORKS)"
            ),
            other => format!("{url}: {other}"),
        })
    })?;
    // Public or not, this host's own addresses are the control plane's.
    not_this_host(addresses, &own_addresses(), guard).map_err(|why| {
        SourceError::Forbidden(format!(
            "{url} {why}: repositories are fetched from other hosts only (an operator may allow a network with \
             DEPLOY_EGRESS_ALLOWED_NETWORKS)"
        ))
    })
}

/// A client that reaches `url`'s host only at the addresses the guard
/// allows now; plain http only where the operator allowed every one.
async fn pinned_client(url: &Url, guard: &Guard, timeout: Duration) -> Result<reqwest::Client, SourceError> {
    let addresses = allowed_addresses(url, guard).await?;
    let host = url
        .host()
        .ok_or_else(|| SourceError::Forbidden("the URL names no host".to_owned()))?;
    let port = url.port_or_known_default().unwrap_or(443);
    if url.scheme() == "http" && !addresses.iter().all(|ip| guard.allows(*ip)) {
        return Err(SourceError::Forbidden(
            "http:// repositories are fetched only from networks the operator allows: use the repository's \
             https:// URL"
                .to_owned(),
        ));
    }
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .no_proxy();
    if let Host::Domain(name) = host {
        let pinned: Vec<SocketAddr> = addresses.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
        builder = builder.resolve_to_addrs(name, &pinned);
    }
    builder
        .build()
        .map_err(|err| SourceError::Unreachable(format!("cannot make an HTTP client: {err}")))
}

/// Why a request failed, in words that say nothing of what answered.
fn unreachable(err: &reqwest::Error) -> SourceError {
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(cause) = source {
        chain.push_str(&cause.to_string().to_ascii_lowercase());
        source = cause.source();
    }
    SourceError::Unreachable(
        if err.is_timeout() {
            "the server did not answer in time"
        } else if chain.contains("certificate") || chain.contains("tls") {
            "the server's TLS certificate is not trusted"
        } else if err.is_connect() {
            "cannot connect to the server"
        } else {
            "the server did not answer as a git repository"
        }
        .to_owned(),
    )
}

/// The (commit, name) pairs of a smart HTTP ref advertisement (pkt-lines:
/// four hex digits of length, then the line; `0000` flushes); `None` when
/// it is not one.
fn parse(body: &[u8]) -> Option<Vec<(String, String)>> {
    let mut refs = Vec::new();
    let mut rest = body;
    let mut announced = false;
    while !rest.is_empty() {
        let len = usize::from_str_radix(std::str::from_utf8(rest.get(..4)?).ok()?, 16).ok()?;
        if len == 0 {
            rest = &rest[4..];
            continue;
        }
        let line = rest.get(4..len)?;
        rest = &rest[len..];
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.starts_with(b"# service=") {
            announced = true;
            continue;
        }
        // The first ref carries the capabilities after a NUL.
        let line = line.split(|byte| *byte == 0).next().unwrap_or_default();
        let line = std::str::from_utf8(line).ok()?;
        let (sha, name) = line.split_once(' ')?;
        if !is_commit_id(sha) {
            return None;
        }
        if name != "capabilities^{}" {
            refs.push((sha.to_owned(), name.to_owned()));
        }
    }
    announced.then_some(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(line: &str) -> String {
        format!("{:04x}{line}", line.len() + 4)
    }

    #[test]
    fn an_advertisement_is_read_and_refs_picked_as_git_fetch_would() {
        let (main, tag, peeled) = ("a".repeat(40), "b".repeat(40), "c".repeat(40));
        let body = [
            pkt("# service=git-upload-pack\n"),
            "0000".to_owned(),
            pkt(&format!(
                "{main} HEAD\0multi_ack side-band-64k symref=HEAD:refs/heads/main\n"
            )),
            pkt(&format!("{main} refs/heads/main\n")),
            pkt(&format!("{tag} refs/tags/v1\n")),
            pkt(&format!("{peeled} refs/tags/v1^{{}}\n")),
            "0000".to_owned(),
        ]
        .concat();
        let refs = parse(body.as_bytes()).unwrap();
        assert_eq!(refs.len(), 4);
        assert_eq!(pick(&refs, "main"), Some(main.clone()));
        assert_eq!(pick(&refs, "HEAD"), Some(main.clone()));
        assert_eq!(pick(&refs, "refs/heads/main"), Some(main));
        // An annotated tag names its commit, not itself.
        assert_eq!(pick(&refs, "v1"), Some(peeled));
        assert_eq!(pick(&refs, "nope"), None);
        // An empty repository advertises no ref.
        let empty = [
            pkt("# service=git-upload-pack\n"),
            "0000".to_owned(),
            pkt(&format!("{} capabilities^{{}}\0side-band-64k\n", "0".repeat(40))),
            "0000".to_owned(),
        ]
        .concat();
        assert_eq!(parse(empty.as_bytes()), Some(Vec::new()));
    }

    #[test]
    fn what_is_not_an_advertisement_is_refused() {
        for body in ["<html>hello</html>", "zzzz", "0010short", ""] {
            assert_eq!(parse(body.as_bytes()), None, "{body:?}");
        }
        let no_service = pkt(&format!("{} refs/heads/main\n", "a".repeat(40)));
        assert_eq!(parse(no_service.as_bytes()), None);
    }

    #[tokio::test]
    async fn refused_addresses_and_plain_http_to_the_internet_are_never_asked() {
        let guard = Guard::default();
        for (url, says) in [
            ("https://127.0.0.1:5432/x.git", "public addresses only"),
            ("https://localhost/x.git", "public addresses only"),
            ("https://169.254.169.254/latest", "public addresses only"),
            ("http://93.184.216.34/x.git", "networks the operator allows"),
        ] {
            let url = Url::parse(url).unwrap();
            let err = resolve(&url, &guard, None, "main", Duration::from_secs(1))
                .await
                .unwrap_err();
            assert!(err.to_string().contains(says), "{url}: {err}");
        }
        // A full commit id needs no question (its address is still checked).
        let url = Url::parse("https://93.184.216.34/x.git").unwrap();
        let sha = "A".repeat(40);
        assert_eq!(
            resolve(&url, &guard, None, &sha, Duration::from_secs(1)).await.unwrap(),
            "a".repeat(40)
        );
    }
}
