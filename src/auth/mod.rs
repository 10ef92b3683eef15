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
//!
//! API tokens (`capsule_pat_…`) are opaque: every service asks the auth
//! service about one (by its hash) on every call, so revoking it is
//! immediate, and lets it through only to methods whose declared
//! permission (`(capsule.auth.v1.permission)`, see [`Permission`]) is among
//! its scopes.

mod caller;
mod keys;
mod layer;
mod opaque;
mod permission;

pub use caller::{Access, Caller, Claims, Role, TokenScope, method_access, policies};
pub use keys::{
    API_TOKEN_PREFIX, AUDIENCE, GrpcKeySource, INTERNAL_HEADER, ISSUER, KeySet, KeySource, RunnerVerifier, Secrets,
    Standing, TokenError, TokenGrant, as_service, token_grant,
};
pub use layer::{AuthLayer, RequireAccess, authorize, authorize_access};
pub use opaque::{new_token, token_hash};
pub use permission::{OrgRole, Permission, declared_permission, is_missing_permission, permissions};
