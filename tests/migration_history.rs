//! What the history tolerates and how it is mended: comment and layout
//! edits pass validate, token changes do not; `repair` re-records one
//! migration with a reason and keeps the old checksum; checksums recorded
//! by earlier builds still match; a migration that waits too long for a
//! lock is rolled back and tried again.

#![expect(clippy::unwrap_used, reason = "a test helper that fails should panic")]

use std::time::{Duration, Instant};

use capsule::{
    config::ServiceKind,
    migrate::{self, Future, MigrateError, MigrateOptions, MigrationFile, MigrationSet, Problem, State},
    testing::TestDatabase,
};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, connection::SimpleConnection, sql_types::Text};

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

/// `set` as a later checkout would build it, with `version`'s up.sql
/// replaced by `up`.
fn edited(set: &'static MigrationSet, version: &str, up: String) -> &'static MigrationSet {
    let up: &'static str = Box::leak(up.into_boxed_str());
    let files: Vec<MigrationFile> = set
        .files
        .iter()
        .map(|file| MigrationFile {
            up: if file.version == version { up } else { file.up },
            ..*file
        })
        .collect();
    Box::leak(Box::new(MigrationSet::new(
        set.service,
        set.embedded,
        Box::leak(files.into_boxed_slice()),
    )))
}

fn recorded_checksum(conn: &mut PgConnection, version: &str) -> String {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        checksum: String,
    }
    diesel::sql_query("SELECT checksum FROM capsule_schema_history WHERE version = $1")
        .bind::<Text, _>(version)
        .get_result::<Row>(conn)
        .unwrap()
        .checksum
}

const AUTH: &MigrationSet = &capsule_auth::MIGRATIONS;

fn v002() -> &'static MigrationFile {
    AUTH.files.iter().find(|file| file.version == "V002").unwrap()
}

#[tokio::test]
async fn a_comment_or_layout_edit_passes_validate_and_a_token_change_fails_it() {
    let db = TestDatabase::migrated(ServiceKind::Auth, AUTH).await;
    let original = v002().up;

    let commented = edited(
        AUTH,
        "V002",
        format!(
            "-- Reviewed again: the profile is created with the user.\n{}\n/* end */\n",
            original.replace('\n', "\n    ")
        ),
    );
    let mut conn = db.connect();
    blocking(move || migrate::validate(&mut conn, commented, Future::Allow).unwrap()).await;

    let changed = edited(AUTH, "V002", format!("{original}\nSELECT 1;\n"));
    let mut conn = db.connect();
    let err = blocking(move || migrate::validate(&mut conn, changed, Future::Allow).unwrap_err()).await;
    let MigrateError::Invalid(problems) = &err else {
        panic!("{err}")
    };
    assert!(
        matches!(&problems[..], [Problem::Modified { version, .. }] if version == "V002"),
        "{err}"
    );
}

#[tokio::test]
async fn checksums_recorded_by_earlier_builds_still_match_and_are_rerecorded() {
    let db = TestDatabase::migrated(ServiceKind::Auth, AUTH).await;
    let file = v002();
    let mut conn = db.connect();
    diesel::sql_query("UPDATE capsule_schema_history SET checksum = $1 WHERE version = 'V002'")
        .bind::<Text, _>(file.sha256)
        .execute(&mut conn)
        .unwrap();
    let mut conn = blocking(move || {
        migrate::validate(&mut conn, AUTH, Future::Allow).unwrap();
        migrate::migrate(&mut conn, AUTH, &MigrateOptions::default()).unwrap();
        conn
    })
    .await;
    assert_eq!(recorded_checksum(&mut conn, "V002"), file.checksum());
}

#[tokio::test]
async fn repair_rerecords_one_migration_keeping_the_old_checksum_who_and_why() {
    let db = TestDatabase::migrated(ServiceKind::Auth, AUTH).await;
    let old = v002().checksum();
    // A change a reviewer accepted: one more statement that alters nothing.
    let changed = edited(AUTH, "V002", format!("{}\nSELECT 1;\n", v002().up));
    let new = changed.files[1].checksum();
    let options = MigrateOptions::default();

    let mut conn = db.connect();
    let (conn, refusals) = blocking(move || {
        let refusals = [
            migrate::repair(&mut conn, changed, "V002", "  ", "alice@ops", &options).unwrap_err(),
            migrate::repair(&mut conn, changed, "V404", "typo", "alice@ops", &options).unwrap_err(),
            migrate::repair(&mut conn, changed, "V003", "nothing changed", "alice@ops", &options).unwrap_err(),
        ]
        .map(|err| err.to_string());
        (conn, refusals)
    })
    .await;
    assert!(refusals[0].contains("needs --reason"), "{}", refusals[0]);
    assert!(refusals[1].contains("unknown version V404"), "{}", refusals[1]);
    assert!(refusals[2].contains("nothing to repair"), "{}", refusals[2]);

    let mut conn = conn;
    let options = MigrateOptions::default();
    let (mut conn, repair, rows) = blocking(move || {
        let repair = migrate::repair(
            &mut conn,
            changed,
            "V002",
            "SELECT 1 added for the replication check; no schema change",
            "alice@ops",
            &options,
        )
        .unwrap();
        migrate::validate(&mut conn, changed, Future::Allow).unwrap();
        let rows = migrate::info(&mut conn, changed).unwrap();
        (conn, repair, rows)
    })
    .await;
    assert_eq!(
        (repair.old_checksum.as_str(), repair.new_checksum.as_str()),
        (old.as_str(), new.as_str())
    );
    assert_eq!(repair.operator, "alice@ops");
    assert!(!repair.repaired_by.is_empty());
    assert_eq!(recorded_checksum(&mut conn, "V002"), new);
    let row = rows.iter().find(|row| row.version == "V002").unwrap();
    assert_eq!(row.state, State::Repaired);
    assert_eq!(row.state.to_string(), "repaired");
    let note = row.repair.as_ref().unwrap();
    assert_eq!(note.old_checksum, old);
    assert!(note.reason.contains("replication check"));
    assert!(
        rows.iter()
            .filter(|row| row.version != "V002")
            .all(|row| row.state == State::Applied)
    );

    // The old build's file no longer matches: the history moved on, on
    // record, and only by this one version.
    let err = blocking(move || migrate::validate(&mut conn, AUTH, Future::Allow).unwrap_err()).await;
    assert!(
        err.to_string().contains("V002 was changed after it was applied"),
        "{err}"
    );
}

/// Holds an ACCESS EXCLUSIVE lock on `users` in an open transaction until
/// `release` fires.
fn hold_users_lock(db: &TestDatabase, release: std::sync::mpsc::Receiver<()>) -> std::thread::JoinHandle<()> {
    let mut conn = db.connect();
    let (locked, is_locked) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            conn.batch_execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")?;
            locked.send(()).unwrap();
            let _ = release.recv();
            Ok(())
        })
        .unwrap();
    });
    is_locked.recv().unwrap();
    holder
}

fn impatient(retries: u32) -> MigrateOptions {
    MigrateOptions {
        statement_lock_timeout: Duration::from_millis(200),
        lock_retries: retries,
        lock_retry_pause: Duration::from_millis(100),
        ..MigrateOptions::default()
    }
}

#[tokio::test]
async fn a_migration_that_waits_too_long_for_a_lock_is_rolled_back_and_tried_again() {
    let db = TestDatabase::migrated(ServiceKind::Auth, AUTH).await;
    let mut conn = db.connect();
    // V004 alters users; take it and everything after back off.
    let mut conn = blocking(move || {
        migrate::revert(&mut conn, AUTH, Some("V003"), &MigrateOptions::default()).unwrap();
        conn
    })
    .await;

    // Held for about a second, then released: the migration gets it on a
    // later try.
    let (release, released) = std::sync::mpsc::channel();
    let holder = hold_users_lock(&db, released);
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1200));
        release.send(()).unwrap();
    });
    let start = Instant::now();
    let (conn_back, applied) = blocking(move || {
        let applied = migrate::migrate(&mut conn, AUTH, &impatient(20));
        (conn, applied)
    })
    .await;
    releaser.join().unwrap();
    holder.join().unwrap();
    let applied: Vec<String> = applied.unwrap().into_iter().map(|m| m.version).collect();
    let from_v004: Vec<&str> = capsule::migrate::files::AUTH
        .iter()
        .skip(3)
        .map(|file| file.version)
        .collect();
    assert_eq!(applied, from_v004);
    assert!(
        start.elapsed() >= Duration::from_millis(1200),
        "it waited for the holder"
    );
    conn = conn_back;

    // Held throughout: it gives up after its tries, saying so, and the
    // database is as it was before the migration.
    let mut conn = blocking(move || {
        migrate::revert(&mut conn, AUTH, Some("V003"), &MigrateOptions::default()).unwrap();
        conn
    })
    .await;
    let (release, released) = std::sync::mpsc::channel();
    let holder = hold_users_lock(&db, released);
    let (mut conn, err) = blocking(move || {
        let err = migrate::migrate(&mut conn, AUTH, &impatient(2)).unwrap_err();
        (conn, err)
    })
    .await;
    release.send(()).unwrap();
    holder.join().unwrap();
    let message = err.to_string();
    assert!(
        message.contains("migration V004 failed 3 times (each time a statement gave up waiting for a lock)")
            && message.contains("lock timeout"),
        "{message}"
    );
    assert!(!err.is_fatal(), "a service tries again later");
    let rows = blocking(move || migrate::info(&mut conn, AUTH).unwrap()).await;
    let pending: Vec<&str> = rows
        .iter()
        .filter(|row| row.state == State::Pending)
        .map(|row| row.version.as_str())
        .collect();
    let from_v004: Vec<&str> = capsule::migrate::files::AUTH
        .iter()
        .skip(3)
        .map(|file| file.version)
        .collect();
    assert_eq!(pending, from_v004);
}
