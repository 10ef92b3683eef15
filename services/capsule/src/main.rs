//! The `capsule` command.
//!
//! - `capsule dev`: find or start PostgreSQL, create roles and databases,
//!   migrate, and serve all four services in this process.
//! - `capsule serve <auth|project|deploy|gateway>`: one service.
//! - `capsule runner`: a runner in its own process, on any host, for the
//!   deploy service at `DEPLOY_SERVICE_URL` with `CAPSULE_RUNNER_TOKEN`.
//! - `capsule migrate <auth|project|deploy|all>`: apply pending migrations.
//! - `capsule postgres up`: make sure a PostgreSQL server runs (the local
//!   one, or a private cluster under `.capsule/`) and print its admin URL.
//!
//! Beside these operator commands, the users' (`user/`): `login`,
//! `projects`, `link`, `deploy`, `deployments`, `rollback`, `logs`, `env`,
//! `open`, `tokens`, and `completions` for the shell.

mod dev;
mod migrate;
mod postgres;
mod serve;
mod stats;
mod table;
mod user;

use std::process::ExitCode;

use capsule::config::ServiceKind;
use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc rather than glibc's malloc: see bench/README.md ("The
/// allocator") for what it changed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "capsule",
    version,
    about = "Capsule: the control plane of a deployment platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything a newcomer needs: PostgreSQL, roles, databases, migrations
    /// and all four services in one process.
    Dev {
        /// Export traces to the OTLP/gRPC collector at URL (default
        /// http://localhost:4317), overriding OTEL_EXPORTER_OTLP_ENDPOINT.
        /// Nothing is started: point it at Jaeger, Tempo or an
        /// OpenTelemetry Collector that runs.
        #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "http://localhost:4317")]
        otlp: Option<String>,
    },
    /// Serve one service (configured from the environment).
    Serve {
        #[arg(value_enum)]
        service: Service,
        /// deploy only: also run the built-in local runner in this process
        /// (same as DEPLOY_LOCAL_RUNNER=true).
        #[arg(long, value_enum)]
        runner: Option<RunnerKind>,
    },
    /// A runner in its own process: builds and serves apps for the deploy
    /// service at DEPLOY_SERVICE_URL, with the token CreateRunner gave
    /// (CAPSULE_RUNNER_TOKEN or CAPSULE_RUNNER_TOKEN_FILE).
    Runner,
    /// Migrations: apply (default), info, validate, revert, redo, baseline.
    Migrate(migrate::MigrateArgs),
    /// What a service's database says about itself.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Print the OpenAPI document of the gateway's REST bridge.
    Openapi,
    /// PostgreSQL for development and tests.
    Postgres {
        #[command(subcommand)]
        command: PostgresCommand,
    },
    /// Tenants' secrets at rest.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Shell completions for the `capsule` command (bash, zsh, fish…).
    Completions { shell: clap_complete::Shell },
    #[command(flatten)]
    User(user::UserCommand),
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Seal every stored variable and webhook secret under the first key of
    /// CAPSULE_ENCRYPTION_KEYS (after a new key was put first, or for
    /// values stored before they were sealed); then the old keys can go.
    Reencrypt,
}

#[derive(Subcommand)]
enum DbCommand {
    /// Table and index use, unused indexes, cache hit ratio, sizes, lock
    /// waits, slowest statements (pg_stat_statements).
    Stats(stats::StatsArgs),
}

#[derive(Subcommand)]
enum PostgresCommand {
    /// Find a running server (CAPSULE_PG_ADMIN_URL, else 127.0.0.1:5432),
    /// else start a private cluster under .capsule/, and print its admin URL.
    Up,
    /// Stop the private cluster under .capsule/, if it runs.
    Down,
}

#[derive(Clone, Copy, ValueEnum)]
enum RunnerKind {
    Local,
}

#[derive(Clone, Copy, ValueEnum)]
enum Service {
    Auth,
    Project,
    Deploy,
    Gateway,
}

impl From<Service> for ServiceKind {
    fn from(service: Service) -> Self {
        match service {
            Service::Auth => ServiceKind::Auth,
            Service::Project => ServiceKind::Project,
            Service::Deploy => ServiceKind::Deploy,
            Service::Gateway => ServiceKind::Gateway,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("capsule: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // The trace exporter runs on the runtime: install it inside.
    let telemetry = match runtime.block_on(async { telemetry(&cli.command) }) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("capsule: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli, telemetry.endpoint().map(str::to_owned)));
    // Outside the runtime's workers, which send the last spans meanwhile.
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("capsule: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs for every command; traces for the ones that serve, named after
/// what they serve, when OTEL_* (or `dev --otlp`) says where.
fn telemetry(command: &Command) -> anyhow::Result<capsule::telemetry::Telemetry> {
    use capsule::config::{ProcessEnv, Source};
    let (name, otlp) = match command {
        Command::Dev { otlp } => ("capsule".to_owned(), otlp.clone()),
        Command::Serve { service, .. } => (format!("capsule-{}", ServiceKind::from(*service).name()), None),
        Command::Runner => ("capsule-runner".to_owned(), None),
        _ => return Ok(capsule::telemetry::init_logging()),
    };
    let source = move |variable: &str| match &otlp {
        Some(url) if variable.starts_with("OTEL_EXPORTER_OTLP_") && variable.ends_with("ENDPOINT") => Some(url.clone()),
        _ => ProcessEnv.get(variable),
    };
    capsule::telemetry::init(&source, &name)
}

async fn run(cli: Cli, traces: Option<String>) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev { .. } => dev::run(traces).await,
        Command::Serve { service, runner } => serve::serve(service.into(), runner.is_some()).await,
        Command::Runner => {
            let connection = capsule_runner::config::Connection::from_env()?;
            let config = capsule_runner::config::RunnerConfig::from_env()?;
            capsule_runner::serve(connection, config, capsule::shutdown::on_signal()).await
        }
        Command::Migrate(args) => migrate::run(args).await,
        Command::Db {
            command: DbCommand::Stats(args),
        } => stats::run(args).await,
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&capsule_gateway::openapi_document()?)?
            );
            Ok(())
        }
        Command::Postgres { command } => match command {
            PostgresCommand::Up => {
                let server = postgres::find_or_start(&postgres::project_dir()?).await?;
                println!("{}", server.admin_url);
                Ok(())
            }
            PostgresCommand::Down => postgres::stop_private(&postgres::project_dir()?).await,
        },
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "capsule", &mut std::io::stdout());
            Ok(())
        }
        Command::User(command) => user::run(command).await,
        Command::Secrets {
            command: SecretsCommand::Reencrypt,
        } => {
            let secrets = capsule::config::Secrets::from_env()?;
            let project = capsule::config::DbConfig::from_env(ServiceKind::Project)?;
            let variables = capsule_project::reencrypt(project, secrets.encryption.clone()).await?;
            let deploy = capsule::config::DbConfig::from_env(ServiceKind::Deploy)?;
            let webhooks = capsule_deploy::reencrypt(deploy, secrets.encryption).await?;
            println!("sealed under the current key: {variables} variable value(s), {webhooks} webhook secret(s)");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_commands_are_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
