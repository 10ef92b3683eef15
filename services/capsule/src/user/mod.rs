//! The commands for Capsule's users, beside the operator's: sign in, link
//! a directory to a project, deploy it, follow its logs, set its
//! variables, roll back. They speak gRPC to the gateway (`--api`,
//! `CAPSULE_API_URL`, or where `capsule login` signed in; `capsule dev`'s
//! by default) as the signed-in user, or with `CAPSULE_TOKEN` (an API
//! token). Every read takes `--json` (the API's own JSON mapping);
//! errors are one line that says what to do.

mod account;
mod api;
mod deploy;
mod session;
mod show;
mod upload;

use clap::Subcommand;
use deploy::{DeployArgs, LogsArgs, RollbackArgs, RunArgs};
use upload::UpArgs;

use account::{EnvCommand, ProjectsCommand, TokensCommand};
use api::Global;

/// The users' commands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Sign in with your email and password (the session is kept in your
    /// configuration directory, mode 0600; CAPSULE_TOKEN instead, in CI).
    Login {
        #[arg(long)]
        email: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        global: Global,
    },
    /// Sign out here and end the session.
    Logout {
        #[command(flatten)]
        global: Global,
    },
    /// Who you are signed in as.
    Whoami {
        #[command(flatten)]
        global: Global,
    },
    /// Your projects; `projects create` makes one.
    Projects {
        #[command(subcommand)]
        command: Option<ProjectsCommand>,
        #[command(flatten)]
        global: Global,
    },
    /// Link this directory to a project (id or slug), or show its link.
    Link {
        #[arg(value_name = "PROJECT")]
        target: Option<String>,
        /// Forget this directory's link.
        #[arg(long, conflicts_with = "target")]
        unlink: bool,
        #[command(flatten)]
        global: Global,
    },
    /// Deploy the linked project and follow it until it is live.
    Deploy {
        #[command(flatten)]
        args: DeployArgs,
        #[command(flatten)]
        global: Global,
    },
    /// Deploy this directory as it is, without git (what .gitignore leaves
    /// out stays out), and follow it until it is live.
    Up {
        #[command(flatten)]
        args: UpArgs,
        #[command(flatten)]
        global: Global,
    },
    /// The linked project's deployments, newest first.
    Deployments {
        #[command(flatten)]
        global: Global,
    },
    /// Serve an earlier deployment again, without building.
    Rollback {
        #[command(flatten)]
        args: RollbackArgs,
        #[command(flatten)]
        global: Global,
    },
    /// A one-off command beside the live release: `capsule run -- rake db:migrate`.
    Run {
        #[command(flatten)]
        args: RunArgs,
        #[command(flatten)]
        global: Global,
    },
    /// A deployment's log; `-f` follows it.
    Logs {
        #[command(flatten)]
        args: LogsArgs,
        #[command(flatten)]
        global: Global,
    },
    /// The linked project's variables.
    Env {
        #[command(subcommand)]
        command: EnvCommand,
        #[command(flatten)]
        global: Global,
    },
    /// The linked project's address (opened in a browser at a terminal).
    Open {
        #[command(flatten)]
        global: Global,
    },
    /// Your API tokens (for CI: CAPSULE_TOKEN).
    Tokens {
        #[command(subcommand)]
        command: Option<TokensCommand>,
        #[command(flatten)]
        global: Global,
    },
}

pub async fn run(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Login {
            email,
            password_stdin,
            global,
        } => account::login(&global, email, password_stdin).await,
        UserCommand::Logout { global } => account::logout(&global).await,
        UserCommand::Whoami { global } => account::whoami(&global).await,
        UserCommand::Projects { command, global } => account::projects(&global, command).await,
        UserCommand::Link { target, unlink, global } => account::link(&global, target, unlink).await,
        UserCommand::Deploy { args, global } => deploy::deploy(&global, args).await,
        UserCommand::Up { args, global } => upload::up(&global, args).await,
        UserCommand::Deployments { global } => deploy::deployments(&global).await,
        UserCommand::Rollback { args, global } => deploy::rollback(&global, args).await,
        UserCommand::Logs { args, global } => deploy::logs(&global, args).await,
        UserCommand::Run { args, global } => deploy::run(&global, args).await,
        UserCommand::Env { command, global } => account::env(&global, command).await,
        UserCommand::Open { global } => account::open(&global).await,
        UserCommand::Tokens { command, global } => account::tokens(&global, command).await,
    }
}
