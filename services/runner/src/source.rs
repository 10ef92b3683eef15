//! A deployment's source: which repositories may be used, resolving a ref
//! to the exact commit when a deployment is created, and fetching that
//! commit (shallow) into the working directory before the build.
//!
//! The `git` command does the work (it speaks every server's quirks;
//! libgit2 and gix lag behind on shallow fetches and protocol v2): run with
//! a clean environment — no system or global configuration, no terminal
//! prompts, no hooks, no redirects, only the one transport allowed — under
//! a time limit and a file-size limit, never with a user's code. It runs as
//! the runner's user; the sandbox then hands the checkout to the project's
//! sandbox user.
//!
//! A tenant's URL is hostile: remote repositories are https:// only (git://
//! is an unchecked transport, ssh:// would use this service's own keys),
//! and git connects only to addresses the kernel's [`Guard`] allowed when
//! the command started (`http.curloptResolve` pins them), so neither a URL
//! nor a name re-pointed between the check and the connection reaches the
//! control plane's network. A remote failure is told in words, never with
//! the server's own answer, which would make git a port scanner with
//! banners.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use capsule::guard::Guard;
use tokio::process::Command;
use url::{Host, Url};

use crate::config::SourceConfig;

/// How long one git command may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a deployment's source comes from, once allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repository {
    /// A directory on this host, under an allowed root.
    Local(PathBuf),
    /// An https:// URL, reached only at addresses the guard allows.
    Remote { url: Url, guard: Guard },
}

/// The commit a deployment builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub sha: String,
    pub message: String,
    pub author: String,
}

/// Why a source cannot be used, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Forbidden(String),
    #[error("no branch, tag or commit {reference:?} in the repository")]
    MissingRef { reference: String },
    /// The reference the repository lacks, named by the caller.
    #[error("the repository lacks the reference")]
    Missing,
    #[error("cannot fetch from the repository: {0}")]
    Unreachable(String),
    #[error("the repository is larger than the limit of {0} MiB")]
    TooLarge(u64),
}

impl SourceError {
    /// This error, naming `reference` when the repository lacks it.
    fn naming(self, reference: &str) -> Self {
        match self {
            Self::Missing => Self::MissingRef {
                reference: reference.to_owned(),
            },
            other => other,
        }
    }
}

impl Repository {
    /// The repository a project's `repository_url` names, if this service
    /// allows it: https:// URLs, and local paths only under the allowed
    /// roots.
    pub fn parse(url: &str, config: &SourceConfig) -> Result<Self, SourceError> {
        let local_roots = &config.local_repositories;
        let local = if let Some(path) = url.strip_prefix("file://") {
            Some(PathBuf::from(path))
        } else if url.starts_with('/') {
            Some(PathBuf::from(url))
        } else {
            None
        };
        let Some(path) = local else {
            return Self::remote(url, config);
        };
        if local_roots.is_empty() {
            return Err(SourceError::Forbidden(
                "local repositories are not allowed here: the operator can allow a directory with \
                 DEPLOY_LOCAL_REPOSITORIES"
                    .to_owned(),
            ));
        }
        // Resolved, so `..` and symbolic links cannot leave a root.
        let resolved = path
            .canonicalize()
            .map_err(|_| SourceError::Forbidden(format!("no repository at {}", path.display())))?;
        if local_roots
            .iter()
            .filter_map(|root| root.canonicalize().ok())
            .any(|root| resolved.starts_with(root))
        {
            Ok(Self::Local(resolved))
        } else {
            Err(SourceError::Forbidden(format!(
                "{} is outside the directories allowed in DEPLOY_LOCAL_REPOSITORIES",
                path.display()
            )))
        }
    }

    fn remote(raw: &str, config: &SourceConfig) -> Result<Self, SourceError> {
        let url = Url::parse(raw)
            .map_err(|_| SourceError::Forbidden(format!("{raw:?} is not a repository URL: use an https:// URL")))?;
        match url.scheme() {
            "https" => {}
            "ssh" | "git" => {
                return Err(SourceError::Forbidden(format!(
                    "{}:// repositories are not fetched: use the repository's https:// URL",
                    url.scheme()
                )));
            }
            _ => {
                return Err(SourceError::Forbidden(format!(
                    "{raw:?} is not a repository URL: use an https:// URL"
                )));
            }
        }
        if !url.username().is_empty() || url.password().is_some() || url.host().is_none() {
            return Err(SourceError::Forbidden(
                "the URL must name a host and hold no user name or password".to_owned(),
            ));
        }
        Ok(Self::Remote {
            url,
            guard: Guard::new(config.allowed_networks.clone()),
        })
    }

    fn location(&self) -> String {
        match self {
            Self::Local(path) => path.display().to_string(),
            Self::Remote { url, .. } => url.to_string(),
        }
    }

    /// The exact commit `reference` (a branch, tag or commit) names now,
    /// with its message and author: a shallow fetch of commits and trees
    /// only, into a scratch repository.
    pub async fn resolve(&self, reference: &str) -> Result<Commit, SourceError> {
        let scratch = tempfile::tempdir().map_err(|err| SourceError::Unreachable(err.to_string()))?;
        let repo = scratch.path();
        git(repo, &["init", "--quiet", "--bare"], self, None).await?;
        let fetched = git(
            repo,
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                "--depth=1",
                "--filter=blob:none",
                "--end-of-options",
                &self.location(),
                reference,
            ],
            self,
            None,
        )
        .await;
        fetched.map_err(|err| err.naming(reference))?;
        let shown = git(
            repo,
            &["log", "-1", "--format=%H%x00%an <%ae>%x00%s", "FETCH_HEAD"],
            self,
            None,
        )
        .await?;
        let mut parts = shown.trim_end().splitn(3, '\0');
        let (sha, author, message) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        Ok(Commit {
            sha: sha.to_owned(),
            author: author.chars().take(512).collect(),
            message: message.chars().take(1024).collect(),
        })
    }

    /// The commit `branch` points at now (`git ls-remote`, no fetch).
    pub async fn head(&self, branch: &str) -> Result<String, SourceError> {
        let scratch = tempfile::tempdir().map_err(|err| SourceError::Unreachable(err.to_string()))?;
        let reference = format!("refs/heads/{branch}");
        let listed = git(
            scratch.path(),
            &["ls-remote", "--end-of-options", &self.location(), &reference],
            self,
            None,
        )
        .await?;
        listed
            .lines()
            .find_map(|line| {
                let (sha, name) = line.split_once('\t')?;
                (name == reference).then(|| sha.to_owned())
            })
            .ok_or(SourceError::Missing)
            .map_err(|err| err.naming(branch))
    }

    /// Fetches commit `sha` (shallow) and checks it out in `dir`: at most
    /// `max_bytes` per file and in all.
    pub async fn checkout(&self, sha: &str, dir: &Path, max_bytes: u64) -> Result<(), SourceError> {
        git(dir, &["init", "--quiet"], self, None).await?;
        git(
            dir,
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                "--depth=1",
                "--end-of-options",
                &self.location(),
                sha,
            ],
            self,
            Some(max_bytes),
        )
        .await
        .map_err(|err| err.naming(sha))?;
        git(
            dir,
            &["checkout", "--quiet", "--detach", "FETCH_HEAD"],
            self,
            Some(max_bytes),
        )
        .await?;
        if crate::host::file_bytes(dir) > max_bytes {
            return Err(SourceError::TooLarge(max_bytes / (1024 * 1024)));
        }
        Ok(())
    }
}

fn missing_ref(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("couldn't find remote ref")
        || message.contains("not our ref")
        || message.contains("no such remote ref")
        || message.contains("unadvertised object")
        || message.contains("bad object")
}

/// Runs one hardened git command in `dir`; its stdout, or its first error
/// line. With `max_bytes`, files larger than that cannot be written.
async fn git(dir: &Path, args: &[&str], repo: &Repository, max_bytes: Option<u64>) -> Result<String, SourceError> {
    let (transport, pinned) = match repo {
        Repository::Local(_) => ("file", None),
        Repository::Remote { url, guard } => ("https", Some(pin(url, guard).await?)),
    };
    let mut command = match max_bytes {
        Some(bytes) => {
            let mut command = Command::new("prlimit");
            command.arg(format!("--fsize={bytes}")).arg("--").arg("git");
            command
        }
        None => Command::new("git"),
    };
    command
        .args([
            "-c",
            "protocol.allow=never",
            "-c",
            &format!("protocol.{transport}.allow=always"),
            "-c",
            "http.followRedirects=false",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.symlinks=true",
            "-c",
            "submodule.recurse=false",
            "-c",
            "advice.detachedHead=false",
            "-c",
            "safe.directory=*",
        ])
        .args(pinned.iter().flat_map(|resolve| ["-c", resolve.as_str()]))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .env("LANG", "C.UTF-8")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ASKPASS", "/bin/false")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(GIT_TIMEOUT, command.output())
        .await
        .map_err(|_| SourceError::Unreachable(format!("git took longer than {} s", GIT_TIMEOUT.as_secs())))?
        .map_err(|err| SourceError::Unreachable(format!("cannot run git: {err}")))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if let Some(bytes) = max_bytes
        && (stderr.contains("File too large") || output.status.code().is_none())
    {
        return Err(SourceError::TooLarge(bytes / (1024 * 1024)));
    }
    if missing_ref(&stderr) {
        return Err(SourceError::Missing);
    }
    let message = match repo {
        // git's own verdict, not the warnings before it: the operator's
        // directory.
        Repository::Local(_) => stderr
            .lines()
            .find_map(|line| line.strip_prefix("fatal: ").or_else(|| line.strip_prefix("error: ")))
            .or_else(|| stderr.lines().find(|line| !line.trim().is_empty()))
            .unwrap_or("git failed")
            .to_owned(),
        Repository::Remote { .. } => in_words(&stderr).to_owned(),
    };
    Err(SourceError::Unreachable(message))
}

/// The `http.curloptResolve` setting that makes git connect to the
/// addresses the guard allowed for `url`'s host now, and nowhere else.
async fn pin(url: &Url, guard: &Guard) -> Result<String, SourceError> {
    let host = url
        .host()
        .ok_or_else(|| SourceError::Forbidden("the URL names no host".to_owned()))?;
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses = guard.resolve(&host, port).await.map_err(|refused| {
        SourceError::Forbidden(format!(
            "{url} {refused}: repositories are fetched from public addresses only \
             (an operator may allow a network with DEPLOY_EGRESS_ALLOWED_NETWORKS)"
        ))
    })?;
    let bracketed = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let name = match host {
        Host::Domain(name) => name.to_owned(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => format!("[{ip}]"),
    };
    let list: Vec<String> = addresses.iter().map(bracketed).collect();
    Ok(format!("http.curloptResolve={name}:{port}:{}", list.join(",")))
}

/// Why a remote fetch failed, in words that say nothing of what answered.
fn in_words(stderr: &str) -> &'static str {
    let said = stderr.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|needle| said.contains(needle));
    if any(&["could not resolve host"]) {
        "the host name does not resolve"
    } else if any(&["redirect"]) {
        "the server answered with a redirect: use the URL it redirects to"
    } else if any(&["ssl", "certificate", "tls"]) {
        "the server's TLS certificate is not trusted"
    } else if any(&["timed out", "timeout"]) {
        "the server did not answer in time"
    } else if any(&[
        "authentication",
        "username",
        "terminal prompts disabled",
        " 401",
        " 403",
    ]) {
        "the server asks for credentials: the repository is private or does not exist"
    } else if any(&["not found", " 404"]) {
        "there is no repository at this URL"
    } else if any(&["failed to connect", "couldn't connect", "connection refused"]) {
        "cannot connect to the server"
    } else {
        "the server did not answer as a git repository"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_only_under_an_allowed_root_and_only_known_schemes() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("app.git");
        std::fs::create_dir(&repo).unwrap();
        let roots = SourceConfig {
            local_repositories: vec![root.path().to_path_buf()],
            ..Default::default()
        };
        let none = SourceConfig::default();
        assert!(matches!(
            Repository::parse(repo.to_str().unwrap(), &roots),
            Ok(Repository::Local(_))
        ));
        assert!(matches!(
            Repository::parse(&format!("file://{}", repo.display()), &roots),
            Ok(Repository::Local(_))
        ));
        let escape = format!("{}/app.git/../../etc", root.path().display());
        assert!(matches!(
            Repository::parse(&escape, &roots),
            Err(SourceError::Forbidden(_))
        ));
        assert!(matches!(
            Repository::parse(repo.to_str().unwrap(), &none),
            Err(SourceError::Forbidden(message)) if message.contains("DEPLOY_LOCAL_REPOSITORIES")
        ));
        assert!(matches!(
            Repository::parse("ext::sh -c id", &roots),
            Err(SourceError::Forbidden(_))
        ));
        assert!(matches!(
            Repository::parse("https://example.com/a.git", &none),
            Ok(Repository::Remote { url, .. }) if url.as_str() == "https://example.com/a.git"
        ));
        for refused in [
            "ssh://git@example.com/a.git",
            "git://example.com/a.git",
            "http://example.com/a.git",
            "https://user:pw@example.com/a.git",
        ] {
            assert!(
                matches!(Repository::parse(refused, &none), Err(SourceError::Forbidden(_))),
                "{refused}"
            );
        }
    }

    #[tokio::test]
    async fn git_is_pinned_to_the_addresses_the_guard_allowed() {
        let guard = Guard::default();
        let url = Url::parse("https://127.0.0.1:8443/a.git").unwrap();
        let refused = pin(&url, &guard).await.unwrap_err().to_string();
        assert!(refused.contains("loopback"), "{refused}");
        assert!(refused.contains("DEPLOY_EGRESS_ALLOWED_NETWORKS"), "{refused}");
        let allowing = Guard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        let localhost = Url::parse("https://localhost:8443/a.git").unwrap();
        let pinned = pin(&localhost, &allowing).await.unwrap();
        assert!(
            pinned.starts_with("http.curloptResolve=localhost:8443:127.0.0.1"),
            "{pinned}"
        );
        let public = Url::parse("https://93.184.216.34/a.git").unwrap();
        assert_eq!(
            pin(&public, &guard).await.unwrap(),
            "http.curloptResolve=93.184.216.34:443:93.184.216.34"
        );
    }

    #[test]
    fn a_remote_failure_is_told_without_the_servers_answer() {
        for (stderr, says) in [
            (
                "fatal: protocol error: bad line length character: HTTP",
                "did not answer as a git repository",
            ),
            (
                "fatal: unable to access 'https://x/': Failed to connect to x port 5432",
                "cannot connect",
            ),
            (
                "fatal: unable to access 'https://x/': Could not resolve host: x",
                "does not resolve",
            ),
            (
                "fatal: could not read Username for 'https://x': terminal prompts disabled",
                "credentials",
            ),
        ] {
            let words = in_words(stderr);
            assert!(words.contains(says), "{stderr}: {words}");
            assert!(!words.contains("HTTP") && !words.contains("5432"), "{words}");
        }
    }
}
