//! Access tokens, checked by every service for itself.
//!
//! Auth signs short-lived JWTs with Ed25519 (`alg: EdDSA`, `kid` in the
//! header; claims `sub`, `role`, `sid`, `iat`, `exp`, `iss`, `aud`) and
//! publishes the public keys (GetJwks). Every service mounts [`AuthLayer`]:
//! it reads the RPC's access level from the `(capsule.auth.v1.access)`
//! option in the descriptors, verifies the bearer token with the cached key
//! set (fetching again when a token names an unknown key), puts the
//! [`Caller`] in the request's extensions, and answers UNAUTHENTICATED or
//! PERMISSION_DENIED itself.
//!
//! Revocation: auth checks the session of every token it is shown against
//! its database, so a revoked session or a deactivated user is cut off
//! there at once. Other services trust a valid token until it expires
//! (15 minutes at most); refresh is refused at once.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use prost_reflect::Value;
use tokio::sync::{Mutex, RwLock};
use tonic::Status;
use tower::{Layer, Service};
use uuid::Uuid;

use crate::proto::{
    self,
    auth::v1::{CheckSessionRequest, GetJwksRequest, Jwk, auth_service_client::AuthServiceClient},
};

/// The `iss` of every access token.
pub const ISSUER: &str = "capsule-auth";
/// The `aud` of every access token.
pub const AUDIENCE: &str = "capsule";
/// Clock skew tolerated on `exp` and `iat`.
const LEEWAY_SECS: u64 = 30;
/// The shortest pause between two key-set fetches: a flood of tokens with
/// made-up key ids must not turn into a flood of fetches.
const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// Who may call an RPC (`capsule.auth.v1.Access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Unspecified,
    Public,
    Authenticated,
    Admin,
    Runner,
    Internal,
    Service,
}

impl Access {
    fn from_number(number: i32) -> Self {
        match number {
            1 => Self::Public,
            2 => Self::Authenticated,
            3 => Self::Admin,
            4 => Self::Runner,
            5 => Self::Internal,
            6 => Self::Service,
            _ => Self::Unspecified,
        }
    }
}

/// The access level of every Capsule RPC, by `/package.Service/Method`
/// path, read once from the descriptors.
pub fn policies() -> &'static HashMap<String, Access> {
    static POLICIES: OnceLock<HashMap<String, Access>> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let pool = proto::pool();
        let mut policies = HashMap::new();
        for service in pool
            .services()
            .filter(|service| service.full_name().starts_with("capsule."))
        {
            for method in service.methods() {
                policies.insert(
                    format!("/{}/{}", service.full_name(), method.name()),
                    method_access(&method),
                );
            }
        }
        policies
    })
}

/// The `(capsule.auth.v1.access)` level a method declares in its own
/// descriptor pool; `Unspecified` when it declares none.
pub fn method_access(method: &prost_reflect::MethodDescriptor) -> Access {
    let Some(extension) = method.parent_pool().get_extension_by_name("capsule.auth.v1.access") else {
        return Access::Unspecified;
    };
    match method.options().get_extension(&extension).as_ref() {
        Value::EnumNumber(number) => Access::from_number(*number),
        _ => Access::Unspecified,
    }
}

/// A role in a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Admin,
    /// A build runner.
    Runner,
    /// Another Capsule service.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
            Self::Runner => "runner",
            Self::Service => "service",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "user" => Some(Self::User),
            "admin" => Some(Self::Admin),
            "runner" => Some(Self::Runner),
            "service" => Some(Self::Service),
            _ => None,
        }
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
}

/// The verified caller of a request, in its extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user; for a runner, the runner's id; nil for a service.
    pub user_id: Uuid,
    pub role: Role,
    pub session_id: Uuid,
    /// The bearer token, to pass on to other services on the caller's
    /// behalf. Never logged.
    token: Arc<str>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The registered runner making the call, for the runner API.
    pub fn runner_id(&self) -> Option<Uuid> {
        (self.role == Role::Runner).then_some(self.user_id)
    }

    /// The `authorization` header value that calls another service as this
    /// caller.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// The caller of a request that passed [`AuthLayer`]; UNAUTHENTICATED
    /// when there is none (a public method, or no layer).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
        request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::unauthenticated("sign in first: send `authorization: Bearer <access token>`"))
    }
}

/// Where the public keys come from.
#[async_trait::async_trait]
pub trait KeySource: Send + Sync + 'static {
    async fn fetch(&self) -> anyhow::Result<Vec<Jwk>>;

    /// Session `session_id` and its user as they are now.
    async fn standing(&self, session_id: Uuid) -> Result<Standing, Status>;
}

/// A session as it stands now, not as its token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Not revoked, not expired, its user active.
    pub live: bool,
    /// Its user's role now; `None` for no such session.
    pub role: Option<Role>,
}

/// The auth service's GetJwks and CheckSession, over gRPC.
pub struct GrpcKeySource {
    client: AuthServiceClient<tonic::transport::Channel>,
    /// The service credential CheckSession needs.
    internal_secret: Option<String>,
}

impl GrpcKeySource {
    pub fn new(channel: tonic::transport::Channel, secrets: &Secrets) -> Self {
        Self {
            client: AuthServiceClient::new(channel),
            internal_secret: secrets.internal_secret.clone(),
        }
    }

    /// A source that connects to `auth_url` on first use.
    fn lazy(auth_url: &str, secrets: &Secrets) -> anyhow::Result<Arc<dyn KeySource>> {
        let channel = crate::tls::endpoint(auth_url)?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        Ok(Arc::new(Self::new(channel, secrets)))
    }
}

#[async_trait::async_trait]
impl KeySource for GrpcKeySource {
    async fn fetch(&self) -> anyhow::Result<Vec<Jwk>> {
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(GetJwksRequest {});
        request.set_timeout(Duration::from_secs(3));
        Ok(client.get_jwks(request).await?.into_inner().keys)
    }

    async fn standing(&self, session_id: Uuid) -> Result<Standing, Status> {
        let secret = self.internal_secret.as_deref().ok_or_else(|| {
            Status::permission_denied("admin calls are not enabled here: set CAPSULE_INTERNAL_SECRET")
        })?;
        let mut request = tonic::Request::new(CheckSessionRequest {
            session_id: session_id.to_string(),
        });
        request.set_timeout(Duration::from_secs(3));
        request.metadata_mut().insert(
            INTERNAL_HEADER,
            secret
                .parse()
                .map_err(|_| Status::internal("CAPSULE_INTERNAL_SECRET is not a header value"))?,
        );
        let standing = self
            .client
            .clone()
            .check_session(request)
            .await
            .map_err(|status| Status::unavailable(format!("cannot check the session now: {}", status.message())))?
            .into_inner();
        Ok(Standing {
            live: standing.live,
            role: match standing.role() {
                crate::proto::auth::v1::Role::Admin => Some(Role::Admin),
                crate::proto::auth::v1::Role::User => Some(Role::User),
                crate::proto::auth::v1::Role::Unspecified => None,
            },
        })
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("sign in first: send `authorization: Bearer <access token>`")]
    Missing,
    #[error("the authorization header must be `Bearer <access token>`")]
    Malformed,
    #[error("the access token has expired; refresh it")]
    Expired,
    #[error("the access token is signed with an unknown key")]
    UnknownKey,
    #[error("the access token is not valid")]
    Invalid,
    #[error("cannot check the access token now: the key set is unavailable")]
    KeysUnavailable,
}

impl From<TokenError> for Status {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::KeysUnavailable => Status::unavailable(err.to_string()),
            other => Status::unauthenticated(other.to_string()),
        }
    }
}

/// How many verified tokens are remembered. A client sends the same token
/// on every call for its lifetime: verifying it once saves the EdDSA
/// check (about 45 µs) on every later call.
const VERIFIED_CACHE_SIZE: usize = 10_000;

pub use crate::config::Secrets;

impl crate::config::Mesh {
    /// The key set that verifies this mesh's tokens and secrets.
    pub fn key_set(&self) -> anyhow::Result<Arc<KeySet>> {
        KeySet::from_auth_service(&self.services.auth, &self.secrets)
    }
}

/// The header that carries `CAPSULE_INTERNAL_SECRET`.
pub const INTERNAL_HEADER: &str = "x-capsule-internal";

fn digest(value: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(value.as_bytes()).into()
}

/// Checks a runner's bearer token: the deploy service's registered runners.
#[async_trait::async_trait]
pub trait RunnerVerifier: Send + Sync + 'static {
    /// The id of the runner whose token this is; `None` for no runner's
    /// (unknown or revoked).
    async fn runner(&self, token: &str) -> Result<Option<Uuid>, Status>;
}

/// The public keys that verify access tokens, cached by key id, and the
/// tokens already verified.
pub struct KeySet {
    /// At the gateway: runner calls pass on to the deploy service, which
    /// knows the runners and checks them.
    at_edge: bool,
    runners: OnceLock<Arc<dyn RunnerVerifier>>,
    internal_secret: Option<[u8; 32]>,
    /// What a Capsule caller vouching for a client address presents.
    client_proof: Option<String>,
    source: Arc<dyn KeySource>,
    keys: RwLock<HashMap<String, Arc<DecodingKey>>>,
    last_fetch: Mutex<Option<Instant>>,
    validation: Validation,
    /// Verified tokens with their `exp`.
    verified: std::sync::RwLock<HashMap<Arc<str>, (Caller, i64)>>,
}

impl KeySet {
    pub fn new(source: Arc<dyn KeySource>) -> Arc<Self> {
        Self::with_secrets(source, &Secrets::default())
    }

    /// A key set that also accepts the runner token and the internal secret.
    pub fn with_secrets(source: Arc<dyn KeySource>, secrets: &Secrets) -> Arc<Self> {
        Self::build(source, secrets, false)
    }

    fn build(source: Arc<dyn KeySource>, secrets: &Secrets, at_edge: bool) -> Arc<Self> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        validation.leeway = LEEWAY_SECS;
        Arc::new(Self {
            at_edge,
            runners: OnceLock::new(),
            internal_secret: secrets.internal_secret.as_deref().map(digest),
            client_proof: secrets.internal_secret.as_deref().map(crate::client::proof),
            source,
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
            validation,
            verified: std::sync::RwLock::new(HashMap::new()),
        })
    }

    /// A key set fetched from the auth service at `auth_url` (connected on
    /// first use).
    pub fn from_auth_service(auth_url: &str, secrets: &Secrets) -> anyhow::Result<Arc<Self>> {
        Ok(Self::build(GrpcKeySource::lazy(auth_url, secrets)?, secrets, false))
    }

    /// The gateway's key set: like [`KeySet::from_auth_service`], but runner
    /// calls are passed on unchecked for the deploy service to check.
    pub fn at_edge(auth_url: &str) -> anyhow::Result<Arc<Self>> {
        Ok(Self::build(
            GrpcKeySource::lazy(auth_url, &Secrets::default())?,
            &Secrets::default(),
            true,
        ))
    }

    /// Lets runners in: their tokens are checked by `verifier` (set once).
    pub fn accept_runners(&self, verifier: Arc<dyn RunnerVerifier>) {
        let _ = self.runners.set(verifier);
    }

    /// Fetches the key set again, unless that was done moments ago.
    async fn refresh(&self) -> Result<(), TokenError> {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_REFETCH_INTERVAL) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let jwks = self.source.fetch().await.map_err(|err| {
            tracing::warn!(error = %err, "cannot fetch the token signing keys");
            TokenError::KeysUnavailable
        })?;
        let mut keys = HashMap::new();
        for jwk in jwks {
            if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
                continue;
            }
            if let Ok(key) = DecodingKey::from_ed_components(&jwk.x) {
                keys.insert(jwk.kid, Arc::new(key));
            }
        }
        *self.keys.write().await = keys;
        Ok(())
    }

    async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, TokenError> {
        if let Some(key) = self.keys.read().await.get(kid) {
            return Ok(key.clone());
        }
        self.refresh().await?;
        self.keys.read().await.get(kid).cloned().ok_or(TokenError::UnknownKey)
    }

    /// Verifies a token: EdDSA only, known key, issuer, audience, expiry.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid);
        }
        let kid = header.kid.ok_or(TokenError::Invalid)?;
        let key = self.key(&kid).await?;
        jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }

    /// Verifies a token and turns it into a caller. A token verified
    /// before is answered from memory until it expires.
    pub async fn caller(&self, token: &str) -> Result<Caller, TokenError> {
        if let Some(caller) = self.remembered(token) {
            return Ok(caller);
        }
        let claims = self.verify(token).await?;
        let caller = Caller {
            user_id: claims.sub.parse().map_err(|_| TokenError::Invalid)?,
            role: Role::parse(&claims.role).ok_or(TokenError::Invalid)?,
            session_id: claims.sid.parse().map_err(|_| TokenError::Invalid)?,
            token: Arc::from(token),
        };
        self.remember(&caller, claims.exp);
        Ok(caller)
    }

    fn remembered(&self, token: &str) -> Option<Caller> {
        let verified = self.verified.read().ok()?;
        let (caller, expires) = verified.get(token)?;
        let now = chrono::Utc::now().timestamp();
        (*expires + i64::try_from(LEEWAY_SECS).unwrap_or(0) > now).then(|| caller.clone())
    }

    fn remember(&self, caller: &Caller, expires: i64) {
        let Ok(mut verified) = self.verified.write() else {
            return;
        };
        if verified.len() >= VERIFIED_CACHE_SIZE {
            let now = chrono::Utc::now().timestamp();
            verified.retain(|_, (_, expires)| *expires > now);
            if verified.len() >= VERIFIED_CACHE_SIZE {
                verified.clear();
            }
        }
        verified.insert(caller.token.clone(), (caller.clone(), expires));
    }
}

fn bearer(headers: &http::HeaderMap) -> Result<&str, TokenError> {
    let value = headers.get(http::header::AUTHORIZATION).ok_or(TokenError::Missing)?;
    let value = value.to_str().map_err(|_| TokenError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(TokenError::Malformed);
    }
    Ok(token.trim())
}

/// Decides a request: `Ok(Some(caller))` to pass with a caller,
/// `Ok(None)` to pass without one, `Err` to answer with that status.
pub async fn authorize(keys: &KeySet, path: &str, headers: &http::HeaderMap) -> Result<Option<Caller>, Status> {
    let access = match policies().get(path) {
        Some(access) => *access,
        // Health, reflection and /metrics are not Capsule RPCs.
        None if !path.starts_with("/capsule.") => return Ok(None),
        None => return Err(Status::unimplemented(format!("unknown method {path}"))),
    };
    authorize_access(keys, access, headers).await
}

/// Decides a request for a method of access level `access` (see
/// [`authorize`]).
pub async fn authorize_access(
    keys: &KeySet,
    access: Access,
    headers: &http::HeaderMap,
) -> Result<Option<Caller>, Status> {
    if access == Access::Public {
        return Ok(None);
    }
    if access == Access::Unspecified {
        return Err(Status::permission_denied(
            "this method declares no access policy, so nobody may call it",
        ));
    }
    if access == Access::Runner && keys.at_edge {
        return Ok(None);
    }
    if access == Access::Service {
        if !headers.contains_key(INTERNAL_HEADER) {
            return Err(Status::unauthenticated(
                "only a Capsule service may call this method: send the service credential",
            ));
        }
        check_internal_secret(keys, headers)?;
        return Ok(Some(Caller {
            user_id: Uuid::nil(),
            role: Role::Service,
            session_id: Uuid::nil(),
            token: Arc::from(""),
        }));
    }
    let token = bearer(headers)?;
    if access == Access::Runner {
        let verifier = keys
            .runners
            .get()
            .ok_or_else(|| Status::permission_denied("this service runs no runner API"))?;
        let runner = verifier
            .runner(token)
            .await?
            .ok_or_else(|| Status::unauthenticated("the runner token is not valid (unknown or revoked runner)"))?;
        return Ok(Some(Caller {
            user_id: runner,
            role: Role::Runner,
            session_id: Uuid::nil(),
            token: Arc::from(token),
        }));
    }
    if access == Access::Internal {
        check_internal_secret(keys, headers)?;
    }
    let caller = keys.caller(token).await?;
    let allowed = match access {
        Access::Authenticated | Access::Internal => matches!(caller.role, Role::User | Role::Admin),
        Access::Admin => caller.role == Role::Admin,
        Access::Runner | Access::Service | Access::Public | Access::Unspecified => false,
    };
    if !allowed {
        let needed = if access == Access::Admin {
            "an admin"
        } else {
            "a signed-in user"
        };
        return Err(Status::permission_denied(format!("only {needed} may call this method")));
    }
    // The token says who was an admin when it was issued; the auth
    // service says who is one now (the edge leaves this to the service).
    if access == Access::Admin && !keys.at_edge {
        let standing = keys.source.standing(caller.session_id).await?;
        if standing.role != Some(Role::Admin) {
            return Err(Status::permission_denied(
                "only an admin may call this method, and you are no longer one",
            ));
        }
        if !standing.live {
            return Err(Status::unauthenticated("your session has ended; sign in again"));
        }
    }
    Ok(Some(caller))
}

/// Whether the request carries `CAPSULE_INTERNAL_SECRET`: only a Capsule
/// service does.
fn check_internal_secret(keys: &KeySet, headers: &http::HeaderMap) -> Result<(), Status> {
    let expected = keys
        .internal_secret
        .ok_or_else(|| Status::permission_denied("internal calls are not enabled here: set CAPSULE_INTERNAL_SECRET"))?;
    let presented = headers.get(INTERNAL_HEADER).and_then(|value| value.to_str().ok());
    if presented.map(digest) != Some(expected) {
        return Err(Status::permission_denied("only a Capsule service may call this method"));
    }
    Ok(())
}

/// The tower layer every service mounts: see the module doc.
#[derive(Clone)]
pub struct AuthLayer {
    keys: Arc<KeySet>,
}

impl AuthLayer {
    pub fn new(keys: Arc<KeySet>) -> Self {
        Self { keys }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = RequireAccess<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireAccess {
            inner,
            keys: self.keys.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequireAccess<S> {
    inner: S,
    keys: Arc<KeySet>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for RequireAccess<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The ready service handles this call; a fresh clone waits for the
        // next one (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let keys = self.keys.clone();
        if let Some(ip) = crate::client::resolve(&request, keys.client_proof.as_deref()) {
            tracing::Span::current().record("client", tracing::field::display(ip));
            request.extensions_mut().insert(crate::client::ClientAddress(ip));
        }
        Box::pin(async move {
            match authorize(&keys, request.uri().path(), request.headers()).await {
                Ok(caller) => {
                    if let Some(caller) = caller {
                        request.extensions_mut().insert(caller);
                    }
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}
