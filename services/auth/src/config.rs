//! The auth service's settings.
//!
//! | variable | default |
//! |---|---|
//! | `AUTH_ACCESS_TOKEN_TTL_SECS` | `900` (15 minutes) |
//! | `AUTH_REFRESH_TOKEN_TTL_SECS` | `2592000` (30 days) |
//! | `AUTH_LOGIN_MAX_FAILURES` | `5` failed sign-ins to one account from one client address … |
//! | `AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS` | `50` … or from one address to any accounts … |
//! | `AUTH_LOGIN_WINDOW_SECS` | `900` … within this window … |
//! | `AUTH_LOGIN_LOCKOUT_SECS` | `900` … lock that pair or address for this long |
//! | `AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT` | `100` consecutive failures to one account from anywhere (within a day) lock it for the lockout (NIST SP 800-63B allows at most 100) |
//! | `AUTH_SIGNING_KEY_FILE` | unset: keys are generated and kept in the database; set: a PKCS#8 PEM Ed25519 key |
//! | `AUTH_KEY_ROTATION_DAYS` | `30`: a generated key older than this is replaced |
//! | `AUTH_PUBLIC_URL` | `http://localhost:8080`: where links in emails point |
//! | `CAPSULE_INTERNAL_SECRET` | the service credential: Capsule services call `ACCESS_SERVICE` methods with it, and the gateway proves with it the client address it forwards |
//! | `AUTH_HASH_CONCURRENCY` | the cores, at most 4: password hashes at once (19 MiB each) |
//! | `AUTH_HASH_MAX_WAIT_MS` | `5000`: a sign-in that cannot start hashing by then is UNAVAILABLE (retry in 1 s) |
//! | `CAPSULE_DEV_MAILER` | unset; `log` logs outgoing mail, links included (development only) |

use std::{path::PathBuf, time::Duration};

use capsule::{
    auth::Secrets,
    config::{ConfigError, ProcessEnv, Source, positive},
};

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub max_failures_per_pair: i32,
    pub max_failures_per_address: i32,
    pub max_failures_per_account: i32,
    pub failure_window: Duration,
    pub lockout: Duration,
    pub signing_key_file: Option<PathBuf>,
    pub key_rotation: Duration,
    pub public_url: String,
    pub secrets: Secrets,
    pub log_mail: bool,
    pub hash_concurrency: usize,
    pub hash_max_wait: Duration,
}

impl AuthConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let number = |variable: &str, default: u64| positive(source, variable, default);
        let count = |variable: &str, default: i32| positive(source, variable, default);
        Ok(Self {
            access_token_ttl: Duration::from_secs(number("AUTH_ACCESS_TOKEN_TTL_SECS", 900)?),
            refresh_token_ttl: Duration::from_secs(number("AUTH_REFRESH_TOKEN_TTL_SECS", 30 * 24 * 3600)?),
            max_failures_per_pair: count("AUTH_LOGIN_MAX_FAILURES", 5)?,
            max_failures_per_address: count("AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS", 50)?,
            max_failures_per_account: count("AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT", 100)?,
            failure_window: Duration::from_secs(number("AUTH_LOGIN_WINDOW_SECS", 900)?),
            lockout: Duration::from_secs(number("AUTH_LOGIN_LOCKOUT_SECS", 900)?),
            signing_key_file: source.get("AUTH_SIGNING_KEY_FILE").map(PathBuf::from),
            key_rotation: Duration::from_secs(number("AUTH_KEY_ROTATION_DAYS", 30)? * 24 * 3600),
            public_url: source
                .get("AUTH_PUBLIC_URL")
                .unwrap_or_else(|| "http://localhost:8080".to_owned())
                .trim_end_matches('/')
                .to_owned(),
            secrets: Secrets::from_source(source)?,
            hash_concurrency: positive(
                source,
                "AUTH_HASH_CONCURRENCY",
                std::thread::available_parallelism().map_or(1, |cores| cores.get().min(4)),
            )?,
            hash_max_wait: Duration::from_millis(number("AUTH_HASH_MAX_WAIT_MS", 5000)?),
            log_mail: source.get("CAPSULE_DEV_MAILER").is_some_and(|value| value == "log"),
        })
    }
}
