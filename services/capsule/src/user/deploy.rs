//! Deploying from the terminal: a deployment of the linked project,
//! followed until it is live or failed; rollbacks; logs, followed live.

use std::io::IsTerminal;

use anyhow::bail;
use capsule::proto::deploy::v1::{self as pb, DeploymentState};
use clap::Args;

use super::{
    api::{Api, Global},
    show::status,
};

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// A branch, tag or commit (default: the project's branch).
    #[arg(long = "ref")]
    pub source_ref: Option<String>,
    /// The environment (default: production).
    #[arg(long, short)]
    pub environment: Option<String>,
    /// Return once the deployment is queued instead of following it.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The earlier deployment to serve again (default: the one before the
    /// live one).
    pub deployment: Option<String>,
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The environment whose live release runs it (default: production).
    #[arg(long, short)]
    pub environment: Option<String>,
    /// Seconds it may take (default: the platform's).
    #[arg(long)]
    pub timeout: Option<u32>,
    /// The command, after `--`: run by the shell in the app's sandbox.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A deployment (default: the project's latest).
    pub deployment: Option<String>,
    /// Keep printing new lines until the deployment stops.
    #[arg(long, short)]
    pub follow: bool,
}

pub async fn deploy(global: &Global, args: DeployArgs) -> anyhow::Result<()> {
    let api = Api::connect(global).await?;
    let project = api.project().await?;
    let deployment = api
        .deploys()
        .create_deployment(api.call(pb::CreateDeploymentRequest {
            project_id: project.id.clone(),
            source_ref: args.source_ref.unwrap_or_default(),
            environment: args.environment.unwrap_or_default(),
        }))
        .await
        .map_err(status)?
        .into_inner();
    settle(&api, deployment, args.detach).await
}

pub async fn rollback(global: &Global, args: RollbackArgs) -> anyhow::Result<()> {
    let api = Api::connect(global).await?;
    let target = match args.deployment {
        Some(id) => id,
        None => {
            let project = api.project().await?;
            let earlier = list(&api, &project.id)
                .await?
                .into_iter()
                .filter(|deployment| deployment.environment.is_empty() || deployment.environment == "production")
                .find(|deployment| deployment.state == DeploymentState::Superseded as i32);
            match earlier {
                Some(deployment) => deployment.id,
                None => bail!("no earlier deployment to go back to: pass one (`capsule deployments` lists them)"),
            }
        }
    };
    let deployment = api
        .deploys()
        .rollback_deployment(api.call(pb::RollbackDeploymentRequest { deployment_id: target }))
        .await
        .map_err(status)?
        .into_inner();
    settle(&api, deployment, args.detach).await
}

/// Prints the deployment; unless `detach`, follows its log until it ends
/// and fails when it did not go live.
pub(super) async fn settle(api: &Api, deployment: pb::Deployment, detach: bool) -> anyhow::Result<()> {
    if detach {
        return api.out().one(&deployment, || format!("Queued {}.", deployment.id));
    }
    let id = deployment.id.clone();
    let ended = if api.out().json {
        // No log: the end, in silence.
        until_settled(api, deployment).await?
    } else {
        eprintln!("Deploying {id} …");
        // The log as it comes, until the deployment settles (a live app's
        // log goes on: `capsule logs -f` follows it).
        let following = follow(api, &id);
        tokio::pin!(following);
        tokio::select! {
            ended = until_settled(api, deployment) => {
                // The last lines (a failure's reason among them) are on
                // their way.
                let _ = tokio::time::timeout(std::time::Duration::from_millis(500), &mut following).await;
                ended?
            }
            followed = &mut following => {
                followed?;
                let now = get(api, &id).await?;
                until_settled(api, now).await?
            }
        }
    };
    if api.out().json {
        return api.out().one(&ended, String::new);
    }
    let state = state_name(ended.state);
    match DeploymentState::try_from(ended.state) {
        Ok(DeploymentState::Live) => {
            println!("Live at {}", ended.url);
            Ok(())
        }
        _ => bail!("the deployment is {state}: {}", ended.status_message),
    }
}

async fn until_settled(api: &Api, mut deployment: pb::Deployment) -> anyhow::Result<pb::Deployment> {
    while !settled(deployment.state) {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        deployment = get(api, &deployment.id).await?;
    }
    Ok(deployment)
}

async fn get(api: &Api, id: &str) -> anyhow::Result<pb::Deployment> {
    Ok(api
        .deploys()
        .get_deployment(api.call(pb::GetDeploymentRequest {
            deployment_id: id.to_owned(),
        }))
        .await
        .map_err(status)?
        .into_inner())
}

fn settled(state: i32) -> bool {
    !matches!(
        DeploymentState::try_from(state),
        Ok(DeploymentState::Queued | DeploymentState::Building | DeploymentState::Deploying)
    )
}

fn state_name(state: i32) -> String {
    DeploymentState::try_from(state).map_or_else(
        |_| "unknown".to_owned(),
        |state| {
            state
                .as_str_name()
                .trim_start_matches("DEPLOYMENT_STATE_")
                .to_ascii_lowercase()
        },
    )
}

/// Prints a deployment's log as it comes, until the deployment stops
/// changing (live, failed, canceled…).
async fn follow(api: &Api, deployment_id: &str) -> anyhow::Result<()> {
    let mut lines = api
        .deploys()
        .stream_logs(api.call(pb::StreamLogsRequest {
            deployment_id: deployment_id.to_owned(),
            after_sequence: 0,
            follow: true,
        }))
        .await
        .map_err(status)?
        .into_inner();
    while let Some(line) = lines.message().await.map_err(status)? {
        print_line(api, &line)?;
    }
    Ok(())
}

fn print_line(api: &Api, line: &pb::LogLine) -> anyhow::Result<()> {
    if api.out().json {
        // One JSON object per line, as they come.
        println!("{}", serde_json::to_string(&super::show::value(line)?)?);
    } else if std::io::stdout().is_terminal() {
        // A build's output is anyone's: no escape sequence reaches the
        // terminal (titles, the clipboard, hidden text).
        let shown: String = line.text.chars().filter(|c| !c.is_control() || *c == '\t').collect();
        println!("{shown}");
    } else {
        println!("{}", line.text);
    }
    Ok(())
}

async fn list(api: &Api, project_id: &str) -> anyhow::Result<Vec<pb::Deployment>> {
    Ok(api
        .deploys()
        .list_deployments(api.call(pb::ListDeploymentsRequest {
            project_id: project_id.to_owned(),
            page_size: 100,
            ..Default::default()
        }))
        .await
        .map_err(status)?
        .into_inner()
        .deployments)
}

pub async fn deployments(global: &Global) -> anyhow::Result<()> {
    let api = Api::connect(global).await?;
    let project = api.project().await?;
    let deployments = list(&api, &project.id).await?;
    let rows = deployments
        .iter()
        .map(|deployment| {
            vec![
                deployment.id.clone(),
                state_name(deployment.state),
                if deployment.environment.is_empty() {
                    "production".to_owned()
                } else {
                    deployment.environment.clone()
                },
                deployment.commit_sha.chars().take(12).collect(),
                deployment
                    .create_time
                    .as_ref()
                    .and_then(|time| chrono::DateTime::from_timestamp(time.seconds, 0))
                    .map(|time| time.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    api.out()
        .list(&deployments, &["ID", "STATE", "ENVIRONMENT", "COMMIT", "CREATED"], rows)
}

/// `capsule run -- COMMAND`: a one-off command beside the live release
/// (its variables, its sandbox), its output as it comes; exits with the
/// command's status.
pub async fn run(global: &Global, args: RunArgs) -> anyhow::Result<()> {
    use pb::run_command_response::Event;
    let api = Api::connect(global).await?;
    let project = api.project().await?;
    let mut events = api
        .deploys()
        .run_command(api.call(pb::RunCommandRequest {
            project_id: project.id,
            environment: args.environment.unwrap_or_default(),
            command: args.command.join(" "),
            time_limit_seconds: args.timeout.unwrap_or_default(),
        }))
        .await
        .map_err(status)?
        .into_inner();
    let mut last = None;
    while let Some(event) = events.message().await.map_err(status)? {
        match event.event {
            Some(Event::Line(line)) => print_line(&api, &line)?,
            Some(Event::Run(run)) => last = Some(run),
            None => {}
        }
    }
    let Some(run) = last else {
        bail!("the run ended without a word from the server: `capsule logs` may say more");
    };
    if api.out().json {
        api.out().one(&run, String::new)?;
    }
    match pb::RunState::try_from(run.state) {
        Ok(pb::RunState::Succeeded) => Ok(()),
        _ => match run.exit_code {
            Some(code) if code != 0 => {
                use std::io::Write;
                let _ = std::io::stdout().flush();
                std::process::exit(code.clamp(1, 255));
            }
            _ => bail!("the command did not run: {}", run.status_message),
        },
    }
}

/// `capsule logs`: a deployment's log so far, or followed with `-f`.
pub async fn logs(global: &Global, args: LogsArgs) -> anyhow::Result<()> {
    let api = Api::connect(global).await?;
    let deployment_id = match args.deployment {
        Some(id) => id,
        None => {
            let project = api.project().await?;
            match list(&api, &project.id).await?.into_iter().next() {
                Some(latest) => latest.id,
                None => bail!("the project has no deployment yet: run `capsule deploy`"),
            }
        }
    };
    if args.follow {
        return follow(&api, &deployment_id).await;
    }
    let mut after = 0;
    loop {
        let page = api
            .deploys()
            .get_logs(api.call(pb::GetLogsRequest {
                deployment_id: deployment_id.clone(),
                after_sequence: after,
                ..Default::default()
            }))
            .await
            .map_err(status)?
            .into_inner();
        for line in &page.lines {
            print_line(&api, line)?;
        }
        if page.lines.is_empty() || page.next_after_sequence <= after {
            return Ok(());
        }
        after = page.next_after_sequence;
    }
}
