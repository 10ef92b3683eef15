//! What the runner keeps and reads on its host: directories that are its
//! own (never one another user made first in a shared `/tmp`), and the
//! host's process tree, where a sandbox is found by its bwrap.

use std::path::Path;

/// Makes `dir` (created if missing) the runner's: owned by this process's
/// user, with `mode` (0700: closed to everyone else; 0711: others may pass
/// through to what they know the name of, never list it). Refused when
/// someone else owns it, as another user could have made it first in a
/// shared `/tmp`.
pub fn runner_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir)?;
    let metadata = std::fs::symlink_metadata(dir)?;
    if !metadata.is_dir() || metadata.uid() != nix::unistd::geteuid().as_raw() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory of this service's user",
            dir.display()
        )));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// The processes whose parent is `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // "pid (comm) state ppid ...": comm may hold spaces.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|ppid| ppid.parse::<i32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// Every process of the host.
pub fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
