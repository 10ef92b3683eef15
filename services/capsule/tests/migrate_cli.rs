//! `capsule migrate` as operators run it, against real PostgreSQL.

#![expect(clippy::unwrap_used, reason = "a test helper that fails should panic")]

use std::process::{Command, Output, Stdio};

use capsule::{config::ServiceKind, testing::TestDatabase};
use diesel::{QueryableByName, RunQueryDsl, connection::SimpleConnection, sql_types::BigInt};

struct Databases {
    auth: TestDatabase,
    project: TestDatabase,
    deploy: TestDatabase,
}

async fn empty_databases() -> Databases {
    Databases {
        auth: TestDatabase::empty(ServiceKind::Auth).await,
        project: TestDatabase::empty(ServiceKind::Project).await,
        deploy: TestDatabase::empty(ServiceKind::Deploy).await,
    }
}

fn capsule(dbs: &Databases, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_capsule"));
    command
        .args(args)
        .env("AUTH_DATABASE_URL", &dbs.auth.url)
        .env("PROJECT_DATABASE_URL", &dbs.project.url)
        .env("DEPLOY_DATABASE_URL", &dbs.deploy.url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

fn run(dbs: &Databases, args: &[&str]) -> Output {
    capsule(dbs, args).output().expect("capsule runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

fn count(db: &TestDatabase, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(&mut db.connect())
        .expect("the count query runs")
        .count
}

#[tokio::test]
async fn eight_concurrent_migrate_all_processes_apply_each_migration_once() {
    let dbs = empty_databases().await;
    let children: Vec<_> = (0..8)
        .map(|_| {
            capsule(&dbs, &["migrate", "all"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("capsule starts")
        })
        .collect();
    let outputs: Vec<Output> = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|child| child.wait_with_output().expect("capsule finishes"))
            .collect()
    })
    .await
    .expect("waiting does not panic");
    for output in &outputs {
        assert!(output.status.success(), "{}", text(output));
    }
    let applied_lines: usize = outputs
        .iter()
        .map(|output| String::from_utf8_lossy(&output.stdout).matches(": applied ").count())
        .sum();
    let expected = capsule::migrate::files::AUTH.len()
        + capsule::migrate::files::PROJECT.len()
        + capsule::migrate::files::DEPLOY.len();
    assert_eq!(
        applied_lines, expected,
        "each migration was applied by exactly one process"
    );
    for (db, files) in [
        (&dbs.auth, capsule::migrate::files::AUTH),
        (&dbs.project, capsule::migrate::files::PROJECT),
        (&dbs.deploy, capsule::migrate::files::DEPLOY),
    ] {
        let recorded = count(db, "SELECT count(*) AS count FROM capsule_schema_history");
        assert_eq!(recorded, i64::try_from(files.len()).unwrap_or(i64::MAX));
    }
}

#[tokio::test]
async fn info_reads_at_a_glance_before_after_and_after_a_revert() {
    let dbs = empty_databases().await;
    let before = run(&dbs, &["migrate", "all", "info"]);
    assert!(before.status.success(), "{}", text(&before));
    let table = String::from_utf8_lossy(&before.stdout);
    assert!(table.starts_with("SERVICE  VERSION  DESCRIPTION"), "{table}");
    assert!(table.contains("auth     V001     create users table"), "{table}");
    let total = capsule::migrate::files::AUTH.len()
        + capsule::migrate::files::PROJECT.len()
        + capsule::migrate::files::DEPLOY.len();
    assert_eq!(table.matches("pending").count(), total, "{table}");

    assert!(run(&dbs, &["migrate", "all"]).status.success());
    let after = run(&dbs, &["migrate", "all", "info"]);
    let table = String::from_utf8_lossy(&after.stdout);
    assert!(!table.contains("pending"), "{table}");
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("deploy   V003     add deployment logs") && line.contains(" applied ")),
        "{table}"
    );

    let deploy = capsule::migrate::files::DEPLOY;
    let (newest, before) = (deploy[deploy.len() - 1].version, deploy[deploy.len() - 2].version);
    let reverted = run(&dbs, &["migrate", "deploy", "revert"]);
    assert!(
        text(&reverted).contains(&format!("deploy: reverted {newest}")),
        "{}",
        text(&reverted)
    );
    let json = run(&dbs, &["migrate", "deploy", "info", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).expect("info --format json is JSON");
    let states: Vec<&str> = rows
        .as_array()
        .expect("an array")
        .iter()
        .map(|row| row["state"].as_str().unwrap_or_default())
        .collect();
    let mut expected = vec!["applied"; deploy.len() - 1];
    expected.push("pending");
    assert_eq!(states, expected);
    assert_eq!(rows[0]["service"], "deploy");
    assert_eq!(rows[0]["checksum"].as_str().map(str::len), Some(64));

    let redo = run(&dbs, &["migrate", "deploy", "redo"]);
    assert!(
        text(&redo).contains(&format!("deploy: reverted {before} and applied {before}, {newest}")),
        "{}",
        text(&redo)
    );
}

#[tokio::test]
async fn validate_fails_with_the_version_and_both_checksums() {
    let dbs = empty_databases().await;
    assert!(run(&dbs, &["migrate", "project"]).status.success());
    let ok = run(&dbs, &["migrate", "project", "validate"]);
    assert!(ok.status.success(), "{}", text(&ok));
    dbs.project
        .connect()
        .batch_execute("UPDATE capsule_schema_history SET checksum = 'deadbeef' WHERE version = 'V003'")
        .expect("the history can be tampered with");
    let bad = run(&dbs, &["migrate", "project", "validate"]);
    assert!(!bad.status.success());
    let message = text(&bad);
    for needle in [
        "V003 was changed after it was applied",
        "deadbeef",
        &capsule::migrate::files::PROJECT[2].checksum(),
        "add a new migration instead",
        "validate failed for project",
    ] {
        assert!(message.contains(needle), "{needle} missing from: {message}");
    }
    let apply = run(&dbs, &["migrate", "project"]);
    assert!(!apply.status.success(), "migrate refuses too: {}", text(&apply));
}

/// A database that a newer release migrated (V999 here): accepted while
/// `<SVC>_MIGRATE_ALLOW_FUTURE` is true (the default), refused by validate
/// and migrate alike when it is false; each command says what it read.
#[tokio::test]
async fn validate_and_migrate_honour_migrate_allow_future() {
    let dbs = empty_databases().await;
    assert!(run(&dbs, &["migrate", "auth"]).status.success());
    dbs.auth
        .connect()
        .batch_execute(
            "INSERT INTO capsule_schema_history (version, description, kind, checksum) \
             VALUES ('V999', 'from a newer release', 'migration', 'feedface')",
        )
        .unwrap();
    let lenient = run(&dbs, &["migrate", "auth", "validate"]);
    let said = text(&lenient);
    assert!(lenient.status.success(), "{said}");
    assert!(
        said.contains("AUTH_MIGRATE_ALLOW_FUTURE=true")
            && said.contains("accepted because AUTH_MIGRATE_ALLOW_FUTURE is true"),
        "{said}"
    );
    for args in [&["migrate", "auth", "validate"][..], &["migrate", "auth"][..]] {
        let strict = capsule(&dbs, args)
            .env("AUTH_MIGRATE_ALLOW_FUTURE", "false")
            .output()
            .unwrap();
        let said = text(&strict);
        assert!(!strict.status.success(), "{args:?} refuses: {said}");
        assert!(
            said.contains("AUTH_MIGRATE_ALLOW_FUTURE=false")
                && said.contains("V999")
                && said.contains("AUTH_MIGRATE_ALLOW_FUTURE is false"),
            "{args:?}: {said}"
        );
    }
}

#[tokio::test]
async fn a_dry_run_prints_what_would_change_and_leaves_no_trace() {
    let dbs = empty_databases().await;
    let output = run(&dbs, &["migrate", "auth", "--dry-run"]);
    assert!(output.status.success(), "{}", text(&output));
    let said = String::from_utf8_lossy(&output.stdout);
    let all = capsule::migrate::files::AUTH.len();
    assert!(
        said.contains(&format!("auth: dry run: {all} migration(s) would be applied")),
        "{said}"
    );
    assert!(said.contains("CREATE TABLE users"), "{said}");
    let tables = count(
        &dbs.auth,
        "SELECT count(*) AS count FROM pg_tables WHERE schemaname = 'public'",
    );
    assert_eq!(tables, 0);
}

#[tokio::test]
async fn backup_dumps_the_database_before_migrating() {
    let dbs = empty_databases().await;
    let dir = std::env::temp_dir().join(format!("capsule-backup-{}", uuid::Uuid::new_v4()));
    let dir_arg = dir.to_string_lossy().into_owned();
    let output = run(&dbs, &["migrate", "auth", "--backup", &dir_arg]);
    assert!(output.status.success(), "{}", text(&output));
    let dumps: Vec<_> = std::fs::read_dir(&dir)
        .expect("the backup directory exists")
        .flatten()
        .collect();
    assert_eq!(dumps.len(), 1);
    let name = dumps[0].file_name().to_string_lossy().into_owned();
    let newest = capsule::migrate::files::AUTH.last().unwrap().version;
    assert!(
        name.starts_with("auth-") && name.ends_with(&format!("-before-{newest}.sql")),
        "{name}"
    );
    let dump = std::fs::read_to_string(dumps[0].path()).expect("the dump is text");
    assert!(dump.contains("PostgreSQL database dump"), "{dump}");
    let _ = std::fs::remove_dir_all(&dir);

    let failing = capsule(&dbs, &["migrate", "project", "--backup", &dir_arg])
        .env("PATH", "/nonexistent")
        .output()
        .expect("capsule runs");
    assert!(!failing.status.success());
    assert!(text(&failing).contains("nothing was changed"), "{}", text(&failing));
    let tables = count(
        &dbs.project,
        "SELECT count(*) AS count FROM pg_tables WHERE schemaname = 'public'",
    );
    assert_eq!(tables, 0, "a failed backup stops the migration");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn baseline_needs_a_version_and_one_service() {
    let dbs = empty_databases().await;
    let output = run(&dbs, &["migrate", "auth", "baseline"]);
    assert!(
        text(&output).contains("baseline needs --version VERSION"),
        "{}",
        text(&output)
    );
    let output = run(&dbs, &["migrate", "all", "baseline", "--version", "V001"]);
    assert!(
        text(&output).contains("name auth, project or deploy"),
        "{}",
        text(&output)
    );
}

#[tokio::test]
async fn db_stats_prints_tables_for_every_service_and_json() {
    let dbs = empty_databases().await;
    assert!(run(&dbs, &["migrate", "all"]).status.success());
    let output = run(&dbs, &["db", "stats", "all"]);
    assert!(output.status.success(), "{}", text(&output));
    let said = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "== auth (",
        "== project (",
        "== deploy (",
        "TABLE",
        "SEQ SCANS",
        "Lock waits",
        "Slowest statements",
    ] {
        assert!(said.contains(needle), "{needle} missing from:\n{said}");
    }
    let json = run(&dbs, &["db", "stats", "all", "--format", "json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert!(
        value["deploy"]["tables"]
            .as_array()
            .is_some_and(|tables| !tables.is_empty())
    );
}

#[tokio::test]
async fn repair_needs_a_version_and_a_reason_and_shows_in_info() {
    let dbs = empty_databases().await;
    assert!(run(&dbs, &["migrate", "auth"]).status.success());
    // The recorded checksum no longer matches the file (as after an edit).
    dbs.auth
        .connect()
        .batch_execute("UPDATE capsule_schema_history SET checksum = 'abc123' WHERE version = 'V002'")
        .unwrap();
    assert!(!run(&dbs, &["migrate", "auth", "validate"]).status.success());

    for (args, needle) in [
        (&["migrate", "auth", "repair"][..], "repair needs --version VERSION"),
        (
            &["migrate", "auth", "repair", "--version", "V002"][..],
            "repair needs --reason",
        ),
        (
            &["migrate", "all", "repair", "--version", "V002", "--reason", "x"][..],
            "one database's history at a time",
        ),
    ] {
        let output = run(&dbs, args);
        assert!(
            !output.status.success() && text(&output).contains(needle),
            "{}",
            text(&output)
        );
    }

    let output = run(
        &dbs,
        &[
            "migrate",
            "auth",
            "repair",
            "--version",
            "V002",
            "--reason",
            "header comment reworded",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("repaired V002: checksum abc123 re-recorded"),
        "{}",
        text(&output)
    );
    assert!(run(&dbs, &["migrate", "auth", "validate"]).status.success());

    let output = run(&dbs, &["migrate", "auth", "info"]);
    let v002 = text(&output)
        .lines()
        .find(|line| line.contains("V002"))
        .unwrap_or_default()
        .to_owned();
    assert!(v002.contains("repaired"), "{}", text(&output));
    let output = run(&dbs, &["migrate", "auth", "info", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["version"] == "V002")
        .unwrap();
    assert_eq!(row["state"], "repaired");
    assert_eq!(row["repair"]["old_checksum"], "abc123");
    assert_eq!(row["repair"]["reason"], "header comment reworded");
    assert!(row["repair"]["operator"].as_str().unwrap().contains('@'));
}

/// A `pg_dump` first on the PATH that writes the password it was given to
/// `CAPTURE`, then runs the real one.
fn capturing_pg_dump(dir: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let real = Command::new("sh").args(["-c", "command -v pg_dump"]).output().unwrap();
    let real = String::from_utf8(real.stdout).unwrap().trim().to_owned();
    let script = dir.join("pg_dump");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf '%s' \"$PGPASSWORD\" >> \"$CAPTURE\"\nexec {real} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
}

#[tokio::test]
async fn revert_and_redo_back_up_first_with_a_password_that_needs_decoding() {
    let dbs = empty_databases().await;
    assert!(run(&dbs, &["migrate", "auth"]).status.success());
    // A role whose password has the characters URLs must encode.
    let role = format!("capsule_backup_{}", uuid::Uuid::new_v4().simple());
    let password = "p@ss%:w/rd";
    dbs.auth
        .connect()
        .batch_execute(&format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD 'p@ss%:w/rd'"))
        .unwrap();
    let mut url = url::Url::parse(&dbs.auth.url).unwrap();
    url.set_username(&role).unwrap();
    let url = url
        .as_str()
        .replacen(&format!("{role}@"), &format!("{role}:p%40ss%25%3Aw%2Frd@"), 1);

    let work = tempfile::tempdir().unwrap();
    let capture = work.path().join("password");
    let path = capturing_pg_dump(work.path());
    let backups = work.path().join("backups");
    let backups_arg = backups.to_string_lossy().into_owned();
    for action in ["revert", "redo"] {
        let output = capsule(&dbs, &["migrate", "auth", action, "--backup", &backups_arg])
            .env("AUTH_DATABASE_URL", &url)
            .env("PATH", &path)
            .env("CAPTURE", &capture)
            .output()
            .unwrap();
        assert!(output.status.success(), "{action}: {}", text(&output));
        assert_eq!(std::fs::read_to_string(&capture).unwrap(), password, "{action}");
        std::fs::remove_file(&capture).unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by_key(|name| name.contains("redo"));
    assert!(
        names.len() == 2
            && names[0].ends_with("-before-revert-to-previous.sql")
            && names[1].ends_with("-before-redo.sql"),
        "{names:?}"
    );
    let dump = std::fs::read_to_string(backups.join(&names[1])).unwrap();
    assert!(
        dump.contains("api_tokens_one_owner") && !dump.contains("idx_api_tokens_organization"),
        "the redo's dump is the schema after the revert: V010's constraint, not V011's index (the newest)"
    );
    assert_eq!(
        count(&dbs.auth, "SELECT count(*) AS count FROM capsule_schema_history"),
        i64::try_from(capsule::migrate::files::AUTH.len()).unwrap(),
        "reverted the newest, then the redo reverted the one before and applied both again"
    );

    let output = run(&dbs, &["migrate", "auth", "info", "--backup", &backups_arg]);
    assert!(
        text(&output).contains("--backup goes with apply, revert or redo"),
        "{}",
        text(&output)
    );
    dbs.auth
        .connect()
        .batch_execute(&format!(
            "REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role}; DROP ROLE {role}"
        ))
        .unwrap();
}

#[test]
fn lint_checks_what_was_added_since_the_release_without_a_database() {
    let lint = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_capsule"))
            .args(["migrate", "all", "lint"])
            .args(args)
            .env_remove("AUTH_DATABASE_URL")
            .env_remove("PROJECT_DATABASE_URL")
            .env_remove("DEPLOY_DATABASE_URL")
            .output()
            .unwrap()
    };
    let output = lint(&[]);
    assert!(output.status.success(), "{}", text(&output));
    // Each service says what it checked since the release, or that it
    // has nothing new.
    for service in ["auth", "project", "deploy"] {
        let line = text(&output)
            .lines()
            .find(|line| line.starts_with(&format!("{service}: ")))
            .map(str::to_owned)
            .unwrap_or_default();
        assert!(
            line.contains("(after V") || line.contains("(the last release)"),
            "{service}: {}",
            text(&output)
        );
    }

    // Everything, released history included: what the rules say about it.
    let output = lint(&["--since", "0", "--format", "json"]);
    assert!(!output.status.success());
    let findings: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let first = &findings.as_array().unwrap()[0];
    assert_eq!(first["rule"], "index-not-concurrently");
    assert!(first["instead"].as_str().unwrap().contains("CONCURRENTLY"));
    assert!(
        text(&output).contains("waive each in the migration's metadata.toml"),
        "{}",
        text(&output)
    );
}
