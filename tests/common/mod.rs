//! The whole mesh in this process, on free ports, each service with a fresh
//! database: what the end-to-end tests drive.

#![allow(dead_code, reason = "each test binary uses a different part")]
#![expect(clippy::unwrap_used, reason = "test helpers fail loudly")]

pub mod acme;
pub mod apps_pg;
pub mod deploy;
pub mod git;
pub mod org;

use std::{net::SocketAddr, time::Duration};

use capsule::{
    auth::Secrets,
    config::{GatewayConfig, Mesh, ServiceKind, ServiceUrls},
    proto::{
        auth::v1::{self as auth_pb, auth_service_client::AuthServiceClient},
        deploy::v1::{self as deploy_pb, deploy_service_client::DeployServiceClient},
        project::v1::project_service_client::ProjectServiceClient,
    },
    testing::{self, TestDatabase},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Request, transport::Channel};

pub const SERVING: i32 = 1;
pub const NOT_SERVING: i32 = 2;
pub const PASSWORD: &str = "correct horse battery staple";

pub struct TestMesh {
    pub addrs: Vec<(ServiceKind, SocketAddr)>,
    pub http: SocketAddr,
    pub mesh: Mesh,
    pub shutdown: CancellationToken,
    /// Each service's own stop, a child of `shutdown`.
    pub stops: Vec<(ServiceKind, CancellationToken)>,
    pub tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    pub databases: Vec<TestDatabase>,
    /// The deploy service's settings, to start it again.
    deploy_config: capsule_deploy::DeployConfig,
    /// Extra settings (`Options::settings`), for the gateway.
    settings: Vec<(&'static str, String)>,
    batching: bool,
    /// Listeners bound at the start, until their service takes them.
    bound: Vec<tokio::net::TcpListener>,
    /// Where the local runner hands the gateway apps' connections.
    _handoff_dir: tempfile::TempDir,
}

/// Options of a test mesh.
#[derive(Default)]
pub struct Options {
    /// Run the deploy service's local runner.
    pub local_runner: bool,
    /// Extra deploy settings (DEPLOY_*).
    pub deploy: Vec<(&'static str, &'static str)>,
    /// Every call runs its own statements (`*_DB_BATCHING=false`): a
    /// batched statement belongs to the call that led the batch.
    pub unbatched: bool,
    /// Extra settings of the deploy service and the gateway, made at run
    /// time (addresses, files). Without `DEPLOY_ACME_DIRECTORY`, no
    /// certificate is ordered: no test reaches a real CA.
    pub settings: Vec<(&'static str, String)>,
}

/// The keys the test mesh seals tenants' secrets with.
pub const TEST_KEYS: &str = "test1:Y2Fwc3VsZS10ZXN0LWVuY3J5cHRpb24ta2V5LTMyYiE=";

/// The one origin the test gateway lets browsers call from.
pub const BROWSER_ORIGIN: &str = "https://app.example.com";

pub async fn start() -> TestMesh {
    start_with(Options::default()).await
}

pub async fn start_with(options: Options) -> TestMesh {
    let shutdown = CancellationToken::new();
    let mut listeners = Vec::new();
    for kind in ServiceKind::WITH_DATABASE {
        listeners.push((kind, testing::free_listener().await));
    }
    let url = |kind: ServiceKind| {
        let addr = listeners
            .iter()
            .find(|(k, _)| *k == kind)
            .unwrap()
            .1
            .local_addr()
            .unwrap();
        format!("http://{addr}")
    };
    let mesh = Mesh {
        services: ServiceUrls {
            auth: url(ServiceKind::Auth),
            project: url(ServiceKind::Project),
            deploy: url(ServiceKind::Deploy),
        },
        secrets: Secrets {
            internal_secret: Some("test-internal-secret".to_owned()),
            encryption: std::sync::Arc::new(capsule::crypto::Keyring::parse(TEST_KEYS).unwrap()),
        },
    };
    let mut deploy_settings = options.deploy.clone();
    let mut settings = options.settings.clone();
    let handoff_dir = tempfile::tempdir().unwrap();
    if options.local_runner {
        deploy_settings.push(("DEPLOY_LOCAL_RUNNER", "true"));
        deploy_settings.push(("DEPLOY_RUNNER_HEARTBEAT_MS", "100"));
        // The mesh's own: runners of meshes tested side by side share
        // their working directory's root.
        if !settings.iter().any(|(name, _)| *name == "DEPLOY_RUNNER_HANDOFF_SOCKET") {
            let socket = handoff_dir.path().join("handoff.sock");
            settings.push(("DEPLOY_RUNNER_HANDOFF_SOCKET", socket.display().to_string()));
        }
    }
    settings.extend(deploy_settings.iter().map(|(name, value)| (*name, (*value).to_owned())));
    if !settings.iter().any(|(name, _)| *name == "DEPLOY_ACME_DIRECTORY") {
        settings.push(("DEPLOY_ACME_DIRECTORY", "off".to_owned()));
    }
    let deploy_config = capsule_deploy::DeployConfig::from_source(&|name: &str| {
        settings.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
    })
    .unwrap();
    let mut test_mesh = TestMesh {
        addrs: Vec::new(),
        http: SocketAddr::from(([127, 0, 0, 1], 0)),
        mesh,
        shutdown,
        stops: Vec::new(),
        tasks: Vec::new(),
        databases: Vec::new(),
        deploy_config,
        settings,
        batching: !options.unbatched,
        bound: Vec::new(),
        _handoff_dir: handoff_dir,
    };
    for (kind, listener) in listeners {
        let migrations = match kind {
            ServiceKind::Auth => &capsule_auth::MIGRATIONS,
            ServiceKind::Project => &capsule_project::MIGRATIONS,
            _ => &capsule_deploy::MIGRATIONS,
        };
        test_mesh.databases.push(TestDatabase::migrated(kind, migrations).await);
        test_mesh.addrs.push((kind, listener.local_addr().unwrap()));
        test_mesh.bound.push(listener);
    }
    let (grpc, http) = (testing::free_listener().await, testing::free_listener().await);
    test_mesh.addrs.push((ServiceKind::Gateway, grpc.local_addr().unwrap()));
    test_mesh.http = http.local_addr().unwrap();
    test_mesh.bound.extend([grpc, http]);
    test_mesh.start_all().await;
    test_mesh
}

impl TestMesh {
    /// Starts every service on its address (the listeners of a stopped
    /// mesh are bound again) and waits until each serves.
    async fn start_all(&mut self) {
        for (kind, addr) in self.addrs.clone() {
            let token = self.shutdown.child_token();
            let task = match kind {
                ServiceKind::Gateway => self.spawn_gateway(addr, token.clone()).await,
                kind => self.spawn_service(kind, addr, token.clone()).await,
            };
            self.stops.push((kind, token));
            self.tasks.push(task);
        }
        for (kind, addr) in &self.addrs {
            testing::wait_for_health(*addr, kind.grpc_service_name(), SERVING, Duration::from_secs(20)).await;
        }
    }

    /// The listener on `addr`: the one bound at the start, or a new one.
    async fn listen(&mut self, addr: SocketAddr) -> tokio::net::TcpListener {
        match self.bound.iter().position(|l| l.local_addr().unwrap() == addr) {
            Some(index) => self.bound.swap_remove(index),
            None => tokio::net::TcpListener::bind(addr).await.unwrap(),
        }
    }

    async fn spawn_service(
        &mut self,
        kind: ServiceKind,
        addr: SocketAddr,
        token: CancellationToken,
    ) -> JoinHandle<anyhow::Result<()>> {
        let listener = self.listen(addr).await;
        let mut config = self.database(kind).db_config();
        config.batching = self.batching;
        let (serve, mesh, deploy_config) = (
            testing::serve_config(addr),
            self.mesh.clone(),
            self.deploy_config.clone(),
        );
        tokio::spawn(async move {
            match kind {
                ServiceKind::Auth => {
                    capsule_auth::serve_with(
                        listener,
                        config,
                        capsule_auth::AuthConfig::from_source(&|name: &str| {
                            (name == "CAPSULE_INTERNAL_SECRET").then(|| "test-internal-secret".to_owned())
                        })
                        .unwrap(),
                        serve,
                        token,
                    )
                    .await
                }
                ServiceKind::Project => capsule_project::serve(listener, config, mesh, serve, token).await,
                _ => capsule_deploy::serve(listener, config, mesh, deploy_config, serve, token).await,
            }
        })
    }

    async fn spawn_gateway(
        &mut self,
        grpc_addr: SocketAddr,
        token: CancellationToken,
    ) -> JoinHandle<anyhow::Result<()>> {
        let grpc = self.listen(grpc_addr).await;
        let http = self.listen(self.http).await;
        let config = GatewayConfig {
            http_addr: self.http,
            services: self.mesh.services.clone(),
        };
        let settings = self.settings.clone();
        let mut edge = capsule_gateway::EdgeConfig::from_source(&|name: &str| match name {
            "GATEWAY_RATE_LIMIT_PER_SEC" => Some("10000".to_owned()),
            "GATEWAY_RATE_LIMIT_BURST" => Some("10000".to_owned()),
            "CAPSULE_INTERNAL_SECRET" => Some("test-internal-secret".to_owned()),
            "GATEWAY_CORS_ORIGINS" => Some(BROWSER_ORIGIN.to_owned()),
            _ => settings.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()),
        })
        .unwrap();
        // As `capsule dev`: the local runner hands the gateway its apps'
        // connections (unless a test says otherwise).
        if let Some(runner) = &self.deploy_config.runner
            && !self
                .settings
                .iter()
                .any(|(name, _)| *name == "GATEWAY_APPS_HANDOFF_SOCKET")
        {
            edge.apps.handoff = Some(runner.handoff_socket.clone());
        }
        tokio::spawn(capsule_gateway::serve(
            grpc,
            http,
            config,
            edge,
            testing::serve_config(grpc_addr),
            token,
        ))
    }

    /// The local runner's working directories' root.
    pub fn runner_workdir(&self) -> Option<std::path::PathBuf> {
        self.deploy_config.runner.as_ref().map(|runner| runner.workdir.clone())
    }

    /// Where the local runner hands the gateway apps' connections.
    pub fn handoff_socket(&self) -> Option<std::path::PathBuf> {
        self.deploy_config
            .runner
            .as_ref()
            .map(|runner| runner.handoff_socket.clone())
    }

    pub fn addr(&self, kind: ServiceKind) -> SocketAddr {
        self.addrs.iter().find(|(k, _)| *k == kind).unwrap().1
    }

    pub fn database(&self, kind: ServiceKind) -> &TestDatabase {
        self.databases.iter().find(|db| db.service == kind).unwrap()
    }

    pub async fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(testing::channel(self.addr(ServiceKind::Auth)).await)
    }

    pub async fn projects(&self) -> ProjectServiceClient<Channel> {
        ProjectServiceClient::new(testing::channel(self.addr(ServiceKind::Project)).await)
    }

    pub async fn deploys(&self) -> DeployServiceClient<Channel> {
        DeployServiceClient::new(testing::channel(self.addr(ServiceKind::Deploy)).await)
    }

    /// Registers a user; returns their access token and id.
    pub async fn user(&self, email: &str) -> (String, String) {
        let registered = self
            .auth()
            .await
            .register(auth_pb::RegisterRequest {
                email: email.to_owned(),
                password: PASSWORD.to_owned(),
                name: "Test User".to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        (registered.tokens.unwrap().access_token, registered.user.unwrap().id)
    }

    /// A registered admin's access token.
    pub async fn admin(&self, email: &str) -> String {
        use diesel::connection::SimpleConnection;
        let (_, id) = self.user(email).await;
        self.database(ServiceKind::Auth)
            .connect()
            .batch_execute(&format!("UPDATE users SET role = 'admin' WHERE id = '{id}'"))
            .unwrap();
        self.auth()
            .await
            .login(auth_pb::LoginRequest {
                email: email.to_owned(),
                password: PASSWORD.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .tokens
            .unwrap()
            .access_token
    }

    /// Registers a runner named `name` (as a fresh admin); returns its id
    /// and token.
    pub async fn runner(&self, name: &str) -> (String, String) {
        let admin = self.admin(&format!("runner-admin-{name}@example.com")).await;
        let created = self
            .deploys()
            .await
            .create_runner(authed(deploy_pb::CreateRunnerRequest { name: name.to_owned() }, &admin))
            .await
            .unwrap()
            .into_inner();
        (created.runner.unwrap().id, created.token)
    }

    /// Stops one service (its process would be gone).
    pub fn stop_service(&self, kind: ServiceKind) {
        if let Some((_, stop)) = self.stops.iter().find(|(k, _)| *k == kind) {
            stop.cancel();
        }
    }

    /// Stops the whole mesh as its processes would stop (the deploy
    /// service's local runner with the apps it runs) and starts it again
    /// on the same addresses and databases.
    pub async fn restart(&mut self) {
        for (_, stop) in self.stops.drain(..) {
            stop.cancel();
        }
        for task in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("a service stops within 20 s")
                .unwrap()
                .unwrap();
        }
        self.start_all().await;
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("a service stops within 10 s")
                .unwrap()
                .unwrap();
        }
    }
}

/// A request with a bearer token.
/// The token of the newest invitation mailed to `email`, read from the auth
/// service's outbox as a mail relay would.
pub fn mailed_invitation_token(mesh: &TestMesh, email: &str) -> String {
    use diesel::{QueryableByName, RunQueryDsl, sql_types::Text};
    #[derive(QueryableByName)]
    struct Mail {
        #[diesel(sql_type = Text)]
        body: String,
    }
    let mail: Mail = diesel::sql_query(
        "SELECT body FROM email_outbox WHERE recipient = $1 AND subject LIKE '%invited%' ORDER BY created_at DESC LIMIT 1",
    )
    .bind::<Text, _>(email)
    .get_result(&mut mesh.database(ServiceKind::Auth).connect())
    .expect("an invitation was mailed");
    let at = mail.body.find("token=").expect("a link with the token") + "token=".len();
    mail.body[at..].split_whitespace().next().unwrap_or_default().to_owned()
}

pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The fields named in an INVALID_ARGUMENT status.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations
        .into_iter()
        .map(|violation| violation.field)
        .collect()
}

/// How many live (not zombie) processes run as host `uid`.
pub fn processes_of(uid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("status")).ok())
        .filter(|status| {
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or_default()
                    .to_owned()
            };
            field("Uid:").split_whitespace().next() == Some(uid.to_string().as_str())
                && !field("State:").starts_with('Z')
        })
        .count()
}

/// The registries' addresses as this host resolves them, as networks.
pub async fn registries() -> &'static str {
    let mut networks = Vec::new();
    for host in ["registry.npmjs.org", "pypi.org", "files.pythonhosted.org"] {
        for addr in tokio::net::lookup_host((host, 443)).await.unwrap() {
            let bits = if addr.is_ipv4() { 32 } else { 128 };
            networks.push(format!("{}/{bits}", addr.ip()));
        }
    }
    networks.sort();
    networks.dedup();
    Box::leak(networks.join(",").into_boxed_str())
}

/// GitHub's `X-Hub-Signature-256` of `body` under `secret` (Gitea's
/// header is the same hex without the `sha256=`).
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let digest: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={digest}")
}

/// A new webhook secret for the project's push and pull request events.
pub async fn rotate_webhook_secret(http: &reqwest::Client, base: &str, token: &str, project_id: &str) -> String {
    let rotated: serde_json::Value = http
        .post(format!("{base}/v1/projects/{project_id}/webhookSecret:rotate"))
        .bearer_auth(token)
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    rotated["webhookSecret"].as_str().unwrap().to_owned()
}
