//! Git repositories for tests that deploy from git: a bare repository
//! under the root the tests' deploy service allows, and a clone to commit
//! into.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The root the tests' deploy service allows local repositories under
/// (`DEPLOY_LOCAL_REPOSITORIES`).
pub const REPOSITORIES: &str = "/tmp/capsule-test-repositories";

/// Runs git in `dir` as a fixed author; its trimmed output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=Ada Lovelace", "-c", "user.email=ada@example.com"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A bare repository and a working clone to commit into.
pub struct Repo {
    pub bare: PathBuf,
    work: PathBuf,
    _dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Self {
        std::fs::create_dir_all(REPOSITORIES).expect("the repositories root");
        let dir = tempfile::tempdir_in(REPOSITORIES).expect("a repository directory");
        let bare = dir.path().join("app.git");
        let work = dir.path().join("work");
        for path in [&bare, &work] {
            std::fs::create_dir_all(path).expect("a directory");
        }
        git(&bare, &["init", "--quiet", "--bare"]);
        git(&work, &["init", "--quiet"]);
        git(&work, &["remote", "add", "origin", &bare.display().to_string()]);
        Self { bare, work, _dir: dir }
    }

    /// The repository URL to give a project.
    pub fn url(&self) -> String {
        self.bare.display().to_string()
    }

    /// Commits every file of `tree` (a directory of the tests' fixtures)
    /// on `branch`, pushes it, and returns the commit.
    pub fn commit_tree(&self, branch: &str, tree: &Path, message: &str) -> String {
        git(&self.work, &["checkout", "--quiet", "-B", branch]);
        for entry in std::fs::read_dir(tree).expect("the fixture") {
            let entry = entry.expect("a fixture file");
            std::fs::copy(entry.path(), self.work.join(entry.file_name())).expect("a copy");
        }
        git(&self.work, &["add", "--all"]);
        git(&self.work, &["commit", "--quiet", "-m", message]);
        git(&self.work, &["push", "--quiet", "--force", "origin", branch]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Commits a symbolic link `name` → `target` on `branch`; the commit.
    pub fn commit_link(&self, branch: &str, name: &str, target: &str, message: &str) -> String {
        git(&self.work, &["checkout", "--quiet", "-B", branch]);
        std::os::unix::fs::symlink(target, self.work.join(name)).expect("a link");
        git(&self.work, &["add", name]);
        git(&self.work, &["commit", "--quiet", "-m", message]);
        git(&self.work, &["push", "--quiet", "--force", "origin", branch]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Commits `index.html` with `content` on `branch`, pushes it, and
    /// returns the commit.
    pub fn commit(&self, branch: &str, content: &str, message: &str) -> String {
        git(&self.work, &["checkout", "--quiet", "-B", branch]);
        std::fs::write(self.work.join("index.html"), content).expect("index.html");
        git(&self.work, &["add", "index.html"]);
        git(&self.work, &["commit", "--quiet", "-m", message]);
        git(&self.work, &["push", "--quiet", "--force", "origin", branch]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}
