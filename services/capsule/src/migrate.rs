//! `capsule migrate <auth|project|deploy|all> [action]`: the original
//! `migrate:auth`, `migrate:auth:info`, `migrate:auth:validate` and
//! `migrate:all`, plus revert, redo, baseline, dry runs and backups.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use capsule::{
    config::{DbConfig, ServiceKind},
    db::Database,
    migrate::{self, InfoRow, MigrateOptions, MigrationSet},
};
use clap::{Args, ValueEnum};
use diesel::PgConnection;
use secrecy::ExposeSecret;

#[derive(Args)]
pub struct MigrateArgs {
    #[arg(value_enum)]
    target: Target,
    /// What to do.
    #[arg(value_enum, default_value_t = Action::Apply)]
    action: Action,
    /// Apply inside a transaction, report statements and risky locks, then
    /// roll back.
    #[arg(long)]
    dry_run: bool,
    /// Output of `info`.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// `revert`: revert every migration after this version (0 for all).
    #[arg(long)]
    to: Option<String>,
    /// `baseline`: record versions up to this one as applied.
    #[arg(long = "version", value_name = "VERSION")]
    baseline_version: Option<String>,
    /// `apply`: pg_dump each database into this directory first; abort if
    /// the dump fails.
    #[arg(long, value_name = "DIR")]
    backup: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Auth,
    Project,
    Deploy,
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Action {
    Apply,
    Info,
    Validate,
    Revert,
    Redo,
    Baseline,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

impl Target {
    fn services(self) -> Vec<ServiceKind> {
        match self {
            Self::Auth => vec![ServiceKind::Auth],
            Self::Project => vec![ServiceKind::Project],
            Self::Deploy => vec![ServiceKind::Deploy],
            Self::All => ServiceKind::WITH_DATABASE.to_vec(),
        }
    }
}

pub(crate) fn migration_set(kind: ServiceKind) -> &'static MigrationSet {
    match kind {
        ServiceKind::Auth => &capsule_auth::MIGRATIONS,
        ServiceKind::Project => &capsule_project::MIGRATIONS,
        ServiceKind::Deploy | ServiceKind::Gateway => &capsule_deploy::MIGRATIONS,
    }
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    if args.action == Action::Baseline && args.baseline_version.is_none() {
        bail!("baseline needs --version VERSION: the last version the database already has");
    }
    if args.action == Action::Baseline && matches!(args.target, Target::All) {
        bail!("baseline adopts one database at a time: name auth, project or deploy");
    }
    let mut info_rows = Vec::new();
    let mut failures = Vec::new();
    for kind in args.target.services() {
        let config = DbConfig::from_env(kind)?;
        let db = Database::new(config.clone())?;
        let mut conn = db.connect_direct().await.with_context(|| {
            format!(
                "cannot reach the {kind} database at {}; check {}",
                config.target(),
                config.variables_hint()
            )
        })?;
        let set = migration_set(kind);
        if args.action == Action::Apply
            && !args.dry_run
            && let Some(dir) = &args.backup
        {
            backup(&config, set, dir).await?;
        }
        let action = args.action;
        let dry_run = args.dry_run;
        let to = args.to.clone();
        let version = args.baseline_version.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            act(&mut conn, set, action, dry_run, to.as_deref(), version.as_deref())
        })
        .await?;
        match outcome {
            Ok(Outcome::Rows(rows)) => info_rows.extend(rows),
            Ok(Outcome::Said(lines)) => {
                for line in lines {
                    println!("{kind}: {line}");
                }
            }
            Err(err) => {
                eprintln!("{kind}: {err}");
                failures.push(kind);
            }
        }
    }
    if args.action == Action::Info {
        match args.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&info_rows)?),
            Format::Table => print!("{}", render_table(&info_rows)),
        }
    }
    if !failures.is_empty() {
        let names: Vec<&str> = failures.iter().map(|kind| kind.name()).collect();
        bail!("{} failed for {}", action_name(args.action), names.join(", "));
    }
    Ok(())
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Apply => "migrate",
        Action::Info => "info",
        Action::Validate => "validate",
        Action::Revert => "revert",
        Action::Redo => "redo",
        Action::Baseline => "baseline",
    }
}

enum Outcome {
    Rows(Vec<InfoRow>),
    Said(Vec<String>),
}

fn act(
    conn: &mut PgConnection,
    set: &'static MigrationSet,
    action: Action,
    dry_run: bool,
    to: Option<&str>,
    version: Option<&str>,
) -> Result<Outcome, migrate::MigrateError> {
    let options = MigrateOptions::default();
    Ok(match action {
        Action::Info => Outcome::Rows(migrate::info(conn, set)?),
        Action::Validate => {
            let ahead = migrate::validate(conn, set, options.future)?;
            let mut said = "valid: the database's history matches this build".to_owned();
            if !ahead.is_empty() {
                said.push_str(&format!(
                    " (it also holds {}, newer than this build: served while {}_MIGRATE_ALLOW_FUTURE is true)",
                    ahead.join(", "),
                    set.service.env_prefix()
                ));
            }
            Outcome::Said(vec![said])
        }
        Action::Apply if dry_run => {
            let report = migrate::dry_run(conn, set)?;
            let mut lines = vec![if report.is_empty() {
                "dry run: nothing to apply".to_owned()
            } else {
                format!(
                    "dry run: {} migration(s) would be applied, then everything was rolled back",
                    report.len()
                )
            }];
            for migration in report {
                lines.push(format!("  {} {}", migration.version, migration.description));
                for (index, statement) in migration.statements.iter().enumerate() {
                    lines.push(format!("    {:>2}. {statement}", index + 1));
                }
                for warning in migration.warnings {
                    lines.push(format!("    warning: {warning}"));
                }
            }
            Outcome::Said(lines)
        }
        Action::Apply => {
            let report = migrate::migrate(conn, set, &options)?;
            if report.is_empty() {
                Outcome::Said(vec!["up to date".to_owned()])
            } else {
                Outcome::Said(
                    report
                        .into_iter()
                        .map(|m| format!("applied {} {} ({} ms)", m.version, m.description, m.duration_ms))
                        .collect(),
                )
            }
        }
        Action::Revert => {
            let reverted = migrate::revert(conn, set, to, &options)?;
            Outcome::Said(if reverted.is_empty() {
                vec!["nothing to revert".to_owned()]
            } else {
                vec![format!("reverted {}", reverted.join(", "))]
            })
        }
        Action::Redo => {
            let reverted = migrate::revert(conn, set, None, &options)?;
            let applied = migrate::migrate(conn, set, &options)?;
            let applied: Vec<String> = applied.into_iter().map(|m| m.version).collect();
            Outcome::Said(vec![format!(
                "reverted {} and applied {}",
                reverted.join(", "),
                applied.join(", ")
            )])
        }
        Action::Baseline => {
            let version = version.unwrap_or_default();
            let recorded = migrate::baseline(conn, set, version)?;
            Outcome::Said(vec![format!("baseline: recorded {} as applied", recorded.join(", "))])
        }
    })
}

/// Applies a service's pending migrations, printing what was applied.
pub async fn apply(config: &DbConfig) -> anyhow::Result<()> {
    let kind = config.service;
    let db = Database::new(config.clone())?;
    let mut conn = db.connect_direct().await.with_context(|| {
        format!(
            "cannot reach the {kind} database at {}; check {}",
            config.target(),
            config.variables_hint()
        )
    })?;
    let set = migration_set(kind);
    let applied =
        tokio::task::spawn_blocking(move || migrate::migrate(&mut conn, set, &MigrateOptions::default())).await??;
    for migration in applied {
        println!(
            "{kind}: applied {} {} ({} ms)",
            migration.version, migration.description, migration.duration_ms
        );
    }
    Ok(())
}

/// A table a person reads at a glance.
fn render_table(rows: &[InfoRow]) -> String {
    let header = [
        "SERVICE",
        "VERSION",
        "DESCRIPTION",
        "STATE",
        "APPLIED AT (UTC)",
        "DURATION",
        "CHECKSUM",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.service.to_string(),
                row.version.clone(),
                if row.transactional {
                    row.description.clone()
                } else {
                    format!("{} (no transaction)", row.description)
                },
                row.state.to_string(),
                row.applied_at
                    .map(|at| at.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default(),
                row.duration_ms.map(|ms| format!("{ms} ms")).unwrap_or_default(),
                row.checksum.chars().take(12).collect(),
            ]
        })
        .collect();
    let mut out = crate::table::render(&header, &cells);
    if rows.is_empty() {
        out.push_str("(no migrations)\n");
    }
    out
}

/// pg_dump of the service's database, named after the time and the version
/// it is about to be migrated to. The password goes through the
/// environment, not the command line.
async fn backup(config: &DbConfig, set: &MigrationSet, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the backup directory {}", dir.display()))?;
    let target_version = set.files.last().map_or("none", |file| file.version);
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let file = dir.join(format!("{}-{stamp}-before-{target_version}.sql", set.service));
    let mut url =
        url::Url::parse(config.connection_url().expose_secret()).context("the database URL does not parse")?;
    let password = url.password().map(str::to_owned);
    let _ = url.set_password(None);
    // libpq options such as connect_timeout are fine for pg_dump; `options`
    // (search_path) is too.
    let mut command = tokio::process::Command::new("pg_dump");
    command
        .arg("--dbname")
        .arg(url.as_str())
        .arg("--file")
        .arg(&file)
        .arg("--no-owner");
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let output = command
        .output()
        .await
        .context("cannot run pg_dump (install postgresql-client); nothing was migrated")?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&file);
        bail!(
            "the backup of {} failed, so nothing was migrated: {}",
            config.target(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    println!("{}: backed up to {}", set.service, file.display());
    Ok(())
}
