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
