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

/// What a test's git server saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub line: String,
    pub authorized: bool,
}

/// A git server over plain HTTP on `ip` (git's own `http-backend`, run
/// once per request), serving the bare repositories under `root` to
/// requests that bring `authorization` (a whole `Authorization` header
/// value) and refusing the rest with 401: a private repository.
pub fn serve_http(
    root: &Path,
    ip: &str,
    authorization: &'static str,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Seen>>>) {
    use std::io::{BufRead, BufReader, Read, Write};

    let listener = std::net::TcpListener::bind((ip, 0)).expect("a port for the git server");
    let addr = listener.local_addr().expect("its address");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (root, log) = (root.to_path_buf(), seen.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("the stream"));
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.trim_end().split_once(':') {
                    headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
                }
            }
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let authorized = header("authorization") == authorization;
            log.lock().unwrap().push(Seen {
                line: line.trim_end().to_owned(),
                authorized,
            });
            let mut stream = stream;
            if !authorized {
                let _ = stream.write_all(
                    b"HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\n\r\n",
                );
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            // A proxy sends the absolute form.
            let target = target
                .strip_prefix("http://")
                .and_then(|rest| rest.find('/').map(|slash| &rest[slash..]))
                .unwrap_or(target);
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let mut body = vec![0; header("content-length").parse().unwrap_or(0)];
            let _ = reader.read_exact(&mut body);
            let mut backend = Command::new("git")
                .arg("http-backend")
                .env("GIT_PROJECT_ROOT", &root)
                .env("GIT_HTTP_EXPORT_ALL", "1")
                .env("PATH_INFO", path)
                .env("QUERY_STRING", query)
                .env("REQUEST_METHOD", method)
                .env("CONTENT_TYPE", header("content-type"))
                .env("CONTENT_LENGTH", body.len().to_string())
                .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
                .env("GIT_PROTOCOL", header("git-protocol"))
                .env("REMOTE_USER", "tester")
                .env("REMOTE_ADDR", "127.0.0.1")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("git http-backend runs");
            let mut input = backend.stdin.take().expect("its input");
            let _ = input.write_all(&body);
            drop(input);
            let output = backend.wait_with_output().expect("its answer");
            let split = output
                .stdout
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|at| (at, 4))
                .or_else(|| output.stdout.windows(2).position(|w| w == b"\n\n").map(|at| (at, 2)));
            let Some((at, gap)) = split else {
                let _ = stream.write_all(b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n");
                continue;
            };
            let cgi = String::from_utf8_lossy(&output.stdout[..at]).to_string();
            let status = cgi
                .lines()
                .find_map(|line| line.strip_prefix("Status: "))
                .unwrap_or("200 OK")
                .to_owned();
            let rest: Vec<&str> = cgi.lines().filter(|line| !line.starts_with("Status: ")).collect();
            let _ = write!(
                stream,
                "HTTP/1.0 {status}\r\n{}\r\nConnection: close\r\n\r\n",
                rest.join("\r\n")
            );
            let _ = stream.write_all(&output.stdout[at + gap..]);
        }
    });
    (addr, seen)
}

/// OpenSSH's server on `ip` for one test, as a git host: it admits the
/// keys in `authorized` (one OpenSSH public-key line each) for the
/// current user, whose login runs `git-upload-pack` on the path asked for.
/// Stopped when dropped.
pub struct SshServer {
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl SshServer {
    pub fn start(ip: &str, authorized: &str) -> Self {
        let port = std::net::TcpListener::bind((ip, 0))
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        Self::start_on(ip, port, authorized)
    }

    /// [`SshServer::start`] on `port`, with a host key of its own.
    pub fn start_on(ip: &str, port: u16, authorized: &str) -> Self {
        let dir = tempfile::tempdir().expect("the server's directory");
        let host_key = dir.path().join("host_key");
        let keygen = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .status()
            .expect("ssh-keygen runs");
        assert!(keygen.success(), "a host key");
        let keys = dir.path().join("authorized_keys");
        std::fs::write(&keys, format!("{authorized}\n")).expect("authorized_keys");
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress {ip}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nLogLevel ERROR\n",
                host_key.display(),
                keys.display()
            ),
        )
        .expect("sshd_config");
        std::fs::create_dir_all("/run/sshd").expect("sshd's privilege separation directory");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .spawn()
            .expect("sshd runs (openssh-server: scripts/prerequisites installs it)");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect((ip, port)).is_err() {
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "sshd listens");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { port, child, _dir: dir }
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
