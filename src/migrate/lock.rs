//! The advisory lock that lets one process at a time migrate a service.

use std::time::Duration;

use diesel::{
    PgConnection, QueryableByName, RunQueryDsl,
    sql_types::{BigInt, Integer, Nullable, Text},
};

use super::{error::MigrateError, history::Flag};
use crate::config::ServiceKind;

/// The advisory lock that serialises a service's migrations: a constant per
/// service, so every replica and every `capsule migrate` agrees.
pub fn lock_key(service: ServiceKind) -> i64 {
    // "capsule" in ASCII, then the service's index.
    0x6361_7073_756c_6500 + service as i64
}

/// Who holds the service's migration lock, for people.
fn lock_holder(conn: &mut PgConnection, service: ServiceKind) -> String {
    #[derive(QueryableByName)]
    struct Holder {
        #[diesel(sql_type = Integer)]
        pid: i32,
        #[diesel(sql_type = Nullable<Text>)]
        application_name: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        client: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        state: Option<String>,
        #[diesel(sql_type = Nullable<BigInt>)]
        held_secs: Option<i64>,
    }
    let key = lock_key(service);
    let holder = diesel::sql_query(
        "SELECT a.pid, a.application_name, host(a.client_addr) AS client, a.state, \
                extract(epoch FROM now() - a.xact_start)::bigint AS held_secs \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid = ($1 >> 32)::oid AND l.objid = ($1 & 4294967295)::oid AND l.objsubid = 1 \
         LIMIT 1",
    )
    .bind::<BigInt, _>(key)
    .get_result::<Holder>(conn);
    match holder {
        Ok(h) => format!(
            "pid {} ({}, from {}, {}{})",
            h.pid,
            h.application_name
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "no application name".to_owned()),
            h.client.unwrap_or_else(|| "a local socket".to_owned()),
            h.state.unwrap_or_else(|| "unknown state".to_owned()),
            h.held_secs.map(|secs| format!(", for {secs} s")).unwrap_or_default()
        ),
        Err(_) => "another session (it has just released it or is not visible to this role)".to_owned(),
    }
}

/// Runs `work` while holding the service's migration lock, waiting at most
/// `wait` for it and saying who holds it meanwhile.
pub fn with_lock<T>(
    conn: &mut PgConnection,
    service: ServiceKind,
    wait: Duration,
    work: impl FnOnce(&mut PgConnection) -> Result<T, MigrateError>,
) -> Result<T, MigrateError> {
    let key = lock_key(service);
    let start = std::time::Instant::now();
    let mut announced = false;
    loop {
        let got = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS flag")
            .bind::<BigInt, _>(key)
            .get_result::<Flag>(conn)?
            .flag;
        if got {
            break;
        }
        if start.elapsed() >= wait {
            return Err(MigrateError::LockTimeout {
                service,
                holder: lock_holder(conn, service),
                waited_secs: wait.as_secs(),
            });
        }
        if !announced {
            tracing::info!(service = %service, holder = %lock_holder(conn, service), "waiting for the migration lock");
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let result = work(conn);
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1) AS flag")
        .bind::<BigInt, _>(key)
        .get_result::<Flag>(conn);
    let value = result?;
    unlocked?;
    Ok(value)
}
