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

/// A channel to the API at `url`: https:// with the system's trusted
/// roots (`SSL_CERT_FILE` to name others), or http:// to this machine
/// only — a password and a session never cross a network in the clear.
pub fn channel(url: &str) -> anyhow::Result<TracedChannel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let parsed =
        url::Url::parse(url).map_err(|_| anyhow!("{url:?} is not an address such as https://api.example.com"))?;
    let mut endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true);
    match parsed.scheme() {
        "https" => {
            let roots = std::env::var_os("SSL_CERT_FILE")
                .map_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into(), std::path::PathBuf::from);
            let pem = std::fs::read(&roots).map_err(|err| {
                anyhow!(
                    "cannot read the trusted roots at {} ({err}): set SSL_CERT_FILE",
                    roots.display()
                )
            })?;
            endpoint = endpoint.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
        }
        "http" if loopback(&parsed) => {}
        "http" => bail!("{url} would carry your password and session in the clear: use https://"),
        other => bail!("{other}:// is not an API address: use https://"),
    }
    Ok(capsule::trace::traced(endpoint.connect_lazy()))
}

fn loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl Api {
    /// Signed in as `capsule login` left it (renewed when due), or with
    /// `CAPSULE_TOKEN`.
    pub async fn connect(global: &Global) -> anyhow::Result<Self> {
        let (url, token) = match std::env::var("CAPSULE_TOKEN").ok().filter(|token| !token.is_empty()) {
            Some(token) => (global.api.clone().unwrap_or_else(|| DEFAULT_API.to_owned()), token),
            None => {
                let credentials = Credentials::load()?.ok_or_else(|| anyhow!("not signed in: run `capsule login`"))?;
                // The session goes only where it was made.
                if let Some(asked) = &global.api
                    && asked.trim_end_matches('/') != credentials.api.trim_end_matches('/')
                {
                    bail!(
                        "signed in at {}, not {asked}: run `capsule login --api {asked}` to use it",
                        credentials.api
                    );
                }
                let url = credentials.api.clone();
                let credentials = credentials.fresh(channel(&url)?).await?;
                (url, credentials.access_token)
            }
        };
        Ok(Self {
            channel: channel(&url)?,
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
