//! A deployment's source: which repositories may be used, resolving a ref
//! of a local repository, and the fixed script that fetches a commit in
//! the project's sandbox before the build.
//!
//! A tenant's URL is hostile, so no host process runs git against it:
//! the deploy service asks a remote repository for its refs with its own
//! HTTP client (`refs.rs` there), and the commit is fetched by git inside
//! the project's sandbox, whose one way out is the egress proxy — the
//! guard decides every address, and the operator's own keys and
//! configuration are never in reach. Remote repositories are https://
//! (plain http:// only towards networks the operator allows; git:// is an
//! unchecked transport, ssh:// would need keys). A private repository's
//! token is the project's secret variable `GIT_TOKEN` (with `GIT_USERNAME`,
//! `x-access-token` when unset), handed to git in the sandbox by a
//! credential helper, never on a command line. A remote failure is told
//! in words, never with the server's own answer, which would make git a
//! port scanner with banners.
//!
//! Local repositories (directories the operator allows under
//! `DEPLOY_LOCAL_REPOSITORIES`, which tenants cannot write) are read and
//! checked out by a hardened git on the host, into a working directory no
//! tenant process has touched yet.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use capsule::guard::Guard;
use tokio::process::Command;
use url::Url;

use crate::config::SourceConfig;

/// How long one git command may take (the fetch step too).
pub const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a deployment's source comes from, once allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repository {
    /// A directory on this host, under an allowed root.
    Local(PathBuf),
    /// An https:// URL, reached only at addresses the guard allows.
    Remote { url: Url, guard: Guard },
}

/// The commit a deployment builds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    pub(crate) fn naming(self, reference: &str) -> Self {
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
    /// allows it: https:// URLs (http:// too, decided where its addresses
    /// are known), and local paths only under the allowed roots.
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
            "https" | "http" => {
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(SourceError::Forbidden(
                        "the URL must hold no user name or password (a token goes in the secret variable GIT_TOKEN)"
                            .to_owned(),
                    ));
                }
            }
            // The user is the server's (git@…); the key is the project's.
            "ssh" => {
                if url.username().is_empty() || url.password().is_some() {
                    return Err(SourceError::Forbidden(
                        "an ssh:// URL names the server's user and no password, such as \
                         ssh://git@github.com/acme/app.git"
                            .to_owned(),
                    ));
                }
            }
            "git" => {
                return Err(SourceError::Forbidden(
                    "git:// repositories are not fetched: use the repository's https:// or ssh:// URL".to_owned(),
                ));
            }
            _ => {
                return Err(SourceError::Forbidden(format!(
                    "{raw:?} is not a repository URL: use an https:// URL"
                )));
            }
        }
        // A host name or address, nothing else: it reaches ssh's
        // ProxyCommand and the proxy's request.
        let plain = url.host_str().is_some_and(|host| {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        });
        if !plain {
            return Err(SourceError::Forbidden(
                "the URL must name a host by letters, digits, dots and hyphens, or by its address".to_owned(),
            ));
        }
        Ok(Self::Remote {
            url,
            guard: Guard::new(config.allowed_networks.clone()),
        })
    }

    /// The commit `reference` (a branch, tag or commit) of a local
    /// repository names now, with its message and author.
    pub async fn resolve_local(path: &Path, reference: &str) -> Result<Commit, SourceError> {
        let shown = git(
            path,
            &[
                "log",
                "-1",
                "--format=%H%x00%an <%ae>%x00%s",
                "--end-of-options",
                &format!("{reference}^{{commit}}"),
                "--",
            ],
        )
        .await
        .map_err(|err| match err {
            SourceError::Unreachable(_) => SourceError::Missing,
            other => other,
        })
        .map_err(|err| err.naming(reference))?;
        Ok(Commit::parse(&shown))
    }

    /// The commit `branch` of a local repository points at now.
    pub async fn head_local(path: &Path, branch: &str) -> Result<String, SourceError> {
        let reference = format!("refs/heads/{branch}");
        let listed = git(
            path,
            &["rev-parse", "--verify", "--quiet", "--end-of-options", &reference],
        )
        .await
        .map_err(|_| SourceError::Missing.naming(branch))?;
        Ok(listed.trim().to_owned())
    }

    /// Checks commit `sha` of a local repository out in `dir`: at most
    /// `max_bytes` per file and in all.
    pub async fn checkout_local(path: &Path, sha: &str, dir: &Path, max_bytes: u64) -> Result<(), SourceError> {
        let source = path.display().to_string();
        let fetch = [
            "fetch",
            "--quiet",
            "--no-tags",
            "--depth=1",
            "--end-of-options",
            &source,
            sha,
        ];
        let checkout = [
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            "--detach",
            "FETCH_HEAD",
        ];
        for args in [&["init", "--quiet"][..], &fetch, &checkout] {
            git_in(dir, args, Some(max_bytes)).await.map_err(|err| match err {
                SourceError::Unreachable(message) if missing_ref(&message) => SourceError::Missing.naming(sha),
                other => other,
            })?;
        }
        if crate::host::file_bytes(dir) > max_bytes {
            return Err(SourceError::TooLarge(max_bytes / (1024 * 1024)));
        }
        Ok(())
    }
}

impl Commit {
    /// `sha NUL author NUL subject`, as the fetch script and
    /// `resolve_local` print.
    pub(crate) fn parse(shown: &str) -> Self {
        let mut parts = shown.trim_end().splitn(3, '\0');
        let (sha, author, message) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        Commit {
            sha: sha.to_owned(),
            author: author.chars().take(512).collect(),
            message: message.chars().take(1024).collect(),
        }
    }
}

pub(crate) fn missing_ref(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("couldn't find remote ref")
        || message.contains("not our ref")
        || message.contains("no such remote ref")
        || message.contains("unadvertised object")
        || message.contains("bad object")
}

/// Runs one hardened git command on a local repository of the
/// operator's: its stdout, or git's own verdict.
async fn git(dir: &Path, args: &[&str]) -> Result<String, SourceError> {
    git_in(dir, args, None).await
}

/// [`git`], and with `max_bytes` no file larger than that can be written.
async fn git_in(dir: &Path, args: &[&str], max_bytes: Option<u64>) -> Result<String, SourceError> {
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
            "protocol.file.allow=always",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.symlinks=true",
            "-c",
            "submodule.recurse=false",
            "-c",
            "safe.directory=*",
        ])
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .env("LANG", "C.UTF-8")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
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
    // git's own verdict, not the warnings before it.
    let verdict = stderr
        .lines()
        .find_map(|line| line.strip_prefix("fatal: ").or_else(|| line.strip_prefix("error: ")))
        .or_else(|| stderr.lines().find(|line| !line.trim().is_empty()))
        .unwrap_or("git failed");
    Err(SourceError::Unreachable(verdict.to_owned()))
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
        assert!(Repository::parse("ssh://git@example.com/a.git", &none).is_ok());
        for refused in [
            "ssh://example.com/a.git",
            "ssh://git:pw@example.com/a.git",
            "git://example.com/a.git",
            "https://user:pw@example.com/a.git",
        ] {
            assert!(
                matches!(Repository::parse(refused, &none), Err(SourceError::Forbidden(_))),
                "{refused}"
            );
        }
    }
}
