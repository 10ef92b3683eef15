//! The secret Capsule services share.

use super::{ProcessEnv, Source};

/// The secret shared by Capsule services.
///
/// `CAPSULE_INTERNAL_SECRET`: Capsule services send it in
/// `x-capsule-internal`, next to the user's bearer token, to call
/// `ACCESS_INTERNAL` methods on that user's behalf, or alone for
/// `ACCESS_SERVICE` methods. Unset, those methods are refused.
///
/// Runners have credentials of their own, registered in the deploy
/// service and checked by its `RunnerVerifier` (see [`crate::auth`]).
#[derive(Clone, Default)]
pub struct Secrets {
    pub internal_secret: Option<String>,
}

impl Secrets {
    pub fn from_env() -> Self {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Self {
        Self {
            internal_secret: source.get("CAPSULE_INTERNAL_SECRET"),
        }
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("internal_secret", &self.internal_secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}
