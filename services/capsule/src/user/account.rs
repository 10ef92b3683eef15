//! The users' account and project commands: sign in and out, projects,
//! links, variables, the project's address, API tokens.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, anyhow, bail};
use capsule::proto::{
    auth::v1::{self as auth_pb, auth_service_client::AuthServiceClient},
    project::v1 as project_pb,
};

use clap::Subcommand;

use super::{
    api::{Api, Global},
    session::{Credentials, DEFAULT_API, Link, Links},
    show::status,
};

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// The project's variables (secret values are never shown).
    List,
    /// Sets NAME=VALUE (a bare NAME reads its value from standard input,
    /// out of the shell's history).
    Set {
        #[arg(required = true)]
        assignments: Vec<String>,
        /// Write-only: never shown again, masked in logs.
        #[arg(long)]
        secret: bool,
    },
    /// Removes variables.
    Unset {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectsCommand {
    /// Your projects (the default).
    List,
    /// A new project; `--link` links this directory to it.
    Create {
        name: String,
        /// The git repository deployments build (https://…).
        #[arg(long)]
        repository: Option<String>,
        #[arg(long)]
        link: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Your API tokens.
    List,
    /// A new API token, printed once.
    Create {
        name: String,
        /// Permissions (repeat or comma-separate), such as project.deploy.
        #[arg(long = "scope", value_delimiter = ',', default_value = "project.read,project.deploy")]
        scopes: Vec<String>,
        /// Days until it expires (1 to 366).
        #[arg(long, default_value_t = 30)]
        days: i32,
    },
    /// Revokes an API token by its id.
    Revoke { id: String },
}

/// `capsule login`: signs in with an email and password and keeps the
/// session in the configuration directory.
pub async fn login(global: &Global, email: Option<String>, password_stdin: bool) -> anyhow::Result<()> {
    let url = global
        .api
        .clone()
        .or_else(|| Credentials::load().ok().flatten().map(|kept| kept.api))
        .unwrap_or_else(|| DEFAULT_API.to_owned());
    let email = match email {
        Some(email) => email,
        None if std::io::stdin().is_terminal() => {
            eprint!("Email: ");
            read_line()?
        }
        None => bail!("no email: pass --email"),
    };
    let password = if password_stdin || !std::io::stdin().is_terminal() {
        read_line()?
    } else {
        rpassword::prompt_password("Password: ")?
    };
    if password.is_empty() {
        bail!("no password given");
    }
    let signed_in = AuthServiceClient::new(super::api::channel(&url)?)
        .login(auth_pb::LoginRequest {
            email: email.clone(),
            password,
        })
        .await
        .map_err(status)
        .with_context(|| format!("cannot sign in at {url}"))?
        .into_inner();
    let pair = signed_in.tokens.ok_or_else(|| anyhow!("the server sent no session"))?;
    let email = signed_in.user.map_or(email, |user| user.email);
    Credentials::from_pair(&url, &email, pair).save()?;
    println!("Signed in as {email} at {url}.");
    Ok(())
}

/// A line of standard input; its end before any line is an error.
fn read_line() -> anyhow::Result<String> {
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        bail!("standard input ended before a value was read");
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// `capsule logout`: ends the session here and at the server.
pub async fn logout(global: &Global) -> anyhow::Result<()> {
    if let Ok(api) = Api::connect(global).await {
        let _ = api.auth().logout(api.call(auth_pb::LogoutRequest {})).await;
    }
    match Credentials::forget()? {
        true => println!("Signed out."),
        false => println!("Not signed in."),
    }
    Ok(())
}

pub async fn whoami(global: &Global) -> anyhow::Result<()> {
    let api = Api::connect(global).await?;
    let me = api
        .auth()
        .get_me(api.call(auth_pb::GetMeRequest {}))
        .await
        .map_err(status)?
        .into_inner();
    api.out().one(&me, || me.email.clone())
}

pub async fn projects(global: &Global, command: Option<ProjectsCommand>) -> anyhow::Result<()> {
    let api = Api::connect(global).await?;
    match command.unwrap_or(ProjectsCommand::List) {
        ProjectsCommand::List => {
            let mut listed = project_pb::ListProjectsResponse::default();
            loop {
                let page = api
                    .projects()
                    .list_projects(api.call(project_pb::ListProjectsRequest {
                        page_size: 100,
                        page_token: std::mem::take(&mut listed.next_page_token),
                        ..Default::default()
                    }))
                    .await
                    .map_err(status)?
                    .into_inner();
                listed.projects.extend(page.projects);
                listed.next_page_token = page.next_page_token;
                if listed.next_page_token.is_empty() {
                    break;
                }
            }
            let rows = listed
                .projects
                .iter()
                .map(|project| vec![project.slug.clone(), project.name.clone(), project.url.clone()])
                .collect();
            api.out().table(&listed, &["SLUG", "NAME", "URL"], rows)
        }
        ProjectsCommand::Create { name, repository, link } => {
            let project = api
                .projects()
                .create_project(api.call(project_pb::CreateProjectRequest {
                    project: Some(project_pb::Project {
                        name,
                        ..Default::default()
                    }),
                }))
                .await
                .map_err(status)?
                .into_inner();
            if let Some(repository) = repository {
                api.projects()
                    .update_project_settings(api.call(project_pb::UpdateProjectSettingsRequest {
                        settings: Some(project_pb::ProjectSettings {
                            project_id: project.id.clone(),
                            repository_url: repository,
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["repository_url".to_owned()],
                        }),
                    }))
                    .await
                    .map_err(status)
                    .context("the project was created, but not its repository")?;
            }
            if link {
                link_here(&project)?;
            }
            api.out()
                .one(&project, || format!("Created {} ({}).", project.slug, project.id))
        }
    }
}

fn link_here(project: &project_pb::Project) -> anyhow::Result<()> {
    let here = std::env::current_dir()?;
    Links::load()?.set(
        here.clone(),
        Some(Link {
            project_id: project.id.clone(),
            name: project.slug.clone(),
        }),
    )?;
    eprintln!("Linked {} to {}.", here.display(), project.slug);
    Ok(())
}

/// `capsule link [PROJECT]`: links this directory, or says what it is
/// linked to.
pub async fn link(global: &Global, project: Option<String>, unlink: bool) -> anyhow::Result<()> {
    let here = std::env::current_dir()?;
    if unlink {
        let links = Links::load()?;
        let Some(linked) = links.linked_dir(&here) else {
            bail!("{} is not linked to a project", here.display());
        };
        links.set(linked.clone(), None)?;
        println!("{} is not linked any more.", linked.display());
        return Ok(());
    }
    let api = Api::connect(global).await?;
    match project {
        Some(wanted) => link_here(&api.find_project(&wanted).await?),
        None => {
            let project = api.project().await?;
            api.out()
                .one(&project, || format!("{} ({})", project.slug, project.url))
        }
    }
}

pub async fn env(global: &Global, command: EnvCommand) -> anyhow::Result<()> {
    let api = Api::connect(global).await?;
    let project = api.project().await?;
    match command {
        EnvCommand::List => {
            let settings = api
                .projects()
                .get_project_settings(api.call(project_pb::GetProjectSettingsRequest {
                    project_id: project.id.clone(),
                }))
                .await
                .map_err(status)?
                .into_inner();
            let variables = settings.environment_variables;
            let rows = variables
                .iter()
                .map(|variable| {
                    let value = if variable.secret {
                        "(secret)".to_owned()
                    } else {
                        variable.value.clone()
                    };
                    vec![variable.name.clone(), value]
                })
                .collect();
            api.out().list(&variables, &["NAME", "VALUE"], rows)
        }
        EnvCommand::Set { assignments, secret } => {
            for assignment in assignments {
                let (name, value) = match assignment.split_once('=') {
                    Some((name, value)) => {
                        if secret {
                            eprintln!(
                                "note: a value on the command line stays in the shell's history and shows in ps; \
                                 `capsule env set --secret {name}` reads it from standard input"
                            );
                        }
                        (name.to_owned(), value.to_owned())
                    }
                    // Not echoed at a terminal.
                    None if std::io::stdin().is_terminal() => (
                        assignment.clone(),
                        rpassword::prompt_password(format!("{assignment}: "))?,
                    ),
                    None => (assignment.clone(), read_line()?),
                };
                api.projects()
                    .set_environment_variable(api.call(project_pb::SetEnvironmentVariableRequest {
                        project_id: project.id.clone(),
                        variable: Some(project_pb::EnvironmentVariable {
                            name: name.clone(),
                            value,
                            secret,
                            update_time: None,
                        }),
                    }))
                    .await
                    .map_err(status)
                    .with_context(|| format!("cannot set {name}"))?;
                eprintln!("Set {name}{}.", if secret { " (secret)" } else { "" });
            }
            Ok(())
        }
        EnvCommand::Unset { names } => {
            for name in names {
                api.projects()
                    .delete_environment_variable(api.call(project_pb::DeleteEnvironmentVariableRequest {
                        project_id: project.id.clone(),
                        name: name.clone(),
                    }))
                    .await
                    .map_err(status)
                    .with_context(|| format!("cannot unset {name}"))?;
                eprintln!("Unset {name}.");
            }
            Ok(())
        }
    }
}

/// `capsule open`: the project's address (in a browser, at a terminal).
pub async fn open(global: &Global) -> anyhow::Result<()> {
    let api = Api::connect(global).await?;
    let project = api.project().await?;
    println!("{}", project.url);
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    if std::io::stdout().is_terminal() && (project.url.starts_with("https://") || project.url.starts_with("http://")) {
        let _ = std::process::Command::new(opener)
            .arg(&project.url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    Ok(())
}

pub async fn tokens(global: &Global, command: Option<TokensCommand>) -> anyhow::Result<()> {
    let api = Api::connect(global).await?;
    match command.unwrap_or(TokensCommand::List) {
        TokensCommand::List => {
            let listed = api
                .auth()
                .list_api_tokens(api.call(auth_pb::ListApiTokensRequest {}))
                .await
                .map_err(status)?
                .into_inner();
            let rows = listed
                .api_tokens
                .iter()
                .map(|token| {
                    let state = if token.revoke_time.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    vec![
                        token.id.clone(),
                        token.name.clone(),
                        token.scopes.join(","),
                        state.to_owned(),
                    ]
                })
                .collect();
            api.out().table(&listed, &["ID", "NAME", "SCOPES", "STATE"], rows)
        }
        TokensCommand::Create { name, scopes, days } => {
            let created = api
                .auth()
                .create_api_token(api.call(auth_pb::CreateApiTokenRequest {
                    name,
                    scopes,
                    project_id: String::new(),
                    expire_days: days,
                }))
                .await
                .map_err(status)?
                .into_inner();
            api.out().one(&created, || {
                format!(
                    "{}\n(shown once: keep it now; `capsule tokens revoke` ends it)",
                    created.token
                )
            })
        }
        TokensCommand::Revoke { id } => {
            let revoked = api
                .auth()
                .revoke_api_token(api.call(auth_pb::RevokeApiTokenRequest { api_token_id: id }))
                .await
                .map_err(status)?
                .into_inner();
            api.out().one(&revoked, || format!("Revoked {}.", revoked.name))
        }
    }
}
