//! What a database says about itself: table and index use, unused
//! indexes, cache hit ratio, sizes, lock waits, and the slowest statements
//! when pg_stat_statements is installed. Blocking; read-only.

use crate::proto::admin::v1 as pb;
use diesel::{
    PgConnection, QueryableByName, RunQueryDsl,
    sql_types::{BigInt, Double, Nullable, Text},
};

#[derive(QueryableByName, Debug, Clone, serde::Serialize)]
pub struct TableUse {
    #[diesel(sql_type = Text)]
    pub table: String,
    #[diesel(sql_type = BigInt)]
    pub rows: i64,
    #[diesel(sql_type = BigInt)]
    pub seq_scans: i64,
    #[diesel(sql_type = BigInt)]
    pub index_scans: i64,
    #[diesel(sql_type = Text)]
    pub table_size: String,
    #[diesel(sql_type = Text)]
    pub index_size: String,
}

#[derive(QueryableByName, Debug, Clone, serde::Serialize)]
pub struct IndexUse {
    #[diesel(sql_type = Text)]
    pub index: String,
    #[diesel(sql_type = Text)]
    pub table: String,
    #[diesel(sql_type = BigInt)]
    pub scans: i64,
    #[diesel(sql_type = Text)]
    pub size: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub unique: bool,
}

#[derive(QueryableByName, Debug, Clone, serde::Serialize)]
pub struct LockWait {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub waiting_pid: i32,
    #[diesel(sql_type = Text)]
    pub waiting_query: String,
    #[diesel(sql_type = Text)]
    pub blocked_by: String,
    #[diesel(sql_type = BigInt)]
    pub waiting_secs: i64,
}

#[derive(QueryableByName, Debug, Clone, serde::Serialize)]
pub struct SlowStatement {
    #[diesel(sql_type = Text)]
    pub query: String,
    #[diesel(sql_type = BigInt)]
    pub calls: i64,
    #[diesel(sql_type = Double)]
    pub mean_ms: f64,
    #[diesel(sql_type = Double)]
    pub total_ms: f64,
}

/// Everything `capsule db stats` shows for one database.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub tables: Vec<TableUse>,
    pub indexes: Vec<IndexUse>,
    /// Share of table reads served from shared buffers, when any were read.
    pub cache_hit_ratio: Option<f64>,
    pub database_size: String,
    pub lock_waits: Vec<LockWait>,
    /// `None` when pg_stat_statements is not installed.
    pub slowest: Option<Vec<SlowStatement>>,
}

/// How to turn pg_stat_statements on.
pub const PG_STAT_STATEMENTS_HINT: &str = "pg_stat_statements is not installed: add shared_preload_libraries = \
     'pg_stat_statements' to postgresql.conf, restart PostgreSQL, then run CREATE EXTENSION pg_stat_statements; \
     in this database";

pub fn collect(conn: &mut PgConnection) -> diesel::QueryResult<Stats> {
    #[derive(QueryableByName)]
    struct Ratio {
        #[diesel(sql_type = Nullable<Double>)]
        ratio: Option<f64>,
    }
    #[derive(QueryableByName)]
    struct Size {
        #[diesel(sql_type = Text)]
        size: String,
    }
    #[derive(QueryableByName)]
    struct Present {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        present: bool,
    }
    // Sizes come from pg_class.relpages (as of the last VACUUM/ANALYZE):
    // pg_relation_size() would wait behind an ACCESS EXCLUSIVE lock, the
    // very moment someone wants these figures. Never wait long for a lock.
    diesel::connection::SimpleConnection::batch_execute(
        conn,
        "SET lock_timeout = '2s'; SET statement_timeout = '10s'",
    )?;
    let tables = diesel::sql_query(
        "SELECT s.relname AS table, s.n_live_tup AS rows, coalesce(s.seq_scan, 0) AS seq_scans, \
                coalesce(s.idx_scan, 0) AS index_scans, \
                pg_size_pretty(c.relpages::bigint * current_setting('block_size')::bigint) AS table_size, \
                pg_size_pretty(coalesce((SELECT sum(ic.relpages)::bigint FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
                                          WHERE i.indrelid = s.relid), 0) * current_setting('block_size')::bigint) AS index_size \
         FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
         ORDER BY s.seq_scan DESC NULLS LAST, s.relname",
    )
    .load::<TableUse>(conn)?;
    let indexes = diesel::sql_query(
        "SELECT s.indexrelname AS index, s.relname AS table, s.idx_scan AS scans, \
                pg_size_pretty(c.relpages::bigint * current_setting('block_size')::bigint) AS size, \
                i.indisunique AS unique \
         FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid \
              JOIN pg_class c ON c.oid = s.indexrelid \
         ORDER BY s.idx_scan, s.indexrelname",
    )
    .load::<IndexUse>(conn)?;
    let cache_hit_ratio = diesel::sql_query(
        "SELECT sum(heap_blks_hit)::float8 / nullif(sum(heap_blks_hit) + sum(heap_blks_read), 0) AS ratio \
         FROM pg_statio_user_tables",
    )
    .get_result::<Ratio>(conn)?
    .ratio;
    let database_size = diesel::sql_query("SELECT pg_size_pretty(pg_database_size(current_database())) AS size")
        .get_result::<Size>(conn)?
        .size;
    let lock_waits = diesel::sql_query(
        "SELECT a.pid AS waiting_pid, left(coalesce(a.query, ''), 80) AS waiting_query, \
                array_to_string(pg_blocking_pids(a.pid), ', ') AS blocked_by, \
                extract(epoch FROM now() - coalesce(a.query_start, now()))::bigint AS waiting_secs \
         FROM pg_stat_activity a \
         WHERE a.datname = current_database() AND cardinality(pg_blocking_pids(a.pid)) > 0 \
         ORDER BY a.query_start",
    )
    .load::<LockWait>(conn)?;
    let installed =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements') AS present")
            .get_result::<Present>(conn)?
            .present;
    let slowest = if installed {
        Some(
            diesel::sql_query(
                "SELECT left(query, 80) AS query, calls, mean_exec_time AS mean_ms, total_exec_time AS total_ms \
                 FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 ORDER BY mean_exec_time DESC LIMIT 10",
            )
            .load::<SlowStatement>(conn)?,
        )
    } else {
        None
    };
    Ok(Stats {
        tables,
        indexes,
        cache_hit_ratio,
        database_size,
        lock_waits,
        slowest,
    })
}

impl From<Stats> for pb::DatabaseStats {
    fn from(stats: Stats) -> Self {
        let installed = stats.slowest.is_some();
        Self {
            service: String::new(),
            tables: stats
                .tables
                .into_iter()
                .map(|t| pb::TableUse {
                    table: t.table,
                    rows: t.rows,
                    seq_scans: t.seq_scans,
                    index_scans: t.index_scans,
                    table_size: t.table_size,
                    index_size: t.index_size,
                })
                .collect(),
            indexes: stats
                .indexes
                .into_iter()
                .map(|i| pb::IndexUse {
                    index: i.index,
                    table: i.table,
                    scans: i.scans,
                    size: i.size,
                    unique: i.unique,
                })
                .collect(),
            cache_hit_ratio: stats.cache_hit_ratio,
            database_size: stats.database_size,
            lock_waits: stats
                .lock_waits
                .into_iter()
                .map(|w| pb::LockWait {
                    waiting_pid: w.waiting_pid,
                    waiting_query: w.waiting_query,
                    blocked_by: w.blocked_by,
                    waiting_seconds: w.waiting_secs,
                })
                .collect(),
            slowest_statements: stats
                .slowest
                .unwrap_or_default()
                .into_iter()
                .map(|s| pb::SlowStatement {
                    query: s.query,
                    calls: s.calls,
                    mean_ms: s.mean_ms,
                    total_ms: s.total_ms,
                })
                .collect(),
            pg_stat_statements_installed: installed,
            hint: if installed {
                String::new()
            } else {
                PG_STAT_STATEMENTS_HINT.to_owned()
            },
        }
    }
}
