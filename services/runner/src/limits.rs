//! Limits for a whole sandbox — every process of a deployment together —
//! through cgroups: memory (without swap), CPU time per period, and
//! processes. rlimits (`prlimit`) bound each process alone; a cgroup
//! bounds what a tenant's processes take from the others all at once, and
//! tells an out-of-memory kill apart from any other death.
//!
//! Each deployment gets a group `capsule-runner/<deployment>` in the v1
//! `memory`, `cpu` and `pids` hierarchies (what these hosts mount,
//! writable for root); its processes join it before bwrap starts — a
//! fixed shell writes its own pid into each group, then becomes the
//! launcher — so nothing of the tenant's runs outside it. Where no
//! hierarchy can be used (a runner that is not root, a host with only
//! cgroup v2 not delegated), the rlimits stand alone and every deployment's
//! log says so.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

/// Where the v1 hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The runner's own group in each hierarchy.
const PARENT: &str = "capsule-runner";
/// The CPU period the quota is a share of, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// A sandbox's share of the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub memory_bytes: u64,
    /// CPUs' worth of time, such as 0.5 or 2.
    pub cpus: f64,
    pub processes: u64,
}

/// The cgroups this runner can use.
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// The runner's group in the memory, cpu and pids hierarchies.
    parents: [PathBuf; 3],
}

impl Cgroups {
    /// The v1 hierarchies, when this process may make groups in all three;
    /// why not otherwise.
    pub fn detect() -> Result<Self, String> {
        let parents = ["memory", "cpu", "pids"].map(|controller| Path::new(CGROUP_ROOT).join(controller).join(PARENT));
        for parent in &parents {
            let controller = parent.parent().unwrap_or(parent);
            if !controller.join("cgroup.procs").is_file() {
                return Err(format!("no cgroup v1 hierarchy at {}", controller.display()));
            }
            std::fs::create_dir_all(parent).map_err(|err| format!("cannot make {}: {err}", parent.display()))?;
            // Groups an earlier run left (its apps ended with it), once
            // empty and an hour old: another runner's on this host may be
            // between two steps.
            for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                let stale = entry.metadata().is_ok_and(|metadata| {
                    metadata.is_dir()
                        && metadata
                            .modified()
                            .ok()
                            .and_then(|at| at.elapsed().ok())
                            .is_some_and(|age| age > std::time::Duration::from_secs(3600))
                });
                if stale {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        Ok(Self { parents })
    }

    /// A group for one deployment's processes, with `share`, which the
    /// sandbox user `owner` may join (its launcher joins as that user).
    pub fn group(&self, name: &str, share: Share, owner: Option<u32>) -> std::io::Result<Group> {
        let dirs = self.parents.clone().map(|parent| parent.join(name));
        for dir in &dirs {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(err),
            }
        }
        let group = Group { dirs, share };
        let [memory, cpu, pids] = &group.dirs;
        write(memory, "memory.limit_in_bytes", share.memory_bytes)?;
        // Without swap, where the kernel accounts it.
        let _ = write(memory, "memory.memsw.limit_in_bytes", share.memory_bytes);
        write(cpu, "cpu.cfs_period_us", CPU_PERIOD_US)?;
        write(
            cpu,
            "cpu.cfs_quota_us",
            ((share.cpus * CPU_PERIOD_US as f64) as u64).max(1000),
        )?;
        write(pids, "pids.max", share.processes)?;
        if let Some(owner) = owner {
            for dir in &group.dirs {
                std::os::unix::fs::chown(dir.join("cgroup.procs"), Some(owner), Some(owner))?;
            }
        }
        Ok(group)
    }
}

fn write(dir: &Path, file: &str, value: u64) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value.to_string())
}

/// One deployment's group; removed when dropped (its processes are gone
/// by then: they die with their sandbox).
#[derive(Debug)]
pub struct Group {
    dirs: [PathBuf; 3],
    share: Share,
}

impl Group {
    /// What the group's processes share.
    pub fn share(&self) -> Share {
        self.share
    }

    /// The files a process writes its pid to, to join.
    pub fn procs(&self) -> Vec<OsString> {
        self.dirs
            .iter()
            .map(|dir| dir.join("cgroup.procs").into_os_string())
            .collect()
    }

    /// How many times the kernel killed a process of the group for memory.
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.dirs[0].join("memory.oom_control"))
            .ok()
            .and_then(|control| {
                control
                    .lines()
                    .find_map(|line| line.strip_prefix("oom_kill "))
                    .and_then(|count| count.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// "out of memory at 512 MiB".
    pub fn out_of_memory(&self) -> String {
        format!("out of memory at {} MiB", self.share.memory_bytes / (1024 * 1024))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The shell a sandbox starts through when it has a group: it writes its
/// own pid into each of the group's files given before `--`, then becomes
/// the command after it. Fixed; every argument is the runner's.
pub const JOIN: &str =
    r#"while [ "$#" -gt 0 ] && [ "$1" != -- ]; do echo "$$" > "$1" || exit 125; shift; done; shift; exec "$@""#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_has_its_share_and_goes_away() {
        let Ok(cgroups) = Cgroups::detect() else {
            return;
        };
        let share = Share {
            memory_bytes: 64 * 1024 * 1024,
            cpus: 0.5,
            processes: 32,
        };
        let group = cgroups.group("unit-test-group", share, None).unwrap();
        let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap().trim().to_owned();
        assert_eq!(read(&group.dirs[0], "memory.limit_in_bytes"), "67108864");
        assert_eq!(read(&group.dirs[1], "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&group.dirs[2], "pids.max"), "32");
        assert_eq!(group.oom_kills(), 0);
        assert_eq!(group.out_of_memory(), "out of memory at 64 MiB");
        let dirs = group.dirs.clone();
        drop(group);
        assert!(dirs.iter().all(|dir| !dir.exists()));
    }
}
