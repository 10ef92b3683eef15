//! The migration harness against real PostgreSQL: every set goes up, down
//! and up again to the same schema; history that disagrees with the build
//! is refused; dry runs leave no trace; failures roll back and say where.

#![expect(clippy::unwrap_used, reason = "a test helper that fails should panic")]

use std::time::Duration;

use capsule::{
    config::ServiceKind,
    migrate::{self, Future, MigrateError, MigrateOptions, MigrationFile, MigrationSet, Problem, State},
    testing::{self, TestDatabase},
};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, connection::SimpleConnection, sql_types::Text};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use tokio_util::sync::CancellationToken;

fn sets() -> [&'static MigrationSet; 3] {
    [
        &capsule_auth::MIGRATIONS,
        &capsule_project::MIGRATIONS,
        &capsule_deploy::MIGRATIONS,
    ]
}

/// The schema as the catalog describes it: tables and columns, indexes,
/// constraints, triggers and functions, sorted. The history table is left
/// out (it stays after a full revert).
fn catalog(conn: &mut PgConnection) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Line {
        #[diesel(sql_type = Text)]
        line: String,
    }
    diesel::sql_query(
        "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '') AS line
           FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'capsule_schema_history'
         UNION ALL
         SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename <> 'capsule_schema_history'
         UNION ALL
         SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
           FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> 'capsule_schema_history'
         UNION ALL
         SELECT 'trigger ' || tgname || ' ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
         UNION ALL
         SELECT 'function ' || proname || ' ' || md5(prosrc) FROM pg_proc WHERE pronamespace = 'public'::regnamespace
         ORDER BY 1",
    )
    .load::<Line>(conn)
    .unwrap()
    .into_iter()
    .map(|line| line.line)
    .collect()
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

#[tokio::test]
async fn every_set_goes_up_down_and_up_again_to_the_same_schema() {
    for set in sets() {
        let db = TestDatabase::empty(set.service).await;
        let mut conn = db.connect();
        blocking(move || {
            let empty = catalog(&mut conn);
            assert!(empty.is_empty(), "{empty:?}");

            let applied = migrate::migrate(&mut conn, set, &MigrateOptions::default()).unwrap();
            assert_eq!(applied.len(), set.files.len(), "{}", set.service);
            let up = catalog(&mut conn);
            assert!(!up.is_empty());

            let again = migrate::migrate(&mut conn, set, &MigrateOptions::default()).unwrap();
            assert!(again.is_empty(), "applying twice is a no-op");

            let reverted = migrate::revert(&mut conn, set, Some("0"), &MigrateOptions::default()).unwrap();
            assert_eq!(reverted.len(), set.files.len());
            assert_eq!(
                catalog(&mut conn),
                empty,
                "{}: down.sql files restore the empty schema",
                set.service
            );
            assert!(
                migrate::info(&mut conn, set)
                    .unwrap()
                    .iter()
                    .all(|row| row.state == State::Pending),
                "everything is pending again"
            );

            migrate::migrate(&mut conn, set, &MigrateOptions::default()).unwrap();
            assert_eq!(
                catalog(&mut conn),
                up,
                "{}: up, down, up gives the same schema",
                set.service
            );

            // Each step down and up again, one at a time (redo).
            for _ in 0..set.files.len() {
                migrate::revert(&mut conn, set, None, &MigrateOptions::default()).unwrap();
            }
            migrate::migrate(&mut conn, set, &MigrateOptions::default()).unwrap();
            assert_eq!(catalog(&mut conn), up);
        })
        .await;
    }
}

#[tokio::test]
async fn an_edited_migration_fails_validate_and_service_start() {
    let db = TestDatabase::migrated(ServiceKind::Auth, &capsule_auth::MIGRATIONS).await;
    let mut conn = db.connect();
    conn.batch_execute("UPDATE capsule_schema_history SET checksum = 'abc123' WHERE version = 'V002'")
        .unwrap();

    let err =
        blocking(move || migrate::validate(&mut conn, &capsule_auth::MIGRATIONS, Future::Allow).unwrap_err()).await;
    let MigrateError::Invalid(problems) = &err else {
        panic!("{err}")
    };
    assert!(
        matches!(&problems[..], [Problem::Modified { version, recorded, .. }] if version == "V002" && recorded == "abc123")
    );
    let message = err.to_string();
    let embedded = capsule::migrate::files::AUTH[1].checksum();
    for needle in [
        "V002",
        "abc123",
        embedded.as_str(),
        "add a new migration instead",
        "migrations/auth/V002__add_user_profiles/up.sql",
    ] {
        assert!(message.contains(needle), "{needle} missing from: {message}");
    }

    let listener = testing::free_listener().await;
    let addr = listener.local_addr().unwrap();
    let served = tokio::time::timeout(
        Duration::from_secs(20),
        capsule_auth::serve(
            listener,
            db.db_config(),
            testing::serve_config(addr),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("the service refuses to start instead of retrying");
    let message = format!("{:#}", served.unwrap_err());
    assert!(message.contains("V002 was changed after it was applied"), "{message}");
}

static PROJECT_NEXT_EMBEDDED: EmbeddedMigrations = embed_migrations!("tests/fixtures/project_next");

/// The project service's migrations as the next release has them: every
/// migration of this build (linked from `migrations/project`), then an
/// expand step, V900, that adds a column this build ignores.
fn project_next() -> &'static MigrationSet {
    let linked: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/project_next"))
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    for file in capsule::migrate::files::PROJECT {
        assert!(
            linked.iter().any(|name| name == file.name),
            "tests/fixtures/project_next must link every project migration: \
             ln -s ../../../migrations/project/{0} tests/fixtures/project_next/{0}",
            file.name
        );
    }
    let mut files: Vec<MigrationFile> = capsule::migrate::files::PROJECT
        .iter()
        .map(|file| MigrationFile { ..*file })
        .collect();
    files.push(MigrationFile {
        version: "V900",
        name: "V900__add_project_topics",
        description: "add project topics",
        up: include_str!("fixtures/project_next/V900__add_project_topics/up.sql"),
        down: Some(include_str!("fixtures/project_next/V900__add_project_topics/down.sql")),
        sha256: "",
        run_in_transaction: true,
        metadata: "",
    });
    Box::leak(Box::new(MigrationSet::new(
        ServiceKind::Project,
        &PROJECT_NEXT_EMBEDDED,
        Box::leak(files.into_boxed_slice()),
    )))
}

#[tokio::test]
async fn a_database_ahead_of_the_binary_is_served_unless_refused_but_a_missing_migration_never_is() {
    // A rolling update: the next release's migration job applied V900;
    // this build (the previous release) keeps serving, shows it as future,
    // and counts it.
    let db = TestDatabase::empty(ServiceKind::Project).await;
    let next = project_next();
    let mut conn = db.connect();
    let applied = blocking(move || migrate::migrate(&mut conn, next, &MigrateOptions::default()).unwrap()).await;
    assert_eq!(applied.last().map(|m| m.version.as_str()), Some("V900"));
    let mut conn = db.connect();
    let ahead =
        blocking(move || migrate::validate(&mut conn, &capsule_project::MIGRATIONS, Future::Allow).unwrap()).await;
    assert_eq!(ahead, ["V900"]);
    let mut conn = db.connect();
    let rows = blocking(move || migrate::info(&mut conn, &capsule_project::MIGRATIONS).unwrap()).await;
    let future = rows.iter().find(|row| row.version == "V900").unwrap();
    assert_eq!(future.state.to_string(), "future");

    let serve = |config: capsule::config::DbConfig| async move {
        let listener = testing::free_listener().await;
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(capsule_project::serve(
            listener,
            config,
            capsule::config::Mesh::from_source(&|_: &str| None).unwrap(),
            testing::serve_config(addr),
            stop.clone(),
        ));
        (addr, stop, task)
    };
    let (addr, stop, task) = serve(db.db_config()).await;
    testing::wait_for_health(addr, "", 1, Duration::from_secs(20)).await;
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("capsule_migrations_ahead{service=\"project\"} 1"),
        "{metrics}"
    );

    stop.cancel();
    task.await.unwrap().unwrap();

    // Refused when the operator says so, naming the setting.
    let mut strict = db.db_config();
    strict.migrate_allow_future = false;
    let (_, _, task) = serve(strict).await;
    let served = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the service refuses to start instead of retrying")
        .unwrap();
    let message = format!("{:#}", served.unwrap_err());
    assert!(
        message.contains("V900 (add project topics) is applied in the database but newer than this build")
            && message.contains("PROJECT_MIGRATE_ALLOW_FUTURE is false"),
        "{message}"
    );
    // Reverting under a newer release's migrations is refused too.
    let mut conn = db.connect();
    let err = blocking(move || {
        migrate::revert(
            &mut conn,
            &capsule_project::MIGRATIONS,
            None,
            &MigrateOptions::default(),
        )
        .unwrap_err()
    })
    .await;
    assert!(err.to_string().contains("V900"), "{err}");

    // A version this build knows later ones than, but not itself, is a
    // removed migration: refused whatever the setting.
    db.connect()
        .batch_execute(
            "DELETE FROM capsule_schema_history WHERE version = 'V900'; \
             INSERT INTO capsule_schema_history (version, description, kind, checksum) \
             VALUES ('V0015', 'removed', 'migration', 'eeee')",
        )
        .unwrap();
    let mut conn = db.connect();
    let err =
        blocking(move || migrate::validate(&mut conn, &capsule_project::MIGRATIONS, Future::Allow).unwrap_err()).await;
    assert!(
        err.to_string()
            .contains("V0015 (removed) is applied in the database but missing from this build"),
        "{err}"
    );
}

#[tokio::test]
async fn a_pending_migration_that_sorts_before_an_applied_one_is_refused() {
    let db = TestDatabase::migrated(ServiceKind::Deploy, &capsule_deploy::MIGRATIONS).await;
    let mut conn = db.connect();
    conn.batch_execute("DELETE FROM capsule_schema_history WHERE version = 'V002'")
        .unwrap();
    let err =
        blocking(move || migrate::validate(&mut conn, &capsule_deploy::MIGRATIONS, Future::Allow).unwrap_err()).await;
    assert!(err.to_string().contains("V002 is pending but sorts before V0"), "{err}");
}

#[tokio::test]
async fn a_dry_run_reports_statements_and_risky_locks_and_leaves_no_trace() {
    let db = TestDatabase::empty(ServiceKind::Project).await;
    let mut conn = db.connect();
    let set = &capsule_project::MIGRATIONS;
    blocking(move || {
        let report = migrate::dry_run(&mut conn, set, &MigrateOptions::default()).unwrap();
        assert_eq!(report.len(), set.files.len());
        assert!(
            report[0]
                .statements
                .iter()
                .any(|s| s.starts_with("CREATE TABLE projects"))
        );
        assert!(catalog(&mut conn).is_empty(), "nothing was left behind");
        assert!(
            migrate::info(&mut conn, set)
                .unwrap()
                .iter()
                .all(|row| row.state == State::Pending)
        );

        // With rows in projects, the later steps' locks are worth a warning.
        migrate::migrate(&mut conn, set, &MigrateOptions::default()).unwrap();
        migrate::revert(&mut conn, set, Some("V001"), &MigrateOptions::default()).unwrap();
        conn.batch_execute("INSERT INTO projects (name, owner_id) VALUES ('app', gen_random_uuid())")
            .unwrap();
        let before = catalog(&mut conn);
        let report = migrate::dry_run(&mut conn, set, &MigrateOptions::default()).unwrap();
        let warnings: Vec<&String> = report.iter().flat_map(|m| &m.warnings).collect();
        assert!(
            warnings.iter().any(|w| w.contains("ACCESS EXCLUSIVE lock on projects")),
            "{warnings:#?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("without CONCURRENTLY")),
            "{warnings:#?}"
        );
        assert_eq!(catalog(&mut conn), before, "the dry run rolled back");
    })
    .await;
}

static BROKEN_EMBEDDED: EmbeddedMigrations = embed_migrations!("tests/fixtures/broken");
static BROKEN_FILES: &[MigrationFile] = &[
    MigrationFile {
        version: "V001",
        name: "V001__create_widgets",
        description: "create widgets",
        up: include_str!("fixtures/broken/V001__create_widgets/up.sql"),
        down: Some(include_str!("fixtures/broken/V001__create_widgets/down.sql")),
        sha256: "v001",
        run_in_transaction: true,
        metadata: "",
    },
    MigrationFile {
        version: "V002",
        name: "V002__break_things",
        description: "break things",
        up: include_str!("fixtures/broken/V002__break_things/up.sql"),
        down: None,
        sha256: "v002",
        run_in_transaction: true,
        metadata: "",
    },
    MigrationFile {
        version: "V003",
        name: "V003__never_reached",
        description: "never reached",
        up: include_str!("fixtures/broken/V003__never_reached/up.sql"),
        down: None,
        sha256: "v003",
        run_in_transaction: true,
        metadata: "",
    },
];
static BROKEN: MigrationSet = MigrationSet::new(ServiceKind::Deploy, &BROKEN_EMBEDDED, BROKEN_FILES);

fn tables(conn: &mut PgConnection) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Table {
        #[diesel(sql_type = Text)]
        tablename: String,
    }
    diesel::sql_query("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        .load::<Table>(conn)
        .unwrap()
        .into_iter()
        .map(|t| t.tablename)
        .collect()
}

#[tokio::test]
async fn a_migration_with_bad_sql_rolls_back_and_names_file_statement_and_error() {
    let db = TestDatabase::empty(ServiceKind::Deploy).await;
    let mut conn = db.connect();
    blocking(move || {
        let err = migrate::migrate(&mut conn, &BROKEN, &MigrateOptions::default()).unwrap_err();
        let MigrateError::Failed {
            version,
            file,
            index,
            statement,
            error,
            tries: 1,
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(version, "V002");
        assert_eq!(file, "migrations/deploy/V002__break_things/up.sql");
        assert_eq!(*index, 2);
        assert_eq!(statement, "INSERT INTO no_such_table VALUES (1);");
        assert!(error.contains("relation \"no_such_table\" does not exist"), "{error}");
        assert!(err.to_string().contains("rolled back"));

        // V001 stays applied; nothing of V002 (its first statement
        // included) or V003 is left.
        assert_eq!(tables(&mut conn), ["capsule_schema_history", "widgets"]);
        let states: Vec<State> = migrate::info(&mut conn, &BROKEN)
            .unwrap()
            .iter()
            .map(|r| r.state)
            .collect();
        assert_eq!(states, [State::Applied, State::Pending, State::Pending]);
    })
    .await;
}

#[tokio::test]
async fn baseline_then_migrate_applies_only_the_later_versions() {
    let db = TestDatabase::empty(ServiceKind::Auth).await;
    let mut conn = db.connect();
    let set = &capsule_auth::MIGRATIONS;
    blocking(move || {
        // A database that already has the V001 schema, made by hand.
        conn.batch_execute(set.files[0].up).unwrap();
        let recorded = migrate::baseline(&mut conn, set, "V001").unwrap();
        assert_eq!(recorded, ["V001"]);
        let applied = migrate::migrate(&mut conn, set, &MigrateOptions::default()).unwrap();
        let versions: Vec<&str> = applied.iter().map(|m| m.version.as_str()).collect();
        assert_eq!(versions, set.files[1..].iter().map(|f| f.version).collect::<Vec<_>>());
        let info = migrate::info(&mut conn, set).unwrap();
        assert_eq!(info[0].state, State::Baseline);
        assert!(info[1..].iter().all(|row| row.state == State::Applied));

        let again = migrate::baseline(&mut conn, set, "V002").unwrap_err();
        assert!(again.to_string().contains("already has a migration history"), "{again}");
    })
    .await;
}

#[tokio::test]
async fn revert_refuses_a_migration_without_down_sql() {
    let db = TestDatabase::empty(ServiceKind::Deploy).await;
    let mut conn = db.connect();
    blocking(move || {
        migrate::baseline(&mut conn, &BROKEN, "V002").unwrap();
        let err = migrate::revert(&mut conn, &BROKEN, None, &MigrateOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains(
                "V002 has no down.sql, so it cannot be reverted; write a new migration that undoes it instead"
            ),
            "{err}"
        );
        let unknown = migrate::revert(&mut conn, &BROKEN, Some("V042"), &MigrateOptions::default()).unwrap_err();
        assert!(unknown.to_string().contains("unknown version V042"), "{unknown}");
    })
    .await;
}

#[tokio::test]
async fn a_migrator_waits_a_bounded_time_and_names_the_lock_holder() {
    let db = TestDatabase::empty(ServiceKind::Auth).await;
    let mut holder = db.connect();
    let mut conn = db.connect();
    blocking(move || {
        holder
            .batch_execute(&format!(
                "SET application_name = 'other-replica'; SELECT pg_advisory_lock({})",
                migrate::lock_key(ServiceKind::Auth)
            ))
            .unwrap();
        let options = MigrateOptions {
            lock_wait: Duration::from_millis(300),
            ..MigrateOptions::default()
        };
        let err = migrate::migrate(&mut conn, &capsule_auth::MIGRATIONS, &options).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("the migration lock of auth is held by pid"),
            "{message}"
        );
        assert!(message.contains("other-replica"), "{message}");
        assert_eq!(tables(&mut conn), Vec::<String>::new(), "nothing ran without the lock");

        drop(holder);
        let applied = migrate::migrate(&mut conn, &capsule_auth::MIGRATIONS, &options).unwrap();
        assert_eq!(applied.len(), capsule_auth::MIGRATIONS.files.len());
    })
    .await;
}

#[tokio::test]
async fn a_database_migrated_by_plain_diesel_is_adopted() {
    let db = TestDatabase::empty(ServiceKind::Project).await;
    let mut conn = db.connect();
    let set = &capsule_project::MIGRATIONS;
    blocking(move || {
        conn.batch_execute(
            "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY, run_on TIMESTAMP NOT NULL DEFAULT now())",
        )
        .unwrap();
        conn.batch_execute(set.files[0].up).unwrap();
        conn.batch_execute("INSERT INTO __diesel_schema_migrations (version) VALUES ('V001')").unwrap();
        let applied = migrate::migrate(&mut conn, set, &MigrateOptions::default()).unwrap();
        assert_eq!(applied.first().map(|m| m.version.as_str()), Some("V002"));
        conn.transaction::<_, diesel::result::Error, _>(|_| Ok(())).unwrap();
    })
    .await;
}

static OUTSIDE_EMBEDDED: EmbeddedMigrations = embed_migrations!("tests/fixtures/outside");
static OUTSIDE_FILES: &[MigrationFile] = &[
    MigrationFile {
        version: "V001",
        name: "V001__create_widgets",
        description: "create widgets",
        up: include_str!("fixtures/outside/V001__create_widgets/up.sql"),
        down: Some(include_str!("fixtures/outside/V001__create_widgets/down.sql")),
        sha256: "v001",
        run_in_transaction: true,
        metadata: "",
    },
    MigrationFile {
        version: "V002",
        name: "V002__index_names_concurrently",
        description: "index names concurrently",
        up: include_str!("fixtures/outside/V002__index_names_concurrently/up.sql"),
        down: Some(include_str!("fixtures/outside/V002__index_names_concurrently/down.sql")),
        sha256: "v002",
        run_in_transaction: false,
        metadata: include_str!("fixtures/outside/V002__index_names_concurrently/metadata.toml"),
    },
];
static OUTSIDE: MigrationSet = MigrationSet::new(ServiceKind::Deploy, &OUTSIDE_EMBEDDED, OUTSIDE_FILES);

#[tokio::test]
async fn a_failed_migration_outside_a_transaction_says_what_it_may_have_left_behind() {
    let db = TestDatabase::empty(ServiceKind::Deploy).await;
    let mut conn = db.connect();
    let (mut conn, err) = blocking(move || {
        let err = migrate::migrate(&mut conn, &OUTSIDE, &MigrateOptions::default()).unwrap_err();
        (conn, err)
    })
    .await;
    let message = err.to_string();
    for needle in [
        "migration V002 failed outside a transaction",
        "NOT rolled back",
        "migrations/deploy/V002__index_names_concurrently/up.sql",
        "could not create unique index",
        "INVALID index",
        "DROP INDEX CONCURRENTLY",
    ] {
        assert!(message.contains(needle), "{needle} missing from: {message}");
    }
    assert!(err.is_fatal(), "a person decides what to do, not a retry loop");
    // What the message warns about is really there.
    #[derive(QueryableByName)]
    struct Valid {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        indisvalid: bool,
    }
    let index = diesel::sql_query("SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx_widgets_name'::regclass")
        .get_result::<Valid>(&mut conn)
        .unwrap();
    assert!(!index.indisvalid);
    let rows = blocking(move || migrate::info(&mut conn, &OUTSIDE).unwrap()).await;
    assert_eq!(rows[1].state, State::Pending, "V002 is not recorded");
}
