//! A remote repository fetched in the project's sandbox: what it is
//! fetched with (the project's token for https, its deploy key for ssh),
//! the fixed script and hardened git configuration that fetch it, and
//! what its outcome means, told in words that never quote the server.

use url::Url;

use crate::source::{Commit, SourceError, missing_ref};

/// The user name sent with `GIT_TOKEN` when `GIT_USERNAME` is not set:
/// what GitHub expects of an app's token, and any name does for personal
/// tokens on GitHub, GitLab and Gitea.
const DEFAULT_GIT_USERNAME: &str = "x-access-token";

/// What a private repository is fetched with: an https token from the
/// project's variables `GIT_TOKEN` and `GIT_USERNAME`, and for ssh:// its
/// deploy key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub token: Option<Token>,
    /// The private half of the project's deploy key, OpenSSH's format.
    pub deploy_key: Option<String>,
    /// ssh host keys the project's earlier fetches saw.
    pub known_hosts: String,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub username: String,
    pub token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.token.as_ref().map(|token| &token.username))
            .field("deploy_key", &self.deploy_key.is_some())
            .finish_non_exhaustive()
    }
}

impl Token {
    /// The token among a project's variables (name, value, secret), if it
    /// has one: `GIT_TOKEN` must be a secret (so that only those who may
    /// read secrets see it, and logs mask it), and neither it nor
    /// `GIT_USERNAME` may hold a control character (a line break would
    /// add lines to what git's credential helper answers).
    pub fn from_variables<'a>(
        variables: impl IntoIterator<Item = (&'a str, &'a str, bool)>,
    ) -> Result<Option<Self>, String> {
        let (mut username, mut token) = (None, None);
        for (name, value, secret) in variables {
            let slot = match name {
                "GIT_TOKEN" if !secret => {
                    return Err("the variable GIT_TOKEN must be a secret: set it again with secret on".to_owned());
                }
                "GIT_TOKEN" => &mut token,
                "GIT_USERNAME" => &mut username,
                _ => continue,
            };
            if value.chars().any(char::is_control) {
                return Err(format!(
                    "the variable {name} holds a line break or another control character"
                ));
            }
            if !value.is_empty() {
                *slot = Some(value.to_owned());
            }
        }
        Ok(token.map(|token| Self {
            username: username.unwrap_or_else(|| DEFAULT_GIT_USERNAME.to_owned()),
            token,
        }))
    }
}

/// The variables of the sandboxed step that fetches commit `sha` of a
/// remote repository into the sandbox's working directory with the
/// fixed script [`FETCH`]: git's hardened configuration, and the
/// credentials if the project has a token.
pub fn fetch_step(url: &Url, sha: &str, credentials: &Credentials, proxied: bool) -> Vec<(String, String)> {
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
    if let Some(token) = &credentials.token
        && transport != "ssh"
    {
        // Read from the environment by git's helper: never an argument.
        config.push(("credential.helper".to_owned(), CREDENTIAL_HELPER));
        variables.push(("GIT_USERNAME".to_owned(), token.username.clone()));
        variables.push(("GIT_TOKEN".to_owned(), token.token.clone()));
    }
    if transport == "ssh" {
        // The script writes the key to a private file first.
        variables.push((
            "CAPSULE_DEPLOY_KEY".to_owned(),
            credentials.deploy_key.clone().unwrap_or_default(),
        ));
        variables.push(("CAPSULE_KNOWN_HOSTS".to_owned(), known_hosts(&credentials.known_hosts)));
        let mut ssh = SSH_COMMAND.to_owned();
        if proxied {
            ssh.push_str(&format!(
                " -o 'ProxyCommand=socat - PROXY:127.0.0.1:%h:%p,proxyport={}'",
                crate::egress::SANDBOX_PORT
            ));
        }
        variables.push(("GIT_SSH_COMMAND".to_owned(), ssh));
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
/// Then, after [`KNOWN_HOSTS_MARK`], the ssh host keys known now.
pub const FETCH: &str = "set -e\n\
    export CAPSULE_KEY_FILE=\"$(mktemp)\"\n\
    trap 'rm -f \"$CAPSULE_KEY_FILE\" \"$CAPSULE_KEY_FILE.hosts\"' EXIT\n\
    printf '%s\\n' \"$CAPSULE_DEPLOY_KEY\" > \"$CAPSULE_KEY_FILE\"\n\
    printf '%s\\n' \"$CAPSULE_KNOWN_HOSTS\" > \"$CAPSULE_KEY_FILE.hosts\"\n\
    unset CAPSULE_DEPLOY_KEY\n\
    git init --quiet\n\
    git fetch --quiet --no-tags --depth=1 --end-of-options \"$CAPSULE_SOURCE\" \"$CAPSULE_COMMIT\"\n\
    git checkout --quiet --detach FETCH_HEAD\n\
    git log -1 --format=%H%x00%an%x20%x3C%ae%x3E%x00%s FETCH_HEAD\n\
    printf '\\n%s\\n' '--capsule-known-hosts--'\n\
    cat \"$CAPSULE_KEY_FILE.hosts\"\n";

/// Where the fetch's own output ends and the known host keys begin.
pub const KNOWN_HOSTS_MARK: &str = "\n--capsule-known-hosts--\n";

/// Host keys known before any first sight: the big hosts' published
/// ones. A host not here is trusted on first sight, and its key is
/// remembered for the project from then on ([`remembered_hosts`]).
const PUBLISHED_HOST_KEYS: &str =
    "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

/// The host keys a fetch starts with: the published ones, then what the
/// project's earlier fetches saw.
pub fn known_hosts(remembered: &str) -> String {
    format!("{PUBLISHED_HOST_KEYS}\n{remembered}")
}

/// Of the host keys a fetch ended with, what to remember for the
/// project: well-formed lines (`host keytype key`), none for a host whose
/// key is published, at most 64.
pub fn remembered_hosts(known: &str) -> String {
    let published: Vec<&str> = PUBLISHED_HOST_KEYS
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    known
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() == 3
                && !published.contains(&fields[0])
                && fields[1]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'@' || b == b'.')
                && fields[2]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
                && fields[0]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"[]:.-,".contains(&b))
        })
        .take(64)
        .map(|line| format!("{line}\n"))
        .collect()
}

/// How git reaches an ssh:// server: with the project's deploy key only,
/// no configuration or agent of anyone's, never asking; a host's key must
/// match the one published or remembered, and only a host never seen is
/// trusted on first sight.
const SSH_COMMAND: &str = "ssh -F /dev/null -i \"$CAPSULE_KEY_FILE\" -o IdentitiesOnly=yes -o IdentityAgent=none \
     -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=\"$CAPSULE_KEY_FILE.hosts\"";

/// git's credential helper: answers `get` with the token from its
/// environment.
const CREDENTIAL_HELPER: &str =
    "!f() { test \"$1\" = get && printf 'username=%s\\npassword=%s\\n' \"$GIT_USERNAME\" \"$GIT_TOKEN\"; }; f";

/// Why a remote fetch failed, in words that say nothing of what answered.
fn in_words(stderr: &str) -> &'static str {
    let said = stderr.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|needle| said.contains(needle));
    if any(&["host key verification failed", "remote host identification has changed"]) {
        "the server's SSH host key is not the one seen before: if the server's key really changed, make the \
         project a new deploy key (RotateDeployKey) to forget it"
    } else if any(&["could not resolve host", "could not resolve proxy"]) {
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
    fn a_token_reaches_git_through_its_environment_only() {
        let remote = Url::parse("https://example.com/a.git").unwrap();
        let variables = [("GIT_TOKEN", "s3cret", true), ("PATH", "/x", false)];
        let credentials = Credentials {
            token: Token::from_variables(variables).unwrap(),
            deploy_key: Some("-----BEGIN OPENSSH PRIVATE KEY-----".to_owned()),
            known_hosts: String::new(),
        };
        // A token others may read, or one that would add lines to the
        // helper's answer, is refused.
        assert!(Token::from_variables([("GIT_TOKEN", "s3cret", false)]).is_err());
        assert!(Token::from_variables([("GIT_TOKEN", "a\nurl=https://evil/", true)]).is_err());
        assert!(Token::from_variables([("GIT_TOKEN", "t", true), ("GIT_USERNAME", "me\r\nx", false)]).is_err());
        assert_eq!(credentials.token.as_ref().unwrap().username, "x-access-token");
        assert!(!format!("{credentials:?}").contains("s3cret") && !format!("{credentials:?}").contains("BEGIN"));
        let step = fetch_step(&remote, &"a".repeat(40), &credentials, true);
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
        assert!(
            step.iter().all(|(name, _)| name != "CAPSULE_DEPLOY_KEY"),
            "no key over https"
        );
        // Without a token, no helper.
        assert!(
            Token::from_variables([("GIT_USERNAME", "me", false)])
                .unwrap()
                .is_none()
        );
        let step = fetch_step(&remote, "HEAD", &Credentials::default(), true);
        assert!(
            step.iter()
                .all(|(name, value)| name != "GIT_TOKEN" && value != CREDENTIAL_HELPER)
        );
        // Over ssh: the key (from the environment into a private file), no
        // token, and the way out through the egress proxy.
        let ssh = Url::parse("ssh://git@example.com/a.git").unwrap();
        let step = fetch_step(&ssh, "main", &credentials, true);
        let get = |name: &str| step.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        assert!(get("GIT_TOKEN").is_none());
        assert_eq!(
            get("CAPSULE_DEPLOY_KEY").as_deref(),
            Some("-----BEGIN OPENSSH PRIVATE KEY-----")
        );
        assert!(
            get("CAPSULE_KNOWN_HOSTS")
                .unwrap()
                .starts_with("github.com ssh-ed25519 ")
        );
        let command = get("GIT_SSH_COMMAND").unwrap();
        assert!(
            command.contains("ProxyCommand=socat - PROXY:127.0.0.1:%h:%p,proxyport=3128"),
            "{command}"
        );
        assert!(!command.contains("BEGIN"), "{command}");
    }

    #[test]
    fn host_keys_are_remembered_but_never_for_a_published_host() {
        let ended = "github.com ssh-ed25519 AAAAforged\n[127.0.0.4]:2222 ssh-ed25519 AAAAC3Nz+/=\n\
                     not a key line at all\n$(id) ssh-ed25519 AAAA\n";
        assert_eq!(remembered_hosts(ended), "[127.0.0.4]:2222 ssh-ed25519 AAAAC3Nz+/=\n");
        assert!(known_hosts("x ssh-ed25519 AAAA\n").starts_with(PUBLISHED_HOST_KEYS));
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
