//! The `capsule` command.
//!
//! - `capsule dev`: find or start PostgreSQL, create roles and databases,
//!   migrate, and serve all four services in this process.
//! - `capsule serve <auth|project|deploy|gateway>`: one service.
//! - `capsule migrate <auth|project|deploy|all>`: apply pending migrations.
//! - `capsule postgres up`: make sure a PostgreSQL server runs (the local
//!   one, or a private cluster under `.capsule/`) and print its admin URL.

mod dev;
mod migrate;
mod postgres;
mod stats;
mod table;

use std::{net::SocketAddr, process::ExitCode};

use anyhow::Context;
use capsule::config::{DbConfig, GatewayConfig, Mesh, ServeConfig, ServiceKind};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    Dev,
    /// Serve one service (configured from the environment).
    Serve {
        #[arg(value_enum)]
        service: Service,
        /// deploy only: also run the built-in local runner in this process
        /// (same as DEPLOY_LOCAL_RUNNER=true).
        #[arg(long, value_enum)]
        runner: Option<RunnerKind>,
    },
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
    capsule::telemetry::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("capsule: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("capsule: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev => dev::run().await,
        Command::Serve { service, runner } => serve(service.into(), runner.is_some()).await,
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
    }
}

/// Binds a listener, naming the variable to change when the address is taken.
pub(crate) async fn bind(addr: SocketAddr, variable: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; set {variable} to a free address"))
}

async fn serve(kind: ServiceKind, local_runner: bool) -> anyhow::Result<()> {
    if local_runner && kind != ServiceKind::Deploy {
        anyhow::bail!("--runner local is for `capsule serve deploy` only");
    }
    let serve_config = ServeConfig::from_env(kind)?;
    let shutdown = capsule::shutdown::on_signal();
    serve_metrics(&serve_config, &shutdown).await?;
    serve_one(kind, &serve_config, local_runner, shutdown).await
}

/// With `CAPSULE_METRICS_ADDR`, serves `/metrics` on a listener of its own
/// (the gRPC ports then do not).
pub(crate) async fn serve_metrics(config: &ServeConfig, shutdown: &CancellationToken) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics_addr {
        let listener = bind(addr, "CAPSULE_METRICS_ADDR").await?;
        tokio::spawn(capsule::telemetry::serve_metrics(listener, shutdown.clone()));
    }
    Ok(())
}

/// Serves one service with its configuration from the environment.
async fn serve_one(
    kind: ServiceKind,
    serve_config: &ServeConfig,
    local_runner: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = bind(serve_config.grpc_addr, &kind.grpc_addr_variable()).await?;
    match kind {
        ServiceKind::Auth => {
            capsule_auth::serve(listener, DbConfig::from_env(kind)?, serve_config.clone(), shutdown).await
        }
        ServiceKind::Project => {
            let (db, mesh) = (DbConfig::from_env(kind)?, Mesh::from_env()?);
            capsule_project::serve(listener, db, mesh, serve_config.clone(), shutdown).await
        }
        ServiceKind::Deploy => {
            let (db, mesh) = (DbConfig::from_env(kind)?, Mesh::from_env()?);
            let mut config = capsule_deploy::DeployConfig::from_env()?;
            if local_runner && config.runner.is_none() {
                config = capsule_deploy::DeployConfig::from_source(&|name: &str| match name {
                    "DEPLOY_LOCAL_RUNNER" => Some("true".to_owned()),
                    other => std::env::var(other).ok(),
                })?;
            }
            capsule_deploy::serve(listener, db, mesh, config, serve_config.clone(), shutdown).await
        }
        ServiceKind::Gateway => {
            let config = GatewayConfig::from_env()?;
            let http = bind(config.http_addr, "GATEWAY_HTTP_ADDR").await?;
            let edge = capsule_gateway::EdgeConfig::from_env()?;
            capsule_gateway::serve(listener, http, config, edge, serve_config.clone(), shutdown).await
        }
    }
}
