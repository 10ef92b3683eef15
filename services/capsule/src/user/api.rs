//! The gateway as the signed-in user (or `CAPSULE_TOKEN`), and the
//! options every user command takes.

use anyhow::{anyhow, bail};
use capsule::{
    proto::{
        auth::v1::auth_service_client::AuthServiceClient,
        deploy::v1::deploy_service_client::DeployServiceClient,
        project::v1::{self as project_pb, project_service_client::ProjectServiceClient},
    },
    trace::TracedChannel,
};
use clap::Args;

use super::{
    session::{Credentials, DEFAULT_API, Links},
    show::{Out, status},
};

/// What every user command takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// The gateway's gRPC address (default: where `capsule login` signed
    /// in, else http://localhost:50051).
    #[arg(long, global = true, env = "CAPSULE_API_URL")]
    pub api: Option<String>,
    /// The project (id or slug) instead of this directory's link.
    #[arg(long, global = true, env = "CAPSULE_PROJECT")]
    pub project: Option<String>,
    /// Print what is read as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The gateway, as the user.
pub struct Api {
    channel: TracedChannel,
    bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    global: Global,
}

impl Api {
    /// Signed in as `capsule login` left it (renewed when due), or with
    /// `CAPSULE_TOKEN`.
    pub async fn connect(global: &Global) -> anyhow::Result<Self> {
        let (url, token) = match std::env::var("CAPSULE_TOKEN").ok().filter(|token| !token.is_empty()) {
            Some(token) => (global.api.clone().unwrap_or_else(|| DEFAULT_API.to_owned()), token),
            None => {
                let credentials = Credentials::load()?.ok_or_else(|| anyhow!("not signed in: run `capsule login`"))?;
                let url = global.api.clone().unwrap_or_else(|| credentials.api.clone());
                let credentials = credentials.fresh(capsule::tls::channel(&url)?).await?;
                (url, credentials.access_token)
            }
        };
        Ok(Self {
            channel: capsule::tls::channel(&url)?,
            bearer: format!("Bearer {token}")
                .parse()
                .map_err(|_| anyhow!("the token is not valid text: run `capsule login` again"))?,
            global: global.clone(),
        })
    }

    pub fn call<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", self.bearer.clone());
        request
    }

    pub fn auth(&self) -> AuthServiceClient<TracedChannel> {
        AuthServiceClient::new(self.channel.clone())
    }

    pub fn projects(&self) -> ProjectServiceClient<TracedChannel> {
        ProjectServiceClient::new(self.channel.clone())
    }

    pub fn deploys(&self) -> DeployServiceClient<TracedChannel> {
        DeployServiceClient::new(self.channel.clone())
    }

    pub fn out(&self) -> Out {
        Out { json: self.global.json }
    }

    /// `--project`, else the link of this directory (or a parent).
    pub async fn project(&self) -> anyhow::Result<project_pb::Project> {
        let wanted = match &self.global.project {
            Some(wanted) => wanted.clone(),
            None => {
                let here = std::env::current_dir()?;
                Links::load()?
                    .find(&here)
                    .map(|link| link.project_id.clone())
                    .ok_or_else(|| {
                        anyhow!(
                            "this directory is not linked to a project: run `capsule link <project>` or pass --project"
                        )
                    })?
            }
        };
        self.find_project(&wanted).await
    }

    pub async fn find_project(&self, wanted: &str) -> anyhow::Result<project_pb::Project> {
        let mut page_token = String::new();
        loop {
            let page = self
                .projects()
                .list_projects(self.call(project_pb::ListProjectsRequest {
                    page_size: 100,
                    page_token: page_token.clone(),
                    ..Default::default()
                }))
                .await
                .map_err(status)?
                .into_inner();
            if let Some(project) = page
                .projects
                .into_iter()
                .find(|project| project.id == wanted || project.slug == wanted)
            {
                return Ok(project);
            }
            if page.next_page_token.is_empty() {
                bail!("no project of yours is {wanted:?}: `capsule projects` lists them");
            }
            page_token = page.next_page_token;
        }
    }
}
