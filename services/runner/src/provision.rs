//! What a claimed deployment gets around its commands: the release it
//! starts from (or keeps, once built), its build cache, its cgroup and its
//! way out. Each is told in the deployment's log, and each one missing
//! leaves the deployment running without it rather than failing it.

use std::{sync::Arc, time::Instant};

use capsule::proto::deploy::v1 as pb;

use crate::{Runner, cache, egress, host, limits, report::Reporter};

impl Runner {
    /// Unpacks the release the deployment names into `dir`, when this
    /// runner kept it: whether it did (the log says which, and why not).
    pub(crate) async fn unpack_release(
        &self,
        reporter: &Reporter,
        deployment: &pb::Deployment,
        snapshot: &pb::DeploymentSnapshot,
        dir: &std::path::Path,
    ) -> bool {
        let digest = snapshot.artifact_digest.clone();
        if digest.is_empty() {
            return false;
        }
        // Not kept here: from the deploy service, where its builder left it.
        let kept = self
            .releases
            .archive(&deployment.project_id, &deployment.environment, &digest)
            .is_some();
        if !kept {
            self.fetch_release(reporter, deployment, &digest).await;
        }
        let releases = self.releases.clone();
        let (project, environment, into) = (
            deployment.project_id.clone(),
            deployment.environment.clone(),
            dir.to_path_buf(),
        );
        let unpacked =
            tokio::task::spawn_blocking(move || releases.unpack(&project, &environment, &digest, &into)).await;
        let digest = &snapshot.artifact_digest;
        match unpacked {
            Ok(Ok(true)) => {
                reporter
                    .system(format!(
                        "starting release {digest} as it was built: no build, no release command"
                    ))
                    .await;
                true
            }
            other => {
                if let Ok(Err(err)) = other {
                    tracing::error!(error = %err, "cannot unpack a release");
                }
                // Whatever a failed unpack left goes; the build starts afresh.
                if let Ok(entries) = std::fs::read_dir(dir) {
                    for entry in entries.flatten() {
                        let _ = std::fs::remove_dir_all(entry.path()).or_else(|_| std::fs::remove_file(entry.path()));
                    }
                }
                if !reporter.replica {
                    reporter
                        .system(format!(
                            "release {digest} is not kept on this runner: building commit {} again",
                            snapshot.commit_sha
                        ))
                        .await;
                }
                false
            }
        }
    }

    /// Receives release `digest` from the deploy service into this
    /// runner's releases; the log says so (or why not).
    async fn fetch_release(&self, reporter: &Reporter, deployment: &pb::Deployment, digest: &str) {
        let incoming = self.releases.incoming(&deployment.project_id, &deployment.environment);
        let Ok(Some(mut file)) = incoming else { return };
        let started = Instant::now();
        match reporter.download_release(file.as_file_mut()).await {
            Ok(sent) if sent == digest => {
                let kept = self
                    .releases
                    .keep(&deployment.project_id, &deployment.environment, digest, file);
                if let Err(err) = kept {
                    tracing::warn!(error = %err, "cannot keep a fetched release");
                    return;
                }
                let took = started.elapsed().as_millis();
                reporter
                    .system(format!("release {digest} fetched from the deploy service in {took} ms"))
                    .await;
            }
            Ok(_) => tracing::warn!("the deploy service sent another release"),
            Err(why) => tracing::info!(%why, "the release could not be fetched"),
        }
    }

    /// Packs the built tree as the deployment's release; its digest, or
    /// `None` when releases are not kept (the log says why not).
    pub(crate) async fn pack_release(
        &self,
        reporter: &Reporter,
        deployment: &pb::Deployment,
        dir: &std::path::Path,
    ) -> Option<String> {
        if !self.sandbox.isolated() {
            return None;
        }
        let releases = self.releases.clone();
        let (project, environment, tree) = (
            deployment.project_id.clone(),
            deployment.environment.clone(),
            dir.to_path_buf(),
        );
        let started = Instant::now();
        match tokio::task::spawn_blocking(move || releases.pack(&project, &environment, &tree)).await {
            Ok(Ok(Some(digest))) => {
                let took = started.elapsed().as_millis();
                let shared = match self
                    .releases
                    .archive(&deployment.project_id, &deployment.environment, &digest)
                {
                    Some(path) => reporter.upload_release(path, digest.clone()).await,
                    None => Err("it was dropped at once".to_owned()),
                };
                let whom = match shared {
                    Ok(()) => "on this runner and the deploy service".to_owned(),
                    Err(why) => format!("on this runner only: the deploy service did not take it ({why})"),
                };
                reporter
                    .system(format!("release {digest} kept {whom} (packed in {took} ms)"))
                    .await;
                Some(digest)
            }
            Ok(Ok(None)) => None,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "the release is not kept");
                reporter
                    .system(format!(
                        "the release is not kept ({err}): a rollback to it will build again"
                    ))
                    .await;
                None
            }
            Err(_) => None,
        }
    }

    /// The deployment's cgroup, when this runner can make one; otherwise
    /// the log says that memory is bounded per process only.
    /// Its share is the project's, where it set one, else this runner's
    /// default.
    pub(crate) async fn cgroup(
        &self,
        reporter: &Reporter,
        deployment_id: &str,
        tenant: u32,
        snapshot: &pb::DeploymentSnapshot,
    ) -> Option<Arc<limits::Group>> {
        if !self.sandbox.isolated() {
            return None;
        }
        let config = &self.config.sandbox;
        let share = limits::Share {
            memory_bytes: match snapshot.memory_mb {
                0 => config.total_memory_bytes,
                mb => u64::from(mb) * 1024 * 1024,
            },
            cpus: match snapshot.cpu_millis {
                0 => config.cpus,
                millis => f64::from(millis) / 1000.0,
            },
            processes: match snapshot.processes {
                0 => config.processes,
                count => u64::from(count),
            },
        };
        let made = match &self.cgroups {
            Ok(cgroups) => cgroups
                .group(deployment_id, share, self.sandbox.host_id(tenant))
                .map_err(|err| err.to_string()),
            Err(why) => Err(why.clone()),
        };
        match made {
            Ok(group) => {
                let whose = match (snapshot.memory_mb, snapshot.cpu_millis, snapshot.processes) {
                    (0, 0, 0) => "this runner's defaults",
                    _ => "the project's resources, this runner's defaults for the rest",
                };
                reporter
                    .system(format!(
                        "sandbox share: {} MiB of memory, {} CPU, {} processes ({whose})",
                        share.memory_bytes / (1024 * 1024),
                        share.cpus,
                        share.processes
                    ))
                    .await;
                Some(Arc::new(group))
            }
            Err(why) => {
                tracing::warn!(error = %why, "no cgroup for the deployment");
                reporter
                    .system(format!(
                        "no cgroup on this runner ({why}): memory is bounded per process only (DEPLOY_SANDBOX_MEMORY_MB)"
                    ))
                    .await;
                None
            }
        }
    }

    /// The deployment's egress proxy, when its commands run in a sandbox
    /// (unisolated, they have the host's network), letting through what
    /// the fetch may reach.
    pub(crate) fn egress(
        &self,
        deployment_id: &str,
        tenant: u32,
        snapshot: &pb::DeploymentSnapshot,
    ) -> std::io::Result<Option<Arc<egress::Proxy>>> {
        if !self.sandbox.isolated() {
            return Ok(None);
        }
        // Passable (bwrap binds the socket as the sandbox user), never
        // listable; each socket is its sandbox user's alone.
        let dir = self.config.workdir.join(".egress");
        host::runner_dir(&dir, 0o711)?;
        let socket = dir.join(format!("{deployment_id}.sock"));
        let guard = capsule::guard::Guard::new(self.config.source.allowed_networks.clone());
        Ok(Some(Arc::new(egress::Proxy::start(
            &socket,
            self.sandbox.host_id(tenant),
            guard,
            egress::fetch_policy(snapshot),
            snapshot.database_address.parse().ok(),
        )?)))
    }

    /// The build cache of the deployment's project and environment, when
    /// caches are on and its commands run in a sandbox; what it holds is
    /// told in the logs.
    pub(crate) async fn open_cache(
        &self,
        reporter: &Reporter,
        deployment: &pb::Deployment,
        tenant: u32,
        generation: u64,
    ) -> Option<cache::Cache> {
        if !self.sandbox.isolated() {
            return None;
        }
        let (caches, owner) = (self.caches.clone(), self.sandbox.host_id(tenant));
        let (project, environment) = (deployment.project_id.clone(), deployment.environment.clone());
        let opened = tokio::task::spawn_blocking(move || caches.open(&project, &environment, generation, owner)).await;
        match opened {
            Ok(Ok(Some(cache))) => {
                reporter.system(cache.before()).await;
                Some(cache)
            }
            Ok(Ok(None)) => None,
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {
                reporter
                    .system(
                        "the build cache is in use by another build of this environment: building without it"
                            .to_owned(),
                    )
                    .await;
                None
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot open the build cache");
                reporter
                    .system("the build cache is not available: building without it".to_owned())
                    .await;
                None
            }
            Err(_) => None,
        }
    }
}
