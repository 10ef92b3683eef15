//! Stack detection: when a project leaves its build or start command
//! empty, the runner reads the checked-out tree and makes a build plan —
//! the stack, the commands, and why — shown in the deployment's logs.
//!
//! A `Procfile` wins for what it names (`web` starts the app, `release` is
//! the release command); otherwise, in order: Node (`package.json`: npm,
//! yarn or pnpm by lockfile, `npm ci` with a lockfile, the `build` script
//! if any, the `start` script or `node <main>`), Python (`requirements.txt`
//! or `pyproject.toml` into a virtualenv; gunicorn, uvicorn, flask or
//! `python app.py`), Go (`go.mod`), Rust (`Cargo.toml`), and a static site
//! (`index.html`). Toolchains are the host's: each command first checks
//! that its tool is there and otherwise fails naming it.
//!
//! The tree is the tenant's, read before any of its code runs: files are
//! read only when neither they nor a directory on the way is a symbolic
//! link, at most 64 KiB each, and nothing of their content but what the
//! plan needs (a script's presence, a package's name) is used.

use std::{
    io::Read,
    os::unix::fs::OpenOptionsExt,
    path::{Component, Path},
};

/// The most of one file detection reads.
const MAX_FILE: u64 = 64 * 1024;

/// What the runner will run, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// `node`, `python`, `go`, `rust`, `static`, or `procfile` alone.
    pub stack: String,
    pub build: String,
    pub start: String,
    pub release: String,
    /// One reason per decision, in words.
    pub why: Vec<String>,
}

impl Plan {
    /// The plan as log lines.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!("build plan: {} ({})", self.stack, self.why.join("; "))];
        for (what, command) in [
            ("build", &self.build),
            ("release", &self.release),
            ("start", &self.start),
        ] {
            if !command.is_empty() {
                lines.push(format!("build plan: {what}: {command}"));
            }
        }
        lines
    }
}

/// The plan for the tree at `root` (the project's root directory in the
/// checkout), filling only what the project left empty; `None` when
/// nothing is empty or nothing is recognised.
pub fn detect(root: &Path, build: &str, start: &str, release: &str) -> Option<Plan> {
    let (want_build, want_start) = (build.trim().is_empty(), start.trim().is_empty());
    if !want_build && !want_start {
        return None;
    }
    let tree = Tree { root };
    let procfile = tree.read("Procfile").map(|text| procfile(&text)).unwrap_or_default();
    let mut plan = stack(&tree)?;
    if let Some(web) = procfile.iter().find(|(name, _)| name == "web") {
        plan.start = web.1.clone();
        plan.why.push("the Procfile's web process starts the app".to_owned());
    }
    if let Some(step) = procfile.iter().find(|(name, _)| name == "release") {
        plan.release = step.1.clone();
        plan.why
            .push("the Procfile's release process runs before it".to_owned());
    }
    if !want_build {
        plan.build = build.to_owned();
    }
    if !want_start {
        plan.start = start.to_owned();
    }
    if !release.trim().is_empty() {
        plan.release = release.to_owned();
    }
    Some(plan)
}

/// The stack the tree's files name, with its commands.
fn stack(tree: &Tree<'_>) -> Option<Plan> {
    if let Some(manifest) = tree.read("package.json") {
        return Some(node(tree, &manifest));
    }
    if tree.has("requirements.txt") || tree.has("pyproject.toml") {
        return Some(python(tree));
    }
    if tree.has("go.mod") {
        return Some(Plan {
            stack: "go".to_owned(),
            build: needs("go", "go build -o .capsule/app ."),
            start: "exec ./.capsule/app".to_owned(),
            why: vec!["go.mod: a Go module, built with the host's go".to_owned()],
            ..Plan::default()
        });
    }
    if let Some(manifest) = tree.read("Cargo.toml") {
        let name = toml::from_str::<toml::Table>(&manifest).ok().and_then(|table| {
            let name = table.get("package")?.get("name")?.as_str()?.to_owned();
            safe_name(&name).then_some(name)
        })?;
        return Some(Plan {
            stack: "rust".to_owned(),
            // The binary leaves the target directory (the build cache's)
            // for the release.
            build: needs(
                "cargo",
                &format!(
                    "cargo build --release && mkdir -p .capsule && cp \"${{CARGO_TARGET_DIR:-target}}/release/{name}\" .capsule/app"
                ),
            ),
            start: "exec ./.capsule/app".to_owned(),
            why: vec![format!(
                "Cargo.toml: the Rust package {name}, built with the host's cargo"
            )],
            ..Plan::default()
        });
    }
    if tree.has("index.html") {
        return Some(Plan {
            stack: "static".to_owned(),
            start: "exec python3 -m http.server --bind 0.0.0.0 \"$PORT\"".to_owned(),
            why: vec!["index.html: a static site, served as it is".to_owned()],
            ..Plan::default()
        });
    }
    if tree.has("Procfile") {
        return Some(Plan {
            stack: "procfile".to_owned(),
            why: vec!["a Procfile and no stack Capsule knows".to_owned()],
            ..Plan::default()
        });
    }
    None
}

fn node(tree: &Tree<'_>, manifest: &str) -> Plan {
    let package: serde_json::Value = serde_json::from_str(manifest).unwrap_or_default();
    let script = |name: &str| package.get("scripts").and_then(|scripts| scripts.get(name)).is_some();
    let (manager, install, why) = if tree.has("pnpm-lock.yaml") {
        ("pnpm", "pnpm install --frozen-lockfile", "pnpm-lock.yaml: pnpm")
    } else if tree.has("yarn.lock") {
        ("yarn", "yarn install --frozen-lockfile", "yarn.lock: yarn")
    } else if tree.has("package-lock.json") || tree.has("npm-shrinkwrap.json") {
        ("npm", "npm ci", "package-lock.json: npm ci")
    } else {
        ("npm", "npm install", "package.json without a lockfile: npm install")
    };
    let mut why = vec![why.to_owned()];
    let mut build = install.to_owned();
    if script("build") {
        build.push_str(&format!(" && {manager} run build"));
        why.push("the build script builds it".to_owned());
    }
    let start = if script("start") {
        why.push("the start script starts it".to_owned());
        format!("exec {manager} start")
    } else {
        let main = package
            .get("main")
            .and_then(|main| main.as_str())
            .filter(|main| safe_path(main) && tree.has(main))
            .map(str::to_owned)
            .or_else(|| {
                ["server.js", "index.js", "app.js", "main.js"]
                    .into_iter()
                    .find(|file| tree.has(file))
                    .map(str::to_owned)
            });
        match main {
            Some(main) => {
                why.push(format!("{main} starts it"));
                format!("exec node {main}")
            }
            None => String::new(),
        }
    };
    Plan {
        stack: "node".to_owned(),
        build: needs(manager, &build),
        start,
        why,
        ..Plan::default()
    }
}

fn python(tree: &Tree<'_>) -> Plan {
    let requirements = tree.read("requirements.txt").unwrap_or_default().to_ascii_lowercase();
    let (install, mut why) = if tree.has("requirements.txt") {
        (
            ".venv/bin/pip install -r requirements.txt",
            vec!["requirements.txt: pip into a virtualenv".to_owned()],
        )
    } else {
        (
            ".venv/bin/pip install .",
            vec!["pyproject.toml: pip into a virtualenv".to_owned()],
        )
    };
    let wants = |package: &str| {
        requirements.lines().any(|line| {
            let name = line
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .next();
            name == Some(package)
        })
    };
    let module = ["app.py", "main.py", "wsgi.py", "server.py"]
        .into_iter()
        .find(|file| tree.has(file));
    let start = match module.map(|file| file.trim_end_matches(".py")) {
        Some(module) if wants("gunicorn") => {
            why.push(format!("gunicorn serves {module}:app"));
            format!("exec .venv/bin/gunicorn --bind 0.0.0.0:\"$PORT\" {module}:app")
        }
        Some(module) if wants("uvicorn") => {
            why.push(format!("uvicorn serves {module}:app"));
            format!("exec .venv/bin/uvicorn {module}:app --host 0.0.0.0 --port \"$PORT\"")
        }
        Some(module) if wants("flask") => {
            why.push(format!("flask serves {module}:app"));
            format!("exec .venv/bin/flask --app {module} run --host 0.0.0.0 --port \"$PORT\"")
        }
        Some(module) => {
            why.push(format!("{module}.py starts it"));
            format!("exec .venv/bin/python {module}.py")
        }
        None => String::new(),
    };
    Plan {
        stack: "python".to_owned(),
        build: needs("python3", &format!("python3 -m venv .venv && {install}")),
        start,
        why,
        ..Plan::default()
    }
}

/// `command`, after a check that `tool` is installed that fails naming it.
fn needs(tool: &str, command: &str) -> String {
    format!(
        "command -v {tool} >/dev/null || {{ echo \"capsule: this app needs {tool}, which this runner does not have\" >&2; exit 127; }}; {command}"
    )
}

/// The workers of the tree at `root`: the project's process types without
/// a schedule, then the Procfile's entries other than web and release
/// whose names the project's settings do not use; each as (name, command).
pub fn workers(
    root: &Path,
    settings: &std::collections::HashMap<String, capsule::proto::project::v1::ProcessType>,
) -> Vec<(String, String)> {
    let tree = Tree { root };
    let procfile = tree.read("Procfile").map(|text| procfile(&text)).unwrap_or_default();
    let mut set: Vec<(String, String)> = settings
        .iter()
        .filter(|(_, process)| process.schedule.is_empty())
        .map(|(name, process)| (name.clone(), process.command.clone()))
        .collect();
    set.sort();
    set.extend(
        procfile
            .into_iter()
            .filter(|(name, _)| !matches!(name.as_str(), "web" | "release") && !settings.contains_key(name)),
    );
    set
}

/// `web: command` lines.
fn procfile(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (name, command) = line.split_once(':')?;
            let name = name.trim();
            let command = command.trim();
            (!name.starts_with('#') && safe_name(name) && !command.is_empty())
                .then(|| (name.to_owned(), command.to_owned()))
        })
        .collect()
}

/// A package or process name Capsule puts in a command.
fn safe_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A relative path of plain components.
fn safe_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 200
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

/// The tenant's tree, read without following links.
struct Tree<'a> {
    root: &'a Path,
}

impl Tree<'_> {
    /// Whether `name` is a regular file reached through no link.
    fn has(&self, name: &str) -> bool {
        self.regular(name).is_some()
    }

    fn regular(&self, name: &str) -> Option<std::path::PathBuf> {
        if !safe_path(name) {
            return None;
        }
        let mut path = self.root.to_path_buf();
        for component in Path::new(name).components() {
            path.push(component);
            let metadata = std::fs::symlink_metadata(&path).ok()?;
            if metadata.file_type().is_symlink() {
                return None;
            }
        }
        std::fs::symlink_metadata(&path).ok()?.is_file().then_some(path)
    }

    /// The text of `name`, at most [`MAX_FILE`] bytes of it.
    fn read(&self, name: &str) -> Option<String> {
        let path = self.regular(name)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(path)
            .ok()?;
        let mut text = String::new();
        file.take(MAX_FILE).read_to_string(&mut text).ok()?;
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn plan(files: &[(&str, &str)]) -> Option<Plan> {
        detect(tree(files).path(), "", "", "")
    }

    #[test]
    fn node_apps_are_built_by_their_lockfile_and_started_by_their_script() {
        let express = plan(&[
            ("package.json", r#"{"name":"x","scripts":{"start":"node index.js"}}"#),
            ("package-lock.json", "{}"),
            ("index.js", ""),
        ])
        .unwrap();
        assert_eq!(express.stack, "node");
        assert!(express.build.ends_with("; npm ci"), "{}", express.build);
        assert_eq!(express.start, "exec npm start");
        let built = plan(&[
            ("package.json", r#"{"scripts":{"build":"tsc"},"main":"dist/server.js"}"#),
            ("yarn.lock", ""),
            ("dist/server.js", ""),
        ])
        .unwrap();
        assert!(
            built
                .build
                .ends_with("yarn install --frozen-lockfile && yarn run build"),
            "{}",
            built.build
        );
        assert_eq!(built.start, "exec node dist/server.js");
        let bare = plan(&[("package.json", "{}"), ("server.js", "")]).unwrap();
        assert!(bare.build.ends_with("; npm install"));
        assert_eq!(bare.start, "exec node server.js");
    }

    #[test]
    fn python_apps_get_a_virtualenv_and_the_server_they_list() {
        let flask = plan(&[("requirements.txt", "Flask==3.0.3\ngunicorn>=22\n"), ("app.py", "")]).unwrap();
        assert_eq!(flask.stack, "python");
        assert!(
            flask
                .build
                .ends_with("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt")
        );
        assert_eq!(flask.start, "exec .venv/bin/gunicorn --bind 0.0.0.0:\"$PORT\" app:app");
        let fastapi = plan(&[("requirements.txt", "fastapi\nuvicorn[standard]\n"), ("main.py", "")]).unwrap();
        assert!(fastapi.start.contains("uvicorn main:app"), "{}", fastapi.start);
        let flask_only = plan(&[("requirements.txt", "flask\n"), ("app.py", "")]).unwrap();
        assert!(flask_only.start.contains("flask --app app run"), "{}", flask_only.start);
    }

    #[test]
    fn go_rust_static_and_the_procfile() {
        assert_eq!(plan(&[("go.mod", "module x")]).unwrap().start, "exec ./.capsule/app");
        let rust = plan(&[("Cargo.toml", "[package]\nname = \"hello-web\"\n")]).unwrap();
        assert_eq!(rust.start, "exec ./.capsule/app");
        assert!(
            rust.build.contains("/release/hello-web\" .capsule/app"),
            "{}",
            rust.build
        );
        assert!(
            plan(&[("Cargo.toml", "[package]\nname = \"a;rm -rf\"\n")]).is_none(),
            "no name spliced"
        );
        assert_eq!(plan(&[("index.html", "")]).unwrap().stack, "static");
        let procfile = plan(&[
            ("package.json", "{}"),
            ("Procfile", "web: node web.js\nrelease: node migrate.js\n# worker: no\n"),
        ])
        .unwrap();
        assert_eq!(procfile.start, "node web.js");
        assert_eq!(procfile.release, "node migrate.js");
        assert!(plan(&[("README.md", "")]).is_none());
    }

    #[test]
    fn workers_come_from_the_settings_then_the_procfile() {
        use capsule::proto::project::v1::ProcessType;
        let dir = tree(&[(
            "Procfile",
            "web: node web.js\nrelease: node migrate.js\nworker: node jobs.js\nmail: node mail.js\n",
        )]);
        let set = |name: &str, command: &str, schedule: &str| {
            let process = ProcessType {
                command: command.to_owned(),
                schedule: schedule.to_owned(),
                time_zone: String::new(),
            };
            (name.to_owned(), process)
        };
        let settings = [
            set("mail", "node mailer.js", ""),
            set("report", "node report.js", "0 3 * * *"),
        ]
        .into();
        assert_eq!(
            workers(dir.path(), &settings),
            [
                ("mail".to_owned(), "node mailer.js".to_owned()),
                ("worker".to_owned(), "node jobs.js".to_owned())
            ]
        );
        assert!(workers(tree(&[]).path(), &Default::default()).is_empty());
    }

    #[test]
    fn what_the_project_set_stands_and_links_are_not_followed() {
        let dir = tree(&[("package.json", "{}"), ("index.js", "")]);
        let kept = detect(dir.path(), "make", "", "").unwrap();
        assert_eq!(kept.build, "make");
        assert_eq!(kept.start, "exec node index.js");
        assert!(detect(dir.path(), "make", "run", "").is_none());

        let linked = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", linked.path().join("package.json")).unwrap();
        std::os::unix::fs::symlink("/etc", linked.path().join("sub")).unwrap();
        assert!(detect(linked.path(), "", "", "").is_none(), "a link is no manifest");
        assert!(!Tree { root: linked.path() }.has("sub/hostname"), "nor a way through");
    }
}
