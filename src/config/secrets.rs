//! The secret Capsule services share.

use std::sync::Arc;

use super::{ConfigError, ProcessEnv, Source};
use crate::crypto::{KEYS_VARIABLE, Keyring};

/// The secret shared by Capsule services.
///
/// `CAPSULE_INTERNAL_SECRET`: Capsule services send it in
/// `x-capsule-internal`, next to the user's bearer token, to call
/// `ACCESS_INTERNAL` methods on that user's behalf, or alone for
/// `ACCESS_SERVICE` methods. Unset, those methods are refused.
///
/// Runners have credentials of their own, registered in the deploy
/// service and checked by its `RunnerVerifier` (see [`crate::auth`]).
///
/// `CAPSULE_ENCRYPTION_KEYS`: the keys that seal tenants' stored secrets
/// (see [`crate::crypto`]).
#[derive(Clone, Default)]
pub struct Secrets {
    pub internal_secret: Option<String>,
    pub encryption: Arc<Keyring>,
}

impl Secrets {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let encryption =
            Keyring::parse(&source.get(KEYS_VARIABLE).unwrap_or_default()).map_err(|reason| ConfigError {
                variable: KEYS_VARIABLE.to_owned(),
                value: "<redacted>".to_owned(),
                reason,
            })?;
        Ok(Self {
            internal_secret: source.get("CAPSULE_INTERNAL_SECRET"),
            encryption: Arc::new(encryption),
        })
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("internal_secret", &self.internal_secret.as_ref().map(|_| "<set>"))
            .field("encryption", &self.encryption)
            .finish()
    }
}
