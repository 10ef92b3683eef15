//! Deciding each request: the tower layer every service mounts.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::Status;
use tower::{Layer, Service};
use uuid::Uuid;

use super::{
    Permission,
    caller::{Access, Caller, Role, policies},
    keys::{INTERNAL_HEADER, KeySet, TokenError, digest},
};

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
    authorize_access(keys, access, Permission::of_method(path), headers).await
}

/// Decides a request for a method of access level `access` that declares
/// `permission` (see [`authorize`]). An API token passes only for a method
/// whose permission is among its scopes.
pub async fn authorize_access(
    keys: &KeySet,
    access: Access,
    permission: Option<Permission>,
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
            scope: None,
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
            scope: None,
        }));
    }
    if access == Access::Internal {
        check_internal_secret(keys, headers)?;
    }
    let caller = keys.caller(token).await?;
    // An internal check (CheckProjectPermission) names the permission in
    // its body and holds the token to its scopes itself; only a service
    // that already let the token in relays it there.
    if let Some(scope) = &caller.scope
        && !(access == Access::Internal && permission.is_none())
    {
        scope.require(permission)?;
    }
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
        if let Some(permission) = super::Permission::of_method(request.uri().path()) {
            request.extensions_mut().insert(permission);
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
