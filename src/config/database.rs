//! How a service reaches its database.

use std::{fmt, time::Duration};

use secrecy::{ExposeSecret, SecretString};

use super::{ConfigError, ProcessEnv, ServiceKind, Source, parse_bool, parse_or};

fn default_pool_size() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    (cores * 2).max(4)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

/// How a service reaches its database.
#[derive(Clone)]
pub struct DbConfig {
    pub service: ServiceKind,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: SecretString,
    pub name: String,
    pub schema: String,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// `statement_timeout` of the service's pooled connections; zero for
    /// none. Migrations run on their own connections, without it.
    pub statement_timeout: Duration,
    /// `<SVC>_DATABASE_URL`, which wins over the parts when set.
    pub url_override: Option<SecretString>,
    pub migrate_on_start: bool,
    /// `<SVC>_MIGRATE_ALLOW_FUTURE` (default on): serve a database that
    /// holds migrations newer than this build (the previous release during
    /// a rollout), as long as every migration this build knows is applied
    /// unchanged.
    pub migrate_allow_future: bool,
    /// `<SVC>_DB_BATCHING` (default on): calls of one kind that queue while
    /// the connections are busy run together (see [`crate::db::Batcher`]).
    pub batching: bool,
    /// One of libpq's variables that choose TLS or the server
    /// ([`LIBPQ_TLS_AND_HOST_VARIABLES`]) is set: libpq's own settings
    /// decide, even for a loopback server (see [`DbConfig::connection_url`]).
    pub libpq_env: bool,
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("service", &self.service)
            .field("target", &self.target())
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl DbConfig {
    /// Reads the service's database variables from the process environment.
    pub fn from_env(service: ServiceKind) -> Result<Self, ConfigError> {
        Self::from_source(service, &ProcessEnv)
    }

    /// Reads the service's database variables from `source`.
    pub fn from_source(service: ServiceKind, source: &dyn Source) -> Result<Self, ConfigError> {
        let prefix = service.env_prefix();
        let var = |suffix: &str| format!("{prefix}_{suffix}");
        let default_name = service.default_database_name();

        let host = source.get(&var("DB_HOST")).unwrap_or_else(|| "localhost".to_owned());
        let port = parse_or(
            source,
            &var("DB_PORT"),
            5432u16,
            "expected a port number from 1 to 65535",
        )?;
        if port == 0 {
            return Err(ConfigError {
                variable: var("DB_PORT"),
                value: "\"0\"".to_owned(),
                reason: "expected a port number from 1 to 65535".to_owned(),
            });
        }
        let user = source.get(&var("DB_USER")).unwrap_or_else(|| default_name.clone());
        let password = SecretString::from(
            source
                .get(&var("DB_PASSWORD"))
                .unwrap_or_else(|| "usecapsule_dev_password".to_owned()),
        );
        let name = source.get(&var("DB_NAME")).unwrap_or_else(|| default_name.clone());
        let schema = source.get(&var("DB_SCHEMA")).unwrap_or_else(|| "public".to_owned());
        if !is_identifier(&schema) {
            return Err(ConfigError {
                variable: var("DB_SCHEMA"),
                value: format!("{schema:?}"),
                reason: "expected a lowercase SQL identifier such as public".to_owned(),
            });
        }
        let pool_size = parse_or(
            source,
            &var("DB_POOL_SIZE"),
            default_pool_size(),
            "expected a number from 1 to 1000",
        )?;
        if !(1..=1000).contains(&pool_size) {
            return Err(ConfigError {
                variable: var("DB_POOL_SIZE"),
                value: format!("\"{pool_size}\""),
                reason: "expected a number from 1 to 1000".to_owned(),
            });
        }
        let connect_timeout = Duration::from_secs(parse_or(
            source,
            &var("DB_CONNECT_TIMEOUT_SECS"),
            5u64,
            "expected a whole number of seconds",
        )?);
        let statement_timeout = Duration::from_millis(parse_or(
            source,
            &var("DB_STATEMENT_TIMEOUT_MS"),
            30_000u64,
            "expected a whole number of milliseconds (0 for none)",
        )?);
        let url_variable = var("DATABASE_URL");
        let url_override = match source.get(&url_variable) {
            None => None,
            Some(raw) => {
                let parsed = url::Url::parse(&raw).map_err(|err| ConfigError {
                    variable: url_variable.clone(),
                    value: "<redacted>".to_owned(),
                    reason: format!("expected postgres://user:password@host:port/database ({err})"),
                })?;
                if !matches!(parsed.scheme(), "postgres" | "postgresql") || parsed.host_str().is_none() {
                    return Err(ConfigError {
                        variable: url_variable,
                        value: "<redacted>".to_owned(),
                        reason: "expected postgres://user:password@host:port/database".to_owned(),
                    });
                }
                Some(SecretString::from(raw))
            }
        };
        let migrate_on_start = parse_bool(source, &var("MIGRATE_ON_START"), true)?;
        let migrate_allow_future = parse_bool(source, &var("MIGRATE_ALLOW_FUTURE"), true)?;
        let batching = parse_bool(source, &var("DB_BATCHING"), true)?;
        let libpq_env = LIBPQ_TLS_AND_HOST_VARIABLES
            .iter()
            .any(|variable| source.get(variable).is_some());

        Ok(Self {
            service,
            host,
            port,
            user,
            password,
            name,
            schema,
            pool_size,
            connect_timeout,
            statement_timeout,
            url_override,
            migrate_on_start,
            migrate_allow_future,
            batching,
            libpq_env,
        })
    }

    /// The libpq connection URL, password included. A server on loopback
    /// is reached without TLS unless the URL or libpq's environment says
    /// anything of TLS, a service file or the host (`ssl…`, `requiressl`,
    /// `service`, [`LIBPQ_TLS_AND_HOST_VARIABLES`]): libpq's default
    /// (`prefer`) asks every new connection's
    /// server for TLS, and loads and initialises OpenSSL for it in every
    /// process (3.5 MiB resident in `capsule serve project`), to encrypt
    /// traffic that never leaves the host.
    pub fn connection_url(&self) -> SecretString {
        let mut url = match &self.url_override {
            Some(url) => match url::Url::parse(url.expose_secret()) {
                Ok(parsed) => parsed,
                // Checked in `from_source`; passed on as given all the same.
                Err(_) => return url.clone(),
            },
            None => {
                let mut url = url::Url::parse("postgres://localhost/").expect("a constant URL parses");
                // Setting parts of a postgres URL cannot fail for these
                // values: the host was given by the operator and is passed
                // through as is.
                let _ = url.set_host(Some(&self.host));
                let _ = url.set_port(Some(self.port));
                let _ = url.set_username(&self.user);
                let _ = url.set_password(Some(self.password.expose_secret()));
                url.set_path(&self.name);
                url.query_pairs_mut()
                    .append_pair("connect_timeout", &self.connect_timeout.as_secs().max(1).to_string())
                    .append_pair("options", &format!("-csearch_path={}", self.schema));
                url
            }
        };
        let has = |url: &url::Url, key: &str| url.query_pairs().any(|(k, _)| k == key);
        // Name the connections (pg_stat_activity, query metrics) unless the
        // URL already does.
        if !has(&url, "application_name") {
            url.query_pairs_mut()
                .append_pair("application_name", &format!("capsule-{}", self.service));
        }
        let names_tls = url
            .query_pairs()
            .any(|(key, _)| key.starts_with("ssl") || key == "requiressl" || key == "service");
        if !self.libpq_env && !names_tls && on_loopback(&url) {
            url.query_pairs_mut().append_pair("sslmode", "disable");
        }
        SecretString::from(url.to_string())
    }

    /// `user@host:port/database`, without the password: safe for logs.
    pub fn target(&self) -> String {
        match &self.url_override {
            Some(url) => redact_url(url.expose_secret()),
            None => format!("{}@{}:{}/{}", self.user, self.host, self.port, self.name),
        }
    }

    /// The variables an operator changes to point the service elsewhere.
    pub fn variables_hint(&self) -> String {
        let p = self.service.env_prefix();
        if self.url_override.is_some() {
            format!("{p}_DATABASE_URL")
        } else {
            format!("{p}_DB_HOST, {p}_DB_PORT, {p}_DB_USER, {p}_DB_PASSWORD, {p}_DB_NAME (or {p}_DATABASE_URL)")
        }
    }
}

/// libpq's environment variables that choose TLS, a service file or the
/// server to reach: when one is set, the URL is left to libpq as given.
const LIBPQ_TLS_AND_HOST_VARIABLES: &[&str] = &[
    "PGSSLMODE",
    "PGREQUIRESSL",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLROOTCERT",
    "PGSSLCRL",
    "PGSSLCRLDIR",
    "PGSSLSNI",
    "PGSSLNEGOTIATION",
    "PGSSLCERTMODE",
    "PGSSLMINPROTOCOLVERSION",
    "PGSSLMAXPROTOCOLVERSION",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGHOST",
    "PGHOSTADDR",
];

/// Whether every server a libpq URL names is this host, read as libpq
/// reads it: the last `host` and `hostaddr` of the query win over the
/// URL's host; their comma-separated entries pair up, and an entry's
/// address (`hostaddr`) is the one dialled when it is not empty, else its
/// host name, else the local socket. A server is this host when that is
/// `localhost`, a loopback address or a socket folder.
fn on_loopback(url: &url::Url) -> bool {
    let last = |key: &str| {
        url.query_pairs()
            .filter(|(k, _)| k == key)
            .last()
            .map(|(_, v)| v.into_owned())
    };
    let hosts = last("host")
        .or_else(|| url.host_str().map(str::to_owned))
        .unwrap_or_default();
    let addresses = last("hostaddr").unwrap_or_default();
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    let addresses: Vec<&str> = addresses.split(',').map(str::trim).collect();
    (0..hosts.len().max(addresses.len())).all(|i| {
        let address = addresses.get(i).copied().unwrap_or_default();
        let host = hosts.get(i).copied().unwrap_or_default();
        let dialled = if address.is_empty() { host } else { address };
        dialled.is_empty()
            || dialled.starts_with('/')
            || dialled.eq_ignore_ascii_case("localhost")
            || dialled
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// A database URL with the password removed, for logs.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(url) => format!(
            "{}@{}:{}{}",
            url.username(),
            url.host_str().unwrap_or("?"),
            url.port().unwrap_or(5432),
            url.path()
        ),
        Err(_) => "<unparsable url>".to_owned(),
    }
}
