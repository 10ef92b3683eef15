//! The kernel's database pool against real PostgreSQL.

use std::time::{Duration, Instant};

use capsule::{config::ServiceKind, db::Database, testing::TestDatabase};
use diesel::RunQueryDsl;
use tonic::Code;

#[tokio::test]
async fn a_runaway_query_hits_the_statement_timeout_and_the_pool_recovers() {
    let test_db = TestDatabase::migrated(ServiceKind::Project, &capsule_project::MIGRATIONS).await;
    let mut config = test_db.db_config();
    config.statement_timeout = Duration::from_millis(200);
    let db = Database::new(config).expect("a pool");

    let started = Instant::now();
    let err = db
        .run(|conn| diesel::sql_query("SELECT pg_sleep(5)").execute(conn))
        .await
        .expect_err("the statement is canceled");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // The same pool still answers.
    let rows = db
        .run(|conn| diesel::sql_query("SELECT 1").execute(conn))
        .await
        .expect("the connection is usable again");
    assert_eq!(rows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_who_waits_on_whom_and_unused_indexes() {
    use diesel::connection::SimpleConnection;
    let test_db = TestDatabase::migrated(ServiceKind::Project, &capsule_project::MIGRATIONS).await;
    let mut holder = test_db.connect();
    holder
        .batch_execute("BEGIN; LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
        .expect("the lock is taken");
    let mut waiter = test_db.connect();
    let blocked = std::thread::spawn(move || {
        let _ = diesel::sql_query("SELECT count(*) FROM projects").execute(&mut waiter);
    });
    let mut conn = test_db.connect();
    let stats = tokio::task::spawn_blocking(move || {
        for _ in 0..50 {
            let stats = capsule::stats::collect(&mut conn).expect("stats are readable");
            if !stats.lock_waits.is_empty() {
                return stats;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the blocked query never showed up as a lock wait");
    })
    .await
    .expect("collecting does not panic");
    assert!(
        stats.lock_waits[0].waiting_query.contains("FROM projects"),
        "{:?}",
        stats.lock_waits
    );
    assert!(!stats.lock_waits[0].blocked_by.is_empty());
    assert!(stats.tables.iter().any(|t| t.table == "projects"));
    assert!(
        stats
            .indexes
            .iter()
            .any(|i| i.index == "idx_projects_purge" && i.scans == 0)
    );
    holder.batch_execute("ROLLBACK").expect("the lock is released");
    blocked.join().expect("the waiter finishes");
}
