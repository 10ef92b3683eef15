//! Where a build's source comes from, and a deployment of an uploaded
//! directory (`capsule up`) in particular: its archive is
//! downloaded as bytes into a fresh file of the empty working directory
//! and unpacked by tar inside the project's sandbox, as the project's
//! user — the host never reads the archive's names, links or modes.

use std::{collections::HashMap, io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use capsule::proto::deploy::v1 as pb;

use tracing::Instrument;

use crate::{
    Runner,
    job::{Around, step_span},
    report::Reporter,
    sandbox::Spec,
    source::Commit,
};

/// The archive's name in the working directory while it is unpacked.
const ARCHIVE: &str = ".capsule-upload.tar.gz";

/// Unpacks it in the sandbox, then removes it: owners and modes are the
/// sandbox user's, absolute names and `..` are refused by tar itself, and
/// whatever a hostile archive does stays inside the sandbox. At most
/// `CAPSULE_UNPACK_MAX` bytes of tar are read (a small archive may hold a
/// huge tree); tar's complaints, the last 2000 bytes of them, go to
/// stderr only when it fails.
const UNPACK: &str = "gzip -dc .capsule-upload.tar.gz | head -c \"$CAPSULE_UNPACK_MAX\" \
                      | tar -x -f - --no-same-owner --no-same-permissions --warning=no-timestamp \
                      >/dev/null 2>/tmp/tar-errors || { tail -c 2000 /tmp/tar-errors >&2; exit 1; }\n\
                      rm -f .capsule-upload.tar.gz\n";

impl Runner {
    /// The deployment's source into `dir`: its upload unpacked, else its
    /// repository fetched (the commit, when news to the deploy service),
    /// else nothing (a build from nothing).
    pub(crate) async fn source(
        &self,
        reporter: &Reporter,
        deployment: &pb::Deployment,
        snapshot: &pb::DeploymentSnapshot,
        dir: &Path,
        around: Around<'_>,
    ) -> Result<Option<Commit>, String> {
        if !snapshot.source_digest.is_empty() {
            return self
                .unpack_upload(reporter, snapshot, dir, around)
                .instrument(step_span("unpack"))
                .await
                .map(|()| None);
        }
        if snapshot.repository_url.is_empty() {
            return Ok(None);
        }
        let reference = match snapshot.commit_sha.as_str() {
            "" => &deployment.source_ref,
            sha => sha,
        };
        self.fetch_source(reporter, snapshot, reference, dir, around)
            .instrument(step_span("clone"))
            .await
    }

    async fn unpack_upload(
        &self,
        reporter: &Reporter,
        snapshot: &pb::DeploymentSnapshot,
        dir: &Path,
        around: Around<'_>,
    ) -> Result<(), String> {
        reporter.system("unpacking the uploaded source".to_owned()).await;
        self.give_workdir(around.tenant, dir).await?;
        // The directory is new and nothing of the tenant's has run in it:
        // a file of its own, readable by the sandbox's user.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(dir.join(ARCHIVE))
            .map_err(|err| {
                tracing::error!(error = %err, "cannot write the uploaded source");
                "the runner cannot write the uploaded source".to_owned()
            })?;
        let got = reporter
            .download_source(&mut file, self.config.source.max_bytes)
            .await
            .map_err(|why| format!("cannot fetch the uploaded source: {why}"))?;
        file.flush().map_err(|err| err.to_string())?;
        drop(file);
        if got != snapshot.source_digest {
            return Err("the uploaded source changed on the way: upload it again".to_owned());
        }
        let nothing = HashMap::new();
        let max_bytes = self.config.source.max_bytes;
        let limit = [("CAPSULE_UNPACK_MAX", max_bytes.to_string())];
        let mut child = self
            .sandbox
            .command(&Spec {
                command: UNPACK,
                workdir: dir,
                root_directory: "",
                environment: &nothing,
                extra: &limit,
                tenant: around.tenant,
                cpu_time: Some(std::time::Duration::from_secs(120)),
                egress: None,
                cache: None,
                cgroup: around.cgroup,
            })
            .and_then(|mut command| command.spawn())
            .map_err(|err| {
                tracing::error!(error = %err, "cannot start tar");
                "the runner cannot unpack the upload in the sandbox".to_owned()
            })?;
        let status = tokio::time::timeout(std::time::Duration::from_secs(300), child.wait())
            .await
            .map_err(|_| "unpacking the uploaded source took over 5 minutes".to_owned())?
            .map_err(|err| err.to_string())?;
        if !status.success() {
            let mut said = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = (&mut stderr).take(4096).read_to_string(&mut said).await;
            }
            return Err(format!(
                "the uploaded archive could not be unpacked ({}): upload it again with capsule up",
                said.trim().lines().last().unwrap_or("tar failed")
            ));
        }
        // The tree as unpacked, within what a checkout may write.
        let tree = dir.to_path_buf();
        let bytes = tokio::task::spawn_blocking(move || crate::host::file_bytes(&tree))
            .await
            .unwrap_or(u64::MAX);
        if bytes > max_bytes {
            return Err(format!(
                "the uploaded source unpacks to over {} MiB (DEPLOY_MAX_SOURCE_MB)",
                max_bytes / (1024 * 1024)
            ));
        }
        Ok(())
    }
}
