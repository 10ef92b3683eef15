//! Build caches: one directory per project and environment on each runner,
//! kept between builds and shown to the build (never to the running app)
//! at `/cache`, where the package managers' variables point — npm, yarn,
//! pip, cargo (registry and target), go (modules and builds), and what
//! follows `XDG_CACHE_HOME`. A
//! cache belongs to its project's sandbox user and is never shown to
//! another project. All caches of a runner together stay under
//! `DEPLOY_BUILD_CACHE_MB`: after each build the least recently used go
//! first.

use std::{
    os::unix::fs::{DirBuilderExt, MetadataExt},
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::disk::{Disks, Volume};

/// Where a build sees its cache.
pub const SANDBOX_CACHE: &str = "/cache";

/// The variables that send each package manager's cache to `/cache`.
pub fn environment() -> Vec<(&'static str, String)> {
    [
        ("npm_config_cache", "npm"),
        ("YARN_CACHE_FOLDER", "yarn"),
        ("PIP_CACHE_DIR", "pip"),
        ("CARGO_HOME", "cargo"),
        ("CARGO_TARGET_DIR", "cargo-target"),
        ("GOMODCACHE", "go-mod"),
        ("GOCACHE", "go-build"),
        ("XDG_CACHE_HOME", "xdg"),
    ]
    .into_iter()
    .map(|(name, dir)| (name, format!("{SANDBOX_CACHE}/{dir}")))
    .collect()
}

/// The caches of one runner.
#[derive(Debug, Clone)]
pub struct Caches {
    root: PathBuf,
    max_bytes: u64,
    /// Each cache's filesystem, when the runner bounds disks.
    disks: Option<Disks>,
}

impl Caches {
    /// `max_bytes` 0: no caches.
    pub fn new(workdir: &Path, max_bytes: u64, disks: Option<&Disks>) -> Self {
        Self {
            root: workdir.join(".cache"),
            max_bytes,
            disks: disks.map(|disks| disks.at_most(max_bytes)),
        }
    }

    /// The cache of `project_id`'s `environment` in its `generation`,
    /// made if missing and handed to the sandbox user `owner`, those of
    /// its older generations (cleared through the API) dropped; `None`
    /// when caches are off or the names are not what the deploy service
    /// gives (a UUID, an environment of lowercase letters, digits and
    /// hyphens). `WouldBlock` while another build uses it.
    pub fn open(
        &self,
        project_id: &str,
        environment: &str,
        generation: u64,
        owner: Option<u32>,
    ) -> std::io::Result<Option<Cache>> {
        if self.max_bytes == 0
            || crate::host::uuid_like(project_id).is_none()
            || environment.is_empty()
            || !environment
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Ok(None);
        }
        crate::host::runner_dir(&self.root, 0o711)?;
        // No environment holds a '.': the generation follows one.
        let name = format!("{project_id}-{environment}");
        let current = format!("{name}.{generation}");
        let image = self.root.join(format!("{current}.img"));
        for entry in std::fs::read_dir(&self.root)?.flatten() {
            let other = entry.file_name().to_string_lossy().into_owned();
            let older = other == name || other.strip_prefix(&name).is_some_and(|rest| rest.starts_with('.'));
            if older && other != current && entry.path() != image {
                match entry.file_type()?.is_dir() {
                    true => std::fs::remove_dir_all(entry.path())?,
                    false => std::fs::remove_file(entry.path())?,
                }
            }
        }
        let dir = self.root.join(current);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                if let Some(owner) = owner {
                    std::os::unix::fs::chown(&dir, Some(owner), Some(owner))?;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
        let metadata = std::fs::symlink_metadata(&dir)?;
        if !metadata.is_dir() || owner.is_some_and(|owner| metadata.uid() != owner) {
            return Err(std::io::Error::other(format!(
                "{} is not the project's cache",
                dir.display()
            )));
        }
        // Its modification time is its last use.
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &dir,
            &nix::sys::time::TimeSpec::UTIME_NOW,
            &nix::sys::time::TimeSpec::UTIME_NOW,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(std::io::Error::other)?;
        let volume = match &self.disks {
            Some(disks) => Some(disks.mount(&image, &dir, owner)?),
            None => None,
        };
        let bytes = match std::fs::read_dir(&dir)?.next() {
            None => 0,
            Some(_) => size(&dir),
        };
        Ok(Some(Cache {
            dir,
            bytes,
            _volume: volume,
        }))
    }

    /// Drops the least recently used caches until all fit; which, and
    /// how much, in words.
    pub fn evict(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut caches: Vec<_> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let metadata = std::fs::symlink_metadata(entry.path()).ok()?;
                let used: SystemTime = metadata.modified().ok()?;
                if !metadata.is_dir() {
                    return None;
                }
                // Its filesystem, locked: one a build holds stays.
                let mut image = entry.path().into_os_string();
                image.push(".img");
                let image = PathBuf::from(image);
                let (bytes, lock) = match std::fs::symlink_metadata(&image) {
                    Ok(file) => (file.blocks() * 512, Some(Disks::lock(&image))),
                    Err(_) => (size(&entry.path()), None),
                };
                Some((used, bytes, entry.path(), image, lock))
            })
            .collect();
        caches.sort_by_key(|(used, ..)| *used);
        let mut total: u64 = caches.iter().map(|(_, bytes, ..)| bytes).sum();
        let mut dropped = Vec::new();
        for (_, bytes, path, image, lock) in caches {
            if total <= self.max_bytes {
                break;
            }
            if matches!(lock, Some(None)) {
                continue;
            }
            if std::fs::remove_dir_all(&path).is_ok() {
                let _ = std::fs::remove_file(image);
                total -= bytes;
                let name = path.file_name().map(|name| name.to_string_lossy().into_owned());
                dropped.push(format!("{} ({})", name.unwrap_or_default(), megabytes(bytes)));
            }
        }
        dropped
    }
}

/// One project's cache, open for a build.
#[derive(Debug)]
pub struct Cache {
    pub dir: PathBuf,
    /// Its size when opened; 0 when it holds nothing.
    pub bytes: u64,
    /// Its filesystem, mounted until the build is over.
    _volume: Option<Volume>,
}

impl Cache {
    /// What the build starts from, in words.
    pub fn before(&self) -> String {
        match self.bytes {
            0 => "build cache: empty (the first build of this environment on this runner)".to_owned(),
            bytes => format!("build cache: {} from earlier builds", megabytes(bytes)),
        }
    }

    /// What the build leaves, in words.
    pub fn after(&self) -> String {
        format!("build cache: {} kept for the next build", megabytes(size(&self.dir)))
    }
}

/// Bytes under `dir` as the disk holds them (directories included).
fn size(dir: &Path) -> u64 {
    crate::host::tree_sum(dir, |metadata| metadata.blocks() * 512)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROJECT: &str = "0190c3c2-5f1e-7cc0-8b6e-4a1f2d3c4b5a";

    #[test]
    fn caches_are_per_project_and_environment_and_the_oldest_go_first() {
        let workdir = tempfile::tempdir().unwrap();
        let caches = Caches::new(workdir.path(), 150_000, None);
        assert!(caches.open("../../etc", "production", 0, None).unwrap().is_none());
        assert!(caches.open(PROJECT, "Prod/../x", 0, None).unwrap().is_none());
        let old = caches.open(PROJECT, "staging", 0, None).unwrap().unwrap();
        assert!(old.before().contains("empty"));
        std::fs::write(old.dir.join("blob"), vec![1u8; 100_000]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let new = caches.open(PROJECT, "production", 0, None).unwrap().unwrap();
        std::fs::write(new.dir.join("blob"), vec![2u8; 100_000]).unwrap();
        let dropped = caches.evict();
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert!(dropped[0].starts_with(&format!("{PROJECT}-staging")), "{dropped:?}");
        assert!(!old.dir.exists() && new.dir.exists());
        let again = caches.open(PROJECT, "production", 0, None).unwrap().unwrap();
        assert!(again.before().contains("from earlier builds"), "{}", again.before());
        // Cleared: the next generation starts empty, and the older one goes
        // (not another environment's, whose name starts the same).
        let other = caches.open(PROJECT, "production-eu", 0, None).unwrap().unwrap();
        std::fs::write(other.dir.join("blob"), b"kept").unwrap();
        let cleared = caches.open(PROJECT, "production", 1, None).unwrap().unwrap();
        assert!(cleared.before().contains("empty"), "{}", cleared.before());
        assert!(!again.dir.exists() && other.dir.join("blob").exists());
        assert!(
            Caches::new(workdir.path(), 0, None)
                .open(PROJECT, "production", 0, None)
                .unwrap()
                .is_none()
        );
    }
}
