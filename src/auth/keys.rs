//! The key set: public keys that verify access tokens, the internal
//! secret, registered runners, and the current standing of a session.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::{Mutex, RwLock};
use tonic::Status;
use uuid::Uuid;

use crate::proto::auth::v1::{
    ApiTokenGrant, CheckApiTokenRequest, CheckSessionRequest, GetJwksRequest, Jwk,
    auth_service_client::AuthServiceClient,
};

use super::{
    Permission,
    caller::{Caller, Claims, Role, TokenScope},
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

/// Where the public keys come from.
#[async_trait::async_trait]
pub trait KeySource: Send + Sync + 'static {
    async fn fetch(&self) -> anyhow::Result<Vec<Jwk>>;

    /// Session `session_id` and its user as they are now.
    async fn standing(&self, session_id: Uuid) -> Result<Standing, Status>;

    /// What the API token with this SHA-256 may do now (`None`: unknown,
    /// revoked, expired, or its user deactivated), its use recorded.
    async fn api_token(&self, _token_hash: Vec<u8>) -> Result<Option<TokenGrant>, Status> {
        Ok(None)
    }
}

/// What an API token may do, as the auth service says now.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub user_id: Uuid,
    pub role: Role,
    pub scope: TokenScope,
}

/// How an API token starts: what tells it from an access token.
pub const API_TOKEN_PREFIX: &str = "capsule_pat_";

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
        let request = self.with_secret(
            CheckSessionRequest {
                session_id: session_id.to_string(),
            },
            "admin calls",
        )?;
        let standing = self
            .client
            .clone()
            .check_session(request)
            .await
            .map_err(|status| Status::unavailable(format!("cannot check the session now: {}", status.message())))?
            .into_inner();
        Ok(Standing {
            live: standing.live,
            role: role_from_proto(standing.role()),
        })
    }

    async fn api_token(&self, token_hash: Vec<u8>) -> Result<Option<TokenGrant>, Status> {
        let request = self.with_secret(CheckApiTokenRequest { token_hash }, "API tokens")?;
        let grant = self
            .client
            .clone()
            .check_api_token(request)
            .await
            .map_err(|status| Status::unavailable(format!("cannot check the API token now: {}", status.message())))?
            .into_inner();
        Ok(token_grant(&grant))
    }
}

fn role_from_proto(role: crate::proto::auth::v1::Role) -> Option<Role> {
    match role {
        crate::proto::auth::v1::Role::Admin => Some(Role::Admin),
        crate::proto::auth::v1::Role::User => Some(Role::User),
        crate::proto::auth::v1::Role::Unspecified => None,
    }
}

/// The grant in the auth service's answer; `None` unless live.
pub fn token_grant(grant: &ApiTokenGrant) -> Option<TokenGrant> {
    if !grant.live {
        return None;
    }
    let organization_id = match grant.organization_id.as_str() {
        "" => None,
        id => Some(id.parse().ok()?),
    };
    Some(TokenGrant {
        // An organisation's token acts as the organisation: the auth
        // service names it as the user too.
        user_id: grant.user_id.parse().ok()?,
        role: role_from_proto(grant.role())?,
        scope: TokenScope {
            token_id: grant.api_token_id.parse().ok()?,
            permissions: grant
                .scopes
                .iter()
                .filter_map(|scope| Permission::parse(scope))
                .collect(),
            project_id: grant.project_id.parse().ok(),
            organization_id,
        },
    })
}

impl GrpcKeySource {
    fn with_secret<T>(&self, message: T, what: &str) -> Result<tonic::Request<T>, Status> {
        let secret = self.internal_secret.as_deref().ok_or_else(|| {
            Status::permission_denied(format!("{what} are not enabled here: set CAPSULE_INTERNAL_SECRET"))
        })?;
        let mut request = tonic::Request::new(message);
        request.set_timeout(Duration::from_secs(3));
        as_service(&mut request, secret)?;
        Ok(request)
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

/// Puts the service credential on a call to another Capsule service.
pub fn as_service<T>(request: &mut tonic::Request<T>, internal_secret: &str) -> Result<(), Status> {
    let value = internal_secret
        .parse()
        .map_err(|_| Status::internal("CAPSULE_INTERNAL_SECRET is not a header value"))?;
    request.metadata_mut().insert(INTERNAL_HEADER, value);
    Ok(())
}

pub(super) fn digest(value: &str) -> [u8; 32] {
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
    pub(super) at_edge: bool,
    pub(super) runners: OnceLock<Arc<dyn RunnerVerifier>>,
    pub(super) internal_secret: Option<[u8; 32]>,
    /// What a Capsule caller vouching for a client address presents.
    pub(super) client_proof: Option<String>,
    pub(super) source: Arc<dyn KeySource>,
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
    /// calls are passed on unchecked for the deploy service to check, and
    /// the internal secret only checks API tokens with the auth service
    /// (calls between services are never taken at the edge).
    pub fn at_edge(auth_url: &str, internal_secret: Option<&str>) -> anyhow::Result<Arc<Self>> {
        let secrets = Secrets {
            internal_secret: internal_secret.map(str::to_owned),
            ..Secrets::default()
        };
        Ok(Self::build(
            GrpcKeySource::lazy(auth_url, &secrets)?,
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

    /// Verifies a token and turns it into a caller. An access token
    /// verified before is answered from memory until it expires; an API
    /// token is checked with the auth service on every call, so a revoked
    /// one is refused at once.
    pub async fn caller(&self, token: &str) -> Result<Caller, Status> {
        if token.starts_with(API_TOKEN_PREFIX) {
            let grant =
                self.source.api_token(super::token_hash(token)).await?.ok_or_else(|| {
                    Status::unauthenticated("the API token is not valid (unknown, revoked or expired)")
                })?;
            return Ok(Caller {
                user_id: grant.user_id,
                role: grant.role,
                session_id: Uuid::nil(),
                token: Arc::from(token),
                scope: Some(Arc::new(grant.scope)),
            });
        }
        Ok(self.access_token(token).await?)
    }

    /// `caller` as the auth service says it stands now, for a stream that
    /// outlives the call that opened it: an API token must not be revoked,
    /// expired or its owner deactivated, and comes back with the role and
    /// scope it has now; an access token must not have expired, and its
    /// session must be live (not signed out, its user active — a role
    /// change ends sessions). UNAUTHENTICATED saying which.
    pub async fn recheck(&self, caller: &Caller) -> Result<Caller, Status> {
        if matches!(caller.role, Role::Service | Role::Runner) {
            return Ok(caller.clone());
        }
        if caller.scope.is_some() {
            let grant = self
                .source
                .api_token(super::token_hash(&caller.token))
                .await?
                .ok_or_else(|| {
                    Status::unauthenticated(
                        "the API token is no longer valid (revoked, expired or its owner deactivated)",
                    )
                })?;
            return Ok(Caller {
                user_id: grant.user_id,
                role: grant.role,
                session_id: Uuid::nil(),
                token: caller.token.clone(),
                scope: Some(Arc::new(grant.scope)),
            });
        }
        self.verify(&caller.token).await.map_err(|err| match err {
            TokenError::Expired => {
                Status::unauthenticated("your access token has expired; refresh it and follow again")
            }
            other => Status::from(other),
        })?;
        let standing = self.source.standing(caller.session_id).await?;
        match standing.role {
            Some(role) if standing.live => Ok(Caller { role, ..caller.clone() }),
            _ => Err(Status::unauthenticated("your session has ended; sign in again")),
        }
    }

    async fn access_token(&self, token: &str) -> Result<Caller, TokenError> {
        if let Some(caller) = self.remembered(token) {
            return Ok(caller);
        }
        let claims = self.verify(token).await?;
        let caller = Caller {
            user_id: claims.sub.parse().map_err(|_| TokenError::Invalid)?,
            role: Role::parse(&claims.role).ok_or(TokenError::Invalid)?,
            session_id: claims.sid.parse().map_err(|_| TokenError::Invalid)?,
            token: Arc::from(token),
            scope: None,
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
