//! A deployment's source into its working directory: a local repository
//! of the operator's by git on the host, a remote one by git in the
//! project's sandbox, through its egress proxy, with the project's token
//! if it has one ([`crate::source`]).

use std::{collections::HashMap, path::Path};

use capsule::proto::deploy::v1 as pb;
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{
    Runner, host,
    job::Around,
    remote::{self, Credentials, Fetched, Token},
    report::Reporter,
    sandbox::Spec,
    source::{self, Commit, Repository},
};

/// What the runner reads of a fetch's output, per stream.
const MAX_OUTPUT: u64 = 64 * 1024;

impl Runner {
    /// Hands the working directory `dir` to the sandbox user `tenant`
    /// (off the runtime), or says why not in the deployment's words.
    pub(crate) async fn give_workdir(&self, tenant: u32, dir: &Path) -> Result<(), String> {
        let (sandbox, owned) = (self.sandbox.clone(), dir.to_path_buf());
        tokio::task::spawn_blocking(move || sandbox.prepare_workdir(tenant, &owned))
            .await
            .unwrap_or_else(|err| Err(std::io::Error::other(err)))
            .map_err(|err| {
                tracing::error!(error = %err, "cannot prepare the working directory");
                "the runner cannot prepare the working directory".to_owned()
            })
    }

    /// Fetches `reference` (the deployment's commit, or the branch or tag
    /// it names when only the sandbox can read the repository's refs) into
    /// `dir`: the commit as fetched
    /// from a remote repository (its subject and author are news to the
    /// deploy service), or why not, in words the user can act on.
    pub(crate) async fn fetch_source(
        &self,
        reporter: &Reporter,
        snapshot: &pb::DeploymentSnapshot,
        reference: &str,
        dir: &Path,
        around: Around<'_>,
    ) -> Result<Option<Commit>, String> {
        let Around {
            tenant,
            project_id,
            way_out,
            cgroup,
        } = around;
        let url = &snapshot.repository_url;
        reporter.system(format!("fetching {url} at {reference}")).await;
        let cannot = |err: source::SourceError| format!("cannot fetch the source: {err}");
        let max_bytes = self.config.source.max_bytes;
        let remote = match Repository::parse(url, &self.config.source).map_err(cannot)? {
            Repository::Local(path) => {
                return Repository::checkout_local(&path, reference, dir, max_bytes)
                    .await
                    .map(|()| None)
                    .map_err(cannot);
            }
            Repository::Remote { url, guard } => {
                // Plain http only to the operator's networks, decided here
                // too: the name may point elsewhere by now.
                if url.scheme() == "http" {
                    let host = url.host().ok_or_else(|| cannot(source::SourceError::Missing))?;
                    let port = url.port_or_known_default().unwrap_or(80);
                    let addresses = guard.resolve(&host, port).await.unwrap_or_default();
                    if addresses.is_empty() || !addresses.iter().all(|ip| guard.allows(*ip)) {
                        return Err(cannot(source::SourceError::Forbidden(
                            "http:// repositories are fetched only from networks the operator allows: use the \
                             repository's https:// URL"
                                .to_owned(),
                        )));
                    }
                }
                url
            }
        };
        let secret = |name: &str| snapshot.secret_names.iter().any(|secret| secret == name);
        let token = Token::from_variables(
            snapshot
                .environment
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str(), secret(name))),
        )
        .map_err(|why| format!("cannot fetch the source: {why}"))?;
        // Pinned per project and deploy key: a new key forgets them.
        let key_digest = sha2::Sha256::digest(snapshot.deploy_key.as_bytes());
        let hosts_file = self
            .config
            .workdir
            .join(".known-hosts")
            .join(format!("{project_id}-{:x}", key_digest));
        let credentials = Credentials {
            token,
            deploy_key: (!snapshot.deploy_key.is_empty()).then(|| snapshot.deploy_key.clone()),
            known_hosts: std::fs::read_to_string(&hosts_file).unwrap_or_default(),
        };
        if remote.scheme() == "ssh" && credentials.deploy_key.is_none() {
            return Err(
                "cannot fetch the source: an ssh:// repository is fetched with the project's deploy key, and it has \
                 none: make one (RotateDeployKey) and add its public half to the repository"
                    .to_owned(),
            );
        }
        // The sandbox user fetches into its own directory.
        self.give_workdir(tenant, dir).await?;
        let variables = remote::fetch_step(&remote, reference, &credentials, way_out.is_some());
        let extra: Vec<(&str, String)> = variables
            .iter()
            .map(|(name, value)| (name.as_str(), value.clone()))
            .collect();
        let nothing = HashMap::new();
        let spawned = self
            .sandbox
            .command(&Spec {
                command: remote::FETCH,
                workdir: dir,
                root_directory: "",
                environment: &nothing,
                extra: &extra,
                tenant,
                cpu_time: None,
                egress: way_out,
                cache: None,
                cgroup,
            })
            .and_then(|mut command| command.spawn());
        let mut child = spawned.map_err(|err| {
            tracing::error!(error = %err, "cannot start the fetch");
            "the runner cannot start git in the sandbox".to_owned()
        })?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let ran = async {
            let (stdout, stderr, status) = tokio::join!(bounded(stdout), bounded(stderr), child.wait());
            (stdout, stderr, status)
        };
        let Ok((stdout, stderr, status)) = tokio::time::timeout(source::GIT_TIMEOUT, ran).await else {
            return Err(cannot(source::SourceError::Unreachable(format!(
                "git took longer than {} s",
                source::GIT_TIMEOUT.as_secs()
            ))));
        };
        let status = status.map_err(|err| cannot(source::SourceError::Unreachable(err.to_string())))?;
        let outcome = Fetched {
            success: status.success(),
            file_too_large: std::os::unix::process::ExitStatusExt::signal(&status)
                == Some(nix::sys::signal::Signal::SIGXFSZ as i32),
            stdout,
            stderr,
        };
        let (own, known) = outcome
            .stdout
            .split_once(remote::KNOWN_HOSTS_MARK)
            .map_or((outcome.stdout.as_str(), ""), |(own, known)| (own, known));
        if remote.scheme() == "ssh" && outcome.success {
            let remembered = remote::remembered_hosts(known);
            if remembered != credentials.known_hosts {
                let kept = host::runner_dir(hosts_file.parent().unwrap_or(dir), 0o700)
                    .and_then(|()| std::fs::write(&hosts_file, remembered));
                if let Err(err) = kept {
                    tracing::warn!(error = %err, "cannot remember a repository's host key");
                }
            }
        }
        let outcome = Fetched {
            stdout: own.to_owned(),
            ..outcome
        };
        let commit = remote::fetched(reference, &outcome, max_bytes).map_err(cannot)?;
        let tree = dir.to_path_buf();
        let bytes = tokio::task::spawn_blocking(move || host::file_bytes(&tree))
            .await
            .unwrap_or(u64::MAX);
        if bytes > max_bytes {
            return Err(cannot(source::SourceError::TooLarge(max_bytes / (1024 * 1024))));
        }
        reporter
            .system(format!(
                "fetched {}: {} ({})",
                commit.sha, commit.message, commit.author
            ))
            .await;
        Ok(Some(commit))
    }
}

/// At most [`MAX_OUTPUT`] of a stream (the rest is drained unread).
async fn bounded(stream: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut kept = Vec::new();
    let _ = (&mut stream).take(MAX_OUTPUT).read_to_end(&mut kept).await;
    let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&kept).into_owned()
}
