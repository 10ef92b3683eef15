//! Disk bounds for what tenants write. Each deployment's working directory
//! and each build cache is a filesystem of its own: a sparse ext4 image in
//! the runner's directory, loop-mounted `nosuid,nodev`, of
//! `DEPLOY_SANDBOX_DISK_MB`. A build that fills it gets "No space left on
//! device" in its own tree, and the host's disk — PostgreSQL's, the other
//! tenants' — is untouched; blocks and inodes are bounded alike. An image
//! takes only the blocks written to it.
//!
//! The image is held under an exclusive lock for as long as it is mounted:
//! a cache in use is not mounted twice (a second build of the same
//! environment builds without it), eviction passes it by, and what a
//! runner that died left mounted is found by its lock being free.
//!
//! Where loop devices cannot be used (a runner that is not root, a host
//! without `/dev/loop-control`), working directories and caches are plain
//! directories and each deployment's log says that disk use is unbounded.

use std::{
    fs::File,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use nix::fcntl::{Flock, FlockArg};

/// Loop-mounted filesystems, when this runner can make them.
#[derive(Debug, Clone)]
pub struct Disks {
    mkfs: PathBuf,
    mount: PathBuf,
    umount: PathBuf,
    /// The size of each filesystem.
    bytes: u64,
}

impl Disks {
    /// Filesystems of `bytes` each, when this process may loop-mount; why
    /// not otherwise.
    pub fn detect(bytes: u64) -> Result<Self, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("the runner is not root".to_owned());
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err("the host has no loop devices (/dev/loop-control)".to_owned());
        }
        Ok(Self {
            mkfs: crate::tools::find("mkfs.ext4", "e2fsprogs")?,
            mount: crate::tools::find("mount", "mount")?,
            umount: crate::tools::find("umount", "mount")?,
            bytes,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The same, with filesystems of at most `bytes`.
    pub fn at_most(&self, bytes: u64) -> Self {
        Self {
            bytes: self.bytes.min(bytes),
            ..self.clone()
        }
    }

    /// Locks the image `image` when no one holds it.
    pub fn lock(image: &Path) -> Option<Flock<File>> {
        let file = File::options().read(true).write(true).open(image).ok()?;
        Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()
    }

    /// Mounts the image `image` (made, or made again when its size is not
    /// this runner's) at the empty directory `at`, its root owned by
    /// `owner`. `WouldBlock` when another holds the image.
    pub fn mount(&self, image: &Path, at: &Path, owner: Option<u32>) -> std::io::Result<Volume> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            // An image is never reached through a link.
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(image)?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| std::io::Error::from(errno))?;
        // What a runner that died left mounted here is no one's now.
        if mounted(at) {
            self.unmount(at);
        }
        let fresh = lock.metadata()?.len() != self.bytes;
        if fresh {
            lock.set_len(0)?;
            lock.set_len(self.bytes)?;
            let id = owner.unwrap_or(0);
            run(Command::new(&self.mkfs)
                .args([
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-m",
                    "0",
                    "-i",
                    "8192",
                    "-O",
                    "^has_journal",
                    "-E",
                ])
                .arg(format!("root_owner={id}:{id},nodiscard"))
                .arg(image))?;
        }
        run(Command::new(&self.mount)
            .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
            .arg(image)
            .arg(at))?;
        let volume = Volume {
            _mount: Mount {
                at: at.to_path_buf(),
                umount: self.umount.clone(),
            },
            _lock: lock,
        };
        if fresh {
            std::fs::remove_dir(at.join("lost+found"))?;
        }
        Ok(volume)
    }

    fn unmount(&self, at: &Path) {
        unmount(&self.umount, at);
    }

    /// Working directories that a runner which died left behind in
    /// `workdir` (their images unlocked): unmounted and removed; and its
    /// build caches left mounted, unmounted (they are kept).
    pub fn sweep(&self, workdir: &Path) {
        let caches = std::fs::read_dir(workdir.join(".cache"))
            .into_iter()
            .flatten()
            .flatten();
        for entry in caches {
            let image = entry.path();
            if image.extension().is_none_or(|ext| ext != "img") {
                continue;
            }
            let Some(_lock) = Self::lock(&image) else {
                continue;
            };
            let at = image.with_extension("");
            if mounted(&at) {
                self.unmount(&at);
            }
        }
        let Ok(entries) = std::fs::read_dir(images(workdir)) else {
            return;
        };
        for entry in entries.flatten() {
            let image = entry.path();
            let Some(_lock) = Self::lock(&image) else {
                continue;
            };
            if let Some(name) = image.file_stem() {
                let at = workdir.join(name);
                if mounted(&at) {
                    self.unmount(&at);
                }
                let _ = std::fs::remove_dir_all(&at);
            }
            let _ = std::fs::remove_file(&image);
        }
    }
}

/// Where the working directories' images are kept.
fn images(workdir: &Path) -> PathBuf {
    workdir.join(".disks")
}

/// A mounted filesystem, its image locked: unmounted, then unlocked, when
/// dropped (fields drop in order).
#[derive(Debug)]
pub struct Volume {
    _mount: Mount,
    _lock: Flock<File>,
}

#[derive(Debug)]
struct Mount {
    at: PathBuf,
    umount: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        unmount(&self.umount, &self.at);
    }
}

/// The size in MiB of the filesystem `dir` is on, when it is (nearly)
/// full: less than 1 MiB or 16 inodes left.
pub fn full(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    let bytes = |blocks: u64| blocks.saturating_mul(stat.fragment_size());
    (bytes(stat.blocks_available()) < 1 << 20 || stat.files_available() < 16).then(|| bytes(stat.blocks()) >> 20)
}

/// Unmounts `at`; lazily when something still holds it open.
fn unmount(umount: &Path, at: &Path) {
    if run(Command::new(umount).arg(at)).is_err() {
        let _ = run(Command::new(umount).arg("-l").arg(at));
    }
}

/// Whether `dir` is a mount point (on another device than its parent).
fn mounted(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(own), Some(Ok(parent))) = (
        std::fs::symlink_metadata(dir),
        dir.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    own.is_dir() && own.dev() != parent.dev()
}

/// Runs a host tool with an empty environment; its error output on failure.
fn run(command: &mut Command) -> std::io::Result<()> {
    let output = command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .output()?;
    match output.status.success() {
        true => Ok(()),
        false => Err(std::io::Error::other(format!(
            "{:?} failed: {}",
            command.get_program(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
    }
}

/// A deployment's working directory on the host, with its filesystem
/// when the runner bounds disks: everything goes when it is dropped.
#[derive(Debug)]
pub struct Workspace {
    dir: PathBuf,
    bytes: u64,
    volume: Option<Volume>,
    image: Option<PathBuf>,
}

impl Workspace {
    /// A fresh directory for `deployment_id` in `workdir`, on a
    /// filesystem of its own when `disks` are.
    pub fn create(workdir: &Path, deployment_id: &str, disks: Option<&Disks>) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{deployment_id}-"))
            .tempdir_in(workdir)?
            .keep();
        let mut workspace = Self {
            dir,
            bytes: disks.map_or(0, Disks::bytes),
            volume: None,
            image: None,
        };
        if let Some(disks) = disks {
            let images = images(workdir);
            crate::host::runner_dir(&images, 0o700)?;
            let name = workspace.dir.file_name().unwrap_or_default();
            let image = images.join(format!("{}.img", name.to_string_lossy()));
            workspace.image = Some(image.clone());
            workspace.volume = Some(disks.mount(&image, &workspace.dir, None)?);
        }
        Ok(workspace)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Its size, when it is a filesystem of its own.
    pub fn bounded(&self) -> Option<u64> {
        self.volume.as_ref().map(|_| self.bytes)
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        drop(self.volume.take());
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root only (loop devices); elsewhere the test says so and passes.
    fn disks(bytes: u64) -> Option<Disks> {
        Disks::detect(bytes)
            .inspect_err(|why| eprintln!("no loop-mounted disks here: {why}"))
            .ok()
    }

    #[test]
    fn a_workspace_is_bounded_and_leaves_nothing_behind() {
        let Some(disks) = disks(16 << 20) else { return };
        let workdir = tempfile::tempdir().unwrap();
        let workspace = Workspace::create(workdir.path(), "d1", Some(&disks)).unwrap();
        let dir = workspace.path().to_path_buf();
        assert!(mounted(&dir), "a filesystem of its own");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "empty, no lost+found");
        assert!(workspace.bounded() == Some(16 << 20) && full(&dir).is_none());
        // Writing past its size fails in the workspace, not on the host.
        let err = std::fs::write(dir.join("big"), vec![1u8; 32 << 20]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
        assert!(full(&dir).is_some_and(|mib| mib <= 16), "the log can say why");
        drop(workspace);
        assert!(!dir.exists());
        assert_eq!(std::fs::read_dir(images(workdir.path())).unwrap().count(), 0);
    }

    #[test]
    fn an_image_in_use_is_not_mounted_twice_and_a_dead_runners_is_swept() {
        let Some(disks) = disks(16 << 20) else { return };
        let workdir = tempfile::tempdir().unwrap();
        let (image, at, again) = (
            workdir.path().join("cache.img"),
            workdir.path().join("cache"),
            workdir.path().join("again"),
        );
        std::fs::create_dir(&at).unwrap();
        std::fs::create_dir(&again).unwrap();
        let volume = disks.mount(&image, &at, Some(4242)).unwrap();
        std::fs::write(at.join("kept"), b"between builds").unwrap();
        let busy = disks.mount(&image, &again, None).unwrap_err();
        assert_eq!(busy.kind(), std::io::ErrorKind::WouldBlock, "{busy}");
        drop(volume);
        assert!(!mounted(&at));
        // Mounted again: what it held is there, and its owner kept.
        let volume = disks.mount(&image, &at, None).unwrap();
        assert_eq!(std::fs::read(at.join("kept")).unwrap(), b"between builds");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&at).unwrap().uid(), 4242);
        drop(volume);

        // A workspace whose runner died: mounted, its image unlocked.
        let workspace = Workspace::create(workdir.path(), "d2", Some(&disks)).unwrap();
        let dir = workspace.path().to_path_buf();
        let mut workspace = std::mem::ManuallyDrop::new(workspace);
        // Its lock goes as with the runner's process, the mount stays.
        let Volume {
            _mount: mount,
            _lock: lock,
        } = workspace.volume.take().unwrap();
        std::mem::forget(mount);
        drop(lock);
        assert!(mounted(&dir));
        disks.sweep(workdir.path());
        assert!(!dir.exists(), "unmounted and removed");
        assert_eq!(std::fs::read_dir(images(workdir.path())).unwrap().count(), 0);
    }
}
