//! `capsule migrate <auth|project|deploy|all> [action]`: the original
//! `migrate:auth`, `migrate:auth:info`, `migrate:auth:validate` and
//! `migrate:all`, plus revert, redo, baseline, repair, dry runs and backups.

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
    /// `baseline`: record versions up to this one as applied; `repair`:
    /// the applied migration whose checksum to re-record.
    #[arg(long = "version", value_name = "VERSION")]
    version: Option<String>,
    /// `repair`: why the changed migration does what the applied one did
    /// (kept in the database's history).
    #[arg(long)]
    reason: Option<String>,
    /// `lint`: check the migrations after this version (0 for all);
    /// by default the ones added since the last release.
    #[arg(long, value_name = "VERSION")]
    since: Option<String>,
    /// `apply`, `revert`, `redo`: pg_dump each database into this
    /// directory first; abort if the dump fails.
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
    Repair,
    Lint,
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
    if args.action == Action::Lint {
        return lint(&args);
    }
    if args.action == Action::Baseline && args.version.is_none() {
        bail!("baseline needs --version VERSION: the last version the database already has");
    }
    if args.action == Action::Baseline && matches!(args.target, Target::All) {
        bail!("baseline adopts one database at a time: name auth, project or deploy");
    }
    if args.action == Action::Repair {
        if matches!(args.target, Target::All) {
            bail!("repair changes one database's history at a time: name auth, project or deploy");
        }
        if args.version.is_none() {
            bail!("repair needs --version VERSION: the applied migration whose file changed");
        }
        if args.reason.as_deref().is_none_or(|reason| reason.trim().is_empty()) {
            bail!("repair needs --reason \"...\": why the changed file does what the applied migration did");
        }
    }
    if args.backup.is_some() && (args.dry_run || !matches!(args.action, Action::Apply | Action::Revert | Action::Redo))
    {
        bail!("--backup goes with apply, revert or redo (not a dry run): they are what change the schema");
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
        if let Some(dir) = &args.backup {
            let label = match args.action {
                Action::Revert => format!("before-revert-to-{}", args.to.as_deref().unwrap_or("previous")),
                Action::Redo => "before-redo".to_owned(),
                _ => format!("before-{}", set.files.last().map_or("none", |file| file.version)),
            };
            backup(&config, set, dir, &label).await?;
        }
        // What the command read, where it decides something.
        let prefix = kind.env_prefix();
        if args.action != Action::Info {
            eprintln!(
                "{kind}: {} ({prefix}_MIGRATE_ALLOW_FUTURE={})",
                config.target(),
                config.migrate_allow_future
            );
        }
        let request = Request {
            action: args.action,
            future: future_of(&config),
            dry_run: args.dry_run,
            to: args.to.clone(),
            version: args.version.clone(),
            reason: args.reason.clone(),
        };
        let outcome = tokio::task::spawn_blocking(move || act(&mut conn, set, &request)).await?;
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
        Action::Repair => "repair",
        Action::Lint => "lint",
    }
}

/// What to do to one database.
struct Request {
    action: Action,
    /// `<SVC>_MIGRATE_ALLOW_FUTURE`: whether a database holding migrations
    /// newer than this build is accepted.
    future: migrate::Future,
    dry_run: bool,
    to: Option<String>,
    version: Option<String>,
    reason: Option<String>,
}

enum Outcome {
    Rows(Vec<InfoRow>),
    Said(Vec<String>),
}

fn act(
    conn: &mut PgConnection,
    set: &'static MigrationSet,
    request: &Request,
) -> Result<Outcome, migrate::MigrateError> {
    let options = MigrateOptions {
        future: request.future,
        ..MigrateOptions::default()
    };
    let to = request.to.as_deref();
    let version = request.version.as_deref().unwrap_or_default();
    Ok(match request.action {
        Action::Info => Outcome::Rows(migrate::info(conn, set)?),
        Action::Validate => {
            let ahead = migrate::validate(conn, set, options.future)?;
            let mut said = "valid: the database's history matches this build".to_owned();
            if !ahead.is_empty() {
                said.push_str(&format!(
                    " (it also holds {}, newer than this build: accepted because {}_MIGRATE_ALLOW_FUTURE is true)",
                    ahead.join(", "),
                    set.service.env_prefix()
                ));
            }
            Outcome::Said(vec![said])
        }
        Action::Apply if request.dry_run => {
            let report = migrate::dry_run(conn, set, &options)?;
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
            let recorded = migrate::baseline(conn, set, version)?;
            Outcome::Said(vec![format!("baseline: recorded {} as applied", recorded.join(", "))])
        }
        Action::Lint => unreachable!("lint reads no database: `run` handles it"),
        Action::Repair => {
            let reason = request.reason.as_deref().unwrap_or_default();
            let repair = migrate::repair(conn, set, version, reason, &operator(), &options)?;
            Outcome::Said(vec![format!(
                "repaired {}: checksum {} re-recorded as {} by {} ({}), because: {}",
                repair.version,
                repair.old_checksum,
                repair.new_checksum,
                repair.operator,
                repair.repaired_by,
                repair.reason
            )])
        }
    })
}

/// Lints the migrations added since the last release (or `--since`);
/// fails when any finding is not waived. Needs no database.
fn lint(args: &MigrateArgs) -> anyhow::Result<()> {
    let mut findings = Vec::new();
    for kind in args.target.services() {
        let set = migration_set(kind);
        let after = match args.since.as_deref() {
            Some("0") => None,
            Some(version) => Some(version.to_owned()),
            None => migrate::last_release(kind)?,
        };
        let checked: Vec<&str> = set
            .files
            .iter()
            .map(|file| file.version)
            .filter(|version| after.as_deref().is_none_or(|after| *version > after))
            .collect();
        if matches!(args.format, Format::Table) {
            match (&after, checked.is_empty()) {
                (Some(after), true) => println!("{kind}: no migration after {after} (the last release)"),
                (Some(after), false) => println!("{kind}: checking {} (after {after})", checked.join(", ")),
                (None, _) => println!("{kind}: checking every migration ({})", checked.join(", ")),
            }
        }
        findings.extend(migrate::lint(kind, set.files, after.as_deref()));
    }
    let problems = findings.iter().filter(|finding| finding.waived.is_none()).count();
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
        Format::Table => {
            for finding in &findings {
                println!("{finding}");
            }
            println!("{problems} problem(s), {} waived", findings.len() - problems);
        }
    }
    if problems > 0 {
        bail!(
            "lint found {problems} problem(s): fix them, or waive each in the migration's metadata.toml with a reason"
        );
    }
    Ok(())
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
    let options = MigrateOptions {
        future: future_of(config),
        ..MigrateOptions::default()
    };
    let applied = tokio::task::spawn_blocking(move || migrate::migrate(&mut conn, set, &options)).await??;
    for migration in applied {
        println!(
            "{kind}: applied {} {} ({} ms)",
            migration.version, migration.description, migration.duration_ms
        );
    }
    Ok(())
}

/// Whether a database holding migrations newer than this build is
/// accepted, as `<SVC>_MIGRATE_ALLOW_FUTURE` says.
fn future_of(config: &DbConfig) -> migrate::Future {
    match config.migrate_allow_future {
        true => migrate::Future::Allow,
        false => migrate::Future::Refuse,
    }
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

/// Who runs the command, for the history: `user@host`.
fn operator() -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {}", nix::unistd::getuid()), |user| user.name);
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|host| host.into_string().ok())
        .unwrap_or_else(|| "unknown host".to_owned());
    format!("{user}@{host}")
}

/// pg_dump of the service's database, named after the time and what is
/// about to happen to it. The password goes through the environment, not
/// the command line, decoded from the URL (`%40` is `@`).
async fn backup(config: &DbConfig, set: &MigrationSet, dir: &Path, label: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the backup directory {}", dir.display()))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let file = dir.join(format!("{}-{stamp}-{label}.sql", set.service));
    let mut url =
        url::Url::parse(config.connection_url().expose_secret()).context("the database URL does not parse")?;
    let password = url.password().map(|encoded| {
        percent_encoding::percent_decode_str(encoded)
            .decode_utf8_lossy()
            .into_owned()
    });
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
        .context("cannot run pg_dump (install postgresql-client); nothing was changed")?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&file);
        bail!(
            "the backup of {} failed, so nothing was changed: {}",
            config.target(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    println!("{}: backed up to {}", set.service, file.display());
    Ok(())
}
