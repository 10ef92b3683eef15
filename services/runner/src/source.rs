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
    fn naming(self, reference: &str) -> Self {
        match self {
            Self::Missing => Self::MissingRef {
                reference: reference.to_owned(),
            },
            other => other,
        }
    }
}

/// The user name sent with `GIT_TOKEN` when `GIT_USERNAME` is not set:
/// what GitHub expects of an app's token, and any name does for personal
/// tokens on GitHub, GitLab and Gitea.
const DEFAULT_GIT_USERNAME: &str = "x-access-token";

/// A private repository's HTTPS credentials: the project's variables
/// `GIT_TOKEN` and `GIT_USERNAME`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The credentials among a project's variables, if it has a token.
    pub fn from_variables<'a>(variables: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Self> {
        let (mut username, mut token) = (None, None);
        for (name, value) in variables {
            match name {
                "GIT_TOKEN" if !value.is_empty() => token = Some(value.to_owned()),
                "GIT_USERNAME" if !value.is_empty() => username = Some(value.to_owned()),
                _ => {}
            }
        }
        Some(Self {
            username: username.unwrap_or_else(|| DEFAULT_GIT_USERNAME.to_owned()),
            token: token?,
        })
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
            "https" | "http" => {}
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
                "the URL must name a host and hold no user name or password (a token goes in the secret \
                 variable GIT_TOKEN)"
                    .to_owned(),
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

/// The variables of the sandboxed step that fetches commit `sha` of a
/// remote repository into the sandbox's working directory with the
/// fixed script [`FETCH`]: git's hardened configuration, and the
/// credentials if the project has a token.
pub fn fetch_step(url: &Url, sha: &str, credentials: Option<&Credentials>) -> Vec<(String, String)> {
    let transport = url.scheme();
    let mut config: Vec<(String, &str)> = [
        ("protocol.allow", "never"),
        (&format!("protocol.{transport}.allow"), "always"),
        ("http.followRedirects", "false"),
        ("core.hooksPath", "/dev/null"),
        ("core.symlinks", "true"),
        ("submodule.recurse", "false"),
        ("advice.detachedHead", "false"),
        ("safe.directory", "*"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect();
    let mut variables = vec![
        ("CAPSULE_SOURCE".to_owned(), url.to_string()),
        ("CAPSULE_COMMIT".to_owned(), sha.to_owned()),
        ("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned()),
        ("GIT_CONFIG_NOSYSTEM".to_owned(), "1".to_owned()),
        ("GIT_CONFIG_GLOBAL".to_owned(), "/dev/null".to_owned()),
        ("GIT_ASKPASS".to_owned(), "/bin/false".to_owned()),
    ];
    if let Some(credentials) = credentials {
        // Read from the environment by git's helper: never an argument.
        config.push(("credential.helper".to_owned(), CREDENTIAL_HELPER));
        variables.push(("GIT_USERNAME".to_owned(), credentials.username.clone()));
        variables.push(("GIT_TOKEN".to_owned(), credentials.token.clone()));
    }
    variables.push(("GIT_CONFIG_COUNT".to_owned(), config.len().to_string()));
    for (i, (key, value)) in config.into_iter().enumerate() {
        variables.push((format!("GIT_CONFIG_KEY_{i}"), key));
        variables.push((format!("GIT_CONFIG_VALUE_{i}"), value.to_owned()));
    }
    variables
}

/// What a finished fetch step means: the commit fetched, or why not in
/// words the user can act on.
pub fn fetched(sha: &str, outcome: &Fetched, max_bytes: u64) -> Result<Commit, SourceError> {
    if outcome.success {
        return Ok(Commit::parse(&outcome.stdout));
    }
    let stderr = &outcome.stderr;
    if outcome.file_too_large || stderr.contains("File too large") {
        return Err(SourceError::TooLarge(max_bytes / (1024 * 1024)));
    }
    if missing_ref(stderr) {
        return Err(SourceError::Missing.naming(sha));
    }
    Err(SourceError::Unreachable(in_words(stderr).to_owned()))
}

/// How a fetch step ended, as the runner read it (each stream bounded).
#[derive(Debug, Default)]
pub struct Fetched {
    pub success: bool,
    /// Killed for writing past its file-size limit.
    pub file_too_large: bool,
    pub stdout: String,
    pub stderr: String,
}

/// The fetch, run by `/bin/sh -c` in the project's sandbox with the
/// variables of [`fetch_step`]: nothing of the tenant's is
/// spliced into it. Prints the commit as `sha NUL author NUL subject`.
pub const FETCH: &str = "set -e\n\
    git init --quiet\n\
    git fetch --quiet --no-tags --depth=1 --end-of-options \"$CAPSULE_SOURCE\" \"$CAPSULE_COMMIT\"\n\
    git checkout --quiet --detach FETCH_HEAD\n\
    exec git log -1 --format=%H%x00%an%x20%x3C%ae%x3E%x00%s FETCH_HEAD\n";

/// git's credential helper: answers `get` with the token from its
/// environment.
const CREDENTIAL_HELPER: &str =
    "!f() { test \"$1\" = get && printf 'username=%s\\npassword=%s\\n' \"$GIT_USERNAME\" \"$GIT_TOKEN\"; }; f";

impl Commit {
    /// `sha NUL author NUL subject`, as [`FETCH`] and `resolve_local` print.
    fn parse(shown: &str) -> Self {
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

fn missing_ref(message: &str) -> bool {
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

/// Why a remote fetch failed, in words that say nothing of what answered.
fn in_words(stderr: &str) -> &'static str {
    let said = stderr.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|needle| said.contains(needle));
    if any(&["could not resolve host", "could not resolve proxy"]) {
        "the host name does not resolve"
    } else if any(&["redirect"]) {
        "the server answered with a redirect: use the URL it redirects to"
    } else if any(&["ssl", "certificate", "tls"]) {
        "the server's TLS certificate is not trusted"
    } else if any(&["timed out", "timeout"]) {
        "the server did not answer in time"
    } else if any(&["from proxy", "proxy connect"]) {
        "cannot connect to the server (or the egress guard refused its address)"
    } else if any(&[
        "authentication",
        "username",
        "terminal prompts disabled",
        " 401",
        " 403",
    ]) {
        "the server asks for credentials: the repository is private or does not exist (a token goes in the \
         project's secret variable GIT_TOKEN)"
    } else if any(&["not found", " 404"]) {
        "there is no repository at this URL"
    } else if any(&["failed to connect", "couldn't connect", "connection refused"]) {
        "cannot connect to the server (or the egress guard refused its address)"
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
            "https://user:pw@example.com/a.git",
        ] {
            assert!(
                matches!(Repository::parse(refused, &none), Err(SourceError::Forbidden(_))),
                "{refused}"
            );
        }
    }

    #[test]
    fn a_token_reaches_git_through_its_environment_only() {
        let remote = Url::parse("https://example.com/a.git").unwrap();
        let variables = [("GIT_TOKEN", "s3cret"), ("PATH", "/x")];
        let credentials = Credentials::from_variables(variables).unwrap();
        assert_eq!(credentials.username, "x-access-token");
        assert!(!format!("{credentials:?}").contains("s3cret"));
        let step = fetch_step(&remote, &"a".repeat(40), Some(&credentials));
        let get = |name: &str| step.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("GIT_TOKEN"), Some("s3cret"));
        assert_eq!(get("CAPSULE_SOURCE"), Some("https://example.com/a.git"));
        assert!(!FETCH.contains("s3cret") && !CREDENTIAL_HELPER.contains("s3cret"));
        let keys: Vec<&str> = step
            .iter()
            .filter(|(name, _)| name.starts_with("GIT_CONFIG_KEY_"))
            .map(|(_, key)| key.as_str())
            .collect();
        assert!(keys.contains(&"protocol.https.allow") && keys.contains(&"credential.helper"));
        // Without a token, no helper.
        assert!(Credentials::from_variables([("GIT_USERNAME", "me")]).is_none());
        let step = fetch_step(&remote, "HEAD", None);
        assert!(
            step.iter()
                .all(|(name, value)| name != "GIT_TOKEN" && value != CREDENTIAL_HELPER)
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
