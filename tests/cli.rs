//! The users' `capsule` command against a real mesh, run as a user would
//! from a project directory: sign in, create and link a project, set
//! variables (a secret never echoed), deploy and follow it until live,
//! read the log, deploy again and roll back, make an API token and use it,
//! `--json` everywhere it reads; and the one-line errors.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use capsule::config::ServiceKind;
use common::git::{REPOSITORIES, Repo};

/// The `capsule` binary beside this test's (both built by the workspace's
/// test run).
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap()
    } else {
        dir
    };
    dir.join("capsule")
}

struct User {
    home: tempfile::TempDir,
    api: String,
}

impl User {
    fn dir(&self) -> PathBuf {
        self.home.path().join("app")
    }

    /// `capsule <args>` as the user runs it, in the project directory.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command
            .args(args)
            .current_dir(self.dir())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("CAPSULE_API_URL", &self.api);
        command
    }

    /// `capsule <args>` in the project directory, `input` on its stdin.
    async fn run(&self, args: &[&str], input: &str, env: &[(&str, &str)]) -> Output {
        let mut command = self.command(args);
        command
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let input = input.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().unwrap();
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }

    /// Like `run`, and it must succeed: its stdout.
    async fn ok(&self, args: &[&str], input: &str) -> String {
        let output = self.run(args, input, &[]).await;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        assert!(output.status.success(), "capsule {args:?}:\n{stdout}\n{stderr}");
        stdout
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_in_deploys_from_a_linked_directory_and_rolls_back() {
    let mesh = common::start_with(common::Options {
        local_runner: true,
        deploy: vec![
            ("DEPLOY_LOCAL_REPOSITORIES", REPOSITORIES),
            ("DEPLOY_DRAIN_SECS", "1"),
            ("DEPLOY_START_TIMEOUT_SECS", "20"),
        ],
        ..Default::default()
    })
    .await;
    mesh.user("cli@example.com").await;
    let user = User {
        home: tempfile::tempdir().unwrap(),
        api: format!("http://{}", mesh.addr(ServiceKind::Gateway)),
    };
    std::fs::create_dir_all(user.dir()).unwrap();

    // Signed out, every command says what to do, in one line.
    let output = user.run(&["projects"], "", &[]).await;
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(said.trim(), "capsule: not signed in: run `capsule login`");
    let output = user
        .run(
            &["login", "--email", "cli@example.com", "--password-stdin"],
            "wrong password\n",
            &[],
        )
        .await;
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && said.lines().count() == 1, "{said}");

    let signed_in = user
        .ok(
            &["login", "--email", "cli@example.com", "--password-stdin"],
            &format!("{}\n", common::PASSWORD),
        )
        .await;
    assert!(signed_in.contains("Signed in as cli@example.com"), "{signed_in}");
    let config = user.home.path().join("config").join("capsule");
    assert_eq!((mode(&config), mode(&config.join("credentials.json"))), (0o700, 0o600));
    // The session goes nowhere else, and nothing goes in the clear over a
    // network (refused before any packet is sent).
    let elsewhere = user.run(&["projects", "--api", "http://127.0.0.9:1"], "", &[]).await;
    let said = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(said.contains("run `capsule login --api http://127.0.0.9:1`"), "{said}");
    let clear = user
        .run(
            &[
                "login",
                "--api",
                "http://api.example.com",
                "--email",
                "cli@example.com",
                "--password-stdin",
            ],
            "x\n",
            &[],
        )
        .await;
    let said = String::from_utf8_lossy(&clear.stderr);
    assert!(
        !clear.status.success() && said.contains("in the clear: use https://"),
        "{said}"
    );
    let me: serde_json::Value = serde_json::from_str(&user.ok(&["whoami", "--json"], "").await).unwrap();
    assert_eq!(me["email"], "cli@example.com");

    // A project whose repository holds a Procfile, linked to the directory.
    let repo = Repo::new();
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(
        tree.path().join("Procfile"),
        "web: exec python3 -m http.server \"$PORT\"\n",
    )
    .unwrap();
    std::fs::write(tree.path().join("index.html"), "first\n").unwrap();
    repo.commit_tree("main", tree.path(), "first");
    user.ok(
        &["projects", "create", "cli app", "--repository", &repo.url(), "--link"],
        "",
    )
    .await;
    let linked: serde_json::Value = serde_json::from_str(&user.ok(&["link", "--json"], "").await).unwrap();
    assert_eq!(linked["name"], "cli app");

    // Variables: a secret's value comes from stdin and is never printed.
    user.ok(&["env", "set", "GREETING=hello", "PLAIN=1"], "").await;
    let secret = user
        .run(&["env", "set", "--secret", "API_KEY"], "s3cret-value\n", &[])
        .await;
    assert!(secret.status.success());
    let printed = [secret.stdout, secret.stderr].concat();
    assert!(!String::from_utf8_lossy(&printed).contains("s3cret-value"));
    user.ok(&["env", "unset", "PLAIN"], "").await;
    let variables: serde_json::Value = serde_json::from_str(&user.ok(&["env", "list", "--json"], "").await).unwrap();
    let variables = variables.as_array().unwrap();
    assert_eq!(variables.len(), 2, "{variables:?}");
    let key = variables.iter().find(|v| v["name"] == "API_KEY").unwrap();
    assert_eq!((key["secret"].as_bool(), key.get("value")), (Some(true), None));
    assert!(!user.ok(&["env", "list"], "").await.contains("s3cret"));

    // Deploy, followed until live; the log; again; then back.
    let deployed = user.ok(&["deploy"], "").await;
    assert!(deployed.contains("Live at http://"), "{deployed}");
    assert!(user.ok(&["logs"], "").await.contains("python3 -m http.server"));
    std::fs::write(tree.path().join("index.html"), "second\n").unwrap();
    repo.commit_tree("main", tree.path(), "second");
    user.ok(&["deploy"], "").await;
    let rolled = user.ok(&["rollback"], "").await;
    assert!(rolled.contains("Live at"), "{rolled}");
    let deployments: serde_json::Value = serde_json::from_str(&user.ok(&["deployments", "--json"], "").await).unwrap();
    let deployments = deployments.as_array().unwrap();
    assert_eq!(deployments.len(), 3, "{deployments:?}");
    assert_eq!(deployments[0]["state"], "DEPLOYMENT_STATE_LIVE");
    assert!(deployments[0]["rollbackOf"].as_str().is_some_and(|id| !id.is_empty()));

    // `logs -f` follows a deployment as it happens, through its build until
    // its app starts (and on: a live app's log goes on).
    let queued: serde_json::Value =
        serde_json::from_str(&user.ok(&["deploy", "--detach", "--json"], "").await).unwrap();
    let id = queued["id"].as_str().unwrap().to_owned();
    let mut follow = user
        .command(&["logs", "-f", &id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let started = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("$ exec python3 -m http.server"))
    });
    let started = tokio::time::timeout(std::time::Duration::from_secs(60), started).await;
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(matches!(started, Ok(Ok(true))), "logs -f did not show the app starting");
    let live = std::time::Instant::now();
    loop {
        let listed: serde_json::Value = serde_json::from_str(&user.ok(&["deployments", "--json"], "").await).unwrap();
        if listed[0]["id"] == id.as_str() && listed[0]["state"] == "DEPLOYMENT_STATE_LIVE" {
            break;
        }
        assert!(live.elapsed() < std::time::Duration::from_secs(30), "{listed}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // A one-off command beside the live release, with its variables and
    // its exit status.
    let ran = user.ok(&["run", "--", "echo", "greeting=$GREETING"], "").await;
    assert!(ran.contains("greeting=hello"), "{ran}");
    let failed = user.run(&["run", "--", "sh", "-c", "'exit 3'"], "", &[]).await;
    assert_eq!(
        failed.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );

    // The directory as it is, without git: what .gitignore names stays
    // here.
    std::fs::write(
        user.dir().join("Procfile"),
        "web: exec python3 -m http.server \"$PORT\"\n",
    )
    .unwrap();
    std::fs::write(user.dir().join("index.html"), "uploaded\n").unwrap();
    std::fs::write(user.dir().join(".gitignore"), "secret.txt\n").unwrap();
    std::fs::write(user.dir().join("secret.txt"), "stays here\n").unwrap();
    let up = user.ok(&["up"], "").await;
    assert!(up.contains("Live at"), "{up}");
    let label = linked["hostLabel"].as_str().unwrap().to_owned();
    let client = reqwest::Client::new();
    common::deploy::until_served(&client, &mesh, &label).await;
    let served = common::deploy::fetch(&client, &mesh, &label, "/").await.unwrap();
    assert_eq!(served, (200, "uploaded\n".to_owned()));
    let ignored = common::deploy::fetch(&client, &mesh, &label, "/secret.txt")
        .await
        .unwrap();
    assert_eq!(ignored.0, 404, "{ignored:?}");

    // An API token, printed once, acts for CI without the session.
    let created: serde_json::Value =
        serde_json::from_str(&user.ok(&["tokens", "create", "ci", "--json"], "").await).unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("capsule_pat_"), "{created}");
    let listed = user.ok(&["tokens"], "").await;
    assert!(listed.contains("ci") && !listed.contains(&token), "{listed}");
    user.ok(&["logout"], "").await;
    let as_ci = user
        .run(&["deployments", "--json"], "", &[("CAPSULE_TOKEN", &token)])
        .await;
    assert!(as_ci.status.success(), "{}", String::from_utf8_lossy(&as_ci.stderr));

    // Completions for a shell.
    assert!(user.ok(&["completions", "bash"], "").await.contains("capsule"));
    mesh.stop().await;
}

/// `capsule up` of a directory holding an Express app (the fixture of
/// tests/stacks.rs), with a `node_modules` of its own that `.gitignore`
/// keeps back: the runner builds it with `npm ci` from the registry and
/// serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capsule_up_deploys_an_express_app_from_a_directory() {
    let mesh = common::start_with(common::Options {
        local_runner: true,
        deploy: vec![
            ("DEPLOY_EGRESS_ALLOWED_NETWORKS", common::registries().await),
            ("DEPLOY_START_TIMEOUT_SECS", "60"),
        ],
        ..Default::default()
    })
    .await;
    mesh.user("cli@example.com").await;
    let user = User {
        home: tempfile::tempdir().unwrap(),
        api: format!("http://{}", mesh.addr(ServiceKind::Gateway)),
    };
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apps/express");
    std::fs::create_dir_all(user.dir().join("node_modules/express")).unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), user.dir().join(entry.file_name())).unwrap();
    }
    // What a local `npm install` left: never sent, so never run.
    std::fs::write(
        user.dir().join("node_modules/express/index.js"),
        "throw new Error('local copy')\n",
    )
    .unwrap();
    std::fs::write(user.dir().join(".gitignore"), "node_modules/\n").unwrap();
    user.ok(
        &["login", "--email", "cli@example.com", "--password-stdin"],
        &format!("{}\n", common::PASSWORD),
    )
    .await;
    user.ok(&["projects", "create", "express up", "--link"], "").await;
    let up = user.ok(&["up"], "").await;
    assert!(up.contains("Live at"), "{up}");
    let log = user.ok(&["logs"], "").await;
    assert!(log.contains("npm ci"), "{log}");
    let linked: serde_json::Value = serde_json::from_str(&user.ok(&["link", "--json"], "").await).unwrap();
    let label = linked["hostLabel"].as_str().unwrap();
    let served = common::deploy::fetch(&reqwest::Client::new(), &mesh, label, "/")
        .await
        .unwrap();
    assert_eq!(served, (200, "hello from express 4.21.2".to_owned()), "{log}");
    mesh.stop().await;
}
