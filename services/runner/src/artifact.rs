//! Immutable releases: a successful build's tree, packed (tar, zstd) and
//! named by the SHA-256 of the archive (`sha256:<hex>`), the digest the
//! deployment records. A rollback whose target kept a release — and any
//! start of a deployment that has one — unpacks it instead of building.
//! Each runner keeps the newest `DEPLOY_RELEASES_KEPT` of each project and
//! environment; a release missing here is rebuilt from its commit.
//!
//! The tree is the tenant's, packed after its build and release command
//! ended (nothing of the tenant runs then): links are stored as links and
//! never followed, anything but files, directories and links is left out.
//! Unpacking writes only below the new working directory, and only an
//! archive whose bytes still have its digest.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Write},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

/// The zstd level: fast to pack, faster to unpack.
const LEVEL: i32 = 3;

/// The releases of one runner.
#[derive(Debug, Clone)]
pub struct Releases {
    root: PathBuf,
    kept: usize,
    /// The largest tree kept, by its files' apparent sizes (a sparse file
    /// counts at the size it would unpack to).
    max_bytes: u64,
}

impl Releases {
    /// `kept` 0: none kept.
    pub fn new(workdir: &Path, kept: usize, max_bytes: u64) -> Self {
        Self {
            root: workdir.join(".releases"),
            kept,
            max_bytes,
        }
    }

    fn dir(&self, project_id: &str, environment: &str) -> Option<PathBuf> {
        let plain = |value: &str| {
            !value.is_empty() && value.len() <= 64 && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        (self.kept > 0 && plain(project_id) && plain(environment))
            .then(|| self.root.join(format!("{project_id}-{environment}")))
    }

    /// Packs `tree` as a release of the project's environment; its digest.
    /// The oldest beyond the number kept are dropped.
    pub fn pack(&self, project_id: &str, environment: &str, tree: &Path) -> std::io::Result<Option<String>> {
        let Some(dir) = self.dir(project_id, environment) else {
            return Ok(None);
        };
        let bytes = crate::host::file_bytes(tree);
        if bytes > self.max_bytes {
            return Err(std::io::Error::other(format!(
                "the built tree is {} MB, over DEPLOY_RELEASE_MAX_MB ({} MB)",
                bytes / 1_000_000,
                self.max_bytes / (1024 * 1024)
            )));
        }
        crate::host::runner_dir(&self.root, 0o700)?;
        crate::host::runner_dir(&dir, 0o700)?;
        let partial = tempfile::NamedTempFile::new_in(&dir)?;
        let hashing = Hashing {
            inner: BufWriter::new(partial.as_file().try_clone()?),
            hash: Sha256::new(),
        };
        let mut encoder = zstd::Encoder::new(hashing, LEVEL)?;
        {
            let mut archive = tar::Builder::new(&mut encoder);
            archive.follow_symlinks(false);
            append_tree(&mut archive, tree)?;
            archive.finish()?;
        }
        let mut hashing = encoder.finish()?;
        hashing.inner.flush()?;
        let digest = format!("sha256:{}", hex::encode(hashing.hash.finalize()));
        partial.persist(dir.join(file_name(&digest))).map_err(|err| err.error)?;
        self.prune(&dir);
        Ok(Some(digest))
    }

    /// The archive of release `digest` of the project's environment, when
    /// this runner keeps it.
    pub fn archive(&self, project_id: &str, environment: &str, digest: &str) -> Option<PathBuf> {
        let path = self.dir(project_id, environment)?.join(file_name(digest));
        path.is_file().then_some(path)
    }

    /// A file to receive release `digest` of the project's environment
    /// into; [`Self::keep`] files it (unpacking checks its digest).
    pub fn incoming(&self, project_id: &str, environment: &str) -> std::io::Result<Option<tempfile::NamedTempFile>> {
        let Some(dir) = self.dir(project_id, environment) else {
            return Ok(None);
        };
        crate::host::runner_dir(&self.root, 0o700)?;
        crate::host::runner_dir(&dir, 0o700)?;
        tempfile::NamedTempFile::new_in(&dir).map(Some)
    }

    /// Files a received release as `digest`'s; the oldest beyond the number
    /// kept are dropped.
    pub fn keep(
        &self,
        project_id: &str,
        environment: &str,
        digest: &str,
        file: tempfile::NamedTempFile,
    ) -> std::io::Result<()> {
        let Some(dir) = self.dir(project_id, environment) else {
            return Ok(());
        };
        if !digest
            .strip_prefix("sha256:")
            .is_some_and(|hex| hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(std::io::Error::other("not a release digest"));
        }
        file.persist(dir.join(file_name(digest))).map_err(|err| err.error)?;
        self.prune(&dir);
        Ok(())
    }

    /// Unpacks release `digest` of the project's environment into `into`
    /// (an empty directory); `Ok(false)` when this runner does not have it.
    pub fn unpack(&self, project_id: &str, environment: &str, digest: &str, into: &Path) -> std::io::Result<bool> {
        let Some(dir) = self.dir(project_id, environment) else {
            return Ok(false);
        };
        let Some(hex) = digest
            .strip_prefix("sha256:")
            .filter(|hex| hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        else {
            return Ok(false);
        };
        let path = dir.join(file_name(digest));
        let Ok(mut file) = File::open(&path) else {
            return Ok(false);
        };
        // The bytes must still be the release's.
        let mut hash = Sha256::new();
        std::io::copy(&mut file, &mut hash)?;
        if hex::encode(hash.finalize()) != hex {
            let _ = std::fs::remove_file(&path);
            return Ok(false);
        }
        let decoder = zstd::Decoder::new(BufReader::new(File::open(&path)?))?;
        let mut archive = tar::Archive::new(decoder);
        // Modes as packed, without setuid, setgid or sticky bits.
        archive.set_preserve_permissions(false);
        archive.set_unpack_xattrs(false);
        archive.set_overwrite(false);
        archive.unpack(into)?;
        // Its last use: the newest is kept longest.
        let _ = File::options()
            .append(true)
            .open(&path)
            .and_then(|file| file.set_modified(std::time::SystemTime::now()));
        Ok(true)
    }

    /// Keeps the newest `kept` releases in `dir`.
    fn prune(&self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut releases: Vec<_> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tar.zst"))
            .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
            .collect();
        releases.sort_by_key(|release| std::cmp::Reverse(release.0));
        for (_, path) in releases.into_iter().skip(self.kept) {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn file_name(digest: &str) -> String {
    format!("{}.tar.zst", digest.trim_start_matches("sha256:"))
}

/// Files, directories and links under `root`, links never followed.
fn append_tree<W: Write>(archive: &mut tar::Builder<W>, root: &Path) -> std::io::Result<()> {
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let path = root.join(&relative);
        let metadata = std::fs::symlink_metadata(&path)?;
        let kind = metadata.file_type();
        if kind.is_dir() {
            if !relative.as_os_str().is_empty() {
                archive.append_dir(&relative, &path)?;
            }
            for entry in std::fs::read_dir(&path)? {
                pending.push(relative.join(entry?.file_name()));
            }
        } else if kind.is_file() || kind.is_symlink() {
            archive.append_path_with_name(&path, &relative)?;
        }
    }
    Ok(())
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hash.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROJECT: &str = "0190c3c2-5f1e-7cc0-8b6e-4a1f2d3c4b5a";

    #[test]
    fn a_release_unpacks_to_the_tree_it_was_packed_from_and_links_stay_links() {
        let workdir = tempfile::tempdir().unwrap();
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("node_modules/express")).unwrap();
        std::fs::write(tree.path().join("node_modules/express/index.js"), "module.exports = 1").unwrap();
        std::fs::write(tree.path().join("start.sh"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tree.path().join("leak")).unwrap();
        let releases = Releases::new(workdir.path(), 2, 1 << 20);
        let digest = releases.pack(PROJECT, "production", tree.path()).unwrap().unwrap();
        assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");

        let into = tempfile::tempdir().unwrap();
        assert!(releases.unpack(PROJECT, "production", &digest, into.path()).unwrap());
        let read = std::fs::read_to_string(into.path().join("node_modules/express/index.js")).unwrap();
        assert_eq!(read, "module.exports = 1");
        let link = std::fs::symlink_metadata(into.path().join("leak")).unwrap();
        assert!(
            link.file_type().is_symlink(),
            "stored as a link, not /etc/passwd's bytes"
        );

        assert!(!releases.unpack(PROJECT, "staging", &digest, into.path()).unwrap());
        assert!(
            !releases
                .unpack(PROJECT, "production", "sha256:00", into.path())
                .unwrap()
        );
        // Tampered bytes are not a release.
        let file = workdir
            .path()
            .join(".releases")
            .join(format!("{PROJECT}-production"))
            .join(file_name(&digest));
        std::fs::write(&file, b"not the release").unwrap();
        let fresh = tempfile::tempdir().unwrap();
        assert!(!releases.unpack(PROJECT, "production", &digest, fresh.path()).unwrap());
    }

    #[test]
    fn only_the_newest_releases_are_kept() {
        let workdir = tempfile::tempdir().unwrap();
        let releases = Releases::new(workdir.path(), 2, 1 << 20);
        let mut digests = Vec::new();
        for n in 0..3 {
            let tree = tempfile::tempdir().unwrap();
            std::fs::write(tree.path().join("build"), format!("build {n}")).unwrap();
            digests.push(releases.pack(PROJECT, "production", tree.path()).unwrap().unwrap());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let into = tempfile::tempdir().unwrap();
        assert!(
            !releases
                .unpack(PROJECT, "production", &digests[0], into.path())
                .unwrap()
        );
        assert!(
            releases
                .unpack(PROJECT, "production", &digests[2], into.path())
                .unwrap()
        );
    }

    #[test]
    fn a_tree_over_the_limit_is_not_kept_and_sparse_files_count_whole() {
        let workdir = tempfile::tempdir().unwrap();
        let tree = tempfile::tempdir().unwrap();
        let sparse = File::create(tree.path().join("sparse")).unwrap();
        sparse.set_len(10 << 20).unwrap();
        let releases = Releases::new(workdir.path(), 2, 1 << 20);
        let refused = releases.pack(PROJECT, "production", tree.path()).unwrap_err();
        assert!(refused.to_string().contains("over DEPLOY_RELEASE_MAX_MB"), "{refused}");
    }
}
