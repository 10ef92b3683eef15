//! `capsule db stats <auth|project|deploy|all>`.

use anyhow::Context;
use capsule::{
    config::{DbConfig, ServiceKind},
    db::Database,
    stats::{self, PG_STAT_STATEMENTS_HINT, Stats},
};
use clap::{Args, ValueEnum};

use crate::table::render;

#[derive(Args)]
pub struct StatsArgs {
    #[arg(value_enum)]
    target: Target,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Auth,
    Project,
    Deploy,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

pub async fn run(args: StatsArgs) -> anyhow::Result<()> {
    let services = match args.target {
        Target::Auth => vec![ServiceKind::Auth],
        Target::Project => vec![ServiceKind::Project],
        Target::Deploy => vec![ServiceKind::Deploy],
        Target::All => ServiceKind::WITH_DATABASE.to_vec(),
    };
    let mut all = serde_json::Map::new();
    for kind in services {
        let config = DbConfig::from_env(kind)?;
        let mut conn = Database::new(config.clone())?.connect_direct().await.with_context(|| {
            format!(
                "cannot reach the {kind} database at {}; check {}",
                config.target(),
                config.variables_hint()
            )
        })?;
        let stats = tokio::task::spawn_blocking(move || stats::collect(&mut conn)).await??;
        match args.format {
            Format::Json => {
                all.insert(kind.name().to_owned(), serde_json::to_value(&stats)?);
            }
            Format::Table => print!("{}", describe(kind, &config.target(), &stats)),
        }
    }
    if matches!(args.format, Format::Json) {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}

fn describe(kind: ServiceKind, target: &str, stats: &Stats) -> String {
    let mut out = format!(
        "== {kind} ({target}): {}, cache hit ratio {}\n\n",
        stats.database_size,
        stats.cache_hit_ratio.map_or_else(
            || "n/a (nothing read yet)".to_owned(),
            |ratio| format!("{:.1}%", ratio * 100.0)
        )
    );
    let tables: Vec<Vec<String>> = stats
        .tables
        .iter()
        .map(|t| {
            vec![
                t.table.clone(),
                t.rows.to_string(),
                t.seq_scans.to_string(),
                t.index_scans.to_string(),
                t.table_size.clone(),
                t.index_size.clone(),
            ]
        })
        .collect();
    out.push_str("Tables (sequential scans on large tables are worth a look)\n");
    out.push_str(&render(
        &["TABLE", "ROWS", "SEQ SCANS", "INDEX SCANS", "SIZE", "INDEX SIZE"],
        &tables,
    ));
    let unused: Vec<Vec<String>> = stats
        .indexes
        .iter()
        .filter(|i| i.scans == 0 && !i.unique)
        .map(|i| vec![i.index.clone(), i.table.clone(), i.size.clone()])
        .collect();
    out.push_str("\nIndexes never used (not counting unique ones, which enforce a rule)\n");
    if unused.is_empty() {
        out.push_str("(none)\n");
    } else {
        out.push_str(&render(&["INDEX", "TABLE", "SIZE"], &unused));
    }
    let indexes: Vec<Vec<String>> = stats
        .indexes
        .iter()
        .map(|i| vec![i.index.clone(), i.table.clone(), i.scans.to_string(), i.size.clone()])
        .collect();
    out.push_str("\nIndex use\n");
    out.push_str(&render(&["INDEX", "TABLE", "SCANS", "SIZE"], &indexes));
    out.push_str("\nLock waits (who waits on whom)\n");
    if stats.lock_waits.is_empty() {
        out.push_str("(none)\n");
    } else {
        let waits: Vec<Vec<String>> = stats
            .lock_waits
            .iter()
            .map(|w| {
                vec![
                    w.waiting_pid.to_string(),
                    w.blocked_by.clone(),
                    format!("{} s", w.waiting_secs),
                    w.waiting_query.clone(),
                ]
            })
            .collect();
        out.push_str(&render(&["PID", "BLOCKED BY", "WAITING", "QUERY"], &waits));
    }
    out.push_str("\nSlowest statements\n");
    match &stats.slowest {
        None => out.push_str(&format!("{PG_STAT_STATEMENTS_HINT}\n")),
        Some(slowest) => {
            let rows: Vec<Vec<String>> = slowest
                .iter()
                .map(|s| {
                    vec![
                        format!("{:.2}", s.mean_ms),
                        s.calls.to_string(),
                        format!("{:.0}", s.total_ms),
                        s.query.clone(),
                    ]
                })
                .collect();
            out.push_str(&render(&["MEAN MS", "CALLS", "TOTAL MS", "QUERY"], &rows));
        }
    }
    out.push('\n');
    out
}
