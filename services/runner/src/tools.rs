//! The host programs the runner starts around a user's command — prlimit,
//! bwrap, nsenter, socat — found once, by absolute path, in the system's
//! own directories, and used only when no one but root (or the runner's own
//! user) can replace them or any directory above them. Nothing a tenant
//! sets chooses them: they are never looked up through a `PATH`, and they
//! start with an empty environment (the sandbox builds the tenant's).

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Where the tools are looked for, in this order.
const SYSTEM_BIN: &[&str] = &["/usr/bin", "/usr/sbin", "/bin", "/sbin"];

/// The tools, by checked absolute path.
#[derive(Debug, Clone)]
pub struct Tools {
    /// util-linux: sets the rlimits, then runs bwrap.
    pub prlimit: PathBuf,
    /// bubblewrap: the sandbox.
    pub bwrap: PathBuf,
    /// util-linux: starts the connector in an app's network namespace.
    pub nsenter: PathBuf,
    /// socat: the connector between the runner's socket and the app's port.
    pub socat: PathBuf,
    /// sh: joins a sandbox to its cgroup before prlimit.
    pub sh: PathBuf,
}

impl Tools {
    /// Finds every tool, or says which is missing or untrusted and why.
    pub fn find() -> Result<Self, String> {
        Ok(Self {
            prlimit: find("prlimit", "util-linux")?,
            bwrap: find("bwrap", "bubblewrap")?,
            nsenter: find("nsenter", "util-linux")?,
            socat: find("socat", "socat")?,
            sh: find("sh", "dash")?,
        })
    }
}

pub(crate) fn find(name: &str, package: &str) -> Result<PathBuf, String> {
    let mut refused = None;
    for dir in SYSTEM_BIN {
        let Ok(path) = Path::new(dir).join(name).canonicalize() else {
            continue;
        };
        match trusted(&path) {
            Ok(()) => return Ok(path),
            Err(why) => refused = Some(why),
        }
    }
    Err(refused.unwrap_or_else(|| {
        format!(
            "the `{name}` command (Debian package `{package}`) is not installed in {}",
            SYSTEM_BIN.join(", ")
        )
    }))
}

/// Whether `path` is an executable that only root or this process's user
/// can change: the file and every directory above it.
fn trusted(path: &Path) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    let metadata = std::fs::metadata(path).map_err(|err| format!("{}: {err}", path.display()))?;
    if !metadata.is_file() || metadata.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not an executable file", path.display()));
    }
    for part in path.ancestors() {
        let metadata = std::fs::metadata(part).map_err(|err| format!("{}: {err}", part.display()))?;
        if metadata.uid() != 0 && metadata.uid() != me {
            return Err(format!(
                "{} belongs to uid {}, so {} cannot be trusted",
                part.display(),
                metadata.uid(),
                path.display()
            ));
        }
        if metadata.mode() & 0o022 != 0 {
            return Err(format!(
                "{} is writable by other users, so {} cannot be trusted",
                part.display(),
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_in_a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("prlimit");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let why = trusted(&tool).unwrap_err();
        assert!(why.contains("writable by other users"), "{why}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(trusted(&tool).unwrap_err().contains("not an executable"));
    }
}
