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

/// Whether no existing component of `relative`, below `base`, is a
/// symbolic link (components that do not exist yet are none).
pub fn no_links(base: &Path, relative: &str) -> bool {
    let mut path = base.to_path_buf();
    for component in Path::new(relative).components() {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.file_type().is_symlink() => return false,
            Ok(_) => {}
            Err(_) => return true,
        }
    }
    true
}

/// The sum of `measure` over everything under `root`, `root` included,
/// links never followed: what a tree takes, as the caller counts it.
pub fn tree_sum(root: &Path, measure: impl Fn(&std::fs::Metadata) -> u64) -> u64 {
    let mut total = 0u64;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        total = total.saturating_add(measure(&metadata));
        if metadata.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            pending.extend(entries.filter_map(Result::ok).map(|entry| entry.path()));
        }
    }
    total
}

/// The bytes of the files under `root` at their apparent size (a sparse
/// file counts at the size it reads as).
pub fn file_bytes(root: &Path) -> u64 {
    tree_sum(root, |metadata| if metadata.is_dir() { 0 } else { metadata.len() })
}

/// `Some` for a UUID in its usual text form (hex digits and hyphens, 36
/// characters).
pub fn uuid_like(value: &str) -> Option<()> {
    (value.len() == 36 && value.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then_some(())
}

/// Hands a tree to the sandbox user `id`, without following links.
pub fn give_to(dir: &Path, id: u32) -> std::io::Result<()> {
    let uid = Some(nix::unistd::Uid::from_raw(id));
    let gid = Some(nix::unistd::Gid::from_raw(id));
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &path,
            uid,
            gid,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        let metadata = std::fs::symlink_metadata(&path)?;
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_on_the_way_is_found_and_what_does_not_exist_is_none() {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(base.path().join("web/public")).unwrap();
        std::os::unix::fs::symlink("/etc", base.path().join("etc")).unwrap();
        assert!(no_links(base.path(), "web/public"));
        assert!(no_links(base.path(), "web/not-yet"));
        assert!(no_links(base.path(), ""));
        assert!(!no_links(base.path(), "etc"));
        assert!(!no_links(base.path(), "etc/ssl"));
    }
}
