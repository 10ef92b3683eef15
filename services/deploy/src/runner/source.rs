//! A deployment's source: which repositories may be used, resolving a ref
//! to the exact commit when a deployment is created, and fetching that
//! commit (shallow) into the working directory before the build.
//!
//! The `git` command does the work (it speaks every transport and every
//! server's quirks; libgit2 and gix lag behind on shallow fetches and
//! protocol v2): run with a clean environment — no system or global
//! configuration, no terminal prompts, no hooks, only the transports that
//! were allowed — under a time limit and a file-size limit, never with a
//! user's code. It runs as the runner's user; the sandbox then hands the
//! checkout to the project's sandbox user.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::Command;

/// How long one git command may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a deployment's source comes from, once allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repository {
    /// A directory on this host, under an allowed root.
    Local(PathBuf),
    /// An https://, ssh:// or git:// URL.
    Remote(String),
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
    #[error("cannot fetch from the repository: {0}")]
    Unreachable(String),
    #[error("the repository is larger than the limit of {0} MiB")]
    TooLarge(u64),
}

impl Repository {
    /// The repository a project's `repository_url` names, if this service
    /// allows it: local paths only under `local_roots`.
    pub fn parse(url: &str, local_roots: &[PathBuf]) -> Result<Self, SourceError> {
        let local = if let Some(path) = url.strip_prefix("file://") {
            Some(PathBuf::from(path))
        } else if url.starts_with('/') {
            Some(PathBuf::from(url))
        } else {
            None
        };
        let Some(path) = local else {
            let scheme = url.split("://").next().unwrap_or_default();
            return if matches!(scheme, "https" | "ssh" | "git") {
                Ok(Self::Remote(url.to_owned()))
            } else {
                Err(SourceError::Forbidden(format!(
                    "{url:?} is not a repository URL: use https://, ssh:// or git://"
                )))
            };
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

    fn location(&self) -> String {
        match self {
            Self::Local(path) => path.display().to_string(),
            Self::Remote(url) => url.clone(),
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
        match fetched {
            Err(SourceError::Unreachable(message)) if missing_ref(&message) => {
                return Err(SourceError::MissingRef {
                    reference: reference.to_owned(),
                });
            }
            other => other?,
        };
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
            .ok_or(SourceError::MissingRef {
                reference: branch.to_owned(),
            })
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
        .map_err(|err| match err {
            SourceError::Unreachable(message) if missing_ref(&message) => SourceError::MissingRef {
                reference: sha.to_owned(),
            },
            other => other,
        })?;
        git(
            dir,
            &["checkout", "--quiet", "--detach", "FETCH_HEAD"],
            self,
            Some(max_bytes),
        )
        .await?;
        if size_of(dir) > max_bytes {
            return Err(SourceError::TooLarge(max_bytes / (1024 * 1024)));
        }
        Ok(())
    }
}

/// The bytes of the files under `dir` (links not followed).
fn size_of(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if metadata.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.filter_map(Result::ok).map(|entry| entry.path()));
            }
        } else {
            total += metadata.len();
        }
    }
    total
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
    let transports = match repo {
        Repository::Local(_) => "file",
        Repository::Remote(url) => url.split("://").next().unwrap_or("https"),
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
            &format!("protocol.{transports}.allow=always"),
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
        .env(
            "GIT_SSH_COMMAND",
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
        )
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
    let message = stderr
        .lines()
        .find_map(|line| line.strip_prefix("fatal: ").or_else(|| line.strip_prefix("error: ")))
        .or_else(|| stderr.lines().find(|line| !line.trim().is_empty()))
        .unwrap_or("git failed")
        .to_owned();
    Err(SourceError::Unreachable(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_only_under_an_allowed_root_and_only_known_schemes() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("app.git");
        std::fs::create_dir(&repo).unwrap();
        let roots = vec![root.path().to_path_buf()];
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
            Repository::parse(repo.to_str().unwrap(), &[]),
            Err(SourceError::Forbidden(message)) if message.contains("DEPLOY_LOCAL_REPOSITORIES")
        ));
        assert!(matches!(
            Repository::parse("ext::sh -c id", &roots),
            Err(SourceError::Forbidden(_))
        ));
        assert_eq!(
            Repository::parse("https://example.com/a.git", &[]),
            Ok(Repository::Remote("https://example.com/a.git".to_owned()))
        );
    }
}
